"""End to end through a real `bridge serve`: delivery accepted (the 202 reached the sender) → StartBuild
received by the CodeBuild double, and → the first commit status visible on the fake GitHub.

    python -m bench.e2e [--rate 5] [--seconds 60] [--burst 500]

Two phases, each on a fresh server, state and fakes: signed GitHub pushes (each its own commit) sent
at `--rate` per second for `--seconds` (each sent at its scheduled time), then `--burst` pushes sent
at once by 16 client threads. The server keeps its default pacing (at most
`max_build_starts_per_second` = 10 starts per second), so in the burst the starts queue on purpose;
what the burst shows is whether the first status (queued) reaches each commit without waiting for
its paced start.

The fakes run in a child process of their own (as in bench/_fakes.py), which notes the moment each
StartBuild and each first commit status arrives; CLOCK_MONOTONIC is one clock for every process on
the machine, so the child's moments compare with the sender's. Figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from bench._servers import GITHUB_TOKEN, SECRET, bench_config, bridge_command, free_port, running, server_env
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fixtures import github_example
from tests.signing import github_headers

ROOT: Final = Path(__file__).resolve().parent.parent
CLIENTS: Final = 16
WATCH_INTERVAL: Final = 0.002  # how often the fakes' process looks for new requests
WAIT_SECONDS: Final = 300.0  # upper bound for every commit's StartBuild and first status
_REPORT: Final = "report"


def _watch(double: CodeBuildDouble, github: FakeGitHub, seen: dict[str, dict[str, float]]) -> None:
    """Note the first moment each commit's StartBuild and commit status / check run was recorded."""
    starts, statuses = seen["start"], seen["status"]
    read_double = read_github = 0
    while True:
        now = time.monotonic()
        calls = double.requests
        for call in calls[read_double:]:
            if call.operation == "StartBuild" and call.status == 200:
                starts.setdefault(str(call.params.get("sourceVersion")), now)
        read_double = len(calls)
        requests = github.requests
        for request in requests[read_github:]:
            if request.method != "POST" or request.status >= 300:
                continue
            if "/statuses/" in request.path:
                statuses.setdefault(request.path.rsplit("/", 1)[1], now)
            elif request.path.endswith("/check-runs") and isinstance(request.json, dict):
                statuses.setdefault(str(request.json.get("head_sha")), now)
        read_github = len(requests)
        time.sleep(WATCH_INTERVAL)


def _serve_fakes(questions: IO[str], answers: IO[str]) -> None:
    """The child: both fakes, a watcher; answers `report` with what it saw until stdin closes."""
    double = CodeBuildDouble().start()
    github = FakeGitHub().start()
    seen: dict[str, dict[str, float]] = {"start": {}, "status": {}}
    try:
        github.add_token(GITHUB_TOKEN, kind="pat")
        threading.Thread(target=_watch, args=(double, github, seen), daemon=True).start()
        print(json.dumps({"codebuild": double.url, "github": github.url}), file=answers, flush=True)
        for question in questions:
            if question.strip() == _REPORT:
                print(json.dumps({k: dict(v) for k, v in seen.items()}), file=answers, flush=True)
    finally:
        double.stop()
        github.stop()


