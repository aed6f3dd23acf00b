"""Structured logs: one JSON object a line, secrets masked by construction.

Values travel as they are; a `Secret` serializes as its mask because `default=str` calls its
__str__, so no call site has to remember to redact. Exceptions are logged by type and message,
which bridge's own errors keep free of secret values.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

# Set in a request's WSGI environ once the app has written that request's line (a delivery's line
# carries its status and latency too): the access log then skips it, so a delivery is one line.
LOGGED_BY_APP: Final = "bridge.logged"

_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["error"] = f"{type(error).__name__}: {error}"
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_json_logging(level: str = "INFO") -> None:
    """Route every logger (ours, gunicorn's, botocore's) through one JSON line formatter on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "urllib3", "github", "gitlab"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
