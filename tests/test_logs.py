"""The JSON log line: its timestamp, which record attributes it carries, and how the process is set up."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.logs import JsonFormatter, TextFormatter, configure_json_logging, log_fields, resolve_format
from bridge.secret import MASK, Secret


def _record(created: float = 1_700_000_000.25, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("bridge.test", logging.INFO, __file__, 1, "delivery %s", ("x",), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _expected_ts(created: float) -> str:
    moment = dt.datetime.fromtimestamp(int(created), dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{int((created - int(created)) * 1000):03d}Z"


@pytest.mark.parametrize(
    "times",
    [
        [1_700_000_000.0, 1_700_000_000.999],  # the same second: the cached text serves both
        [1_700_000_000.5, 1_700_000_001.5],  # the next second: the text is made anew
        [1_700_000_001.5, 1_700_000_000.5],  # a record from a thread that formats late: back in time
        [0.0, 1_700_000_000.1, 0.001],  # far apart, and back again
        [1_699_999_999.999, 1_700_000_000.0],  # across a second boundary by one millisecond
    ],
)
def test_each_line_is_stamped_with_its_own_records_time(times: list[float]) -> None:
    formatter = JsonFormatter()
    for created in times:
        assert json.loads(formatter.format(_record(created)))["ts"] == _expected_ts(created)


@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=30))
def test_the_timestamp_is_right_in_any_order_of_records(times: list[float]) -> None:
    formatter = JsonFormatter()
    for created in times:
        assert json.loads(formatter.format(_record(created)))["ts"] == _expected_ts(created)


def test_a_line_carries_the_message_and_extras_and_drops_the_records_own_attributes() -> None:
    line = json.loads(JsonFormatter().format(_record(delivery="d-1", status=202, _private="no")))
    assert line == {
        "ts": _expected_ts(1_700_000_000.25),
        "level": "info",
        "logger": "bridge.test",
        "msg": "delivery x",
        "delivery": "d-1",
        "status": 202,
    }


def test_a_secret_in_an_extra_is_written_as_its_mask() -> None:
    line = JsonFormatter().format(_record(token=Secret("ghp_do-not-print-me")))
    assert "ghp_do-not-print-me" not in line
    assert json.loads(line)["token"] == MASK


def test_an_exception_is_written_by_type_and_message() -> None:
    error = ValueError("bad value")
    exc_info = (ValueError, error, error.__traceback__)
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, exc_info)
    assert json.loads(JsonFormatter().format(record))["error"] == "ValueError: bad value"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_json_logging changes process-wide state: put it back for the other tests."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging._srcfile, logging.logThreads, logging.logProcesses)
    saved_multiprocessing = logging.logMultiprocessing
    yield
    root.handlers[:], level, logging._srcfile, logging.logThreads, logging.logProcesses = saved
    root.setLevel(level)
    logging.logMultiprocessing = saved_multiprocessing


@pytest.mark.usefixtures("restored_logging")
def test_configured_logging_does_not_collect_what_no_line_shows() -> None:
    """Finding the caller walks the stack on every line; the JSON line has no place for it."""
    configure_json_logging()
    captured = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(captured)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger().addHandler(Keep())
    logging.getLogger("bridge.test").info("hello", extra={"delivery": "d-2"})
    (record,) = records
    assert (record.lineno, record.funcName) == (0, "(unknown function)")
    assert (record.thread, record.process, record.processName) == (None, None, None)
    assert json.loads(captured.getvalue())["delivery"] == "d-2"


class _Keep(logging.Handler):
    """The records a logger hands its handlers, formatted as the server formats them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[tuple[logging.Logger, _Keep]]:
    logger = logging.getLogger("bridge.test.fields")
    handler = _Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)
    logger.propagate = True


FIELDS: dict[str, Any] = {
    "delivery": "d-1",
    "provider": "github",
    "event": None,
    "status": 202,
    "latency_ms": 1.5,
    "token": Secret("ghp_do-not-print-me"),
}


def test_log_fields_writes_the_line_logger_log_with_extra_writes(kept: tuple[logging.Logger, _Keep]) -> None:
    logger, handler = kept
    logger.log(logging.WARNING, "delivery", extra=FIELDS)
    log_fields(logger, logging.WARNING, "delivery", FIELDS)
    by_extra, by_fields = (json.loads(handler.format(record)) for record in handler.records)
    del by_extra["ts"], by_fields["ts"]
    assert by_fields == by_extra
    assert list(by_fields) == ["level", "logger", "msg", *FIELDS]  # the fields in the order given
    assert by_fields["token"] == MASK
    assert (by_fields["level"], by_fields["logger"], by_fields["msg"]) == ("warning", logger.name, "delivery")


def test_log_fields_sets_the_fields_on_the_record_for_any_other_formatter(
    kept: tuple[logging.Logger, _Keep],
) -> None:
    logger, handler = kept
    log_fields(logger, logging.INFO, "delivery %s", {"delivery": "d-9", "status": 200})
    (record,) = handler.records
    assert (record.delivery, record.status) == ("d-9", 200)  # type: ignore[attr-defined]
    assert logging.Formatter("%(delivery)s %(status)s %(message)s").format(record) == "d-9 200 delivery %s"


def test_log_fields_writes_nothing_below_the_level(kept: tuple[logging.Logger, _Keep]) -> None:
    logger, handler = kept
    log_fields(logger, logging.DEBUG, "delivery", {"delivery": "d-1"})
    assert handler.records == []


@pytest.mark.parametrize("clash", ["msg", "name", "levelname", "message", "created"])
def test_log_fields_refuses_a_field_that_would_overwrite_the_record_as_extra_does(
    kept: tuple[logging.Logger, _Keep], clash: str
) -> None:
    logger, handler = kept
    with pytest.raises(KeyError, match=clash):
        logger.info("delivery", extra={clash: "x"})
    with pytest.raises(KeyError, match=clash):
        log_fields(logger, logging.INFO, "delivery", {"delivery": "d-1", clash: "x"})
    assert handler.records == []


def test_a_text_line_has_the_json_lines_fields_one_line_and_masked() -> None:
    record = _record(delivery="d-1", event="Push Hook", route=None, token=Secret("ghp_do-not-print-me"))
    record.msg, record.args = "two\nlines", ()
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith('two\\nlines delivery=d-1 event="Push Hook" token=***')  # None fields left out
    assert "ghp_do-not-print-me" not in line
    injected = TextFormatter().format(_record(reason='x" status=202 "y'))
    assert injected.endswith('reason="x\\" status=202 \\"y"')  # a value cannot pass for another field


@pytest.mark.parametrize(("terminal", "expected"), [(True, "text"), (False, "json")])
def test_auto_is_text_on_a_terminal_and_json_otherwise(terminal: bool, expected: str) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    assert resolve_format("auto", Stream()) == expected
    assert resolve_format("json", Stream()) == "json"
    assert resolve_format("text", Stream()) == "text"
