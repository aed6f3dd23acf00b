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
from bridge.model import BuildRequest, EventKind, Ignored, SourceEvent
from bridge.plan import plan_build

__all__ = [
    "Accepted",
    "Outcome",
    "RerunRefused",
    "admit_rerun",
    "delivery_key",
    "idempotency_seed",
    "intake",
    "route_named",
    "start_request",
]

# The build being re-run: (route name, the event it built), or None when this bridge never built it.
OriginalBuild = Callable[[SourceEvent], "tuple[str, SourceEvent] | None"]
# The head SHA a maintainer approved for the event's change, or None.
ApprovedSha = Callable[[SourceEvent], "str | None"]


@dataclass(frozen=True)
class Accepted:
    event: SourceEvent
    route: Route
    grant: Grant


@dataclass(frozen=True)
class RerunRefused(Ignored):
    """A re-run of a build this bridge made that builds nothing now (its route is gone, takes no
    re-runs, or no longer admits the event): unlike other refusals it has a check to answer on, so
    the worker posts a completed one saying why (`route_name`: the original build's route)."""

    route_name: str = ""
    event: SourceEvent | None = None


Outcome = Accepted | Ignored | AwaitingApproval


def delivery_key(provider: str, delivery_id: str) -> str:
    """The de-duplication key (and idempotency seed) of a delivery: ids are namespaced per provider, so
    no delivery of one provider can make a delivery of the other a "duplicate" (and so never built)."""
    return f"{provider}:{delivery_id}"


def idempotency_seed(delivery_id: str, route_name: str) -> str:
    """The same delivery on the same route always plans the same token; anything else never does."""
    return f"delivery/{delivery_id}/{route_name}"


def start_request(event: SourceEvent, route: Route, grant: Grant, delivery_key: str) -> BuildRequest:
    """The StartBuild request for an admitted delivery (`delivery_key` as delivery_key() makes it):
    what the worker sends and, byte for byte, what `bridge plan` prints."""
    return plan_build(
        event,
        routing.build_options(route, event),
        grant=grant,
        idempotency_seed=idempotency_seed(delivery_key, route.name),
        delivery_id=delivery_key,
    )


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
    if event.kind == "rerun":
        found = original_build(event) if original_build is not None else None
        if found is None:
            return Ignored(f"re-run requested for {event.short_sha}, which this bridge has not built")
        route_name, original = found
        return admit_rerun(
            config, route_name, events.inherit_rerun(event, original), approved_sha=approved_sha
        )
    route = routing.match_route(event, config.routes)
    if isinstance(route, Ignored):
        return route
    return _admit(config, event, route, approved_sha)


def _admit(config: Config, event: SourceEvent, route: Route, approved_sha: ApprovedSha | None) -> Outcome:
    """The checks every routed event passes: its URLs on a configured host, bound to the repository it
    names, and the trust decision."""
    provider = config.github if event.provider == "github" else config.gitlab
    foreign = routing.foreign_host(event, provider.allowed_hosts if provider is not None else ())
    if foreign is not None:
        return foreign
    unbound = routing.unbound(event)
    if unbound is not None:
        return unbound
    approved = approved_sha(event) if approved_sha is not None and event.is_fork else None
    grant = decide(event, route, TrustFacts.of(event, approved_sha=approved))
    if isinstance(grant, Grant):
        return Accepted(event, route, grant)
    return grant


def admit_rerun(
    config: Config, route_name: str, event: SourceEvent, *, approved_sha: ApprovedSha | None = None
) -> Outcome:
    """A re-run (its event inherited from the build it re-runs, events.inherit_rerun) on the original
    build's route, by name: the intake's answer at the ack, and the worker's again at the start, since
    the config may have changed in between. Refused: a RerunRefused, which the worker reports."""
    route = _rerun_route(config, route_name, event)
    outcome = route if isinstance(route, Ignored) else _admit(config, event, route, approved_sha)
    if isinstance(outcome, Ignored) and not isinstance(outcome, RerunRefused):
        return RerunRefused(outcome.reason, route_name=route_name, event=event)
    return outcome


def _rerun_route(config: Config, route_name: str, event: SourceEvent) -> Route | RerunRefused:
    """The original build's route, while it still exists and still builds the original event: asking
    for a re-run must never move a build to another route (with other secrets)."""
    route = route_named(config, route_name)
    if route is None:
        reason = f"re-run of {event.short_sha}: its build ran on routes[{route_name}], which no longer exists"
        return RerunRefused(reason, route_name=route_name, event=event)
    if "rerun" not in route.events:
        reason = f"re-run of {event.short_sha}: rerun events are not in routes[{route_name}].events"
        return RerunRefused(reason, route_name=route_name, event=event)
    admitted = [routing.match_route(built, (route,)) for built in _as_built(event)]
    if all(isinstance(answer, Ignored) for answer in admitted):
        reason = (
            f"re-run of {event.short_sha}: routes[{route_name}] no longer builds it ({_reason(admitted[0])})"
        )
        return RerunRefused(reason, route_name=route_name, event=event)
    return route


def _as_built(event: SourceEvent) -> tuple[SourceEvent, ...]:
    """The event a re-run re-builds, as the route's filters see it. A re-run's event (and a re-run
    build's stored event) has kind "rerun"; what it re-runs follows from its fields: a change, a tag
    (pushed, or a release's), or a branch commit (pushed, or built on request)."""
    if event.kind != "rerun":
        return (event,)
    kinds: tuple[EventKind, ...]
    if event.pr_number is not None:
        kinds = ("merge_request",) if event.provider == "gitlab" else ("pull_request",)
    elif event.tag is not None:
        kinds = ("tag", "release")
    else:
        kinds = ("push", "manual")
    return tuple(dataclasses.replace(event, kind=kind) for kind in kinds)


def _reason(answer: Route | Ignored) -> str:
    return answer.reason if isinstance(answer, Ignored) else ""
