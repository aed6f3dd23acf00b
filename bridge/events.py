"""Webhook payloads and the Actions context → one normalized SourceEvent (or an Ignored reason).

Pure: values in, values out. A webhook body is attacker-shaped input even after its signature
verifies (a misbehaving proxy, an old GitHub Enterprise), so every field is read through `Fields`,
which turns a missing key or a wrong type into a BadRequestError (HTTP 400) naming the key —
never a KeyError or TypeError that would surface as a 500 and make the provider retry forever.

Choices worth knowing:
- Pull requests build `pull_request.head.sha` from the head repository, never the merge commit.
- A tag push builds the commit the tag points at (`head_commit.id` on GitHub, `checkout_sha` on
  GitLab), because for an annotated tag `after` is the tag object, not a commit.
- A GitHub release carries no commit, only `target_commitish` (usually a branch name, which moves).
  A release is built only when that is a commit SHA; otherwise it is Ignored, because the tag push
  that came with the release already builds the tag at its exact commit.
GitLab payloads are read in bridge.gitlab_events (from_gitlab and gitlab_approval are re-exported here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bridge.core.approval import ApprovalCommand, matches_command, number_of_action
from bridge.errors import InputError
from bridge.event_fields import (
    APPROVED_ACTION,
    BRANCH_PREFIX,
    COMMIT_SHA,
    GITHUB_BUILD_ACTIONS,
    GITLAB_EVENT_HEADERS,
    TAG_PREFIX,
    Fields,
    is_deleted_sha,
    site_root,
    split_ref,
)
from bridge.gitlab_events import from_gitlab, gitlab_approval
from bridge.model import EventKind, Ignored, Provider, SourceEvent

__all__ = [
    "GITHUB_BUILD_ACTIONS",
    "GITLAB_EVENT_HEADERS",
    "from_actions",
    "from_github",
    "from_gitlab",
    "github_approval",
    "github_pull_request_from_api",
    "gitlab_approval",
    "parse_delivery",
]

# ---------------------------------------------------------------------------------------- GitHub


@dataclass(slots=True)
class _GitHubSite:
    repository: str
    clone_url: str
    server_url: str
    api_url: str
    installation_id: int | None
    sender: str | None


def _github_api_url(server_url: str) -> str:
    host = urlsplit(server_url).hostname or ""
    if host.lower() == "github.com":
        return "https://api.github.com"
    return server_url.rstrip("/") + "/api/v3"


def _github_site(root: Fields, server_url: str, api_url: str | None) -> _GitHubSite:
    repo = root.obj("repository")
    full_name = repo.text("full_name")
    server = site_root(repo.maybe_text("html_url"), full_name) or server_url.rstrip("/")
    # Push deliveries put the html URL in repository.url; every other event puts the API URL.
    repo_api = repo.maybe_text("url")
    marker = "/repos/" + full_name
    if repo_api and repo_api.lower().endswith(marker.lower()) and urlsplit(repo_api).netloc:
        api = repo_api[: -len(marker)]
    else:
        api = api_url.rstrip("/") if api_url else _github_api_url(server)
    installation = root.maybe_obj("installation")
    sender = root.maybe_obj("sender")
    return _GitHubSite(
        repository=full_name,
        clone_url=repo.text("clone_url"),
        server_url=server,
        api_url=api,
        installation_id=installation.integer("id") if installation else None,
        sender=sender.maybe_text("login") if sender else None,
    )


def _github_push(root: Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    ref = root.text("ref")
    after = root.text("after")
    split = split_ref(ref)
    if split is None:
        return Ignored(f"push to {ref!r}: neither a branch nor a tag")
    kind, name = split
    what = "branch" if kind == "push" else "tag"
    if root.flag("deleted") or is_deleted_sha(after):
        return Ignored(f"{what} {name!r} deleted")
    sha = root.sha("after")
    head_commit = root.maybe_obj("head_commit")
    if kind == "tag" and head_commit is not None:
        sha = head_commit.sha("id")  # an annotated tag's `after` is the tag object, not the commit
    site = _github_site(root, server_url, api_url)
    return SourceEvent(
        provider="github",
        kind=kind,
        event_name="push",
        action=None,
        repository=site.repository,
        clone_url=site.clone_url,
        sha=sha,
        ref=ref,
        server_url=site.server_url,
        branch=name if kind == "push" else None,
        tag=name if kind == "tag" else None,
        api_url=site.api_url,
        installation_id=site.installation_id,
        sender=site.sender,
        default_branch=_default_branch(root),
    )


def _default_branch(root: Fields) -> str | None:
    """The branch whose layer cache a new branch's first build starts from (bridge.core.cache)."""
    repository = root.maybe_obj("repository")
    return repository.maybe_text("default_branch") if repository is not None else None


