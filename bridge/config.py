"""The routing file (TOML): load it, validate every key, and hand out frozen settings.

Validation is table-driven from one schema (`_SECTIONS`), and the same schema generates the key
reference in docs/config.md, so the docs cannot drift from what the loader accepts. Every problem is
collected before anything is raised: `bridge check-config` shows a user all their mistakes in one run,
each with the dotted path of the key and how to fix it. Secret-valued keys hold references only, and
no message ever repeats what such a key contained: a value that is not a reference may well be the
secret itself. Nothing here resolves a secret or touches the network: reading the file is the only I/O.
"""

from __future__ import annotations

import difflib
import os
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

from bridge.core.approval import DEFAULT_COMMAND as DEFAULT_APPROVAL_COMMAND
from bridge.core.platforms import PLATFORMS_HINT, parse_platforms
from bridge.core.platforms import SUPPORTED as SUPPORTED_PLATFORMS
from bridge.core.signing import SIGN_HINT, parse_sign_key
from bridge.errors import ConfigError, InputError
from bridge.model import CacheMode, EnvVar, EventKind, ForkPolicy, Provider, SourceMode
from bridge.plan import looks_like_credential, parse_env_vars
from bridge.secrets import EXPECTED_FORMS, SecretRef, parse_reference

__all__ = [
    "AwsSettings",
    "Config",
    "GitHubSettings",
    "GitLabSettings",
    "InvalidConfigError",
    "KeyDoc",
    "LocalBuilderSettings",
    "QueueSettings",
    "Route",
    "SecretRef",
    "ServerSettings",
    "SnsSettings",
    "StoreSettings",
    "config_schema",
    "default_events",
    "load_config",
    "parse_config",
    "render_docs",
    "render_reference",
]


# --- the settings handed to the rest of the program -------------------------------------------------


def default_state_path() -> Path:
    """The SQLite file when `server.state_path` is not set: the user's state directory (XDG Base
    Directory: $XDG_STATE_HOME, else ~/.local/state), never the current or the config's directory,
    so running the server from a checkout leaves nothing in it."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path("~/.local/state").expanduser()  # relative: ignored
    return root / "bridge" / "bridge.sqlite3"


@dataclass(frozen=True)
class ServerSettings:
    public_url: str | None = None
    max_body_bytes: int = 26_214_400  # GitHub caps webhook payloads at 25 MB
    poll_interval_seconds: int = 15
    state_path: Path = field(default_factory=default_state_path)
    threads: int = 8
    max_build_starts_per_second: int = 10
    start_retry_max_delay_seconds: int = 120
    start_lookup_after_seconds: int = 240
    operator_page: str = "auto"  # auto: only on a loopback bind; on; off (see docs/operator.md)
    operator_token: SecretRef | None = None
    header_timeout_seconds: int = 10
    body_timeout_seconds: int = 30
    max_inflight_body_bytes: int = 67_108_864


@dataclass(frozen=True)
class AwsSettings:
    region: str | None = None  # None: botocore's default chain decides


@dataclass(frozen=True)
class GitHubSettings:
    webhook_secrets: tuple[SecretRef, ...]
    api_url: str = "https://api.github.com"
    app_id: int | None = None
    private_key: SecretRef | None = None
    token: SecretRef | None = None
    repository_hosts: tuple[str, ...] = ()
    # Secrets that verify deliveries of some repositories only (globs); the others verify any.
    secret_scopes: Mapping[SecretRef, tuple[str, ...]] = field(default_factory=dict, hash=False)
    approval_command: str = DEFAULT_APPROVAL_COMMAND

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """Where repository URLs in deliveries may point: the configured hosts, else api_url's web host."""
        return self.repository_hosts or (github_web_host(self.api_url),)


@dataclass(frozen=True)
class GitLabSettings:
    token: SecretRef
    url: str = "https://gitlab.com"
    webhook_tokens: tuple[SecretRef, ...] = ()
    signing_tokens: tuple[SecretRef, ...] = ()
    repository_hosts: tuple[str, ...] = ()
    # Tokens that verify deliveries of some projects only (globs); the others verify any.
    secret_scopes: Mapping[SecretRef, tuple[str, ...]] = field(default_factory=dict, hash=False)
    approval_command: str = DEFAULT_APPROVAL_COMMAND

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v4"

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """Where repository URLs in deliveries may point: the configured hosts, else url's host[:port]."""
        return self.repository_hosts or (_site(self.url),)


def github_web_host(api_url: str) -> str:
    """github.com for api.github.com, acme.ghe.com for api.acme.ghe.com, HOST[:PORT] for HOST[:PORT]/api/v3
    (GitHub Enterprise Server)."""
    parts = urlsplit(api_url)
    host = (parts.hostname or "").lower()
    if not parts.path.rstrip("/").endswith("/api/v3") and host.startswith("api."):
        return host.removeprefix("api.")
    return _site(api_url)


