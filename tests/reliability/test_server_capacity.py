"""Hostile clients and a stuck state file against the real server process (`bridge serve`, gunicorn).

Slow and half-sent connections, unsigned bodies of 25 MiB and a state file another process holds
locked: the server must keep answering signed deliveries and /healthz, refuse what it can from the
headers alone, hold a bounded number of body bytes, and answer 503 with a reason well inside a
sender's timeout (GitHub gives up after 10 s) rather than stall.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    config_text,
    github_delivery,
    github_payload,
    secret_env,
)
from tests.e2e.test_server import MAX_BODY, Server, free_port
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

pytestmark = pytest.mark.e2e

SENDER_TIMEOUT = 10.0  # GitHub gives up on a delivery after 10 s and does not retry
CLIENT_TIMEOUT = 30.0  # this test's own bound, so a slow answer is measured rather than cut off

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

    def start(*, max_body_bytes: int = MAX_BODY, server_extra: str = "") -> Server:
        text = config_text(
            github_url=github_api.url,
            gitlab_url=gitlab_api.url,
            state_path="state.sqlite3",
            max_body_bytes=max_body_bytes,
        )
        if server_extra:
            text = text.replace("[server]\n", f"[server]\n{server_extra}\n", 1)
        config_path = tmp_path / "bridge.toml"
        config_path.write_text(text)
        env = {
            **os.environ,
            **aws_env,
            **secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token),
            "PYTHONUNBUFFERED": "1",
        }
        server = Server(config_path, tmp_path / "server.log", env, free_port())
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
