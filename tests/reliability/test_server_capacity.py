"""Hostile clients and a stuck state file against the real server process (`bridge serve`, gunicorn).

Slow and half-sent connections, unsigned bodies of 25 MiB and a state file another process holds
locked: the server must keep answering signed deliveries and /healthz, refuse what it can from the
headers alone, hold a bounded number of body bytes, and answer 503 with a reason well inside a
sender's timeout (GitHub gives up after 10 s) rather than stall.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

from bridge.store_dynamodb import create_table
from tests.e2e.support import (
    GITHUB_SECRET,
    REGION,
    config_text,
    github_delivery,
    github_payload,
    secret_env,
)
from tests.e2e.test_server import MAX_BODY, Server, free_port, wait_for
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

pytestmark = pytest.mark.e2e

SENDER_TIMEOUT = 10.0  # GitHub gives up on a delivery after 10 s and does not retry
CLIENT_TIMEOUT = 30.0  # this test's own bound, so a slow answer is measured rather than cut off
SWEEP_TIMEOUT = 90.0  # an upper bound: the worker's receives from a queue that hangs time out first

Serve = Callable[..., Server]


@pytest.fixture
def serve(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Serve]:
    """Starts `bridge serve` with env: secret references; `server_extra` adds lines to [server]."""
    started: list[Server] = []

    def start(
        *,
        max_body_bytes: int = MAX_BODY,
        server_extra: str = "",
        threads: int = 4,
        refs: str = "env",
        region: bool = True,
        env_changes: dict[str, str | None] | None = None,
        extra: str = "",
    ) -> Server:
        """`region` False: no [aws] region in the file; `env_changes`: variables set, or unset (None);
        `extra`: sections added at the end of the file."""
        text = config_text(
            github_url=github_api.url,
            gitlab_url=gitlab_api.url,
            state_path="state.sqlite3",
            max_body_bytes=max_body_bytes,
            refs=refs,
        )
        if server_extra:
            text = text.replace("[server]\n", f"[server]\n{server_extra}\n", 1)
        if not region:
            text = text.replace(f'[aws]\nregion = "{REGION}"\n', "", 1)
        text += extra
        config_path = tmp_path / "bridge.toml"
        config_path.write_text(text)
        env: dict[str, str] = {
            **os.environ,
            **aws_env,
            **secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token),
            "PYTHONUNBUFFERED": "1",
        }
        for name, value in (env_changes or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        server = Server(config_path, tmp_path / "server.log", env, free_port(), threads=threads)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop_hard()


def post(
    server: Server, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any], float]:
    """One request on a connection of its own: (status, JSON answer, seconds until the answer)."""
    began = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read() or b"{}")
        return response.status, answer, time.monotonic() - began
    finally:
        connection.close()


def get(server: Server, path: str) -> tuple[int, float]:
    began = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - began
    finally:
        connection.close()


def signed_push(delivery_id: str) -> tuple[str, bytes, dict[str, str]]:
    delivery = github_delivery("push", github_payload("push", None, 4), delivery_id=delivery_id)
    return delivery.path, delivery.body, delivery.headers


# -- the state store ---------------------------------------------------------------------------------


def test_a_locked_state_file_is_503_with_a_reason_inside_the_senders_timeout(serve: Serve) -> None:
    server = serve()
    holder = sqlite3.connect(server.config_path.parent / "state.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the state file's write lock
    try:
        sent = [signed_push(f"locked-{number}") for number in range(8)]  # twice the request threads
        with ThreadPoolExecutor(len(sent) + 1) as pool:
            answers = list(pool.map(lambda args: post(server, *args), sent))
            health = get(server, "/healthz")
    finally:
        holder.rollback()
        holder.close()
    accepted = post(server, *sent[0])

    for status, answer, seconds in answers:
        assert status == 503, answer
        assert "state store is busy" in answer["error"], answer
        assert seconds < SENDER_TIMEOUT, (seconds, answer)
    assert health[0] == 200
    assert accepted[:2] == (202, {"delivery": "locked-0", "route": "hello"})  # the sender's retry


class Silent:
    """A TCP server that accepts every connection and never answers: an AWS endpoint that hangs."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self._listener.accept()[0])

    def close(self) -> None:
        self._listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    hanging = Silent()
    try:
        yield hanging
    finally:
        hanging.close()