def _site(url: str) -> str:
    """host, or host:port when the URL names a port other than its scheme's default."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port == {"http": 80, "https": 443}.get(parts.scheme):
        return host
    return f"{host}:{port}"


@dataclass(frozen=True)
class SnsSettings:
    topic_arns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """One `[[routes]]` entry. Events, branches and tags are matched by bridge.routing."""

    name: str
    provider: Provider
    repositories: tuple[str, ...]
    project: str
    events: tuple[EventKind, ...] = ("push", "pull_request", "merge_request", "rerun")
    branches: tuple[str, ...] = ("*",)
    tags: tuple[str, ...] = ("*",)
    drafts: bool = False
    forks: ForkPolicy = "never"
    fork_image_repository: str | None = None
    builder: str = "codebuild"
    source_mode: SourceMode = "native"
    clone_token: SecretRef | None = None
    image_repository: str | None = None
    image_tag: str | None = None
    buildspec: str | None = None
    env: tuple[EnvVar, ...] = ()
    compute_type: str | None = None
    build_image: str | None = None
    privileged_mode: bool | None = None
    timeout_minutes: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)
    batch: bool = False
    registry_credentials: SecretRef | None = None
    registry_server: str | None = None
    cache: CacheMode = "registry"
    platforms: tuple[str, ...] = ()
    sign: str | None = None

    @property
    def context(self) -> str:
        """The check run name / commit status context this route reports under."""
        return f"codebuild/{self.name}"


@dataclass(frozen=True)
class LocalBuilderSettings:
    """`[builders.local]`: off unless `enabled`, because it runs repository code on this host."""

    enabled: bool = False
    tool: str = "auto"  # auto: the first of buildah, podman, docker on PATH
    work_dir: Path = Path("bridge-builds")
    max_concurrent_builds: int = 2
    isolation: str | None = None  # buildah/podman --isolation (chroot where user namespaces are missing)
    storage_driver: str | None = None  # buildah/podman --storage-driver (vfs works everywhere)
    storage_root: Path | None = None  # buildah/podman --root/--runroot; None: the tool's default
    tls_verify: bool = True


@dataclass(frozen=True)
class StoreSettings:
    """`[store]`: SQLite (one replica, the default) or DynamoDB shared by several replicas."""

    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    table: str | None = None
    retention_days: int = 30
    lease_seconds: int = 60


@dataclass(frozen=True)
class QueueSettings:
    """`[queue]`: the SQS queue between intake and workers (only with the dynamodb store)."""

    url: str | None = None
    visibility_timeout_seconds: int = 60
    wait_seconds: int = 10


@dataclass(frozen=True)
class Config:
    server: ServerSettings
    aws: AwsSettings
    github: GitHubSettings | None
    gitlab: GitLabSettings | None
    sns: SnsSettings
    routes: tuple[Route, ...]
    local_builder: LocalBuilderSettings = field(default_factory=LocalBuilderSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)


class InvalidConfigError(ConfigError):
    """Every problem found in one file. `errors` holds each one with its own key and hint."""

    def __init__(self, errors: Sequence[ConfigError], *, source: str = "config") -> None:
        self.errors = list(errors)
        count = len(self.errors)
        listing = "\n".join(f"  - {error}" for error in self.errors)
        super().__init__(f"{source}: {count} error{'' if count == 1 else 's'}\n{listing}", hint="")


_PROVIDER_EVENTS: Final[Mapping[Provider, tuple[EventKind, ...]]] = {
    "github": ("push", "tag", "pull_request", "release", "rerun"),
    "gitlab": ("push", "tag", "merge_request"),
}
_DEFAULT_EVENTS: Final[Mapping[Provider, tuple[EventKind, ...]]] = {
    "github": ("push", "pull_request", "rerun"),
    "gitlab": ("push", "merge_request"),
}


def default_events(provider: Provider) -> tuple[EventKind, ...]:
    """Tags and releases are opt-in: a release pipeline usually wants its own route and project."""
    return _DEFAULT_EVENTS[provider]


# --- the schema: one list drives validation and the generated docs ---------------------------------

_Kind = Literal["string", "url", "integer", "boolean", "strings", "secret", "secrets", "table"]


@dataclass(frozen=True)
class _Key:
    name: str
    kind: _Kind
    description: str
    default: Any = None
    default_doc: str | None = None  # how the default reads in the docs, when not the literal value
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    pattern: re.Pattern[str] | None = None
    form: str = ""  # what `pattern` (or a table) accepts, in words: shown in hints and docs
    schemes: tuple[str, ...] = ("secretsmanager", "env")


@dataclass(frozen=True)
class _Section:
    path: str  # "server", or "routes[]" for the array of tables
    keys: tuple[_Key, ...]
    description: str


@dataclass(frozen=True)
class KeyDoc:
    """One documented key; `path` uses `routes[]` for keys of every route."""

    path: str
    type: str
    default: str
    allowed: str
    description: str
    required: bool = False


_GLOB_FORM = 'glob patterns (`*`, `?`, `[abc]`); a leading "!" excludes; at least one pattern without "!"'
_REFERENCE_FORM = "secretsmanager:NAME_OR_ARN[#json-key] or env:NAME"
_SM_ONLY_FORM = "secretsmanager:NAME_OR_ARN[#json-key]"
_EVENTS = ("push", "tag", "pull_request", "merge_request", "release", "rerun")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_]{1,254}")
_ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}(:\d{1,5})?$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
    r"(:\d{1,5})?"
)
_SNS_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")
_COMPUTE_TYPE = re.compile(
    r"BUILD_GENERAL1_[A-Z0-9]+|BUILD_LAMBDA_\d+GB|ATTRIBUTE_BASED_COMPUTE|CUSTOM_INSTANCE_TYPE"
)
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REPOSITORY = re.compile(rf"(?:[A-Za-z0-9.-]+(?::\d+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_APPROVAL_COMMAND = re.compile(r"\S{1,100}")
_TAG_PLACEHOLDERS: Final = ("sha", "short_sha", "branch", "tag", "pr", "ref_slug")
_TAG_LITERAL = re.compile(r"[A-Za-z0-9_.-]*")

_SERVER_KEYS = (
    _Key(
        "public_url",
        "url",
        "Base URL the server is reachable at; used in links and logs.",
        default_doc="(none)",
    ),
    _Key(
        "max_body_bytes",
        "integer",
        "Largest webhook body accepted; larger ones get 413. GitHub caps payloads at 25 MB.",
        default=26_214_400,
        minimum=1024,
        maximum=104_857_600,
    ),
    _Key(
        "poll_interval_seconds",
        "integer",
        "How often running builds are polled (EventBridge events, when wired, arrive sooner); all running"
        " builds share one BatchGetBuilds call per interval.",
        default=15,
        minimum=1,
        maximum=600,
    ),
    _Key(
        "state_path",
        "string",
        "SQLite file holding deliveries and tracked builds; relative to the config file's directory."
        " Its folder is created when missing.",
        default_doc="$XDG_STATE_HOME/bridge/bridge.sqlite3 (~/.local/state/bridge/bridge.sqlite3)",
    ),
    _Key("threads", "integer", "gunicorn threads serving webhooks.", default=8, minimum=1, maximum=64),
    _Key(
        "max_build_starts_per_second",
        "integer",
        "How many StartBuild calls the worker makes a second at most (as many at once), per replica."
        " Each costs the server CPU the webhook acks share; CodeBuild runs 20 to 60 builds at once by"
        " default, so a higher rate mostly earns AccountLimitExceededException retries.",
        default=10,
        minimum=1,
        maximum=1000,
    ),
    _Key(
        "operator_page",
        "string",
        "The operator page at / (recent deliveries, builds, commit statuses; docs/operator.md). auto:"
        " served only when the server binds a loopback address, to local clients; on: served to anyone"
        " who reaches the server (opt-in for a public bind); off: never. With operator_token set, it is"
        " served on any bind to whoever gives the token.",
        default="auto",
        choices=("auto", "on", "off"),
    ),
    _Key(
        "operator_token",
        "secret",
        "Password for the operator page (HTTP basic auth, any user name): the page is then served on"
        " any bind, to whoever gives it.",
        default_doc="(none)",
    ),
    _Key(
        "start_retry_max_delay_seconds",
        "integer",
        "Longest pause between attempts to start a delivery's build while CodeBuild refuses (quota,"
        " throttling) or cannot be reached. Attempts go on, doubling from 2 s up to this, for as long as"
        " the state store keeps the delivery; errors that cannot heal (access denied, unknown project,"
        " no credentials) are not retried.",
        default=120,
        minimum=1,
        maximum=3600,
    ),
    _Key(
        "start_lookup_after_seconds",
        "integer",
        "How long after a delivery arrived a new attempt to start its build first looks for a build an"
        " earlier attempt started (ListBuildsForProject; the build's BRIDGE_DELIVERY_ID variable names the"
        " delivery). CodeBuild forgets a StartBuild idempotency token after 5 minutes; until then the"
        " token alone prevents a second build.",
        default=240,
        minimum=0,
        maximum=300,
    ),
    _Key(
        "header_timeout_seconds",
        "integer",
        "How long a client has, from connecting, to send a request's headers; then the connection is"
        " closed. Requests arrive without holding a request thread, so slow clients cost no capacity.",
        default=10,
        minimum=1,
        maximum=300,
    ),
    _Key(
        "body_timeout_seconds",
        "integer",
        "How long a client has, after its headers, to send the whole body; then the connection is closed.",
        default=30,
        minimum=1,
        maximum=600,
    ),
    _Key(
        "max_inflight_body_bytes",
        "integer",
        "Bytes of request bodies the server holds at once while they arrive and are verified; a body"
        " that would exceed it waits (unread) until others finish. At least max_body_bytes is used.",
        default=67_108_864,
        minimum=1024,
        maximum=1_073_741_824,
    ),
)

_AWS_KEYS = (
    _Key(
        "region",
        "string",
        "AWS region for CodeBuild, CloudWatch Logs and Secrets Manager.",
        default_doc="botocore's default chain (AWS_REGION, profile, instance metadata)",
        pattern=_REGION,
        form="an AWS region name such as eu-west-1",
    ),
)

_GITHUB_KEYS = (
    _Key(
        "api_url",
        "url",
        "REST API root; https://HOST/api/v3 for GitHub Enterprise Server.",
        default="https://api.github.com",
    ),
    _Key(
        "app_id",
        "integer",
        "GitHub App id. With private_key, results are posted as check runs.",
        minimum=1,
        default_doc="(none)",
    ),
    _Key("private_key", "secret", "The GitHub App's PEM private key.", default_doc="(none)"),
    _Key(
        "token",
        "secret",
        "A token for commit statuses, when no App is configured (needs repo:status / statuses: write).",
        default_doc="(none)",
    ),
    _Key(
        "webhook_secrets",
        "secrets",
        "Webhook secrets checked against X-Hub-Signature-256; list two while rotating. An entry may be "
        '`{ secret = REFERENCE, repositories = ["owner/*"] }`: a delivery it verifies builds only those '
        "repositories (for a repository webhook whose secret is typed into each repository).",
        required=True,
    ),
    _Key(
        "repository_hosts",
        "strings",
        "Hosts that repository URLs in deliveries (clone_url, html_url) may name; a delivery naming "
        "another host is not built, so a payload cannot aim a build at an internal address.",
        default_doc="api_url's web host (github.com for api.github.com)",
        pattern=_HOSTNAME,
        form="lowercase host names such as github.com, with :PORT for a port other than 443/80",
    ),
    _Key(
        "approval_command",
        "string",
        'The comment that approves a fork pull request\'s head commit for routes with forks = "approve": '
        "its first line is the command alone, or the command and the head's SHA. Only people with write "
        "access may approve, as GitHub's collaborators API says.",
        default=DEFAULT_APPROVAL_COMMAND,
        pattern=_APPROVAL_COMMAND,
        form="one word without spaces, such as /ok-to-build",
    ),
)

_GITLAB_KEYS = (
    _Key("url", "url", "GitLab instance root (the API is at URL/api/v4).", default="https://gitlab.com"),
    _Key("token", "secret", "Token with the api scope, used to post commit statuses.", required=True),
    _Key(
        "webhook_tokens",
        "secrets",
        "Secret tokens compared with X-Gitlab-Token (the hook's 'Secret token'). An entry may be "
        '`{ secret = REFERENCE, repositories = ["group/*"] }`: a delivery it verifies builds only those '
        "projects, so a token pasted into a low-trust project cannot build another.",
        default_doc="[]",
    ),
    _Key(
        "signing_tokens",
        "secrets",
        "Signing tokens (whsec_...) for GitLab's Standard Webhooks signatures; scoped to projects like "
        "webhook_tokens.",
        default_doc="[]",
    ),
    _Key(
        "repository_hosts",
        "strings",
        "Hosts that repository URLs in deliveries (git_http_url, web_url) may name; a delivery naming "
        "another host is not built, so a payload cannot aim a build or its clone token elsewhere.",
        default_doc="url's host",
        pattern=_HOSTNAME,
        form="lowercase host names such as gitlab.example.com, with :PORT for a port other than 443/80",
    ),
    _Key(
        "approval_command",
        "string",
        'The comment that approves a fork merge request\'s head commit for routes with forks = "approve": '
        "its first line is the command alone, or the command and the head's SHA. Only members with the "
        "Developer role or more may approve, as GitLab's members API says.",
        default=DEFAULT_APPROVAL_COMMAND,
        pattern=_APPROVAL_COMMAND,
        form="one word without spaces, such as /ok-to-build",
    ),
)

_SNS_KEYS = (
    _Key(
        "topic_arns",
        "strings",
        "SNS topics whose CodeBuild state-change notifications /events/codebuild accepts.",
        required=True,
        pattern=_SNS_ARN,
        form="SNS topic ARNs (arn:aws:sns:REGION:ACCOUNT:NAME)",
    ),
)

_LOCAL_BUILDER_KEYS = (
    _Key(
        "enabled",
        "boolean",
        'The switch that allows routes with builder = "local": their repository\'s Dockerfile then runs '
        "on this host, with this host's network and the build tool's privileges.",
        default=False,
    ),
    _Key(
        "tool",
        "string",
        "Build tool; auto takes the first of buildah, podman, docker found on PATH.",
        default="auto",
        choices=("auto", "buildah", "podman", "docker"),
    ),
    _Key(
        "work_dir",
        "string",
        "Build records (JSON), logs and checkouts; relative to the config file's directory.",
        default="bridge-builds",
    ),
    _Key(
        "max_concurrent_builds",
        "integer",
        "Builds running at once; later ones wait as QUEUED.",
        default=2,
        minimum=1,
        maximum=64,
    ),
    _Key(
        "isolation",
        "string",
        "buildah/podman --isolation; chroot works where user namespaces are not available.",
        default_doc="the tool's default",
        choices=("oci", "chroot", "rootless"),
    ),
    _Key(
        "storage_driver",
        "string",
        "buildah/podman --storage-driver; vfs works on any file system (slower, more disk).",
        default_doc="the tool's default",
        choices=("overlay", "vfs", "btrfs", "zfs"),
    ),
    _Key(
        "storage_root",
        "string",
        "buildah/podman image storage (--root, --runroot below it); relative to the config file's directory.",
        default_doc="the tool's default (/var/lib/containers/storage for root)",
    ),
    _Key(
        "tls_verify",
        "boolean",
        "Verify the registry's TLS certificate when pushing (false only for a registry on localhost).",
        default=True,
    ),
)

_ROUTE_KEYS = (
    _Key(
        "name",
        "string",
        "Unique route name; results are reported as codebuild/NAME.",
        required=True,
        pattern=_ROUTE_NAME,
        form="lowercase letters, digits and '-', at most 63 characters",
    ),
    _Key("provider", "string", "Where the webhook comes from.", required=True, choices=("github", "gitlab")),
    _Key(
        "repositories",
        "strings",
        "Repositories (owner/name, or the GitLab project path) this route builds. Matching ignores case; "
        "`*` also matches `/`, so `acme/*` includes GitLab subgroups.",
        required=True,
        form=_GLOB_FORM,
    ),
    _Key(
        "events",
        "strings",
        "Events that start a build. GitHub: push, tag, pull_request, release (published), rerun "
        "(re-run requested from the checks UI). GitLab: push, tag, merge_request.",
        default_doc="GitHub: push, pull_request, rerun; GitLab: push, merge_request",
        choices=_EVENTS,
    ),
    _Key(
        "branches",
        "strings",
        "Branches built: the pushed branch for push events, the TARGET (base) branch for pull/merge "
        "requests. Not applied to tags, releases and reruns.",
        default=("*",),
        form=_GLOB_FORM,
    ),
    _Key(
        "tags",
        "strings",
        "Tags built, for tag and release events.",
        default=("*",),
        form=_GLOB_FORM,
    ),
    _Key("drafts", "boolean", "Also build draft pull requests / merge requests.", default=False),
    _Key(
        "forks",
        "string",
        "Pull/merge requests from forks: `never` build them; `without-secrets`: build them with no "
        "secret or parameter-store variable, no registry credentials and no clone token; `approve`: "
        "wait until a maintainer approves the head commit, then build it with the route's variables; "
        "`allow`: build every fork commit with the route's variables (only where every fork author is "
        "trusted). A fork build never pushes to image_repository or writes the layer cache: it pushes "
        "only to fork_image_repository, as pr-<n>-<sha>. See SECURITY.md.",
        default="never",
        choices=("never", "without-secrets", "approve", "allow"),
    ),
    _Key(
        "fork_image_repository",
        "string",
        "Registry/repository that fork builds push to, tagged pr-<n>-<sha> (never image_repository). "
        "Unset: fork builds build the image without pushing it.",
        default_doc="(none: fork builds do not push)",
        pattern=_IMAGE_REPOSITORY,
        form="REGISTRY/REPOSITORY without a tag, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/web-forks",
    ),
    _Key(
        "project",
        "string",
        "CodeBuild project that runs the build.",
        required=True,
        pattern=_PROJECT,
        form="a CodeBuild project name ([A-Za-z0-9][A-Za-z0-9-_]{1,254})",
    ),
    _Key(
        "builder",
        "string",
        "Where the build runs: `codebuild` (AWS CodeBuild) or `local` (buildah, podman or docker on the "
        "bridge's own host; needs [builders.local] enabled = true, see docs/local-builder.md).",
        default="codebuild",
        form="codebuild, local (or a builder a plug-in registered)",
    ),
    _Key(
        "source_mode",
        "string",
        "GitLab only: `native` uses CodeBuild's GitLab source (a CodeConnections connection); `clone` "
        "starts a NO_SOURCE build that clones with clone_token.",
        default="native",
        choices=("native", "clone"),
    ),
    _Key(
        "clone_token",
        "secret",
        "Clone mode: token CodeBuild reads from Secrets Manager to clone the repository.",
        default_doc="(none)",
        schemes=("secretsmanager",),
    ),
    _Key(
        "image_repository",
        "string",
        "Registry/repository to push to (no tag); enables the packaged image buildspec.",
        default_doc="(none)",
        pattern=_IMAGE_REPOSITORY,
        form="REGISTRY/REPOSITORY without a tag, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/web",
    ),
    _Key(
        "image_tag",
        "string",
        "Image tag template.",
        default="{sha}",
        form="a tag with placeholders " + ", ".join(f"{{{name}}}" for name in _TAG_PLACEHOLDERS),
    ),
    _Key(
        "buildspec",
        "string",
        "Buildspec path in the repository, or inline YAML.",
        default_doc="the project's buildspec (or the packaged one when image_repository is set)",
    ),
    _Key(
        "env",
        "table",
        "Extra environment variables. Values as in the Action's env-vars: a plain value, "
        "secretsmanager:ID[#json-key] (or CodeBuild's id:json-key:stage:version form) or ssm:/parameter. "
        "Fork builds get only the plain ones unless approved (forks = approve) or allowed (forks = allow).",
        default_doc="{}",
        form="NAME = VALUE table of strings",
    ),
    _Key(
        "compute_type",
        "string",
        "CodeBuild compute type override.",
        default_doc="the project's",
        pattern=_COMPUTE_TYPE,
        form="a CodeBuild compute type such as BUILD_GENERAL1_MEDIUM",
    ),
    _Key("build_image", "string", "CodeBuild image override.", default_doc="the project's"),
    _Key(
        "privileged_mode",
        "boolean",
        "Run Docker in the build (needed to build images).",
        default_doc="true when image_repository is set, else the project's",
    ),
    _Key(
        "timeout_minutes",
        "integer",
        "Build timeout.",
        default_doc="the project's",
        minimum=5,
        maximum=2160,
    ),
    _Key(
        "overrides",
        "table",
        "Any other StartBuild parameter, passed as is (e.g. queuedTimeoutInMinutesOverride).",
        default_doc="{}",
        form="StartBuild parameter names (lowerCamelCase) not set through another key",
    ),
    _Key(
        "batch",
        "boolean",
        "Start a batch build (StartBuildBatch; the buildspec's `batch:` section lists the builds); the "
        "commit gets one status summarising every build of the batch.",
        default=False,
    ),
    _Key(
        "registry_credentials",
        "secret",
        "Registry login for the build: a Secrets Manager JSON secret with `username` and `password`, "
        "handed to the build as SECRETS_MANAGER variables (REGISTRY_USERNAME/REGISTRY_PASSWORD). Not "
        "needed for ECR, where the project's role logs in. Fork builds get it only when approved "
        "(forks = approve) or allowed (forks = allow).",
        default_doc="(none)",
        schemes=("secretsmanager",),
    ),
    _Key(
        "registry_server",
        "string",
        "Registry host the registry_credentials log in to (e.g. docker.io while pushing to ECR).",
        default_doc="the host of image_repository",
        pattern=re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?"),
        form="a registry host name with an optional :port, e.g. ghcr.io",
    ),
    _Key(
        "cache",
        "string",
        "Layer cache of the packaged image buildspecs: `registry` keeps it next to the image "
        "(`<image_repository>:buildcache-<branch>`, read with the default or base branch's as a fallback; "
        "buildx registry cache, or BuildKit's inline cache where buildx is missing); `inline` always uses "
        "the inline cache; `local` is CodeBuild's short-lived LOCAL_DOCKER_LAYER_CACHE; `none` builds cold. "
        "Fork builds read the cache but never write it.",
        default="registry",
        choices=("registry", "inline", "local", "none"),
    ),
    _Key(
        "sign",
        "string",
        "Sign the pushed image digest with cosign and this AWS KMS key (the build's role needs kms:Sign, "
        "kms:GetPublicKey and kms:DescribeKey on it: SigningKeyArns in deploy/). Fork builds never sign.",
        default_doc="(none)",
        pattern=re.compile(r"awskms:///\S+"),
        form="awskms:///alias/NAME, awskms:///KEY-ID or awskms:///arn:aws:kms:REGION:ACCOUNT:key/KEY-ID",
    ),
    _Key(
        "platforms",
        "strings",
        "Image platforms, each built natively: linux/arm64 alone runs on ARM_CONTAINER with an aarch64 "
        "curated image; both are a batch of one build per platform (each pushing its image by digest) "
        "and a merge build that pushes the multi-platform index of those digests under the tag itself.",
        default_doc="[] (the project's own platform)",
        form='a list of "linux/amd64", "linux/arm64"',
    ),
)

_DYNAMODB_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")

_STORE_KEYS = (
    _Key(
        "backend",
        "string",
        "Where deliveries and tracked builds live: sqlite (server.state_path, one replica) or dynamodb "
        "(shared by several replicas; needs [queue] url).",
        default="sqlite",
        choices=("sqlite", "dynamodb"),
    ),
    _Key(
        "table",
        "string",
        'DynamoDB table name (the stack\'s StateTable output). Required with backend = "dynamodb".',
        default_doc="(none)",
        pattern=_DYNAMODB_TABLE,
        form="a DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)",
    ),
    _Key(
        "retention_days",
        "integer",
        "How long a delivery id is remembered (redeliveries within it are duplicates) and a finished build"
        " kept; DynamoDB's TTL deletes older rows.",
        default=30,
        minimum=1,
        maximum=3650,
    ),
    _Key(
        "lease_seconds",
        "integer",
        "How long a replica holds a build it reports on, or a delivery it starts (SQLite); a replica that"
        " dies holding one is replaced after this long.",
        default=60,
        minimum=2,
        maximum=3600,
    ),
)

_QUEUE_KEYS = (
    _Key(
        "url",
        "url",
        'SQS queue URL (the stack\'s DeliveryQueueUrl output). Required with store.backend = "dynamodb".',
        default_doc="(none)",
    ),
    _Key(
        "visibility_timeout_seconds",
        "integer",
        "How long a received delivery stays hidden from other replicas; if its replica dies, another takes"
        " it after this long. Keep it above a StartBuild's worst case.",
        default=60,
        minimum=2,
        maximum=43_200,
    ),
    _Key(
        "wait_seconds",
        "integer",
        "Long-poll wait of each receive (SQS bills per request, so waiting is cheaper than asking often).",
        default=10,
        minimum=0,
        maximum=20,
    ),
)

_SECTIONS: Final = (
    _Section("server", _SERVER_KEYS, "Optional. The webhook server."),
    _Section("aws", _AWS_KEYS, "Optional."),
    _Section(
        "github",
        _GITHUB_KEYS,
        "Optional; needed by GitHub routes. Set app_id + private_key (check runs), or token "
        "(commit statuses), or both.",
    ),
    _Section(
        "gitlab",
        _GITLAB_KEYS,
        "Optional; needed by GitLab routes. Set webhook_tokens, signing_tokens, or both.",
    ),
    _Section("sns", _SNS_KEYS, "Optional; needed to receive CodeBuild events through SNS."),
    _Section(
        "builders.local",
        _LOCAL_BUILDER_KEYS,
        "Optional. The `local` builder runs the repository's Dockerfile ON THIS HOST: only for "
        "repositories whose every committer you trust (see docs/local-builder.md).",
    ),
    _Section(
        "store",
        _STORE_KEYS,
        "Optional. The state store; see docs/scaling.md for running several replicas on DynamoDB.",
    ),
    _Section("queue", _QUEUE_KEYS, 'Optional; needed by store.backend = "dynamodb".'),
    _Section(
        "routes[]",
        _ROUTE_KEYS,
        "Zero or more `[[routes]]` tables, tried in order: the first route that matches an event builds it.",
    ),
)
_TOP_LEVEL: Final = tuple(
    dict.fromkeys(section.path.removesuffix("[]").split(".")[0] for section in _SECTIONS)
)

# StartBuild's parameters (botocore's codebuild model; tests/test_config.py keeps this list in sync).
_START_BUILD_PARAMETERS: Final = frozenset(
    {
        "projectName", "secondarySourcesOverride", "secondarySourcesVersionOverride", "sourceVersion",
        "artifactsOverride", "secondaryArtifactsOverride", "environmentVariablesOverride",
        "sourceTypeOverride", "sourceLocationOverride", "sourceAuthOverride", "gitCloneDepthOverride",
        "gitSubmodulesConfigOverride", "buildspecOverride", "insecureSslOverride",
        "reportBuildStatusOverride", "buildStatusConfigOverride", "environmentTypeOverride",
        "imageOverride", "computeTypeOverride", "certificateOverride", "cacheOverride",
        "serviceRoleOverride", "privilegedModeOverride", "timeoutInMinutesOverride",
        "queuedTimeoutInMinutesOverride", "encryptionKeyOverride", "idempotencyToken",
        "logsConfigOverride", "registryCredentialOverride", "imagePullCredentialsTypeOverride",
        "debugSessionEnabled", "fleetOverride", "autoRetryLimitOverride", "hostKernelOverride",
    }
)  # fmt: skip
# Parameters the bridge sets itself, and the route key to use instead (None: derived from the event).
_MANAGED_PARAMETERS: Final[Mapping[str, str | None]] = {
    "projectName": "project",
    "idempotencyToken": None,
    "sourceVersion": None,
    "sourceTypeOverride": "source_mode",
    "sourceLocationOverride": None,
    "environmentVariablesOverride": "env",
    "buildspecOverride": "buildspec",
    "computeTypeOverride": "compute_type",
    "imageOverride": "build_image",
    "privilegedModeOverride": "privileged_mode",
    "timeoutInMinutesOverride": "timeout_minutes",
}

# Route keys only a builder that runs buildspecs (CodeBuild) can honour.
_CODEBUILD_ONLY_ROUTE_KEYS: Final = (
    "buildspec",
    "compute_type",
    "build_image",
    "privileged_mode",
    "overrides",
    "source_mode",
    "clone_token",
)


# --- reading ------------------------------------------------------------------------------------------


class _Invalid:
    """Marks a key that already produced an error, so later checks do not pile on."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Final = _Invalid()


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _allowed(key: _Key) -> str:
    if key.kind in ("secret", "secrets"):
        form = _REFERENCE_FORM if key.schemes == ("secretsmanager", "env") else _SM_ONLY_FORM
        return form if key.kind == "secret" else f"one or more of {form}"
    if key.choices:
        return ", ".join(key.choices)
    if key.minimum is not None and key.maximum is not None:
        return f"{key.minimum}..{key.maximum}"
    if key.minimum is not None:
        return f">= {key.minimum}"
    if key.kind == "url":
        return "https URL (http only for localhost)"
    if key.kind == "boolean":
        return "true, false"
    return key.form