def _github_pull_request(root: Fields, event_name: str, site: _GitHubSite) -> SourceEvent:
    """The PR head commit, from the head repository. When the fork is gone, the head commit still
    lives in the base repository under refs/pull/N/head, so the base clone URL serves."""
    pr = root.obj("pull_request")
    number = pr.integer("number")
    head = pr.obj("head")
    base = pr.obj("base")
    repository = base.obj("repo").text("full_name")
    sha = head.sha("sha")
    branch = head.text("ref")
    base_branch = base.text("ref")
    head_repo = head.maybe_obj("repo")
    private = False
    if head_repo is None:
        head_full_name, clone_url = repository, site.clone_url
    else:
        head_full_name, clone_url = head_repo.text("full_name"), head_repo.text("clone_url")
        private = head_repo.flag("private")
    return SourceEvent(
        provider="github",
        kind="pull_request",
        event_name=event_name,
        action=_optional_action(root),
        repository=repository,
        clone_url=clone_url,
        sha=sha,
        ref=f"refs/pull/{number}/head",
        server_url=site.server_url,
        branch=branch,
        pr_number=number,
        base_branch=base_branch,
        base_repository=repository,
        head_repository=head_full_name,
        is_fork=head_full_name.lower() != repository.lower(),
        is_draft=pr.flag("draft"),
        source_private=private,
        api_url=site.api_url,
        installation_id=site.installation_id,
        sender=site.sender,
    )


def _optional_action(root: Fields) -> str | None:
    action = root.data.get("action")
    return action if isinstance(action, str) and action else None


