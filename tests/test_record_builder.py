"""The CodeBuild stand-in `bridge demo` uses: records each StartBuild request, reports like CodeBuild."""

from __future__ import annotations

import json
from pathlib import Path

from bridge.builders.record import RecordingBuilder
from bridge.model import BuildRequest
from bridge.status import build_status


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _request(token: str = "t-1") -> BuildRequest:  # noqa: S107 - an idempotency token
    return BuildRequest(
        {"projectName": "demo", "sourceVersion": "a" * 40, "idempotencyToken": token},
        image_uri=None,
    )


def test_each_start_is_recorded_as_sent_and_a_retried_start_gets_the_same_build(tmp_path: Path) -> None:
    clock = Clock()
    builder = RecordingBuilder(tmp_path, clock=clock)
    first = builder.start(_request())
    again = builder.start(_request())
    other = builder.start(_request("t-2"))

    assert first["id"] == again["id"] != other["id"]
    assert str(first["id"]).startswith("demo:")  # CodeBuild's id form: the worker polls it as CodeBuild
    files = sorted(builder.requests_dir.glob("*.json"))
    assert len(files) == 2
    assert json.loads(files[0].read_text()) == dict(_request().start_build_kwargs)


def test_a_recorded_build_runs_then_succeeds_saying_nothing_ran(tmp_path: Path) -> None:
    clock = Clock()
    builder = RecordingBuilder(tmp_path, complete_after=2.0, clock=clock)
    build_id = str(builder.start(_request())["id"])

    running = builder.get_many([build_id, "demo:unknown"])
    assert list(running) == [build_id]
    assert (running[build_id]["buildStatus"], running[build_id]["currentPhase"]) == ("IN_PROGRESS", "BUILD")
    clock.now += 3
    done = builder.get_many([build_id])[build_id]
    assert (done["buildStatus"], done["buildComplete"]) == ("SUCCEEDED", True)
    status = build_status(done, region="us-east-1")
    assert status.conclusion == "success"
    (build_phase,) = [phase for phase in done["phases"] if phase["phaseType"] == "BUILD"]
    assert "no build ran" in build_phase["contexts"][0]["message"]
    assert builder.stop(build_id)["buildStatus"] == "SUCCEEDED"  # finished: a stop changes nothing
