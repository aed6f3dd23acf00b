"""Front door 2: the webhook server's HTTP routes.

Each route does the same short, fast thing: read the raw body (bounded), verify it, parse it,
route it, persist it, answer. Starting the build is the worker's job, so the answer never waits on
CodeBuild, GitHub or GitLab. The meaning of a delivery lives in events/verify/routing; this module
only maps their results and errors onto HTTP answers:

  202 accepted for building · 200 understood but not built (ignored / duplicate / pong)
  401 bad or missing signature or token (also an SNS message from a topic not configured)
  400 missing header, wrong content type, unparseable body · 405 wrong method · 413 too large
  503 the store or a secret backend is unavailable (the sender retries; nothing was half-done)

GitLab disables a hook after four failed deliveries, so a verified GitLab delivery is never
refused for its content: an event or payload bridge does not understand is answered 200 ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from bridge import events, jsonfast, operator_page, routing, verify
from bridge.admission import RerunRefused, delivery_key, intake
from bridge.config import Config
from bridge.core.approval import (
    ApprovalCommand,
    Refusal,
    approval_delivery_id,
    built_by_approval,
    check_approver,
    check_head,
)
from bridge.core.trust import AwaitingApproval
from bridge.errors import (
    BadRequestError,
    BridgeError,
    CredentialsError,
    PayloadTooLargeError,
    ReporterError,
    SecretError,
    SignatureError,
)
from bridge.logs import LOGGED_BY_APP, log_fields
from bridge.model import Ignored, SourceEvent
from bridge.secret import Secret
from bridge.secrets import SecretRef
from bridge.services import ApprovalLookups, Services, is_sns_subscribe_url
from bridge.worker import DETAIL_TYPE, Worker

log = logging.getLogger("bridge.app")

T = TypeVar("T")

# A burst of forged signatures must not turn into a burst of Secrets Manager reads.
SECRET_REFRESH_MIN_INTERVAL: Final = 10.0
WORKER_KEY: Final = "bridge.worker"
UNREADABLE: Final = {
    "error": "a secret or credential this server needs cannot be read",
    "hint": "retry later; the server log says which one and why",
}
INTAKE_KEY: Final = "bridge.intake"
# Where a POST carries a body the app reads; anything else is answered without reading one.
BODY_PATHS: Final = frozenset({"/webhooks/github", "/webhooks/gitlab", "/events/codebuild"})
# Answered by threads of their own (bridge.server), so a busy request pool never hides a live server.
OPS_PATHS: Final = frozenset({"/healthz"})
_STANDARD_HEADERS: Final = ("webhook-id", "webhook-timestamp", "webhook-signature")

HeaderGetter = Callable[[str], "str | None"]


class BackgroundWorker(Protocol):
    """What the routes need from the worker: `bridge.worker.Worker` in this process, or
    `bridge.worker_process.WorkerProcess` (what `bridge serve` runs) in a process of its own."""

    def wake(self) -> None: ...

    def handle_codebuild_event(self, detail: Mapping[str, Any]) -> bool: ...

    @property
    def started(self) -> bool: ...

    @property
    def running(self) -> bool: ...


@dataclass(frozen=True)
class Intake:
    """What `bridge serve` needs from the app before a request reaches it: how long a client may take
    to send it, how many body bytes may be held at once, and which requests the headers alone refuse
    (those are handed over without their body, which is then never read)."""

    max_body_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_inflight_body_bytes: int
    refused: Callable[[str, str, HeaderGetter], bool]  # (method, path, header) -> refused from headers
    body_paths: frozenset[str] = BODY_PATHS
    ops_paths: frozenset[str] = OPS_PATHS


@dataclass
class _Delivery:
    """What one request's log line and metrics say about it, filled in as the request is understood."""

    provider: str
    started: float
    environ: dict[str, Any]  # the WSGI environ: headers are read from it, not through flask.request
    event: str = ""
    delivery: str | None = None
    route: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