def _github_pull_request_hook(root: Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    action = root.text("action")
    if action not in GITHUB_BUILD_ACTIONS:
        return Ignored(f"pull_request action {action!r} does not change the code to build")
    if root.obj("pull_request").obj("head").maybe_obj("repo") is None:
        number = root.obj("pull_request").integer("number")
        return Ignored(f"pull request #{number}: its head repository was deleted")
    return _github_pull_request(root, "pull_request", _github_site(root, server_url, api_url))


def _github_rerun(
    root: Fields,
    suite: Fields | None,
    site: _GitHubSite,
    *,
    event_name: str,
    check_run_id: int | None,
    sha: str,
) -> SourceEvent:
    branch = suite.maybe_text("head_branch") if suite else None
    pulls = suite.objects("pull_requests") if suite else []
    pr_number = pulls[0].integer("number") if pulls else None
    if pr_number is not None:
        ref: str | None = f"refs/pull/{pr_number}/head"
    else:
        ref = f"{BRANCH_PREFIX}{branch}" if branch else None
    return SourceEvent(
        provider="github",
        kind="rerun",
        event_name=event_name,
        action=root.text("action"),
        repository=site.repository,
        clone_url=site.clone_url,
        sha=sha,
        ref=ref,
        server_url=site.server_url,
        branch=branch,
        pr_number=pr_number,
        api_url=site.api_url,
        installation_id=site.installation_id,
        sender=site.sender,
        check_run_id=check_run_id,
    )


def _github_check_run(root: Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    action = root.text("action")
    if action != "rerequested":
        return Ignored(f"check_run action {action!r} does not ask for a build")
    run = root.obj("check_run")
    sha = run.sha("head_sha")
    run_id = run.integer("id")
    suite = run.maybe_obj("check_suite")
    return _github_rerun(
        root,
        suite,
        _github_site(root, server_url, api_url),
        event_name="check_run",
        check_run_id=run_id,
        sha=sha,
    )


def _github_check_suite(root: Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    action = root.text("action")
    if action != "rerequested":
        return Ignored(f"check_suite action {action!r} does not ask for a build")
    suite = root.obj("check_suite")
    sha = suite.sha("head_sha")
    return _github_rerun(
        root,
        suite,
        _github_site(root, server_url, api_url),
        event_name="check_suite",
        check_run_id=None,
        sha=sha,
    )


def _github_release(root: Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    action = root.text("action")
    if action != "published":
        return Ignored(f"release action {action!r} does not ask for a build")
    release = root.obj("release")
    tag = release.text("tag_name")
    target = release.maybe_text("target_commitish")
    if target is None or not COMMIT_SHA.fullmatch(target):
        return Ignored(
            f"release {tag!r} names no commit (target_commitish is a branch); the tag push builds the tag"
        )
    site = _github_site(root, server_url, api_url)
    return SourceEvent(
        provider="github",
        kind="release",
        event_name="release",
        action=action,
        repository=site.repository,
        clone_url=site.clone_url,
        sha=target,
        ref=f"{TAG_PREFIX}{tag}",
        server_url=site.server_url,
        tag=tag,
        api_url=site.api_url,
        installation_id=site.installation_id,
        sender=site.sender,
    )


_GitHubHandler = Callable[[Fields, str, str | None], SourceEvent | Ignored]

_GITHUB_HANDLERS: dict[str, _GitHubHandler] = {
    "push": _github_push,
    "pull_request": _github_pull_request_hook,
    "check_run": _github_check_run,
    "check_suite": _github_check_suite,
    "release": _github_release,
}


def from_github(
    event_name: str,
    payload: Mapping[str, Any],
    *,
    server_url: str = "https://github.com",
    api_url: str | None = None,
) -> SourceEvent | Ignored:
    """A GitHub webhook delivery (X-GitHub-Event, parsed JSON body) → what to build, or why not.

    `server_url`/`api_url` are fallbacks: the payload's own repository URLs win, so one server
    can take deliveries from github.com and a GitHub Enterprise Server at once.
    """
    if event_name == "ping":
        return Ignored("ping: the webhook is set up; nothing to build")
    handler = _GITHUB_HANDLERS.get(event_name)
    if handler is None:
        return Ignored(f"GitHub event {event_name!r} does not trigger builds")
    return handler(Fields.root(payload, "github", event_name), server_url, api_url)


# --------------------------------------------------------------------------------- GitHub Actions

_ACTIONS_HINT = "run this inside a GitHub Actions job (the runner sets GITHUB_* variables)"


def _actions_env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise InputError(name, "is not set", hint=_ACTIONS_HINT)
    return value


def from_actions(env: Mapping[str, str], payload: Mapping[str, Any]) -> SourceEvent:
    """The workflow run's context (GITHUB_* variables, the GITHUB_EVENT_PATH JSON) → what to build.

    Never Ignored: a workflow step calling the action is an explicit request for a build.
    """
    event_name = _actions_env(env, "GITHUB_EVENT_NAME")
    repository = _actions_env(env, "GITHUB_REPOSITORY")
    sha = _actions_env(env, "GITHUB_SHA")
    if not COMMIT_SHA.fullmatch(sha):
        raise InputError("GITHUB_SHA", "is not a 40-hex-digit commit SHA", hint=_ACTIONS_HINT)
    ref = env.get("GITHUB_REF") or None
    server_url = (env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
    api_url = (env.get("GITHUB_API_URL") or _github_api_url(server_url)).rstrip("/")
    root = Fields.root(payload, "github", event_name)
    sender_obj = root.maybe_obj("sender")
    sender = env.get("GITHUB_ACTOR") or (sender_obj.maybe_text("login") if sender_obj else None)
    site = _GitHubSite(
        repository=repository,
        clone_url=f"{server_url}/{repository}.git",
        server_url=server_url,
        api_url=api_url,
        installation_id=None,
        sender=sender,
    )

    if event_name in ("pull_request", "pull_request_target"):
        # GITHUB_SHA is the merge commit (pull_request) or the base branch tip (pull_request_target).
        event = _github_pull_request(root, event_name, site)
        if root.obj("pull_request").obj("head").maybe_obj("repo") is None:
            # The fork was deleted; its head commit still is the fork's code (under refs/pull/N/head).
            event = dataclasses.replace(event, is_fork=True, head_repository=None)
        return event

    split = split_ref(ref) if ref else None
    kind: EventKind = "manual"
    tag = split[1] if split and split[0] == "tag" else None
    if event_name == "push" and split:
        kind = split[0]
    elif event_name == "release":
        kind = "release"
        release = root.maybe_obj("release")
        tag = (release.maybe_text("tag_name") if release else None) or tag
    return SourceEvent(
        provider="github",
        kind=kind,
        event_name=event_name,
        action=_optional_action(root),
        repository=repository,
        clone_url=site.clone_url,
        sha=sha,
        ref=ref,
        server_url=server_url,
        branch=split[1] if split and split[0] == "push" else None,
        tag=tag,
        api_url=api_url,
        sender=sender,
        default_branch=_default_branch(root),
        **_workflow_run_head(root, repository) if event_name == "workflow_run" else {},
    )


def _workflow_run_head(root: Fields, repository: str) -> dict[str, Any]:
    """Where the run that triggered this workflow_run took its code: a fork's pull request run
    makes the workflow_run (which has the repository's secrets) carry fork code, in its artifacts and
    its head_sha, which a workflow may check out and build."""
    run = root.maybe_obj("workflow_run")
    head = run.maybe_obj("head_repository") if run else None
    name = head.maybe_text("full_name") if head else None
    if run is None or name is None:
        return {}
    numbers = [pr.data.get("number") for pr in run.objects("pull_requests")]
    return {
        "head_repository": name,
        "is_fork": name.lower() != repository.lower(),
        "pr_number": next((n for n in numbers if isinstance(n, int)), None),
    }


def inherit_rerun(rerun: SourceEvent, original: SourceEvent) -> SourceEvent:
    """A re-run builds what the original build built, with the original's trust decisions.

    The re-run payloads cannot be trusted for that: a check_suite lists only same-repository pull
    requests, so a fork's commit would arrive looking like a branch commit and get the secrets a
    fork must not. Everything but who asked and which check comes from the build being re-run.
    """
    return dataclasses.replace(
        original,
        kind="rerun",
        event_name=rerun.event_name,
        action=rerun.action,
        installation_id=rerun.installation_id or original.installation_id,
        check_run_id=rerun.check_run_id,
        sender=rerun.sender,
    )


# ------------------------------------------------------------------------------ approval commands


def github_approval(
    event_name: str, payload: Mapping[str, Any], *, command: str
) -> ApprovalCommand | Ignored | None:
    """A maintainer's approval (an `issue_comment` on a pull request, or the check run's approve
    button), or why this comment or button approves nothing; None for every other event."""
    if event_name == "issue_comment":
        root = Fields.root(payload, "github", event_name)
        action = root.text("action")
        if action != "created":
            return Ignored(f"issue_comment action {action!r} approves nothing (only new comments count)")
        issue = root.obj("issue")
        number = issue.integer("number")
        if issue.maybe_obj("pull_request") is None:
            return Ignored(f"comment on issue #{number}: only pull request comments approve builds")
        comment = root.obj("comment")
        matched, sha = matches_command(comment.maybe_text("body") or "", command)
        if not matched:
            return Ignored(f"comment on #{number} is not the approval command {command}")
        return ApprovalCommand(
            provider="github",
            via="comment",
            repository=root.obj("repository").text("full_name"),
            number=number,
            by=comment.obj("user").text("login"),
            sha=sha,
            installation_id=_installation_id(root),
        )
    if event_name == "check_run" and payload.get("action") == "requested_action":
        root = Fields.root(payload, "github", event_name)
        identifier = root.obj("requested_action").text("identifier")
        button_number = number_of_action(identifier)
        if button_number is None:
            return Ignored(f"check_run button {identifier[:40]!r} is not bridge's approve button")
        return ApprovalCommand(
            provider="github",
            via="button",
            repository=root.obj("repository").text("full_name"),
            number=button_number,
            by=root.obj("sender").text("login"),
            sha=root.obj("check_run").sha("head_sha"),
            installation_id=_installation_id(root),
        )
    return None


def _installation_id(root: Fields) -> int | None:
    installation = root.maybe_obj("installation")
    return installation.integer("id") if installation else None


def github_pull_request_from_api(
    pull: Mapping[str, Any], *, sender: str, installation_id: int | None, api_url: str | None = None
) -> SourceEvent | Ignored:
    """The pull request as the REST API returns it (GET /repos/{o}/{r}/pulls/{n}) → the same event
    its webhook delivery would make: the API object and the webhook's `pull_request` share a shape."""
    pr = Fields.root(pull, "github", "pull_request")
    base_repo = pr.obj("base").obj("repo")
    root = {
        "action": APPROVED_ACTION,
        "pull_request": pull,
        "repository": base_repo.data,
        "sender": {"login": sender},
        **({"installation": {"id": installation_id}} if installation_id is not None else {}),
    }
    fields = Fields.root(root, "github", "pull_request")
    if pr.obj("head").maybe_obj("repo") is None:
        return Ignored(f"pull request #{pr.integer('number')}: its head repository was deleted")
    if pr.text("state") != "open":
        return Ignored(f"pull request #{pr.integer('number')} is {pr.text('state')}: nothing to approve")
    return _github_pull_request(fields, "pull_request", _github_site(fields, "https://github.com", api_url))


def parse_delivery(
    provider: Provider,
    event_name: str,
    payload: Mapping[str, Any],
    *,
    api_url: str | None = None,
    approval_command: str | None = None,
) -> ApprovalCommand | SourceEvent | Ignored:
    """What one delivery asks for: a maintainer's approval, an event to build, or why neither.

    The server's webhook handlers and `bridge plan` both read a delivery through this, so a comment
    or button is taken for an approval (or refused as one) the same way by both. `approval_command`
    None: the provider is not configured, and nothing approves.
    """
    if provider == "github":
        command = (
            github_approval(event_name, payload, command=approval_command)
            if approval_command is not None
            else None
        )
        return command if command is not None else from_github(event_name, payload, api_url=api_url)
    command = (
        gitlab_approval(event_name, payload, command=approval_command)
        if approval_command is not None
        else None
    )
    return command if command is not None else from_gitlab(event_name, payload)