def test_a_hung_delivery_queue_is_503_inside_the_senders_timeout_and_the_delivery_still_builds(
    serve: Serve, silent: Silent, codebuild_double: CodeBuildDouble
) -> None:
    """Several replicas: DynamoDB stores the delivery, then SQS never answers the enqueue."""
    table = "bridge-hung-queue"
    create_table(boto3.client("dynamodb", region_name=REGION), table)
    server = serve(
        extra=f"""
[store]
backend = "dynamodb"
table = "{table}"

[queue]
url = "{silent.url}/123456789012/deliveries"
visibility_timeout_seconds = 2
wait_seconds = 1
""",
        env_changes={"AWS_ENDPOINT_URL_SQS": silent.url},
    )
    status, answer, seconds = post(server, *signed_push("queue-hangs"))
    wait_for(
        lambda: bool(codebuild_double.calls("StartBuild")),
        SWEEP_TIMEOUT,
        "the stored delivery's build",
        server.log_path,
    )
    builds = [
        {item["name"]: item["value"] for item in call.params["environmentVariablesOverride"]}.get(
            "BRIDGE_DELIVERY_ID"
        )
        for call in codebuild_double.calls("StartBuild")
    ]

    assert status == 503, answer
    assert "delivery queue" in answer["error"], answer
    assert seconds < SENDER_TIMEOUT, (seconds, answer)
    assert silent.accepted  # the enqueue did reach the endpoint that hangs
    assert builds == ["github:queue-hangs"]  # stored before the enqueue: a worker still found it


# -- slow and half-sent clients ----------------------------------------------------------------------

BIG = 26_214_400  # GitHub's 25 MiB payload cap, the default server.max_body_bytes
FORGED = "sha256=" + "0" * 64  # well-formed, so only the body's HMAC can refuse it


def head(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def half_sent(server: Server, kind: int) -> socket.socket:
    """An idle connection (0), one stopped inside its headers (1), or one stopped after one byte of a
    body of 1000 declared bytes, with a well-formed signature header (2)."""
    client = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    if kind == 1:
        client.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: pu")
    elif kind == 2:
        headers = {
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": FORGED,
            "Content-Type": "application/json",
        }
        client.sendall(head("/webhooks/github", 1000, headers) + b"{")
    return client


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def closed_by_server(client: socket.socket) -> bool:
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def test_slow_and_half_sent_connections_starve_neither_signed_deliveries_nor_healthz(serve: Serve) -> None:
    server = serve()
    slow = [half_sent(server, number % 3) for number in range(96)]
    try:
        wait_for(
            lambda: sockets_of(server.server_process()) > len(slow),  # and the listening socket
            SENDER_TIMEOUT,
            "the server to hold every slow connection",
            server.log_path,
        )
        health = get(server, "/healthz")
        sent = [signed_push(f"beside-slow-{number}") for number in range(8)]
        one_by_one = [post(server, *args) for args in sent[:4]]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda args: post(server, *args), sent[4:]))
        still_held = sockets_of(server.server_process()) > len(slow)
    finally:
        for client in slow:
            client.close()

    assert health[0] == 200
    for number, (status, answer, seconds) in enumerate(one_by_one + together):
        assert (status, answer) == (202, {"delivery": f"beside-slow-{number}", "route": "hello"})
        assert seconds < SENDER_TIMEOUT / 2, seconds
    assert still_held  # the deliveries were answered with every slow connection still open


def test_a_kept_alive_connection_waits_in_the_main_loop_and_is_served_again(serve: Serve) -> None:
    server = serve(server_extra="header_timeout_seconds = 1")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        answers = []
        for number in range(3):
            connection.request(
                *("POST", *signed_push(f"kept-{number}")[:2]), headers=signed_push(f"kept-{number}")[2]
            )
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read()), response.getheader("Connection")))
        sock = connection.sock
        assert sock is not None
        wait_for(lambda: closed_by_server(sock), 20, "the server to close the idle kept-alive connection")
    finally:
        connection.close()
    assert [answer[:2] for answer in answers] == [
        (202, {"delivery": f"kept-{number}", "route": "hello"}) for number in range(3)
    ]
    assert {answer[2] for answer in answers} == {"keep-alive"}


def test_a_client_that_stops_sending_is_disconnected_at_its_deadline(serve: Serve) -> None:
    server = serve(server_extra="header_timeout_seconds = 1\nbody_timeout_seconds = 1")
    in_headers, in_body = half_sent(server, 1), half_sent(server, 2)
    try:
        wait_for(lambda: closed_by_server(in_headers), 20, "the server to close a connection mid-headers")
        wait_for(lambda: closed_by_server(in_body), 20, "the server to close a connection mid-body")
    finally:
        in_headers.close()
        in_body.close()
    assert get(server, "/healthz")[0] == 200


