"""Faults against the real server process (`bridge serve`, gunicorn), scripted in the local services.

Secrets Manager sits behind a gate that forwards to moto, throttles, or refuses connections; the
CodeBuild double throttles and refuses on cue; the fake GitHub and GitLab answer 502, 403 with
Retry-After, 409 and "Cannot transition status". In every case the bridge must answer honestly
(503 and an unready /readyz while it cannot verify), retry with back-off, start exactly one build
per accepted delivery, bring every status to its final state, and leak no secret while doing so.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    GITHUB_OLD_SECRET,
    GITHUB_SECRET,
    GITLAB_WEBHOOK_TOKEN,
    github_delivery,
    github_payload,
    gitlab_payload,
)
from tests.e2e.test_server import (
    FINISH_TIMEOUT,
    Sent,
    Server,
    all_final,
    check_run_histories,
    collapse,
    expected_request,
    github_sent,
    gitlab_histories,
    gitlab_sent,
    serve,
    served_text,
    started,
    wait_for,
)
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab
from tests.reliability.gate import SecretsManagerGate
from tests.reliability.secret_scan import SecretScanner

pytestmark = pytest.mark.e2e


@dataclass
class Run:
    """A server process and everything it talks to."""

    server: Server
    gate: SecretsManagerGate
    double: CodeBuildDouble
    github: FakeGitHub
    gitlab: FakeGitLab

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.server.url}/readyz", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.server.log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def scan_for_secrets(self) -> SecretScanner:
        """Everything this run captured, against every secret value it used."""
        scanner = SecretScanner()
        scanner.add_all(
            {
                "github webhook secret": GITHUB_SECRET,
                "github previous webhook secret": GITHUB_OLD_SECRET,
                "gitlab webhook token": GITLAB_WEBHOOK_TOKEN,
                "gitlab api token": self.gitlab.token,
                "github app private key": self.github.app_keys.private_key_pem,
            }
        )
        for number, token in enumerate(self.github.issued_tokens):
            scanner.add(f"github installation token {number}", token)
        scanner.file(self.server.log_path)
        scanner.github(self.github)
        scanner.gitlab(self.gitlab)
        scanner.codebuild(self.double)
        scanner.text(
            "/metrics", urllib.request.urlopen(f"{self.server.url}/metrics", timeout=5).read().decode()
        )
        scanner.assert_clean()
        return scanner


@pytest.fixture
def run(
    tmp_path: Path,
    aws_env: dict[str, str],
    moto_url: str,
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Run]:
    text = served_text(github_api, gitlab_api)
    gate = SecretsManagerGate(moto_url).open()
    try:
        endpoint = {"AWS_ENDPOINT_URL_SECRETS_MANAGER": gate.url}
        with serve(tmp_path, aws_env, github_api, gitlab_api, text, extra_env=endpoint) as server:
            yield Run(server, gate, codebuild_double, github_api, gitlab_api)
    finally:
        gate.close()


def _tokens_exactly_once(run: Run, sent: list[Sent]) -> None:
    tokens = [request["idempotencyToken"] for request in started(run.double)]
    assert set(tokens) == {expected_request(run.server, item)["idempotencyToken"] for item in sent}


# -- Secrets Manager -------------------------------------------------------------------------------


def test_secrets_manager_unreachable_or_throttling_is_503_and_readyz_says_so(run: Run) -> None:
    push = github_sent("push", github_payload("push", None, 4), "sm-push")

    run.gate.close()  # connection refused
    began = time.monotonic()
    unreachable = run.server.post(push.delivery)
    unreachable_seconds = time.monotonic() - began
    not_ready = run.readyz()

    run.gate.open()
    run.gate.mode = "throttle"
    throttled = run.server.post(push.delivery)
    still_not_ready = run.readyz()

    run.gate.mode = "forward"
    accepted = run.server.post(push.delivery)
    ready = run.readyz()

    assert unreachable[0] == 503, unreachable
    assert "cannot be read" in unreachable[1]["error"]
    assert "bridge/" not in json.dumps(unreachable[1])  # no secret name for an unauthenticated caller
    assert unreachable_seconds < 10  # GitHub gives up on a delivery after 10 s
    assert not_ready[0] == 503
    assert any("github.webhook_secrets" in reason for reason in not_ready[1]["reasons"])
    assert throttled[0] == 503, throttled
    assert ("GetSecretValue", "throttled") in run.gate.calls
    assert still_not_ready[0] == 503
    assert accepted == (202, {"delivery": "sm-push", "route": "hello"})  # the retry of the same delivery
    assert ready[0] == 200, ready

    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 0), FINISH_TIMEOUT, "the build", run.server.log_path
    )
    _tokens_exactly_once(run, [push])
    assert len(started(run.double)) == 1
    run.scan_for_secrets()


# -- CodeBuild -----------------------------------------------------------------------------------------


def test_codebuild_throttling_and_build_quota_are_retried_until_exactly_one_build(run: Run) -> None:
    run.double.throttle(3, "StartBuild")  # absorbed by botocore's retry mode
    run.double.fail("StartBuild", "AccountLimitExceededException", count=1)  # retried by the worker
    run.double.throttle(2, "BatchGetBuilds")  # the poll backs off and tries again
    sent = [
        github_sent("push", github_payload("push", None, 4), "cb-push"),
        github_sent("pull_request", github_payload("pull_request", "opened", 1), "cb-pr"),
        gitlab_sent(gitlab_payload("push"), "cb-gl-push"),
    ]

    assert [run.server.post(item.delivery)[0] for item in sent] == [202, 202, 202]

    wait_for(
        lambda: all_final(run.github, run.gitlab, 2, 1), FINISH_TIMEOUT, "every status", run.server.log_path
    )
    _tokens_exactly_once(run, sent)
    assert len(started(run.double)) == 3
    calls = run.double.calls("StartBuild")
    assert [c.error_code for c in calls[:4]] == ["ThrottlingException"] * 3 + [
        "AccountLimitExceededException"
    ]
    assert [c.attempt for c in calls[:3]] == [1, 2, 3]  # botocore's own attempts, backing off
    retries = [line for line in run.log_lines() if line["msg"] == "build start failed; will retry"]
    assert len(retries) == 1
    assert retries[0]["retry_in_seconds"] > 0
    polls = run.double.calls("BatchGetBuilds")
    assert [c.error_code for c in polls[:2]] == ["ThrottlingException"] * 2
    run.scan_for_secrets()


# -- GitHub and GitLab APIs ------------------------------------------------------------------------------


def test_github_and_gitlab_api_faults_are_retried_and_every_status_finishes(run: Run) -> None:
    run.double.script_project("hello-build", Scenario(polls_per_phase=1))
    run.github.fail_next("/repos/*/check-runs", method="POST", times=2, kind="bad_gateway")
    run.github.fail_next("/repos/*/check-runs/*", method="PATCH", kind="secondary_rate_limit", retry_after=1)
    run.gitlab.fail_next(502, times=2)  # python-gitlab retries transient errors itself
    run.gitlab.fail_next(409)  # a race with another writer of the same status
    run.gitlab.fail_next(400, body={"message": "Cannot transition status via :run from :running"})
    run.gitlab.fail_next(503)
    sent = [
        github_sent("push", github_payload("push", None, 4), "api-push"),
        gitlab_sent(gitlab_payload("push"), "api-gl-push"),
    ]

    assert [run.server.post(item.delivery)[0] for item in sent] == [202, 202]

    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 1), FINISH_TIMEOUT, "every status", run.server.log_path
    )
    _tokens_exactly_once(run, sent)
    statuses = [request.status for request in run.github.requests if "/check-runs" in request.path]
    assert statuses.count(502) == 2
    assert 403 in statuses
    assert len(run.github.check_runs) == 1  # the retried create made one check run, not three
    assert [collapse(states) for states in check_run_histories(run.github).values()] == [
        ["queued", "in_progress", "completed"]
    ]
    assert {run_["conclusion"] for run_ in run.github.check_runs.values()} == {"success"}
    answered = [request.status_code for request in run.gitlab.status_requests]
    assert {502, 409, 400, 503} <= set(answered)
    (states,) = gitlab_histories(run.gitlab).values()
    assert states[-1] == "success"
    run.scan_for_secrets()


# -- SIGKILL with a queue, twice ---------------------------------------------------------------------------


def test_sigkill_twice_with_a_queue_then_running_builds_every_delivery_builds_exactly_once(run: Run) -> None:
    """Complements the e2e kill test: a whole queue waiting on a build quota at the first kill,
    every build running at the second, and a restart after each.

    The queue is made by refusing each first StartBuild (AccountLimitExceededException), so every
    delivery sits in the store with a retry time when the process dies. (A delivery claimed at the
    very instant of a kill waits for its 60-s lease instead; see docs/reliability.md.)
    """
    sent = [github_sent("push", github_payload("push", None, 4), f"burst-{n}") for n in range(4)]
    sent += [gitlab_sent(gitlab_payload("push"), "burst-gl-push")]
    sent += [gitlab_sent(gitlab_payload("merge_request_open"), "burst-gl-mr")]
    # Refused until healed: the worker retries within seconds, so a fixed count could run out before the kill.
    run.double.fail("StartBuild", "AccountLimitExceededException", count=10_000)

    assert [run.server.post(item.delivery)[0] for item in sent] == [202] * len(sent)
    wait_for(
        lambda: len(run.double.calls("StartBuild")) >= len(sent),
        FINISH_TIMEOUT,
        "every first start to be refused",
        run.server.log_path,
    )
    wait_for(
        lambda: sum(line["msg"] == "build start failed; will retry" for line in run.log_lines()) >= len(sent),
        FINISH_TIMEOUT,
        "every retry to be recorded",
        run.server.log_path,
    )
    run.server.stop_hard()  # the whole queue is waiting
    assert started(run.double) == []
    run.double.heal("StartBuild")
    run.server.start()
    # Every start recorded, not only answered: a kill between CodeBuild's answer and the record
    # repeats that StartBuild after the restart (same idempotencyToken, so the same build).
    wait_for(
        lambda: sum(line["msg"] == "build started" for line in run.log_lines()) >= len(sent),
        FINISH_TIMEOUT,
        "every start to be recorded",
        run.server.log_path,
    )
    assert len(started(run.double)) == len(sent)
    run.server.stop_hard()  # every build running, none reported as finished
    assert not all_final(run.github, run.gitlab, 4, 2)
    run.server.start()

    assert run.server.post(sent[0].delivery) == (200, {"duplicate": "burst-0"})
    wait_for(
        lambda: all_final(run.github, run.gitlab, 4, 2), FINISH_TIMEOUT, "every status", run.server.log_path
    )
    _tokens_exactly_once(run, sent)
    assert len(started(run.double)) == len(sent)  # no StartBuild repeated after either restart
    assert len(run.github.check_runs) == 4  # one check run per build
    assert all(states[-1] == "success" for states in gitlab_histories(run.gitlab).values())
    run.scan_for_secrets()


def test_the_secret_scan_finds_a_planted_leak(run: Run) -> None:
    """The checker above must be able to fail: a token written to the log is found."""
    with run.server.log_path.open("a") as log:
        log.write(json.dumps({"msg": "oops", "token": run.gitlab.token}) + "\n")
    with pytest.raises(AssertionError, match="gitlab api token"):
        run.scan_for_secrets()
    assert run.server.post(github_delivery("push", github_payload("push", None, 4), secret="x"))[0] == 401
