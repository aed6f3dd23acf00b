"""A switchable gate in front of moto's Secrets Manager, to make it throttle or vanish on cue.

The server process under test gets AWS_ENDPOINT_URL_SECRETS_MANAGER pointing here. In "forward"
mode each request goes to moto unchanged; in "throttle" mode it is answered with the
ThrottlingException that Secrets Manager sends (so botocore's own retry logic runs); `close()`
makes the port refuse connections (unreachable) and `open()` listens on the same port again.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, Literal

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

Mode = Literal["forward", "throttle"]
_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}


class SecretsManagerGate:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode: Mode = "forward"
        self.port = 0
        self.calls: list[tuple[str, str]] = []  # (X-Amz-Target operation, what the gate did)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> SecretsManagerGate:
        self._server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        operation = request.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        if self.mode == "throttle":
            self.calls.append((operation, "throttled"))
            body = {"__type": "ThrottlingException", "message": "Rate exceeded"}
            response = Response(json.dumps(body), status=400, content_type="application/x-amz-json-1.1")
            return response(environ, start_response)
        self.calls.append((operation, "forwarded"))
        forwarded = urllib.request.Request(
            self.upstream + request.full_path.rstrip("?"),
            data=request.get_data(),
            method=request.method,
            headers={k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP},
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=10) as upstream:
                status, headers, payload = upstream.status, dict(upstream.headers), upstream.read()
        except urllib.error.HTTPError as error:
            status, headers, payload = error.code, dict(error.headers), error.read()
        clean = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        return Response(payload, status=status, headers=clean)(environ, start_response)
