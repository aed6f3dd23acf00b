"""Webhook payloads and the Actions context → one normalized SourceEvent (or an Ignored reason).

Pure: values in, values out. A webhook body is attacker-shaped input even after its signature
verifies (a misbehaving proxy, an old GitHub Enterprise), so every field is read through `_Fields`,
which turns a missing key or a wrong type into a BadRequestError (HTTP 400) naming the key —
never a KeyError or TypeError that would surface as a 500 and make the provider retry forever.

Choices worth knowing:
- Pull requests build `pull_request.head.sha` from the head repository, never the merge commit.
- A tag push builds the commit the tag points at (`head_commit.id` on GitHub, `checkout_sha` on
  GitLab), because for an annotated tag `after` is the tag object, not a commit.
- A GitHub release carries no commit, only `target_commitish` (usually a branch name, which moves).
  A release is built only when that is a commit SHA; otherwise it is Ignored, because the tag push
  that came with the release already builds the tag at its exact commit.
- GitLab merge request statuses live on the source project (where the commit is), so `project_id`
  is the MR's `source_project_id`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from bridge.core.approval import ApprovalCommand, matches_command, number_of_action
from bridge.errors import BadRequestError, InputError
from bridge.model import EventKind, Ignored, Provider, SourceEvent

__all__ = [
    "from_actions",
    "from_github",
    "from_gitlab",
    "github_approval",
    "github_pull_request_from_api",
    "gitlab_approval",
]

# SHA-1 object ids, and SHA-256 ones for repositories created with --object-format=sha256.
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_ZERO_SHA = re.compile(r"0+")

_BRANCH_PREFIX = "refs/heads/"
_TAG_PREFIX = "refs/tags/"

GITHUB_BUILD_ACTIONS = frozenset({"opened", "synchronize", "reopened", "ready_for_review"})
GITLAB_BUILD_ACTIONS = frozenset({"open", "reopen"})

# GitLab names an event twice: X-Gitlab-Event ("Push Hook") and the body's object_kind ("push").
# Both are accepted wherever an event is named (the webhook header, `bridge plan --event`).
GITLAB_EVENT_HEADERS: dict[str, str] = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "note": "Note Hook",
    "issue": "Issue Hook",
    "pipeline": "Pipeline Hook",
    "build": "Job Hook",
    "job": "Job Hook",
    "deployment": "Deployment Hook",
    "release": "Release Hook",
    "wiki_page": "Wiki Page Hook",
}


# Not frozen, like the other two helpers here: a frozen dataclass sets each field through
# object.__setattr__, and a push delivery makes half a dozen of these, each read once.
@dataclass(slots=True)
class _Fields:
    """A JSON object plus where it sits in the payload, so an error names the exact key."""

    data: Mapping[str, Any]
    path: str
    provider: Provider
    event: str

    @classmethod
    def root(cls, payload: object, provider: Provider, event: str) -> _Fields:
        if not isinstance(payload, Mapping):
            raise BadRequestError(
                f"{_label(provider)} '{event}' payload must be a JSON object, got {_json_type(payload)}",
                hint=_hint(provider),
            )
        return cls(payload, "", provider, event)

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _bad(self, key: str, expected: str, value: object) -> BadRequestError:
        found = "nothing" if value is None and key not in self.data else _json_type(value)
        return BadRequestError(
            f"{_label(self.provider)} '{self.event}' payload: '{self._where(key)}' must be {expected}, "
            f"got {found}",
            hint=_hint(self.provider),
        )

    def obj(self, key: str) -> _Fields:
        value = self.data.get(key)
        if not isinstance(value, Mapping):
            raise self._bad(key, "an object", value)
        return _Fields(value, self._where(key), self.provider, self.event)

    def maybe_obj(self, key: str) -> _Fields | None:
        return None if self.data.get(key) is None else self.obj(key)

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not value:
            raise self._bad(key, "a non-empty string", value)
        return value

    def maybe_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        return self.text(key)

    def integer(self, key: str) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer", value)
        return value

    def flag(self, key: str) -> bool:
        """A boolean that is false when absent (GitHub and GitLab omit some on older versions)."""
        value = self.data.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def objects(self, key: str) -> list[_Fields]:
        """A list of objects; absent counts as empty."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "a list", value)
        where = self._where(key)
        items: list[_Fields] = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise BadRequestError(
                    f"{_label(self.provider)} '{self.event}' payload: '{where}[{index}]' must be an object, "
                    f"got {_json_type(item)}",
                    hint=_hint(self.provider),
                )
            items.append(_Fields(item, f"{where}[{index}]", self.provider, self.event))
        return items

    def sha(self, key: str) -> str:
        value = self.text(key)
        if not _COMMIT_SHA.fullmatch(value):
            raise BadRequestError(
                f"{_label(self.provider)} '{self.event}' payload: '{self._where(key)}' must be a "
                "lowercase 40-hex-digit commit SHA",
                hint=_hint(self.provider),
            )
        return value


