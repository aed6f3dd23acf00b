"""Signed deliveries beside slow and half-sent connections: what a slow-loris costs `bridge serve`.

Opens `--slow` connections (a third idle, a third stopped inside their headers, a third stopped
after one body byte of 1000 declared, with a well-formed signature header), checks the serving
process holds them all, then sends `--deliveries` signed pushes one at a time, each on a connection
of its own, and `/healthz` probes between them; prints the latencies and whether the slow
connections were still open at the end.

    python -m bench.slow_clients [--slow 128] [--deliveries 200]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from bench._fakes import FakesProcess
from bench._servers import (
    GITHUB_TOKEN,
    PUSH_BODY,
    SECRET,
    bench_config,
    bridge_command,
    free_port,
    running,
    server_env,
)
from tests.signing import github_headers


def half_sent(port: int, kind: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=60)
    if kind == 1:
        client.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: pu")
    elif kind == 2:
        client.sendall(
            b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
            b"X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n\r\n{"
        )
    return client


def sockets_of(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def timed(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, float]:
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - began
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slow", type=int, default=128)
    parser.add_argument("--deliveries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, FakesProcess(GITHUB_TOKEN) as fakes:
        workdir = Path(directory)
        config = workdir / "bridge.toml"
        config.write_text(bench_config(workdir, fakes.github_url))
        port = free_port()
        env = server_env(fakes.codebuild_url)
        with running("bridge", bridge_command(config, port), workdir, port, env=env) as server:
            (pid,) = server.worker_pids()
            slow = [half_sent(port, number % 3) for number in range(args.slow)]
            deadline = time.monotonic() + 30
            while sockets_of(pid) <= args.slow and time.monotonic() < deadline:
                time.sleep(0.05)
            held_before = sockets_of(pid) - 1  # the listening socket
            headers = github_headers(PUSH_BODY, SECRET, event="push", delivery="x")
            deliveries: list[float] = []
            health: list[float] = []
            statuses: dict[int, int] = {}
            for number in range(args.deliveries):
                status, seconds = timed(
                    port,
                    "POST",
                    "/webhooks/github",
                    PUSH_BODY,
                    {**headers, "X-GitHub-Delivery": f"slow-{number}"},
                )
                statuses[status] = statuses.get(status, 0) + 1
                deliveries.append(seconds)
                health.append(timed(port, "GET", "/healthz")[1])
            held_after = sockets_of(pid) - 1
            for client in slow:
                client.close()
    ms = sorted(1000 * value for value in deliveries)
    print(
        json.dumps(
            {
                "slow_connections": args.slow,
                "held_before": held_before,
                "held_after": held_after,
                "deliveries": args.deliveries,
                "statuses": statuses,
                "delivery_ms": {
                    "p50": round(statistics.median(ms), 2),
                    "p99": round(ms[int(len(ms) * 0.99) - 1], 2),
                    "max": round(ms[-1], 2),
                },
                "healthz_ms_max": round(1000 * max(health), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
