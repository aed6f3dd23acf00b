"""`bridge serve` as a real process (gunicorn) on loopback, against real local services.

AWS is moto (Secrets Manager holds the webhook secret, the GitHub App key and the GitLab token) plus
the CodeBuild double; GitHub and GitLab are the fake APIs. Deliveries are real published payloads,
signed as the providers sign them, sent over real HTTP. The process is always killed by PID (its
whole process group: gunicorn's arbiter and worker) at teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from bridge import events, routing
from bridge.admission import Accepted, delivery_key, idempotency_seed, intake
from bridge.config import parse_config
from bridge.plan import plan_build
from tests.e2e.support import (
    GITHUB_OLD_SECRET,
    GITHUB_SECRET,
    GITLAB_WEBHOOK_TOKEN,
    REGION,
    Delivery,
    config_text,
    github_delivery,
    github_payload,
    gitlab_delivery,
    gitlab_payload,
)
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

pytestmark = pytest.mark.e2e

MAX_BODY = 262_144
START_TIMEOUT = 30.0
FINISH_TIMEOUT = 40.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n--- server log tail ---\n{tail}")


@dataclass
class Server:
    """One `python -m bridge serve` process; `stop_hard` is SIGKILL, `start` runs it (again)."""

    config_path: Path
    log_path: Path
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    threads: int = 4
    ready_path: str = "/readyz"  # /healthz for a server whose /readyz is meant to fail

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            str(self.threads),
            "--poll-interval",
            "1",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.ready, START_TIMEOUT, "the server to be ready", self.log_path)

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"the server exited with {self.process.returncode}:\n{self.log_path.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop_hard(self) -> None:
        """SIGKILL the arbiter and its worker (one process group, created for this process)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def server_process(self) -> int:
        """gunicorn's worker: the process that serves requests (the only child of the arbiter)."""
        assert self.process is not None
        (pid,) = children(self.process.pid)
        return pid

    def worker_process(self) -> int:
        """The build worker: the only child of the server process."""
        (pid,) = children(self.server_process())
        return pid

    def post(self, delivery: Delivery) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", delivery.path, body=delivery.body, headers=delivery.headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def post_chunked(self, delivery: Delivery, chunk: int = 65536) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest("POST", delivery.path)
            for name, value in delivery.headers.items():
                connection.putheader(name, value)
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            try:
                for offset in range(0, len(delivery.body), chunk):
                    piece = delivery.body[offset : offset + chunk]
                    connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                connection.send(b"0\r\n\r\n")
            except OSError:
                pass  # the server may answer 413 and close before the whole body is sent
            return connection.getresponse().status
        finally:
            connection.close()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def serve(
    tmp_path: Path,
    aws_env: Mapping[str, str],
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
    text: str,
    *,
    extra_env: Mapping[str, str] = {},
    ready_path: str = "/readyz",
) -> Iterator[Server]:
    """`bridge serve` on the routing file `text` (from config_text(refs="secretsmanager")): its
    secrets in Secrets Manager (moto), the old webhook secret and the GitLab token (and `extra_env`)
    in its environment; killed by PID however the test ends."""
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.create_secret(Name="bridge/github-webhook", SecretString=GITHUB_SECRET)
    secrets.create_secret(Name="bridge/github-app-key", SecretString=github_api.app_keys.private_key_pem)
    secrets.create_secret(Name="bridge/gitlab-token", SecretString=gitlab_api.token)
    config_path = tmp_path / "bridge.toml"
    config_path.write_text(text)
    env = {
        **os.environ,
        **aws_env,
        "GITHUB_OLD_WEBHOOK_SECRET": GITHUB_OLD_SECRET,
        "GITLAB_WEBHOOK_TOKEN": GITLAB_WEBHOOK_TOKEN,
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    running = Server(config_path, tmp_path / "server.log", env, free_port(), ready_path=ready_path)
    running.start()
    try:
        yield running
    finally:
        running.stop_hard()


def served_text(github_api: FakeGitHub, gitlab_api: FakeGitLab) -> str:
    """The routing file of the default server: secrets in Secrets Manager, the fake APIs' URLs."""
    return config_text(
        github_url=github_api.url,
        gitlab_url=gitlab_api.url,
        state_path="state.sqlite3",
        refs="secretsmanager",
        max_body_bytes=MAX_BODY,
    )


@pytest.fixture
def server(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Server]:
    with serve(tmp_path, aws_env, github_api, gitlab_api, served_text(github_api, gitlab_api)) as running:
        yield running


# -- what the deliveries should do ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    delivery: Delivery
    provider: str
    event_name: str
    payload: Mapping[str, Any]
    delivery_id: str


def github_sent(event: str, payload: dict[str, Any], delivery_id: str) -> Sent:
    return Sent(
        github_delivery(event, payload, delivery_id=delivery_id), "github", event, payload, delivery_id
    )


def gitlab_sent(payload: dict[str, Any], key: str) -> Sent:
    delivery = gitlab_delivery(payload, idempotency_key=key)
    return Sent(delivery, "gitlab", delivery.headers["X-Gitlab-Event"], payload, key)


def expected_request(server: Server, sent: Sent) -> dict[str, Any]:
    """The StartBuild kwargs the server must send, planned here from the same inputs."""
    config = parse_config(server.config_path.read_text(), base_dir=server.config_path.parent)
    if sent.provider == "github":
        event = events.from_github(sent.event_name, sent.payload)
    else:
        event = events.from_gitlab(sent.event_name, sent.payload)
    outcome = intake(config, event)
    assert isinstance(outcome, Accepted)
    route = outcome.route
    request = plan_build(
        outcome.event,
        routing.build_options(route, outcome.event),
        grant=outcome.grant,
        idempotency_seed=idempotency_seed(delivery_key(sent.provider, sent.delivery_id), route.name),
        delivery_id=delivery_key(sent.provider, sent.delivery_id),
    )
    return dict(request.start_build_kwargs)


def started(double: CodeBuildDouble) -> list[dict[str, Any]]:
    return [call.params for call in double.calls("StartBuild") if call.status == 200]


def collapse(states: list[str]) -> list[str]:
    return [state for i, state in enumerate(states) if i == 0 or states[i - 1] != state]


def check_run_histories(github_api: FakeGitHub) -> dict[int, list[str]]:
    """Per check run, the states it was given, in order (POST creates, PATCH /check-runs/ID edits)."""
    histories: dict[int, list[str]] = {}
    created = iter(sorted(github_api.check_runs))
    for request in github_api.requests:
        if request.method == "POST" and request.path.endswith("/check-runs") and request.status == 201:
            histories[next(created)] = [request.json["status"]]
        elif request.method == "PATCH" and "/check-runs/" in request.path and request.status == 200:
            run_id = int(request.path.rsplit("/", 1)[1])
            histories[run_id].append(request.json["status"])
    return histories


def gitlab_histories(gitlab_api: FakeGitLab) -> dict[str, list[str]]:
    histories: dict[str, list[str]] = {}
    for project, sha, _name, state in gitlab_api.transitions:
        histories.setdefault(f"{project}@{sha[:7]}", []).append(state)
    return histories


def all_final(github_api: FakeGitHub, gitlab_api: FakeGitLab, github_builds: int, gitlab_builds: int) -> bool:
    runs = list(github_api.check_runs.values())
    gitlab = gitlab_histories(gitlab_api)
    return (
        len(runs) == github_builds
        and all(run["status"] == "completed" for run in runs)
        and len(gitlab) == gitlab_builds
        and all(states[-1] in ("success", "failed", "canceled") for states in gitlab.values())
    )


# -- the tests -----------------------------------------------------------------------------------------------


def test_deliveries_build_and_report_end_to_end(
    server: Server, codebuild_double: CodeBuildDouble, github_api: FakeGitHub, gitlab_api: FakeGitLab
) -> None:
    codebuild_double.script_project("gl-build", Scenario(final_status="FAILED"))
    sent = [
        github_sent("push", github_payload("push", None, 4), "e2e-push"),
        github_sent("pull_request", github_payload("pull_request", "opened", 1), "e2e-pr"),
        gitlab_sent(gitlab_payload("push"), "e2e-gl-push"),
        gitlab_sent(gitlab_payload("merge_request_open"), "e2e-gl-mr"),
    ]

    answers = [server.post(item.delivery) for item in sent]
    duplicate = server.post(sent[0].delivery)
    ignored = server.post(github_delivery("pull_request", github_payload("pull_request", "closed")))
    forged = server.post(github_delivery("push", github_payload("push", None, 4), secret="forged"))
    too_large = server.post_chunked(github_delivery("push", b"{" + b" " * MAX_BODY + b"}"))

    assert [status for status, _ in answers] == [202, 202, 202, 202]
    assert [body["delivery"] for _, body in answers] == [item.delivery_id for item in sent]
    assert duplicate == (200, {"duplicate": "e2e-push"})
    assert ignored[0] == 200
    assert "ignored" in ignored[1]
    assert forged[0] == 401
    assert too_large == 413

    wait_for(
        lambda: all_final(github_api, gitlab_api, 2, 2),
        FINISH_TIMEOUT,
        "every status to finish",
        server.log_path,
    )

    # Exactly the planned StartBuild requests, one per accepted delivery.
    requests = started(codebuild_double)
    assert sorted(requests, key=lambda r: r["idempotencyToken"]) == sorted(
        (expected_request(server, item) for item in sent), key=lambda r: r["idempotencyToken"]
    )
    # Statuses in order, to their final states.
    histories = check_run_histories(github_api)
    assert [collapse(states) for states in histories.values()] == [["queued", "in_progress", "completed"]] * 2
    assert {run["conclusion"] for run in github_api.check_runs.values()} == {"success"}
    assert sorted(gitlab_histories(gitlab_api).values()) == [["pending", "running", "failed"]] * 2
    metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    assert 'bridge_deliveries_total{event="push",outcome="accepted",provider="github"} 1.0' in metrics
    assert 'bridge_builds_total{status="STARTED"} 4.0' in metrics

    # SIGTERM: gunicorn drains requests, the worker finishes its step and stops, the process exits 0.
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=40) == 0
    log_lines = [
        json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")
    ]
    assert any(entry["msg"] == "worker stopped" for entry in log_lines)
    deliveries = [entry for entry in log_lines if entry["msg"] == "delivery"]
    assert {entry["outcome"] for entry in deliveries} >= {"accepted", "duplicate", "ignored", "unauthorized"}
    # One line per delivery: its own line carries status, latency and peer, so the access log skips it.
    assert len(deliveries) == len(sent) + 4
    assert all(entry["remote"] == "127.0.0.1" for entry in deliveries)
    accessed = [entry["path"] for entry in log_lines if entry["msg"] == "access"]
    assert "/metrics" in accessed
    assert not [path for path in accessed if path.startswith("/webhooks/")]
    assert all(GITHUB_SECRET not in line and GITLAB_WEBHOOK_TOKEN not in line for line in map(str, log_lines))


