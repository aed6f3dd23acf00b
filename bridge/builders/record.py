"""A CodeBuild stand-in that records each StartBuild request and reports it, with no AWS call.

`bridge demo` uses it when no build tool is installed for the local builder: every delivery still
goes the whole way (planned, "started", tracked, its commit status decided and kept), and the exact
request CodeBuild would have received is written to `requests/<n>-<uuid>.json` for the user to read
(or send themselves: `aws codebuild start-build --cli-input-json file://...`).

Its records are CodeBuild-shaped and its ids are CodeBuild's (`project:uuid`), so the worker,
status.py and the operator page treat it exactly as CodeBuild. A recorded build reads IN_PROGRESS
on its first poll and SUCCEEDED once `complete_after` seconds have passed, with a phase message
saying nothing ran. It honours `idempotencyToken` as StartBuild does (same token within five
minutes, same build).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from bridge.builders import CODEBUILD_CAPABILITIES
from bridge.errors import BuilderError
from bridge.model import BuildRecord, BuildRequest

__all__ = ["RECORDED_MESSAGE", "RecordingBuilder"]

RECORDED_MESSAGE: Final = "recorded by bridge demo: no build ran (no AWS call); the request is in {path}"
_IDEMPOTENCY_SECONDS: Final = 300


class _NoLog:
    """A recorded build writes no log."""

    def poll(self, build: BuildRecord) -> list[str]:
        return []

    def drain(self, build: BuildRecord) -> Iterator[str]:
        return iter(())


class RecordingBuilder:
    name = "codebuild"  # it stands in for CodeBuild: routes name no other builder
    capabilities = CODEBUILD_CAPABILITIES

    def __init__(
        self, work_dir: Path, *, complete_after: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._requests = Path(work_dir) / "requests"
        self._requests.mkdir(parents=True, exist_ok=True)
        self._complete_after = complete_after
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}

    @property
    def requests_dir(self) -> Path:
        return self._requests

    def start(self, request: BuildRequest) -> BuildRecord:
        kwargs = dict(request.start_build_kwargs)
        token = kwargs.get("idempotencyToken")
        now = self._clock()
        with self._lock:
            for known in self._records.values():
                if (
                    token
                    and known["idempotencyToken"] == token
                    and now - known["startTime"] < _IDEMPOTENCY_SECONDS
                ):
                    return copy.deepcopy(known)
            number = len(self._records) + 1
            build_uuid = str(uuid.uuid4())
            path = self._requests / f"{number:03d}-{build_uuid}.json"
            path.write_text(
                json.dumps(kwargs, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
            )
            record: dict[str, Any] = {
                "id": f"{request.project_name}:{build_uuid}",
                "buildNumber": number,
                "projectName": request.project_name,
                "initiator": "bridge-demo",
                "idempotencyToken": token,
                "sourceVersion": kwargs.get("sourceVersion"),
                "buildStatus": "IN_PROGRESS",
                "currentPhase": "SUBMITTED",
                "buildComplete": False,
                "startTime": now,
                "phases": [{"phaseType": "SUBMITTED", "startTime": now}],
                "recordedRequest": str(path),
            }
            self._records[record["id"]] = record
            return copy.deepcopy(record)

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        now = self._clock()
        found: dict[str, BuildRecord] = {}
        with self._lock:
            for build_id in dict.fromkeys(build_ids):
                record = self._records.get(build_id)
                if record is None:
                    continue
                self._advance(record, now)
                found[build_id] = copy.deepcopy(record)
        return found

    def _advance(self, record: dict[str, Any], now: float) -> None:
        """First poll: the request is "being built"; after `complete_after`: finished, nothing ran."""
        if record["buildComplete"]:
            return
        started = float(record["startTime"])
        if now - started < self._complete_after:
            record["currentPhase"] = "BUILD"
            record["phases"] = [
                _phase("SUBMITTED", started, started, "SUCCEEDED"),
                {"phaseType": "BUILD", "startTime": started},
            ]
            return
        message = RECORDED_MESSAGE.format(path=record["recordedRequest"])
        record.update(
            buildStatus="SUCCEEDED",
            currentPhase="COMPLETED",
            buildComplete=True,
            endTime=now,
            phases=[
                _phase("SUBMITTED", started, started, "SUCCEEDED"),
                _phase("BUILD", started, now, "SUCCEEDED", message),
                {"phaseType": "COMPLETED", "startTime": now},
            ],
        )

    def find_started(self, request: BuildRequest, delivery_id: str, *, since: float) -> BuildRecord | None:
        return None  # nothing to find: recorded starts are never lost

    def stop(self, build_id: str) -> BuildRecord:
        with self._lock:
            record = self._records.get(build_id)
            if record is None:
                raise BuilderError(
                    f"recorded build {build_id} is unknown", hint="it was recorded by another run"
                )
            if not record["buildComplete"]:
                now = self._clock()
                record.update(
                    buildStatus="STOPPED", currentPhase="COMPLETED", buildComplete=True, endTime=now
                )
            return copy.deepcopy(record)

    def log_tail(self, build: BuildRecord) -> _NoLog:
        return _NoLog()

    def close(self) -> None:
        """Nothing runs: nothing to stop."""


def _phase(name: str, start: float, end: float, status: str, message: str | None = None) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "phaseType": name,
        "phaseStatus": status,
        "startTime": start,
        "endTime": end,
        "durationInSeconds": round(end - start),
    }
    if message:
        phase["contexts"] = [{"statusCode": "RECORDED", "message": message}]
    return phase
