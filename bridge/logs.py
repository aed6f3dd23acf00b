"""Structured logs: one JSON object a line, secrets masked by construction.

Values travel as they are; a `Secret` serializes as its mask because `default=str` calls its
__str__, so no call site has to remember to redact. Exceptions are logged by type and message,
which bridge's own errors keep free of secret values.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

from bridge import jsonfast

# Set in a request's WSGI environ once the app has written that request's line (a delivery's line
# carries its status and latency too): the access log then skips it, so a delivery is one line.
LOGGED_BY_APP: Final = "bridge.logged"

# One encoder for every line (json.dumps with options builds a new encoder on each call).
_ENCODER: Final = jsonfast.Encoder(default=str, ensure_ascii=False)

_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# A record made by log_fields keeps its fields here too, so the formatter need not look for them.
_FIELDS: Final = "_bridge_fields"


def log_fields(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """`logger.log(level, msg, extra=fields)` for a line of many fields, at well under its cost.

    The fields become record attributes as `extra` makes them (so any formatter sees them), in one
    dict update instead of a loop, and the record keeps the dict itself, which JsonFormatter writes
    as it is instead of scanning some twenty standard attributes for what was added. The webhook
    writes such a line for every delivery, and its logging was an eighth of the ack's Python work.
    """
    if not logger.isEnabledFor(level):
        return
    if not _STANDARD_ATTRS.isdisjoint(fields):
        clash = sorted(_STANDARD_ATTRS.intersection(fields))
        raise KeyError(f"Attempt to overwrite {clash} in LogRecord")  # as `extra` refuses them
    record = logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, (), None)
    record.__dict__.update(fields)
    record.__dict__[_FIELDS] = fields
    logger.handle(record)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # (second, its text): one tuple, so a thread never pairs one second with another's text.
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        """ISO 8601 UTC with milliseconds. strftime is a third of a line's cost; once a second will do."""
        second = int(record.created)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__.get(_FIELDS)
        if fields is not None:
            entry.update(fields)
        else:
            for key, value in vars(record).items():
                if key not in _STANDARD_ATTRS and not key.startswith("_"):
                    entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["error"] = f"{type(error).__name__}: {error}"
        return _ENCODER.encode(entry)


def configure_json_logging(level: str = "INFO") -> None:
    """Route every logger (ours, gunicorn's, botocore's) through one JSON line formatter on stderr.

    The formatter writes no caller, thread or process fields, so the logging module is told not to
    collect them (its documented optimisations): finding the caller walks the stack on every line,
    which on the webhook path cost more than formatting the line.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the switch the logging HOWTO's Optimization table names for this
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "urllib3", "github", "gitlab"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