def retry_recorded(state_file: Path, delivery_id: str) -> bool:
    """The worker wrote the refusal into the delivery's row (read as another process would)."""
    with contextlib.closing(sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=5)) as state:
        row = state.execute(
            "SELECT last_error FROM deliveries WHERE delivery_id IN (?, ?)",
            (delivery_id, f"gitlab:{delivery_id}"),
        ).fetchone()
    return row is not None and row[0] is not None


def test_sigkill_mid_flight_then_restart_finishes_everything_exactly_once(
    server: Server, codebuild_double: CodeBuildDouble, github_api: FakeGitHub, gitlab_api: FakeGitLab
) -> None:
    codebuild_double.script_project("hello-build", Scenario(polls_per_phase=2))
    codebuild_double.script_project("gl-build", Scenario(polls_per_phase=2))
    first = [
        github_sent("push", github_payload("push", None, 4), "kill-push"),
        github_sent("pull_request", github_payload("pull_request", "opened", 1), "kill-pr"),
        gitlab_sent(gitlab_payload("push"), "kill-gl-push"),
    ]
    for item in first:
        assert server.post(item.delivery)[0] == 202
    wait_for(
        lambda: len(started(codebuild_double)) == 3, FINISH_TIMEOUT, "three builds to start", server.log_path
    )
    wait_for(lambda: len(gitlab_api.transitions) >= 1, FINISH_TIMEOUT, "a first status", server.log_path)

    # One more delivery whose start is refused once (build quota): accepted, but not started when killed.
    codebuild_double.fail("StartBuild", "AccountLimitExceededException", count=1)
    late = gitlab_sent(gitlab_payload("merge_request_open"), "kill-gl-mr")
    assert server.post(late.delivery)[0] == 202
    wait_for(
        lambda: len(codebuild_double.calls("StartBuild")) == 4,
        FINISH_TIMEOUT,
        "the refused start",
        server.log_path,
    )
    wait_for(
        lambda: retry_recorded(server.config_path.parent / "state.sqlite3", "kill-gl-mr"),
        FINISH_TIMEOUT,
        "the worker to record the retry",
        server.log_path,
    )

    server.stop_hard()
    assert not all_final(github_api, gitlab_api, 2, 2)  # killed mid-flight
    server.start()  # same config, same SQLite file

    assert server.post(first[0].delivery) == (200, {"duplicate": "kill-push"})  # still remembered
    wait_for(
        lambda: all_final(github_api, gitlab_api, 2, 2),
        FINISH_TIMEOUT,
        "every status to finish",
        server.log_path,
    )

    tokens = [request["idempotencyToken"] for request in started(codebuild_double)]
    expected = {expected_request(server, item)["idempotencyToken"] for item in [*first, late]}
    assert set(tokens) == expected  # every accepted delivery built...
    assert len(tokens) == len(expected)  # ...exactly once
    assert len(github_api.check_runs) == 2
    assert {run["conclusion"] for run in github_api.check_runs.values()} == {"success"}
    for states in gitlab_histories(gitlab_api).values():
        assert states[-1] == "success"


