"""The ack benchmark's baseline: a bare Flask endpoint that only reads the body, served exactly as
`bridge serve` serves bridge (the same embedded gunicorn, options and JSON access log).

    python bench/baseline_app.py --port 8081 --threads 8
"""

from __future__ import annotations

import argparse

from flask import Flask, request

from bridge.app import INTAKE_KEY, Intake
from bridge.config import ServerSettings
from bridge.logs import configure_json_logging
from bridge.server import BridgeServer, server_options


def bare_app() -> Flask:
    app = Flask("baseline")

    @app.post("/webhooks/github")
    def read_body() -> tuple[str, int]:
        request.get_data()
        return "{}", 202

    @app.get("/readyz")
    def ready() -> str:
        return "{}"

    # Received as bridge's requests are (bridge.intake): in the main loop, body and all, before a
    # request thread takes it. Nothing is refused from its headers: the bare endpoint checks nothing.
    defaults = ServerSettings()
    app.extensions[INTAKE_KEY] = Intake(
        max_body_bytes=defaults.max_body_bytes,
        header_timeout_seconds=defaults.header_timeout_seconds,
        body_timeout_seconds=defaults.body_timeout_seconds,
        max_inflight_body_bytes=defaults.max_inflight_body_bytes,
        refused=lambda method, path, _header: method != "POST",
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    configure_json_logging()  # as `bridge serve` does: the same log records and formatter on both sides
    BridgeServer(bare_app, server_options(host=args.host, port=args.port, threads=args.threads)).run()


if __name__ == "__main__":
    main()
