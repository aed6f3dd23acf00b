"""Fixture plugin: `github_api`, a fresh fake GitHub REST API per test (tests/fakes/github_api.py).

The fixture fails the test at teardown when any request broke GitHub's OpenAPI description, so a
test that only checks the happy outcome still catches a malformed request body.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.github_api import FakeGitHub


@pytest.fixture
def github_api() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    try:
        yield fake
    finally:
        fake.stop()
    if fake.violations:
        pytest.fail(
            "requests to the fake GitHub API broke GitHub's OpenAPI description:\n  "
            + "\n  ".join(fake.violations),
            pytrace=False,
        )
