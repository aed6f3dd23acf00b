"""Webhook ack work, counted: Python bytecodes executed per delivery by the bridge's WSGI app and by
the bare Flask baseline, called in-process (no server, no sockets), and which functions run them.

    python -m bench.ack_work [--deliveries 300] [--top 25]

Timings on a shared VM move by ±10% from one minute to the next; this count repeats to within
0.1%, so a change to the ack path can be judged by it before the noisy throughput benchmark. It
counts interpreter steps, not time (a step in C, such as orjson's parse or SQLite, counts once),
so it steers Python-level work only. Every bridge request is a complete delivery: verified,
parsed, routed, committed to SQLite and answered 202.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from bench._servers import PUSH_BODY, SECRET, bench_config, server_env
from bench.baseline_app import bare_app
from bridge.app import create_app
from bridge.config import parse_config
from bridge.logs import configure_json_logging
from bridge.services import build_services
from bridge.worker import Worker
from tests.signing import github_headers

WARM_UP = 50
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _environ(number: int) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/webhooks/github",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(PUSH_BODY),
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(PUSH_BODY)),
        "CONTENT_TYPE": "application/json",
    }
    for name, value in github_headers(PUSH_BODY, SECRET, event="push", delivery=f"work-{number}").items():
        if name.lower() != "content-type":
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def count(app: WsgiApp, deliveries: int) -> tuple[float, collections.Counter[str]]:
    """Bytecodes per delivery, and per function (file:name, exclusive) over all deliveries."""
    statuses: list[str] = []

    def start_response(status: str, _headers: Any, _exc_info: Any = None) -> None:
        statuses.append(status)

    by_function: collections.Counter[str] = collections.Counter()

    def trace(frame: FrameType, event: str, _arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            by_function[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        return trace

    environs = [_environ(number) for number in range(WARM_UP + deliveries)]
    for environ in environs[:WARM_UP]:
        b"".join(app(environ, start_response))
    sys.settrace(trace)
    try:
        for environ in environs[WARM_UP:]:
            b"".join(app(environ, start_response))
    finally:
        sys.settrace(None)
    answered = collections.Counter(statuses[WARM_UP:])
    if set(answered) != {"202 ACCEPTED"}:
        raise RuntimeError(f"not every delivery was accepted: {dict(answered)}")
    return sum(by_function.values()) / deliveries, by_function


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--top", type=int, default=25, help="functions to list for the bridge")
    args = parser.parse_args()

    os.environ.update(server_env())  # the webhook secret the bench config names
    configure_json_logging()  # as `bridge serve` logs: each delivery's line is made and written...
    with tempfile.TemporaryDirectory(prefix="bench-ack-work-") as tmp, open(os.devnull, "w") as sink:
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(sink)  # ...to /dev/null instead of stderr
        workdir = Path(tmp)
        config = parse_config(bench_config(workdir), base_dir=workdir)
        services = build_services(config)
        bridge = create_app(config, services, worker=Worker(services))  # not started: no builds
        bare, _ = count(bare_app(), args.deliveries)
        per_delivery, by_function = count(bridge, args.deliveries)
    print(f"bytecodes per delivery: bridge {per_delivery:,.0f}, bare Flask {bare:,.0f}")
    print(f"top {args.top} functions of the bridge's (exclusive, per delivery):")
    for name, steps in by_function.most_common(args.top):
        print(f"  {steps / args.deliveries:8,.0f}  {name}")


if __name__ == "__main__":
    main()
