"""CodeBuild faults against the real server process (`bridge serve`), under the stack's own IAM policy.

The CodeBuild double answers AccessDeniedException to every action deploy/bridge.yaml does not grant
the bridge's task role, as AWS would: a call the code makes and the stack forgot fails these tests,
and so does a call the code should not make (BatchGetBuildBatches for a plain build).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests import stack
from tests.e2e.support import (
    GITHUB_OLD_SECRET,
    GITHUB_SECRET,
    GITLAB_WEBHOOK_TOKEN,
    REGION,
    config_text,
    github_payload,
    gitlab_payload,
    secret_env,
)
from tests.e2e.test_server import (
    FINISH_TIMEOUT,
    MAX_BODY,
    Server,
    all_final,
    free_port,
    github_sent,
    gitlab_histories,
    gitlab_sent,
    wait_for,
)
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

pytestmark = pytest.mark.e2e


@dataclass
class Run:
    server: Server
    double: CodeBuildDouble
    github: FakeGitHub
    gitlab: FakeGitLab

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.server.log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def logged(self, message: str) -> int:
        return sum(line["msg"] == message for line in self.log_lines())

    def assert_only_allowed_calls(self) -> None:
        """Every CodeBuild call the server made is one the stack's policy allows."""
        allowed = set(stack.bridge_codebuild_actions())
        called = {f"codebuild:{request.operation}" for request in self.double.requests}
        assert called <= allowed, (
            f"the code calls {sorted(called - allowed)}, which deploy/bridge.yaml denies"
        )
        assert not [r for r in self.double.requests if r.error_code == "AccessDeniedException"]


RunFactory = Callable[..., Run]


