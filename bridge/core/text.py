"""Fitting a message into a field with a length limit, so what is cut is a whole sentence, the hint, or at
worst the last words — never a word or a hint in the middle.

A GitHub commit status description holds 140 characters, a GitLab status description and a check run's
title 255; the messages shown there (`Build not started: <error> (hint: <fix>)`) are often longer.
"""

from __future__ import annotations

from typing import Final

ELLIPSIS: Final = "…"
HINT_MARK: Final = " (hint: "
# A cut before this share of the room loses too much: then words are cut instead.
_MIN_SHARE: Final = 0.5


def shorten(text: str, limit: int) -> str:
    """`text` in at most `limit` characters: whole, else without its `(hint: …)` when the message fits
    alone, else up to its last sentence (or clause) end that fits, else its last whole word, with `…`."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    message, mark, _ = text.partition(HINT_MARK)
    if mark and len(message) <= limit:
        return message
    room = text[: limit - len(ELLIPSIS)]
    floor = int(limit * _MIN_SHARE)
    for stop in (". ", "; ", ": "):
        cut = room.rfind(stop)
        if cut >= floor:
            return room[: cut + 1] + ELLIPSIS
    cut = room.rfind(" ")
    if cut >= floor:
        return room[:cut].rstrip(",;:(") + ELLIPSIS
    return room + ELLIPSIS
