"""How often to ask a builder about a build, and the Action's wait loop.

botocore already retries a throttled call a few times within one poll; this is the slower,
outer policy between polls. When a poll still fails in a retryable way the interval doubles,
bounded by a cap, and the first good poll brings it straight back to the base: a burst of
throttling must not leave a long-running wait polling once a minute forever.
"""

from __future__ import annotations

import random as random_module
import time
from collections.abc import Callable

from bridge.builders.base import Builder
from bridge.errors import BuilderError
from bridge.model import BuildRecord


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


def wait_for_build(
    builder: Builder,
    build_id: str,
    *,
    interval: float | Backoff,
    on_update: Callable[[BuildRecord], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    timeout: float | None = None,
    max_not_found: int = 3,
) -> BuildRecord:
    """Poll until the build completes; `on_update` sees every record that differs from the last.

    Retryable builder errors slow the polling down (see Backoff) instead of ending the wait.
    A build the backend does not know is tolerated `max_not_found` times in a row, since a
    freshly started build can take a moment to become visible.
    """
    backoff = interval if isinstance(interval, Backoff) else Backoff(interval)
    deadline = None if timeout is None else clock() + timeout
    last: BuildRecord | None = None
    not_found = 0
    while True:
        try:
            record = builder.get_many([build_id]).get(build_id)
        except BuilderError as exc:
            if not exc.retryable:
                raise
            delay = backoff.failure()
        else:
            if record is None:
                not_found += 1
                if not_found >= max_not_found:
                    raise BuilderError(
                        f"build {build_id} not found by {builder.name}",
                        hint="check the region and account the build was started in",
                    )
                delay = backoff.failure()
            else:
                not_found = 0
                delay = backoff.success()
                if record != last:
                    on_update(record)
                    last = record
                if record.get("buildComplete"):
                    return record
        if deadline is not None and clock() >= deadline:
            raise BuilderError(
                f"build {build_id} still not complete after {timeout:g} s",
                hint="the build keeps running in CodeBuild; raise the wait timeout or stop the build there",
            )
        sleep(delay)
