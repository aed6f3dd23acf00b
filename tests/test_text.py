"""bridge.core.text.shorten: a status text cut to its field cuts a whole hint, sentence or word, never one
in the middle (a GitHub status description holds 140 characters, GitLab's and a check's title 255)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.text import shorten

MESSAGE = (
    "Build not started: CodeBuild refused StartBuild for project 'codebuild-flex': AccessDeniedException"
)
HINT = "allow codebuild:StartBuild on the project for the bridge's role (deploy/bridge.yaml does), then retry"


def test_a_text_that_fits_is_kept_whole() -> None:
    assert shorten(MESSAGE, 255) == MESSAGE
    assert shorten(f"{MESSAGE} (hint: {HINT})", 255) == f"{MESSAGE} (hint: {HINT})"


def test_the_hint_goes_first_when_the_message_fits_alone() -> None:
    assert shorten(f"{MESSAGE} (hint: {HINT})", 140) == MESSAGE


def test_a_long_message_ends_at_its_last_sentence_that_fits() -> None:
    text = "The source could not be fetched. " + "CodeBuild said the repository was not found " * 4
    assert shorten(text, 60) == "The source could not be fetched.…"


def test_else_at_a_whole_word() -> None:
    text = "Build not started: " + " ".join(["verylongword"] * 20)
    short = shorten(text, 100)
    assert short.endswith("verylongword…")
    assert len(short) <= 100


def test_one_endless_word_is_cut_to_the_limit() -> None:
    assert shorten("X" * 300, 140) == "X" * 139 + "…"


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from("ab .;:(),"), max_size=400), st.integers(min_value=10, max_value=300))
def test_the_result_always_fits_and_starts_like_the_text(text: str, limit: int) -> None:
    short = shorten(text, limit)
    assert len(short) <= limit
    flat = " ".join(text.split())
    assert flat.startswith(short.removesuffix("…"))
