"""bridge.events against real payloads.

GitHub: every published example (@octokit/webhooks-examples) of the events we read, plus cases made
by editing a real example (fork PR, deleted fork, GitHub Enterprise URLs, annotated tags).
GitLab: tests/payloads/gitlab/ holds the example bodies of GitLab's "Webhook events" documentation
(push.json, tag_push.json, merge_request_open.json, verbatim) and variants edited from them the way
GitLab builds them (lib/gitlab/data_builder/push.rb: a deleted branch has after = zeros and
checkout_sha = null; an MR update carries `oldrev` only when new code was pushed). Each is checked
against the pydantic-gitlab-webhooks models before use. One correction to the documentation's merge
request examples: their `project` (gitlabhq/gitlab-test) and `target` (awesome_space/awesome_project)
disagree, which GitLab never sends (a project hook's project is the target), and a same-project merge
request whose source is another project is not built (routing.unbound): the target (and the source of
same-project requests) is gitlabhq/gitlab-test.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_gitlab_webhooks import validate_event_header_and_body_dict

from bridge.errors import BadRequestError, InputError
from bridge.events import GITHUB_BUILD_ACTIONS, from_actions, from_github, from_gitlab, gitlab_approval
from bridge.model import Ignored, SourceEvent
from tests.fixtures import GITLAB_PAYLOADS, github_example, github_examples

SHA_RE = re.compile(r"[0-9a-f]{40}")
ZERO_SHA = "0" * 40
OTHER_SHA = "1234567890abcdef1234567890abcdef12345678"

Payload = dict[str, Any]


def _set(payload: Payload, path: str, value: Any) -> Payload:
    """Set (or, with value=DELETE, remove) a dotted path in a deep copy of a payload."""
    edited = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node = edited
    for key in parents:
        node = node[key]
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return edited


DELETE: Any = object()


def _cases(event: str) -> list[Any]:
    return [
        pytest.param(example, id=f"{event}-{index}-{example.get('action', '')}")
        for index, example in enumerate(github_examples(event))
    ]


def _built(result: SourceEvent | Ignored) -> SourceEvent:
    assert isinstance(result, SourceEvent), result
    assert SHA_RE.fullmatch(result.sha)
    return result


def _ignored(result: SourceEvent | Ignored) -> str:
    assert isinstance(result, Ignored), result
    assert result.reason
    return result.reason


# ------------------------------------------------------------------------------- GitHub webhooks


@pytest.mark.parametrize("payload", _cases("push"))
def test_github_push_examples(payload: Payload) -> None:
    result = from_github("push", payload)
    ref: str = payload["ref"]
    name = ref.split("/", 2)[2]
    if payload["deleted"]:
        assert name in _ignored(result)
        assert "deleted" in _ignored(result)
        return
    event = _built(result)
    assert event.sha == payload["after"]
    assert event.ref == ref
    assert event.clone_url == payload["repository"]["clone_url"]
    assert event.repository == payload["repository"]["full_name"]
    assert event.server_url == "https://github.com"
    assert event.api_url == "https://api.github.com"
    assert event.sender == payload["sender"]["login"]
    assert (event.kind, event.branch, event.tag) == (
        ("tag", None, name) if ref.startswith("refs/tags/") else ("push", name, None)
    )


def test_github_push_examples_cover_branches_tags_and_deletions() -> None:
    results = [from_github("push", payload) for payload in github_examples("push")]
    kinds = {result.kind if isinstance(result, SourceEvent) else "ignored" for result in results}
    assert kinds == {"push", "tag", "ignored"}


@pytest.mark.parametrize("payload", _cases("pull_request"))
def test_github_pull_request_examples(payload: Payload) -> None:
    result = from_github("pull_request", payload)
    if payload["action"] not in GITHUB_BUILD_ACTIONS:
        assert payload["action"] in _ignored(result)
        return
    pr = payload["pull_request"]
    event = _built(result)
    assert event.kind == "pull_request"
    assert event.action == payload["action"]
    assert event.sha == pr["head"]["sha"]
    assert event.sha != pr["merge_commit_sha"]
    assert event.clone_url == pr["head"]["repo"]["clone_url"]
    assert event.repository == pr["base"]["repo"]["full_name"]
    assert event.base_repository == pr["base"]["repo"]["full_name"]
    assert event.head_repository == pr["head"]["repo"]["full_name"]
    assert event.branch == pr["head"]["ref"]
    assert event.base_branch == pr["base"]["ref"]
    assert event.pr_number == pr["number"] == payload["number"]
    assert event.ref == f"refs/pull/{pr['number']}/head"
    assert event.is_draft is pr["draft"]
    assert event.is_fork is False
    assert event.installation_id == payload.get("installation", {}).get("id")
    assert event.sender == payload["sender"]["login"]


def test_github_pull_request_examples_build_every_build_action() -> None:
    built = {
        payload["action"]
        for payload in github_examples("pull_request")
        if isinstance(from_github("pull_request", payload), SourceEvent)
    }
    assert built == GITHUB_BUILD_ACTIONS


def _fork_pull_request() -> Payload:
    """A real `opened` example whose head now lives in a fork."""
    payload = github_example("pull_request", "opened")
    head_repo = payload["pull_request"]["head"]["repo"]
    head_repo["id"] = 999_999
    head_repo["full_name"] = "forker/Hello-World"
    head_repo["clone_url"] = "https://github.com/forker/Hello-World.git"
    head_repo["owner"]["login"] = "forker"
    head_repo["fork"] = True
    payload["pull_request"]["head"]["label"] = "forker:changes"
    return payload


def test_github_fork_pull_request_builds_the_fork_head() -> None:
    payload = _fork_pull_request()
    event = _built(from_github("pull_request", payload))
    assert event.is_fork is True
    assert event.clone_url == "https://github.com/forker/Hello-World.git"
    assert event.head_repository == "forker/Hello-World"
    assert event.repository == payload["pull_request"]["base"]["repo"]["full_name"]
    assert event.sha == payload["pull_request"]["head"]["sha"]


def test_github_pull_request_whose_fork_was_deleted_is_ignored() -> None:
    payload = _set(github_example("pull_request", "synchronize"), "pull_request.head.repo", None)
    assert "deleted" in _ignored(from_github("pull_request", payload))


def test_github_draft_pull_request_is_marked_draft() -> None:
    payload = _set(github_example("pull_request", "opened"), "pull_request.draft", True)
    assert _built(from_github("pull_request", payload)).is_draft is True


def _enterprise(payload: Payload) -> Payload:
    repo = payload["repository"]
    for key in ("html_url", "url", "clone_url"):
        repo[key] = repo[key].replace(
            "https://api.github.com/repos/", "https://ghe.example.com/api/v3/repos/"
        )
        repo[key] = repo[key].replace("https://github.com/", "https://ghe.example.com/")
    return payload


def test_github_enterprise_urls_come_from_the_payload() -> None:
    payload = _enterprise(github_example("pull_request", "opened"))
    event = _built(from_github("pull_request", payload))
    assert event.server_url == "https://ghe.example.com"
    assert event.api_url == "https://ghe.example.com/api/v3"


def test_github_enterprise_push_derives_the_api_url() -> None:
    # Push deliveries carry the html URL in repository.url, so the API URL is derived.
    payload = _enterprise(github_example("push", index=4))
    event = _built(from_github("push", payload))
    assert event.server_url == "https://ghe.example.com"
    assert event.api_url == "https://ghe.example.com/api/v3"
    assert event.clone_url == "https://ghe.example.com/Codertocat/Hello-World.git"


def test_github_keyword_urls_are_fallbacks() -> None:
    payload = _set(github_example("push", index=4), "repository.html_url", DELETE)
    event = _built(
        from_github(
            "push", payload, server_url="https://git.corp.example", api_url="https://git.corp.example/api/v3/"
        )
    )
    assert event.server_url == "https://git.corp.example"
    assert event.api_url == "https://git.corp.example/api/v3"


def test_github_annotated_tag_builds_the_tagged_commit() -> None:
    payload = github_example("push", index=0)  # refs/tags/simple-tag, created
    payload["after"] = OTHER_SHA  # the tag object
    event = _built(from_github("push", payload))
    assert event.kind == "tag"
    assert event.sha == payload["head_commit"]["id"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param({"after": ZERO_SHA}, "branch 'master' deleted", id="after-zeros"),
        pytest.param({"deleted": True}, "branch 'master' deleted", id="deleted-flag"),
        pytest.param({"ref": "refs/notes/commits"}, "neither a branch nor a tag", id="notes-ref"),
    ],
)
def test_github_push_edge_cases_are_ignored(edit: dict[str, Any], expected: str) -> None:
    payload = github_example("push", index=4)
    payload.update(edit)
    assert expected in _ignored(from_github("push", payload))


@pytest.mark.parametrize("payload", _cases("check_run"))
def test_github_check_run_examples(payload: Payload) -> None:
    result = from_github("check_run", payload)
    if payload["action"] != "rerequested":
        assert payload["action"] in _ignored(result)
        return
    run = payload["check_run"]
    event = _built(result)
    assert event.kind == "rerun"
    assert event.sha == run["head_sha"]
    assert event.check_run_id == run["id"]
    assert event.branch == run["check_suite"]["head_branch"]
    assert event.ref == f"refs/heads/{run['check_suite']['head_branch']}"
    assert event.clone_url == payload["repository"]["clone_url"]
    assert event.installation_id == payload["installation"]["id"]
    assert event.api_url == "https://api.github.com"


@pytest.mark.parametrize("payload", _cases("check_suite"))
def test_github_check_suite_examples(payload: Payload) -> None:
    result = from_github("check_suite", payload)
    if payload["action"] != "rerequested":
        assert payload["action"] in _ignored(result)
        return
    suite = payload["check_suite"]
    event = _built(result)
    assert event.kind == "rerun"
    assert event.sha == suite["head_sha"]
    assert event.check_run_id is None
    assert event.branch == suite["head_branch"]
    assert event.pr_number == suite["pull_requests"][0]["number"]
    assert event.ref == f"refs/pull/{event.pr_number}/head"


def test_github_rerun_examples_exist() -> None:
    reruns = [
        from_github(event, payload)
        for event in ("check_run", "check_suite")
        for payload in github_examples(event, "rerequested")
    ]
    assert reruns
    assert all(isinstance(result, SourceEvent) and result.kind == "rerun" for result in reruns)


@pytest.mark.parametrize("payload", _cases("release"))
def test_github_release_examples_name_a_branch_and_are_ignored(payload: Payload) -> None:
    reason = _ignored(from_github("release", payload))
    if payload["action"] == "published":
        assert payload["release"]["tag_name"] in reason
        assert "tag push" in reason
    else:
        assert payload["action"] in reason


def test_github_release_on_a_commit_builds_it() -> None:
    payload = _set(github_example("release", "published"), "release.target_commitish", OTHER_SHA)
    event = _built(from_github("release", payload))
    assert (event.kind, event.tag, event.sha) == ("release", "0.0.1", OTHER_SHA)
    assert event.ref == "refs/tags/0.0.1"


UNRELATED_GITHUB_EVENTS = [
    "ping",
    "issues",
    "installation",
    "create",
    "delete",
    "workflow_run",
    "merge_group",
]


@pytest.mark.parametrize(
    ("event_name", "payload"),
    [
        pytest.param(event, payload, id=f"{event}-{index}")
        for event in UNRELATED_GITHUB_EVENTS
        for index, payload in enumerate(github_examples(event))
    ],
)
def test_github_other_events_are_ignored(event_name: str, payload: Payload) -> None:
    assert event_name in _ignored(from_github(event_name, payload))


GITHUB_BAD: list[Any] = [
    pytest.param("push", "ref", DELETE, "'ref'", id="push-no-ref"),
    pytest.param("push", "after", 12, "'after'", id="push-after-number"),
    pytest.param("push", "after", "main", "'after'", id="push-after-not-a-sha"),
    pytest.param("push", "repository", [], "'repository'", id="push-repository-list"),
    pytest.param("push", "repository.clone_url", None, "'repository.clone_url'", id="push-no-clone-url"),
    pytest.param("push", "head_commit", {"id": None}, "'head_commit.id'", id="tag-head-commit-null-id"),
    pytest.param("pull_request", "action", DELETE, "'action'", id="pr-no-action"),
    pytest.param("pull_request", "pull_request", [], "'pull_request'", id="pr-list"),
    pytest.param("pull_request", "pull_request.number", True, "'pull_request.number'", id="pr-number-bool"),
    pytest.param("pull_request", "pull_request.head.sha", DELETE, "'pull_request.head.sha'", id="pr-no-sha"),
    pytest.param("pull_request", "pull_request.head.sha", "HEAD", "'pull_request.head.sha'", id="pr-sha-ref"),
    pytest.param("pull_request", "pull_request.base.repo", None, "'pull_request.base.repo'", id="pr-no-base"),
    pytest.param("pull_request", "pull_request.draft", "yes", "'pull_request.draft'", id="pr-draft-string"),
    pytest.param("pull_request", "installation.id", "1", "'installation.id'", id="pr-installation-string"),
    pytest.param("check_run", "check_run.head_sha", DELETE, "'check_run.head_sha'", id="check-run-no-sha"),
    pytest.param("check_run", "check_run.id", 4.5, "'check_run.id'", id="check-run-id-float"),
    pytest.param(
        "check_suite",
        "check_suite.pull_requests",
        ["x"],
        "'check_suite.pull_requests[0]'",
        id="check-suite-pull-requests-strings",
    ),
    pytest.param("release", "release.tag_name", DELETE, "'release.tag_name'", id="release-no-tag"),
]


def _github_base(event_name: str) -> Payload:
    action = {"pull_request": "opened", "check_run": "rerequested", "check_suite": "rerequested"}
    if event_name == "push":
        return github_example("push", index=0)
    if event_name == "release":
        return _set(github_example("release", "published"), "release.target_commitish", OTHER_SHA)
    # the first example of the action that carries an installation (App deliveries do)
    examples = github_examples(event_name, action[event_name])
    return copy.deepcopy(next(example for example in examples if "installation" in example))


@pytest.mark.parametrize(("event_name", "path", "value", "key"), GITHUB_BAD)
def test_github_malformed_payloads_are_bad_requests(event_name: str, path: str, value: Any, key: str) -> None:
    base = _github_base(event_name)
    assert isinstance(from_github(event_name, base), SourceEvent)  # the unedited payload builds
    with pytest.raises(BadRequestError) as caught:
        from_github(event_name, _set(base, path, value))
    assert key in caught.value.message
    assert event_name in caught.value.message
    assert caught.value.http_status == 400
    assert "application/json" in caught.value.hint


@pytest.mark.parametrize("body", [[], "push", 3, None])
def test_github_non_object_body_is_a_bad_request(body: Any) -> None:
    with pytest.raises(BadRequestError, match="must be a JSON object"):
        from_github("push", body)


# -------------------------------------------------------------------------------- GitHub Actions


def _actions_env(payload: Payload, event_name: str, sha: str, ref: str) -> dict[str, str]:
    return {
        "GITHUB_EVENT_NAME": event_name,
        "GITHUB_SHA": sha,
        "GITHUB_REF": ref,
        "GITHUB_REPOSITORY": payload.get("repository", {}).get("full_name", "octo-org/octo-repo"),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_API_URL": "https://api.github.com",
        "GITHUB_ACTOR": "octocat",
    }


def _pr_payload() -> Payload:
    return github_example("pull_request", "opened")


@dataclass(frozen=True)
class ActionsCase:
    """One workflow run: the event, its GITHUB_SHA/GITHUB_REF, and what must be built."""

    event_name: str
    payload: Payload
    github_sha: str
    github_ref: str
    kind: str
    sha: str
    branch: str | None = None
    tag: str | None = None


_PUSH_BRANCH = github_example("push", index=4)
_PUSH_TAG = github_example("push", index=0)
_PR = github_example("pull_request", "opened")
_MERGE_GROUP = github_example("merge_group")["merge_group"]

ACTIONS_CASES: list[Any] = [
    pytest.param(
        ActionsCase("push", _PUSH_BRANCH, _PUSH_BRANCH["after"], "refs/heads/master", "push",
                    _PUSH_BRANCH["after"], branch="master"),
        id="push-branch",
    ),
    pytest.param(
        ActionsCase("push", _PUSH_TAG, _PUSH_TAG["after"], "refs/tags/simple-tag", "tag",
                    _PUSH_TAG["after"], tag="simple-tag"),
        id="push-tag",
    ),
    pytest.param(
        # GITHUB_SHA is the merge commit of refs/pull/2/merge
        ActionsCase("pull_request", _PR, _PR["pull_request"]["merge_commit_sha"] or OTHER_SHA,
                    "refs/pull/2/merge", "pull_request", _PR["pull_request"]["head"]["sha"],
                    branch="changes"),
        id="pull_request-not-the-merge-commit",
    ),
    pytest.param(
        # GITHUB_SHA is the base branch tip
        ActionsCase("pull_request_target", _PR, _PR["pull_request"]["base"]["sha"], "refs/heads/master",
                    "pull_request", _PR["pull_request"]["head"]["sha"], branch="changes"),
        id="pull_request_target-not-the-base",
    ),
    pytest.param(
        ActionsCase("workflow_dispatch", github_example("workflow_dispatch"), OTHER_SHA, "refs/heads/main",
                    "manual", OTHER_SHA, branch="main"),
        id="workflow_dispatch",
    ),
    pytest.param(
        ActionsCase("release", github_example("release", "published"), OTHER_SHA, "refs/tags/0.0.1",
                    "release", OTHER_SHA, tag="0.0.1"),
        id="release",
    ),
    pytest.param(
        ActionsCase("schedule", {"schedule": "*/15 * * * *"}, OTHER_SHA, "refs/heads/main", "manual",
                    OTHER_SHA, branch="main"),
        id="schedule",
    ),
    pytest.param(
        ActionsCase("repository_dispatch", github_example("repository_dispatch"), OTHER_SHA,
                    "refs/heads/main", "manual", OTHER_SHA, branch="main"),
        id="repository_dispatch",
    ),
    pytest.param(
        ActionsCase("merge_group", github_example("merge_group"), _MERGE_GROUP["head_sha"],
                    _MERGE_GROUP["head_ref"], "manual", _MERGE_GROUP["head_sha"],
                    branch=_MERGE_GROUP["head_ref"].removeprefix("refs/heads/")),
        id="merge_group",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", ACTIONS_CASES)
def test_from_actions(case: ActionsCase) -> None:
    env = _actions_env(case.payload, case.event_name, case.github_sha, case.github_ref)
    event = from_actions(env, case.payload)
    assert (event.kind, event.sha, event.branch, event.tag) == (case.kind, case.sha, case.branch, case.tag)
    assert event.provider == "github"
    assert event.event_name == case.event_name
    assert event.repository == env["GITHUB_REPOSITORY"]
    assert event.server_url == "https://github.com"
    assert event.api_url == "https://api.github.com"
    assert event.sender == "octocat"
    if case.kind == "pull_request":
        pr = case.payload["pull_request"]
        assert event.clone_url == pr["head"]["repo"]["clone_url"]
        assert event.ref == f"refs/pull/{pr['number']}/head"
        assert event.sha != case.github_sha
    else:
        assert event.clone_url == f"https://github.com/{env['GITHUB_REPOSITORY']}.git"
        assert event.ref == case.github_ref


def test_from_actions_fork_pull_request_builds_the_fork() -> None:
    payload = _fork_pull_request()
    event = from_actions(
        _actions_env(payload, "pull_request_target", OTHER_SHA, "refs/heads/master"), payload
    )
    assert event.is_fork is True
    assert event.clone_url == "https://github.com/forker/Hello-World.git"
    assert event.sha == payload["pull_request"]["head"]["sha"]


def test_from_actions_pull_request_with_deleted_fork_clones_the_base() -> None:
    payload = _set(_pr_payload(), "pull_request.head.repo", None)
    event = from_actions(_actions_env(payload, "pull_request", OTHER_SHA, "refs/pull/2/merge"), payload)
    assert event.clone_url == "https://github.com/Codertocat/Hello-World.git"
    assert event.sha == payload["pull_request"]["head"]["sha"]
    assert event.ref == "refs/pull/2/head"
    assert event.is_fork is True  # the head commit is still the deleted fork's code
    assert event.head_repository is None


@pytest.mark.parametrize(
    ("head_repository", "fork"),
    [("forker/Hello-World", True), ("Codertocat/Hello-World", False), ("codertocat/hello-world", False)],
)
def test_from_actions_workflow_run_knows_whether_the_triggering_run_was_a_fork(
    head_repository: str, fork: bool
) -> None:
    payload = github_example("workflow_run", "completed")
    payload["repository"] = dict(payload["repository"], full_name="Codertocat/Hello-World")
    payload["workflow_run"]["head_repository"] = dict(
        payload["workflow_run"]["head_repository"], full_name=head_repository
    )
    payload["workflow_run"]["pull_requests"] = [{"number": 7, "id": 1, "url": "x", "head": {}, "base": {}}]
    event = from_actions(_actions_env(payload, "workflow_run", OTHER_SHA, "refs/heads/main"), payload)
    assert event.is_fork is fork
    assert event.head_repository == head_repository
    assert event.pr_number == 7
    assert event.sha == OTHER_SHA  # what is built stays the workflow's own commit


def test_from_actions_enterprise_server() -> None:
    payload = github_example("workflow_dispatch")
    env = _actions_env(payload, "workflow_dispatch", OTHER_SHA, "refs/heads/main")
    env["GITHUB_SERVER_URL"] = "https://ghe.example.com"
    del env["GITHUB_API_URL"]
    event = from_actions(env, payload)
    assert event.clone_url == "https://ghe.example.com/octo-org/octo-repo.git"
    assert event.api_url == "https://ghe.example.com/api/v3"


@pytest.mark.parametrize("name", ["GITHUB_SHA", "GITHUB_REPOSITORY", "GITHUB_EVENT_NAME"])
def test_from_actions_missing_variable_names_it(name: str) -> None:
    payload = github_example("workflow_dispatch")
    env = _actions_env(payload, "workflow_dispatch", OTHER_SHA, "refs/heads/main")
    del env[name]
    with pytest.raises(InputError) as caught:
        from_actions(env, payload)
    assert caught.value.name == name
    assert name in str(caught.value)
    assert "GitHub Actions job" in caught.value.hint


def test_from_actions_rejects_a_sha_that_is_not_a_commit() -> None:
    payload = github_example("workflow_dispatch")
    with pytest.raises(InputError, match="GITHUB_SHA"):
        from_actions(_actions_env(payload, "workflow_dispatch", "main", "refs/heads/main"), payload)


# ---------------------------------------------------------------------------------------- GitLab

GITLAB_HEADERS = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "note": "Note Hook",
}


@cache
def _gitlab_file(name: str) -> str:
    return (GITLAB_PAYLOADS / f"{name}.json").read_text()


def gitlab_payload(name: str) -> Payload:
    """A fresh copy of one saved GitLab body, so a test may edit it."""
    payload: Payload = json.loads(_gitlab_file(name))
    return payload


def _gitlab_header(payload: Payload) -> str:
    return GITLAB_HEADERS[payload["object_kind"]]


GITLAB_FILES = sorted(path.stem for path in GITLAB_PAYLOADS.glob("*.json"))


def test_gitlab_payload_files_are_all_there() -> None:
    assert set(GITLAB_FILES) >= {
        "push",
        "tag_push",
        "push_branch_deleted",
        "merge_request_open",
        "merge_request_update_with_oldrev",
        "merge_request_update_no_oldrev",
        "merge_request_update_title",
        "merge_request_close",
        "merge_request_fork_open",
    }


@pytest.mark.parametrize("name", GITLAB_FILES)
def test_gitlab_payloads_match_the_published_models(name: str) -> None:
    payload = gitlab_payload(name)
    if name == "push_branch_deleted":
        # GitLab sends checkout_sha: null for a deletion (data_builder/push.rb), which the
        # pydantic model types as a plain string: that must be the only complaint.
        with pytest.raises(ValidationError) as caught:
            validate_event_header_and_body_dict(_gitlab_header(payload), payload)
        assert {error["loc"][-1] for error in caught.value.errors()} == {"checkout_sha"}
        payload["checkout_sha"] = payload["before"]
    event = validate_event_header_and_body_dict(_gitlab_header(payload), payload)
    assert event.object_kind == payload["object_kind"]


@pytest.mark.parametrize("name", ["push", "tag_push"])
def test_gitlab_pushes(name: str) -> None:
    payload = gitlab_payload(name)
    event = _built(from_gitlab(_gitlab_header(payload), payload))
    project = payload["project"]
    ref_name = payload["ref"].split("/", 2)[2]
    assert event.provider == "gitlab"
    assert event.event_name == _gitlab_header(payload)
    assert event.kind == ("tag" if name == "tag_push" else "push")
    assert (event.branch, event.tag) == ((None, ref_name) if name == "tag_push" else (ref_name, None))
    assert event.sha == payload["checkout_sha"]
    assert event.ref == payload["ref"]
    assert event.repository == project["path_with_namespace"]
    assert event.clone_url == project["git_http_url"]
    assert event.project_id == project["id"] == payload["project_id"]
    assert event.server_url == "http://example.com"
    assert event.api_url == "http://example.com/api/v4"
    assert event.sender == payload.get("user_username")


def test_gitlab_annotated_tag_builds_the_tagged_commit() -> None:
    payload = gitlab_payload("tag_push")
    payload["after"] = OTHER_SHA  # the tag object; checkout_sha is the commit it points at
    assert _built(from_gitlab("Tag Push Hook", payload)).sha == payload["checkout_sha"]


def test_gitlab_branch_deletion_is_ignored() -> None:
    payload = gitlab_payload("push_branch_deleted")
    assert "branch 'feature' deleted" in _ignored(from_gitlab("Push Hook", payload))


def test_gitlab_tag_deletion_is_ignored() -> None:
    payload = gitlab_payload("tag_push")
    payload.update(before=payload["after"], after=ZERO_SHA, checkout_sha=None)
    assert "tag 'v1.0.0' deleted" in _ignored(from_gitlab("Tag Push Hook", payload))


@pytest.mark.parametrize(
    ("name", "is_fork"),
    [
        ("merge_request_open", False),
        ("merge_request_update_with_oldrev", False),
        ("merge_request_fork_open", True),
    ],
)
def test_gitlab_merge_requests_that_build(name: str, is_fork: bool) -> None:
    payload = gitlab_payload(name)
    attrs = payload["object_attributes"]
    event = _built(from_gitlab("Merge Request Hook", payload))
    assert event.kind == "merge_request"
    assert event.action == attrs["action"]
    assert event.sha == attrs["last_commit"]["id"]
    assert event.clone_url == attrs["source"]["git_http_url"]
    assert event.is_fork is is_fork
    assert event.project_id == attrs["source_project_id"] == event.source_project_id
    assert event.repository == payload["project"]["path_with_namespace"]
    assert event.base_repository == attrs["target"]["path_with_namespace"]
    assert event.head_repository == attrs["source"]["path_with_namespace"]
    assert event.branch == attrs["source_branch"]
    assert event.base_branch == attrs["target_branch"]
    assert event.pr_number == attrs["iid"]
    assert event.ref == f"refs/merge-requests/{attrs['iid']}/head"
    assert event.is_draft is False
    assert event.server_url == "http://example.com"
    assert event.api_url == "http://example.com/api/v4"
    assert event.sender == payload["user"]["username"]


def test_gitlab_fork_merge_request_reports_on_the_fork() -> None:
    event = _built(from_gitlab("Merge Request Hook", gitlab_payload("merge_request_fork_open")))
    assert event.project_id == 20
    assert event.head_repository == "contributor/awesome_project"
    assert event.clone_url == "http://example.com/contributor/awesome_project.git"


@pytest.mark.parametrize(
    ("name", "action", "reason"),
    [
        ("merge_request_update_title", None, "without new commits"),
        ("merge_request_close", None, "'close'"),
        ("merge_request_open", "merge", "'merge'"),
        ("merge_request_open", "approved", "'approved'"),
        ("merge_request_open", "unapproved", "'unapproved'"),
        ("merge_request_open", "approval", "'approval'"),
        ("merge_request_open", "unapproval", "'unapproval'"),
    ],
)
def test_gitlab_merge_requests_that_do_not_build(name: str, action: str | None, reason: str) -> None:
    payload = gitlab_payload(name)
    if action is not None:
        payload["object_attributes"]["action"] = action
        validate_event_header_and_body_dict("Merge Request Hook", payload)  # still a real-shaped body
    assert reason in _ignored(from_gitlab("Merge Request Hook", payload))


@pytest.mark.parametrize("key", ["draft", "work_in_progress"])
def test_gitlab_draft_marked_ready_builds_as_github_ready_for_review_does(key: str) -> None:
    """GitLab sends an update with no new commits (no oldrev) and `changes.draft` true → false."""
    payload = gitlab_payload("merge_request_update_no_oldrev")
    assert "oldrev" not in payload["object_attributes"]
    payload["changes"] = {key: {"previous": True, "current": False}}
    event = _built(from_gitlab("Merge Request Hook", payload))
    assert (event.kind, event.action, event.is_draft) == ("merge_request", "update", False)
    assert "ready_for_review" in GITHUB_BUILD_ACTIONS


@pytest.mark.parametrize(
    "change", [{"previous": False, "current": True}, {"previous": True, "current": True}]
)
def test_gitlab_draft_changes_other_than_marked_ready_do_not_build(change: dict[str, bool]) -> None:
    payload = gitlab_payload("merge_request_update_no_oldrev")
    payload["changes"] = {"draft": change}
    assert "without new commits" in _ignored(from_gitlab("Merge Request Hook", payload))


@pytest.mark.parametrize(("short", "header"), sorted(GITLAB_HEADERS.items()))
def test_gitlab_short_event_names_mean_the_header_names(short: str, header: str) -> None:
    """`push`, `tag_push`, `merge_request` (the body's object_kind) are accepted as the header is."""
    for name in GITLAB_FILES:
        payload = gitlab_payload(name)
        if payload["object_kind"] == short:
            assert from_gitlab(short, payload) == from_gitlab(header, payload)


def test_gitlab_note_is_the_note_hook() -> None:
    def outcome(name: str) -> object:
        try:
            return from_gitlab(name, {"object_kind": "note"})
        except BadRequestError as exc:
            return exc.message

    assert "Note Hook" in str(outcome("note"))
    assert outcome("note") == outcome("Note Hook")


def test_gitlab_note_short_name_is_read_as_an_approval_command_too() -> None:
    payload = gitlab_payload("note_merge_request_fork")
    payload["object_attributes"]["note"] = "/ok-to-build"
    by_header = gitlab_approval("Note Hook", payload, command="/ok-to-build")
    assert by_header is not None
    assert not isinstance(by_header, Ignored)
    assert gitlab_approval("note", payload, command="/ok-to-build") == by_header


def test_gitlab_reopen_builds() -> None:
    payload = gitlab_payload("merge_request_close")
    payload["object_attributes"].update(action="reopen", state="opened")
    assert _built(from_gitlab("Merge Request Hook", payload)).action == "reopen"


@pytest.mark.parametrize("field", ["draft", "work_in_progress"])
def test_gitlab_draft_merge_request_is_marked_draft(field: str) -> None:
    payload = gitlab_payload("merge_request_open")
    payload["object_attributes"][field] = True
    assert _built(from_gitlab("Merge Request Hook", payload)).is_draft is True


def test_gitlab_relative_url_root_is_kept() -> None:
    payload = gitlab_payload("push")
    payload["project"]["web_url"] = "https://example.com/gitlab/mike/diaspora"
    event = _built(from_gitlab("Push Hook", payload))
    assert event.server_url == "https://example.com/gitlab"
    assert event.api_url == "https://example.com/gitlab/api/v4"


def test_gitlab_merge_request_with_deleted_source_is_ignored() -> None:
    payload = _set(gitlab_payload("merge_request_open"), "object_attributes.source", None)
    assert "source project" in _ignored(from_gitlab("Merge Request Hook", payload))


@pytest.mark.parametrize(
    "header", ["Pipeline Hook", "Job Hook", "Note Hook", "System Hook", "Issue Hook", "Release Hook", ""]
)
def test_gitlab_other_events_are_ignored(header: str) -> None:
    assert repr(header) in _ignored(from_gitlab(header, gitlab_payload("push")))


GITLAB_BAD: list[Any] = [
    pytest.param("push", "ref", DELETE, "'ref'", id="push-no-ref"),
    pytest.param("push", "after", None, "'after'", id="push-after-null"),
    pytest.param("push", "checkout_sha", "master", "'checkout_sha'", id="push-checkout-not-sha"),
    pytest.param("push", "project", "mike/diaspora", "'project'", id="push-project-string"),
    pytest.param("push", "project.id", "15", "'project.id'", id="push-project-id-string"),
    pytest.param(
        "push", "project.web_url", "example.com/x", "'project.web_url'", id="push-web-url-no-scheme"
    ),
    pytest.param("tag_push", "project.git_http_url", DELETE, "'project.git_http_url'", id="tag-no-clone"),
    pytest.param("merge_request_open", "object_attributes", None, "'object_attributes'", id="mr-no-attrs"),
    pytest.param(
        "merge_request_open", "object_attributes.action", 1, "'object_attributes.action'", id="mr-action-int"
    ),
    pytest.param(
        "merge_request_open",
        "object_attributes.last_commit",
        DELETE,
        "'object_attributes.last_commit'",
        id="mr-no-last-commit",
    ),
    pytest.param(
        "merge_request_open",
        "object_attributes.source_project_id",
        "14",
        "'object_attributes.source_project_id'",
        id="mr-source-id-string",
    ),
    pytest.param(
        "merge_request_open",
        "object_attributes.draft",
        "no",
        "'object_attributes.draft'",
        id="mr-draft-string",
    ),
    pytest.param(
        "merge_request_update_with_oldrev",
        "object_attributes.oldrev",
        ["x"],
        "'object_attributes.oldrev'",
        id="mr-oldrev-list",
    ),
]


@pytest.mark.parametrize(("name", "path", "value", "key"), GITLAB_BAD)
def test_gitlab_malformed_payloads_are_bad_requests(name: str, path: str, value: Any, key: str) -> None:
    base = gitlab_payload(name)
    header = _gitlab_header(base)
    assert isinstance(from_gitlab(header, base), SourceEvent)  # the unedited payload builds
    with pytest.raises(BadRequestError) as caught:
        from_gitlab(header, _set(base, path, value))
    assert key in caught.value.message
    assert header in caught.value.message
    assert caught.value.http_status == 400
    assert caught.value.hint


# ------------------------------------------------------------------------------------ Hypothesis

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=12,
)


