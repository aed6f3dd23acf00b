"""Admission: from a parsed delivery to "build this, with this grant" or why not, the one path every
front door takes.

The webhook server's handlers and `bridge plan` both call `intake`, so what `bridge plan` prints for a
payload is what the server would do with it: the same host check, the same route, the same trust
decision (bridge.core.trust.decide). The worker decides again when it starts the build, because the
config (or an approval) may have changed in between.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge import events, routing
from bridge.config import Config, Route
from bridge.core.trust import AwaitingApproval, Grant, TrustFacts, decide
from bridge.model import EventKind, Ignored, SourceEvent

__all__ = ["Accepted", "Outcome", "delivery_key", "intake", "route_named"]

# The build being re-run: (route name, the event it built), or None when this bridge never built it.
OriginalBuild = Callable[[SourceEvent], "tuple[str, SourceEvent] | None"]
# The head SHA a maintainer approved for the event's change, or None.
ApprovedSha = Callable[[SourceEvent], "str | None"]


@dataclass(frozen=True)
class Accepted:
    event: SourceEvent
    route: Route
    grant: Grant


Outcome = Accepted | Ignored | AwaitingApproval


def delivery_key(provider: str, delivery_id: str) -> str:
    """The de-duplication key (and idempotency seed) of a delivery: ids are namespaced per provider, so
    no delivery of one provider can make a delivery of the other a "duplicate" (and so never built)."""
    return f"{provider}:{delivery_id}"


def route_named(config: Config, name: str) -> Route | None:
    return next((route for route in config.routes if route.name == name), None)


def intake(
    config: Config,
    result: SourceEvent | Ignored,
    *,
    original_build: OriginalBuild | None = None,
    approved_sha: ApprovedSha | None = None,
    scopes: Sequence[tuple[str, ...]] = (),
) -> Outcome:
    """What to do with one understood delivery. Pure but for the two lookups passed in.

    `scopes`: for each secret check the delivery passed (a GitLab delivery may pass two), the repository
    globs of the scoped secrets that verified it; a check passed by an unscoped secret adds none.
    """
    if isinstance(result, Ignored):
        return result
    event = result
    for scope in scopes:
        if not routing.glob_match(event.repository, scope, ignore_case=True):
            return Ignored(
                f"the webhook secret that verified this delivery is scoped to other repositories than "
                f"{event.repository[:200]}: not built"
            )
    rerun_route: Route | None = None
    if event.kind == "rerun":
        rerun = _rerun(config, event, original_build)
        if isinstance(rerun, Ignored):
            return rerun
        event, rerun_route = rerun
    provider = config.github if event.provider == "github" else config.gitlab
    foreign = routing.foreign_host(event, provider.allowed_hosts if provider is not None else ())
    if foreign is not None:
        return foreign
    route = rerun_route if rerun_route is not None else routing.match_route(event, config.routes)
    if isinstance(route, Ignored):
        return route
    unbound = routing.unbound(event)
    if unbound is not None:
        return unbound
    approved = approved_sha(event) if approved_sha is not None and event.is_fork else None
    grant = decide(event, route, TrustFacts.of(event, approved_sha=approved))
    if isinstance(grant, Grant):
        return Accepted(event, route, grant)
    return grant


def _rerun(
    config: Config, rerun: SourceEvent, original_build: OriginalBuild | None
) -> tuple[SourceEvent, Route] | Ignored:
    """A re-run builds what the original build built, on the original build's route, by name, and only
    while that route still exists and still builds the original event: asking for a re-run must never
    move a build to another route (with other secrets)."""
    found = original_build(rerun) if original_build is not None else None
    if found is None:
        return Ignored(f"re-run requested for {rerun.short_sha}, which this bridge has not built")
    route_name, original = found
    route = route_named(config, route_name)
    if route is None:
        return Ignored(
            f"re-run of {rerun.short_sha}: its build ran on routes[{route_name}], which no longer exists"
        )
    if "rerun" not in route.events:
        return Ignored(f"re-run of {rerun.short_sha}: rerun events are not in routes[{route_name}].events")
    admitted = routing.match_route(_as_built(original), (route,))
    if isinstance(admitted, Ignored):
        return Ignored(
            f"re-run of {rerun.short_sha}: routes[{route_name}] no longer builds it ({admitted.reason})"
        )
    return events.inherit_rerun(rerun, original), route


def _as_built(event: SourceEvent) -> SourceEvent:
    """A re-run build's stored event is itself a "rerun"; what it re-ran follows from its fields, so a
    re-run of a re-run meets the route's branch and tag filters like the first build did."""
    if event.kind != "rerun":
        return event
    if event.pr_number is not None:
        kind: EventKind = "merge_request" if event.provider == "gitlab" else "pull_request"
    elif event.tag is not None:
        kind = "tag"
    else:
        kind = "push"
    return dataclasses.replace(event, kind=kind)