# -- the worker's own process --------------------------------------------------------------------------------


def test_the_worker_runs_in_its_own_process_and_builds_what_the_server_accepted(
    server: Server, codebuild_double: CodeBuildDouble
) -> None:
    serving, working = server.server_process(), server.worker_process()
    assert len({server.process.pid if server.process else 0, serving, working}) == 3

    sent = github_sent("push", github_payload("push", None, 4), "own-process")
    assert server.post(sent.delivery)[0] == 202

    def started_lines() -> list[dict[str, Any]]:
        complete = server.log_path.read_text().split("\n")[:-1]  # a line being written is not read
        return [json.loads(line) for line in complete if '"build started"' in line]

    # The double sees StartBuild before the worker has its answer and writes "build started": wait
    # for the line, not only the call (CI read the log in between twice).
    wait_for(lambda: started_lines() != [], START_TIMEOUT, "the build started line", server.log_path)
    assert len(started(codebuild_double)) == 1
    assert (
        started(codebuild_double)[0]["idempotencyToken"] == expected_request(server, sent)["idempotencyToken"]
    )
    assert [line["delivery"] for line in started_lines()] == ["github:own-process"]  # keys are per provider


def test_a_killed_worker_process_is_replaced_and_nothing_accepted_is_lost(
    server: Server, codebuild_double: CodeBuildDouble, github_api: FakeGitHub, gitlab_api: FakeGitLab
) -> None:
    codebuild_double.script_project("hello-build", Scenario(polls_per_phase=2))
    first = github_sent("push", github_payload("push", None, 4), "before-kill")
    assert server.post(first.delivery)[0] == 202
    wait_for(lambda: len(started(codebuild_double)) == 1, START_TIMEOUT, "the first build", server.log_path)
    serving, working = server.server_process(), server.worker_process()

    os.kill(working, signal.SIGKILL)

    # The server process finishes what it serves and exits; the arbiter starts a fresh pair.
    wait_for(lambda: not alive(serving), START_TIMEOUT, "the server process to exit", server.log_path)
    wait_for(server.ready, START_TIMEOUT, "a new server process", server.log_path)
    wait_for(lambda: len(children(server.server_process())) == 1, START_TIMEOUT, "its worker process")
    assert server.server_process() != serving
    assert server.worker_process() != working
    assert "the worker process exited" in server.log_path.read_text()

    second = gitlab_sent(gitlab_payload("push"), "after-kill")
    assert server.post(second.delivery)[0] == 202
    assert server.post(first.delivery) == (200, {"duplicate": "before-kill"})
    wait_for(lambda: all_final(github_api, gitlab_api, 1, 1), FINISH_TIMEOUT, "every status", server.log_path)
    # Killed between StartBuild and recording it, the first delivery is started again by the new worker
    # with the same idempotencyToken: CodeBuild answers with the same build. One build, one check run.
    tokens = {request["idempotencyToken"] for request in started(codebuild_double)}
    assert tokens == {expected_request(server, item)["idempotencyToken"] for item in (first, second)}
    assert len(github_api.check_runs) == 1  # (all_final above also counted one GitLab commit)


def test_a_killed_server_process_takes_its_worker_process_with_it(
    server: Server, codebuild_double: CodeBuildDouble
) -> None:
    serving, working = server.server_process(), server.worker_process()

    os.kill(serving, signal.SIGKILL)

    # No signal reaches the worker process; its end of the wake-up pipe reads end of file.
    wait_for(
        lambda: not alive(working), START_TIMEOUT, "the orphaned worker process to stop", server.log_path
    )
    wait_for(server.ready, START_TIMEOUT, "a new server process", server.log_path)
    wait_for(lambda: len(children(server.server_process())) == 1, START_TIMEOUT, "its worker process")
    assert server.worker_process() != working

    sent = github_sent("push", github_payload("push", None, 4), "after-server-kill")
    assert server.post(sent.delivery)[0] == 202
    wait_for(
        lambda: len(started(codebuild_double)) == 1, START_TIMEOUT, "the build to start", server.log_path
    )
