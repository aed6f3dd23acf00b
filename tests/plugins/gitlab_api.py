"""Fixture plugin: a fresh fake GitLab REST API per test (tests/fakes/gitlab_api.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.gitlab_api import FakeGitLab


@pytest.fixture
def gitlab_api() -> Iterator[FakeGitLab]:
    """`.url`, `.token`, `.requests`, `.statuses`, `.fail_next(status, times)`; stopped at teardown."""
    fake = FakeGitLab()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