def bridge_redeliver(run: Run, delivery_id: str) -> subprocess.CompletedProcess[str]:
    """`bridge redeliver` as an operator runs it, beside the server, on its routing file."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", "redeliver", delivery_id, "--config", str(run.server.config_path)],
        env=run.server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def start_run(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[RunFactory]:
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.create_secret(Name="bridge/github-webhook", SecretString=GITHUB_SECRET)
    secrets.create_secret(Name="bridge/github-app-key", SecretString=github_api.app_keys.private_key_pem)
    secrets.create_secret(Name="bridge/gitlab-token", SecretString=gitlab_api.token)
    codebuild_double.allow_only(stack.bridge_codebuild_actions())
    servers: list[Server] = []

    def start(server_settings: str = "", *, credentials: bool = True, region: bool = True) -> Run:
        """`credentials=False` / `region=False`: no AWS credentials / region anywhere (secrets come
        from env: references then)."""
        text = config_text(
            github_url=github_api.url,
            gitlab_url=gitlab_api.url,
            state_path="state.sqlite3",
            refs="secretsmanager" if credentials and region else "env",
            max_body_bytes=MAX_BODY,
        )
        if not region:
            text = text.replace(f'[aws]\nregion = "{REGION}"\n', "", 1)
        config_path = tmp_path / "bridge.toml"
        config_path.write_text(text.replace("[server]\n", f"[server]\n{server_settings}\n", 1))
        env = {
            **os.environ,
            **aws_env,
            "GITHUB_OLD_WEBHOOK_SECRET": GITHUB_OLD_SECRET,
            "GITLAB_WEBHOOK_TOKEN": GITLAB_WEBHOOK_TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
        if not credentials:
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
                env.pop(name, None)
        if not region:
            for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
                env.pop(name, None)
        if not (credentials and region):
            env.update(
                secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token)
            )
        server = Server(config_path, tmp_path / "server.log", env, free_port())
        servers.append(server)
        server.start()
        return Run(server, codebuild_double, github_api, gitlab_api)

    try:
        yield start
    finally:
        for server in servers:
            server.stop_hard()


# -- issue 20, case 4: one vanished build froze every status -----------------------------------------------


def test_a_build_codebuild_forgot_is_reported_lost_and_every_other_build_finishes(
    start_run: RunFactory,
) -> None:
    run = start_run()
    run.double.script_next(Scenario(polls_per_phase=100))  # the first build runs until it is forgotten
    push = github_sent("push", github_payload("push", None, 4), "lost-push")
    others = [
        github_sent("pull_request", github_payload("pull_request", "opened", 1), "kept-pr"),
        gitlab_sent(gitlab_payload("push"), "kept-gl-push"),
    ]

    assert run.server.post(push.delivery)[0] == 202
    wait_for(lambda: run.logged("build started") == 1, FINISH_TIMEOUT, "the first build", run.server.log_path)
    (lost,) = run.double.build_ids()
    run.double.forget(lost)  # deleted in CodeBuild, say: BatchGetBuilds lists it under buildsNotFound
    assert [run.server.post(item.delivery)[0] for item in others] == [202, 202]

    wait_for(
        lambda: all_final(run.github, run.gitlab, 2, 1), FINISH_TIMEOUT, "every status", run.server.log_path
    )
    by_build = {check_run["external_id"]: check_run for check_run in run.github.check_runs.values()}
    assert by_build[lost]["conclusion"] == "failure"
    assert by_build[lost]["output"]["title"].startswith(f"Build {lost} lost: CodeBuild has not returned it")
    (kept,) = [check_run for build_id, check_run in by_build.items() if build_id != lost]
    assert kept["conclusion"] == "success"
    assert [states[-1] for states in gitlab_histories(run.gitlab).values()] == ["success"]
    assert run.double.not_found[lost] == 5  # a bounded number of polls, then no more
    assert run.double.calls("BatchGetBuildBatches") == []  # not a batch: no batch call
    run.assert_only_allowed_calls()


# -- issue 20, case 5: an outage dropped accepted deliveries, and nothing could start them again ----------

# Pauses between start attempts of at most a second, and a look for an earlier attempt's build from the
# first retry on: the time-dependent behaviour without waiting minutes for it.
FAST_RETRIES = "start_retry_max_delay_seconds = 1\nstart_lookup_after_seconds = 0"


def test_a_long_codebuild_outage_waits_and_builds_every_delivery_once(start_run: RunFactory) -> None:
    run = start_run(FAST_RETRIES)
    refusals = 12  # more attempts than the 8 after which deliveries used to be dropped
    run.double.fail("StartBuild", "AccountLimitExceededException", count=refusals)
    push = github_sent("push", github_payload("push", None, 4), "outage-push")

    assert run.server.post(push.delivery)[0] == 202
    wait_for(
        lambda: len(run.github.check_runs) == 1, FINISH_TIMEOUT, "the waiting status", run.server.log_path
    )
    (waiting,) = run.github.check_runs.values()
    assert waiting["status"] == "queued"
    assert waiting["output"]["title"].startswith("Waiting for CodeBuild: CodeBuild StartBuild")
    assert "AccountLimitExceededException" in waiting["output"]["title"]

    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 0), FINISH_TIMEOUT, "the build", run.server.log_path
    )
    calls = run.double.calls("StartBuild")
    assert len(calls) == refusals + 1
    assert [call.error_code for call in calls[-1:]] == [None]
    assert len(run.double.build_ids()) == 1
    (check_run,) = run.github.check_runs.values()  # the waiting status became the build's
    assert check_run["conclusion"] == "success"
    assert run.logged("build start failed for good") == 0
    run.assert_only_allowed_calls()


def test_a_start_whose_answer_was_lost_is_found_not_repeated_once_the_token_is_forgotten(
    start_run: RunFactory,
) -> None:
    run = start_run(FAST_RETRIES)
    run.double.idempotency_window = 0  # CodeBuild has forgotten every token by the next attempt
    # The build starts, but the bridge hears a refusal botocore does not retry; the worker does, later.
    run.double.lose_answers("StartBuild", "AccountLimitExceededException", status=400)
    push = github_sent("push", github_payload("push", None, 4), "lost-answer-push")

    assert run.server.post(push.delivery)[0] == 202
    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 0), FINISH_TIMEOUT, "the build", run.server.log_path
    )
    (build_id,) = run.double.build_ids()  # one build: the retry found it instead of starting another
    assert len(run.double.calls("StartBuild")) == 1
    assert run.double.calls("ListBuildsForProject")
    variables = run.double.build(build_id)["environment"]["environmentVariables"]
    # The server's key for the delivery: ids are namespaced per provider (issue 19, item 6).
    expected = {"name": "BRIDGE_DELIVERY_ID", "value": "github:lost-answer-push", "type": "PLAINTEXT"}
    assert expected in variables
    (check_run,) = run.github.check_runs.values()
    assert check_run["external_id"] == build_id
    assert check_run["conclusion"] == "success"
    assert run.logged("found the build an earlier attempt started") == 1
    run.assert_only_allowed_calls()


def test_an_unknown_project_fails_once_with_the_fix_and_redelivery_or_the_cli_start_it_again(
    start_run: RunFactory,
) -> None:
    run = start_run(FAST_RETRIES)
    run.double.mark_missing("hello-build")
    run.double.mark_missing("gl-build")
    push = github_sent("push", github_payload("push", None, 4), "missing-push")
    gitlab = gitlab_sent(gitlab_payload("push"), "missing-gl-push")

    assert run.server.post(push.delivery)[0] == 202
    assert run.server.post(gitlab.delivery)[0] == 202
    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 1), FINISH_TIMEOUT, "the failures", run.server.log_path
    )
    (failed,) = run.github.check_runs.values()
    assert failed["conclusion"] == "failure"
    assert failed["output"]["title"].startswith(
        "Build not started: CodeBuild StartBuild for project 'hello-build'"
    )
    assert "check that the CodeBuild project 'hello-build' exists" in failed["output"]["summary"]
    assert len(run.double.calls("StartBuild")) == 2  # not retried: no loop against an unknown project

    run.double.restore_project("hello-build")
    run.double.restore_project("gl-build")
    assert run.server.post(push.delivery) == (202, {"delivery": "missing-push", "restarted": True})
    redeliver = bridge_redeliver(run, "missing-gl-push")
    assert redeliver.returncode == 0, redeliver.stderr
    again = bridge_redeliver(run, "no-such-delivery")
    assert again.returncode == 1
    assert "no delivery 'no-such-delivery'" in again.stderr

    wait_for(
        lambda: (
            len(run.double.build_ids()) == 2
            and all_final(run.github, run.gitlab, 1, 1)
            and next(iter(run.github.check_runs.values()))["conclusion"] == "success"
            and [s[-1] for s in gitlab_histories(run.gitlab).values()] == ["success"]
        ),
        FINISH_TIMEOUT,
        "both builds",
        run.server.log_path,
    )
    assert len(run.github.check_runs) == 1  # the failed check run itself moved on to the build
    assert run.server.post(push.delivery) == (200, {"duplicate": "missing-push"})  # started now: a duplicate
    run.assert_only_allowed_calls()


def test_a_rerun_of_a_commit_whose_build_never_started_starts_that_delivery_again(
    start_run: RunFactory,
) -> None:
    run = start_run(FAST_RETRIES)
    run.double.mark_missing("hello-build")
    payload = github_payload("push", None, 4)
    push = github_sent("push", payload, "never-started-push")
    assert run.server.post(push.delivery)[0] == 202
    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 0), FINISH_TIMEOUT, "the failure", run.server.log_path
    )
    run.double.restore_project("hello-build")

    rerun = github_payload("check_run", "rerequested")
    rerun["check_run"]["head_sha"] = payload["after"]
    rerun["repository"] = payload["repository"]
    answer = run.server.post(github_sent("check_run", rerun, "rerun-click").delivery)

    assert answer == (202, {"delivery": "never-started-push", "restarted": True})
    wait_for(
        lambda: (
            len(run.double.build_ids()) == 1
            and next(iter(run.github.check_runs.values()))["conclusion"] == "success"
        ),
        FINISH_TIMEOUT,
        "the build",
        run.server.log_path,
    )
    assert len(run.github.check_runs) == 1
    run.assert_only_allowed_calls()


def test_no_aws_credentials_fail_each_delivery_once_with_the_fix_and_no_retry_loop(
    start_run: RunFactory,
) -> None:
    run = start_run(FAST_RETRIES, credentials=False)
    push = github_sent("push", github_payload("push", None, 4), "no-credentials-push")

    assert run.server.post(push.delivery)[0] == 202
    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 0), FINISH_TIMEOUT, "the failure", run.server.log_path
    )
    (check_run,) = run.github.check_runs.values()
    assert check_run["conclusion"] == "failure"
    assert check_run["output"]["title"].startswith("Build not started: no AWS credentials found")
    assert "**To fix:**" in check_run["output"]["summary"]
    assert run.double.requests == []  # nothing reached CodeBuild
    assert run.logged("build start failed; will retry") == 0
    assert run.logged("build start failed for good") == 1


def test_no_aws_region_fails_each_delivery_once_with_the_fix_and_no_retry_loop(
    start_run: RunFactory,
) -> None:
    run = start_run(FAST_RETRIES, region=False)
    push = github_sent("push", github_payload("push", None, 4), "no-region-push")

    assert run.server.post(push.delivery)[0] == 202
    wait_for(
        lambda: all_final(run.github, run.gitlab, 1, 0), FINISH_TIMEOUT, "the failure", run.server.log_path
    )
    (check_run,) = run.github.check_runs.values()
    assert check_run["conclusion"] == "failure"
    assert check_run["output"]["title"].startswith("Build not started: no AWS region")
    assert "**To fix:**" in check_run["output"]["summary"]
    assert "AWS_REGION" in check_run["output"]["summary"]
    assert run.double.requests == []  # nothing reached CodeBuild
    assert run.logged("build start failed; will retry") == 0
    assert run.logged("build start failed for good") == 1
