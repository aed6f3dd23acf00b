"""The request handler every fake server uses: they record requests themselves, so werkzeug's access
log line per request would only clutter test output (and flood a benchmark's)."""

from __future__ import annotations

from werkzeug.serving import WSGIRequestHandler


class QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass
