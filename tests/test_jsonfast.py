"""bridge.jsonfast: orjson's speed with exactly the standard library's answers.

orjson is stricter than the standard library; whatever it refuses is parsed by `json.loads`, so a
body means what it meant before and a malformed one fails alike. Checked on the edges orjson is
known to treat differently, on the published webhook examples, and as a property over generated
JSON and arbitrary bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.jsonfast import Encoder, may_hold_a_long_integer
from bridge.jsonfast import loads as parse_json
from bridge.secret import Secret

PAYLOADS = Path(__file__).parent / "payloads"


def outcome(parse: Any, body: bytes) -> tuple[str, str]:
    """What a parser makes of `body`: ("ok", repr of the value) or ("error", the exception family)."""
    try:
        return "ok", repr(parse(body))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return "error", "RecursionError" if isinstance(exc, RecursionError) else "ValueError"


EDGES = [
    pytest.param(b'{"a": NaN, "b": Infinity, "c": -Infinity}', id="NaN and Infinity"),
    pytest.param(b'{"id": 123456789012345678901234567890}', id="an integer beyond 64 bits"),
    pytest.param(b'{"id": -9223372036854775809}', id="one below the smallest 64-bit integer"),
    pytest.param(b'{"id": 18446744073709551616}', id="one above the largest unsigned 64-bit integer"),
    pytest.param(b'{"id": 9223372036854775807}', id="the largest 64-bit integer"),
    pytest.param(b'{"ref": "refs/heads/\\ud800"}', id="a lone surrogate escape"),
    pytest.param(b'{"x": 1e400}', id="a float beyond double range"),
    pytest.param(b"[" * 2000 + b"]" * 2000, id="nesting deeper than orjson allows"),
    pytest.param(b'{"a": 1, "a": 2}', id="a duplicate key"),
    pytest.param(b'\xef\xbb\xbf{"a": 1}', id="a UTF-8 byte order mark"),
    pytest.param(b'{"a": "\xff"}', id="invalid UTF-8"),
    pytest.param(b'{"ref": "refs/heads/$(reboot)", "n": -0, "f": 1.0}', id="ordinary values"),
    pytest.param(b'{"ref": "x",', id="truncated"),
    pytest.param(b"", id="empty"),
    pytest.param(b"  {}  ", id="whitespace around"),
    pytest.param(b'{"id":\r\n\t-123456789012345678901}', id="a long negative integer after whitespace"),
    pytest.param(b"[1,-123456789012345678901]", id="a long negative integer in an array"),
    pytest.param(b"-123456789012345678901", id="a long negative integer alone"),
    pytest.param(b'\xef\xbb\xbf{"id": -123456789012345678901}', id="a long integer after a byte order mark"),
    pytest.param(
        b'{"x": 0.1234567890123456789012, "y": 1e1234567890123456789}', id="long fraction, exponent"
    ),
]


@pytest.mark.parametrize("body", EDGES)
def test_every_edge_means_what_json_loads_says(body: bytes) -> None:
    assert outcome(parse_json, body) == outcome(json.loads, body)


def test_the_edges_include_bodies_orjson_alone_would_refuse() -> None:
    """Without the fallback these would fail (or silently differ): the table above does test it."""
    bodies = [param.values[0] for param in EDGES]
    assert all(isinstance(body, bytes) for body in bodies)
    refused = [
        body for body in bodies if isinstance(body, bytes) and outcome(orjson.loads, body)[0] == "error"
    ]
    accepted_by_json = [body for body in refused if outcome(json.loads, body)[0] == "ok"]
    assert len(accepted_by_json) >= 3


@pytest.mark.parametrize(
    ("body", "long_integer"),
    [
        pytest.param(b'{"id": -123456789012345678901}', True, id="after a colon and a space"),
        pytest.param(b'{"id":123456789012345678901}', True, id="after a colon"),
        pytest.param(b"[0,123456789012345678901]", True, id="after a comma"),
        pytest.param(b"[123456789012345678901]", True, id="after a bracket"),
        pytest.param(b'{"a":\n\t-1234567890123456789}', True, id="after a newline and a tab"),
        pytest.param(b"1234567890123456789", True, id="at the start"),
        pytest.param(b'{"before": "0000000000000000000000000000000000000000"}', False, id="a zero sha"),
        pytest.param(b'{"id": "1234567890123456789012"}', False, id="digits in a string"),
        pytest.param(b'{"n": 123456789012345678}', False, id="18 digits"),
        pytest.param(b'{"x": 1.1234567890123456789}', False, id="a long fraction"),
        pytest.param(b'{"x": 1e1234567890123456789}', False, id="a long exponent"),
        pytest.param(
            b'{"t": "at 1234567890123456789"}', True, id="a run after a space in a string (slow only)"
        ),
    ],
)
def test_only_a_long_integer_token_leaves_the_fast_path(body: bytes, long_integer: bool) -> None:
    assert may_hold_a_long_integer(body) is long_integer
    assert outcome(parse_json, body) == outcome(json.loads, body)


# The definition, written the slow way: 19 digits that start a token (at the start of the body, or
# after `[`, `:`, `,` or whitespace, with an optional minus).
_LONG_INTEGER_TOKEN = re.compile(rb"(?:\A|[\[:, \t\n\r])-?[0-9]{19}")


# Pieces that make runs of 18, 19 and more digits in every context, glued in any order.
_PIECES = st.sampled_from(
    [
        b"1234567890123456789",
        b"123456789012345678",
        b"0",
        b"7",
        b"-",
        b"[",
        b":",
        b",",
        b" ",
        b"\n",
        b'"',
        b"a",
    ]
)


@settings(max_examples=500)
@given(body=st.lists(_PIECES, max_size=12).map(b"".join) | st.binary(max_size=64))
def test_the_long_integer_check_matches_its_definition(body: bytes) -> None:
    """The quick search for a digit run, then the context check, answer as the definition does."""
    assert may_hold_a_long_integer(body) is (_LONG_INTEGER_TOKEN.search(body) is not None)


def test_a_new_branch_push_with_its_zero_sha_takes_the_fast_path() -> None:
    """Every new-branch push carries an all-zero `before`; it once sent the whole body to json.loads."""
    created = [
        path.read_bytes()
        for path in sorted(PAYLOADS.rglob("*.json"))
        if b'"0000000000000000000' in path.read_bytes()
    ]
    assert created, "the published examples include a push with an all-zero sha"
    assert not [body for body in created if may_hold_a_long_integer(body)]


@pytest.mark.parametrize("path", sorted(PAYLOADS.rglob("*.json")), ids=lambda path: path.name)
def test_published_webhook_examples_parse_alike(path: Path) -> None:
    body = path.read_bytes()
    assert outcome(parse_json, body) == outcome(json.loads, body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(alphabet=st.characters(codec=None)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(value=json_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2, "\t"]))
def test_generated_json_parses_alike(value: Any, ascii_only: bool, indent: int | str | None) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    body = text.encode("utf-8", "surrogatepass")
    assert outcome(parse_json, body) == outcome(json.loads, body)


@settings(max_examples=300)
@given(body=st.binary(max_size=64))
def test_arbitrary_bytes_parse_or_fail_alike(body: bytes) -> None:
    assert outcome(parse_json, body) == outcome(json.loads, body)


# --- writing ------------------------------------------------------------------------------------------


def standard(value: Any, *, sort_keys: bool = False, ensure_ascii: bool = True) -> str:
    return json.JSONEncoder(
        sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=ensure_ascii, default=str
    ).encode(value)


WRITE_EDGES = [
    pytest.param({"b": 1, "a": [1.5, None, True, "ü"]}, id="ordinary values"),
    pytest.param({"ref": "refs/heads/\ud800"}, id="a lone surrogate"),
    pytest.param({"id": 2**70, "neg": -(2**64)}, id="integers beyond 64 bits"),
    pytest.param({2: "two", 1: "one"}, id="non-string keys"),
    pytest.param({"nested": {"z": 1, "a": {"y": 2, "b": 3}}}, id="nested keys to sort"),
]


@pytest.mark.parametrize("value", WRITE_EDGES)
@pytest.mark.parametrize("sort_keys", [False, True])
def test_what_is_written_reads_back_as_the_standard_encoders_output(value: Any, sort_keys: bool) -> None:
    written = Encoder(sort_keys=sort_keys, default=str).encode(value)
    assert json.loads(written) == json.loads(standard(value, sort_keys=sort_keys))
    if sort_keys:
        assert written == standard(value, sort_keys=True, ensure_ascii=False) or "\\ud800" in written


def test_a_lone_surrogate_is_escaped_so_the_text_stays_valid_utf8() -> None:
    written = Encoder().encode_bytes({"ref": "refs/heads/\ud800"})
    assert written == b'{"ref":"refs/heads/\\ud800"}'
    written.decode("utf-8")  # strict: would raise on an unpaired surrogate


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param([1.5, math.inf], b"[1.5,null]", id="orjson writes it"),
        pytest.param([-(2**63) - 1, math.inf], b"[-9223372036854775809,null]", id="with a long integer"),
        pytest.param({"x": ["\ud800", math.nan]}, b'{"x":["\\ud800",null]}', id="with a lone surrogate"),
        pytest.param((2**64, -math.inf), b"[18446744073709551616,null]", id="in a tuple"),
    ],
)
def test_nan_and_infinity_are_null_whichever_encoder_writes(value: Any, expected: bytes) -> None:
    """Found by the property below: the standard encoder, orjson's fallback, wrote `Infinity`."""
    assert Encoder().encode_bytes(value) == expected
    assert Encoder().encode(value) == expected.decode()


