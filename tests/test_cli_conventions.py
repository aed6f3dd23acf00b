"""The CLI follows the conventions a user expects of a command, run as a user runs it (real processes):
`--version` on every entry point, usage under the name it was called by, every environment variable
in `--help`, `plan`'s exit codes, text logs on a terminal and JSON otherwise, one clear error for a
port in use."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge import __version__
from bridge.cli import SERVE_ENVIRONMENT
from tests.e2e.support import (
    GITLAB_PROJECT,
    config_text,
    github_delivery,
    github_payload,
    gitlab_payload,
    secret_env,
)
from tests.e2e.test_server import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 60


def run(*command: str | Path, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        **options,
    )


ENTRY_POINTS: dict[str, tuple[list[str | Path], str]] = {
    "bridge": ([BIN / "bridge"], "bridge"),
    "codebuild-bridge": ([BIN / "codebuild-bridge"], "codebuild-bridge"),
    "python -m bridge": ([sys.executable, "-m", "bridge"], "python -m bridge"),
    "entrypoint.py": ([sys.executable, REPO / "entrypoint.py"], "bridge"),
    "entrypoint.py codebuild-bridge": (
        [sys.executable, REPO / "entrypoint.py", "codebuild-bridge"],
        "codebuild-bridge",
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_prints_its_version(entry: str) -> None:
    command, name = ENTRY_POINTS[entry]
    result = run(*command, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{name} {__version__}"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_usage_names_the_program_as_it_was_called(entry: str) -> None:
    command, name = ENTRY_POINTS[entry]
    result = run(*command, "no-such-command")
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: {name} ")
    assert run(*command, "serve", "--help").stdout.startswith(f"usage: {name} serve ")


def _variables_read_by_the_cli() -> set[str]:
    """Every environment variable bridge/ reads by a literal name or a *_ENV constant, outside the
    Action (whose GITHUB_* and INPUT_* variables GitHub sets, not the user)."""
    names: set[str] = set()
    for path in (REPO / "bridge").rglob("*.py"):
        if path.name in ("action.py", "workflow.py"):
            continue
        text = path.read_text()
        names.update(re.findall(r"os\.environ(?:\.get)?[(\[]\s*\"([A-Z][A-Z0-9_]+)\"", text))
        names.update(re.findall(r"^[A-Z_]+_ENV: Final = \"([A-Z][A-Z0-9_]+)\"", text, re.M))
    return names - {"PATH"}  # handed on to a build tool as it is, not a setting


def test_serve_help_lists_every_environment_variable_the_cli_reads() -> None:
    read = _variables_read_by_the_cli()
    assert {"BRIDGE_CONFIG", "BRIDGE_CONFIG_TOML", "BRIDGE_LOG_LEVEL", "BRIDGE_LOG_FORMAT"} <= read
    for command in (["serve", "--help"], ["--help"]):
        shown = run(BIN / "bridge", *command).stdout
        assert "environment variables:" in shown
        missing = sorted(name for name in read if name not in shown)
        assert missing == [], f"`bridge {' '.join(command)}` does not list {missing}"
    assert all(name.split(",")[0] in run(BIN / "bridge", "--help").stdout for name, _ in SERVE_ENVIRONMENT)


def test_demo_help_lists_the_variables_the_demo_reads() -> None:
    from bridge.demo import SECRET_ENV

    shown = run(BIN / "bridge", "demo", "--help").stdout
    assert "environment variables:" in shown
    assert [name for name in [*SECRET_ENV.values(), "XDG_STATE_HOME"] if name not in shown] == []


# -- plan: exit codes and GitLab's event names ---------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(config_text())
    return path


def plan(
    config: Path, tmp_path: Path, provider: str, event: str, payload: object
) -> subprocess.CompletedProcess[str]:
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(json.dumps(payload) if not isinstance(payload, str) else payload)
    return run(
        BIN / "bridge",
        "plan",
        "--config",
        config,
        "--provider",
        provider,
        "--event",
        event,
        "--payload",
        payload_file,
    )


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("push", "push"),
        ("Push Hook", "push"),
        ("merge_request", "merge_request_open"),
        ("Merge Request Hook", "merge_request_open"),
    ],
)
def test_plan_takes_gitlab_short_and_header_event_names(
    tmp_path: Path, config_file: Path, event: str, payload: str
) -> None:
    result = plan(config_file, tmp_path, "gitlab", event, gitlab_payload(payload))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["projectName"] == GITLAB_PROJECT


@pytest.mark.parametrize(
    ("provider", "event", "payload", "code", "says"),
    [
        ("gitlab", "tag_push", gitlab_payload("tag_push"), 3, '"ignored"'),  # the route builds no tags
        ("github", "watch", github_payload("watch", "started"), 3, '"ignored"'),
        ("gitlab", "push", "{not json", 2, "error: input '--payload'"),
        ("github", "push", {"ref": "refs/heads/master"}, 2, "error: input '--payload'"),
    ],
)
def test_plan_exit_codes_tell_build_from_ignored_from_bad_input(
    tmp_path: Path, config_file: Path, provider: str, event: str, payload: object, code: int, says: str
) -> None:
    result = plan(config_file, tmp_path, provider, event, payload)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout + result.stderr


def test_plan_help_states_the_exit_codes_and_gitlab_event_names() -> None:
    shown = " ".join(run(BIN / "bridge", "plan", "--help").stdout.split())
    assert "0 a build would start" in shown
    assert "3 the event is ignored" in shown
    assert "2 bad input" in shown
    assert "(push, tag_push, merge_request, note)" in shown


# -- serve: log lines, busy port -------------------------------------------------------------------------


def _serve_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BRIDGE_")}
    return {**env, **secret_env(), "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(tmp_path / "state")}


@contextmanager
def serving(tmp_path: Path, *extra: str, stderr: int | None = None) -> Iterator[tuple[int, Path]]:
    """`bridge serve` until the block ends (killed by its process group); its stderr to a file or `stderr`."""
    config = tmp_path / "bridge.toml"
    config.write_text(config_text())
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [BIN / "bridge", "serve", "--config", config, "--port", str(port), "--threads", "2", *extra],
            env=_serve_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=stderr if stderr is not None else sink,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"bridge serve did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield port, log
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def send_ping(port: int, delivery_id: str) -> None:
    delivery = github_delivery(
        "ping", {"zen": "Keep it logically awesome.", "hook_id": 1}, delivery_id=delivery_id
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{delivery.path}", data=delivery.body, headers=delivery.headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def wait_for_line(read: Any, needle: str) -> str:
    """Everything `read()` returned until a complete line containing `needle` arrived."""
    text = ""
    deadline = time.monotonic() + TIMEOUT
    while not any(needle in line for line in text.split("\n")[:-1]):
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {needle!r} in:\n{text}")
        text += read()
    return text


TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warning|error|critical) +[\w.]+: "
)


def _log_reader(log: Path) -> Any:
    """A read() of what the log file gained since the last call (a short wait when it gained nothing)."""
    offset = [0]

    def read() -> str:
        with log.open("rb") as file:
            file.seek(offset[0])
            new = file.read()
        offset[0] += len(new)
        if not new:
            time.sleep(0.05)
        return new.decode()

    return read


@pytest.mark.parametrize("how", [["--log-format", "json"], ["--log-format", "auto"], []])
def test_logs_are_json_lines_when_stderr_is_not_a_terminal(tmp_path: Path, how: list[str]) -> None:
    with serving(tmp_path, *how) as (port, log):
        send_ping(port, "json-ping-1")
        text = wait_for_line(_log_reader(log), '"json-ping-1"')
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    (delivery,) = [line for line in lines if line["msg"] == "delivery"]
    assert (delivery["delivery"], delivery["event"], delivery["outcome"]) == ("json-ping-1", "ping", "pong")
    assert {line["logger"] for line in lines} >= {"gunicorn.error", "bridge.app"}


def test_logs_are_text_lines_with_log_format_text(tmp_path: Path) -> None:
    with serving(tmp_path, "--log-format", "text") as (port, log):
        send_ping(port, "text-ping-1")
        text = wait_for_line(_log_reader(log), "text-ping-1")
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(TEXT_LINE.match(line) for line in lines), text
    (delivery,) = [line for line in lines if " bridge.app: delivery " in line]
    assert "delivery=text-ping-1 provider=github event=ping outcome=pong" in delivery


def test_logs_are_text_lines_on_a_terminal(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        with serving(tmp_path, stderr=terminal) as (port, _log):
            send_ping(port, "tty-ping-1")

            def read() -> str:
                ready, _, _ = select.select([controller], [], [], 1.0)
                return os.read(controller, 65536).decode(errors="replace") if ready else ""

            text = wait_for_line(read, "tty-ping-1").replace("\r\n", "\n")
    finally:
        os.close(controller)
        os.close(terminal)
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(TEXT_LINE.match(line) for line in lines), text


def test_a_bad_log_format_variable_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(config_text())
    env = {**_serve_env(tmp_path), "BRIDGE_LOG_FORMAT": "yaml"}
    result = run(BIN / "bridge", "serve", "--config", config, "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: $BRIDGE_LOG_FORMAT is 'yaml', not a log format",
        "hint: set it to one of auto, text, json, or pass --log-format",
    ]


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(config_text())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run(
            BIN / "bridge", "serve", "--config", config, "--port", str(port), env=_serve_env(tmp_path)
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: input '--port': 127.0.0.1:{port} is already in use by another process",
        f"hint: stop the process listening there (`ss -ltnp 'sport = :{port}'` shows it),"
        " or pass another --port",
    ]
