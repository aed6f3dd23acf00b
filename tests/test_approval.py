"""Maintainer approval of fork changes, piece by piece: the command, the approver's rights, the head
it pins, the status a waiting fork shows, and the provider lookups against the fake APIs.

The whole flow against a real `bridge serve` is tests/e2e/test_approval.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge import events
from bridge.core.approval import (
    DEFAULT_COMMAND,
    ApprovalCommand,
    approval_delivery_id,
    approve_action,
    awaiting_status,
    built_by_approval,
    check_approver,
    check_head,
    matches_command,
    number_of_action,
)
from bridge.model import Ignored, SourceEvent
from bridge.reporters.github import CheckRunReporter, CommitStatusReporter, github_client
from bridge.reporters.gitlab import GitLabStatusReporter, gitlab_client
from bridge.secret import Secret
from bridge.secrets import SecretStore
from bridge.services import ProviderReporters
from tests.e2e.support import github_payload, gitlab_payload, make_config, secret_env
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

HEAD = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"


# -- the command ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/ok-to-build", (True, None)),
        ("  /ok-to-build  \r\nthanks for the fix", (True, None)),
        ("/ok-to-build 0123456", (True, "0123456")),
        ("/ok-to-build 0123456789ABCDEF0123456789abcdef01234567", (True, HEAD)),
        ("/ok-to-build 012345", (False, None)),  # too short to name a commit
        ("/ok-to-build please", (False, None)),
        ("/ok-to-builds", (False, None)),
        ("LGTM\n/ok-to-build", (False, None)),  # only the first line counts
        ("> /ok-to-build", (False, None)),  # quoting it approves nothing
        ("", (False, None)),
    ],
)
def test_only_a_first_line_that_is_the_command_approves(body: str, expected: tuple[bool, str | None]) -> None:
    assert matches_command(body, DEFAULT_COMMAND) == expected


def _command(provider: str = "github", via: str = "comment", sha: str | None = None) -> ApprovalCommand:
    return ApprovalCommand(
        provider=provider,  # type: ignore[arg-type]
        via=via,  # type: ignore[arg-type]
        repository="acme/web",
        number=7,
        by="maintainer",
        sha=sha,
    )


@pytest.mark.parametrize(
    ("permission", "allowed"),
    [("admin", True), ("write", True), ("read", False), ("none", False), (None, False)],
)
def test_github_approvers_need_write_access(permission: str | None, allowed: bool) -> None:
    refusal = check_approver(_command(), permission=permission)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert "needs write access to acme/web" in refusal.reason


@pytest.mark.parametrize(
    ("level", "allowed"), [(50, True), (40, True), (30, True), (20, False), (10, False), (None, False)]
)
def test_gitlab_approvers_need_the_developer_role(level: int | None, allowed: bool) -> None:
    refusal = check_approver(_command("gitlab"), access_level=level)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert "Developer role (30) or more" in refusal.reason


def test_an_approval_naming_an_old_head_does_not_approve_the_new_one() -> None:
    assert check_head(_command(), HEAD) is None  # names no commit: the current head
    assert check_head(_command(sha=HEAD[:7]), HEAD) is None
    assert check_head(_command(via="button", sha=HEAD), HEAD) is None
    refused = check_head(_command(via="button", sha=OLD), HEAD)
    assert refused is not None
    assert "head is now 0123456" in refused.reason
    # A button names a whole SHA: a prefix is a comment's convenience only.
    assert check_head(_command(via="button", sha=HEAD[:7]), HEAD) is not None
    assert check_head(_command(sha=OLD[:7]), HEAD) is not None


def test_the_button_carries_the_change_number_within_githubs_limits() -> None:
    action = approve_action(123456)
    assert len(action.identifier) <= 20
    assert len(action.label) <= 20
    assert len(action.description) <= 40
    assert number_of_action(action.identifier) == 123456
    assert number_of_action("lgtm|26764") is None
    assert number_of_action("approve-") is None


# -- the deliveries ---------------------------------------------------------------------------------


def pr_comment(body: str, *, login: str = "maintainer", number: int = 2) -> dict[str, Any]:
    """@octokit's issue_comment example, made a comment on a pull request (GitHub sets
    issue.pull_request then) by `login`, delivered to the App."""
    payload = github_payload("issue_comment", "created")
    payload["issue"]["number"] = number
    payload["issue"]["pull_request"] = {
        "url": f"https://api.github.com/repos/Codertocat/Hello-World/pulls/{number}",
        "html_url": f"https://github.com/Codertocat/Hello-World/pull/{number}",
        "diff_url": f"https://github.com/Codertocat/Hello-World/pull/{number}.diff",
        "patch_url": f"https://github.com/Codertocat/Hello-World/pull/{number}.patch",
    }
    payload["comment"]["body"] = body
    payload["comment"]["user"]["login"] = login
    payload["sender"]["login"] = login
    payload["installation"] = {
        "id": 4242,
        "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNDI0Mg==",
    }  # App mode
    return payload


def approve_button(*, sha: str = HEAD, number: int = 2, login: str = "maintainer") -> dict[str, Any]:
    """@octokit's check_run requested_action example, pressed on bridge's approve button."""
    payload = github_payload("check_run", "requested_action")
    payload["requested_action"] = {"identifier": approve_action(number).identifier}
    payload["check_run"]["head_sha"] = sha
    payload["sender"]["login"] = login
    return payload


def test_a_pull_request_comment_with_the_command_is_an_approval() -> None:
    command = events.github_approval("issue_comment", pr_comment("/ok-to-build"), command=DEFAULT_COMMAND)
    assert command == ApprovalCommand(
        provider="github",
        via="comment",
        repository="Codertocat/Hello-World",
        number=2,
        by="maintainer",
        installation_id=4242,
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p.update(action="edited"), "only new comments count"),
        (lambda p: p["issue"].pop("pull_request"), "only pull request comments approve builds"),
        (lambda p: p["comment"].update(body="nice"), "is not the approval command /ok-to-build"),
    ],
)
def test_other_comments_approve_nothing(change: Any, reason: str) -> None:
    payload = pr_comment("/ok-to-build")
    change(payload)
    result = events.github_approval("issue_comment", payload, command=DEFAULT_COMMAND)
    assert isinstance(result, Ignored)
    assert reason in result.reason


def test_the_approve_button_is_an_approval_of_its_check_runs_commit() -> None:
    command = events.github_approval("check_run", approve_button(), command=DEFAULT_COMMAND)
    assert isinstance(command, ApprovalCommand)
    assert (command.via, command.number, command.sha, command.by) == ("button", 2, HEAD, "maintainer")
    # Someone else's button (the published example's own) is not ours.
    other = events.github_approval("check_run", github_payload("check_run", "requested_action"), command="/x")
    assert isinstance(other, Ignored)
    # Every other event, and other check_run actions, are left to from_github.
    assert (
        events.github_approval("check_run", github_payload("check_run", "rerequested"), command="/x") is None
    )
    assert events.github_approval("push", github_payload("push"), command="/x") is None


def note(body: str = "/ok-to-build") -> dict[str, Any]:
    payload = gitlab_payload("note_merge_request_fork")
    payload["object_attributes"]["note"] = body
    return payload


def test_a_merge_request_note_with_the_command_is_an_approval_of_the_head_it_shows() -> None:
    command = events.gitlab_approval("Note Hook", note(), command=DEFAULT_COMMAND)
    assert isinstance(command, ApprovalCommand)
    mr = events.from_gitlab("Merge Request Hook", gitlab_payload("merge_request_fork_open"))
    assert isinstance(mr, SourceEvent)
    assert isinstance(command.change, SourceEvent)
    assert (command.number, command.by, command.user_id, command.project_id) == (1, "root", 1, 1)
    assert command.sha == mr.sha == command.change.sha
    # The note's merge request is the same change the Merge Request Hook described.
    assert command.change.is_fork
    assert (command.change.repository, command.change.clone_url) == (
        mr.repository,
        mr.clone_url,
    )
    not_mr = note()
    not_mr["object_attributes"]["noteable_type"] = "Issue"
    assert isinstance(events.gitlab_approval("Note Hook", not_mr, command=DEFAULT_COMMAND), Ignored)
    assert isinstance(events.gitlab_approval("Note Hook", note("thanks"), command=DEFAULT_COMMAND), Ignored)
    assert events.gitlab_approval("Push Hook", gitlab_payload("push"), command=DEFAULT_COMMAND) is None


# -- what a waiting fork shows ------------------------------------------------------------------------


def fork_pr_event() -> SourceEvent:
    payload = github_payload("pull_request", "opened", 1)
    payload["pull_request"]["head"]["repo"]["full_name"] = "contributor/Hello-World"
    payload["pull_request"]["head"]["repo"]["clone_url"] = "https://github.com/contributor/Hello-World.git"
    payload["pull_request"]["head"]["sha"] = HEAD
    event = events.from_github("pull_request", payload)
    assert isinstance(event, SourceEvent)
    assert event.is_fork
    return event


def test_a_waiting_fork_gets_a_check_run_with_the_command_and_the_button(github_api: FakeGitHub) -> None:
    event = fork_pr_event()
    token = github_api.add_token("ghs_checks", kind="actions")
    reporter = CheckRunReporter(
        github_client(github_api.url, Secret(token)), event.repository, name="codebuild/forks"
    )
    status = awaiting_status(event, "forks", "/ok-to-build", button=True, reason="forks = approve")

    run_id = reporter.start(event, status, None)

    run = github_api.check_runs[run_id]
    assert (run["head_sha"], run["status"], run["conclusion"]) == (HEAD, "completed", "action_required")
    assert run["details_url"] == f"https://github.com/Codertocat/Hello-World/pull/{event.pr_number}"
    assert "/ok-to-build" in run["output"]["summary"]
    assert "Approve build" in run["output"]["summary"]
    assert github_api.check_run_actions[run_id] == [
        {
            "label": "Approve build",
            "description": "Build this commit (maintainers)",
            "identifier": f"approve-{event.pr_number}",
        }
    ]


def test_without_an_app_a_waiting_fork_gets_a_pending_commit_status(github_api: FakeGitHub) -> None:
    event = fork_pr_event()
    token = github_api.add_token("ghp_statuses", kind="pat")
    reporter = CommitStatusReporter(
        github_client(github_api.url, Secret(token)), event.repository, context="codebuild/forks"
    )
    reporter.start(event, awaiting_status(event, "forks", "/ok-to-build", button=False, reason="r"), None)
    (posted,) = github_api.statuses
    assert (posted["sha"], posted["state"]) == (HEAD, "pending")
    assert "/ok-to-build" in posted["description"]


def test_a_waiting_fork_merge_request_gets_a_pending_gitlab_status(gitlab_api: FakeGitLab) -> None:
    mr = events.from_gitlab("Merge Request Hook", gitlab_payload("merge_request_fork_open"))
    assert isinstance(mr, SourceEvent)
    reporter = GitLabStatusReporter(
        gitlab_client(gitlab_api.url, Secret(gitlab_api.token)), name="codebuild/forks"
    )
    reporter.report(mr, awaiting_status(mr, "forks", "/ok-to-build", button=False, reason="r"))
    assert gitlab_api.statuses == {(mr.sha, "codebuild/forks"): "pending"}
    fields = gitlab_api.status_fields(mr.sha, "codebuild/forks")
    assert "/ok-to-build" in fields["description"]
    assert fields["target_url"] == "http://example.com/gitlabhq/gitlab-test/-/merge_requests/1"


# -- asking the providers -------------------------------------------------------------------------------


def lookups(
    tmp_path: Path, github_api: FakeGitHub, gitlab_api: FakeGitLab, **options: Any
) -> ProviderReporters:
    config = make_config(tmp_path, github_url=github_api.url, gitlab_url=gitlab_api.url, **options)
    environ = secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token)
    return ProviderReporters(config, SecretStore(None, environ=environ), github_write_interval=None)


@pytest.mark.parametrize("app_key", [True, False])
def test_the_approvers_permission_and_the_pull_request_come_from_githubs_api(
    tmp_path: Path, github_api: FakeGitHub, gitlab_api: FakeGitLab, app_key: bool
) -> None:
    if not app_key:
        github_api.add_token("ghp_token", kind="pat")
    github_api.set_permission("Codertocat/Hello-World", "maintainer", "write")
    github_api.set_pull("Codertocat/Hello-World", 2, head_sha=HEAD, head_repository="contributor/Hello-World")
    environ_token = {"GITHUB_TOKEN_FOR_STATUSES": "ghp_token"}
    reporters = lookups(tmp_path, github_api, gitlab_api, app_key=app_key)
    if not app_key:
        reporters = ProviderReporters(
            make_config(tmp_path, github_url=github_api.url, gitlab_url=gitlab_api.url, app_key=False),
            SecretStore(None, environ={**secret_env(), **environ_token}),
            github_write_interval=None,
        )
    command = events.github_approval("issue_comment", pr_comment("/ok-to-build"), command=DEFAULT_COMMAND)
    assert isinstance(command, ApprovalCommand)

    assert reporters.github_permission(command) == "write"
    stranger = ApprovalCommand(**{**command.__dict__, "by": "stranger"})
    assert reporters.github_permission(stranger) == "read"  # a public repository: anyone reads
    pull = reporters.github_pull_request(command)
    event = events.github_pull_request_from_api(pull, sender="maintainer", installation_id=4242)

    assert isinstance(event, SourceEvent)
    assert (event.sha, event.is_fork, event.pr_number, event.base_branch) == (HEAD, True, 2, "master")
    assert event.clone_url == "https://github.com/contributor/Hello-World.git"
    assert event.repository == "Codertocat/Hello-World"
    assert event.server_url == "https://github.com"
    paths = [path for _, path, _ in github_api.calls()]
    assert "/repos/Codertocat/Hello-World/collaborators/maintainer/permission" in paths
    assert "/repos/Codertocat/Hello-World/pulls/2" in paths


def test_the_approvers_access_level_comes_from_gitlabs_members_api(
    tmp_path: Path, github_api: FakeGitHub, gitlab_api: FakeGitLab
) -> None:
    reporters = lookups(tmp_path, github_api, gitlab_api)
    command = events.gitlab_approval("Note Hook", note(), command=DEFAULT_COMMAND)
    assert isinstance(command, ApprovalCommand)
    assert reporters.gitlab_access_level(command) is None  # not a member
    gitlab_api.members[("1", 1)] = 30
    assert reporters.gitlab_access_level(command) == 30
    member_requests = [r for r in gitlab_api.requests if "/members/all/" in r.raw_path]
    assert [(r.raw_path, r.status_code, r.token_ok) for r in member_requests] == [
        ("/api/v4/projects/1/members/all/1", 404, True),
        ("/api/v4/projects/1/members/all/1", 200, True),
    ]


def test_the_note_payload_file_is_valid_json() -> None:
    assert json.loads(json.dumps(note()))["object_kind"] == "note"


def test_a_forks_approved_head_is_built_under_its_approval_only() -> None:
    event = fork_pr_event()
    approval_id = approval_delivery_id(event)
    assert approval_id == f"approval/github/codertocat/hello-world/{event.pr_number}/{HEAD}"
    assert built_by_approval(event, "approve", "gh-delivery-1") == approval_id
    assert built_by_approval(event, "approve", approval_id) is None
    assert built_by_approval(event, "allow", "gh-delivery-1") is None
    assert built_by_approval(replace(event, kind="rerun"), "approve", "gh-delivery-2") is None
    assert built_by_approval(replace(event, is_fork=False), "approve", "gh-delivery-1") is None
    # The worker sees the store's key, namespaced per provider.
    assert built_by_approval(event, "approve", f"github:{approval_id}") is None