class _SecretRefresher:
    """Re-reads a provider's webhook secrets after a signature failure, at most every few seconds.

    It also remembers which secrets could not be read at all, for /readyz: a probe does not read
    secrets itself (that would cost an API call per probe, and fail a server with no delivery yet),
    but once a read failed it re-tries at most every few seconds, so readiness recovers by itself.
    """

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._unreadable: dict[str, tuple[tuple[SecretRef, ...], str]] = {}

    def verify(self, name: str, refs: Sequence[SecretRef], check: Callable[[list[Secret]], T]) -> T:
        try:
            result = self._verify(name, refs, check)
        except (SecretError, CredentialsError) as exc:
            with self._lock:
                self._unreadable[name] = (tuple(refs), exc.message)
            raise
        except SignatureError:
            self._readable(name)
            raise
        self._readable(name)
        return result

    def _readable(self, name: str) -> None:
        if name in self._unreadable:  # the usual answer is no: then no lock on every delivery
            with self._lock:
                self._unreadable.pop(name, None)

    def unreadable(self) -> list[str]:
        """Why deliveries would get 503 now: the secrets whose latest read failed (re-read, rate-limited)."""
        with self._lock:
            failing = dict(self._unreadable)
        reasons: list[str] = []
        for name, (refs, last_error) in failing.items():
            error = last_error
            if self._may_refresh(f"readyz:{name}"):
                try:
                    self._services.secrets.get_all(refs, key=name)
                except BridgeError as exc:
                    error = exc.message
                else:
                    with self._lock:
                        self._unreadable.pop(name, None)
                    continue
            # /readyz answers anyone: the reason names the config key, the log says which secret and why.
            log.warning("a secret cannot be read", extra={"key": name, "error": error})
            reasons.append(f"{name} cannot be read (see the server log)")
        return reasons

    def _verify(self, name: str, refs: Sequence[SecretRef], check: Callable[[list[Secret]], T]) -> T:
        secrets = self._services.secrets
        try:
            return check(secrets.get_all(refs, key=name))
        except SignatureError:
            if not refs or not self._may_refresh(name):
                raise
        for ref in refs:
            secrets.invalidate(ref)
        return check(secrets.get_all(refs, key=name))

    def _may_refresh(self, name: str) -> bool:
        now = self._services.monotonic()
        with self._lock:
            if now - self._last.get(name, -SECRET_REFRESH_MIN_INTERVAL) < SECRET_REFRESH_MIN_INTERVAL:
                return False
            self._last[name] = now
            return True


