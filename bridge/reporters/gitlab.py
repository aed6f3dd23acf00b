"""GitLab commit statuses, through python-gitlab.

GitLab's statuses are a state machine (pending -> running -> success|failed|canceled) that answers
400 when a state is posted twice and 409 when two posts race. Both mean the commit already shows
what we wanted, so they are successes here; the worker can then re-post a state freely (after a
restart, a duplicate event) without turning GitLab's bookkeeping into alarms.
"""

from __future__ import annotations

from typing import Any, Final

import gitlab
import requests
from gitlab.exceptions import GitlabAuthenticationError, GitlabError

from bridge.core.text import shorten
from bridge.errors import ReporterError
from bridge.model import BuildStatus, SourceEvent
from bridge.secret import Secret
from bridge.status import gitlab_state

GITLAB_STATES: Final = frozenset({"pending", "running", "success", "failed", "canceled"})
MAX_FIELD_LENGTH: Final = 255
_ALREADY_THERE: Final = "Cannot transition status via"
_DEFAULT_DESCRIPTIONS: Final = {
    "pending": "Build queued",
    "running": "Build running",
    "success": "Build succeeded",
    "failed": "Build failed",
    "canceled": "Build canceled",
}
_REJECTED_HINT: Final = (
    "GitLab rejected the token (expired, revoked or wrong): create a project or group access token "
    "with the `api` scope and at least the Developer role, and store it in the referenced secret"
)


class GitLabAuthError(ReporterError):
    """GitLab answered 401: the token itself is bad. Re-reading a rotated token may fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, hint=_REJECTED_HINT)


def is_auth_failure(exc: BaseException) -> bool:
    """For SecretStore.with_refresh: only a rejected token is worth re-reading the secret for."""
    return isinstance(exc, GitLabAuthError | GitlabAuthenticationError)


class _RetryingGitlab(gitlab.Gitlab):
    """python-gitlab takes max_retries per request only; this makes it a client-wide default."""

    def __init__(self, *args: Any, max_retries: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bridge_max_retries = max_retries

    def http_request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("max_retries", self.bridge_max_retries)
        return super().http_request(*args, **kwargs)


def gitlab_client(url: str, token: Secret, *, timeout: float = 15, retries: int = 3) -> gitlab.Gitlab:
    """A client that retries 429 and 5xx itself (python-gitlab's retry_transient_errors).

    `url` is the server (https://gitlab.example.com); an API URL ending in /api/v4 is accepted too,
    since SourceEvent.api_url carries that form.
    """
    base = url.rstrip("/")
    base = base.removesuffix("/api/v4")
    return _RetryingGitlab(
        base,
        private_token=token.reveal(),
        timeout=timeout,
        retry_transient_errors=True,
        max_retries=retries,
        user_agent="codebuild-bridge",
    )


class GitLabStatusReporter:
    def __init__(self, gl: gitlab.Gitlab, *, name: str) -> None:
        self._gl = gl
        self._name = name

    def report(
        self,
        event: SourceEvent,
        status: BuildStatus | None,
        *,
        state: str | None = None,
        target_url: str | None = None,
    ) -> None:
        """Post one status. `state` overrides the derived one (e.g. pending before a build exists)."""
        if state is None:
            if status is None:
                raise ValueError("report() needs a BuildStatus or an explicit state")
            state = gitlab_state(status)
        if state not in GITLAB_STATES:
            raise ValueError(f"GitLab status state must be one of {sorted(GITLAB_STATES)}, not {state!r}")
        data: dict[str, Any] = {"state": state, "name": self._name}
        ref = event.branch or event.tag
        if ref:
            data["ref"] = ref
        if event.pipeline_id is not None:
            data["pipeline_id"] = event.pipeline_id
        url = target_url or (status.console_url if status is not None else None)
        if url:
            data["target_url"] = url[:MAX_FIELD_LENGTH]  # a cut link still lands near the build
        description = status.title if status is not None and status.title else _DEFAULT_DESCRIPTIONS[state]
        data["description"] = _truncate(description)
        project_id: int | str = event.project_id if event.project_id is not None else event.repository
        where = f"GitLab status {self._name!r} on {event.repository}@{event.short_sha}"
        try:
            # Lazy objects: one POST /projects/:id/statuses/:sha, no GET of the project or commit.
            project = self._gl.projects.get(project_id, lazy=True)
            project.commits.get(event.sha, lazy=True).statuses.create(data)
        except GitlabAuthenticationError as exc:
            raise GitLabAuthError(f"{where}: 401 Unauthorized") from exc
        except GitlabError as exc:
            if _already_there(exc):
                return
            raise _reporter_error(exc, where) from exc
        except requests.RequestException as exc:
            raise ReporterError(
                f"{where}: GitLab unreachable ({type(exc).__name__})",
                retryable=True,
                hint="check the GitLab URL and the network path from bridge; it will be retried",
            ) from exc


def _already_there(exc: GitlabError) -> bool:
    """400 'Cannot transition status via :X from :Y': the status is already there (or beyond). 409: a race."""
    code = exc.response_code
    return code == 409 or (code == 400 and _ALREADY_THERE in str(exc.error_message))


def _reporter_error(exc: GitlabError, where: str) -> ReporterError:
    code = exc.response_code
    detail = f"{where}: GitLab answered {code}: {_short(exc.error_message)}"
    if code == 403:
        return ReporterError(
            detail,
            hint="the token needs the `api` scope and at least the Developer role "
            "(Maintainer for protected branches) on the project",
        )
    if code == 404:
        return ReporterError(
            detail,
            hint="check the project id/path and that the token's user can see the project and commit",
        )
    if code is None or code == 429 or code >= 500:
        return ReporterError(detail, retryable=True, hint="GitLab is busy or failing; it will be retried")
    return ReporterError(detail, hint="GitLab refused the status; see its message")


def _short(message: object) -> str:
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    return text if len(text) <= 300 else text[:297] + "..."


def _truncate(text: str) -> str:
    return shorten(text, MAX_FIELD_LENGTH)


def member_access_level(gl: gitlab.Gitlab, project: int | str, user_id: int) -> int | None:
    """GET /projects/:id/members/all/:user_id (inherited memberships count): the access level, or
    None when GitLab knows no such member (404)."""
    where = f"reading the membership of user {user_id} in GitLab project {project}"
    try:
        member = gl.projects.get(project, lazy=True).members_all.get(user_id)
    except GitlabAuthenticationError as exc:
        raise GitLabAuthError(f"{where}: 401 Unauthorized") from exc
    except GitlabError as exc:
        if exc.response_code == 404:
            return None
        raise _reporter_error(exc, where) from exc
    except requests.RequestException as exc:
        raise ReporterError(
            f"{where}: GitLab unreachable ({type(exc).__name__})",
            retryable=True,
            hint="check the GitLab URL and the network path from bridge",
        ) from exc
    level = getattr(member, "access_level", None)
    return int(level) if isinstance(level, int) else None