def _hint(key: _Key) -> str:
    if key.kind in ("secret", "secrets"):
        hint = EXPECTED_FORMS
        return hint if key.schemes != ("secretsmanager",) else f"write {_SM_ONLY_FORM}: CodeBuild reads it"
    allowed = _allowed(key)
    return f"allowed: {allowed}" if allowed else f"{key.name} takes {key.kind}"


_SCOPED_FORM = '{ secret = "secretsmanager:NAME_OR_ARN[#json-key]", repositories = ["group/*"] }'


class _Reader:
    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        # Secrets scoped to repository globs: a delivery they verify builds only those repositories.
        self.scopes: dict[SecretRef, tuple[str, ...]] = {}

    def error(self, key: str, message: str, hint: str) -> _Invalid:
        self.errors.append(ConfigError(message, key=key, hint=hint))
        return _INVALID

    def table(self, raw: object, keys: Sequence[_Key], path: str) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            self.error(path, f"must be a table, not {_toml_type(raw)}", hint=f"write a [{path}] section")
            return None
        known = [key.name for key in keys]
        for name in raw:
            if name not in known:
                self.error(
                    f"{path}.{name}",
                    f"unknown key{_suggest(name, known)}",
                    hint=f"keys of {path}: {', '.join(known)}",
                )
        values: dict[str, Any] = {}
        for key in keys:
            where = f"{path}.{key.name}"
            if key.name in raw:
                values[key.name] = self.value(raw[key.name], key, where)
            elif key.required:
                values[key.name] = self.error(where, "is required", hint=_hint(key))
            else:
                values[key.name] = key.default
        return values

    def value(self, raw: object, key: _Key, where: str) -> Any:
        kind = key.kind
        if kind == "secret":
            return self.secret(raw, key, where)
        if kind == "secrets":
            return self.secrets(raw, key, where)
        if kind in ("string", "url"):
            return self.string(raw, key, where)
        if kind == "integer":
            if isinstance(raw, bool) or not isinstance(raw, int):
                return self.error(where, f"must be an integer, not {_toml_type(raw)}", hint=_hint(key))
            if (key.minimum is not None and raw < key.minimum) or (
                key.maximum is not None and raw > key.maximum
            ):
                return self.error(where, f"{raw} is out of range", hint=_hint(key))
            return raw
        if kind == "boolean":
            if not isinstance(raw, bool):
                return self.error(where, f"must be true or false, not {_toml_type(raw)}", hint=_hint(key))
            return raw
        if kind == "strings":
            if not isinstance(raw, list):
                return self.error(
                    where, f"must be an array of strings, not {_toml_type(raw)}", hint=_hint(key)
                )
            if not raw:
                return self.error(where, "must not be empty", hint=_hint(key))
            items = [self.string(item, key, f"{where}[{i}]") for i, item in enumerate(raw)]
            return _INVALID if any(item is _INVALID for item in items) else tuple(items)
        if not isinstance(raw, dict):  # "table": its entries are checked by the caller
            return self.error(where, f"must be a table, not {_toml_type(raw)}", hint=f"allowed: {key.form}")
        return raw

    def string(self, raw: object, key: _Key, where: str) -> str | _Invalid:
        if not isinstance(raw, str):
            return self.error(where, f"must be a string, not {_toml_type(raw)}", hint=_hint(key))
        if not raw.strip():
            return self.error(where, "must not be empty", hint=_hint(key))
        if key.choices and raw not in key.choices:
            return self.error(
                where, f"{_shown(raw)} is not allowed{_suggest(raw, key.choices)}", hint=_hint(key)
            )
        if key.pattern is not None and not key.pattern.fullmatch(raw):
            return self.error(where, f"{_shown(raw)} is not in the allowed form", hint=_hint(key))
        if key.kind == "url":
            return self.url(raw, key, where)
        return raw

    def url(self, raw: str, key: _Key, where: str) -> str | _Invalid:
        parts = urlsplit(raw)
        loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            return self.error(where, f"{_shown(raw)} is not an absolute URL", hint=_hint(key))
        if parts.scheme == "http" and not loopback:
            return self.error(
                where,
                "must use https: tokens would travel in clear text",
                hint="use https:// (plain http is accepted only for localhost)",
            )
        if parts.username or parts.password:
            return self.error(where, "must not contain credentials", hint="put tokens in their own keys")
        return raw.rstrip("/")

    def secret(self, raw: object, key: _Key, where: str) -> SecretRef | _Invalid:
        """Never echo `raw`: if it is not a reference it is probably the secret itself."""
        if not isinstance(raw, str):
            return self.error(where, f"must be a secret reference, not {_toml_type(raw)}", hint=_hint(key))
        try:
            ref = parse_reference(raw, key=where)
        except ConfigError as exc:
            self.errors.append(exc)
            return _INVALID
        if ref.scheme not in key.schemes:
            return self.error(
                where,
                "must be a Secrets Manager reference: CodeBuild reads this secret itself, and an env: "
                "value would be sent to it in plain text",
                hint=_hint(key),
            )
        return ref

    def secrets(self, raw: object, key: _Key, where: str) -> tuple[SecretRef, ...] | _Invalid:
        if not isinstance(raw, list):
            return self.error(
                where, f"must be an array of secret references, not {_toml_type(raw)}", hint=_hint(key)
            )
        if not raw:
            return self.error(where, "must list at least one reference", hint=_hint(key))
        refs = [self.scoped_secret(item, key, f"{where}[{i}]") for i, item in enumerate(raw)]
        valid = [ref for ref in refs if isinstance(ref, SecretRef)]
        return tuple(valid) if len(valid) == len(refs) else _INVALID

    def scoped_secret(self, raw: object, key: _Key, where: str) -> SecretRef | _Invalid:
        """A reference, or `{ secret = REFERENCE, repositories = [GLOB, ...] }`: a webhook secret or token
        that verifies deliveries of those repositories only (kept in `self.scopes`)."""
        if not isinstance(raw, dict):
            return self.secret(raw, key, where)
        unknown = sorted(set(raw) - {"secret", "repositories"})
        if unknown or "secret" not in raw or "repositories" not in raw:
            return self.error(
                where,
                "a scoped secret is a table with exactly the keys secret and repositories",
                hint=_SCOPED_FORM,
            )
        ref = self.secret(raw["secret"], key, f"{where}.secret")
        repositories = raw["repositories"]
        if (
            not isinstance(repositories, list)
            or not repositories
            or not all(isinstance(item, str) and item for item in repositories)
        ):
            return self.error(
                f"{where}.repositories", "must be a non-empty array of strings", hint=_SCOPED_FORM
            )
        globs = tuple(repositories)
        self.globs(globs, f"{where}.repositories")
        if isinstance(ref, SecretRef):
            self.scopes[ref] = (*self.scopes.get(ref, ()), *globs)
        return ref

    # --- sections -------------------------------------------------------------------------------

    def server(self, raw: object, base_dir: Path) -> ServerSettings:
        values = self.table(raw, _SERVER_KEYS, "server")
        if values is None or any(value is _INVALID for value in values.values()):
            return ServerSettings()
        state_path = (
            Path(values["state_path"]).expanduser()
            if values["state_path"] is not None
            else default_state_path()
        )
        return ServerSettings(
            public_url=values["public_url"],
            max_body_bytes=values["max_body_bytes"],
            poll_interval_seconds=values["poll_interval_seconds"],
            state_path=state_path if state_path.is_absolute() else base_dir / state_path,
            threads=values["threads"],
            max_build_starts_per_second=values["max_build_starts_per_second"],
            start_retry_max_delay_seconds=values["start_retry_max_delay_seconds"],
            start_lookup_after_seconds=values["start_lookup_after_seconds"],
            operator_page=values["operator_page"],
            operator_token=values["operator_token"],
            header_timeout_seconds=values["header_timeout_seconds"],
            body_timeout_seconds=values["body_timeout_seconds"],
            max_inflight_body_bytes=values["max_inflight_body_bytes"],
        )

    def aws(self, raw: object) -> AwsSettings:
        values = self.table(raw, _AWS_KEYS, "aws")
        if values is None or values["region"] is _INVALID:
            return AwsSettings()
        return AwsSettings(region=values["region"])

    def github(self, raw: object) -> GitHubSettings | None:
        values = self.table(raw, _GITHUB_KEYS, "github")
        if values is None:
            return None
        app_id, private_key, token = values["app_id"], values["private_key"], values["token"]
        if (app_id is None) != (private_key is None):
            missing = "private_key" if private_key is None else "app_id"
            self.error(
                f"github.{missing}",
                "is required with " + ("app_id" if missing == "private_key" else "private_key"),
                hint="a GitHub App needs both app_id and private_key",
            )
        elif app_id is None and token is None:
            self.error(
                "github",
                "has no credentials to report results with",
                hint="set app_id + private_key (check runs) or token (commit statuses)",
            )
        if any(value is _INVALID for value in values.values()) or (app_id is None) != (private_key is None):
            return None
        if app_id is None and token is None:
            return None
        return GitHubSettings(
            webhook_secrets=values["webhook_secrets"],
            api_url=values["api_url"],
            app_id=app_id,
            private_key=private_key,
            token=token,
            repository_hosts=values["repository_hosts"] or (),
            secret_scopes=self.scoped(values["webhook_secrets"]),
            approval_command=values["approval_command"],
        )

    def scoped(self, *groups: tuple[SecretRef, ...] | None) -> Mapping[SecretRef, tuple[str, ...]]:
        refs = {ref for group in groups for ref in group or ()}
        return MappingProxyType({ref: globs for ref, globs in self.scopes.items() if ref in refs})

    def gitlab(self, raw: object) -> GitLabSettings | None:
        values = self.table(raw, _GITLAB_KEYS, "gitlab")
        if values is None:
            return None
        if values["webhook_tokens"] is None and values["signing_tokens"] is None:
            self.error(
                "gitlab",
                "has no way to verify deliveries",
                hint="set webhook_tokens (X-Gitlab-Token) and/or signing_tokens (whsec_ signing tokens)",
            )
            return None
        if any(value is _INVALID for value in values.values()):
            return None
        return GitLabSettings(
            token=values["token"],
            url=values["url"],
            webhook_tokens=values["webhook_tokens"] or (),
            signing_tokens=values["signing_tokens"] or (),
            repository_hosts=values["repository_hosts"] or (),
            secret_scopes=self.scoped(values["webhook_tokens"], values["signing_tokens"]),
            approval_command=values["approval_command"],
        )

    def sns(self, raw: object) -> SnsSettings:
        values = self.table(raw, _SNS_KEYS, "sns")
        if values is None or values["topic_arns"] is _INVALID:
            return SnsSettings()
        return SnsSettings(topic_arns=values["topic_arns"])

    def builders(self, raw: object, base_dir: Path) -> LocalBuilderSettings:
        if not isinstance(raw, dict):
            self.error("builders", f"must be a table, not {_toml_type(raw)}", hint="write [builders.local]")
            return LocalBuilderSettings()
        for name in raw:
            if name != "local":
                self.error(
                    f"builders.{name}",
                    "unknown builder section" + _suggest(name, ["local"]),
                    hint="only the local builder has settings: [builders.local]",
                )
        values = self.table(raw.get("local", {}), _LOCAL_BUILDER_KEYS, "builders.local")
        if values is None or any(value is _INVALID for value in values.values()):
            return LocalBuilderSettings()

        def path(value: str) -> Path:
            given = Path(value).expanduser()
            return given if given.is_absolute() else base_dir / given

        return LocalBuilderSettings(
            enabled=values["enabled"],
            tool=values["tool"],
            work_dir=path(values["work_dir"]),
            max_concurrent_builds=values["max_concurrent_builds"],
            isolation=values["isolation"],
            storage_driver=values["storage_driver"],
            storage_root=path(values["storage_root"]) if values["storage_root"] else None,
            tls_verify=values["tls_verify"],
        )

    def route_builders(self, raw: object, local: LocalBuilderSettings) -> None:
        """Each route's builder exists, is switched on, and is not handed settings it would ignore."""
        from bridge import builders

        if not isinstance(raw, list):
            return
        for index, entry in enumerate(raw):
            if not isinstance(entry, dict) or not isinstance(entry.get("builder"), str):
                continue
            where, name = f"routes[{index}]", entry["builder"]
            if name not in builders.names():
                self.error(
                    f"{where}.builder",
                    f"{_shown(name)} is not a builder{_suggest(name, builders.names())}",
                    hint=f"builders: {', '.join(builders.names())}",
                )
                continue
            if name == "local" and not local.enabled:
                self.error(
                    f"{where}.builder",
                    '"local" runs the repository\'s Dockerfile on this host, and builders.local.enabled '
                    "is not true",
                    hint="if you trust every committer of the route's repositories, add [builders.local] "
                    'with enabled = true (see docs/local-builder.md); otherwise use builder = "codebuild"',
                )
            capabilities = builders.capabilities(name)
            if not capabilities.buildspec:
                for key in _CODEBUILD_ONLY_ROUTE_KEYS:
                    if key in entry:
                        self.error(
                            f"{where}.{key}",
                            f"is a CodeBuild setting, and the {name} builder would ignore it",
                            hint=f"remove {key}: the {name} builder builds the repository's Dockerfile",
                        )
            if entry.get("env") and not capabilities.secret_variables:
                for variable, value in entry["env"].items():
                    if isinstance(value, str) and value.startswith(("secretsmanager:", "ssm:")):
                        self.error(
                            f"{where}.env.{variable}",
                            f"is a secret reference, and the {name} builder does not resolve secrets",
                            hint='remove it, or build this route with builder = "codebuild"',
                        )

    def store(self, raw: object) -> StoreSettings:
        values = self.table(raw, _STORE_KEYS, "store")
        if values is None or any(value is _INVALID for value in values.values()):
            return StoreSettings()
        return StoreSettings(
            backend=values["backend"],
            table=values["table"],
            retention_days=values["retention_days"],
            lease_seconds=values["lease_seconds"],
        )

    def queue(self, raw: object) -> QueueSettings:
        values = self.table(raw, _QUEUE_KEYS, "queue")
        if values is None or any(value is _INVALID for value in values.values()):
            return QueueSettings()
        return QueueSettings(
            url=values["url"],
            visibility_timeout_seconds=values["visibility_timeout_seconds"],
            wait_seconds=values["wait_seconds"],
        )

    def shared_state(self, store: StoreSettings, queue: QueueSettings) -> None:
        """DynamoDB without a queue would leave accepted deliveries with nobody told to start them."""
        if store.backend != "dynamodb":
            return
        if store.table is None:
            self.error(
                "store.table",
                'is required with backend = "dynamodb"',
                hint="set it to the stack's StateTable output",
            )
        if queue.url is None:
            self.error(
                "queue.url",
                'is required with store.backend = "dynamodb"',
                hint="set it to the stack's DeliveryQueueUrl output",
            )

    def routes(self, raw: object, sections: Mapping[str, bool]) -> tuple[Route, ...]:
        if not isinstance(raw, list):
            self.error(
                "routes", f"must be an array of tables, not {_toml_type(raw)}", hint="write [[routes]]"
            )
            return ()
        routes: list[Route] = []
        names: dict[str, int] = {}
        for index, entry in enumerate(raw):
            path = f"routes[{index}]"
            values = self.table(entry, _ROUTE_KEYS, path)
            if values is None:
                continue
            name = values["name"]
            if isinstance(name, str):
                if name in names:
                    self.error(
                        f"{path}.name",
                        f"{name!r} is already the name of routes[{names[name]}]",
                        hint="give each route its own name: it is the status context codebuild/NAME",
                    )
                else:
                    names[name] = index
            route = self.route(values, path, sections)
            if route is not None:
                routes.append(route)
        return tuple(routes)

    def route(self, values: dict[str, Any], path: str, sections: Mapping[str, bool]) -> Route | None:
        before = len(self.errors)
        provider = values["provider"]
        if isinstance(provider, str) and not sections.get(provider, False):
            self.error(
                f"{path}.provider",
                f"no [{provider}] section: the bridge cannot verify {provider} deliveries",
                hint=f"add a [{provider}] section with its webhook secrets and credentials",
            )
        for key in ("repositories", "branches", "tags"):
            self.globs(values[key], f"{path}.{key}")
        events = values["events"]
        if isinstance(provider, str) and events is None:
            events = default_events(cast(Provider, provider))
        if isinstance(provider, str) and isinstance(events, tuple):
            allowed = _PROVIDER_EVENTS[cast(Provider, provider)]
            for i, event in enumerate(events):
                if event not in allowed:
                    other = {"pull_request": "merge_request", "merge_request": "pull_request"}.get(event)
                    self.error(
                        f"{path}.events[{i}]",
                        f"{provider} sends no {event} events"
                        + (f"; {provider} calls them {other}" if other in allowed else ""),
                        hint=f"allowed for {provider}: {', '.join(allowed)}",
                    )
        self.source_mode(values, path)
        fork_repository = values["fork_image_repository"]
        if isinstance(fork_repository, str) and fork_repository == values["image_repository"]:
            self.error(
                f"{path}.fork_image_repository",
                "is the route's image_repository: fork builds must never push where trusted images live",
                hint="give fork builds a repository of their own, or remove fork_image_repository",
            )
        image_tag = values["image_tag"]
        if isinstance(image_tag, str):
            self.image_tag(image_tag, f"{path}.image_tag")
        env = self.env(values["env"], f"{path}.env")
        overrides = self.overrides(values["overrides"], f"{path}.overrides")
        if len(self.errors) > before or any(value is _INVALID for value in values.values()):
            return None
        return Route(
            name=values["name"],
            provider=provider,
            repositories=values["repositories"],
            project=values["project"],
            events=events,
            branches=values["branches"],
            tags=values["tags"],
            drafts=values["drafts"],
            forks=values["forks"],
            fork_image_repository=values["fork_image_repository"],
            builder=values["builder"],
            source_mode=values["source_mode"],
            clone_token=values["clone_token"],
            image_repository=values["image_repository"],
            image_tag=image_tag,
            buildspec=values["buildspec"],
            env=cast(tuple[EnvVar, ...], env),
            compute_type=values["compute_type"],
            build_image=values["build_image"],
            privileged_mode=values["privileged_mode"],
            timeout_minutes=values["timeout_minutes"],
            overrides=cast(Mapping[str, Any], overrides),
            batch=values["batch"],
            registry_credentials=values["registry_credentials"],
            registry_server=values["registry_server"],
            cache=values["cache"],
            platforms=self.platforms(values["platforms"], f"{path}.platforms"),
            sign=self.sign_key(values["sign"], f"{path}.sign"),
        )

    def sign_key(self, value: object, where: str) -> str | None:
        if not isinstance(value, str):
            return None
        try:
            return parse_sign_key(value, input_name=where)
        except InputError:
            self.error(where, "is not a cosign AWS KMS key URI", hint=SIGN_HINT)
            return None

    def platforms(self, value: object, where: str) -> tuple[str, ...]:
        if not isinstance(value, tuple):
            return ()
        bad = [
            (i, item) for i, item in enumerate(value) if str(item).strip().lower() not in SUPPORTED_PLATFORMS
        ]
        for i, item in bad:
            self.error(f"{where}[{i}]", f"unsupported platform '{item}'", hint=PLATFORMS_HINT)
        return () if bad else parse_platforms(value, input_name=where)

    def globs(self, patterns: object, where: str) -> None:
        if not isinstance(patterns, tuple):
            return
        for i, pattern in enumerate(patterns):
            if pattern == "!":
                self.error(f"{where}[{i}]", '"!" excludes nothing', hint='write "!PATTERN"')
        if all(pattern.startswith("!") for pattern in patterns):
            self.error(
                where,
                'has only "!" exclusions, so it matches nothing',
                hint='add a pattern to include, e.g. "*" before the exclusions',
            )

    def source_mode(self, values: dict[str, Any], path: str) -> None:
        mode, token, provider = values["source_mode"], values["clone_token"], values["provider"]
        if mode == "clone" and provider == "github":
            self.error(
                f"{path}.source_mode",
                "clone mode is for GitLab routes only",
                hint="GitHub routes use CodeBuild's GitHub source: remove source_mode",
            )
        if mode == "clone" and token is None:
            self.error(
                f"{path}.clone_token",
                "is required with source_mode = clone",
                hint=f"write clone_token = {_SM_ONLY_FORM!r}",
            )
        buildspec = values["buildspec"]
        if mode == "clone" and isinstance(buildspec, str) and "\n" not in buildspec.strip():
            self.error(
                f"{path}.buildspec",
                "clone mode builds with NO_SOURCE: CodeBuild has no checkout to read a buildspec file from",
                hint="remove buildspec to use the packaged clone buildspec, or write its YAML inline",
            )
        if mode == "native" and token is not None:
            self.error(
                f"{path}.clone_token",
                "is only used with source_mode = clone",
                hint='set source_mode = "clone", or remove clone_token',
            )

    def image_tag(self, template: str, where: str) -> None:
        hint = "placeholders: " + " ".join(f"{{{name}}}" for name in _TAG_PLACEHOLDERS)
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError:
            self.error(where, "has unbalanced braces", hint=hint + "; write {{ or }} for a literal brace")
            return
        for literal, name, spec, conversion in parsed:
            if not _TAG_LITERAL.fullmatch(literal):
                self.error(
                    where, "contains characters an image tag cannot hold", hint="use A-Z a-z 0-9 _ . -"
                )
                return
            if name is not None and (name not in _TAG_PLACEHOLDERS or spec or conversion):
                self.error(
                    where, f"unknown placeholder {{{name}}}{_suggest(name, _TAG_PLACEHOLDERS)}", hint=hint
                )
                return

    def env(self, raw: Any, where: str) -> tuple[EnvVar, ...] | _Invalid:
        if not isinstance(raw, dict):
            return () if raw is None else _INVALID
        result: list[EnvVar] = []
        ok = True
        for name, value in raw.items():
            var = self.env_var(name, value, f"{where}.{name}")
            if var is None:
                ok = False
            else:
                result.append(var)
        return tuple(result) if ok else _INVALID

    def env_var(self, name: str, value: object, where: str) -> EnvVar | None:
        """Values are never echoed: a plain value under a secret-looking name is itself the secret."""
        if not _ENV_NAME.fullmatch(name):
            self.error(
                where,
                "is not a valid variable name",
                hint="use letters, digits and _, not starting with a digit",
            )
            return None
        if not isinstance(value, str):
            self.error(where, f"must be a string, not {_toml_type(value)}", hint=f'quote it: {name} = "..."')
            return None
        if "\n" in value or "\r" in value:
            self.error(
                where, "must be a single line", hint="put multi-line values in Secrets Manager or a file"
            )
            return None
        if value.startswith("env:"):
            self.error(
                where,
                "env: references are resolved by the bridge, not by CodeBuild",
                hint="use secretsmanager:ID[#json-key] or ssm:/parameter, which CodeBuild reads itself",
            )
            return None
        prefix = f"input '{where}': line 1: {name}: "
        try:
            (var,) = parse_env_vars(f"{name}={value}", input_name=where, refuse_credentials=False)
        except InputError as exc:
            self.error(
                where, exc.message.removeprefix(prefix).removeprefix(f"input '{where}': "), hint=exc.hint
            )
            return None
        if var.type == "PLAINTEXT" and looks_like_credential(name, value):
            self.error(
                where,
                "looks like a secret but is a plain value: CodeBuild shows plain values to anyone who can "
                "read the build",
                hint=f'store it in Secrets Manager and write {name} = "secretsmanager:NAME[#json-key]" '
                '(or "ssm:/parameter")',
            )
            return None
        return var

    def overrides(self, raw: Any, where: str) -> Mapping[str, Any] | _Invalid:
        if not isinstance(raw, dict):
            return MappingProxyType({}) if raw is None else _INVALID
        ok = True
        for name in raw:
            key = f"{where}.{name}"
            if name in _MANAGED_PARAMETERS:
                instead = _MANAGED_PARAMETERS[name]
                self.error(
                    key,
                    "is set by the bridge",
                    hint=f"use the route's {instead} key" if instead else "it is derived from the event",
                )
                ok = False
            elif name not in _START_BUILD_PARAMETERS:
                self.error(
                    key,
                    f"is not a StartBuild parameter{_suggest(name, sorted(_START_BUILD_PARAMETERS))}",
                    hint="see the CodeBuild API reference for StartBuild",
                )
                ok = False
        return MappingProxyType(dict(raw)) if ok else _INVALID


