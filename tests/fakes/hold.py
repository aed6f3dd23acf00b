"""Requests a fake server keeps waiting until the test lets them go.

A test that must act while the process under test is in the middle of a call (signal it during
StartBuild, or while its check run is being created) asks the fake for a Hold, waits for
`arrived`, acts, then `release()`s; the request then runs as it would have. This is how such tests
synchronise with another process without sleeping: on a request the fake has in hand.
"""

from __future__ import annotations

import threading


class Hold:
    """One request kept waiting inside a fake. `timeout` bounds the wait, so a test that forgets to
    release cannot keep a server thread for ever."""

    def __init__(self, what: str, timeout: float = 120.0) -> None:
        self.what = what
        self.timeout = timeout
        self.arrived = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait_arrived(self, timeout: float = 120.0) -> None:
        """Block until the held request reached the fake (an upper bound only, not a guess)."""
        if not self.arrived.wait(timeout):
            raise AssertionError(f"no {self.what} request reached the fake in {timeout} s")

    def block(self) -> None:
        """Called by the fake's request thread: announce the request, then wait for the release."""
        self.arrived.set()
        self._released.wait(self.timeout)
