"""Maintainer approval of fork changes, black-box against a real `bridge serve` (routes with
forks = "approve"), on both providers, with the fake GitHub and GitLab APIs answering the
permission, pull request and membership questions.

Each scenario walks the whole flow: the fork's head waits with a status saying how to approve; a
non-member's approval is refused; a maintainer's starts a build of exactly the approved SHA with
the approved-fork grant; after a push the new head waits again, an old approval (button) does
not carry over, and a new approval builds the new head.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.core.approval import approve_action
from tests.e2e.support import (
    config_text,
    github_delivery,
    github_payload,
    gitlab_delivery,
    gitlab_payload,
)
from tests.e2e.test_server import FINISH_TIMEOUT, Server, serve, started, wait_for
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

pytestmark = pytest.mark.e2e

FIRST = "1111111111111111111111111111111111111111"
SECOND = "2222222222222222222222222222222222222222"
FORK = "contributor/Hello-World"
FORK_CLONE_URL = f"https://github.com/{FORK}.git"
BASE = "Codertocat/Hello-World"
TRUSTED_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web"
# Secrets the route grants approved forks, and a trusted tag a fork could name (its branch).
SECRET_ENV = (
    'env = { NPM_TOKEN = "secretsmanager:ci/npm#token", MODE = "ci" }\n'
    f'image_repository = "{TRUSTED_IMAGE}"\nimage_tag = "{{branch}}"'
)


@pytest.fixture
def server(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Server]:
    """`bridge serve` whose two routes build forks once a maintainer approves them (GitHub App mode)."""
    text = config_text(
        github_url=github_api.url,
        gitlab_url=gitlab_api.url,
        refs="secretsmanager",
        github_route_extra=f'forks = "approve"\n{SECRET_ENV}',
    )
    text = text.replace('forks = "never"', f'forks = "approve"\n{SECRET_ENV}')
    with serve(tmp_path, aws_env, github_api, gitlab_api, text) as running:
        yield running


# -- GitHub ------------------------------------------------------------------------------------------------


def fork_pull_request(action: str, sha: str) -> dict[str, Any]:
    """@octokit's pull_request example (App delivery), its head moved to a fork at `sha`."""
    payload = github_payload("pull_request", "opened", 1)
    payload["action"] = action
    head = payload["pull_request"]["head"]
    head["sha"] = sha
    head["repo"]["full_name"] = FORK
    head["repo"]["clone_url"] = FORK_CLONE_URL
    head["repo"]["html_url"] = f"https://github.com/{FORK}"
    return payload


