"""Post build status to GitHub: check runs (GitHub App or Actions token) or commit statuses (PAT).

PyGithub does the HTTP work: `GithubRetry` retries 5xx and secondary rate limits (honouring
Retry-After), `Auth.AppAuth` signs the App JWT and refreshes installation tokens. What is left
here is GitHub's rules about who may do what, turned into ReporterErrors whose `retryable` tells
the worker whether to try again and whose hint tells a human what permission is missing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import github
import requests
from github import Auth, GithubIntegration, GithubRetry
from github.CheckRun import CheckRun
from github.GithubException import GithubException, RateLimitExceededException
from urllib3.util.retry import Retry

from bridge.core.text import shorten
from bridge.errors import ConfigError, ReporterError
from bridge.model import BuildStatus, SourceEvent
from bridge.secret import Secret
from bridge.status import commit_status_state

log = logging.getLogger(__name__)

SUMMARY_MAX: Final = 65535
DESCRIPTION_MAX: Final = 140

CHECKS_HINT: Final = (
    "give the job `permissions: checks: write` or set check-name: '' to report a commit status instead; "
    "a GitHub App needs the 'Checks: Read and write' permission. Pull requests from forks get a "
    "read-only token, so no check run can be created for them."
)
STATUSES_HINT: Final = (
    "the token needs `repo:status` (classic PAT) or 'Commit statuses: Read and write' (fine-grained), "
    "or `permissions: statuses: write` in the workflow"
)
PERMISSION_HINT: Final = (
    "approving fork builds reads pull requests and collaborator permissions: a GitHub App needs the "
    "'Pull requests: Read' and 'Metadata: Read' permissions, a token the repo scope"
)
CREDENTIALS_HINT: Final = (
    "check the GitHub token, or the App id, private key and installation id (is the App installed "
    "on this repository?)"
)


def default_retry(
    *, total: int = 4, backoff_factor: float = 0.5, secondary_rate_wait: float = 60
) -> GithubRetry:
    """Retries for one reporter call: a few quick tries on 5xx, GitHub's minute on a secondary rate limit.

    PATCH is added to GithubRetry's methods because a check-run update is idempotent. POST is
    retried too (GithubRetry's default): a 502 from GitHub's edge almost always means the request
    never reached the API, and a duplicate queued check run is cheaper than a missing one.
    """
    return GithubRetry(
        total=total,
        backoff_factor=backoff_factor,
        backoff_max=20,
        secondary_rate_wait=secondary_rate_wait,
        max_rate_limit_wait=300,
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"GET", "POST", "PATCH"},
    )


def github_client(
    api_url: str,
    token: Secret | None = None,
    *,
    app_id: int | None = None,
    private_key: Secret | None = None,
    installation_id: int | None = None,
    repository: str | None = None,
    timeout: float = 15,
    retry: Retry | None = None,
    seconds_between_requests: float | None = 0.25,
    seconds_between_writes: float | None = 1.0,
) -> github.Github:
    """A lazy PyGithub client: token auth, or a GitHub App installation.

    Lazy so a reporter does not GET the repository before every POST. With App credentials but
    no installation id, `repository` is used to look the installation up once. Requests and writes
    are spaced as PyGithub does by default (GitHub's advice against secondary rate limits).
    """
    seconds = max(1, math.ceil(timeout))
    retry = retry if retry is not None else default_retry()
    auth: Auth.Auth
    if token:
        auth = Auth.Token(token.reveal())
    elif app_id is not None and private_key:
        app_auth = Auth.AppAuth(app_id, private_key.reveal())
        if installation_id is None:
            if not repository:
                raise ConfigError(
                    "GitHub App credentials without an installation id",
                    key="github.installation_id",
                    hint="set the installation id, or pass the repository so it can be looked up",
                )
            installation_id = find_installation_id(
                api_url, app_id=app_id, private_key=private_key, repository=repository, timeout=timeout
            )
        auth = app_auth.get_installation_auth(installation_id)
    else:
        raise ConfigError(
            "no GitHub credentials",
            key="github",
            hint="set a token, or an App id with its private key",
        )
    return github.Github(
        base_url=api_url,
        auth=auth,
        timeout=seconds,
        retry=retry,
        lazy=True,
        seconds_between_requests=seconds_between_requests,
        seconds_between_writes=seconds_between_writes,
    )


def find_installation_id(
    api_url: str,
    *,
    app_id: int,
    private_key: Secret,
    repository: str,
    timeout: float = 15,
    retry: Retry | None = None,
) -> int:
    """The App's installation on `repository` (GET /repos/{owner}/{repo}/installation, JWT auth)."""
    owner, _, name = repository.partition("/")
    integration = GithubIntegration(
        auth=Auth.AppAuth(app_id, private_key.reveal()),
        base_url=api_url,
        timeout=max(1, math.ceil(timeout)),
        retry=retry if retry is not None else default_retry(),
    )
    try:
        return int(integration.get_repo_installation(owner, name).id)
    except GithubException as error:
        if error.status == 404:
            raise ReporterError(
                f"GitHub App {app_id} is not installed on {repository}",
                hint="install the App on the repository (or its organization)",
            ) from None
        raise _reporter_error(error, f"looking up the App installation for {repository}") from None
    except requests.RequestException as error:
        raise _network_error(error, f"looking up the App installation for {repository}") from None
    finally:
        integration.close()


class CheckRunReporter:
    """One check run per build: created queued/in_progress, then edited until completed."""

    def __init__(self, gh: github.Github, repository: str, *, name: str, take_over: bool = False) -> None:
        """`take_over`: before creating a build's run, look for one another process created for the
        same build (the webhook server's replicas); one GET more per build. The Action, alone with
        its build, leaves it off."""
        self._repo = gh.get_repo(repository)
        self.repository = repository
        self.name = name
        self.take_over = take_over

    def start(self, event: SourceEvent, status: BuildStatus | None, details_url: str | None) -> int:
        fields: dict[str, Any] = {"name": self.name, "head_sha": event.sha}
        if details_url or (status is not None and status.console_url):
            fields["details_url"] = details_url or (status.console_url if status else None)
        if status is None:
            fields["status"] = "queued"
            fields["output"] = {"title": "Waiting for CodeBuild", "summary": "Starting the build."}
        else:
            fields["external_id"] = status.build_id
            fields.update(_check_run_fields(status))
            found = self.take_over and bool(status.build_id)
            existing = self._run_of_build(event, status.build_id) if found else None
            if existing is not None:
                return self._adopt(existing, fields)
        try:
            run = self._repo.create_check_run(**fields)
        except GithubException as error:
            doing = f"creating check run '{self.name}' on {self.repository}"
            raise _reporter_error(error, doing, forbidden_hint=CHECKS_HINT) from None
        except requests.RequestException as error:
            raise _network_error(error, f"creating check run '{self.name}' on {self.repository}") from None
        log.info("check run %s created on %s@%s", run.id, self.repository, event.short_sha)
        return int(run.id)

    def _run_of_build(self, event: SourceEvent, build_id: str) -> CheckRun | None:
        """This build's check run on the commit, if one exists already.

        With several replicas, one may die between creating a build's check run and recording its
        id; the replica that reports next must take that run over, not leave it queued for ever
        beside a second one. The build id is the run's external_id, so it is found by listing the
        commit's runs of this name (one GET, usually one page).
        """
        doing = f"looking for check run '{self.name}' of {build_id} on {self.repository}@{event.short_sha}"
        try:
            runs = self._repo.get_commit(event.sha).get_check_runs(check_name=self.name, filter="all")
            return next((run for run in runs if run.external_id == build_id), None)
        except GithubException as error:
            raise _reporter_error(error, doing, forbidden_hint=CHECKS_HINT) from None
        except requests.RequestException as error:
            raise _network_error(error, doing) from None

    def _adopt(self, run: CheckRun, fields: Mapping[str, Any]) -> int:
        """Bring an existing run to `fields` (what start would have created) and report on it from now."""
        changes = {key: value for key, value in fields.items() if key not in ("name", "head_sha")}
        self._edit(int(run.id), lambda: run.edit(**changes))
        log.info("check run %s of build %s taken over on %s", run.id, fields["external_id"], self.repository)
        return int(run.id)

    def _edit(self, check_run_id: int, edit: Callable[[], object]) -> None:
        """Run one check-run update, its failures told as this reporter tells them."""
        try:
            edit()
        except GithubException as error:
            doing = f"updating check run {check_run_id} on {self.repository}"
            hint = "only the App (or workflow token) that created a check run can update it; " + CHECKS_HINT
            raise _reporter_error(error, doing, forbidden_hint=hint) from None
        except requests.RequestException as error:
            raise _network_error(error, f"updating check run {check_run_id} on {self.repository}") from None

    def update(self, check_run_id: int, status: BuildStatus, event: SourceEvent | None = None) -> None:
        del event  # a check run is addressed by its id alone; the argument keeps reporters alike
        fields = _check_run_fields(status)
        if status.build_id:
            fields["external_id"] = status.build_id
        self._edit(check_run_id, lambda: self._repo.get_check_run(check_run_id).edit(**fields))


class CommitStatusReporter:
    """The PAT fallback: a commit status per state change, under one context per route.

    start() returns the created status id; update() needs the commit, so pass `event` (or use the
    same reporter instance that started it, which remembers the commit for each id).
    """

    def __init__(self, gh: github.Github, repository: str, *, context: str) -> None:
        self._repo = gh.get_repo(repository)
        self.repository = repository
        self.context = context
        self._started: dict[int, tuple[str, str | None]] = {}

    def start(self, event: SourceEvent, status: BuildStatus | None, details_url: str | None) -> int:
        target_url = details_url or (status.console_url if status else None)
        if status is None:
            status_id = self._post(event.sha, "pending", "Starting the CodeBuild build", target_url)
        else:
            status_id = self._post(event.sha, commit_status_state(status), status.title, target_url)
        self._started[status_id] = (event.sha, details_url)
        return status_id

    def update(self, check_run_id: int, status: BuildStatus, event: SourceEvent | None = None) -> None:
        sha, details_url = self._started.get(check_run_id, (None, None))
        if event is not None:
            sha = event.sha
        if sha is None:
            raise ReporterError(
                f"no commit known for status {check_run_id} on {self.repository}",
                hint="pass the SourceEvent to CommitStatusReporter.update()",
            )
        self._post(sha, commit_status_state(status), status.title, details_url or status.console_url or None)

    def _post(self, sha: str, state: str, description: str, target_url: str | None) -> int:
        fields: dict[str, Any] = {
            "state": state,
            "description": shorten(description, DESCRIPTION_MAX),
            "context": self.context,
        }
        if target_url:
            fields["target_url"] = target_url
        try:
            created = self._repo.get_commit(sha).create_status(**fields)
        except GithubException as error:
            doing = f"posting commit status '{self.context}' on {self.repository}@{sha[:7]}"
            raise _reporter_error(
                error, doing, forbidden_hint=STATUSES_HINT, not_found_hint=STATUSES_HINT
            ) from None
        except requests.RequestException as error:
            doing = f"posting commit status '{self.context}' on {self.repository}@{sha[:7]}"
            raise _network_error(error, doing) from None
        return int(created.id)


class BoundReporter:
    """One event's reporter in the worker's shape (services.StatusReporter): start(status) -> ref.

    The worker keeps `ref` (the check run or status id, as text) and hands it back to update().
    """

    def __init__(
        self,
        reporter: CheckRunReporter | CommitStatusReporter,
        event: SourceEvent,
        *,
        details_url: str | None = None,
    ) -> None:
        self.reporter = reporter
        self.event = event
        self.details_url = details_url

    def start(self, status: BuildStatus) -> str | None:
        return str(self.reporter.start(self.event, status, self.details_url))

    def update(self, ref: str, status: BuildStatus) -> str | None:
        self.reporter.update(int(ref), status, self.event)
        return ref


def _check_run_fields(status: BuildStatus) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "output": {"title": status.title, "summary": _clip(status.summary, SUMMARY_MAX)},
    }
    if status.actions:
        # GitHub shows a check run's buttons only once it is completed: a status that asks for a
        # button press (a fork waiting for approval) completes as action_required, which also keeps
        # a required check from passing.
        fields["status"] = "completed"
        fields["conclusion"] = "action_required"
        fields["completed_at"] = datetime.now(UTC)
        fields["actions"] = [
            {"label": a.label, "description": a.description, "identifier": a.identifier}
            for a in status.actions
        ]
    elif status.done:
        fields["status"] = "completed"
        fields["conclusion"] = status.conclusion or "failure"
        fields["completed_at"] = datetime.now(UTC)
    else:
        fields["status"] = status.state
    return fields


def _clip(text: str, limit: int) -> str:
    """A long summary keeps its lines; only its end is cut (short one-line texts go through shorten)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message(error: GithubException) -> str:
    data = error.data
    if isinstance(data, Mapping) and data.get("message"):
        return str(data["message"])
    return f"HTTP {error.status}"


def _reporter_error(
    error: GithubException,
    doing: str,
    *,
    forbidden_hint: str = "",
    not_found_hint: str = "check the repository name and that the credentials can see it",
) -> ReporterError:
    """Transient (5xx after retries, rate limits) -> retryable; everything else needs a human.

    Rate limits come first: GitHub answers them with 403 too, and they are not a permission problem.
    """
    status = error.status
    message = f"{doing} failed: HTTP {status} {_message(error)}"
    if isinstance(error, RateLimitExceededException) or status >= 500 or status == 429:
        return ReporterError(
            message, retryable=True, hint="GitHub is unavailable or rate limiting; will retry"
        )
    if status == 401:
        return ReporterError(message, hint=CREDENTIALS_HINT)
    if status == 403:
        return ReporterError(message, hint=forbidden_hint)
    if status == 404:
        return ReporterError(message, hint=not_found_hint)
    return ReporterError(message, hint="")


def _network_error(error: requests.RequestException, doing: str) -> ReporterError:
    """Retries exhausted (urllib3 gives up with RetryError) or GitHub unreachable: try again later."""
    kind = "retries exhausted" if isinstance(error, requests.exceptions.RetryError) else type(error).__name__
    return ReporterError(
        f"{doing} failed: {kind}",
        retryable=True,
        hint="GitHub did not answer successfully after retries; the worker will try again",
    )


def collaborator_permission(gh: github.Github, repository: str, login: str) -> str:
    """GET /repos/{o}/{r}/collaborators/{login}/permission: admin, write, read or none.

    A 404 (no such user, or a repository the credentials cannot see) counts as no permission: the
    approval is refused, never granted, on an answer that says nothing.
    """
    doing = f"reading the permission of {login} on {repository}"
    try:
        return str(gh.get_repo(repository).get_collaborator_permission(login))
    except GithubException as error:
        if error.status == 404:
            return "none"
        raise _reporter_error(error, doing, forbidden_hint=PERMISSION_HINT) from None
    except requests.RequestException as error:
        raise _network_error(error, doing) from None


def pull_request(gh: github.Github, repository: str, number: int) -> dict[str, Any]:
    """GET /repos/{o}/{r}/pulls/{number}, as the API returns it (the webhook's pull_request shape)."""
    doing = f"reading pull request #{number} of {repository}"
    try:
        return dict(gh.get_repo(repository).get_pull(number).raw_data)
    except GithubException as error:
        raise _reporter_error(error, doing, forbidden_hint=PERMISSION_HINT) from None
    except requests.RequestException as error:
        raise _network_error(error, doing) from None