# --- entry points -----------------------------------------------------------------------------------


def parse_config(text: str, *, base_dir: Path, source: str = "config") -> Config:
    """Validate a whole file; raise InvalidConfigError listing every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib names the line and column and never quotes the document.
        error = ConfigError(f"not valid TOML: {exc}", hint="check the quoting and brackets on that line")
        raise InvalidConfigError([error], source=source) from None
    reader = _Reader()
    for name in data:
        if name not in _TOP_LEVEL:
            reader.error(
                name,
                f"unknown section{_suggest(name, _TOP_LEVEL)}",
                hint=f"sections: {', '.join(f'[{s}]' for s in _TOP_LEVEL[:-1])} and [[routes]]",
            )
    server = reader.server(data.get("server", {}), base_dir)
    aws = reader.aws(data.get("aws", {}))
    github = reader.github(data["github"]) if "github" in data else None
    gitlab = reader.gitlab(data["gitlab"]) if "gitlab" in data else None
    sns = reader.sns(data["sns"]) if "sns" in data else SnsSettings()
    local_builder = reader.builders(data.get("builders", {}), base_dir)
    sections = {"github": "github" in data, "gitlab": "gitlab" in data}
    routes = reader.routes(data.get("routes", []), sections)
    reader.route_builders(data.get("routes", []), local_builder)
    store = reader.store(data.get("store", {}))
    queue = reader.queue(data.get("queue", {}))
    reader.shared_state(store, queue)
    if reader.errors:
        raise InvalidConfigError(reader.errors, source=source)
    return Config(
        server=server,
        aws=aws,
        github=github,
        gitlab=gitlab,
        sns=sns,
        routes=routes,
        local_builder=local_builder,
        store=store,
        queue=queue,
    )


def load_config(path: str | Path) -> Config:
    """Read and validate the routing file; relative paths inside it are relative to its directory."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        error = ConfigError(
            f"cannot read {file}: {reason}",
            hint="pass the path of a UTF-8 TOML file (see examples/bridge.toml)",
        )
        raise InvalidConfigError([error], source=str(file)) from None
    return parse_config(text, base_dir=file.resolve().parent, source=str(file))