def create_app(
    config: Config, services: Services, *, worker: BackgroundWorker | None = None, loopback_bind: bool = False
) -> Flask:
    """The WSGI app. The worker is created here unless given (not started): `bridge.server` starts it.

    `loopback_bind`: the server listens on a loopback address only, which is what lets the operator
    page be served without a token by default (bridge.operator_page).
    """
    app = Flask("bridge")
    # One byte over the limit: werkzeug truncates a body of unknown length (chunked) at this cap
    # instead of failing, so reading limit + 1 bytes is how an oversized one is told apart.
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes + 1
    worker = worker if worker is not None else Worker(services)
    app.extensions[WORKER_KEY] = worker
    refresher = _SecretRefresher(services)
    max_body = config.server.max_body_bytes

    # -- helpers bound to this app ------------------------------------------------------------

    def check_headers(path: str, header: HeaderGetter) -> None:
        """Everything the headers alone can refuse, checked before a byte of the body is read: an
        unsigned 25 MiB post must cost neither the time to receive it nor the memory to hold it."""
        length = (header("Content-Length") or "").strip()
        if length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > max_body):
            raise _too_large(max_body)
        if path == "/webhooks/github":
            if config.github is None:
                raise _github_not_configured()
            verify.check_github_signature_header(header("X-Hub-Signature-256"))
        elif path == "/webhooks/gitlab":
            gitlab = config.gitlab
            if gitlab is None:
                raise _gitlab_not_configured()
            if gitlab.signing_tokens:
                verify.check_standard_webhook_headers(
                    {name: header(name) or "" for name in _STANDARD_HEADERS}, now=services.clock()
                )
            if gitlab.webhook_tokens or not gitlab.signing_tokens:
                verify.check_gitlab_token_header(header("X-Gitlab-Token"))

    def refused(method: str, path: str, header: HeaderGetter) -> bool:
        if method != "POST" or path not in BODY_PATHS:
            return True  # answered without reading a body (405, 404, or not a POST at all)
        try:
            check_headers(path, header)
        except BridgeError:
            return True
        return False

    app.extensions[INTAKE_KEY] = Intake(
        max_body_bytes=max_body,
        header_timeout_seconds=config.server.header_timeout_seconds,
        body_timeout_seconds=config.server.body_timeout_seconds,
        max_inflight_body_bytes=max(config.server.max_inflight_body_bytes, max_body),
        refused=refused,
    )

    def answer(ctx: _Delivery, status: int, body: Mapping[str, Any], outcome: str) -> Response:
        latency = services.monotonic() - ctx.started
        services.metrics.delivery(ctx.provider, ctx.event, outcome, latency)
        delivery, event = ctx.delivery, ctx.event or None
        if delivery is None or event is None:  # refused before the headers were read: say what was sent
            delivery, event = _sent_ids(ctx.environ, ctx.provider, delivery, event)
        log_fields(
            log,
            logging.WARNING if status >= 500 else logging.INFO,
            "delivery",
            {
                "delivery": delivery,
                "provider": ctx.provider,
                "event": event,
                "outcome": outcome,
                "route": ctx.route,
                "status": status,
                "latency_ms": round(latency * 1000, 2),
                "remote": ctx.environ.get("REMOTE_ADDR"),
                **ctx.fields,
            },
        )
        ctx.environ[LOGGED_BY_APP] = True
        return json_response(status, body)

    def error_answer(ctx: _Delivery, exc: BridgeError) -> Response:
        status = _http_status(exc)
        outcome = {401: "unauthorized", 400: "bad_request", 413: "too_large"}.get(status, "error")
        ctx.fields["error"] = exc.message
        if isinstance(exc, SecretError | CredentialsError):
            # Anyone may post here: secret names, ARNs and JSON keys go to the log line above, not to them.
            return answer(ctx, status, UNREADABLE, outcome)
        return answer(ctx, status, {"error": exc.message, "hint": exc.hint}, outcome)

    def guarded(ctx: _Delivery, handle: Callable[[], Response]) -> Response:
        try:
            return handle()
        except BridgeError as exc:
            return error_answer(ctx, exc)
        except RequestEntityTooLarge:
            return error_answer(ctx, _too_large(max_body))
        except Exception:
            log.exception("unexpected error handling a delivery", extra={"delivery": ctx.delivery})
            return answer(ctx, 500, {"error": "internal error", "hint": "see the server log"}, "error")

    def original_build(rerun: SourceEvent) -> tuple[str, SourceEvent] | None:
        original = services.store.latest_build_of(rerun.provider, rerun.repository, rerun.sha)
        return (original.route_name, original.event) if original is not None else None

    def restart_unstarted(rerun: SourceEvent) -> str | None:
        """A re-run of a commit whose delivery never started a build (refused for good, or waiting
        for CodeBuild): that delivery starts again, on the check run or status it already has."""
        for row in services.store.recent_deliveries(20, repository=rerun.repository, sha=rerun.sha):
            ours = row.provider == rerun.provider and row.event is not None and row.event.sha == rerun.sha
            stalled = ours and row.state in ("failed", "pending")
            if stalled and services.store.restart_delivery(row.delivery_id):
                return row.delivery_id
        return None

    def restart(ctx: _Delivery, key: str) -> Response:
        services.delivery_queue.enqueue(key)
        worker.wake()
        shown = key.partition(":")[2] if key.startswith(("github:", "gitlab:")) else key
        return answer(ctx, 202, {"delivery": shown, "restarted": True}, "restarted")

    def ignore(
        ctx: _Delivery,
        reason: str,
        *,
        repository: str | None,
        sha: str | None = None,
        outcome: str = "ignored",
    ) -> Response:
        """Answer 200 and remember the delivery and why it was not built, for the operator page.

        Only verified deliveries get here, so nobody without the secret can fill the store. The
        record is a courtesy: if the store cannot take it, the answer is the same.
        """
        if ctx.delivery is not None:
            try:
                services.store.add_ignored(
                    delivery_key(ctx.provider, ctx.delivery),
                    ctx.provider,
                    ctx.event,
                    reason,
                    repository=repository,
                    sha=sha,
                )
            except BridgeError as exc:
                log.warning(
                    "could not record an ignored delivery",
                    extra={"delivery": ctx.delivery, "event": ctx.event, "error": exc.message},
                )
        body = {"pong": True} if outcome == "pong" else {"ignored": reason}
        return answer(ctx, 200, body, outcome)

    def scope_of(
        name: str,
        refs: Sequence[SecretRef],
        scopes: Mapping[SecretRef, tuple[str, ...]],
        verifies: Callable[[Secret], bool],
    ) -> list[tuple[str, ...]]:
        """The repositories a verified delivery may build, as one list of globs ([] = any): the union
        of the scopes of the secrets that verify it, unless an unscoped one does too."""
        if not scopes:
            return []
        globs: list[str] = []
        for ref, secret in zip(refs, services.secrets.get_all(refs, key=name), strict=True):
            if verifies(secret):
                if ref not in scopes:
                    return []
                globs.extend(scopes[ref])
        return [tuple(globs)]

    def accept(
        ctx: _Delivery,
        result: SourceEvent | Ignored,
        delivery_id: str,
        event_name: str,
        repository: str | None,
        *,
        scopes: Sequence[tuple[str, ...]] = (),
    ) -> Response:
        if isinstance(result, SourceEvent) and result.kind == "rerun" and original_build(result) is None:
            restarted = restart_unstarted(result)
            if restarted is not None:
                return restart(ctx, restarted)
        outcome = intake(
            config, result, original_build=original_build, approved_sha=services.approved_sha, scopes=scopes
        )
        if isinstance(outcome, RerunRefused) and outcome.event is not None:
            # Persisted like a build, so the worker answers on the check that was re-run (a write to
            # GitHub has no place in the ack); it decides again and builds only if admitted by then.
            refused = outcome.event
            ctx.route = outcome.route_name
            ctx.fields.update(repository=refused.repository, sha=refused.sha)
            key = delivery_key(refused.provider, delivery_id)
            if services.store.add_delivery(key, refused.provider, event_name, outcome.route_name, refused):
                services.delivery_queue.enqueue(key)
                worker.wake()
            else:
                services.delivery_queue.nudge(key)
            return answer(ctx, 200, {"ignored": outcome.reason}, "ignored")
        if isinstance(outcome, Ignored):
            where = result if isinstance(result, SourceEvent) else None
            return ignore(
                ctx,
                outcome.reason,
                repository=where.repository if where is not None else repository,
                sha=where.sha if where is not None else None,
            )
        if isinstance(outcome, AwaitingApproval):
            ctx.route = outcome.route
            if isinstance(result, SourceEvent):
                # Persisted like a build, so the worker posts the status that says how to approve
                # (a write to GitHub/GitLab has no place in the ack) — on the check that was re-run
                # too; the worker decides again and builds nothing while the head is not approved.
                # A re-run is stored as the build it re-runs (its fork included), as when admitted.
                found = original_build(result) if result.kind == "rerun" else None
                if found is not None:
                    result = events.inherit_rerun(result, found[1])
                ctx.fields.update(repository=result.repository, sha=result.sha)
                key = delivery_key(result.provider, delivery_id)
                if services.store.add_delivery(key, result.provider, event_name, outcome.route, result):
                    services.delivery_queue.enqueue(key)
                    worker.wake()
                else:
                    services.delivery_queue.nudge(key)
            return answer(ctx, 200, {"waiting": outcome.reason, "delivery": delivery_id}, "waiting")
        matched, result = outcome.route, outcome.event
        ctx.route = matched.name
        approval_id = built_by_approval(result, matched.forks, delivery_id)
        if approval_id is not None:
            # An approved fork head (a reopened pull request, a redelivered push) is built under its
            # approval's delivery only, so it is never built twice.
            return answer(ctx, 200, {"duplicate": approval_id}, "duplicate")
        ctx.fields.update(repository=result.repository, sha=result.sha)
        if outcome.grant.dropped:
            ctx.fields["dropped"] = list(outcome.grant.dropped)
        key = delivery_key(result.provider, delivery_id)
        added = services.store.add_delivery(key, result.provider, event_name, matched.name, result)
        if not added:
            if services.store.restart_delivery(key):
                # GitHub's Redeliver (same id) of a delivery whose start failed: start it again now.
                return restart(ctx, key)
            # A replica may have stored the original and died before enqueueing it: enqueue again.
            services.delivery_queue.nudge(key)
            return answer(ctx, 200, {"duplicate": delivery_id}, "duplicate")
        services.delivery_queue.enqueue(key)  # persisted first: a lost message is re-sent above
        worker.wake()
        return answer(ctx, 202, {"delivery": delivery_id, "route": matched.name}, "accepted")

    def approve(ctx: _Delivery, command: ApprovalCommand | Ignored) -> Response:
        """A maintainer's approval of a fork's head: checked against the providers' APIs, recorded
        with the head SHA, then the change goes through the ordinary intake (the trust decision sees
        the approval) under a delivery id of its own, so two approvals of one head build once."""
        if isinstance(command, Ignored):
            return ignore(ctx, command.reason, repository=None)
        ctx.fields.update(approver=command.by, change=command.label)
        decision = _judge_approval(config, services.approval_lookups, command)
        if isinstance(decision, Refusal):
            log.warning(
                "approval refused",
                extra={"delivery": ctx.delivery, "approver": command.by, "change": command.label},
            )
            ctx.fields["refused"] = decision.reason
            return ignore(
                ctx, decision.reason, repository=command.repository, sha=command.sha, outcome="refused"
            )
        if isinstance(decision, Ignored):
            return ignore(ctx, decision.reason, repository=command.repository, sha=command.sha)
        change = decision
        services.store.record_approval(
            change.provider, change.repository, change.pr_number or 0, change.sha, command.by
        )
        log.info(
            "approval recorded",
            extra={
                "delivery": ctx.delivery,
                "approver": command.by,
                "change": command.label,
                "sha": change.sha,
            },
        )
        return accept(ctx, change, approval_delivery_id(change), ctx.event, change.repository)

    def gitlab_approve(ctx: _Delivery, command: ApprovalCommand | Ignored) -> Response:
        """GitLab disables a hook after four failed deliveries: an approval that cannot be checked now
        (GitLab's API failing) is answered 200 with the reason, and the maintainer comments again."""
        try:
            return approve(ctx, command)
        except ReporterError as exc:
            log.warning("approval not checked", extra={"delivery": ctx.delivery, "error": exc.message})
            reason = f"approval not checked: {exc.message}"
            return ignore(
                ctx, reason, repository=None if isinstance(command, Ignored) else command.repository
            )

    # -- webhooks -------------------------------------------------------------------------------

    @app.post("/webhooks/github")
    def github_webhook() -> Response:
        ctx = _Delivery("github", services.monotonic(), request.environ)

        def handle() -> Response:
            environ = ctx.environ
            check_headers("/webhooks/github", lambda name: _header(environ, name))
            body = _read_body(environ, max_body)
            settings = config.github
            if settings is None:
                raise _github_not_configured()
            header = _header(ctx.environ, "X-Hub-Signature-256")
            refresher.verify(
                "github.webhook_secrets",
                settings.webhook_secrets,
                lambda secrets: verify.verify_github_signature(body, header, secrets),
            )
            scopes = scope_of(
                "github.webhook_secrets",
                settings.webhook_secrets,
                settings.secret_scopes,
                lambda secret: _passes(verify.verify_github_signature, body, header, [secret]),
            )
            ctx.event = _required_header(ctx.environ, "X-GitHub-Event", "GitHub")
            ctx.delivery = _required_header(ctx.environ, "X-GitHub-Delivery", "GitHub")
            if ctx.event == "ping":
                return ignore(
                    ctx, "ping: the webhook is set up; nothing to build", repository=None, outcome="pong"
                )
            _require_json_content_type(ctx.environ, "set the webhook's Content type to application/json")
            payload = _json_object(body)
            result = events.parse_delivery(
                "github",
                ctx.event,
                payload,
                api_url=settings.api_url,
                approval_command=settings.approval_command,
            )
            if isinstance(result, ApprovalCommand):
                return approve(ctx, result)
            repository = _named(payload, "repository", "full_name")
            return accept(ctx, result, ctx.delivery, ctx.event, repository, scopes=scopes)

        return guarded(ctx, handle)

    @app.post("/webhooks/gitlab")
    def gitlab_webhook() -> Response:
        ctx = _Delivery("gitlab", services.monotonic(), request.environ)

        def handle() -> Response:
            environ = ctx.environ
            check_headers("/webhooks/gitlab", lambda name: _header(environ, name))
            body = _read_body(environ, max_body)
            settings = config.gitlab
            if settings is None:
                raise _gitlab_not_configured()
            headers = dict(request.headers.items())
            signed_id: str | None = None
            scopes: list[tuple[str, ...]] = []
            if settings.signing_tokens:
                now = services.clock()
                signed_id = refresher.verify(
                    "gitlab.signing_tokens",
                    settings.signing_tokens,
                    lambda secrets: verify.verify_standard_webhook(body, headers, secrets, now=now),
                )
                scopes += scope_of(
                    "gitlab.signing_tokens",
                    settings.signing_tokens,
                    settings.secret_scopes,
                    lambda secret: _passes(verify.verify_standard_webhook, body, headers, [secret], now=now),
                )
            if settings.webhook_tokens or not settings.signing_tokens:
                token = _header(ctx.environ, "X-Gitlab-Token")
                refresher.verify(
                    "gitlab.webhook_tokens",
                    settings.webhook_tokens,
                    lambda secrets: verify.verify_gitlab_token(token, secrets),
                )
                scopes += scope_of(
                    "gitlab.webhook_tokens",
                    settings.webhook_tokens,
                    settings.secret_scopes,
                    lambda secret: _passes(verify.verify_gitlab_token, token, [secret]),
                )
            ctx.event = _required_header(ctx.environ, "X-Gitlab-Event", "GitLab")
            ctx.delivery = gitlab_delivery_id(headers, signed_id, body)
            payload = _json_object(body)
            try:
                parsed = events.parse_delivery(
                    "gitlab", ctx.event, payload, approval_command=settings.approval_command
                )
                if isinstance(parsed, ApprovalCommand):
                    return gitlab_approve(ctx, parsed)
                result = parsed
            except BadRequestError as exc:
                # Verified, but not in a shape we know: refusing it would count towards disabling the hook.
                log.warning(
                    "GitLab payload not understood", extra={"delivery": ctx.delivery, "error": exc.message}
                )
                result = Ignored(f"payload not understood: {exc.message}")
            repository = _named(payload, "project", "path_with_namespace")
            return accept(ctx, result, ctx.delivery, ctx.event, repository, scopes=scopes)

        return guarded(ctx, handle)

    # -- EventBridge via SNS --------------------------------------------------------------------

    @app.post("/events/codebuild")
    def codebuild_events() -> Response:
        ctx = _Delivery("sns", services.monotonic(), request.environ)

        def handle() -> Response:
            body = _read_body(ctx.environ, max_body)
            message = _json_object(body)  # SNS posts JSON as text/plain: the content type is not checked
            try:
                verify.verify_sns_message(
                    message,
                    fetch_certificate=services.fetch_certificate,
                    allowed_topic_arns=config.sns.topic_arns,
                )
            except OSError as exc:
                log.warning(
                    "could not fetch the SNS signing certificate", extra={"error": type(exc).__name__}
                )
                return answer(
                    ctx,
                    503,
                    {"error": "could not fetch the SNS signing certificate", "hint": "SNS will retry"},
                    "error",
                )
            kind = str(message.get("Type"))
            ctx.event = kind
            ctx.delivery = str(message.get("MessageId") or "") or None
            if kind == "SubscriptionConfirmation":
                url = str(message.get("SubscribeURL") or "")
                if not is_sns_subscribe_url(url):
                    raise BadRequestError(
                        "SubscribeURL is not an https://sns.<region>.amazonaws.com URL",
                        hint="only Amazon SNS subscriptions are confirmed",
                    )
                services.confirm_subscription(url)
                return answer(ctx, 200, {"confirmed": message.get("TopicArn")}, "confirmed")
            if kind != "Notification":
                return answer(ctx, 200, {"ignored": f"SNS {kind}"}, "ignored")
            try:
                envelope = json.loads(str(message.get("Message") or ""))
            except ValueError:
                return answer(ctx, 200, {"ignored": "the SNS message is not an EventBridge event"}, "ignored")
            if not isinstance(envelope, Mapping) or envelope.get("detail-type") != DETAIL_TYPE:
                return answer(ctx, 200, {"ignored": "not a CodeBuild build state change"}, "ignored")
            detail = envelope.get("detail")
            if not isinstance(detail, Mapping):
                return answer(ctx, 200, {"ignored": "the event has no detail"}, "ignored")
            updated = worker.handle_codebuild_event(detail)
            return answer(ctx, 200, {"updated": updated}, "updated" if updated else "unchanged")

        return guarded(ctx, handle)

    # -- operations -----------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response(200, {"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        reasons: list[str] = []
        try:
            if not services.store.writable():
                reasons.append("the store is not writable")
        except Exception as exc:
            reasons.append(f"the store is unavailable ({type(exc).__name__})")
        if worker.started and not worker.running:
            reasons.append("the background worker has stopped")
        reasons.extend(refresher.unreadable())
        if reasons:
            return json_response(503, {"ready": False, "reasons": reasons})
        return json_response(200, {"ready": True, "routes": len(config.routes)})

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = services.metrics.render()
        return Response(body, status=200, content_type=content_type)

    token_ref = config.server.operator_token
    operator_page.register(
        app,
        config,
        services.store,
        reveal_token=(
            (lambda: services.secrets.get(token_ref, key="server.operator_token").reveal())
            if token_ref is not None
            else None
        ),
        loopback_bind=loopback_bind,
    )

    # -- errors outside the webhook handlers (405, 404, oversized bodies rejected by werkzeug) ----

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return json_response(
                413, {"error": _too_large(max_body).message, "hint": _too_large(max_body).hint}
            )
        response = json_response(status, {"error": exc.name, "hint": exc.description or ""})
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(BridgeError)
    def bridge_error(exc: BridgeError) -> Response:
        return json_response(_http_status(exc), {"error": exc.message, "hint": exc.hint})

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error", extra={"path": request.path})
        return json_response(500, {"error": "internal error", "hint": "see the server log"})

    return app


