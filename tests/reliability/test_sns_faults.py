"""EventBridge via SNS is best effort: events get lost, duplicated and reordered.

The real server process cannot verify SNS signatures here (its certificate fetcher only fetches from
sns.<region>.amazonaws.com, and there is no network), so these run in-process with the test signer's
certificate: the same app, worker, store and reporters, driven request by request.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.test import TestResponse

from tests.e2e.support import codebuild_event, gitlab_delivery, gitlab_payload
from tests.fakes.codebuild_double import Scenario
from tests.fakes.gitlab_api import FakeGitLab
from tests.reliability.rig import Rig
from tests.sns_signing import default_signer, notification


def _sns(rig: Rig, record: dict[str, Any]) -> TestResponse:
    message = default_signer().sign(notification(json.dumps(codebuild_event(record))))
    return rig.client.post(
        "/events/codebuild", data=json.dumps(message), headers={"Content-Type": "text/plain; charset=UTF-8"}
    )


def _states(gitlab_api: FakeGitLab) -> list[str]:
    return [state for _project, _sha, _name, state in gitlab_api.transitions]


def test_every_event_lost_polling_alone_finishes_the_status(rig: Rig, gitlab_api: FakeGitLab) -> None:
    rig.double.script_project("gl-build", Scenario(final_status="FAILED"))
    assert rig.send(gitlab_delivery(gitlab_payload("push"), event_uuid="lost-1")).status_code == 202

    for _ in range(30):
        rig.worker.run_once()
        if not rig.services.store.active_builds():
            break

    assert rig.services.store.active_builds() == []
    assert _states(gitlab_api) == ["pending", "running", "failed"]


def test_duplicated_and_reordered_events_change_each_status_once_and_never_backwards(
    rig: Rig, gitlab_api: FakeGitLab
) -> None:
    assert rig.send(gitlab_delivery(gitlab_payload("push"), event_uuid="dup-1")).status_code == 202
    assert rig.builds_started() == 1
    (tracked,) = rig.services.store.active_builds()
    record = rig.double.build(tracked.build_id)
    running = {**record, "buildStatus": "IN_PROGRESS", "currentPhase": "BUILD"}
    final = {**record, "buildStatus": "SUCCEEDED", "buildComplete": True, "currentPhase": "COMPLETED"}

    answers = [
        _sns(rig, running).get_json(),
        _sns(rig, running).get_json(),  # duplicated
        _sns(rig, final).get_json(),
        _sns(rig, final).get_json(),  # duplicated
        _sns(rig, running).get_json(),  # a late, older event
    ]
    rig.worker.run_once()  # a poll after the final state changes nothing either

    assert [answer["updated"] for answer in answers] == [True, False, True, False, False]
    assert _states(gitlab_api) == ["pending", "running", "success"]
    assert rig.services.store.active_builds() == []
    assert len(rig.double.calls("BatchGetBuilds")) == 0