def _nodes(value: Any, prefix: str = "", depth: int = 0) -> Iterator[str]:
    """Dotted paths of every object member down to depth 3 (where the fields we read live)."""
    if not isinstance(value, dict) or depth > 3:
        return
    for key, child in value.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        yield from _nodes(child, path, depth + 1)


def _outcome(call: Callable[[], SourceEvent | Ignored]) -> SourceEvent | Ignored | BadRequestError:
    """The result, or the BadRequestError; any other exception propagates and fails the test."""
    try:
        return call()
    except BadRequestError as error:
        return error


def _check(call: Callable[[], SourceEvent | Ignored]) -> None:
    outcome = _outcome(call)
    if isinstance(outcome, BadRequestError):
        assert outcome.http_status == 400
        assert outcome.message
        assert outcome.hint
    elif isinstance(outcome, SourceEvent):
        assert re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", outcome.sha)
    else:
        assert isinstance(outcome, Ignored)
        assert outcome.reason


GITHUB_SEEDS = [(event, example) for event in ("push", "pull_request", "check_run", "check_suite", "release")
                for example in github_examples(event)]  # fmt: skip
GITLAB_SEEDS = [gitlab_payload(name) for name in GITLAB_FILES]


def _mutated(seeds: list[Any], pick: Callable[[Any], Payload]) -> st.SearchStrategy[tuple[Any, Payload]]:
    """A real payload with one member (down to depth 3) replaced by arbitrary JSON or removed."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[Any, Payload]:
        seed = draw(st.sampled_from(seeds))
        payload = pick(seed)
        path = draw(st.sampled_from(list(_nodes(payload))))
        value = draw(st.just(DELETE) | JSON)
        return seed, _set(payload, path, value)

    return build()


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(case=_mutated(GITHUB_SEEDS, lambda seed: seed[1]))
def test_github_mutated_payloads_never_escape_as_other_errors(case: tuple[Any, Payload]) -> None:
    (event_name, _), payload = case
    _check(lambda: from_github(event_name, payload))


@FUZZ
@given(case=_mutated(GITLAB_SEEDS, lambda seed: seed))
def test_gitlab_mutated_payloads_never_escape_as_other_errors(case: tuple[Any, Payload]) -> None:
    _, payload = case
    for header in ("Push Hook", "Tag Push Hook", "Merge Request Hook"):
        _check(partial(from_gitlab, header, payload))


GITHUB_TOP_KEYS = ["ref", "after", "deleted", "action", "repository", "pull_request", "check_run",
                   "check_suite", "release", "installation", "sender", "head_commit"]  # fmt: skip
GITLAB_TOP_KEYS = ["ref", "after", "checkout_sha", "project", "object_attributes", "user", "user_username"]


@FUZZ
@given(
    event_name=st.sampled_from(["push", "pull_request", "check_run", "check_suite", "release", "ping"]),
    payload=st.dictionaries(st.sampled_from(GITHUB_TOP_KEYS), JSON, max_size=8) | JSON,
)
def test_github_arbitrary_json_never_escapes_as_other_errors(event_name: str, payload: Any) -> None:
    _check(lambda: from_github(event_name, payload))


@FUZZ
@given(
    header=st.sampled_from(["Push Hook", "Tag Push Hook", "Merge Request Hook", "Pipeline Hook"]),
    payload=st.dictionaries(st.sampled_from(GITLAB_TOP_KEYS), JSON, max_size=7) | JSON,
)
def test_gitlab_arbitrary_json_never_escapes_as_other_errors(header: str, payload: Any) -> None:
    _check(lambda: from_gitlab(header, payload))


@FUZZ
@given(
    event_name=st.sampled_from(["pull_request", "pull_request_target", "push", "release", "schedule"]),
    case=_mutated([github_example("pull_request", "opened")], lambda seed: seed)
    | JSON.map(lambda v: (None, v)),
)
def test_from_actions_arbitrary_payloads_never_escape_as_other_errors(
    event_name: str, case: tuple[Any, Any]
) -> None:
    _, payload = case
    env = _actions_env({}, event_name, OTHER_SHA, "refs/heads/main")
    outcome = _outcome(lambda: from_actions(env, payload))
    assert isinstance(outcome, SourceEvent | BadRequestError)  # never Ignored: the user asked
