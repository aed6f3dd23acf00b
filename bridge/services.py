"""The collaborators the webhook app and its worker use, and `build_services` that wires the real ones.

Everything the server touches outside its own process is a field here, so a test builds a
`Services` from real clients pointed at local servers (moto, the CodeBuild double, fake GitHub and
GitLab APIs) instead of patching anything. The real wiring is lazy: no boto3 client, GitHub or GitLab
client is created before the first delivery needs it, so `bridge serve` starts with no AWS account,
no credentials and no network, as the README's first command does.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, Protocol

from bridge import routing
from bridge.builders import CODEBUILD_CAPABILITIES
from bridge.config import Config, Route
from bridge.core.approval import ApprovalCommand
from bridge.errors import ConfigError, SignatureError
from bridge.metrics import Metrics
from bridge.model import BuildOptions, BuildRecord, BuildRequest, BuildStatus, SourceEvent
from bridge.queue import DeliveryQueue, LocalQueue, SqsQueue
from bridge.secrets import SecretStore
from bridge.store import StateStore, Store
from bridge.verify import CertificateCache, is_allowed_sns_certificate_url, is_sns_service_url

if TYPE_CHECKING:
    import github
    import gitlab

    from bridge.builders.base import Builder, LogTail
    from bridge.builders.codebuild import CodeBuildBuilder

log = logging.getLogger("bridge.services")

HTTP_TIMEOUT_SECONDS: Final = 10
MAX_CERTIFICATE_BYTES: Final = 64 * 1024


class ApprovalLookups(Protocol):
    """What deciding on an approval needs from the providers' APIs (`ProviderReporters` is one)."""

    def github_permission(self, command: ApprovalCommand) -> str: ...

    def github_pull_request(self, command: ApprovalCommand) -> Mapping[str, Any]: ...

    def gitlab_access_level(self, command: ApprovalCommand) -> int | None: ...


class StatusReporter(Protocol):
    """One build's status on one commit, whatever the provider. `ref` is what update needs later."""

    def start(self, status: BuildStatus) -> str | None: ...

    def update(self, ref: str, status: BuildStatus) -> str | None: ...


ReporterFactory = Callable[[SourceEvent, Route], "StatusReporter | None"]


@dataclass
class Services:
    config: Config
    store: StateStore
    secrets: SecretStore
    builder: Builder
    reporters: ReporterFactory
    region: str  # for console links when a record carries no ARN
    fetch_certificate: Callable[[str], bytes]  # SNS SigningCertURL → PEM (only pinned URLs reach it)
    confirm_subscription: Callable[[str], None]  # GET an SNS SubscribeURL (only pinned URLs reach it)
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    builders: Mapping[str, Builder] = field(default_factory=dict)  # other builders by name (`local`)
    queue: DeliveryQueue | None = None  # None: the store's own pending rows (SQLite, one replica)
    approvals: ApprovalLookups | None = None  # None: the reporters' clients, when they can answer

    @property
    def approval_lookups(self) -> ApprovalLookups:
        if self.approvals is not None:
            return self.approvals
        if isinstance(self.reporters, ProviderReporters):
            return self.reporters
        raise ConfigError(
            "this server has no GitHub/GitLab clients to check approvals with",
            key="github",
            hint="configure the provider's credentials (github.app_id/private_key or token; gitlab.token)",
        )

    @cached_property
    def delivery_queue(self) -> DeliveryQueue:
        return self.queue if self.queue is not None else LocalQueue(self.store)

    @property
    def poll_interval(self) -> float:
        return float(self.config.server.poll_interval_seconds)

    def route(self, name: str) -> Route:
        for route in self.config.routes:
            if route.name == name:
                return route
        raise ConfigError(
            f"route '{name}' is no longer in the config",
            key="routes",
            hint="the delivery was accepted under a route since removed; re-send it after fixing the config",
        )

    def builder_for(self, route: Route) -> Builder:
        """The builder a route names: `builder` under its own name, the others from `builders`."""
        if route.builder in self.builders:
            return self.builders[route.builder]
        if route.builder == self.builder.name:
            return self.builder
        raise ConfigError(
            f"route '{route.name}' names builder '{route.builder}', which this server did not set up",
            key="builder",
            hint="restart the server after changing a route's builder",
        )

    def builder_for_build(self, build_id: str) -> Builder:
        """The builder that owns a tracked build, from its id alone (routes may change meanwhile).

        Other builders' ids start with `NAME:` (`local:<uuid>`); everything else is CodeBuild's
        `project:uuid`.
        """
        for name, builder in self.builders.items():
            if name != self.builder.name and build_id.startswith(f"{name}:"):
                return builder
        return self.builder

    def build_options(self, route: Route, event: SourceEvent) -> BuildOptions:
        return routing.build_options(route, event)

    def approved_sha(self, event: SourceEvent) -> str | None:
        """The head SHA a maintainer approved for the event's change (forks = approve), or None.

        Read by the intake and again by the worker, through bridge.core.trust.decide only. The
        approval is recorded per change (pull request number / merge request iid), with its SHA:
        the decision compares that SHA with the event's head, so a new push needs a new approval.
        """
        if event.pr_number is None:
            return None
        return self.store.approved_sha(event.provider, event.repository, event.pr_number)

    def reporter_for(self, event: SourceEvent, route_name: str) -> StatusReporter | None:
        return self.reporters(event, self.route(route_name))

    def reporter_named(self, event: SourceEvent, route_name: str) -> StatusReporter | None:
        """The reporter of a route that may have left the config since it built (a refused re-run
        answers on its check all the same): the check's name comes from the route's name alone."""
        route = next((route for route in self.config.routes if route.name == route_name), None)
        if route is None:
            route = Route(route_name, event.provider, repositories=(event.repository,), project="")
        return self.reporters(event, route)