# -- request helpers --------------------------------------------------------------------------------


def _passes(check: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
    """Whether one verifier accepts one secret (which of several secrets verified a delivery)."""
    try:
        check(*args, **kwargs)
    except SignatureError:
        return False
    return True


# Built once: json.dumps with options builds a new encoder on every call.
_COMPACT_JSON: Final = jsonfast.Encoder()


def json_response(status: int, body: Mapping[str, Any]) -> Response:
    # content_type, not mimetype: werkzeug would work out from the mimetype that JSON takes no charset
    return Response(_COMPACT_JSON.encode_bytes(body), status=status, content_type="application/json")


def _http_status(exc: BridgeError) -> int:
    if isinstance(exc, SecretError | CredentialsError):
        return 503  # our secret backend is unreachable or misconfigured: the sender should retry later
    return exc.http_status


def _github_not_configured() -> SignatureError:
    return SignatureError(
        "GitHub deliveries are not configured on this server",
        hint="add a [github] section with webhook_secrets, or remove this webhook",
    )


def _gitlab_not_configured() -> SignatureError:
    return SignatureError(
        "GitLab deliveries are not configured on this server",
        hint="add a [gitlab] section with webhook_tokens or signing_tokens, or remove the hook",
    )


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body is larger than {limit} bytes",
        hint="raise server.max_body_bytes if such payloads are expected",
    )


