"""The pluggable builder interface.

A builder starts a BuildRequest, reads many build records in one call, stops a build and tails
its log. Records are CodeBuild-shaped dicts (see model.BuildRecord) whatever the backend, so the
status and reporting code never learns which backend ran the build.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from bridge.model import BuildRecord, BuildRequest


class LogTail(Protocol):
    """Incremental reader of one build's log: each call returns only lines not returned before."""

    def poll(self, build: BuildRecord) -> list[str]:
        """New lines since the last call ([] while the log stream does not exist yet)."""
        ...

    def drain(self, build: BuildRecord) -> Iterator[str]:
        """After the build ended: every remaining line, until the log is exhausted."""
        ...


class Builder(Protocol):
    name: str

    def start(self, request: BuildRequest) -> BuildRecord: ...

    def get_many(self, build_ids: Sequence[str]) -> dict[str, BuildRecord]:
        """Records by id; ids the backend does not know are absent from the result."""
        ...

    def stop(self, build_id: str) -> BuildRecord: ...

    def log_tail(self, build: BuildRecord) -> LogTail: ...
