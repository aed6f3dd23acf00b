"""Maintainer approval of fork changes: who may approve, what the command looks like, what the
commit shows while a fork's head waits. Pure: the server asks the providers' APIs, this decides.

Like Prow's `/ok-to-test` and CodeBuild's comment approval, with one difference that matters: an
approval is for ONE head commit. It is recorded with that SHA, `core.trust.decide` grants the
approved-fork build only when the event's head is that SHA, and a new push (a new head) waits for a
new approval. The approver's rights come from the provider's API (GitHub's collaborator permission,
GitLab's member access level), never from the payload: `author_association` is only a hint, and a
comment's author can be anyone who can see the change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from bridge.core.text import shorten
from bridge.model import BuildStatus, CheckAction, Provider, SourceEvent

__all__ = [
    "APPROVE_ACTION_PREFIX",
    "DEFAULT_COMMAND",
    "DEVELOPER_ACCESS",
    "WRITE_PERMISSIONS",
    "ApprovalCommand",
    "Refusal",
    "approval_delivery_id",
    "approve_action",
    "awaiting_status",
    "built_by_approval",
    "change_url",
    "check_approver",
    "check_head",
    "matches_command",
    "number_of_action",
]

DEFAULT_COMMAND: Final = "/ok-to-build"
# GitHub's collaborator permission (the legacy `permission` field folds maintain into write and
# triage into read): write or more may approve.
WRITE_PERMISSIONS: Final = frozenset({"admin", "write"})
# GitLab access levels: 30 Developer, 40 Maintainer, 50 Owner. Developer or more may approve.
DEVELOPER_ACCESS: Final = 30
# The check-run button's identifier: "approve-<number>" (GitHub allows 20 characters).
APPROVE_ACTION_PREFIX: Final = "approve-"
_SHA_ARGUMENT = re.compile(r"[0-9a-f]{7,64}")
_MAX_IDENTIFIER: Final = 20


@dataclass(frozen=True)
class ApprovalCommand:
    """A maintainer's "build this fork's head", as a delivery states it (nothing checked yet).

    `sha`: the head commit the approver pointed at, when the delivery names one (the button's check
    run, a GitLab note's merge request, a SHA after the comment command; may be a prefix of 7+ hex
    digits for a comment). `change`: the change itself when the payload describes it in full
    (GitLab notes); GitHub comments carry only the number, so the server reads the pull request.
    """

    provider: Provider
    via: Literal["comment", "button"]
    repository: str  # the repository the change targets (GitHub full_name, GitLab target project path)
    number: int  # pull request number / merge request iid
    by: str  # login / username of whoever approved
    sha: str | None = None
    user_id: int | None = None  # GitLab: the members API takes user ids
    project_id: int | None = None  # GitLab: the target project (where membership counts)
    installation_id: int | None = None  # GitHub App installation that sent the delivery
    change: SourceEvent | None = None

    @property
    def label(self) -> str:
        mark = "!" if self.provider == "gitlab" else "#"
        return f"{self.repository}{mark}{self.number}"


@dataclass(frozen=True)
class Refusal:
    """Why an approval does not count: what the 200 answer, the log line and the reply say."""

    reason: str


def matches_command(body: str, command: str) -> tuple[bool, str | None]:
    """Whether a comment is the approval command, and the SHA (prefix) it names, if any.

    Only the first line counts and it must be the command alone, optionally followed by a commit
    SHA: a comment quoting the command further down, or discussing it, approves nothing.
    """
    first = body.strip().split("\n", 1)[0].strip()
    if first == command:
        return True, None
    head, _, rest = first.partition(" ")
    rest = rest.strip().lower()
    if head == command and _SHA_ARGUMENT.fullmatch(rest):
        return True, rest
    return False, None


def check_approver(
    command: ApprovalCommand, *, permission: str | None = None, access_level: int | None = None
) -> Refusal | None:
    """None when the approver's rights (from the provider's API) allow approving, else why not."""
    if command.provider == "github":
        if permission in WRITE_PERMISSIONS:
            return None
        return Refusal(
            f"approval of {command.label} by {command.by} refused: approving a fork's build needs write "
            f"access to {command.repository} (GitHub says {permission or 'none'})"
        )
    if access_level is not None and access_level >= DEVELOPER_ACCESS:
        return None
    level = "not a member" if access_level is None else f"access level {access_level}"
    return Refusal(
        f"approval of {command.label} by {command.by} refused: approving a fork's build needs the "
        f"Developer role (30) or more on {command.repository} ({level})"
    )


def check_head(command: ApprovalCommand, head: str) -> Refusal | None:
    """None when the approval names the change's current head (or names no commit), else why not.

    A button belongs to the check run of one commit and a SHA in a comment names one: after a push,
    pressing an old button or quoting an old SHA must not approve the new head unseen.
    """
    if (
        command.sha is None
        or head == command.sha
        or (command.via == "comment" and head.startswith(command.sha))
    ):
        return None
    return Refusal(
        f"approval of {command.label} names {command.sha[:7]}, but the head is now {head[:7]}: "
        "approve the new head"
    )


def approve_action(number: int) -> CheckAction:
    identifier = f"{APPROVE_ACTION_PREFIX}{number}"[:_MAX_IDENTIFIER]
    return CheckAction(
        label="Approve build", description="Build this commit (maintainers)", identifier=identifier
    )


def number_of_action(identifier: str) -> int | None:
    """The change number an approve button carries, or None for any other button."""
    digits = identifier.removeprefix(APPROVE_ACTION_PREFIX)
    if digits == identifier or not digits.isdigit():
        return None
    return int(digits)


def approval_delivery_id(change: SourceEvent) -> str:
    """The one delivery a fork's approved head is built under.

    However many maintainers approve a head, however often an approval or the change's own events
    are redelivered, and whichever arrives first at the worker, the head is built once: the
    change's own deliveries only ever post the waiting status.
    """
    return f"approval/{change.provider}/{change.repository.lower()}/{change.pr_number}/{change.sha}"


def built_by_approval(change: SourceEvent, policy: str, delivery_id: str) -> str | None:
    """For a fork's change on a route that waits for approvals, delivered under any id but its
    approval's: the approval's delivery id (the build is that one's). None otherwise; a re-run,
    asked for on a build that ran, builds again."""
    if not change.is_fork or policy != "approve" or change.kind == "rerun":
        return None
    approval_id = approval_delivery_id(change)
    # The worker sees the store's key, which namespaces the id per provider (admission.delivery_key).
    own = delivery_id in (approval_id, f"{change.provider}:{approval_id}")
    return None if own else approval_id


def change_url(event: SourceEvent) -> str:
    """Where the change is discussed, which is where the approval is given."""
    base = f"{event.server_url.rstrip('/')}/{event.repository}"
    if event.provider == "gitlab":
        return f"{base}/-/merge_requests/{event.pr_number}"
    return f"{base}/pull/{event.pr_number}"


def awaiting_status(
    event: SourceEvent, route_name: str, command: str, *, button: bool, reason: str
) -> BuildStatus:
    """The status a fork's head shows until a maintainer approves it: what to do, and who may.

    Posted as a pending status (commit statuses, GitLab) or, with a button, as a check run that asks
    for action (GitHub shows a check run's buttons only once it is completed).
    """
    who = (
        "someone with write access to the repository"
        if event.provider == "github"
        else "a project member with the Developer role or more"
    )
    where = "pull request" if event.provider == "github" else "merge request"
    title = f"Waiting for approval: a maintainer comments {command} to build {event.short_sha}"
    lines = [
        "### Waiting for a maintainer's approval",
        "",
        f"This {where} comes from a fork, and routes[{route_name}] builds fork changes only once a "
        f"maintainer approves their head commit ({reason}).",
        "",
        f"To build commit `{event.sha}`, {who} comments on the {where}:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if button:
        lines += ["or presses **Approve build** on this check.", ""]
    lines.append("The approval is for this commit only: after a new push, the new head needs a new approval.")
    return BuildStatus(
        build_id="",
        build_number=None,
        build_status="PENDING_APPROVAL",
        state="queued",
        conclusion=None,
        title=shorten(title, 255),
        summary="\n".join(lines) + "\n",
        phases=(),
        current_phase=None,
        console_url=change_url(event),
        actions=(approve_action(event.pr_number or 0),) if button else (),
    )