# --- generated reference ------------------------------------------------------------------------------

_TYPE_NAMES: Final[Mapping[_Kind, str]] = {
    "string": "string",
    "url": "URL",
    "integer": "integer",
    "boolean": "boolean",
    "strings": "array of strings",
    "secret": "secret reference",
    "secrets": "array of secret references",
    "table": "table",
}


def _default_text(key: _Key) -> str:
    if key.required:
        return "required"
    if key.default_doc is not None:
        return key.default_doc
    if isinstance(key.default, bool):
        return "true" if key.default else "false"
    if isinstance(key.default, tuple):
        return "[" + ", ".join(f'"{item}"' for item in key.default) + "]"
    if isinstance(key.default, str):
        return f'"{key.default}"'
    return str(key.default)


def config_schema() -> list[KeyDoc]:
    """Every key the loader accepts, in file order."""
    return [
        KeyDoc(
            path=f"{section.path}.{key.name}",
            type=_TYPE_NAMES[key.kind],
            default=_default_text(key),
            allowed=_allowed(key),
            description=key.description,
            required=key.required,
        )
        for section in _SECTIONS
        for key in section.keys
    ]


BEGIN_MARK: Final = "<!-- BEGIN GENERATED: bridge.config.render_reference() -->"
END_MARK: Final = "<!-- END GENERATED -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reference() -> str:
    """The key reference as Markdown tables, one per section."""
    docs = config_schema()
    out: list[str] = []
    for section in _SECTIONS:
        heading = "[[routes]]" if section.path == "routes[]" else f"[{section.path}]"
        out += [f"### `{heading}`", "", section.description, ""]
        out += ["| Key | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]
        for doc in docs:
            if doc.path.startswith(f"{section.path}."):
                key = doc.path.removeprefix(f"{section.path}.")
                cells = (f"`{key}`", doc.type, doc.default, doc.allowed, doc.description)
                out.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        out.append("")
    return "\n".join(out)


def render_docs(document: str) -> str:
    """`document` with the generated block replaced by the current reference."""
    start, end = document.find(BEGIN_MARK), document.find(END_MARK)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {BEGIN_MARK} ... {END_MARK} block")
    return document[: start + len(BEGIN_MARK)] + "\n" + render_reference() + document[end:]
