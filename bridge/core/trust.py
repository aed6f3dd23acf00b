"""What a build is trusted with: one decision, made here and nowhere else.

A delivery names code (a commit in some repository) and a route names what builds of that route
may use (secret variables, the clone token, the image repository, the layer cache). When the code
comes from the routed repository itself, whoever could change it could already change the route's
builds, so the build gets everything the route has. When it comes from a fork, its author is
anyone on the internet: the build gets nothing trusted unless the route says so, and even then it
never writes to the route's image repository, its tags or its cache, because those are what the
route's users deploy. The table, as SECURITY.md states it:

  code from          route.forks          secrets  clone token  push                          cache
  routed repository  (any)                yes      yes          route's repository and tags   write
  fork               never                (not built)
  fork               without-secrets      no       no           fork_image_repository only,    no
                                                                as pr-<n>-<sha>, or nowhere
  fork               approve, not yet     (waits for a maintainer to approve the head SHA)
  fork               approve, approved    yes      yes          as without-secrets             no
  fork               allow                yes      yes          as without-secrets             no

A re-run is decided by the same table for the original build's event on the original route.

The server's intake, the worker, re-runs, `bridge plan` and the Action all call `decide`; plan.py
only carries out the Grant it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from bridge.errors import NotGrantedError
from bridge.model import BuildOptions, EnvVar, ForkPolicy, Ignored, SourceEvent

__all__ = [
    "FORK_POLICIES",
    "AwaitingApproval",
    "Grant",
    "Policy",
    "TrustFacts",
    "TrustPolicy",
    "decide",
    "fork_tag",
    "granted",
]

FORK_POLICIES: Final[tuple[ForkPolicy, ...]] = ("never", "without-secrets", "approve", "allow")

Source = Literal["repository", "fork"]


class TrustPolicy(Protocol):
    """What `decide` reads from a route. `bridge.config.Route` is one; the Action builds a `Policy`."""

    @property
    def name(self) -> str: ...

    @property
    def forks(self) -> ForkPolicy: ...

    @property
    def image_repository(self) -> str | None: ...

    @property
    def image_tag(self) -> str | None: ...

    @property
    def fork_image_repository(self) -> str | None: ...

    @property
    def env(self) -> tuple[EnvVar, ...]: ...

    @property
    def source_mode(self) -> str: ...

    @property
    def privileged_mode(self) -> bool | None: ...

    @property
    def registry_credentials(self) -> object | None: ...

    @property
    def overrides(self) -> Mapping[str, Any]: ...


# StartBuild parameters a route's `overrides` may pass that hand a build something trusted: another
# role, secondary sources fetched with the project's credentials, mounted file systems (read by the
# code), and places it writes that others read (the cache, artifacts). A fork's build gets the first
# three only when the route trusts it (approved, or allow); the writes never.
TRUSTED_READS: Final = (
    "serviceRoleOverride",
    "secondarySourcesOverride",
    "secondarySourcesVersionOverride",
    "fileSystemLocationsOverride",
)
TRUSTED_WRITES: Final = ("cacheOverride", "artifactsOverride", "secondaryArtifactsOverride")


@dataclass(frozen=True)
class Policy:
    """A TrustPolicy for callers that have no configured route (the Action, the Python API)."""

    name: str
    forks: ForkPolicy = "never"
    image_repository: str | None = None
    image_tag: str | None = None
    fork_image_repository: str | None = None
    env: tuple[EnvVar, ...] = ()
    source_mode: str = "native"
    privileged_mode: bool | None = None
    registry_credentials: object | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def of_options(cls, name: str, options: BuildOptions, *, forks: ForkPolicy) -> Policy:
        """The policy of a build described by BuildOptions alone (the Action's inputs, the Python API)."""
        return cls(
            name=name,
            forks=forks,
            image_repository=options.image_repository,
            image_tag=options.image_tag,
            env=options.env_vars,
            source_mode=options.source_mode,
            privileged_mode=options.privileged_mode,
            registry_credentials=options.registry,
            overrides=options.extra_overrides,
        )


@dataclass(frozen=True)
class TrustFacts:
    """What is known about the code's origin beyond the event itself.

    `fork`: the code comes from a repository other than the routed one. `approved_sha`: the head SHA a
    maintainer approved (None: no approval); an approval is for one commit, so a later push needs a
    new one. `private_source`: the fork can only be cloned with a token.
    """

    fork: bool
    approved_sha: str | None = None
    private_source: bool = False

    @classmethod
    def of(cls, event: SourceEvent, *, approved_sha: str | None = None) -> TrustFacts:
        return cls(fork=event.is_fork, approved_sha=approved_sha, private_source=event.source_private)


@dataclass(frozen=True)
class Grant:
    """What one build may use. plan.plan_build turns it into the StartBuild request, adding nothing.

    `image_tag` is a template rendered by plan.render_image_tag; a fork's is a literal `pr-<n>-<sha>`,
    so nothing the fork chose (its branch name) can end up in a tag. `builds_image`: the route builds an
    image, pushed or not (an unpushed one still shows whether the change builds). `privileged`: the
    route's privileged_mode (None: the project's, or on when an image is built). `dropped`: one line
    per thing the route has that this build does not get, and why, for `bridge plan` and the logs.
    `cache_read`/`cache_write`: the route's layer cache (bridge.core.cache); no fork ever writes it.
    """

    route: str
    source: Source
    fetch_url: str
    sha: str
    secrets: bool
    clone_token: bool
    push: bool
    image_repository: str | None
    image_tag: str | None
    builds_image: bool
    cache_write: bool
    cache_read: bool
    privileged: bool | None
    dropped: tuple[str, ...] = ()
    withheld_overrides: tuple[str, ...] = ()  # the route's `overrides` keys this build does not get

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.dropped

    def record(self) -> dict[str, object]:
        """The grant as JSON-ready data, with its `describe` lines (what the store keeps for the
        operator page and `bridge status`)."""
        data: dict[str, object] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["dropped"] = list(self.dropped)
        data["describe"] = self.describe()
        return data

    def describe(self) -> list[str]:
        """The grant as lines a person reads: what is passed, then what is dropped and why."""
        lines = [
            f"source: {self.source} ({self.fetch_url} at {self.sha})",
            f"secret and parameter-store variables: {'passed' if self.secrets else 'dropped'}",
            f"clone token: {'passed' if self.clone_token else 'not passed'}",
        ]
        if self.push:
            lines.append(f"push: {self.image_repository}:{self.image_tag or '{sha}'}")
        else:
            lines.append("push: no" + (" (the image is built, not pushed)" if self.builds_image else ""))
        cache = "read and write" if self.cache_write else "read only" if self.cache_read else "not used"
        lines.append(f"layer cache: {cache}")
        lines.extend(f"dropped: {reason}" for reason in self.dropped)
        return lines


@dataclass(frozen=True)
class AwaitingApproval:
    """A fork's change on a route with forks = approve, whose head SHA no maintainer approved yet."""

    route: str
    sha: str
    reason: str


def fork_tag(event: SourceEvent) -> str:
    """`pr-<n>-<sha>`: a tag no trusted build renders (trusted templates cannot spell a PR's SHA after
    its number), and one no two changes share."""
    number = event.pr_number if event.pr_number is not None else 0
    return f"pr-{number}-{event.sha}"


def _change(event: SourceEvent) -> str:
    return "merge request" if event.provider == "gitlab" else "pull request"


def _secret_names(env: Sequence[EnvVar]) -> list[str]:
    return [var.name for var in env if var.type != "PLAINTEXT"]


def decide(event: SourceEvent, route: TrustPolicy, facts: TrustFacts) -> Grant | Ignored | AwaitingApproval:
    """The one trust decision: what a build of `event` on `route` gets, or why there is no build."""
    label = f"routes[{route.name}]"
    builds_image = route.image_repository is not None
    if not facts.fork:
        return Grant(
            route=route.name,
            source="repository",
            fetch_url=event.clone_url,
            sha=event.sha,
            secrets=True,
            clone_token=True,
            push=builds_image,
            image_repository=route.image_repository,
            image_tag=route.image_tag,
            builds_image=builds_image,
            cache_write=True,
            cache_read=True,
            privileged=route.privileged_mode,
        )

    change = _change(event)
    policy = route.forks
    if policy == "never":
        return Ignored(f"fork {change}: {label}.forks = never")
    # An approval counts only where the route asks for one: under without-secrets it changes nothing.
    approved = policy == "approve" and facts.approved_sha is not None and facts.approved_sha == event.sha
    if policy == "approve" and not approved:
        if facts.approved_sha is not None:
            reason = (
                f"fork {change}: a maintainer approved {facts.approved_sha[:7]}, but the head is now "
                f"{event.short_sha}; {label}.forks = approve needs an approval of {event.short_sha}"
            )
        else:
            reason = (
                f"fork {change}: waiting for a maintainer to approve {event.short_sha} "
                f"({label}.forks = approve)"
            )
        return AwaitingApproval(route=route.name, sha=event.sha, reason=reason)

    trusted = policy == "allow" or approved
    why = "approved by a maintainer" if approved else f"{label}.forks = {policy}"
    dropped: list[str] = []
    if not trusted:
        if facts.private_source and route.source_mode == "clone":
            return Ignored(
                f"fork {change} from a private repository: cloning it needs the clone token, which a "
                f"fork build gets only once a maintainer approves it ({label}.forks = {policy})"
            )
        secret_names = _secret_names(route.env)
        if secret_names:
            dropped.append(
                f"secret and parameter-store variables {', '.join(secret_names)}: fork code is not "
                f"trusted with them ({why})"
            )
        if route.registry_credentials is not None:
            dropped.append(f"registry credentials: fork code is not trusted with them ({why})")
        if route.source_mode == "clone":
            dropped.append(f"the clone token: the fork is public and is cloned without one ({why})")

    fork_repository = route.fork_image_repository
    if fork_repository is not None:
        push, repository, tag = True, fork_repository, fork_tag(event)
        if builds_image:
            dropped.append(
                f"the route's image repository: a fork pushes only to {label}.fork_image_repository, as {tag}"
            )
    else:
        push, repository, tag = False, None, None
        if builds_image:
            dropped.append(
                f"pushing: a fork never pushes to the route's image repository; the image is built, not "
                f"pushed (set {label}.fork_image_repository to push fork builds as pr-<n>-<sha>)"
            )
    withheld = [name for name in TRUSTED_WRITES if name in route.overrides]
    if not trusted:
        withheld = [name for name in TRUSTED_READS if name in route.overrides] + withheld
    if withheld:
        dropped.append(
            f"{label}.overrides {', '.join(withheld)}: a fork's build never writes the route's cache or "
            f"artifacts, nor gets its role, secondary sources or file systems unless trusted ({why})"
        )
    if trusted and push:
        dropped.append("writing the layer cache: forks never write it (they read it)")
    else:
        dropped.append(
            "the layer cache: a fork's build neither reads nor writes it (its layers may hold what the "
            f"fork must not see) unless it is trusted with the route's secrets and pushes ({why})"
        )
    return Grant(
        route=route.name,
        source="fork",
        fetch_url=event.clone_url,
        sha=event.sha,
        secrets=trusted,
        clone_token=trusted,
        push=push,
        image_repository=repository,
        image_tag=tag,
        builds_image=builds_image or push,
        cache_write=False,
        cache_read=trusted and push,
        privileged=route.privileged_mode,
        dropped=tuple(dropped),
        withheld_overrides=tuple(withheld),
    )


def granted(event: SourceEvent, route: TrustPolicy, facts: TrustFacts) -> Grant:
    """`decide`, for callers that can only go on with a Grant: anything else is a NotGrantedError."""
    grant = decide(event, route, facts)
    if not isinstance(grant, Grant):
        raise NotGrantedError(
            f"not started: {grant.reason}", hint="see SECURITY.md for what each kind of build is granted"
        )
    return grant