def pr_comment(number: int, body: str, login: str) -> dict[str, Any]:
    """@octokit's issue_comment example, made a comment on pull request `number` by `login`."""
    payload = github_payload("issue_comment", "created")
    payload["issue"]["number"] = number
    payload["issue"]["pull_request"] = {
        "url": f"https://api.github.com/repos/{BASE}/pulls/{number}",
        "html_url": f"https://github.com/{BASE}/pull/{number}",
        "diff_url": f"https://github.com/{BASE}/pull/{number}.diff",
        "patch_url": f"https://github.com/{BASE}/pull/{number}.patch",
    }
    payload["comment"]["body"] = body
    payload["comment"]["user"]["login"] = login
    payload["sender"]["login"] = login
    payload["installation"] = {"id": 4242, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNDI0Mg=="}
    return payload


def button(number: int, sha: str, login: str) -> dict[str, Any]:
    """@octokit's check_run requested_action example, pressed on the approve button of `sha`'s run."""
    payload = github_payload("check_run", "requested_action")
    payload["requested_action"] = {"identifier": approve_action(number).identifier}
    payload["check_run"]["head_sha"] = sha
    payload["repository"] = github_payload("pull_request", "opened", 1)["repository"]
    payload["sender"]["login"] = login
    payload["installation"]["id"] = 4242
    return payload


def waiting_runs(github_api: FakeGitHub, sha: str) -> list[dict[str, Any]]:
    return [
        run
        for run in github_api.check_runs.values()
        if run["head_sha"] == sha and run["conclusion"] == "action_required"
    ]


def env_names(request: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in request.get("environmentVariablesOverride", [])}


def assert_no_trusted_image(request: dict[str, Any]) -> None:
    """An approved fork still never pushes to the route's repository under a tag it controls."""
    values = [str(variable["value"]) for variable in request.get("environmentVariablesOverride", [])]
    assert not [value for value in values if TRUSTED_IMAGE in value]


def test_github_fork_pull_request_waits_for_a_maintainer_and_builds_the_approved_head(
    server: Server, codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    opened = fork_pull_request("opened", FIRST)
    number = opened["pull_request"]["number"]
    github_api.set_permission(BASE, "maintainer", "write")
    github_api.set_permission(BASE, "passer-by", "read")
    github_api.set_pull(BASE, number, head_sha=FIRST, head_repository=FORK)

    # 1. The fork's head waits, with a check run saying how to approve (and the button).
    status, body = server.post(github_delivery("pull_request", opened))
    assert status == 200
    assert "waiting" in body
    wait_for(
        lambda: waiting_runs(github_api, FIRST) != [], FINISH_TIMEOUT, "the waiting check", server.log_path
    )
    (run,) = waiting_runs(github_api, FIRST)
    assert "/ok-to-build" in run["output"]["summary"]
    assert [action["identifier"] for action in github_api.check_run_actions[run["id"]]] == [
        f"approve-{number}"
    ]

    # 2. Someone without write access approves: refused, nothing built.
    status, body = server.post(
        github_delivery("issue_comment", pr_comment(number, "/ok-to-build", "passer-by"))
    )
    assert status == 200
    assert "needs write access" in body["ignored"]
    assert "approval refused" in server.log_path.read_text()

    # 3. A maintainer approves: exactly the approved head is built, with the route's fork grant.
    status, body = server.post(
        github_delivery("issue_comment", pr_comment(number, "/ok-to-build", "maintainer"))
    )
    assert status == 202, body
    assert body["route"] == "hello"
    wait_for(
        lambda: len(started(codebuild_double)) == 1, FINISH_TIMEOUT, "the approved build", server.log_path
    )
    (build,) = started(codebuild_double)
    assert build["sourceVersion"] == FIRST
    assert build["sourceLocationOverride"] == FORK_CLONE_URL
    assert "NPM_TOKEN" in env_names(build)  # what the route grants approved forks
    assert_no_trusted_image(build)
    permission_calls = [path for _, path, _ in github_api.calls() if path.endswith("/permission")]
    assert permission_calls == [
        f"/repos/{BASE}/collaborators/passer-by/permission",
        f"/repos/{BASE}/collaborators/maintainer/permission",
    ]
    # The same approval again (a second maintainer, a redelivery) builds nothing more.
    again = server.post(github_delivery("issue_comment", pr_comment(number, "/ok-to-build", "maintainer")))
    assert again[0] == 200
    assert "duplicate" in again[1]

    # 4. A push: the new head waits again; the old head's button does not approve it.
    github_api.set_pull(BASE, number, head_sha=SECOND, head_repository=FORK)
    status, body = server.post(github_delivery("pull_request", fork_pull_request("synchronize", SECOND)))
    assert status == 200
    assert "waiting" in body
    wait_for(
        lambda: waiting_runs(github_api, SECOND) != [],
        FINISH_TIMEOUT,
        "the new head's check",
        server.log_path,
    )
    status, body = server.post(github_delivery("check_run", button(number, FIRST, "maintainer")))
    assert status == 200
    assert "the head is now 2222222" in body["ignored"]
    assert len(started(codebuild_double)) == 1

    # 5. The button on the new head's check run, pressed by a maintainer, builds the new head.
    status, body = server.post(github_delivery("check_run", button(number, SECOND, "maintainer")))
    assert status == 202, body
    wait_for(lambda: len(started(codebuild_double)) == 2, FINISH_TIMEOUT, "the second build", server.log_path)
    assert [request["sourceVersion"] for request in started(codebuild_double)] == [FIRST, SECOND]


# -- GitLab ------------------------------------------------------------------------------------------------


def fork_merge_request(sha: str, *, update: bool = False) -> dict[str, Any]:
    """GitLab's documented fork merge request (opened), or an update that pushed `sha`."""
    payload = gitlab_payload("merge_request_fork_open")
    attributes = payload["object_attributes"]
    attributes["last_commit"]["id"] = sha
    if update:
        attributes["action"] = "update"
        attributes["oldrev"] = FIRST
    return payload


def mr_note(sha: str, *, user_id: int, username: str) -> dict[str, Any]:
    """GitLab's documented merge request comment, on the fork merge request at head `sha`."""
    payload = gitlab_payload("note_merge_request_fork")
    payload["merge_request"]["last_commit"]["id"] = sha
    payload["user"].update(id=user_id, username=username)
    payload["object_attributes"]["author_id"] = user_id
    return payload


def test_gitlab_fork_merge_request_waits_for_a_developer_and_builds_the_approved_head(
    server: Server, codebuild_double: CodeBuildDouble, gitlab_api: FakeGitLab
) -> None:
    gitlab_api.members[("1", 7)] = 30  # Developer on the target project
    gitlab_api.members[("1", 8)] = 20  # Reporter: may not approve

    # 1. The fork's head waits, with a pending status saying how to approve.
    status, body = server.post(gitlab_delivery(fork_merge_request(FIRST)))
    assert status == 200
    assert "waiting" in body
    wait_for(
        lambda: gitlab_api.statuses.get((FIRST, "codebuild/diaspora")) == "pending",
        FINISH_TIMEOUT,
        "the waiting status",
        server.log_path,
    )
    assert "/ok-to-build" in gitlab_api.status_fields(FIRST, "codebuild/diaspora")["description"]

    # 2. A non-member and a Reporter approve: refused, nothing built.
    for user_id, name in ((99, "stranger"), (8, "reporter")):
        status, body = server.post(
            gitlab_delivery(mr_note(FIRST, user_id=user_id, username=name), event="Note Hook")
        )
        assert status == 200
        assert "Developer role (30) or more" in body["ignored"]

    # 3. A Developer approves: exactly the approved head is built, with the route's fork grant.
    status, body = server.post(gitlab_delivery(mr_note(FIRST, user_id=7, username="dev"), event="Note Hook"))
    assert status == 202, body
    wait_for(
        lambda: len(started(codebuild_double)) == 1, FINISH_TIMEOUT, "the approved build", server.log_path
    )
    (build,) = started(codebuild_double)
    assert build["sourceVersion"] == FIRST
    assert build["sourceLocationOverride"] == "http://example.com/contributor/awesome_project.git"
    assert "NPM_TOKEN" in env_names(build)
    assert_no_trusted_image(build)

    # 4. A push: the new head waits again and needs its own approval.
    status, body = server.post(gitlab_delivery(fork_merge_request(SECOND, update=True)))
    assert status == 200
    assert "waiting" in body
    wait_for(
        lambda: gitlab_api.statuses.get((SECOND, "codebuild/diaspora")) == "pending",
        FINISH_TIMEOUT,
        "the new head's waiting status",
        server.log_path,
    )
    assert len(started(codebuild_double)) == 1
    status, body = server.post(gitlab_delivery(mr_note(SECOND, user_id=7, username="dev"), event="Note Hook"))
    assert status == 202, body
    wait_for(lambda: len(started(codebuild_double)) == 2, FINISH_TIMEOUT, "the second build", server.log_path)
    assert [request["sourceVersion"] for request in started(codebuild_double)] == [FIRST, SECOND]
