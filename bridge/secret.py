"""A value that must never be printed.

Redaction by construction: a secret lives in a `Secret`, whose str() and repr() are masked, so a
log line, an exception message or an f-string that touches it by accident shows `***`. Only
`reveal()` returns the value, and only the code that hands it to an API call should call it.
"""

from __future__ import annotations

from typing import Final, NoReturn

MASK: Final = "***"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values are not picklable")
