"""bridge.pace: the token bucket that paces StartBuild, on a clock the tests move."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pace import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def delays(pacer: Pacer, clock: Clock, gaps: list[float]) -> list[float]:
    """Ask before each event, `gaps[i]` seconds after the previous one was let through."""
    waited: list[float] = []
    for gap in gaps:
        clock.now += gap
        delay = pacer.delay()
        waited.append(round(delay, 6))
        clock.now += delay  # the caller waits, then the event happens
    return waited


@pytest.mark.parametrize(
    ("rate", "burst", "gaps", "expected"),
    [
        # A burst within the allowance goes at once.
        (10, None, [0.0] * 10, [0.0] * 10),
        # The next ones are spaced 1/rate apart, not all held for one refill.
        (10, None, [0.0] * 13, [0.0] * 10 + [0.1, 0.1, 0.1]),
        # Events already slower than the rate never wait.
        (2, 1, [0.5, 0.5, 0.6, 1.0], [0.0, 0.0, 0.0, 0.0]),
        # An idle spell refills the bucket, but only up to the burst.
        (5, 2, [0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.2, 0.0, 0.0, 0.2, 0.2]),
        # A fractional rate: one start every four seconds after the first.
        (0.25, 1, [0.0, 0.0, 1.0], [0.0, 4.0, 3.0]),
        # burst below one still lets one event through at a time.
        (1, 0.2, [0.0, 0.0], [0.0, 1.0]),
    ],
)
def test_delays(rate: float, burst: float | None, gaps: list[float], expected: list[float]) -> None:
    clock = Clock()
    assert delays(Pacer(rate, burst=burst, monotonic=clock), clock, gaps) == expected


@pytest.mark.parametrize("rate", [0, -1])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(rate)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=60),
    window=st.floats(min_value=0.01, max_value=10),
)
def test_no_window_holds_more_events_than_the_burst_and_the_rate_allow(
    rate: float, burst: int, gaps: list[float], window: float
) -> None:
    """Whatever the asking pattern: events in any `window` seconds ≤ burst + rate * window."""
    clock = Clock()
    pacer = Pacer(rate, burst=burst, monotonic=clock)
    times: list[float] = []
    for gap in gaps:
        clock.now += gap
        clock.now += pacer.delay()
        times.append(clock.now)
    allowed = burst + rate * window + 1e-6
    for index, start in enumerate(times):
        inside = sum(1 for moment in times[index:] if moment - start <= window)
        assert inside <= allowed


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(min_value=0.5, max_value=100), burst=st.integers(min_value=1, max_value=20))
def test_an_event_never_waits_longer_than_its_place_in_the_queue(rate: float, burst: int) -> None:
    """Asked all at once, the n-th event past the burst waits exactly n/rate: pacing, not stalling."""
    clock = Clock()
    pacer = Pacer(rate, burst=burst, monotonic=clock)
    waits = [pacer.delay() for _ in range(burst + 5)]
    assert waits[:burst] == [0.0] * burst
    assert waits[burst:] == pytest.approx([n / rate for n in range(1, 6)])