# -- reporters ------------------------------------------------------------------------------------


class GitLabStatus:
    """GitLab commit statuses: addressed by commit and name, so no ref is needed (one is kept anyway)."""

    def __init__(self, post: Callable[[BuildStatus], None]) -> None:
        self._post = post

    def start(self, status: BuildStatus) -> str | None:
        self._post(status)
        return "gitlab"

    def update(self, ref: str, status: BuildStatus) -> str | None:
        self._post(status)
        return ref


class ProviderReporters:
    """Makes the reporter for an event, caching one API client per credential.

    GitHub App clients are kept per installation: PyGithub's AppAuth then reuses the installation
    token for its hour instead of minting one per status. A rejected GitLab token is re-read from
    the secret store once (rotation) before the error surfaces.
    """

    def __init__(
        self, config: Config, secrets: SecretStore, *, github_write_interval: float | None = 1.0
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._write_interval = github_write_interval  # GitHub's advice against secondary rate limits
        self._lock = threading.Lock()
        self._github: dict[object, github.Github] = {}
        self._gitlab: gitlab.Gitlab | None = None

    def __call__(self, event: SourceEvent, route: Route) -> StatusReporter | None:
        if event.provider == "github":
            return self._github_reporter(event, route)
        return self._gitlab_reporter(event, route)

    def _github_client(self, installation_id: int | None, repository: str) -> github.Github | None:
        """The client for one installation (App) or the token's; None without GitHub credentials."""
        from bridge.reporters.github import github_client

        settings = self._config.github
        if settings is None:
            return None
        if settings.app_id is not None and settings.private_key is not None:
            cache_key: object = ("app", installation_id or repository)
            with self._lock:
                gh = self._github.get(cache_key)
                if gh is None:
                    gh = github_client(
                        settings.api_url,
                        app_id=settings.app_id,
                        private_key=self._secrets.get(settings.private_key, key="github.private_key"),
                        installation_id=installation_id,
                        repository=repository,
                        seconds_between_writes=self._write_interval,
                    )
                    self._github[cache_key] = gh
            return gh
        if settings.token is not None:
            with self._lock:
                gh = self._github.get("token")
                if gh is None:
                    gh = github_client(
                        settings.api_url,
                        self._secrets.get(settings.token, key="github.token"),
                        seconds_between_writes=self._write_interval,
                    )
                    self._github["token"] = gh
            return gh
        return None

    def _github_reporter(self, event: SourceEvent, route: Route) -> StatusReporter | None:
        from bridge.reporters.github import BoundReporter, CheckRunReporter, CommitStatusReporter

        settings = self._config.github
        if settings is None:
            return None
        gh = self._github_client(event.installation_id, event.repository)
        if gh is None:
            log.warning(
                "no GitHub credentials configured; statuses are not reported", extra={"route": route.name}
            )
            return None
        if settings.app_id is not None and settings.private_key is not None:
            # take_over: a replica killed after creating the check run but before recording its id
            # must not leave it "queued" forever next to a second one; the next reporter adopts it.
            reporter = CheckRunReporter(gh, event.repository, name=route.context, take_over=True)
            return BoundReporter(reporter, event)
        return BoundReporter(CommitStatusReporter(gh, event.repository, context=route.context), event)

    # -- what approvals need to know (core.approval decides with the answers) -------------------

    def github_permission(self, command: ApprovalCommand) -> str:
        """The approver's permission on the repository, from GitHub's collaborators API."""
        from bridge.reporters.github import collaborator_permission

        return collaborator_permission(self._require_github(command), command.repository, command.by)

    def github_pull_request(self, command: ApprovalCommand) -> Mapping[str, Any]:
        """The pull request as it is now (its head may have moved since the comment was written)."""
        from bridge.reporters.github import pull_request

        return pull_request(self._require_github(command), command.repository, command.number)

    def _require_github(self, command: ApprovalCommand) -> github.Github:
        gh = self._github_client(command.installation_id, command.repository)
        if gh is None:
            raise ConfigError(
                "approving fork builds needs GitHub credentials to check the approver's permission",
                key="github",
                hint="set github.app_id and github.private_key, or github.token",
            )
        return gh

    def gitlab_access_level(self, command: ApprovalCommand) -> int | None:
        """The approver's access level on the project (inherited memberships count); None: not a member."""
        from bridge.reporters.gitlab import gitlab_client, is_auth_failure, member_access_level

        settings = self._config.gitlab
        if settings is None or command.user_id is None:
            return None
        project: int | str = command.project_id if command.project_id is not None else command.repository
        user_id = command.user_id

        def ask(token: Any) -> int | None:
            with self._lock:
                if self._gitlab is None:
                    self._gitlab = gitlab_client(settings.url, token)
                gl = self._gitlab
            return member_access_level(gl, project, user_id)

        return self._secrets.with_refresh(
            settings.token, ask, is_auth_failure=is_auth_failure, key="gitlab.token"
        )

    def _gitlab_reporter(self, event: SourceEvent, route: Route) -> StatusReporter | None:
        from bridge.reporters.gitlab import GitLabStatusReporter, gitlab_client, is_auth_failure

        settings = self._config.gitlab
        if settings is None:
            return None
        token_ref = settings.token

        def post_with(token: Any, status: BuildStatus) -> None:
            with self._lock:
                if self._gitlab is None:
                    self._gitlab = gitlab_client(settings.url, token)
                gl = self._gitlab
            try:
                GitLabStatusReporter(gl, name=route.context).report(event, status)
            except Exception as exc:
                if is_auth_failure(exc):
                    with self._lock:
                        self._gitlab = None  # the next client is built from the re-read token
                raise

        def post(status: BuildStatus) -> None:
            self._secrets.with_refresh(
                token_ref,
                lambda token: post_with(token, status),
                is_auth_failure=is_auth_failure,
                key="gitlab.token",
            )

        return GitLabStatus(post)


# -- the builder, created on first use ---------------------------------------------------------------


class LazyCodeBuild:
    """A CodeBuild builder whose boto3 clients are made on first use (start-up needs no AWS)."""

    name = "codebuild"
    capabilities = CODEBUILD_CAPABILITIES

    def __init__(self, region: str | None) -> None:
        self._region = region
        self._lock = threading.Lock()
        self._builder: CodeBuildBuilder | None = None

    def _get(self) -> CodeBuildBuilder:
        with self._lock:
            if self._builder is None:
                from bridge import aws
                from bridge.builders.codebuild import CodeBuildBuilder

                self._builder = CodeBuildBuilder(
                    aws.client("codebuild", region=self._region), aws.client("logs", region=self._region)
                )
            return self._builder

    def start(self, request: BuildRequest) -> BuildRecord:
        return self._get().start(request)

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        return self._get().get_many(build_ids, batch_ids=batch_ids)

    def stop(self, build_id: str) -> BuildRecord:
        return self._get().stop(build_id)

    def find_started(self, request: BuildRequest, delivery_id: str, *, since: float) -> BuildRecord | None:
        return self._get().find_started(request, delivery_id, since=since)

    def log_tail(self, build: BuildRecord) -> LogTail:
        return self._get().log_tail(build)

    def close(self) -> None:
        """Nothing to stop (see CodeBuildBuilder.close), and no client to make just for this."""


# -- SNS HTTPS calls -------------------------------------------------------------------------------


def is_sns_subscribe_url(url: str) -> bool:
    """Only https://sns.<region>.amazonaws.com[.cn]/... : the URL comes from the message itself."""
    return is_sns_service_url(url)


def fetch_sns_certificate(url: str) -> bytes:
    """Download a signing certificate; refuses anything but the pinned SNS certificate URLs."""
    if not is_allowed_sns_certificate_url(url):
        raise SignatureError("SNS SigningCertURL is not an Amazon SNS certificate URL")
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310 - pinned https
        return bytes(response.read(MAX_CERTIFICATE_BYTES))


def confirm_sns_subscription(url: str) -> None:
    """Visit a SubscribeURL, which is how an HTTPS endpoint accepts an SNS subscription."""
    if not is_sns_subscribe_url(url):
        raise SignatureError("SNS SubscribeURL is not an Amazon SNS URL")
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310 - pinned https
        response.read(MAX_CERTIFICATE_BYTES)


# -- wiring --------------------------------------------------------------------------------------------


def default_region(config: Config) -> str:
    """For console links and ARNs when a record names none; the AWS clients resolve their own."""
    from bridge import aws

    return aws.resolve_region(config.aws.region) or "us-east-1"


def secretsmanager_factory(region: str | None) -> Callable[[], Any]:
    """Secrets are read while a webhook sender waits (GitHub gives up after 10 s): two short attempts,
    then a 503 the sender can retry, rather than botocore's eight attempts and 60 s read timeout."""

    def make() -> Any:
        from bridge import aws

        return aws.client("secretsmanager", region=region, max_attempts=2, timeout=2.0)

    return make


def route_builders(config: Config) -> dict[str, Builder]:
    """Every builder other than CodeBuild that a route names, made now: a local builder with no
    build tool installed stops the server at start-up rather than failing the first delivery."""
    from bridge import builders

    names = dict.fromkeys(route.builder for route in config.routes if route.builder != "codebuild")
    return {name: builders.create(name, config) for name in names}


def shared_state(config: Config) -> tuple[StateStore, DeliveryQueue | None]:
    """The store and queue `[store] backend` names: SQLite alone, or DynamoDB with SQS for replicas."""
    if config.store.backend != "dynamodb":
        return Store(config.server.state_path), None
    from bridge.store_dynamodb import DynamoStore

    region = default_region(config)
    store = DynamoStore(
        config.store.table or "",
        region=region,
        retention_seconds=config.store.retention_days * 86_400,
    )
    queue = SqsQueue(
        config.queue.url or "",
        store,
        region=region,
        visibility_timeout=config.queue.visibility_timeout_seconds,
        max_wait_seconds=config.queue.wait_seconds,
    )
    return store, queue


def build_services(
    config: Config,
    *,
    store: StateStore | None = None,
    builder: Builder | None = None,
    builders: Mapping[str, Builder] | None = None,
    reporters: ReporterFactory | None = None,
) -> Services:
    """The real collaborators. Nothing here opens a network connection.

    `builder`, `builders`, `reporters`: stand-ins for CodeBuild, the routes' other builders and the
    GitHub/GitLab reporters (`bridge demo` runs with no AWS account and no provider API).
    """
    secrets = SecretStore(secretsmanager_factory(config.aws.region))
    queue: DeliveryQueue | None = None
    if store is None:
        store, queue = shared_state(config)
    services = Services(
        config=config,
        store=store,
        secrets=secrets,
        builder=builder if builder is not None else LazyCodeBuild(config.aws.region),
        reporters=reporters if reporters is not None else ProviderReporters(config, secrets),
        region=default_region(config),
        fetch_certificate=CertificateCache(fetch_sns_certificate),
        confirm_subscription=confirm_sns_subscription,
        builders=builders if builders is not None else route_builders(config),
        queue=queue,
    )
    services.metrics.watch_store(services.store.counts)
    return services
