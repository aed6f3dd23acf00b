"""The operator's view: what became of each delivery, its build and the status its commit got.

Two front ends read the same `Overview` / `DeliveryDetail`: the page at `/` (server-rendered
Jinja, no script, registered by `register`) and `bridge status` (text). Both only read the store;
the worker and the webhook handlers write what they show (bridge.store, bridge.core.activity).

Who may see the page is decided once per request by `_access`: it lists repositories, commits and
build requests, so it is off on a public bind unless switched on or put behind a token
(docs/operator.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from flask import Flask, Response, render_template, request

from bridge.config import Config
from bridge.core.activity import ReportedStatus, format_duration, mask_request, read_status
from bridge.store import DeliveryRow, StateStore, TrackedBuild

__all__ = [
    "DeliveryDetail",
    "DeliveryView",
    "Overview",
    "delivery_detail",
    "is_loopback",
    "overview",
    "register",
]

PAGE_SIZE: Final = 50
_PROXY_HEADERS: Final = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")


@dataclass(frozen=True)
class DeliveryView:
    """One delivery as a row of the page: the store's rows, plus what they mean."""

    row: DeliveryRow
    build: TrackedBuild | None
    status: ReportedStatus | None
    now: float

    @property
    def received(self) -> str:
        return _when(self.row.received_at)

    @property
    def short_sha(self) -> str:
        return (self.row.sha or "")[:10]

    @property
    def outcome(self) -> str:
        return self.row.outcome

    @property
    def reason(self) -> str:
        """Why it was ignored, why it failed, or why its start is being retried."""
        return self.row.last_error or ""

    @property
    def build_state(self) -> str:
        """CodeBuild's word for the build (SUCCEEDED, IN_PROGRESS, ...), as last seen."""
        if self.build is None:
            return ""
        return self.build.last_build_status or (self.status.build_status if self.status else "") or "STARTED"

    @property
    def phase(self) -> str:
        return (self.status.phase or "") if self.status is not None else ""

    @property
    def duration(self) -> str:
        if self.status is not None and self.status.duration_seconds is not None:
            return format_duration(self.status.duration_seconds)
        if self.build is not None and self.build.created_at is not None:
            end = self.build.updated_at if self.build.done else self.now
            return format_duration(end - self.build.created_at)
        return ""

    @property
    def link(self) -> str:
        return self.status.console_url if self.status is not None else ""

    @property
    def commit_status(self) -> str:
        """What the commit shows: the reported state (and conclusion) and its one-line title."""
        if self.status is None:
            return "not reported yet" if self.build is not None else ""
        state = self.status.conclusion or self.status.state
        return f"{state}: {self.status.title}" if self.status.title else state


@dataclass(frozen=True)
class CommitView:
    provider: str
    repository: str
    sha: str
    latest: DeliveryView  # the newest delivery of this commit that started a build

    @property
    def short_sha(self) -> str:
        return self.sha[:10]


@dataclass(frozen=True)
class Overview:
    deliveries: list[DeliveryView]
    repository: str
    sha: str

    @property
    def builds(self) -> list[DeliveryView]:
        return [view for view in self.deliveries if view.build is not None]

    @property
    def commits(self) -> list[CommitView]:
        """Each commit once, with the status its newest build gave it."""
        seen: dict[tuple[str, str, str], CommitView] = {}
        for view in self.deliveries:
            if view.build is None or not view.row.repository or not view.row.sha:
                continue
            key = (view.row.provider, view.row.repository, view.row.sha)
            seen.setdefault(key, CommitView(*key, latest=view))
        return list(seen.values())


@dataclass(frozen=True)
class DeliveryDetail:
    view: DeliveryView
    event: dict[str, Any] | None  # the SourceEvent's fields (no secrets: what the payload said)
    request: dict[str, Any] | None  # the StartBuild request, masked (bridge.core.activity.mask_request)
    grant: dict[str, Any] | None  # what the build was granted and what was dropped, when known

    @property
    def grant_lines(self) -> list[str]:
        """The grant as a person reads it (`describe` of bridge.core.trust.Grant), when recorded so."""
        lines = self.grant.get("describe") if self.grant is not None else None
        return [str(line) for line in lines] if isinstance(lines, list) else []

    @property
    def request_text(self) -> str:
        return json.dumps(self.request, indent=2, sort_keys=True) if self.request is not None else ""

    @property
    def event_text(self) -> str:
        return json.dumps(self.event, indent=2, sort_keys=True) if self.event is not None else ""


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _views(store: StateStore, rows: list[DeliveryRow], now: float) -> list[DeliveryView]:
    builds = store.get_builds([row.build_id for row in rows if row.build_id])
    views = []
    for row in rows:
        build = builds.get(row.build_id) if row.build_id else None
        views.append(DeliveryView(row, build, read_status(build.status_json) if build else None, now))
    return views


def overview(
    store: StateStore,
    *,
    repository: str = "",
    sha: str = "",
    limit: int = PAGE_SIZE,
    clock: Callable[[], float] = time.time,
) -> Overview:
    rows = store.recent_deliveries(limit, repository=repository or None, sha=sha or None)
    return Overview(_views(store, rows, clock()), repository, sha)


