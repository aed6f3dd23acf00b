"""The value types every layer shares. Pure: no I/O, no third-party imports.

events.py produces a SourceEvent, plan.py turns a SourceEvent + BuildOptions into a BuildRequest,
a builder runs the request and returns CodeBuild-shaped build records, status.py turns a record
into a BuildStatus that the reporters post. Keeping them here (not in the module that produces
them) lets every module depend on the types without depending on each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Provider = Literal["github", "gitlab"]

# Normalized kinds of event a route can match on.
EventKind = Literal["push", "tag", "pull_request", "merge_request", "manual", "release", "rerun"]

EnvVarType = Literal["PLAINTEXT", "SECRETS_MANAGER", "PARAMETER_STORE"]

ForkPolicy = Literal["never", "without-secrets", "approve", "allow"]

SourceMode = Literal["native", "clone"]
# Where the image build's layer cache lives (bridge.core.cache): the registry (buildx cache manifests, or
# BuildKit's inline cache without buildx), CodeBuild's host-local docker layer cache, or nowhere.
CacheMode = Literal["registry", "inline", "local", "none"]

# A CodeBuild build record as BatchGetBuilds returns it (the `builds[i]` dict). Builders other
# than CodeBuild produce the same shape, so status.py has one input format.
BuildRecord = Mapping[str, Any]


@dataclass(frozen=True)
class SourceEvent:
    """One thing to build, whatever the provider and front door it came from."""

    provider: Provider
    kind: EventKind
    event_name: str  # the provider's own name: "pull_request", "Merge Request Hook", ...
    action: str | None  # "opened", "synchronize", "update", ...; None where the event has none
    repository: str  # "owner/name" (GitHub) or the project's path_with_namespace (GitLab)
    clone_url: str  # https clone URL of the repository holding `sha` (the head repo for PRs)
    sha: str  # the exact commit to build (pull_request.head.sha for PRs, never a merge ref)
    ref: str | None  # full ref: refs/heads/main, refs/tags/v1.2.0, refs/pull/7/head
    server_url: str  # https://github.com, https://gitlab.example.com
    branch: str | None = None  # short branch name for pushes, head branch for PRs/MRs
    tag: str | None = None  # short tag name for tag pushes and releases
    pr_number: int | None = None  # PR number (GitHub) or MR iid (GitLab)
    base_branch: str | None = None  # the PR/MR target branch
    base_repository: str | None = None  # the repository the PR/MR targets
    head_repository: str | None = None  # owner/name of the PR/MR source repository
    is_fork: bool = False
    is_draft: bool = False
    api_url: str | None = None  # https://api.github.com, https://gitlab.example.com/api/v4
    installation_id: int | None = None  # GitHub App installation that sent the delivery
    project_id: int | None = None  # GitLab project id (the one statuses are posted to)
    source_project_id: int | None = None  # GitLab MR source project (differs for forks)
    pipeline_id: int | None = None  # GitLab pipeline id, where the payload carries one
    sender: str | None = None  # login / username of whoever triggered it
    check_run_id: int | None = None  # for check_run.rerequested: the run being re-run
    default_branch: str | None = None  # the repository's default branch, where the payload says it
    source_private: bool = False  # the head repository is private/internal: cloning it needs a token

    @property
    def short_sha(self) -> str:
        return self.sha[:7]


@dataclass(frozen=True)
class Ignored:
    """An event that was understood but asks for no build (deleted branch, closed PR, ...)."""

    reason: str


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str  # PLAINTEXT value, or the secret/parameter *reference* (never a secret value)
    type: EnvVarType = "PLAINTEXT"


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials the build logs in to a registry with, as Secrets Manager references only.

    References (`secretsmanager:NAME_OR_ARN[#json-key]`), never values: CodeBuild resolves them
    inside the build, so the secret never passes through bridge, its logs or the StartBuild request.
    """

    username_ref: str
    password_ref: str
    server: str | None = None  # registry host to log in to; None: the host of the image being pushed

    @classmethod
    def from_json_secret(cls, reference: str, server: str | None = None) -> RegistryAuth:
        """One JSON secret holding {"username": ..., "password": ...}."""
        base = reference.partition("#")[0]
        return cls(f"{base}#username", f"{base}#password", server)


