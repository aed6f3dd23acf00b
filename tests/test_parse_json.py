"""bridge.app.parse_json: orjson's speed with exactly `json.loads`'s answers.

orjson is stricter than the standard library; whatever it refuses is parsed by `json.loads`, so a
body means what it meant before and a malformed one fails alike. Checked on the edges orjson is
known to treat differently, on the published webhook examples, and as a property over generated
JSON and arbitrary bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.app import parse_json

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
@given(value=json_values, ascii_only=st.booleans())
def test_generated_json_parses_alike(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    body = text.encode("utf-8", "surrogatepass")
    assert outcome(parse_json, body) == outcome(json.loads, body)


@settings(max_examples=300)
@given(body=st.binary(max_size=64))
def test_arbitrary_bytes_parse_or_fail_alike(body: bytes) -> None:
    assert outcome(parse_json, body) == outcome(json.loads, body)