def test_a_value_that_holds_itself_is_refused_as_the_standard_encoder_refuses_it() -> None:
    looped: list[Any] = [2**70, math.nan]
    looped.append({"again": looped})
    with pytest.raises(ValueError, match="Circular reference detected"):
        Encoder().encode(looped)
    with pytest.raises(ValueError, match="Circular reference detected"):
        json.JSONEncoder().encode(looped)


def test_nan_from_default_is_null_in_the_fallback_too() -> None:
    written = Encoder(default=lambda item: [math.nan]).encode({"n": 2**70, "o": object()})
    assert written == '{"n":1180591620717411303424,"o":[null]}'


class Masked:
    def __str__(self) -> str:
        return "***"


@dataclass
class Holder:
    token: str


class Subclass(str):
    def __str__(self) -> str:
        return "***"


def test_types_the_standard_encoder_hands_to_default_still_go_to_default() -> None:
    """orjson would write a dataclass's fields and a str subclass's raw text: a secret would leak."""
    when = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    written = json.loads(
        Encoder(default=str).encode(
            {
                "secret": Secret("hunter2"),
                "masked": Masked(),
                "holder": Holder("hunter2"),
                "sub": Subclass("hunter2"),
                "at": when,
            }
        )
    )
    assert written["secret"] == str(Secret("hunter2"))
    assert "hunter2" not in json.dumps(written["secret"])
    assert written["masked"] == "***"
    assert written["holder"] == str(Holder("hunter2"))  # what json's default=str wrote, no field walk
    assert written["sub"] == "***"
    assert written["at"] == str(when)


def test_a_value_default_cannot_write_fails_as_with_the_standard_encoder() -> None:
    def refuse(value: Any) -> Any:
        raise TypeError(f"cannot write {type(value).__name__}")

    with pytest.raises(TypeError, match="cannot write object"):
        Encoder(default=refuse).encode({"x": object()})


def finite(value: Any) -> Any:
    """The one difference, on purpose: NaN and ±Infinity are written as null (valid JSON), not as
    the standard encoder's non-standard NaN/Infinity tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite(item) for item in value]
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    return value


@settings(max_examples=300)
@given(value=json_values, sort_keys=st.booleans())
def test_generated_values_read_back_alike(value: Any, sort_keys: bool) -> None:
    written = Encoder(sort_keys=sort_keys).encode_bytes(value)
    expected = standard(finite(value), sort_keys=sort_keys).encode()
    assert outcome(json.loads, written) == outcome(json.loads, expected)
