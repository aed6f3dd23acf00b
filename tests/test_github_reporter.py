"""The GitHub reporter, through real PyGithub, against the fake API that checks GitHub's OpenAPI."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import github
import jwt
import pytest
import requests
from github import GithubRetry

from bridge.errors import BuilderError, ConfigError, ReporterError
from bridge.model import BuildStatus, SourceEvent
from bridge.reporters.github import (
    CHECKS_HINT,
    CREDENTIALS_HINT,
    DESCRIPTION_MAX,
    STATUSES_HINT,
    SUMMARY_MAX,
    BoundReporter,
    CheckRunReporter,
    CommitStatusReporter,
    default_retry,
    find_installation_id,
    github_client,
)
from bridge.secret import Secret
from bridge.services import StatusReporter
from bridge.status import build_status, not_started_status
from tests.fakes.github_api import FakeGitHub, app_keys

REPO = "octo-org/app"
CHECK_RUNS = f"/repos/{REPO}/check-runs"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
TOKEN = "ghs_actionsTokenValue0123456789abcdef"
PAT = "ghp_personalAccessToken0123456789abcdef"
BUILD_ID = "image-builder:5f3f0a2e-9c1d-4c55-8a0b-2b7f1e1c9d01"
DETAILS = "https://github.com/octo-org/app/actions/runs/1"
NO_WAIT_RETRY = default_retry(total=2, backoff_factor=0, secondary_rate_wait=0)

UNPACED: dict[str, Any] = {"seconds_between_requests": None, "seconds_between_writes": None}

EVENT = SourceEvent(
    provider="github",
    kind="pull_request",
    event_name="pull_request",
    action="synchronize",
    repository=REPO,
    clone_url=f"https://github.com/{REPO}.git",
    sha=SHA,
    ref="refs/pull/7/head",
    server_url="https://github.com",
    pr_number=7,
)


def status_of(build_status_value: str = "IN_PROGRESS", phase: str = "BUILD") -> BuildStatus:
    complete = build_status_value != "IN_PROGRESS"
    failed = complete and build_status_value != "SUCCEEDED"
    phases: list[dict[str, Any]] = [
        {"phaseType": "SUBMITTED", "phaseStatus": "SUCCEEDED", "durationInSeconds": 0},
        {"phaseType": "PROVISIONING", "phaseStatus": "SUCCEEDED", "durationInSeconds": 20},
        {"phaseType": phase, **({"phaseStatus": build_status_value} if failed else {})},
    ]
    if complete and not failed:
        phases[-1].update(phaseStatus="SUCCEEDED", durationInSeconds=164)
    return build_status(
        {
            "id": BUILD_ID,
            "arn": f"arn:aws:codebuild:eu-west-1:123456789012:build/{BUILD_ID}",
            "buildNumber": 12,
            "buildStatus": build_status_value,
            "buildComplete": complete,
            "currentPhase": "COMPLETED" if complete else phase,
            "startTime": 1_700_000_000,
            **({"endTime": 1_700_000_184} if complete else {}),
            "phases": phases,
        },
        region="eu-west-1",
        log_tail=["Step 1/3 : FROM python:3.12", "```", "\x1b[31mdone\x1b[0m"],
    )


@pytest.fixture
def gh(github_api: FakeGitHub) -> Iterator[github.Github]:
    github_api.add_token(TOKEN)
    client = github_client(github_api.url, Secret(TOKEN), **UNPACED)
    yield client
    client.close()


def test_check_run_goes_queued_in_progress_completed(github_api: FakeGitHub, gh: github.Github) -> None:
    reporter = CheckRunReporter(gh, REPO, name="codebuild / image")
    run_id = reporter.start(EVENT, None, DETAILS)
    reporter.update(run_id, status_of("IN_PROGRESS"))
    reporter.update(run_id, status_of("SUCCEEDED"))

    assert github_api.calls() == [
        ("POST", CHECK_RUNS, 201),
        ("PATCH", f"{CHECK_RUNS}/{run_id}", 200),
        ("PATCH", f"{CHECK_RUNS}/{run_id}", 200),
    ]  # lazy: no GET of the repository or the check run first
    create, progress, done = (request.json for request in github_api.requests)
    assert create == {
        "name": "codebuild / image",
        "head_sha": SHA,
        "details_url": DETAILS,
        "status": "queued",
        "output": {"title": "Waiting for CodeBuild", "summary": "Starting the build."},
    }
    assert progress["status"] == "in_progress"
    assert progress["external_id"] == BUILD_ID
    assert progress["output"]["title"] == "Build #12 running: BUILD"
    assert "| BUILD | ⏳ running | — |" in progress["output"]["summary"]
    assert "conclusion" not in progress
    assert done["status"] == "completed"
    assert done["conclusion"] == "success"
    assert done["completed_at"].endswith("Z")
    assert done["output"]["title"] == "Build #12 succeeded in 3m 4s"
    stored = github_api.check_runs[run_id]
    assert (stored["status"], stored["conclusion"], stored["head_sha"]) == ("completed", "success", SHA)
    assert all(r.identity == "token:actions" for r in github_api.requests)


@pytest.mark.parametrize(
    ("build_status_value", "conclusion"),
    [
        ("SUCCEEDED", "success"),
        ("FAILED", "failure"),
        ("FAULT", "failure"),
        ("TIMED_OUT", "timed_out"),
        ("STOPPED", "cancelled"),
    ],
)
def test_completed_conclusion_is_mapped(
    github_api: FakeGitHub, gh: github.Github, build_status_value: str, conclusion: str
) -> None:
    reporter = CheckRunReporter(gh, REPO, name="codebuild")
    run_id = reporter.start(EVENT, status_of("IN_PROGRESS"), None)
    reporter.update(run_id, status_of(build_status_value))
    create, done = (request.json for request in github_api.requests)
    assert create["status"] == "in_progress"
    assert create["external_id"] == BUILD_ID
    assert create["details_url"].startswith("https://eu-west-1.console.aws.amazon.com/codesuite/codebuild/")
    assert done["conclusion"] == conclusion
    assert github_api.check_runs[run_id]["conclusion"] == conclusion


def test_a_build_already_finished_is_created_completed(github_api: FakeGitHub, gh: github.Github) -> None:
    run_id = CheckRunReporter(gh, REPO, name="codebuild").start(EVENT, status_of("FAILED"), DETAILS)
    (create,) = (request.json for request in github_api.requests)
    assert (create["status"], create["conclusion"]) == ("completed", "failure")
    assert github_api.check_runs[run_id]["status"] == "completed"


def test_summary_longer_than_github_allows_is_clipped(github_api: FakeGitHub, gh: github.Github) -> None:
    base = status_of("SUCCEEDED")
    huge = BuildStatus(**{**base.__dict__, "summary": "x" * (SUMMARY_MAX + 500)})
    reporter = CheckRunReporter(gh, REPO, name="codebuild")
    reporter.update(reporter.start(EVENT, None, None), huge)
    assert len(github_api.requests[-1].json["output"]["summary"]) == SUMMARY_MAX


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("token without checks: write", "Resource not accessible by integration"),
        ("fork pull request", "Resource not accessible by integration"),
        ("personal access token", "You must authenticate via a GitHub App."),
    ],
)
def test_forbidden_create_is_not_retryable_and_says_how_to_fix(
    github_api: FakeGitHub, setup: str, message: str
) -> None:
    token = "ghs_readOnlyToken"
    if setup == "personal access token":
        github_api.add_token(token, kind="pat")
    elif setup == "fork pull request":
        github_api.add_token(token)
        github_api.fail_next(CHECK_RUNS, kind="not_accessible")
    else:
        github_api.add_token(token, permissions={"checks": "read", "metadata": "read"})
    client = github_client(github_api.url, Secret(token), **UNPACED)
    with pytest.raises(ReporterError) as caught:
        CheckRunReporter(client, REPO, name="codebuild").start(EVENT, None, DETAILS)
    assert caught.value.retryable is False
    assert caught.value.hint == CHECKS_HINT
    assert "permissions: checks: write" in caught.value.hint
    assert "check-name: ''" in caught.value.hint
    assert message in caught.value.message
    assert github_api.calls() == [("POST", CHECK_RUNS, 403)]  # a plain 403 is not retried


def test_only_the_creator_may_update_a_check_run(github_api: FakeGitHub, gh: github.Github) -> None:
    app = app_client(github_api, installation_id=github_api.installation_id)
    run_id = CheckRunReporter(app, REPO, name="codebuild").start(EVENT, None, None)
    with pytest.raises(ReporterError) as caught:  # the workflow token is another app
        CheckRunReporter(gh, REPO, name="codebuild").update(run_id, status_of("SUCCEEDED"))
    assert caught.value.retryable is False
    assert caught.value.hint.startswith("only the App (or workflow token) that created a check run")
    assert github_api.calls()[-1] == ("PATCH", f"{CHECK_RUNS}/{run_id}", 403)


def test_bad_credentials_are_not_retryable(github_api: FakeGitHub) -> None:
    client = github_client(github_api.url, Secret("ghs_unknown"), **UNPACED)
    with pytest.raises(ReporterError) as caught:
        CheckRunReporter(client, REPO, name="codebuild").start(EVENT, None, None)
    assert caught.value.retryable is False
    assert caught.value.hint == CREDENTIALS_HINT
    assert "HTTP 401 Bad credentials" in caught.value.message


# -- retries -----------------------------------------------------------------------------------


def test_default_retry_is_configured() -> None:
    retry = default_retry()
    assert isinstance(retry, GithubRetry)
    assert retry.total == 4
    assert retry.backoff_factor == 0.5
    assert {403, 500, 502, 503, 504} <= set(retry.status_forcelist or ())
    assert {"POST", "PATCH"} <= set(retry.allowed_methods or ())


def test_two_bad_gateways_then_success_is_retried(github_api: FakeGitHub, gh: github.Github) -> None:
    github_api.fail_next(CHECK_RUNS, times=2)
    run_id = CheckRunReporter(gh, REPO, name="codebuild").start(EVENT, None, None)
    assert github_api.calls() == [
        ("POST", CHECK_RUNS, 502),
        ("POST", CHECK_RUNS, 502),
        ("POST", CHECK_RUNS, 201),
    ]
    assert list(github_api.check_runs) == [run_id]


def test_retries_exhausted_is_retryable(github_api: FakeGitHub) -> None:
    github_api.add_token(TOKEN)
    client = github_client(github_api.url, Secret(TOKEN), retry=NO_WAIT_RETRY, **UNPACED)
    github_api.fail_next(f"{CHECK_RUNS}/*", times=10, method="PATCH")
    with pytest.raises(ReporterError) as caught:
        CheckRunReporter(client, REPO, name="codebuild").update(1001, status_of("SUCCEEDED"))
    assert caught.value.retryable is True
    assert "retries exhausted" in caught.value.message
    assert github_api.calls() == [("PATCH", f"{CHECK_RUNS}/1001", 502)] * 3


def test_secondary_rate_limit_waits_for_retry_after(github_api: FakeGitHub, gh: github.Github) -> None:
    github_api.fail_next(CHECK_RUNS, kind="secondary_rate_limit", retry_after=1)
    started = time.monotonic()
    CheckRunReporter(gh, REPO, name="codebuild").start(EVENT, None, None)
    assert time.monotonic() - started >= 1.0
    assert github_api.calls() == [("POST", CHECK_RUNS, 403), ("POST", CHECK_RUNS, 201)]


def test_secondary_rate_limit_that_persists_is_retryable(github_api: FakeGitHub) -> None:
    github_api.add_token(TOKEN)
    client = github_client(github_api.url, Secret(TOKEN), retry=NO_WAIT_RETRY, **UNPACED)
    github_api.fail_next(CHECK_RUNS, kind="secondary_rate_limit", retry_after=0, times=10)
    with pytest.raises(ReporterError) as caught:
        CheckRunReporter(client, REPO, name="codebuild").start(EVENT, None, None)
    assert caught.value.retryable is True
    assert len(github_api.requests) == 3


# -- GitHub App --------------------------------------------------------------------------------


def app_client(github_api: FakeGitHub, **kwargs: Any) -> github.Github:
    return github_client(
        github_api.url,
        app_id=github_api.app_keys.app_id,
        private_key=Secret(github_api.app_keys.private_key_pem),
        **UNPACED,
        **kwargs,
    )


def test_app_installation_token_is_minted_and_used(github_api: FakeGitHub) -> None:
    client = app_client(github_api, installation_id=github_api.installation_id)
    reporter = CheckRunReporter(client, REPO, name="codebuild")
    run_id = reporter.start(EVENT, None, None)
    reporter.update(run_id, status_of("SUCCEEDED"))
    tokens = f"/app/installations/{github_api.installation_id}/access_tokens"
    assert [(r.method, r.path, r.identity) for r in github_api.requests] == [
        ("POST", tokens, f"app:{github_api.app_keys.app_id}"),  # JWT verified by the fake
        ("POST", CHECK_RUNS, f"installation:{github_api.installation_id}"),
        ("PATCH", f"{CHECK_RUNS}/{run_id}", f"installation:{github_api.installation_id}"),
    ]  # one token, reused until it nears expiry
    assert len(github_api.issued_tokens) == 1
    assert github_api.requests[0].headers["Authorization"] == "Bearer ***"


def test_app_installation_is_looked_up_when_unknown(github_api: FakeGitHub) -> None:
    client = app_client(github_api, repository=REPO)
    CheckRunReporter(client, REPO, name="codebuild").start(EVENT, None, None)
    assert [r.path for r in github_api.requests] == [
        f"/repos/{REPO}/installation",
        f"/app/installations/{github_api.installation_id}/access_tokens",
        CHECK_RUNS,
    ]


def test_app_not_installed_on_the_repository(github_api: FakeGitHub) -> None:
    github_api.installations = {"someone/else": 1}
    with pytest.raises(ReporterError) as caught:
        find_installation_id(
            github_api.url,
            app_id=github_api.app_keys.app_id,
            private_key=Secret(github_api.app_keys.private_key_pem),
            repository=REPO,
        )
    assert caught.value.retryable is False
    assert caught.value.hint == "install the App on the repository (or its organization)"


def test_app_with_the_wrong_key_fails_without_retry(github_api: FakeGitHub) -> None:
    stranger = app_keys(app_id=99)  # another App's key, signing for our app id
    client = github_client(
        github_api.url,
        app_id=github_api.app_keys.app_id,
        private_key=Secret(stranger.private_key_pem),
        installation_id=github_api.installation_id,
        **UNPACED,
    )
    with pytest.raises(ReporterError) as caught:
        CheckRunReporter(client, REPO, name="codebuild").start(EVENT, None, None)
    assert caught.value.retryable is False
    assert caught.value.hint == CREDENTIALS_HINT
    assert [v for v in github_api.violations if "Signature verification failed" in v]
    github_api.violations.clear()  # the rejection was the point of this test


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({}, "github"), ({"app_id": 1, "private_key": Secret("k")}, "github.installation_id")],
)
def test_incomplete_credentials_are_config_errors(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        github_client("https://api.github.com", **kwargs)
    assert caught.value.key == key
    assert caught.value.hint


# -- commit statuses ---------------------------------------------------------------------------


@pytest.fixture
def pat_client(github_api: FakeGitHub) -> Iterator[github.Github]:
    github_api.add_token(PAT, kind="pat")
    client = github_client(github_api.url, Secret(PAT), **UNPACED)
    yield client
    client.close()


@pytest.mark.parametrize(
    ("build_status_value", "state"),
    [
        ("SUCCEEDED", "success"),
        ("FAILED", "failure"),
        ("TIMED_OUT", "failure"),
        ("FAULT", "error"),
        ("STOPPED", "error"),
    ],
)
def test_commit_status_fallback(
    github_api: FakeGitHub, pat_client: github.Github, build_status_value: str, state: str
) -> None:
    reporter = CommitStatusReporter(pat_client, REPO, context="codebuild/images")
    status_id = reporter.start(EVENT, None, DETAILS)
    reporter.update(status_id, status_of("IN_PROGRESS"))
    reporter.update(status_id, status_of(build_status_value))
    statuses = f"/repos/{REPO}/statuses/{SHA}"
    assert github_api.calls() == [("POST", statuses, 201)] * 3
    bodies = [request.json for request in github_api.requests]
    assert [body["state"] for body in bodies] == ["pending", "pending", state]
    assert {body["context"] for body in bodies} == {"codebuild/images"}
    assert {body["target_url"] for body in bodies} == {DETAILS}
    assert bodies[1]["description"] == "Build #12 running: BUILD"


def test_commit_status_update_from_another_process_needs_the_event(
    github_api: FakeGitHub, pat_client: github.Github
) -> None:
    status_id = CommitStatusReporter(pat_client, REPO, context="codebuild").start(EVENT, None, None)
    later = CommitStatusReporter(pat_client, REPO, context="codebuild")
    with pytest.raises(ReporterError, match="no commit known"):
        later.update(status_id, status_of("SUCCEEDED"))
    later.update(status_id, status_of("SUCCEEDED"), EVENT)
    last = github_api.requests[-1]
    assert last.path == f"/repos/{REPO}/statuses/{SHA}"
    assert last.json["state"] == "success"
    assert last.json["target_url"].startswith("https://eu-west-1.console.aws.amazon.com/")


def test_commit_status_description_fits_140_chars(github_api: FakeGitHub, pat_client: github.Github) -> None:
    base = status_of("FAILED")
    long_title = BuildStatus(**{**base.__dict__, "title": "Build #12 failed in " + "X" * 300})
    reporter = CommitStatusReporter(pat_client, REPO, context="codebuild")
    reporter.update(reporter.start(EVENT, None, None), long_title)
    description = github_api.requests[-1].json["description"]
    assert len(description) == DESCRIPTION_MAX
    assert description.endswith("…")


def test_a_status_that_could_not_start_keeps_its_whole_message_not_half_a_hint(
    github_api: FakeGitHub, pat_client: github.Github
) -> None:
    """`Build not started: <error> (hint: <fix>)` over 140 characters: the hint goes, not half of it."""
    error = BuilderError(
        "CodeBuild refused StartBuild for project 'codebuild-flex': AccessDeniedException",
        hint="allow codebuild:StartBuild on the project for the bridge's role (deploy/bridge.yaml does)",
    )
    reporter = CommitStatusReporter(pat_client, REPO, context="codebuild")
    reporter.update(reporter.start(EVENT, None, None), not_started_status(str(error)))
    description = github_api.requests[-1].json["description"]
    assert description == f"Build not started: {error.message}"


def test_commit_status_forbidden_says_which_permission(github_api: FakeGitHub) -> None:
    github_api.add_token("ghp_noStatuses", kind="pat", permissions={"metadata": "read"})
    client = github_client(github_api.url, Secret("ghp_noStatuses"), **UNPACED)
    with pytest.raises(ReporterError) as caught:
        CommitStatusReporter(client, REPO, context="codebuild").start(EVENT, None, None)
    assert caught.value.retryable is False
    assert caught.value.hint == STATUSES_HINT


# -- secrets stay secret -----------------------------------------------------------------------


def test_no_token_value_in_logs_exceptions_or_recordings(
    github_api: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="bridge")
    github_api.add_token(TOKEN, permissions={"metadata": "read"})
    failures: list[ReporterError] = []

    def attempt(client: github.Github) -> None:
        try:
            CheckRunReporter(client, REPO, name="codebuild").start(EVENT, None, None)
        except ReporterError as error:
            failures.append(error)

    attempt(github_client(github_api.url, Secret(TOKEN), **UNPACED))  # 403
    attempt(github_client(github_api.url, Secret("ghs_neverIssued0123"), **UNPACED))  # 401
    github_api.fail_next(CHECK_RUNS, times=10)
    attempt(github_client(github_api.url, Secret(TOKEN), retry=NO_WAIT_RETRY, **UNPACED))
    app = app_client(github_api, installation_id=github_api.installation_id, retry=NO_WAIT_RETRY)
    attempt(app)  # 502s after a real installation token was minted
    assert len(failures) == 4
    secrets = [TOKEN, "ghs_neverIssued0123", *github_api.issued_tokens, github_api.app_keys.private_key_pem]
    assert len(github_api.issued_tokens) == 1
    texts = [caplog.text, repr(app), json.dumps([r.__dict__ for r in github_api.requests], default=str)]
    texts += [f"{error} {error!r} {error.hint} {error.__cause__!r}" for error in failures]
    for secret in secrets:
        for text in texts:
            assert secret not in text
            assert secret[:24] not in text


# -- the fake holds requests to GitHub's description ---------------------------------------------


def test_fake_rejects_a_request_the_openapi_description_forbids(
    github_api: FakeGitHub, gh: github.Github
) -> None:
    run = gh.get_repo(REPO).create_check_run(name="x", head_sha=SHA)
    with pytest.raises(github.GithubException) as caught:
        run.edit(status="completed")  # GitHub requires a conclusion with status=completed
    assert caught.value.status == 422
    with pytest.raises(github.GithubException):
        run.edit(status="in_progress", conclusion="great")  # not a conclusion GitHub knows
    assert len(github_api.violations) >= 2
    assert any("checks/update" in violation for violation in github_api.violations)
    assert github_api.check_runs[run.id]["status"] == "queued"  # nothing applied
    github_api.violations.clear()  # the rejections were the point of this test


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "31337", "iat": -60, "exp": 3600}, "longer than 10 minutes"),
        ({"iss": "1", "iat": -60, "exp": 300}, "not the app id"),
        ({"iss": "31337", "iat": -900, "exp": -300}, "Signature has expired"),
    ],
)
def test_fake_verifies_app_jwts(github_api: FakeGitHub, claims: dict[str, Any], reason: str) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"iss": claims["iss"], "iat": now + claims["iat"], "exp": now + claims["exp"]},
        github_api.app_keys.private_key_pem,
        algorithm="RS256",
    )
    response = requests.post(
        f"{github_api.url}/app/installations/{github_api.installation_id}/access_tokens",
        headers={"Authorization": f"Bearer {token}", "User-Agent": "test"},
        timeout=5,
    )
    assert response.status_code == 401
    assert github_api.issued_tokens == []
    assert any(reason in violation for violation in github_api.violations)
    github_api.violations.clear()


@pytest.mark.parametrize("kind", ["check run", "commit status"])
def test_bound_reporter_fits_the_worker_protocol(
    github_api: FakeGitHub, gh: github.Github, kind: str
) -> None:
    inner: CheckRunReporter | CommitStatusReporter = (
        CheckRunReporter(gh, REPO, name="codebuild")
        if kind == "check run"
        else CommitStatusReporter(gh, REPO, context="codebuild")
    )
    reporter: StatusReporter = BoundReporter(inner, EVENT, details_url=DETAILS)
    ref = reporter.start(status_of("IN_PROGRESS"))
    assert ref is not None
    fresh = (  # a fresh process
        CheckRunReporter(gh, REPO, name=inner.name)
        if isinstance(inner, CheckRunReporter)
        else CommitStatusReporter(gh, REPO, context=inner.context)
    )
    later: StatusReporter = BoundReporter(fresh, EVENT)
    assert later.update(ref, status_of("SUCCEEDED")) == ref
    assert [r.status for r in github_api.requests] == [201, 200 if kind == "check run" else 201]
    if kind == "check run":
        assert github_api.check_runs[int(ref)]["conclusion"] == "success"
    else:
        assert [s["state"] for s in github_api.statuses] == ["pending", "success"]


# --- a replica that died between creating a check run and recording its id -------------------------


def test_a_check_run_created_by_a_replica_that_died_is_taken_over_not_doubled(
    github_api: FakeGitHub, gh: github.Github
) -> None:
    """Replica A creates the build's run and is SIGKILLed before it records the id; replica B,
    reporting on the same build with no id, must find and update that run."""
    dead = CheckRunReporter(gh, REPO, name="codebuild / image", take_over=True)
    orphan = dead.start(EVENT, status_of("IN_PROGRESS", phase="PROVISIONING"), None)
    other_name = CheckRunReporter(gh, REPO, name="codebuild / other").start(EVENT, status_of(), None)
    survivor_client = github_client(github_api.url, Secret(TOKEN), **UNPACED)
    try:
        survivor = CheckRunReporter(survivor_client, REPO, name="codebuild / image", take_over=True)
        assert survivor.start(EVENT, status_of("SUCCEEDED"), None) == orphan
    finally:
        survivor_client.close()

    assert sorted(github_api.check_runs) == sorted([orphan, other_name])  # no second run of the build
    taken_over = github_api.check_runs[orphan]
    assert (taken_over["status"], taken_over["conclusion"]) == ("completed", "success")
    assert github_api.check_runs[other_name]["status"] == "in_progress"  # another check name: untouched
    assert github_api.calls()[-2:] == [
        ("GET", f"/repos/{REPO}/commits/{SHA}/check-runs", 200),
        ("PATCH", f"{CHECK_RUNS}/{orphan}", 200),
    ]
    assert github_api.violations == []


@pytest.mark.parametrize("runs_before", [0, 1, 120])
def test_a_new_build_on_the_same_commit_gets_a_run_of_its_own(
    github_api: FakeGitHub, gh: github.Github, runs_before: int
) -> None:
    """A re-run is a new build: its external_id differs, so it is created, however many runs (over
    several pages) the commit already has."""
    reporter = CheckRunReporter(gh, REPO, name="codebuild / image", take_over=True)
    earlier = [
        reporter.start(EVENT, replace(status_of("FAILED"), build_id=f"image-builder:old-{index}"), None)
        for index in range(runs_before)
    ]
    new = reporter.start(EVENT, status_of(), None)
    assert new not in earlier
    assert len(github_api.check_runs) == runs_before + 1
    assert github_api.check_runs[new]["external_id"] == BUILD_ID
    again = reporter.start(EVENT, status_of("SUCCEEDED"), None)  # and found on the last page
    assert again == new
    assert len(github_api.check_runs) == runs_before + 1
    assert github_api.violations == []


def test_without_take_over_a_run_is_created_without_looking(
    github_api: FakeGitHub, gh: github.Github
) -> None:
    """The Action's reporter: alone with its build, it spends no GET on a run that cannot exist."""
    reporter = CheckRunReporter(gh, REPO, name="codebuild / image")
    first = reporter.start(EVENT, status_of(), None)
    assert reporter.start(EVENT, status_of(), None) != first
    assert [method for method, _path, _status in github_api.calls()] == ["POST", "POST"]


def test_fake_lists_check_runs_for_a_commit_as_github_does(github_api: FakeGitHub, gh: github.Github) -> None:
    reporter = CheckRunReporter(gh, REPO, name="codebuild / image")
    first = reporter.start(EVENT, replace(status_of(), build_id="image-builder:a"), None)
    second = reporter.start(EVENT, replace(status_of("SUCCEEDED"), build_id="image-builder:b"), None)
    commit = gh.get_repo(REPO).get_commit(SHA)
    assert [run.id for run in commit.get_check_runs(filter="all")] == [second, first]  # newest first
    assert [run.id for run in commit.get_check_runs()] == [second]  # "latest": the newest of each name
    assert [run.id for run in commit.get_check_runs(status="in_progress", filter="all")] == [first]
    assert list(commit.get_check_runs(check_name="codebuild / other")) == []
    assert list(gh.get_repo(REPO).get_commit("f" * 40).get_check_runs()) == []
    assert github_api.violations == []