@dataclass(frozen=True)
class BuildOptions:
    """What to build and how: the Action's inputs, or a route's settings. All optional but project."""

    project_name: str
    source_location: str | None = None  # overrides the clone URL derived from the event
    source_type: str | None = None  # GITHUB, GITHUB_ENTERPRISE, GITLAB, GITLAB_SELF_MANAGED, S3, NO_SOURCE
    source_version: str | None = None  # overrides the event's SHA (rarely wanted)
    source_mode: SourceMode = "native"  # GitLab only: CodeConnections source, or NO_SOURCE + clone
    clone_token_ref: str | None = None  # clone mode: Secrets Manager reference to the clone token
    buildspec: str | None = None  # inline YAML, or a path in the repository
    image_repository: str | None = None  # registry/repo to push to; enables the default buildspec
    image_tag: str | None = None  # tag or template ({sha}, {short_sha}, {branch}, {tag}, {pr}); default {sha}
    env_vars: tuple[EnvVar, ...] = ()
    compute_type: str | None = None
    build_image: str | None = None
    privileged_mode: bool | None = None
    timeout_minutes: int | None = None
    extra_overrides: Mapping[str, Any] = field(default_factory=dict)  # other StartBuild kwargs, passed as is
    batch: bool = False  # StartBuildBatch instead of StartBuild (the buildspec's `batch:` section decides)
    registry: RegistryAuth | None = None  # explicit registry login; None: the build role (ECR) or nothing
    cache: CacheMode = "registry"  # layer cache of the packaged image buildspecs (bridge.core.cache)
    cache_write: bool = True  # False: read the cache only (a fork never writes, whatever this says)
    platforms: tuple[str, ...] = ()  # linux/amd64, linux/arm64: each built natively (bridge.core.platforms)
    sign_key: str | None = None  # cosign KMS URI (awskms:///...) the build signs the pushed digest with


@dataclass(frozen=True)
class BuildRequest:
    """The exact StartBuild call, plus what the caller needs to know about it."""

    start_build_kwargs: Mapping[str, Any]  # projectName, sourceVersion, ..., idempotencyToken
    image_uri: str | None = None  # the image the build will push, when it pushes one
    batch: bool = False  # start with StartBuildBatch (kwargs are mapped by plan.start_build_batch_kwargs)

    @property
    def project_name(self) -> str:
        return str(self.start_build_kwargs["projectName"])


BuildState = Literal["queued", "in_progress", "completed"]
Conclusion = Literal["success", "failure", "timed_out", "cancelled"]


@dataclass(frozen=True)
class PhaseRow:
    name: str  # SUBMITTED, QUEUED, PROVISIONING, DOWNLOAD_SOURCE, INSTALL, PRE_BUILD, BUILD, ...
    status: str | None  # SUCCEEDED, FAILED, ...; None while the phase runs
    duration_seconds: int | None


@dataclass(frozen=True)
class CheckAction:
    """A button on a GitHub check run (at most 3; label <= 20, description <= 40, identifier <= 20 chars).

    Pressing it sends the App a `check_run` `requested_action` delivery carrying the identifier.
    """

    label: str
    description: str
    identifier: str


@dataclass(frozen=True)
class BuildStatus:
    """A provider-neutral view of a build, ready to post as a check run or a commit status."""

    build_id: str
    build_number: int | None
    build_status: str  # CodeBuild's buildStatus: IN_PROGRESS, SUCCEEDED, FAILED, FAULT, TIMED_OUT, STOPPED
    state: BuildState
    conclusion: Conclusion | None  # set once state == "completed"
    title: str  # one line, <= 255 chars (fits a GitLab/GitHub status description)
    summary: str  # markdown, <= 65535 chars (fits a check run's output.summary)
    phases: tuple[PhaseRow, ...]
    current_phase: str | None
    console_url: str
    logs_url: str | None = None
    image_uri: str | None = None
    image_digest: str | None = None
    # Buttons for check runs (others ignore them); GitHub shows them on completed runs only, so a
    # status with actions is posted as conclusion action_required (core.approval's waiting status).
    actions: tuple[CheckAction, ...] = ()

    @property
    def done(self) -> bool:
        return self.state == "completed"
