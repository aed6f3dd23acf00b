"""JSON on the ack path: orjson's speed, the standard library's meaning.

Every delivery is parsed once and written three times (its stored event, its 202 body, its log
line), and the ack path's CPU is what bounds the server's throughput. orjson parses GitHub's 8 KB
push example in 15 µs against `json.loads`'s 69, and writes in a tenth of the time. Measured in
`bench.ack`-style A/B rounds: parsing 475 → 527 req/s, writing a further 506 → 529 req/s.

orjson is stricter than the standard library, and where it refuses, the standard library answers,
so a body means what it always meant and a line or row reads as it always did:
- parsing: NaN and Infinity, lone surrogate escapes and nesting deeper than 1,024 are refused by
  orjson and parsed (or refused alike) by `json.loads`; one difference is silent (orjson reads an
  integer beyond 64 bits as a float), so a body with a number token of 19 digits or more goes to
  `json.loads` first. Only a run that starts a token counts (after `[`, `:`, `,`, whitespace or the
  start, with an optional minus): a run inside a string such as the all-zero `before` sha of every
  new-branch push is preceded by a quote or another character, and such pushes keep the fast path;
- writing: strings with lone surrogates, integers beyond 64 bits and non-string keys make orjson
  raise, and the standard encoder writes them instead. Objects orjson would write natively but the
  standard encoder hands to `default` (dataclasses, datetimes, str subclasses) are passed through
  to `default` as well, so a type that masks itself in `str()` (bridge.secret.Secret) stays masked.
  One difference remains, on purpose: NaN and ±Infinity are written as null (valid JSON) instead of
  the standard encoder's non-standard NaN/Infinity tokens. Nothing bridge writes holds them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Final

import orjson


def _byte_class(byte: int) -> int:
    if byte in b"0123456789":
        return ord("0")
    if byte in b"[:, \t\n\r":  # what may come right before a number token
        return ord("s")
    return byte if byte == ord("-") else ord("x")


# 19 digits can exceed a signed 64-bit integer, which orjson would read as a float. A JSON integer
# token starts after a structural character or whitespace (RFC 8259 §2), so a run preceded by
# anything else is inside a string (or a fraction or exponent, which are floats for both parsers).
# Found by mapping each byte to its class and searching with bytes' C-speed `in`: a regular
# expression walks an 8 KB body at ~100 µs, longer than orjson takes to parse it.
_CLASSES: Final = bytes(_byte_class(byte) for byte in range(256))
_RUN: Final = b"0" * 19
_LONG_INTEGER_STARTS: Final = (_RUN, b"-" + _RUN)  # a body that is one long integer
_LONG_INTEGER_TOKENS: Final = (b"s" + _RUN, b"s-" + _RUN)
_PASSTHROUGH: Final = (
    orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def loads(body: bytes) -> Any:
    """`json.loads(body)`: the same value, or the same family of error (ValueError, RecursionError)."""
    if may_hold_a_long_integer(body):
        return json.loads(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def may_hold_a_long_integer(body: bytes) -> bool:
    """True when `body` may hold an integer orjson would read as a float; false positives only cost time."""
    classes = body.translate(_CLASSES)
    # find(), not `in`: bytes' `in` first tries its operand as an integer (`65 in b"A"`), and for a
    # bytes operand raises, formats and clears a TypeError on every call.
    if classes.find(_RUN) < 0:  # the usual answer, found in one search
        return False
    return classes.startswith(_LONG_INTEGER_STARTS) or any(
        classes.find(token) >= 0 for token in _LONG_INTEGER_TOKENS
    )


class Encoder:
    """`json.JSONEncoder(...).encode` with orjson in front: compact separators, and UTF-8 for what
    orjson writes (valid text either way; `ensure_ascii` only shapes the fallback's output, where
    a lone surrogate can only be written as an escape).

    `default` is called for what JSON has no type for, as the standard encoder calls it.
    """

    def __init__(
        self,
        *,
        sort_keys: bool = False,
        default: Callable[[Any], Any] | None = None,
        ensure_ascii: bool = True,
    ) -> None:
        self._default = default
        self._option = _PASSTHROUGH | (orjson.OPT_SORT_KEYS if sort_keys else 0)
        self._fallback = json.JSONEncoder(
            sort_keys=sort_keys,
            separators=(",", ":"),
            ensure_ascii=ensure_ascii,
            default=None if default is None else lambda item: _finite(default(item)),
        )

    def encode(self, value: Any) -> str:
        try:
            return orjson.dumps(value, default=self._default, option=self._option).decode()
        except orjson.JSONEncodeError:
            return self._fallback.encode(_finite(value))

    def encode_bytes(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value, default=self._default, option=self._option)
        except orjson.JSONEncodeError:
            return self._fallback.encode(_finite(value)).encode("utf-8", "backslashreplace")


def _finite(value: Any, _path: frozenset[int] = frozenset()) -> Any:
    """NaN and ±Infinity as None, so the fallback writes null where orjson does (it rarely runs).

    A container that holds itself is left as it is, for the standard encoder to refuse as always
    ("Circular reference detected"), instead of recursing here until RecursionError.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list | tuple):
        if id(value) in _path:
            return value
        inner = _path | {id(value)}
        if isinstance(value, dict):
            return {key: _finite(item, inner) for key, item in value.items()}
        return [_finite(item, inner) for item in value]
    return value
