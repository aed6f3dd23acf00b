"""A *Re-run* that builds nothing says why on the check it was asked on, black-box against a real
`bridge serve`: a build is made on routes[hello], the server is restarted on an edited routing file
(same SQLite state), and GitHub's check_run rerequested is sent for the built commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import config_text, github_delivery, github_payload
from tests.e2e.test_server import FINISH_TIMEOUT, Server, serve, started, wait_for
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

pytestmark = pytest.mark.e2e

FORK = "mallory/Hello-World"


@pytest.fixture
def server(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Server]:
    """App mode (check runs); routes[hello] builds forks without secrets."""
    text = config_text(
        github_url=github_api.url,
        gitlab_url=gitlab_api.url,
        refs="secretsmanager",
        github_route_extra='forks = "without-secrets"',
    )
    with serve(tmp_path, aws_env, github_api, gitlab_api, text) as running:
        yield running


def push() -> dict[str, Any]:
    return github_payload("push", None, 4)  # Codertocat/Hello-World, master


def fork_pull_request() -> dict[str, Any]:
    payload = github_payload("pull_request", "opened", 1)
    payload["pull_request"]["head"]["repo"].update(
        full_name=FORK, clone_url=f"https://github.com/{FORK}.git", html_url=f"https://github.com/{FORK}"
    )
    return payload


def rerun_of(sha: str, repository: dict[str, Any]) -> dict[str, Any]:
    """@octokit's check_run rerequested example, asked on the check of `sha` in `repository`."""
    payload = github_payload("check_run", "rerequested")
    payload["check_run"]["head_sha"] = sha
    payload["check_run"]["check_suite"]["head_sha"] = sha
    payload["repository"] = repository
    payload["installation"]["id"] = 4242
    return payload


def restart_with(server: Server, edit: Callable[[str], str]) -> None:
    server.stop_hard()
    server.config_path.write_text(edit(server.config_path.read_text()))
    server.start()


def completed_runs(github_api: FakeGitHub, sha: str) -> list[dict[str, Any]]:
    return [
        run
        for run in github_api.check_runs.values()
        if run["head_sha"] == sha and run["status"] == "completed"
    ]


CASES = {
    "route removed": (
        push,
        lambda text: text.replace('name = "hello"', 'name = "renamed"'),
        "no longer exists",
    ),
    "branch filter changed": (
        push,
        lambda text: text.replace('branches = ["master"]', 'branches = ["release/*"]', 1),
        "no longer builds it (branch master not in routes[hello].branches)",
    ),
    "fork policy now refuses": (
        fork_pull_request,
        lambda text: text.replace('forks = "without-secrets"', 'forks = "never"'),
        "forks = never",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_rerun_completes_its_check_saying_which_route_and_why(
    server: Server, codebuild_double: CodeBuildDouble, github_api: FakeGitHub, case: str
) -> None:
    make_payload, edit, why = CASES[case]
    payload = make_payload()
    event = "push" if "after" in payload else "pull_request"
    sha = payload["after"] if event == "push" else payload["pull_request"]["head"]["sha"]
    assert server.post(github_delivery(event, payload))[0] == 202
    wait_for(
        lambda: len(completed_runs(github_api, sha)) == 1,
        FINISH_TIMEOUT,
        "the build's check",
        server.log_path,
    )

    restart_with(server, edit)
    status, body = server.post(github_delivery("check_run", rerun_of(sha, payload["repository"])))

    assert status == 200
    assert why in body["ignored"]
    wait_for(
        lambda: len(completed_runs(github_api, sha)) == 2,
        FINISH_TIMEOUT,
        "the re-run's check",
        server.log_path,
    )
    (run,) = [
        run
        for run in completed_runs(github_api, sha)
        if run["output"]["title"].startswith("Re-run not built")
    ]
    assert run["name"] == "codebuild/hello"  # the check that was re-run
    assert run["conclusion"] == "failure"  # never neutral: a required check must not pass on nothing
    assert why in run["output"]["title"]
    summary = run["output"]["summary"]
    assert "routes[hello]" in summary
    assert why in summary
    assert "**To fix:**" in summary
    assert len(started(codebuild_double)) == 1  # nothing was built again


def test_a_rerun_of_a_fork_head_that_now_needs_approval_posts_how_to_approve(
    server: Server, codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    """Admitted by its route but not yet approved: the check that was re-run says how to approve."""
    payload = fork_pull_request()
    sha = payload["pull_request"]["head"]["sha"]
    assert server.post(github_delivery("pull_request", payload))[0] == 202
    wait_for(
        lambda: len(completed_runs(github_api, sha)) == 1,
        FINISH_TIMEOUT,
        "the build's check",
        server.log_path,
    )

    restart_with(server, lambda text: text.replace('forks = "without-secrets"', 'forks = "approve"'))
    status, body = server.post(github_delivery("check_run", rerun_of(sha, payload["repository"])))

    assert status == 200
    assert "waiting" in body
    wait_for(
        lambda: any(run.get("conclusion") == "action_required" for run in completed_runs(github_api, sha)),
        FINISH_TIMEOUT,
        "the waiting-for-approval check",
        server.log_path,
    )
    (run,) = [run for run in completed_runs(github_api, sha) if run.get("conclusion") == "action_required"]
    assert run["name"] == "codebuild/hello"
    assert len(started(codebuild_double)) == 1  # nothing was built again
