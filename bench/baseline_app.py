"""The ack benchmark's baseline: a bare Flask endpoint that only reads the body, served exactly as
`bridge serve` serves bridge (the same embedded gunicorn, options and JSON access log).

    python bench/baseline_app.py --port 8081 --threads 8
"""

from __future__ import annotations

import argparse

from flask import Flask, request

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
