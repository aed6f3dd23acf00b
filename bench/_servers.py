"""Start `bridge serve` and the baseline as real processes for the benchmarks; stop them by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench._load import RequestFactory, post_request
from tests.fixtures import github_example
from tests.signing import github_headers

ROOT = Path(__file__).resolve().parent.parent

SECRET = "bench-webhook-secret-0123456789"  # noqa: S105 - a benchmark's own webhook secret
THREADS = 8  # server.threads' default


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bench_config(state_dir: Path, github_api_url: str = "http://127.0.0.1:9") -> str:
    return f"""
[server]
state_path = "{state_dir / "state.sqlite3"}"
threads = {THREADS}

[aws]
region = "eu-west-1"

[github]
api_url = "{github_api_url}"
token = "env:BENCH_GITHUB_TOKEN"
webhook_secrets = ["env:BENCH_WEBHOOK_SECRET"]
repository_hosts = ["github.com"]

[[routes]]
name = "hello"
provider = "github"
repositories = ["Codertocat/*"]
events = ["push"]
branches = ["master"]
project = "bench"
"""


GITHUB_TOKEN = "ghp_bench0123456789abcdefghijklmnopqrstuv"  # noqa: S105 - the fake GitHub's PAT


def server_env(codebuild_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    """AWS is the CodeBuild double when given (every other AWS endpoint is a closed port)."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_WEBHOOK_SECRET": SECRET,
        "BENCH_GITHUB_TOKEN": GITHUB_TOKEN,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ENDPOINT_URL_CODEBUILD": codebuild_url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class Process:
    name: str
    port: int
    popen: subprocess.Popen[bytes]

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes, which serve the requests: the children of the arbiter."""
        return _children(self.popen.pid)

    def background_pids(self) -> list[int]:
        """Processes the workers forked (the bridge's build worker): the arbiter's grandchildren."""
        return [pid for worker in self.worker_pids() for pid in _children(worker)]

    def cpu_seconds(self, *, background: bool = True) -> float:
        """User + system CPU used so far by the request-serving processes, and (by default) the
        processes they forked: what the server as a whole spent."""
        pids = self.worker_pids() + (self.background_pids() if background else [])
        ticks = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self, *, background: bool = False) -> float:
        """VmHWM (peak resident set), in MB, of the request-serving process, or of the largest
        process it forked (`background`); NaN when there is none (the baseline forks nothing)."""
        peaks = []
        for pid in self.background_pids() if background else self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return max(peaks) if peaks else float("nan")


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def _wait_ready(port: int, popen: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                json.loads(response.read() or b"{}")
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server not ready in 30 s")


@contextmanager
def running(
    name: str, command: list[str], workdir: Path, port: int, *, env: dict[str, str] | None = None
) -> Iterator[Process]:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            command,
            env=env or server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    try:
        _wait_ready(port, popen, log)
        yield Process(name, port, popen)
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)


def bridge_command(config: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(THREADS),
    ]


def baseline_command(port: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "bench" / "baseline_app.py"),
        "--port",
        str(port),
        "--threads",
        str(THREADS),
    ]


PUSH_BODY = json.dumps(github_example("push", None, 4)).encode()


def signed_push(run: str, port: int) -> RequestFactory:
    """A request factory: the same signed push body, a new delivery id each time (each one builds)."""
    headers = github_headers(PUSH_BODY, SECRET, event="push", delivery="x")

    def make(number: int) -> bytes:
        return post_request(
            "/webhooks/github",
            f"127.0.0.1:{port}",
            {**headers, "X-GitHub-Delivery": f"{run}-{number}"},
            PUSH_BODY,
        )

    return make
