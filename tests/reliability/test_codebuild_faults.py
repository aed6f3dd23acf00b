"""CodeBuild faults against the real server process (`bridge serve`), under the stack's own IAM policy.

The CodeBuild double answers AccessDeniedException to every action deploy/bridge.yaml does not grant
the bridge's task role, as AWS would: a call the code makes and the stack forgot fails these tests,
and so does a call the code should not make (BatchGetBuildBatches for a plain build).
"""

from __future__ import annotations

import json
import os
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

    def start(server_settings: str = "") -> Run:
        text = config_text(
            github_url=github_api.url,
            gitlab_url=gitlab_api.url,
            state_path="state.sqlite3",
            refs="secretsmanager",
            max_body_bytes=MAX_BODY,
        )
        config_path = tmp_path / "bridge.toml"
        config_path.write_text(text.replace("[server]\n", f"[server]\n{server_settings}\n", 1))
        env = {
            **os.environ,
            **aws_env,
            "GITHUB_OLD_WEBHOOK_SECRET": GITHUB_OLD_SECRET,
            "GITLAB_WEBHOOK_TOKEN": GITLAB_WEBHOOK_TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
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
