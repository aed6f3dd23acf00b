"""The poll interval policy and the Action's wait loop, the latter against the CodeBuild double."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.poll import Backoff


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(5, cap=60)
    assert [backoff.failure() for _ in range(6)] == [10, 20, 40, 60, 60, 60]
    assert backoff.success() == 5
    assert backoff.interval == 5
    assert backoff.failure() == 10  # starts over from the base, not from where it was


def test_backoff_default_cap_is_four_times_the_base() -> None:
    backoff = Backoff(3)
    for _ in range(10):
        backoff.failure()
    assert backoff.interval == 12


def test_backoff_cap_below_base_means_no_growth() -> None:
    backoff = Backoff(30, cap=10)
    backoff.failure()
    assert backoff.interval == 30


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 8.0), (0.5, 7.2), (1.0, 6.4)])
def test_jitter_only_shortens(draw: float, expected: float) -> None:
    backoff = Backoff(2, cap=8, jitter=0.2, random=lambda: draw)
    for _ in range(4):
        backoff.failure()
    assert backoff.failure() == pytest.approx(expected)
    assert backoff.delay() == pytest.approx(expected)


@pytest.mark.parametrize(("base", "jitter"), [(0, 0.0), (-1, 0.0), (1, 1.5), (1, -0.1)])
def test_backoff_rejects_nonsense(base: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"interval|jitter"):
        Backoff(base, jitter=jitter)


@settings(max_examples=200)
@given(
    base=st.floats(min_value=0.1, max_value=120),
    factor=st.floats(min_value=1, max_value=20),
    outcomes=st.lists(st.booleans(), max_size=60),
    draw=st.floats(min_value=0, max_value=1),
)
def test_backoff_interval_is_base_times_two_to_the_failures_since_success_capped(
    base: float, factor: float, outcomes: list[bool], draw: float
) -> None:
    backoff = Backoff(base, cap=base * factor, jitter=0.5, random=lambda: draw)
    failures = 0
    for ok in outcomes:
        if ok:
            backoff.success()
            failures = 0
        else:
            backoff.failure()
            failures += 1
        assert backoff.interval == pytest.approx(min(base * 2**failures, base * factor))
        assert base * 0.5 <= backoff.delay() <= backoff.cap + 1e-9
