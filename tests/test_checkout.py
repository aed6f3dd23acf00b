"""Running the server from a checkout, as the README's first commands do, leaves the checkout clean: the
state file (and SQLite's -wal and -shm beside it) lives in the user's state directory, not beside the
config file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.support import github_delivery, github_payload
from tests.e2e.test_server import free_port

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=TIMEOUT
    ).stdout


def checkout_copy(destination: Path) -> Path:
    """The tracked files of this working tree (as they are now, edits included), committed in a new
    repository: what a fresh clone holds, without the network."""
    destination.mkdir()
    for name in git("ls-files", "-z", cwd=REPO).split("\0"):
        source = REPO / name
        if name and source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git("init", "-q", cwd=destination)
    git("add", "-A", cwd=destination)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "copy", cwd=destination)
    return destination


def test_serving_the_example_from_a_checkout_leaves_it_clean(tmp_path: Path) -> None:
    checkout = checkout_copy(tmp_path / "checkout")
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("BRIDGE_", "XDG_"))},
        "HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",  # the interpreter's caches are not the bridge's doing
        "PYTHONPATH": str(checkout),
        "AWS_EC2_METADATA_DISABLED": "true",  # no credentials anywhere: fail fast, not after IMDS timeouts
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--config", "examples/bridge.toml", "--port", str(port)],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = home / ".local" / "state" / "bridge" / "bridge.sqlite3"
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _answers(port):
            assert process.poll() is None, "bridge serve exited"
            assert time.monotonic() < deadline, "bridge serve did not start"
            time.sleep(0.1)
        delivery = github_delivery("push", github_payload("push", None, 4))
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{delivery.path}", data=delivery.body, headers=delivery.headers
        )
        # the example's secrets are in Secrets Manager, unreachable here: a 503 is the answer
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30).close()
        assert answer.value.code == 503
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    assert git("status", "--porcelain", "--ignored", "--untracked-files=all", cwd=checkout) == ""
    assert state.exists()


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