class Fakes:
    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.e2e", "--fakes"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._questions, self._answers = self._process.stdin, self._process.stdout
        where = json.loads(self._answers.readline())
        self.codebuild_url: str = where["codebuild"]
        self.github_url: str = where["github"]

    def report(self) -> dict[str, dict[str, float]]:
        print(_REPORT, file=self._questions, flush=True)
        return json.loads(self._answers.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self._questions.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._answers.close()


@contextmanager
def _stack(workdir: Path) -> Iterator[tuple[Fakes, int]]:
    fakes = Fakes()
    try:
        config = workdir / "bridge.toml"
        config.write_text(bench_config(workdir, fakes.github_url))
        port = free_port()
        with running(
            "bridge", bridge_command(config, port), workdir, port, env=server_env(fakes.codebuild_url)
        ):
            yield fakes, port
    finally:
        fakes.stop()


def _commit(number: int, run: str) -> str:
    return hashlib.sha1(f"{run}-{number}".encode()).hexdigest()  # noqa: S324 - a commit id, not a secret


def _delivery(run: str, number: int) -> tuple[str, bytes, dict[str, str]]:
    payload: dict[str, Any] = github_example("push", None, 4)
    sha = _commit(number, run)
    payload["after"] = sha
    if payload.get("head_commit"):
        payload["head_commit"]["id"] = sha
    body = json.dumps(payload).encode()
    return sha, body, github_headers(body, SECRET, event="push", delivery=f"{run}-{number}")


class _Sender:
    """One keep-alive connection per client thread; returns the moment the 202 was read."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._local = threading.local()

    def send(self, body: bytes, headers: dict[str, str]) -> float:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30)
            self._local.connection = connection
        connection.request("POST", "/webhooks/github", body, headers)
        response = connection.getresponse()
        response.read()
        accepted = time.monotonic()
        if response.status != 202:
            raise RuntimeError(f"delivery answered {response.status}, not 202")
        return accepted


@dataclass
class Phase:
    name: str
    deliveries: int
    send_seconds: float
    to_start: list[float]
    to_status: list[float]
    all_statuses_seconds: float  # first send → the last commit's first status

    def line(self) -> str:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "n/a"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f}"

        return (
            f"{self.name}: {self.deliveries} deliveries sent in {self.send_seconds:.1f} s; "
            f"accepted → StartBuild p50 {pct(self.to_start, 0.5)} ms p99 {pct(self.to_start, 0.99)} ms "
            f"max {pct(self.to_start, 1.0)} ms; accepted → first status p50 {pct(self.to_status, 0.5)} ms "
            f"p99 {pct(self.to_status, 0.99)} ms max {pct(self.to_status, 1.0)} ms; "
            f"{len(self.to_start)} of {self.deliveries} commits had their StartBuild and "
            f"{len(self.to_status)} their first status within {WAIT_SECONDS:.0f} s of the last send; "
            f"the last first status {self.all_statuses_seconds:.1f} s after the first send"
        )


def _run(name: str, count: int, interval: float) -> Phase:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, _stack(Path(tmp)) as (fakes, port):
        sender = _Sender(port)
        deliveries = [_delivery(name, number) for number in range(count)]
        accepted: dict[str, float] = {}
        begin = time.monotonic()

        def one(number: int) -> None:
            sha, body, headers = deliveries[number]
            delay = begin + number * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            accepted[sha] = sender.send(body, headers)

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(one, range(count)))
        sent = time.monotonic() - begin
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            seen = fakes.report()
            if all(sha in seen["start"] and sha in seen["status"] for sha in accepted):
                break
            if time.monotonic() > deadline:
                missing = sum(1 for sha in accepted if sha not in seen["start"] or sha not in seen["status"])
                print(f"{name}: {missing} commits still lack a StartBuild or a status", file=sys.stderr)
                break
            time.sleep(0.5)
        to_start = [seen["start"][sha] - at for sha, at in accepted.items() if sha in seen["start"]]
        to_status = [seen["status"][sha] - at for sha, at in accepted.items() if sha in seen["status"]]
        last_status = max((seen["status"][sha] for sha in accepted if sha in seen["status"]), default=begin)
        return Phase(name, count, sent, to_start, to_status, last_status - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--fakes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fakes:
        _serve_fakes(sys.stdin, sys.stdout)
        return
    sustained = _run("sustained", int(args.rate * args.seconds), 1.0 / args.rate)
    print(sustained.line(), flush=True)
    burst = _run("burst", args.burst, 0.0)
    print(burst.line(), flush=True)


if __name__ == "__main__":
    main()
