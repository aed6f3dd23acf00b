"""How often to ask a builder about a build.

botocore already retries a throttled call a few times within one poll; this is the slower,
outer policy between polls. When a poll still fails in a retryable way the interval doubles,
bounded by a cap, and the first good poll brings it straight back to the base: a burst of
throttling must not leave a long-running wait polling once a minute forever.
"""

from __future__ import annotations

import random as random_module
from collections.abc import Callable


class Backoff:
    """The poll interval: base, doubled per retryable failure up to `cap`, reset by a success.

    `jitter` (0..1) shortens each delay by up to that fraction, drawn from `random`, so many
    waiters started together spread out; it never lengthens a delay past the cap.
    """

    def __init__(
        self,
        base: float,
        *,
        cap: float | None = None,
        jitter: float = 0.0,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        if base <= 0:
            raise ValueError("the poll interval must be positive")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")
        self.base = base
        self.cap = max(base, cap if cap is not None else 4 * base)
        self.jitter = jitter
        self._random = random
        self._interval = base

    @property
    def interval(self) -> float:
        return self._interval

    def success(self) -> float:
        """Record a good poll; returns the delay before the next one."""
        self._interval = self.base
        return self.delay()

    def failure(self) -> float:
        """Record a retryable failure; returns the (longer) delay before the next poll."""
        self._interval = min(self._interval * 2, self.cap)
        return self.delay()

    def delay(self) -> float:
        """How long to sleep before the next poll."""
        return self._interval * (1 - self.jitter * self._random())