def delivery_detail(
    store: StateStore,
    delivery_id: str,
    *,
    grant_of: Callable[[DeliveryRow], dict[str, Any] | None] | None = None,
    clock: Callable[[], float] = time.time,
) -> DeliveryDetail | None:
    row = store.get_delivery(delivery_id)
    if row is None:
        return None
    (view,) = _views(store, [row], clock())
    loaded = _json_object(row.request_json)
    request_data = mask_request(loaded) if loaded is not None else None
    event = dict(vars(row.event)) if row.event is not None else None
    grant = _json_object(row.grant_json)
    if grant is None and grant_of is not None:
        grant = grant_of(row)
    return DeliveryDetail(view, event, request_data, grant)


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        loaded = json.loads(text)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


# -- who may see it ------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: a bind (or a client) only this machine reaches."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _basic_password(environ: Mapping[str, Any]) -> str | None:
    header = str(environ.get("HTTP_AUTHORIZATION") or "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


# -- the page -------------------------------------------------------------------------------------------


def register(
    app: Flask,
    config: Config,
    store: StateStore,
    *,
    reveal_token: Callable[[], str] | None,
    loopback_bind: bool,
    grant_of: Callable[[DeliveryRow], dict[str, Any] | None] | None = None,
) -> None:
    """Serve `/` and `/deliveries/<id>` on `app`, to whom the settings allow.

    `reveal_token`: the operator token's value (read when a request gives one), None when no token
    is configured. `loopback_bind`: whether the server listens on a loopback address only.
    """
    mode = config.server.operator_page

    def refused() -> Response | None:
        """None when this request may see the page; else the answer (404 as if absent, or 401)."""
        environ = request.environ
        if mode == "off":
            return _not_served('the operator page is off (server.operator_page = "off")')
        if reveal_token is not None:
            given = _basic_password(environ)
            if given is not None and hmac.compare_digest(given.encode(), reveal_token().encode()):
                return None
            return Response(
                "the operator page needs the operator token as the password (any user name)\n",
                status=401,
                content_type="text/plain; charset=utf-8",
                headers={"WWW-Authenticate": 'Basic realm="bridge operator page", charset="UTF-8"'},
            )
        if mode == "on":
            return None
        remote = str(environ.get("REMOTE_ADDR") or "")
        if loopback_bind and is_loopback(remote) and not any(environ.get(h) for h in _PROXY_HEADERS):
            return None
        return _not_served(
            "the operator page is served only on a loopback bind to local clients unless "
            "server.operator_page or server.operator_token says otherwise"
        )

    @app.get("/")
    def operator_page() -> Response:
        if (answer := refused()) is not None:
            return answer
        repository = request.args.get("repository", "").strip()[:300]
        sha = request.args.get("commit", "").strip()[:64]
        data = overview(store, repository=repository, sha=sha)
        return _html(render_template("operator/overview.html", data=data))

    @app.get("/deliveries/<delivery_id>")
    def operator_delivery(delivery_id: str) -> Response:
        if (answer := refused()) is not None:
            return answer
        detail = delivery_detail(store, delivery_id, grant_of=grant_of)
        if detail is None:
            return _html(render_template("operator/missing.html", delivery_id=delivery_id), status=404)
        return _html(render_template("operator/delivery.html", detail=detail))


def _html(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    # No script, no frames, nothing fetched from elsewhere: the page is plain HTML and its own CSS.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _not_served(why: str) -> Response:
    body = json.dumps({"error": "Not Found", "hint": why})
    return Response(body, status=404, content_type="application/json")


# -- the same, as text (`bridge status`) -----------------------------------------------------------------


def delivery_lines(view: DeliveryView) -> list[str]:
    """One delivery as `bridge status` prints it: what the page's rows say, one fact a line."""
    row = view.row
    head = f"delivery {row.delivery_id}  {row.provider} {row.event_name}"
    if row.repository:
        head += f"  {row.repository}"
    if row.sha:
        head += f"  {row.sha}"
    lines = [head, f"  received  {view.received}", f"  outcome   {view.outcome}"]
    if view.reason:
        lines.append(f"  reason    {view.reason}")
    if row.route_name:
        lines.append(f"  route     {row.route_name}")
    if view.build is not None:
        build = f"  build     {view.build.build_id}  {view.build_state}"
        if view.phase:
            build += f" ({view.phase})"
        if view.duration:
            build += f"  {view.duration}"
        lines.append(build)
        if view.link:
            lines.append(f"  link      {view.link}")
        lines.append(f"  commit    {view.commit_status}")
    return lines


def detail_lines(detail: DeliveryDetail) -> list[str]:
    lines = delivery_lines(detail.view)
    if detail.grant is not None:
        lines.append("  grant")
        shown = detail.grant_lines or json.dumps(detail.grant, indent=2, sort_keys=True).splitlines()
        lines.extend("    " + line for line in shown)
    if detail.request is not None:
        lines.append("  StartBuild request (credentials masked)")
        lines.extend("    " + line for line in detail.request_text.splitlines())
    return lines
