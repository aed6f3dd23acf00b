"""The pluggable builder interface.

A builder starts a BuildRequest, reads many build records in one call, stops a build and tails
its log. Records are CodeBuild-shaped dicts (see model.BuildRecord) whatever the backend, so the
status and reporting code never learns which backend ran the build. `Capabilities` says what a
backend can honour, so the config loader can refuse a route asking for something its builder
would silently ignore (a buildspec on a builder that only builds Dockerfiles, say).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.model import BuildRecord, BuildRequest


@dataclass(frozen=True)
class Capabilities:
    """What a builder does with a request. Fields are facts users must know before choosing one."""

    runs_on_bridge_host: bool  # repository code runs on the bridge's own machine (a trust decision)
    buildspec: bool  # runs a CodeBuild buildspec; False: builds the repository's Dockerfile
    secret_variables: bool  # resolves SECRETS_MANAGER / PARAMETER_STORE variables for the build
    pushes_images: bool  # pushes to image_repository when one is set
    stop: bool  # stop() ends a running build
    batch: bool  # can run a batch of builds (CodeBuild's StartBuildBatch)


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

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        """Records by id; ids the backend does not know are absent from the result. `batch_ids`:
        which of them are batches of builds (a backend without batches ignores it)."""
        ...

    def stop(self, build_id: str) -> BuildRecord: ...

    def find_started(self, request: BuildRequest, delivery_id: str, *, since: float) -> BuildRecord | None:
        """The build an earlier attempt at `request` started for `delivery_id` (its BRIDGE_DELIVERY_ID
        variable) no earlier than `since` (epoch seconds), or None. Asked before starting again once
        the idempotency token may be forgotten; a backend whose starts cannot be lost returns None."""
        ...

    def log_tail(self, build: BuildRecord) -> LogTail: ...

    def close(self) -> None:
        """At shutdown, once: a builder that runs builds itself stops them and records it."""
        ...