def _read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The raw bytes, bounded twice: by the declared length, and by what is actually read.

    A body of declared length (every GitHub and GitLab delivery) is read from the WSGI input in one
    call. werkzeug's `get_data` reads through a limiting stream in 64 KB steps, zeroing a 64 KB buffer
    and copying the body three times: on an 8 KB push, 108 k of the ack's 1,457 k instructions
    (cachegrind) and 630 of its 7,548 bytecodes (bench.ack_work). Anything else (chunked, a length
    werkzeug would read differently) takes werkzeug's path. gunicorn marks every input terminated
    (`wsgi.input_terminated`), so that flag says nothing about the length.
    """
    length = _header(environ, "Content-Length")
    if (
        length is not None
        and length.isascii()
        and length.isdigit()
        and _header(environ, "Transfer-Encoding") is None
    ):
        digits = length.lstrip("0")
        # More digits than any limit has is too large, and int() refuses a string of over 4,300 digits.
        declared = int(digits or "0") if len(digits) <= 18 else limit + 1
        if declared > limit:
            raise _too_large(limit)
        try:
            body = environ["wsgi.input"].read(declared) if declared else b""
        except (OSError, ValueError) as exc:  # the client went away mid-body (werkzeug's ClientDisconnected)
            raise BadRequestError(
                f"request body could not be read ({type(exc).__name__})",
                hint="send the whole body, or a Content-Length that matches it",
            ) from None
        if len(body) != declared:
            raise BadRequestError(
                f"request body ended after {len(body)} of its {declared} declared bytes",
                hint="send the whole body, or a Content-Length that matches it",
            )
        return bytes(body)
    stated = request.content_length
    if stated is not None and stated > limit:
        raise _too_large(limit)
    body = request.get_data(cache=True)  # capped at MAX_CONTENT_LENGTH = limit + 1
    if len(body) > limit:
        raise _too_large(limit)
    return body


@functools.cache
def _environ_key(header: str) -> str:
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def _header(environ: Mapping[str, Any], name: str) -> str | None:
    """A request header, read from the WSGI environ as `request.headers.get` reads it (PEP 3333 keys:
    HTTP_ and the name upper-cased, "-" as "_"), minus the proxy and key-building work of each call."""
    value = environ.get(_environ_key(name))
    return value if isinstance(value, str) else None


def _required_header(environ: Mapping[str, Any], name: str, provider: str) -> str:
    value = (_header(environ, name) or "").strip()
    if not value:
        raise BadRequestError(
            f"missing {name} header", hint=f"send the delivery as {provider} does, with its {name} header"
        )
    return value


def _require_json_content_type(environ: Mapping[str, Any], hint: str) -> None:
    # `request.mimetype`, read as werkzeug reads it: the value before any parameters, lowercased.
    mimetype = (_header(environ, "Content-Type") or "").partition(";")[0].strip().lower()
    if mimetype != "application/json":
        raise BadRequestError(f"Content-Type must be application/json, got {mimetype or 'none'!r}", hint=hint)


_FORM_BODY: Final = re.compile(rb"[A-Za-z_][\w.-]*=")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = jsonfast.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        if _FORM_BODY.match(body):  # `payload=%7B...`: a webhook set to send a form, not JSON
            raise BadRequestError(
                "request body is form-encoded, not JSON",
                hint="set the webhook's Content type to application/json",
            ) from None
        raise BadRequestError(
            "request body is not valid JSON", hint="send the payload as a JSON object"
        ) from None
    if not isinstance(payload, dict):
        raise BadRequestError(
            f"request body must be a JSON object, got {type(payload).__name__}",
            hint="send the payload as a JSON object",
        )
    return payload


def _named(payload: Mapping[str, Any], section: str, key: str) -> str | None:
    """The repository a payload names (`repository.full_name`, `project.path_with_namespace`), if any."""
    value = payload.get(section)
    name = value.get(key) if isinstance(value, Mapping) else None
    return name[:300] if isinstance(name, str) and name else None


# The headers naming a delivery and its event, by provider, in the order gitlab_delivery_id prefers.
_ID_HEADERS: Final = {
    "github": (("X-GitHub-Delivery",), "X-GitHub-Event"),
    "gitlab": (("Idempotency-Key", "webhook-id", "X-Gitlab-Event-UUID"), "X-Gitlab-Event"),
}
_SENT_ID_MAX: Final = 200  # a log line quotes a header, it does not copy an arbitrarily long one


def _sent_ids(
    environ: Mapping[str, Any], provider: str, delivery: str | None, event: str | None
) -> tuple[str | None, str | None]:
    """The delivery id and event a refused request carried, for its log line only: unverified (a 401
    is logged with what it claimed), so they never reach the store or a metric label."""
    names = _ID_HEADERS.get(provider)
    if names is None:
        return delivery, event
    id_headers, event_header = names
    if delivery is None:
        for name in id_headers:
            value = (_header(environ, name) or "").strip()
            if value:
                delivery = value[:_SENT_ID_MAX]
                break
    if event is None:
        event = (_header(environ, event_header) or "").strip()[:_SENT_ID_MAX] or None
    return delivery, event


def gitlab_delivery_id(headers: Mapping[str, str], signed_id: str | None, body: bytes) -> str:
    """A signed delivery's `webhook-id` (Standard Webhooks, covered by the signature) identifies it; an
    unsigned header must not be able to stand in for it, so it comes first. Otherwise GitLab's retries
    repeat `Idempotency-Key`, and the event UUID identifies one delivery too. With none of them, the body
    itself is the identity (same body, same build).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    candidates = (
        signed_id,
        lowered.get("idempotency-key"),
        lowered.get("webhook-id"),
        lowered.get("x-gitlab-event-uuid"),
    )
    for value in candidates:
        if value and value.strip():
            return value.strip()
    return "body-" + hashlib.sha256(body).hexdigest()[:32]


