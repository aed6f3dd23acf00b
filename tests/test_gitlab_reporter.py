"""GitLabStatusReporter with real python-gitlab against the fake GitLab API (tests/fakes/gitlab_api.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import requests

from bridge.errors import ReporterError
from bridge.model import BuildStatus, Conclusion, SourceEvent
from bridge.reporters.gitlab import GitLabStatusReporter, gitlab_client, is_auth_failure
from bridge.secret import Secret
from bridge.status import gitlab_state
from tests.fakes.gitlab_api import FakeGitLab

SHA = "2c1c1a9f4e3d2b1a09f8e7d6c5b4a39281706f5e"
NAME = "codebuild/images"
CONSOLE = "https://us-east-1.console.aws.amazon.com/codesuite/codebuild/123456789012/projects/p/build/p%3A1"


def gitlab_event(**changes: Any) -> SourceEvent:
    event = SourceEvent(
        provider="gitlab",
        kind="push",
        event_name="Push Hook",
        action=None,
        repository="acme/platform/images",
        clone_url="https://gitlab.example.com/acme/platform/images.git",
        sha=SHA,
        ref="refs/heads/main",
        server_url="https://gitlab.example.com",
        branch="main",
        project_id=42,
    )
    return replace(event, **changes)


def build_status(state: str, conclusion: Conclusion | None = None, *, title: str = "Build #7") -> BuildStatus:
    codebuild = {
        ("queued", None): "IN_PROGRESS",
        ("in_progress", None): "IN_PROGRESS",
        ("completed", "success"): "SUCCEEDED",
        ("completed", "failure"): "FAILED",
        ("completed", "timed_out"): "TIMED_OUT",
        ("completed", "cancelled"): "STOPPED",
    }[(state, conclusion)]
    return BuildStatus(
        build_id="p:1",
        build_number=7,
        build_status=codebuild,
        state=state,  # type: ignore[arg-type]
        conclusion=conclusion,
        title=title,
        summary="",
        phases=(),
        current_phase=None,
        console_url=CONSOLE,
    )


def reporter(fake: FakeGitLab, *, token: str | None = None, retries: int = 3) -> GitLabStatusReporter:
    gl = gitlab_client(fake.url, Secret(token or fake.token), timeout=5, retries=retries)
    return GitLabStatusReporter(gl, name=NAME)


def test_pending_running_success_in_order(gitlab_api: FakeGitLab) -> None:
    rep = reporter(gitlab_api)
    event = gitlab_event()
    for status in (build_status("queued"), build_status("in_progress"), build_status("completed", "success")):
        rep.report(event, status)
    assert [t[3] for t in gitlab_api.transitions] == ["pending", "running", "success"]
    assert gitlab_api.statuses[(SHA, NAME)] == "success"
    last = gitlab_api.status_requests[-1]
    assert last.raw_path == f"/api/v4/projects/42/statuses/{SHA}"
    assert last.body == {
        "state": "success",
        "name": NAME,
        "ref": "main",
        "target_url": CONSOLE,
        "description": "Build #7",
    }


@pytest.mark.parametrize(
    ("conclusion", "expected"),
    [("failure", "failed"), ("timed_out", "failed"), ("cancelled", "canceled"), ("success", "success")],
)
def test_completed_conclusions_map_to_gitlab_states(
    gitlab_api: FakeGitLab, conclusion: Conclusion, expected: str
) -> None:
    rep = reporter(gitlab_api)
    rep.report(gitlab_event(), build_status("in_progress"))
    rep.report(gitlab_event(), build_status("completed", conclusion))
    assert gitlab_api.statuses[(SHA, NAME)] == expected
    assert gitlab_state(build_status("completed", conclusion)) == expected


def test_explicit_state_without_build_status(gitlab_api: FakeGitLab) -> None:
    rep = reporter(gitlab_api)
    rep.report(gitlab_event(), None, state="pending", target_url="https://bridge.example.com/d/1")
    assert gitlab_api.statuses[(SHA, NAME)] == "pending"
    body = gitlab_api.status_requests[-1].body
    assert body["target_url"] == "https://bridge.example.com/d/1"
    assert body["description"] == "Build queued"


def test_same_state_repeated_is_done(gitlab_api: FakeGitLab) -> None:
    rep = reporter(gitlab_api)
    rep.report(gitlab_event(), build_status("in_progress"))
    rep.report(gitlab_event(), build_status("in_progress"))  # GitLab answers 400: must not raise
    codes = [r.status_code for r in gitlab_api.status_requests]
    assert codes == [201, 400]
    assert gitlab_api.statuses[(SHA, NAME)] == "running"


def test_going_back_from_running_to_pending_is_done(gitlab_api: FakeGitLab) -> None:
    rep = reporter(gitlab_api)
    rep.report(gitlab_event(), build_status("in_progress"))
    rep.report(gitlab_event(), build_status("queued"))  # a late, out-of-order event
    assert [r.status_code for r in gitlab_api.status_requests] == [201, 400]
    assert gitlab_api.statuses[(SHA, NAME)] == "running"


def test_conflict_is_done(gitlab_api: FakeGitLab) -> None:
    gitlab_api.fail_next(409)
    reporter(gitlab_api).report(gitlab_event(), build_status("queued"))
    assert [r.status_code for r in gitlab_api.status_requests] == [409]


@pytest.mark.parametrize("status", [500, 502])
def test_transient_error_is_retried_by_python_gitlab(gitlab_api: FakeGitLab, status: int) -> None:
    gitlab_api.fail_next(status)
    reporter(gitlab_api).report(gitlab_event(), build_status("queued"))
    assert [r.status_code for r in gitlab_api.status_requests] == [status, 201]
    assert gitlab_api.statuses[(SHA, NAME)] == "pending"


def test_server_errors_beyond_retries_are_retryable(gitlab_api: FakeGitLab) -> None:
    gitlab_api.fail_next(500, times=3)
    with pytest.raises(ReporterError) as caught:
        reporter(gitlab_api, retries=2).report(gitlab_event(), build_status("queued"))
    assert caught.value.retryable
    assert "500" in str(caught.value)
    assert len(gitlab_api.status_requests) == 3  # first try + 2 retries
    assert not is_auth_failure(caught.value)


def test_unauthorized_is_not_retryable_and_is_an_auth_failure(gitlab_api: FakeGitLab) -> None:
    wrong = "glpat-revoked-token-value"
    with pytest.raises(ReporterError) as caught:
        reporter(gitlab_api, token=wrong).report(gitlab_event(), build_status("queued"))
    assert not caught.value.retryable
    assert is_auth_failure(caught.value)
    assert "`api` scope" in caught.value.hint
    assert wrong not in str(caught.value)
    assert wrong not in repr(caught.value)
    assert [r.token_ok for r in gitlab_api.requests] == [False]
    assert gitlab_api.statuses == {}


def test_forbidden_is_not_an_auth_failure(gitlab_api: FakeGitLab) -> None:
    gitlab_api.fail_next(403)
    with pytest.raises(ReporterError) as caught:
        reporter(gitlab_api).report(gitlab_event(), build_status("queued"))
    assert not caught.value.retryable
    assert not is_auth_failure(caught.value)
    assert "Developer" in caught.value.hint


def test_unreachable_gitlab_is_retryable(gitlab_api: FakeGitLab) -> None:
    url = gitlab_api.url
    gitlab_api.stop()
    gl = gitlab_client(url, Secret(gitlab_api.token), timeout=2, retries=1)
    with pytest.raises(ReporterError) as caught:
        GitLabStatusReporter(gl, name=NAME).report(gitlab_event(), build_status("queued"))
    assert caught.value.retryable


def test_long_description_and_target_url_are_truncated(gitlab_api: FakeGitLab) -> None:
    long_url = "https://ci.example.com/" + "x" * 400
    status = replace(build_status("queued"), title="é" * 300)
    reporter(gitlab_api).report(gitlab_event(), status, target_url=long_url)
    body = gitlab_api.status_requests[-1].body
    assert gitlab_api.status_requests[-1].status_code == 201
    assert len(body["description"]) == 255
    assert body["description"].endswith("…")
    assert body["target_url"] == long_url[:255]


def test_pipeline_id_sent_when_known(gitlab_api: FakeGitLab) -> None:
    rep = reporter(gitlab_api)
    rep.report(gitlab_event(pipeline_id=991), build_status("queued"))
    rep.report(gitlab_event(), build_status("in_progress"))
    first, second = gitlab_api.status_requests
    assert first.body["pipeline_id"] == 991
    assert "pipeline_id" not in second.body


def test_falls_back_to_url_encoded_path_without_project_id(gitlab_api: FakeGitLab) -> None:
    reporter(gitlab_api).report(gitlab_event(project_id=None), build_status("queued"))
    request = gitlab_api.status_requests[-1]
    assert request.raw_path == f"/api/v4/projects/acme%2Fplatform%2Fimages/statuses/{SHA}"
    assert request.project == "acme/platform/images"
    assert request.status_code == 201


def test_tag_builds_report_the_tag_as_ref(gitlab_api: FakeGitLab) -> None:
    event = gitlab_event(kind="tag", ref="refs/tags/v1.2.0", branch=None, tag="v1.2.0")
    reporter(gitlab_api).report(event, build_status("queued"))
    assert gitlab_api.status_requests[-1].body["ref"] == "v1.2.0"


def test_client_accepts_api_url(gitlab_api: FakeGitLab) -> None:
    gl = gitlab_client(gitlab_api.url + "/api/v4/", Secret(gitlab_api.token))
    GitLabStatusReporter(gl, name=NAME).report(gitlab_event(), build_status("queued"))
    assert gitlab_api.statuses[(SHA, NAME)] == "pending"


@pytest.mark.parametrize("state", ["skipped", "error", "failure", ""])
def test_rejects_states_gitlab_reporter_does_not_post(gitlab_api: FakeGitLab, state: str) -> None:
    with pytest.raises(ValueError, match="state"):
        reporter(gitlab_api).report(gitlab_event(), None, state=state)
    assert gitlab_api.requests == []


# -- the fake itself answers like GitLab (so the tests above prove something) ---------------------

TRANSITION_MESSAGE = (
    'Cannot transition status via :run from :running (Reason(s): Status cannot transition via "run")'
)


def post_status(fake: FakeGitLab, body: dict[str, Any], *, path: str = "42", token: str | None = None) -> Any:
    return requests.post(
        f"{fake.url}/api/v4/projects/{path}/statuses/{SHA}",
        json=body,
        headers={"PRIVATE-TOKEN": token or fake.token},
        timeout=5,
    )


@pytest.mark.parametrize(
    ("states", "codes"),
    [
        (["pending", "running", "success"], [201, 201, 201]),
        (["running", "running"], [201, 400]),
        (["pending", "pending"], [201, 400]),
        (["running", "pending"], [201, 400]),
        (["running", "skipped"], [201, 400]),
        (["pending", "skipped"], [201, 201]),
        (["success", "success"], [201, 201]),  # a finished status is retried: a new one is created
        (["failed", "running", "canceled"], [201, 201, 201]),
    ],
)
def test_fake_models_gitlab_state_machine(
    gitlab_api: FakeGitLab, states: list[str], codes: list[int]
) -> None:
    answers = [post_status(gitlab_api, {"state": s, "name": NAME}) for s in states]
    assert [a.status_code for a in answers] == codes


def test_fake_repeat_message_matches_gitlab(gitlab_api: FakeGitLab) -> None:
    post_status(gitlab_api, {"state": "running"})
    answer = post_status(gitlab_api, {"state": "running"})
    assert answer.json() == {"message": TRANSITION_MESSAGE}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"error": "state is missing"}),
        ({"state": "failure"}, {"error": "state does not have a valid value"}),
        ({"state": "pending", "pipeline_id": "x"}, {"error": "pipeline_id is invalid"}),
        ({"state": "pending", "coverage": "lots"}, {"error": "coverage is invalid"}),
        (
            {"state": "pending", "description": "d" * 256},
            {"message": {"description": ["is too long (maximum is 255 characters)"]}},
        ),
        (
            {"state": "pending", "target_url": "git://example.com"},
            {"message": {"target_url": ["is blocked: Only allowed schemes are http, https"]}},
        ),
    ],
)
def test_fake_validates_parameters(gitlab_api: FakeGitLab, body: dict[str, Any], expected: Any) -> None:
    answer = post_status(gitlab_api, body)
    assert (answer.status_code, answer.json()) == (400, expected)
    assert gitlab_api.statuses == {}


def test_fake_rejects_unknown_parameters_and_bad_tokens(gitlab_api: FakeGitLab) -> None:
    assert post_status(gitlab_api, {"state": "pending", "contxt": "x"}).status_code == 400
    assert post_status(gitlab_api, {"state": "pending"}, token="nope").status_code == 401
    assert post_status(gitlab_api, {"state": "pending"}, path="acme/images").status_code == 404
    assert post_status(gitlab_api, {"state": "pending"}, path="acme%2Fimages").status_code == 201
    assert "nope" not in repr(gitlab_api.requests)