# -- bodies: refused from their headers, and bounded ---------------------------------------------


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def answer_of(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (one request a connection)."""
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def send_big(server: Server, headers: dict[str, str], body: bytes) -> int | None:
    """Sends a whole 25 MiB post; the answer's status, or None when the server cut the upload short
    (it may answer and close as soon as the headers refuse it)."""
    client = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    try:
        with contextlib.suppress(OSError):
            client.sendall(head("/webhooks/github", len(body), headers) + body)
        try:
            answer = client.recv(64)
        except OSError:
            return None
        return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    finally:
        client.close()


def test_an_unsigned_body_is_refused_from_its_headers_and_never_held(serve: Serve) -> None:
    server = serve(max_body_bytes=BIG)
    pid = server.server_process()
    event = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "big", "Content-Type": "application/json"}

    # Refused before a byte of the body is sent: the answer does not wait for it.
    client = socket.create_connection(("127.0.0.1", server.port), timeout=SENDER_TIMEOUT)
    try:
        client.sendall(head("/webhooks/github", BIG, event))
        early = answer_of(client)
    finally:
        client.close()
    malformed = socket.create_connection(("127.0.0.1", server.port), timeout=SENDER_TIMEOUT)
    try:
        malformed.sendall(head("/webhooks/github", BIG, {**event, "X-Hub-Signature-256": "sha1=00"}))
        early_malformed = answer_of(malformed)
    finally:
        malformed.close()

    before = vm_kib(pid, "VmRSS")
    body = b"x" * BIG
    with ThreadPoolExecutor(16) as pool:
        for _round in range(3):
            statuses = list(pool.map(lambda _n: send_big(server, event, body), range(16)))
            assert set(statuses) <= {401, None}, statuses
    after = vm_kib(pid, "VmRSS")

    assert early.startswith(b"HTTP/1.1 401 "), early
    assert b"missing X-Hub-Signature-256 header" in early
    assert early_malformed.startswith(b"HTTP/1.1 401 "), early_malformed
    assert b"malformed X-Hub-Signature-256 header" in early_malformed
    assert after - before < 32_768, (before, after)  # KiB: 48 posts of 25 MiB left (almost) nothing behind


def test_bodies_in_flight_are_bounded_and_a_signed_delivery_still_gets_through(serve: Serve) -> None:
    budget = 2 * BIG
    # As many request threads as posts: only the budget can keep their bodies from being held at once.
    server = serve(max_body_bytes=BIG, server_extra=f"max_inflight_body_bytes = {budget}", threads=16)
    pid = server.server_process()
    before = vm_kib(pid, "VmHWM")
    forged = {"X-GitHub-Event": "push", "X-Hub-Signature-256": FORGED, "Content-Type": "application/json"}
    body = b"x" * BIG
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _n: send_big(server, forged, body), range(16)))
    accepted = post(server, *signed_push("after-forged"))
    peak = vm_kib(pid, "VmHWM")

    assert statuses == [401] * 16  # each body was read and its HMAC checked, a few at a time
    assert accepted[:2] == (202, {"delivery": "after-forged", "route": "hello"})
    # 16 bodies of 25 MiB, 400 MiB together; held at once: the budget, and the copies handling makes
    assert (peak - before) * 1024 < 4 * budget, (before, peak)


# -- AWS: region and credentials -----------------------------------------------------------------


def readyz(server: Server) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_aws_region_alone_names_the_region(serve: Serve, codebuild_double: CodeBuildDouble) -> None:
    """The variable configure-aws-credentials, ECS and Lambda set, with no region in the file."""
    boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="bridge/github-webhook", SecretString=GITHUB_SECRET
    )
    server = serve(refs="secretsmanager", region=False, env_changes={"AWS_DEFAULT_REGION": None})
    accepted = post(server, *signed_push("region-from-aws-region"))
    wait_for(lambda: bool(codebuild_double.calls("StartBuild")), SENDER_TIMEOUT, "the build", server.log_path)

    assert accepted[:2] == (202, {"delivery": "region-from-aws-region", "route": "hello"})


def test_no_region_or_no_credentials_is_503_with_a_reason_never_500(serve: Serve, tmp_path: Path) -> None:
    no_region = serve(
        refs="secretsmanager", region=False, env_changes={"AWS_DEFAULT_REGION": None, "AWS_REGION": None}
    )
    without_region = post(no_region, *signed_push("no-region"))
    no_region.stop_hard()
    no_region_log = no_region.log_path.read_text()
    no_region.log_path.write_text("")  # the next server logs to the same file
    no_credentials = serve(
        refs="secretsmanager", env_changes={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    )
    without_credentials = post(no_credentials, *signed_push("no-credentials"))
    not_ready = readyz(no_credentials)
    region_warned = "no AWS region: CodeBuild builds cannot start" in no_region_log
    credentials_warned = (
        "no AWS credentials: CodeBuild builds cannot start" in no_credentials.log_path.read_text()
    )

    assert without_region[0] == 503, without_region
    assert without_region[1]["error"]  # a reason; which secret and why go to the log only
    assert "Secrets Manager is unavailable: no AWS region" in no_region_log
    assert without_credentials[0] == 503, without_credentials
    assert without_credentials[1]["error"], without_credentials
    assert "no AWS credentials to read secret" in no_credentials.log_path.read_text()
    assert without_credentials[2] < SENDER_TIMEOUT
    assert not_ready[0] == 503, not_ready
    assert region_warned  # said at start-up, before any delivery
    assert credentials_warned