def _judge_approval(
    config: Config, lookups: ApprovalLookups, command: ApprovalCommand
) -> SourceEvent | Ignored | Refusal:
    """The change an approval is for, as it is now, if the approval counts; else why it does not.

    The change's route must build forks only on approval (elsewhere an approval changes nothing);
    the approval must name the current head; and the provider's API, not the payload, must say the
    approver may approve.
    """
    if command.provider == "github":
        settings = config.github
        pull = lookups.github_pull_request(command)
        change = events.github_pull_request_from_api(
            pull,
            sender=command.by,
            installation_id=command.installation_id,
            api_url=settings.api_url if settings is not None else None,
        )
    else:
        change = command.change or Ignored(f"approval of {command.label}: the note names no merge request")
    if isinstance(change, Ignored):
        return change
    provider = config.github if change.provider == "github" else config.gitlab
    foreign = routing.foreign_host(change, provider.allowed_hosts if provider is not None else ())
    if foreign is not None:
        return foreign
    route = routing.match_route(change, config.routes)
    if isinstance(route, Ignored):
        return route
    if not change.is_fork:
        return Ignored(f"approval of {command.label}: not a fork, nothing to approve")
    if route.forks != "approve":
        return Ignored(
            f"approval of {command.label}: routes[{route.name}].forks is {route.forks}, not approve"
        )
    refusal = check_head(command, change.sha)
    if refusal is not None:
        return refusal
    if command.provider == "github":
        refusal = check_approver(command, permission=lookups.github_permission(command))
    else:
        refusal = check_approver(command, access_level=lookups.gitlab_access_level(command))
    return refusal if refusal is not None else change
