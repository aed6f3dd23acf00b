"""Structured logs: one JSON object a line for machines, one readable line for a person at a terminal,
secrets masked by construction in both.

Values travel as they are; a `Secret` serializes as its mask because `default=str` calls its
__str__ (and the text line writes str() of each value), so no call site has to remember to redact.
Exceptions are logged by type and message, which bridge's own errors keep free of secret values.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final, Literal, TextIO

from bridge import jsonfast

# Set in a request's WSGI environ once the app has written that request's line (a delivery's line
# carries its status and latency too): the access log then skips it, so a delivery is one line.
LOGGED_BY_APP: Final = "bridge.logged"

LogFormat = Literal["auto", "text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("auto", "text", "json")

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


class _Stamped(logging.Formatter):
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

    @staticmethod
    def _fields(record: logging.LogRecord) -> dict[str, Any]:
        fields = record.__dict__.get(_FIELDS)
        if fields is not None:
            return fields  # type: ignore[no-any-return]
        return {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        }


class JsonFormatter(_Stamped):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(self._fields(record))
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["error"] = f"{type(error).__name__}: {error}"
        return _ENCODER.encode(entry)


def _text_value(value: Any) -> str:
    """A value as `key=value` shows it: bare when it is one plain word, else quoted with escapes, so a
    line stays one line and a value with spaces or `=` cannot pass for another field."""
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return _ENCODER.encode(text)


class TextFormatter(_Stamped):
    """`TIME LEVEL LOGGER: message key=value …`: the JSON line's fields, for a person at a terminal.

    Fields that are None are left out (the JSON line keeps them), so a line reads as what happened.
    """

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            self._timestamp(record),
            f"{record.levelname.lower():<7}",
            f"{record.name}:",
            record.getMessage().replace("\n", "\\n"),
        ]
        parts.extend(
            f"{key}={_text_value(value)}" for key, value in self._fields(record).items() if value is not None
        )
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            parts.append(f"error={_text_value(f'{type(error).__name__}: {error}')}")
        return " ".join(parts)


_formatter: Final[list[logging.Formatter]] = [JsonFormatter()]


def resolve_format(log_format: str, stream: TextIO) -> Literal["text", "json"]:
    """auto: text on a terminal (a person reads it), JSON anywhere else (a log collector reads it)."""
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    if log_format in ("text", "json"):
        return log_format  # type: ignore[return-value]
    raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")


def current_formatter() -> logging.Formatter:
    """The formatter configure_logging chose, for handlers made later (gunicorn's)."""
    return _formatter[0]


def configure_json_logging(level: str = "INFO") -> None:
    """configure_logging with JSON lines whatever stderr is."""
    configure_logging(level, "json")


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    """Route every logger (ours, gunicorn's, botocore's) through one line formatter on stderr: JSON,
    text, or auto (text on a terminal, JSON otherwise).

    The formatter writes no caller, thread or process fields, so the logging module is told not to
    collect them (its documented optimisations): finding the caller walks the stack on every line,
    which on the webhook path cost more than formatting the line.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the switch the logging HOWTO's Optimization table names for this
    handler = logging.StreamHandler(sys.stderr)
    formatter = TextFormatter() if resolve_format(log_format, sys.stderr) == "text" else JsonFormatter()
    _formatter[0] = formatter
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "urllib3", "github", "gitlab"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
