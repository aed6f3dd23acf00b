"""Which route builds an event, and with which options. Pure: values in, values out.

Routes are tried in file order and the first that matches wins, so a narrow route placed before a
broad one carves out an exception. When nothing matches, the answer says why in terms of the config
file ("branch feature/x not in routes[web].branches"): that reason is what the webhook's 200 answer
and the logs show, and it is usually all a user needs to fix their config.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from bridge.config import Route
from bridge.model import BuildOptions, Ignored, RegistryAuth, SourceEvent

# Whitespace, backslashes and userinfo make URL parsers disagree about the host: refused outright.
_AMBIGUOUS_URL = re.compile(r"[\s\\@]")

__all__ = ["build_options", "foreign_host", "glob_match", "match_route", "unbound"]

# How far an event got into a route before it failed; the deepest failure is the most useful reason.
_PROVIDER, _REPOSITORY, _EVENT, _REF, _DRAFT, _FORK = range(6)


def glob_match(name: str, patterns: Sequence[str], *, ignore_case: bool = False) -> bool:
    """True if `name` matches any pattern without "!" and none of the "!" patterns.

    fnmatch semantics: `*` matches "/" as well, so `release/*` matches `release/1.x/hotfix`.
    """
    return _glob_match(name, tuple(patterns), ignore_case)


# Every delivery of a repository asks the same questions of the same routes; the answers are kept
# (bounded: names come from signed payloads, but a busy server still sees many branches).
@functools.lru_cache(maxsize=4096)
def _glob_match(name: str, patterns: tuple[str, ...], ignore_case: bool) -> bool:
    if ignore_case:
        name = name.casefold()
        patterns = tuple(pattern.casefold() for pattern in patterns)
    included = any(fnmatchcase(name, p) for p in patterns if not p.startswith("!"))
    return included and not any(fnmatchcase(name, p[1:]) for p in patterns if p.startswith("!"))


def _change_name(event: SourceEvent) -> str:
    return "merge request" if event.provider == "gitlab" else "pull request"


def _failure(route: Route, event: SourceEvent) -> tuple[int, str] | None:
    """None if `route` builds `event`, else how far it got and why it stopped."""
    if route.provider != event.provider:
        return _PROVIDER, ""
    # GitHub and GitLab both treat owner/project names case-insensitively.
    if not glob_match(event.repository, route.repositories, ignore_case=True):
        return _REPOSITORY, ""
    label = f"routes[{route.name}]"
    if event.kind not in route.events:
        return _EVENT, f"{event.kind} events are not in {label}.events"
    change = event.kind in ("pull_request", "merge_request")
    if event.kind in ("push", "manual"):
        if event.branch is None:
            return _REF, f"the {event.kind} event names no branch"
        if not glob_match(event.branch, route.branches):
            return _REF, f"branch {event.branch} not in {label}.branches"
    elif event.kind in ("tag", "release"):
        if event.tag is None:
            return _REF, f"the {event.kind} event names no tag"
        if not glob_match(event.tag, route.tags):
            return _REF, f"tag {event.tag} not in {label}.tags"
    elif change:
        # The target branch decides: it is the branch the change would land on.
        target = event.base_branch
        if target is None or not glob_match(target, route.branches):
            return _REF, f"target branch {target} of {_change_name(event)} not in {label}.branches"
    # "rerun" skips ref filters: a re-run is asked for on a check this bridge already reported.
    if change and event.is_draft and not route.drafts:
        return _DRAFT, f"draft {_change_name(event)}s are not built by {label}"
    if event.is_fork and route.forks == "never":
        return _FORK, f"fork {_change_name(event)}: {label}.forks = never"
    return None


def match_route(event: SourceEvent, routes: Sequence[Route]) -> Route | Ignored:
    """The first route that builds `event`, or the most informative reason why none does."""
    if not routes:
        return Ignored("no routes are configured: add a [[routes]] table to the config file")
    best: tuple[int, str] | None = None
    for route in routes:
        failure = _failure(route, event)
        if failure is None:
            return route
        if best is None or failure[0] > best[0]:
            best = failure
    if best is None or best[0] <= _REPOSITORY:
        return Ignored(f"no route for {event.provider} repository {event.repository}")
    return Ignored(best[1])


_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=1024)  # a repository's URLs come with every one of its deliveries
def _url_site(url: str) -> tuple[str, str] | None:
    """(lowercase host, host[:port] as configured hosts spell it) of a plain http(s) URL; None for
    anything else (userinfo, odd characters, a port that is not a number). A scheme's default port
    counts as no port, so `https://github.com:443/` is `github.com`."""
    if _AMBIGUOUS_URL.search(url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    host = host.lower().rstrip(".")
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return host, host
    return host, f"{host}:{port}"


def foreign_host(event: SourceEvent, allowed_hosts: Sequence[str]) -> Ignored | None:
    """None when every repository URL of `event` is on a configured host (and port), else why it is not
    built.

    The clone URL becomes CodeBuild's source location (and, in clone mode, the URL git sends the
    clone token to), and the web URL picks the source type: both come from the payload. A delivery
    naming another host (169.254.169.254, an internal service), or another port of the configured host
    (another service on it), must never turn into a build.
    """
    allowed = _lowercase(tuple(allowed_hosts))
    for label, url in (("clone URL", event.clone_url), ("repository URL", event.server_url)):
        site = _url_site(url)
        if site is None or site[1] not in allowed:
            what = f"names host {site[1][:100]!r}" if site is not None else "is not a plain http(s) URL"
            return Ignored(
                f"the {label} {what}, not one of {event.provider}.repository_hosts "
                f"({', '.join(sorted(allowed))})"
            )
    return None


def unbound(event: SourceEvent) -> Ignored | None:
    """None when the event's clone URL is the URL of the repository the event names, else why not.

    The payload names a repository (what is routed, whose status is posted, whose secrets the route
    holds) and, separately, the URL the build fetches from. Both are the sender's word, and a token
    shared by several projects (or typed into a low-trust one) could otherwise name a routed project
    while pointing the build, its secrets and its clone token at another project on the same host. So
    the clone URL's path must be the repository's full path (the head repository's for a pull or merge
    request from a fork), below the instance's own path, and a change that is not a fork must come from
    the repository itself.
    """
    change = "merge request" if event.provider == "gitlab" else "pull request"
    source = event.head_repository or event.repository
    if not event.is_fork and source.lower() != event.repository.lower():
        return Ignored(
            f"the {change} names source repository {source[:200]!r} but is not marked as a fork of "
            f"{event.repository}: not built"
        )
    if not event.clone_url:
        return None  # nothing is fetched by URL (the Action's manual events)
    try:
        base = urlsplit(event.server_url).path.rstrip("/")
        path = urlsplit(event.clone_url).path.rstrip("/")
    except ValueError:
        return Ignored("the clone URL cannot be read: not built")
    path = path.removesuffix(".git")
    expected = f"{base}/{source}"
    if path.lower() != expected.lower():
        return Ignored(
            f"the clone URL's path {path[:200]!r} is not the path of repository {source[:200]!r} "
            f"({expected[:200]!r}): a delivery builds only the repository it names"
        )
    return None


@functools.lru_cache(maxsize=64)
def _lowercase(hosts: tuple[str, ...]) -> frozenset[str]:
    return frozenset(host.lower() for host in hosts)


def build_options(route: Route, event: SourceEvent) -> BuildOptions:
    """The route's settings as BuildOptions for plan.plan_build: all of them. Which of them a build
    gets is the Grant's to say (bridge.core.trust.decide)."""
    clone = route.source_mode == "clone"
    return BuildOptions(
        project_name=route.project,
        source_mode=route.source_mode,
        clone_token_ref=str(route.clone_token) if clone and route.clone_token is not None else None,
        buildspec=route.buildspec,
        image_repository=route.image_repository,
        image_tag=route.image_tag,
        env_vars=route.env,
        compute_type=route.compute_type,
        build_image=route.build_image,
        privileged_mode=route.privileged_mode,
        timeout_minutes=route.timeout_minutes,
        extra_overrides=dict(route.overrides),
        batch=route.batch,
        registry=(
            RegistryAuth.from_json_secret(str(route.registry_credentials), server=route.registry_server)
            if route.registry_credentials is not None
            else None
        ),
        cache=route.cache,
        platforms=route.platforms,
        sign_key=route.sign,
    )
