"""How fast the worker may call StartBuild: a token bucket (`rate` a second, `rate` at once).

Why pace at all: the build starts share one process with the webhook acks, and each StartBuild
costs ~4 ms of botocore CPU there (signing, user agent, parsing; measured in docs/performance.md).
Unpaced, a worker keeping up with 200 deliveries a second saturated that process: the acks' p99 at
that rate was 24-78 ms, and 16 ms paced at 10 a second. Nothing is gained by starting faster than
an account can run builds anyway:
CodeBuild's default quota is 20 to 60 concurrently running builds a region, with a queue of five
times that, so 10 starts a second fill a whole account's capacity in about half a minute.

Pure: the clock is passed in, and `delay` only says how long to wait, so the caller decides how
(the worker waits on its stop event, so a shutdown is never held up by pacing).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """At most `burst` events at once and `rate` a second on average after that."""

    def __init__(
        self, rate: float, *, burst: float | None = None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._monotonic = monotonic
        self._tokens = self.burst
        self._updated = monotonic()

    def delay(self) -> float:
        """Take the next event's token; returns how long to wait before the event (0: go now).

        A token taken before it has refilled leaves the bucket in debt, so events asked for
        together are spaced 1/rate apart instead of all waiting for the same refill.
        """
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
