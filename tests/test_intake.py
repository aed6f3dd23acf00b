"""bridge.intake's reading of a request head: the usual one in one pass, anything else left to gunicorn."""

from __future__ import annotations

import pytest

from bridge.intake import _plain_head


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_a_usual_delivery_head_is_read() -> None:
    parsed = _plain_head(
        head(
            "POST /webhooks/github?x=1 HTTP/1.1",
            "Host: bridge",
            "Content-Length: 42",
            "X-Hub-Signature-256:  sha256=ab ",
            "X-GitHub-Event: push",
        )
    )
    assert parsed == (
        "POST",
        "/webhooks/github",
        {
            "host": "bridge",
            "content-length": "42",
            "x-hub-signature-256": "sha256=ab",
            "x-github-event": "push",
        },
        42,
    )


def test_chunked_and_bodiless_heads() -> None:
    assert _plain_head(head("POST /e HTTP/1.1", "Transfer-Encoding: chunked"))[3] is None  # type: ignore[index]
    assert _plain_head(head("GET /healthz HTTP/1.1", "Host: x"))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize(
    "lines",
    [
        ("POST /w HTTP/1.1", "Content-Length: 1", "Content-Length: 2"),  # two lengths
        ("POST /w HTTP/1.1", "Content-Length: 1", "Transfer-Encoding: chunked"),  # both framings
        ("POST /w HTTP/1.1", "Transfer-Encoding: gzip, chunked"),
        ("POST /w HTTP/1.0", "Transfer-Encoding: chunked"),
        ("POST /w HTTP/1.1", "Content-Length: -1"),
        ("POST /w HTTP/1.1", "Content-Length: 1" + "0" * 20),
        ("POST /w HTTP/1.1", "Content-Length : 1"),  # whitespace before the colon
        ("POST /w HTTP/1.1", " folded: line"),
        ("POST /w HTTP/1.1", "Host: a", "Host: b"),
        ("POST http://elsewhere/w HTTP/1.1", "Host: a"),  # absolute form
        ("POST /w HTTP/2.0",),
        ("POST  /w HTTP/1.1",),
        ("POST /w\x7f HTTP/1.1",),
    ],
)
def test_anything_unusual_is_left_to_gunicorns_parser(lines: tuple[str, ...]) -> None:
    assert _plain_head(head(*lines)) is None