def _label(provider: Provider) -> str:
    return "GitHub" if provider == "github" else "GitLab"


def _hint(provider: Provider) -> str:
    if provider == "github":
        return (
            "deliver the body GitHub sent, unchanged, with content type application/json "
            "(repository Settings → Webhooks → Content type)"
        )
    return "deliver the body GitLab sent, unchanged; the field is part of every delivery of this event"


def _json_type(value: object) -> str:
    """Names the JSON type found, never the value: payload text does not belong in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _is_deleted_sha(sha: str) -> bool:
    return bool(_ZERO_SHA.fullmatch(sha))


def _split_ref(ref: str) -> tuple[EventKind, str] | None:
    """refs/heads/x → ("push", "x"); refs/tags/v1 → ("tag", "v1"); anything else → None."""
    if ref.startswith(_BRANCH_PREFIX) and len(ref) > len(_BRANCH_PREFIX):
        return "push", ref.removeprefix(_BRANCH_PREFIX)
    if ref.startswith(_TAG_PREFIX) and len(ref) > len(_TAG_PREFIX):
        return "tag", ref.removeprefix(_TAG_PREFIX)
    return None


def _site_root(web_url: str | None, path: str) -> str | None:
    """The instance URL: web_url minus the trailing project path, which keeps a relative URL root
    (https://host/gitlab) that scheme+host alone would lose."""
    if not web_url:
        return None
    parts = urlsplit(web_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    suffix = "/" + path.strip("/")
    trimmed = web_url.rstrip("/")
    if trimmed.lower().endswith(suffix.lower()):
        return trimmed[: -len(suffix)]
    return f"{parts.scheme}://{parts.netloc}"


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


def _github_site(root: _Fields, server_url: str, api_url: str | None) -> _GitHubSite:
    repo = root.obj("repository")
    full_name = repo.text("full_name")
    server = _site_root(repo.maybe_text("html_url"), full_name) or server_url.rstrip("/")
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


def _github_push(root: _Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    ref = root.text("ref")
    after = root.text("after")
    split = _split_ref(ref)
    if split is None:
        return Ignored(f"push to {ref!r}: neither a branch nor a tag")
    kind, name = split
    what = "branch" if kind == "push" else "tag"
    if root.flag("deleted") or _is_deleted_sha(after):
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


def _default_branch(root: _Fields) -> str | None:
    """The branch whose layer cache a new branch's first build starts from (bridge.core.cache)."""
    repository = root.maybe_obj("repository")
    return repository.maybe_text("default_branch") if repository is not None else None


def _github_pull_request(root: _Fields, event_name: str, site: _GitHubSite) -> SourceEvent:
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


def _optional_action(root: _Fields) -> str | None:
    action = root.data.get("action")
    return action if isinstance(action, str) and action else None


def _github_pull_request_hook(root: _Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    action = root.text("action")
    if action not in GITHUB_BUILD_ACTIONS:
        return Ignored(f"pull_request action {action!r} does not change the code to build")
    if root.obj("pull_request").obj("head").maybe_obj("repo") is None:
        number = root.obj("pull_request").integer("number")
        return Ignored(f"pull request #{number}: its head repository was deleted")
    return _github_pull_request(root, "pull_request", _github_site(root, server_url, api_url))


def _github_rerun(
    root: _Fields,
    suite: _Fields | None,
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
        ref = f"{_BRANCH_PREFIX}{branch}" if branch else None
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


def _github_check_run(root: _Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
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


def _github_check_suite(root: _Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
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


def _github_release(root: _Fields, server_url: str, api_url: str | None) -> SourceEvent | Ignored:
    action = root.text("action")
    if action != "published":
        return Ignored(f"release action {action!r} does not ask for a build")
    release = root.obj("release")
    tag = release.text("tag_name")
    target = release.maybe_text("target_commitish")
    if target is None or not _COMMIT_SHA.fullmatch(target):
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
        ref=f"{_TAG_PREFIX}{tag}",
        server_url=site.server_url,
        tag=tag,
        api_url=site.api_url,
        installation_id=site.installation_id,
        sender=site.sender,
    )


_GitHubHandler = Callable[[_Fields, str, str | None], SourceEvent | Ignored]

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
    return handler(_Fields.root(payload, "github", event_name), server_url, api_url)


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
    if not _COMMIT_SHA.fullmatch(sha):
        raise InputError("GITHUB_SHA", "is not a 40-hex-digit commit SHA", hint=_ACTIONS_HINT)
    ref = env.get("GITHUB_REF") or None
    server_url = (env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
    api_url = (env.get("GITHUB_API_URL") or _github_api_url(server_url)).rstrip("/")
    root = _Fields.root(payload, "github", event_name)
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

    split = _split_ref(ref) if ref else None
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


def _workflow_run_head(root: _Fields, repository: str) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------- GitLab


@dataclass(slots=True)
class _GitLabProject:
    id: int
    path: str
    server_url: str
    clone_url: str


def _gitlab_project(fields: _Fields) -> _GitLabProject:
    path = fields.text("path_with_namespace")
    web_url = fields.text("web_url")
    server = _site_root(web_url, path)
    if server is None:
        raise BadRequestError(
            f"GitLab '{fields.event}' payload: '{fields._where('web_url')}' must be an http(s) URL",
            hint=_hint("gitlab"),
        )
    return _GitLabProject(
        id=fields.integer("id"), path=path, server_url=server, clone_url=fields.text("git_http_url")
    )


def _gitlab_push(root: _Fields) -> SourceEvent | Ignored:
    ref = root.text("ref")
    after = root.text("after")
    split = _split_ref(ref)
    if split is None:
        return Ignored(f"push to {ref!r}: neither a branch nor a tag")
    kind, name = split
    if _is_deleted_sha(after):
        return Ignored(f"{'branch' if kind == 'push' else 'tag'} {name!r} deleted")
    # checkout_sha is the commit a tag points at (after is the tag object for annotated tags).
    sha = root.sha("checkout_sha") if root.data.get("checkout_sha") is not None else root.sha("after")
    project = _gitlab_project(root.obj("project"))
    return SourceEvent(
        provider="gitlab",
        kind=kind,
        event_name=root.event,
        action=None,
        repository=project.path,
        clone_url=project.clone_url,
        sha=sha,
        ref=ref,
        server_url=project.server_url,
        branch=name if kind == "push" else None,
        tag=name if kind == "tag" else None,
        api_url=project.server_url + "/api/v4",
        project_id=project.id,
        source_project_id=project.id,
        sender=root.maybe_text("user_username"),
    )


_GITLAB_PUBLIC: Final = 20


def _gitlab_merge_request(root: _Fields) -> SourceEvent | Ignored:
    attrs = root.obj("object_attributes")
    action = attrs.text("action")
    iid = attrs.integer("iid")
    if action == "update":
        if attrs.maybe_text("oldrev") is None and not _marked_ready(root):
            return Ignored(f"merge request !{iid} updated without new commits")
    elif action not in GITLAB_BUILD_ACTIONS:
        return Ignored(f"merge request action {action!r} does not change the code to build")
    return _gitlab_change(root, attrs, action)


def _gitlab_change(root: _Fields, attrs: _Fields, action: str) -> SourceEvent | Ignored:
    """A merge request's head, from a Merge Request Hook's object_attributes or a Note Hook's
    merge_request (the same fields)."""
    iid = attrs.integer("iid")
    sha = attrs.obj("last_commit").sha("id")
    source = attrs.maybe_obj("source")
    if source is None:
        return Ignored(f"merge request !{iid}: its source project was deleted")
    source_path = source.text("path_with_namespace")
    has_visibility = source.data.get("visibility_level") is not None
    visibility = source.integer("visibility_level") if has_visibility else None
    source_project_id = attrs.integer("source_project_id")
    target_project_id = attrs.integer("target_project_id")
    project = _gitlab_project(root.obj("project"))
    target = attrs.maybe_obj("target")
    user = root.maybe_obj("user")
    return SourceEvent(
        provider="gitlab",
        kind="merge_request",
        event_name=root.event,
        action=action,
        repository=project.path,
        clone_url=source.text("git_http_url"),
        sha=sha,
        ref=f"refs/merge-requests/{iid}/head",
        server_url=project.server_url,
        branch=attrs.text("source_branch"),
        pr_number=iid,
        base_branch=attrs.text("target_branch"),
        base_repository=target.text("path_with_namespace") if target else project.path,
        head_repository=source_path,
        is_fork=source_project_id != target_project_id,
        is_draft=attrs.flag("draft") or attrs.flag("work_in_progress"),
        # 0 private, 10 internal, 20 public: only a public project clones without a token.
        source_private=visibility is not None and visibility != _GITLAB_PUBLIC,
        api_url=project.server_url + "/api/v4",
        project_id=source_project_id,
        source_project_id=source_project_id,
        sender=user.maybe_text("username") if user else None,
    )


def _marked_ready(root: _Fields) -> bool:
    """A draft merge request marked ready: GitLab sends an update with no new commits, GitHub a
    `ready_for_review` action, and both build it (a route skips drafts unless `drafts = true`)."""
    changes = root.maybe_obj("changes")
    if changes is None:
        return False
    for key in ("draft", "work_in_progress"):  # work_in_progress: GitLab before 13.x
        change = changes.maybe_obj(key)
        if change is not None and change.flag("previous") and not change.flag("current"):
            return True
    return False


_GITLAB_HANDLERS: dict[str, Callable[[_Fields], SourceEvent | Ignored]] = {
    "Push Hook": _gitlab_push,
    "Tag Push Hook": _gitlab_push,
    "Merge Request Hook": _gitlab_merge_request,
}


def from_gitlab(event_header: str, payload: Mapping[str, Any]) -> SourceEvent | Ignored:
    """A GitLab webhook delivery (X-Gitlab-Event or its short name, parsed JSON body) → what to
    build, or why not."""
    event_header = GITLAB_EVENT_HEADERS.get(event_header, event_header)
    handler = _GITLAB_HANDLERS.get(event_header)
    if handler is None:
        return Ignored(
            f"GitLab event {event_header!r} does not trigger builds (builds come from push, tag_push and"
            " merge_request: Push Hook, Tag Push Hook, Merge Request Hook)"
        )
    return handler(_Fields.root(payload, "gitlab", event_header))


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

APPROVED_ACTION = "approved"  # the action of a change event made from an approval


def github_approval(
    event_name: str, payload: Mapping[str, Any], *, command: str
) -> ApprovalCommand | Ignored | None:
    """A maintainer's approval (an `issue_comment` on a pull request, or the check run's approve
    button), or why this comment or button approves nothing; None for every other event."""
    if event_name == "issue_comment":
        root = _Fields.root(payload, "github", event_name)
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
        root = _Fields.root(payload, "github", event_name)
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


def _installation_id(root: _Fields) -> int | None:
    installation = root.maybe_obj("installation")
    return installation.integer("id") if installation else None


def github_pull_request_from_api(
    pull: Mapping[str, Any], *, sender: str, installation_id: int | None, api_url: str | None = None
) -> SourceEvent | Ignored:
    """The pull request as the REST API returns it (GET /repos/{o}/{r}/pulls/{n}) → the same event
    its webhook delivery would make: the API object and the webhook's `pull_request` share a shape."""
    pr = _Fields.root(pull, "github", "pull_request")
    base_repo = pr.obj("base").obj("repo")
    root = {
        "action": APPROVED_ACTION,
        "pull_request": pull,
        "repository": base_repo.data,
        "sender": {"login": sender},
        **({"installation": {"id": installation_id}} if installation_id is not None else {}),
    }
    fields = _Fields.root(root, "github", "pull_request")
    if pr.obj("head").maybe_obj("repo") is None:
        return Ignored(f"pull request #{pr.integer('number')}: its head repository was deleted")
    if pr.text("state") != "open":
        return Ignored(f"pull request #{pr.integer('number')} is {pr.text('state')}: nothing to approve")
    return _github_pull_request(fields, "pull_request", _github_site(fields, "https://github.com", api_url))


def gitlab_approval(
    event_header: str, payload: Mapping[str, Any], *, command: str
) -> ApprovalCommand | Ignored | None:
    """A Note Hook on a merge request that is the approval command, or why it approves nothing;
    None for every other event. The note's merge request is the change, at the head the approver saw."""
    event_header = GITLAB_EVENT_HEADERS.get(event_header, event_header)  # "note" is "Note Hook"
    if event_header != "Note Hook":
        return None
    root = _Fields.root(payload, "gitlab", event_header)
    attrs = root.obj("object_attributes")
    kind = attrs.text("noteable_type")
    if kind != "MergeRequest":
        return Ignored(f"comment on a {kind}: only merge request comments approve builds")
    merge_request = root.obj("merge_request")
    iid = merge_request.integer("iid")
    matched, named = matches_command(attrs.maybe_text("note") or "", command)
    if not matched:
        return Ignored(f"comment on !{iid} is not the approval command {command}")
    if merge_request.maybe_text("state") not in (None, "opened"):
        return Ignored(f"merge request !{iid} is {merge_request.text('state')}: nothing to approve")
    change = _gitlab_change(root, merge_request, APPROVED_ACTION)
    if isinstance(change, Ignored):
        return change
    user = root.obj("user")
    return ApprovalCommand(
        provider="gitlab",
        via="comment",
        repository=change.repository,
        number=iid,
        by=user.text("username"),
        sha=named or change.sha,
        user_id=user.integer("id"),
        project_id=root.obj("project").integer("id"),
        change=change,
    )


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
