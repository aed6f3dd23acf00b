"""GitLab webhook payloads (push, tag push, merge request, and the approval note) → SourceEvent,
ApprovalCommand or an Ignored reason. Pure, like bridge.events, whose rules it shares.

GitLab merge request statuses live on the source project (where the commit is), so `project_id` is
the MR's `source_project_id`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge.core.approval import ApprovalCommand, matches_command
from bridge.errors import BadRequestError
from bridge.event_fields import (
    APPROVED_ACTION,
    GITLAB_BUILD_ACTIONS,
    GITLAB_EVENT_HEADERS,
    Fields,
    is_deleted_sha,
    provider_hint,
    site_root,
    split_ref,
)
from bridge.model import Ignored, SourceEvent

__all__ = ["from_gitlab", "gitlab_approval"]


# ---------------------------------------------------------------------------------------- GitLab


@dataclass(slots=True)
class _GitLabProject:
    id: int
    path: str
    server_url: str
    clone_url: str


def _gitlab_project(fields: Fields) -> _GitLabProject:
    path = fields.text("path_with_namespace")
    web_url = fields.text("web_url")
    server = site_root(web_url, path)
    if server is None:
        raise BadRequestError(
            f"GitLab '{fields.event}' payload: '{fields._where('web_url')}' must be an http(s) URL",
            hint=provider_hint("gitlab"),
        )
    return _GitLabProject(
        id=fields.integer("id"), path=path, server_url=server, clone_url=fields.text("git_http_url")
    )


def _gitlab_push(root: Fields) -> SourceEvent | Ignored:
    ref = root.text("ref")
    after = root.text("after")
    split = split_ref(ref)
    if split is None:
        return Ignored(f"push to {ref!r}: neither a branch nor a tag")
    kind, name = split
    if is_deleted_sha(after):
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


def _gitlab_merge_request(root: Fields) -> SourceEvent | Ignored:
    attrs = root.obj("object_attributes")
    action = attrs.text("action")
    iid = attrs.integer("iid")
    if action == "update":
        if attrs.maybe_text("oldrev") is None and not _marked_ready(root):
            return Ignored(f"merge request !{iid} updated without new commits")
    elif action not in GITLAB_BUILD_ACTIONS:
        return Ignored(f"merge request action {action!r} does not change the code to build")
    return _gitlab_change(root, attrs, action)


def _gitlab_change(root: Fields, attrs: Fields, action: str) -> SourceEvent | Ignored:
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


def _marked_ready(root: Fields) -> bool:
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


_GITLAB_HANDLERS: dict[str, Callable[[Fields], SourceEvent | Ignored]] = {
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
    return handler(Fields.root(payload, "gitlab", event_header))


def gitlab_approval(
    event_header: str, payload: Mapping[str, Any], *, command: str
) -> ApprovalCommand | Ignored | None:
    """A Note Hook on a merge request that is the approval command, or why it approves nothing;
    None for every other event. The note's merge request is the change, at the head the approver saw."""
    event_header = GITLAB_EVENT_HEADERS.get(event_header, event_header)  # "note" is "Note Hook"
    if event_header != "Note Hook":
        return None
    root = Fields.root(payload, "gitlab", event_header)
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
