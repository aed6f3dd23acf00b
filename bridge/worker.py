"""The webhook server's background half: start accepted deliveries, follow their builds, report.

One worker thread per server process. The request threads only verify, persist and answer; this
thread does everything slow, so an outage of CodeBuild, GitHub or GitLab never slows an ack.

Exactly-once, step by step:
- A delivery is persisted once (the store refuses a second copy of its id) and claimed with a lease.
- StartBuild carries an idempotency token derived from `delivery/<id>/<route>` and the request, so a
  crash between StartBuild and `mark_started` is harmless: the re-claimed delivery calls StartBuild
  again within CodeBuild's 5-minute token window and gets the same build back.
- Once `mark_started` records the build, the delivery is never started again; from then on only its
  build is tracked. The first status is posted after that (in a burst, once the claimed builds
  have started: GitHub writes are spaced a second apart, builds need not be; a delivery accepted
  while they are posted starts before the next one), and a status that could not be posted is
  posted by the tracker later (a report is never the reason to start a build twice).
- Build states come from two paths, the batched poll and EventBridge events via SNS. Either alone
  finishes every status; both together change nothing twice, because a state is reported only when
  it differs from the last reported one and never moves backwards.

With SQLite the store lives in one file that one process may write, which is why `bridge serve`
runs a single gunicorn worker process with threads: one process, one worker thread, one writer.

Several replicas (DynamoDB + SQS) keep the same guarantees with leases instead of a single writer:
any replica's worker takes a delivery from the queue and claims it in the store; each running build
is claimed for one poll per interval by whichever replica gets to it first, and reporting on a
build (from a poll or an EventBridge event reaching any replica) needs that build's lease, which a
dead replica loses when it expires. See bridge/queue.py and bridge/store_dynamodb.py.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import botocore.exceptions

from bridge.admission import RerunRefused, admit_rerun, start_request
from bridge.builders.base import Builder
from bridge.core.activity import status_record
from bridge.core.approval import DEFAULT_COMMAND, awaiting_status, built_by_approval
from bridge.core.trust import AwaitingApproval, TrustFacts, decide, granted
from bridge.errors import BridgeError, ConfigError, CredentialsError, SecretError
from bridge.model import BuildRecord, BuildRequest, BuildStatus, SourceEvent
from bridge.pace import Pacer
from bridge.poll import Backoff
from bridge.queue import Job
from bridge.services import Services, StatusReporter
from bridge.status import build_status, lost_status, not_started_status, rerun_refused_status, waiting_status
from bridge.store import PendingDelivery, TrackedBuild

log = logging.getLogger("bridge.worker")

DETAIL_TYPE: Final = "CodeBuild Build State Change"
RETRY_BASE_SECONDS: Final = 2.0
RETRY_CAP_SECONDS: Final = 120.0
CLAIM_BATCH: Final = 10
POLL_CHUNK: Final = 100  # ids per read: BatchGetBuilds' limit, and what one refused call can hide
MAX_MISSING_POLLS: Final = 5  # polls in a row a build may be absent before it is reported lost
DEFAULT_LEASE_SECONDS: Final = 60
POLL_LEASE_SECONDS: Final = 5  # how long a poll holds each build it claimed (a cycle takes less)
LEASE_RETRY_SECONDS: Final = 0.2
LEASE_ATTEMPTS: Final = 30  # an event waits out a poll's lease (~6 s) on another replica
# A phase change inside a running build is worth a status update, but not one per phase: each
# GitHub write costs a second of the App's write budget. State changes are always reported.
PHASE_REPORT_INTERVAL_SECONDS: Final = 10.0
_STATE_RANK: Final = {"queued": 0, "in_progress": 1, "completed": 2}


def state_key(status: BuildStatus) -> str:
    """What the reporters show: a change of any part is worth a new report, nothing else is."""
    return f"{status.state}|{status.build_status}|{status.current_phase or ''}"


def _rank(key: str | None) -> int:
    if not key:
        return -1
    return _STATE_RANK.get(key.split("|", 1)[0], -1)


def retry_delay(
    attempt: int, *, rand: Callable[[], float] = random.random, cap: float = RETRY_CAP_SECONDS
) -> float:
    """Exponential back-off with jitter: 2, 4, 8, ... seconds, capped, shortened by up to a quarter."""
    delay: float = min(cap, RETRY_BASE_SECONDS * 2.0 ** min(30, max(0, attempt - 1)))
    return delay * (1 - 0.25 * rand())


# botocore's own errors that no retry can fix: the process has no credentials or no region.
_UNHEALABLE: Final = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.NoRegionError,
)


_UNHEALABLE_HINT: Final[Mapping[type[BaseException], str]] = {
    botocore.exceptions.NoCredentialsError: "give the bridge AWS credentials (a task or instance role,"
    " AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and restart it",
    botocore.exceptions.PartialCredentialsError: "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
    " or use a role",
    botocore.exceptions.NoRegionError: "set [aws] region in the config, or AWS_REGION",
}


def is_retryable(exc: BaseException) -> bool:
    """Throttling, outages and unreachable secrets pass; bad requests, bad config, missing
    credentials or region, access denied and unknown projects do not (by class and error code,
    never by message text: builder_error decides a BuilderError's flag from CodeBuild's code)."""
    if isinstance(exc, (CredentialsError, ConfigError, *_UNHEALABLE)):
        return False
    if isinstance(exc, SecretError):
        return True  # Secrets Manager unreachable or throttled: often transient
    if isinstance(exc, BridgeError):
        return bool(getattr(exc, "retryable", False))
    return True  # an unexpected error: try again, with capped back-off, and log it loudly


def build_id_of(arn_or_id: str) -> str:
    """EventBridge names builds by ARN (…:build/project:uuid); the store keys them by id (project:uuid)."""
    _, sep, rest = arn_or_id.partition(":build/")
    return rest if sep else arn_or_id


def record_from_event(detail: Mapping[str, Any]) -> dict[str, Any]:
    """An EventBridge "CodeBuild Build State Change" detail → the BatchGetBuilds record shape.

    status.py reads one shape; the event's kebab-case fields map one to one onto the record's.
    """
    info = detail.get("additional-information")
    info = info if isinstance(info, Mapping) else {}
    arn = str(detail.get("build-id") or "")
    record: dict[str, Any] = {
        "id": build_id_of(arn),
        "arn": arn,
        "projectName": detail.get("project-name"),
        "buildStatus": detail.get("build-status"),
        "currentPhase": detail.get("current-phase"),
    }
    mapping = {
        "build-complete": "buildComplete",
        "build-number": "buildNumber",
        "build-start-time": "startTime",
        "initiator": "initiator",
        "source-version": "sourceVersion",
    }
    for source, target in mapping.items():
        if source in info:
            record[target] = info[source]
    logs = info.get("logs")
    if isinstance(logs, Mapping):
        record["logs"] = {
            "groupName": logs.get("group-name"),
            "streamName": logs.get("stream-name"),
            "deepLink": logs.get("deep-link"),
        }
    phases = info.get("phases")
    if isinstance(phases, Sequence) and not isinstance(phases, str):
        record["phases"] = [
            {
                "phaseType": phase.get("phase-type"),
                "phaseStatus": phase.get("phase-status"),
                "startTime": phase.get("start-time"),
                "endTime": phase.get("end-time"),
                "durationInSeconds": phase.get("duration-in-seconds"),
                "contexts": phase.get("phase-context"),
            }
            for phase in phases
            if isinstance(phase, Mapping)
        ]
    exported = info.get("exported-environment-variables")
    if isinstance(exported, Sequence) and not isinstance(exported, str):
        record["exportedEnvironmentVariables"] = [
            {"name": item.get("name"), "value": item.get("value")}
            for item in exported
            if isinstance(item, Mapping)
        ]
    return record


def region_of_build(record: BuildRecord, default: str) -> str:
    arn = str(record.get("arn") or "")
    parts = arn.split(":")
    return parts[3] if len(parts) > 4 and parts[3] else default


@dataclass
class _Started:
    """A build started and recorded whose first status is not posted yet (its lease is held)."""

    build_id: str
    event: SourceEvent
    route_name: str
    status: BuildStatus
    leased_at: float  # services.monotonic() when the lease was last taken or renewed


@dataclass
class _Read:
    """What one poll learned: records by id, ids refused for good (and why), ids left unread."""

    records: dict[str, BuildRecord] = field(default_factory=dict)
    refused: dict[str, BridgeError] = field(default_factory=dict)
    unsure: set[str] = field(default_factory=set)


class Worker:
    """Drains pending deliveries and tracks builds; `run_once` is the whole cycle, for tests and the loop."""

    def __init__(
        self,
        services: Services,
        *,
        poll_interval: float | None = None,
        lease_seconds: int | None = None,
        phase_report_interval: float = PHASE_REPORT_INTERVAL_SECONDS,
        sleep_rand: Callable[[], float] = random.random,
        starts_per_second: float | None = None,
        max_missing_polls: int = MAX_MISSING_POLLS,
    ) -> None:
        """`starts_per_second`: StartBuild pacing (bridge.pace); None: the config's
        `server.max_build_starts_per_second`."""
        self._services = services
        interval = poll_interval if poll_interval is not None else services.poll_interval
        self._backoff = Backoff(interval, cap=max(interval * 8, 60.0))
        self._lease_seconds = (
            lease_seconds if lease_seconds is not None else services.config.store.lease_seconds
        )
        self._queue = services.delivery_queue
        # Names this worker in the shared store's leases: unique per process, readable in the table.
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        server = services.config.server
        self._retry_cap = float(server.start_retry_max_delay_seconds)
        self._lookup_after = float(server.start_lookup_after_seconds)
        self._max_missing_polls = max(1, max_missing_polls)
        self._missing: dict[str, int] = {}  # build id → polls in a row that did not return it
        self._rand = sleep_rand
        self._phase_report_interval = phase_report_interval
        self._reported_at: dict[str, float] = {}  # build id → when its status was last posted
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.RLock()  # one build is updated by one path at a time (poll vs event)
        self._thread: threading.Thread | None = None
        self._next_poll = 0.0
        self._claimed_at = 0.0  # when track_builds last claimed its builds
        self._written: dict[str, float] = {}  # build id → when this process last recorded a report
        # Real time, not services.monotonic: the pacer's waits are real (on the stop event).
        self._pacer = Pacer(starts_per_second or services.config.server.max_build_starts_per_second)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        # A single-process store (SQLite) releases the claims of the process that died before us;
        # a shared store (DynamoDB) keeps them, since they may belong to a live replica.
        self._services.store.release_claims()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bridge-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current step (everything it did is already persisted), then return."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def close_builders(self) -> None:
        """On shutdown: every builder's `close`; those that run builds themselves (local) stop them
        and record it.

        A local build must not outlive the process tracking it; its record says STOPPED, and the
        next start reports that final status.
        """
        for builder in self._services.builders.values():
            builder.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def poll_interval(self) -> float:
        """The current interval between polls: the configured one, longer while polls fail."""
        return self._backoff.interval

    def wake(self) -> None:
        """A delivery was accepted: start it now instead of at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        log.info("worker started", extra={"poll_interval_seconds": self._backoff.base})
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.drain_pending()
                if self._services.monotonic() >= self._next_poll:
                    self.track_builds()
                    self._next_poll = self._services.monotonic() + self._backoff.delay()
            except Exception:
                # The loop must survive anything (a locked database, a bug in one record).
                log.exception("worker cycle failed; continuing at the next interval")
                self._services.metrics.worker_errors.labels(stage="cycle", retryable="true").inc()
                self._next_poll = self._services.monotonic() + self._backoff.delay()
            wait = max(0.05, min(self._backoff.interval, self._next_poll - self._services.monotonic()))
            if self._queue.long_polls:
                self._wait_for_deliveries(wait)
            else:
                self._wake.wait(wait)
        log.info("worker stopped")

    def _wait_for_deliveries(self, wait: float) -> None:
        """Wait in the queue's long polls until the next poll is due: a delivery any replica
        accepted starts here at once. A receive that did not wait (`wait_seconds = 0`) is followed
        by a short sleep, so an idle worker never spins.
        """
        monotonic = self._services.monotonic
        deadline = monotonic() + wait
        while not self._stop.is_set():
            began = monotonic()
            started = 0
            try:
                started = self.drain_pending(wait_seconds=deadline - began)
            except Exception:
                log.exception("receiving deliveries failed; trying again shortly")
                self._services.metrics.worker_errors.labels(stage="cycle", retryable="true").inc()
                self._wake.wait(min(1.0, max(0.0, deadline - monotonic())))
            now = monotonic()
            if started or now >= deadline:
                return
            if now - began < 0.1:
                self._wake.wait(min(1.0, deadline - now))

    def run_once(self) -> None:
        """One full cycle: start what is pending, then one batched poll of every active build."""
        self.drain_pending()
        self.track_builds()

    # -- (a) pending deliveries → builds -------------------------------------------------------

    def drain_pending(self, *, wait_seconds: float = 0.0) -> int:
        """Start every claimable delivery and post the started builds' first statuses.

        Starting comes first because GitHub writes are spaced a second apart (PyGithub, against
        secondary rate limits): reporting each build before starting the next held the 50th build
        of a burst ~50 s. The queue is looked at again before each first status, so a delivery
        accepted while a burst's statuses go out starts within one write, not after all of them
        (after a 50-build burst the next delivery waited ~50 s). A long stream posts one first
        status per batch it starts once the oldest lease is half gone, so neither side waits on
        the other for long. Returns how many builds started.

        `wait_seconds`: how long the first take may wait for work (queues that long-poll only).
        """
        unreported: deque[_Started] = deque()
        started = 0
        try:
            while not self._stop.is_set():
                batch = self._queue.take(
                    CLAIM_BATCH, lease_seconds=self._lease_seconds, wait_seconds=wait_seconds
                )
                wait_seconds = 0.0
                for job in batch:
                    delay = self._pacer.delay()
                    if delay:
                        self._stop.wait(delay)
                    if self._stop.is_set():
                        break  # the rest stay claimed until their lease ends; nothing was started
                    build = self._start_one(job)
                    if build is not None:
                        started += 1
                        unreported.append(build)
                drained = not batch or (len(batch) < CLAIM_BATCH and not self._queue.long_polls)
                if not unreported:
                    if drained:
                        break
                    continue
                if drained or self._lease_age(unreported[0]) >= self._lease_seconds / 2:
                    self._report_next(unreported)
        finally:
            self._report_started(unreported)
        return started

    def _start_one(self, job: Job) -> _Started | None:
        """StartBuild and record it; the first status is left to `_report_started`. None: not started."""
        services = self._services
        pending = job.pending
        delivery_id, route_name, event = pending.delivery_id, pending.route_name, pending.event
        attempts = pending.attempts  # already counts this claim
        extra = {
            "delivery": delivery_id,
            "route": route_name,
            "repository": event.repository,
            "sha": event.sha,
        }
        try:
            if event.kind == "rerun":
                # A re-run stays on its route, by name; refused at the ack (or since), its check says why.
                rerun = admit_rerun(services.config, route_name, event, approved_sha=services.approved_sha)
                if isinstance(rerun, RerunRefused):
                    self._refuse_rerun(job, event, route_name, rerun.reason)
                    return None
            route = services.route(route_name)
            # Decided again now: the route (or an approval) may have changed since the delivery was acked.
            approved = services.approved_sha(event) if event.is_fork else None
            decision = decide(event, route, TrustFacts.of(event, approved_sha=approved))
            if isinstance(decision, AwaitingApproval):
                self._await_approval(job, event, route_name, decision)
                return None
            approval_id = built_by_approval(event, route.forks, delivery_id)
            if approval_id is not None:
                # Approved between the ack and now: the approval's own delivery builds it.
                services.store.mark_ignored(delivery_id, f"built under the approval's delivery {approval_id}")
                self._queue.done(job)
                return None
            grant = granted(event, route, TrustFacts.of(event, approved_sha=approved))
            request = start_request(event, route, grant, delivery_id)
            builder = services.builder_for(route)
            record = None
            if pending.last_error is not None and (
                services.clock() - pending.received_at >= self._lookup_after
            ):
                # CodeBuild may have forgotten the token: did an earlier attempt start a build after all?
                record = builder.find_started(request, delivery_id, since=pending.received_at - 60)
                if record is not None:
                    log.info(
                        "found the build an earlier attempt started",
                        extra={**extra, "build_id": str(record.get("id") or "")},
                    )
            if record is None:
                record = builder.start(request)
        except Exception as exc:
            retryable = is_retryable(exc)
            services.metrics.worker_errors.labels(stage="start", retryable=str(retryable).lower()).inc()
            message = _describe(exc)
            if retryable:
                delay = retry_delay(attempts, rand=self._rand, cap=self._retry_cap)
                log.warning(
                    "build start failed; will retry",
                    extra={
                        **extra,
                        "error": message,
                        "attempt": attempts,
                        "retry_in_seconds": round(delay, 1),
                    },
                )
                reporter_ref = None
                if message != pending.last_error:  # the first failure, or a new reason: say so
                    reporter_ref = self._report_waiting(pending, message)
                services.store.mark_retry(delivery_id, message, delay, reporter_ref=reporter_ref)
                self._queue.retry(job, delay)
                return None
            log.exception(
                "build start failed for good", extra={**extra, "error": message, "attempt": attempts}
            )
            hint = exc.hint if isinstance(exc, BridgeError) else None
            reporter_ref = self._report_failure(pending, message, hint or _UNHEALABLE_HINT.get(type(exc), ""))
            services.store.mark_failed(delivery_id, message, reporter_ref=reporter_ref)
            self._queue.done(job)
            return None

        build_id = str(record.get("id") or "")
        status = build_status(record, region=region_of_build(record, services.region))
        # Persist first: from here on this delivery can never start a second build. The build is
        # leased to this worker until its first status is posted, so no other replica posts one too.
        leased_at = services.monotonic()  # taken before the lease starts: its age is never understated
        recorded = services.store.mark_started(
            delivery_id,
            build_id,
            lease_owner=self._owner,
            lease_seconds=self._lease_seconds,
            request_json=_request_json(request),
            grant_json=json.dumps(grant.record(), sort_keys=True),
        )
        self._queue.done(job)
        if recorded is False:
            log.info("build already recorded by another worker", extra={**extra, "build_id": build_id})
            return None
        services.metrics.builds.labels(status="STARTED").inc()
        log.info("build started", extra={**extra, "build_id": build_id})
        return _Started(build_id, event, route_name, status, leased_at=leased_at)

    def _await_approval(
        self, job: Job, event: SourceEvent, route_name: str, waiting: AwaitingApproval
    ) -> None:
        """A fork's head that no maintainer approved: no build, a status saying how to approve.

        Posted once per delivery (a push posts it again on the new head); a failure to post is
        logged and not retried, since the next push or the approval's build reports anyway.
        """
        services = self._services
        delivery_id = job.pending.delivery_id
        settings = services.config.github if event.provider == "github" else services.config.gitlab
        command = settings.approval_command if settings is not None else DEFAULT_COMMAND
        github = services.config.github
        # Check-run buttons exist in App mode only; a token posts commit statuses.
        button = event.provider == "github" and github is not None and github.app_id is not None
        status = awaiting_status(event, route_name, command, button=button, reason=waiting.reason)
        try:
            reporter = services.reporter_for(event, route_name)
            if reporter is not None:
                reporter.start(status)
        except Exception as exc:
            log.warning(
                "could not post the waiting-for-approval status",
                extra={
                    "delivery": delivery_id,
                    "route": route_name,
                    "sha": event.sha,
                    "error": _describe(exc),
                },
            )
        services.store.mark_ignored(delivery_id, waiting.reason)
        self._queue.done(job)
        log.info(
            "waiting for approval",
            extra={
                "delivery": delivery_id,
                "route": route_name,
                "repository": event.repository,
                "sha": event.sha,
            },
        )

    def _refuse_rerun(self, job: Job, event: SourceEvent, route_name: str, reason: str) -> None:
        """A re-run that builds nothing: a completed check run (or status) naming the route and why,
        where the maintainer asked. Posted once; a failure to post is logged and not retried."""
        services = self._services
        delivery_id = job.pending.delivery_id
        try:
            reporter = services.reporter_named(event, route_name)
            if reporter is not None:
                reporter.start(rerun_refused_status(route_name, reason))
        except Exception as exc:
            log.warning(
                "could not post why a re-run built nothing",
                extra={
                    "delivery": delivery_id,
                    "route": route_name,
                    "sha": event.sha,
                    "error": _describe(exc),
                },
            )
        services.store.mark_ignored(delivery_id, reason)
        self._queue.done(job)
        log.info(
            "re-run not built",
            extra={
                "delivery": delivery_id,
                "route": route_name,
                "repository": event.repository,
                "sha": event.sha,
                "reason": reason,
            },
        )

    def _report_started(self, waiting: deque[_Started]) -> None:
        """Post the first status of every build still waiting, in start order; on stop, or on an
        error, release the rest unreported: tracking posts their status, as for any report that
        failed.
        """
        try:
            while waiting and not self._stop.is_set():
                self._report_next(waiting)
        finally:
            store = self._services.store
            while waiting:
                store.release_build(waiting.popleft().build_id, self._owner)

    def _report_next(self, waiting: deque[_Started]) -> None:
        """Post the next waiting build's first status, under the lease mark_started took.

        The leases of the builds still waiting are renewed at half their length first, so no other
        replica posts a first status meanwhile; each is released once its status is posted. A build
        whose first status someone else posted (an event applied by this process, or a replica after
        a lost lease) is skipped without a write, and the next one is posted instead.
        """
        store = self._services.store
        while waiting and not self._stop.is_set():
            self._renew_leases(waiting)
            if not waiting:
                return
            build = waiting.popleft()
            try:
                with self._lock:
                    tracked = store.get_build(build.build_id)
                    if tracked is None or tracked.done or tracked.last_reported_state is not None:
                        continue  # already reported: nothing to post twice
                    self._report(
                        build.build_id,
                        build.event,
                        build.route_name,
                        build.status,
                        reporter_ref=tracked.reporter_ref,
                        last_key=None,
                    )
                    return
            finally:
                store.release_build(build.build_id, self._owner)

    def _renew_leases(self, waiting: deque[_Started]) -> None:
        """Extend every waiting build's lease that is half gone; drop those another replica took."""
        for build in list(waiting):
            if self._lease_age(build) < self._lease_seconds / 2:
                continue
            now = self._services.monotonic()
            renewed = self._services.store.lock_build(
                build.build_id, self._owner, lease_seconds=self._lease_seconds
            )
            if renewed is None:
                log.info(
                    "first status left to the replica holding the build", extra={"build_id": build.build_id}
                )
                waiting.remove(build)
            else:
                build.leased_at = now

    def _lease_age(self, build: _Started) -> float:
        return self._services.monotonic() - build.leased_at

    def _report_failure(self, pending: PendingDelivery, message: str, hint: str) -> str | None:
        """The final "Build not started" with the fix, on the waiting status if one was posted; returns
        the reporter's reference, which a restarted delivery's build then updates."""
        try:
            reporter = self._services.reporter_for(pending.event, pending.route_name)
            if reporter is not None:
                return _post(reporter, pending.reporter_ref, not_started_status(message, hint))
        except Exception as exc:
            log.warning(
                "could not report the failed start",
                extra={"route": pending.route_name, "sha": pending.event.sha, "error": _describe(exc)},
            )
        return None

    def _report_waiting(self, pending: PendingDelivery, message: str) -> str | None:
        """Post (or update) "Waiting for CodeBuild: <reason>"; returns the reporter's reference,
        which the build's own statuses then update. A failed post is logged and the retry goes on."""
        try:
            reporter = self._services.reporter_for(pending.event, pending.route_name)
            if reporter is None:
                return None
            return _post(reporter, pending.reporter_ref, waiting_status(message, attempts=pending.attempts))
        except Exception as exc:
            log.warning(
                "could not report the waiting start",
                extra={"route": pending.route_name, "sha": pending.event.sha, "error": _describe(exc)},
            )
            return None

    # -- (b) tracking ----------------------------------------------------------------------------

    def track_builds(self) -> int:
        """Poll the builds due this interval (with several replicas: those this one claimed first)."""
        self._claimed_at = self._services.monotonic()
        self._written = {key: at for key, at in self._written.items() if at >= self._claimed_at}
        # The claim's lease only has to outlast this cycle; it is left to expire rather than
        # released (one write per build and interval, not two). A cycle slower than that renews it.
        active = self._services.store.claim_builds(
            self._owner,
            lease_seconds=self._poll_lease_seconds,
            poll_interval=self._backoff.interval * 0.9,  # a little early beats skipping an interval
        )
        return self._poll(active)

    def _poll(self, active: list[TrackedBuild]) -> int:
        """ONE batched read per builder and kind (builds, batches) for every active build; returns
        builds updated.

        Per build, not all or nothing: a call that fails leaves only its own ids unread, a call
        refused for good is tried again id by id so one bad id cannot hide the others, and a build
        CodeBuild does not return (deleted, or refused for good) is reported lost after
        `max_missing_polls` polls in a row instead of being polled forever.
        """
        if not active:
            self._backoff.success()
            return 0
        groups: dict[tuple[int, bool], tuple[Builder, bool, list[str]]] = {}
        for build in active:
            builder = self._services.builder_for_build(build.build_id)
            batch = self._builds_batches(build.route_name)
            groups.setdefault((id(builder), batch), (builder, batch, []))[2].append(build.build_id)
        read = _Read()
        for builder, batch, build_ids in groups.values():
            for offset in range(0, len(build_ids), POLL_CHUNK):
                self._read(builder, build_ids[offset : offset + POLL_CHUNK], batch, read)
        if read.unsure or read.refused:
            self._backoff.failure()
        else:
            self._backoff.success()
        updated = 0
        for build in active:
            record = read.records.get(build.build_id)
            if record is not None:
                self._missing.pop(build.build_id, None)
                if self._apply_held(record, claimed=build):
                    updated += 1
            elif build.build_id not in read.unsure and self._missed(build, read.refused.get(build.build_id)):
                updated += 1
        return updated

    def _builds_batches(self, route_name: str) -> bool:
        """Whether a tracked build is a batch: its route says so (a removed route: plain builds)."""
        try:
            return self._services.route(route_name).batch
        except BridgeError:
            return False

    def _read(self, builder: Builder, build_ids: list[str], batch: bool, read: _Read) -> None:
        try:
            read.records.update(builder.get_many(build_ids, batch_ids=build_ids if batch else ()))
        except BridgeError as exc:
            retryable = is_retryable(exc)
            self._services.metrics.worker_errors.labels(stage="poll", retryable=str(retryable).lower()).inc()
            log.warning(
                "polling builds failed; backing off" if retryable else "polling builds refused",
                extra={"error": _describe(exc), "builder": builder.name, "builds": len(build_ids)},
            )
            if retryable:
                read.unsure.update(build_ids)
            elif len(build_ids) == 1:
                read.refused[build_ids[0]] = exc
            else:
                for build_id in build_ids:
                    self._read(builder, [build_id], batch, read)

    def _missed(self, build: TrackedBuild, error: BridgeError | None) -> bool:
        """One more poll that did not return `build`; at the bound, its final status says why."""
        misses = self._missing.get(build.build_id, 0) + 1
        if misses < self._max_missing_polls:
            self._missing[build.build_id] = misses
            return False
        self._missing.pop(build.build_id, None)
        if error is None:
            reason = (
                f"CodeBuild has not returned it for {misses} polls in a row (the build was deleted, or "
                "the bridge now reads another account or region)"
            )
        else:
            reason = f"CodeBuild refused to describe it: {_describe(error)}" + (
                f" ({error.hint})" if error.hint else ""
            )
        log.warning(
            "build lost; reporting it as failed", extra={"build_id": build.build_id, "reason": reason}
        )
        status = lost_status(build.build_id, reason, region=region_of_build({}, self._services.region))
        return self._apply_status(build.build_id, status, claimed=build)

    def apply_record(self, record: BuildRecord) -> bool:
        """Report a build's new state if it is new; True when something was reported.

        Takes the build's lease first (a poll on another replica may be reporting on it right now);
        when it stays taken, the record is dropped: that replica, or the next poll, reports it.
        """
        build_id = str(record.get("id") or "")
        if not self._lease_build(build_id):
            return False
        try:
            return self._apply_held(record)
        finally:
            self._services.store.release_build(build_id, self._owner)

    def _lease_build(self, build_id: str) -> bool:
        store = self._services.store
        for _ in range(LEASE_ATTEMPTS):
            if store.lock_build(build_id, self._owner, lease_seconds=self._lease_seconds) is not None:
                return True
            if store.get_build(build_id) is None:
                return False  # not a build bridge started
            self._stop.wait(LEASE_RETRY_SECONDS)
        return False

    def _apply_held(self, record: BuildRecord, *, claimed: TrackedBuild | None = None) -> bool:
        """apply_record's work, for a build whose lease this worker holds.

        `claimed` is the row as this cycle's claim returned it. A record with nothing new for that
        row is dropped without a store call: states only move forward, so it has nothing new for
        any fresher row either, and a slow cycle no longer renews the lease of every quiet build (a
        conditional write each on DynamoDB). The row is used as is while the claim is young and
        nothing in this process wrote the build since; otherwise the lease is renewed and the row
        re-read: a slow cycle may have outlived the lease (then another replica may be reporting on
        this build, and it is left to that one), or an event was applied meanwhile.
        """
        build_id = str(record.get("id") or "")
        status = build_status(record, region=region_of_build(record, self._services.region))
        return self._apply_status(build_id, status, claimed=claimed, record=record)

    def _apply_status(
        self,
        build_id: str,
        status: BuildStatus,
        *,
        claimed: TrackedBuild | None = None,
        record: BuildRecord | None = None,
    ) -> bool:
        with self._lock:
            if claimed is not None and not self._is_news(status, claimed):
                return False
            if claimed is not None and self._claim_is_fresh(build_id):
                tracked: TrackedBuild | None = claimed
            else:
                tracked = self._services.store.lock_build(
                    build_id, self._owner, lease_seconds=self._lease_seconds
                )
            if tracked is None or not self._is_news(status, tracked):
                return False
            if record is not None and status.done and status.conclusion != "success":
                status = self._with_log_tail(record, status)
            return self._report(
                build_id,
                tracked.event,
                tracked.route_name,
                status,
                reporter_ref=tracked.reporter_ref,
                last_key=tracked.last_reported_state,
            )

    def _is_news(self, status: BuildStatus, tracked: TrackedBuild) -> bool:
        """Whether `status` is worth posting over what `tracked` says was posted last."""
        if tracked.done:
            return False
        last_key = tracked.last_reported_state
        key = state_key(status)
        if key == last_key or _rank(key) < _rank(last_key):
            return False  # nothing new, or an older state arriving late
        # Only the phase moved, and the commit was updated a moment ago: not worth a write.
        return _rank(key) != _rank(last_key) or status.done or not self._reported_recently(tracked.build_id)

    def _report(
        self,
        build_id: str,
        event: SourceEvent,
        route_name: str,
        status: BuildStatus,
        *,
        reporter_ref: str | None,
        last_key: str | None,
    ) -> bool:
        """Post `status`, then persist what was posted. Called with the lock held."""
        services = self._services
        extra = {
            "build_id": build_id,
            "route": route_name,
            "state": status.state,
            "status": status.build_status,
        }
        try:
            reporter = services.reporter_for(event, route_name)
            if reporter is not None:
                reporter_ref = _post(reporter, reporter_ref, status)
        except Exception as exc:
            retryable = is_retryable(exc)
            services.metrics.worker_errors.labels(stage="report", retryable=str(retryable).lower()).inc()
            if retryable and not status.done:
                log.warning(
                    "status report failed; the next poll retries", extra={**extra, "error": _describe(exc)}
                )
                services.store.update_build(build_id, last_build_status=status.build_status)
                return False
            if retryable:
                # A final state must reach the commit: keep the build tracked until it does.
                log.warning(
                    "final status report failed; will retry", extra={**extra, "error": _describe(exc)}
                )
                services.store.update_build(build_id, last_build_status=status.build_status)
                return False
            log.exception("status report refused; not retrying", extra={**extra, "error": _describe(exc)})
        services.store.update_build(
            build_id,
            last_build_status=status.build_status,
            last_reported_state=state_key(status),
            reporter_ref=reporter_ref,
            done=status.done or None,
            status_json=status_record(status),
        )
        self._written[build_id] = services.monotonic()
        self._reported_at[build_id] = services.monotonic()
        if status.done:
            self._reported_at.pop(build_id, None)
            services.metrics.builds.labels(status=status.build_status).inc()
            log.info("build finished", extra=extra)
        return True

    def _with_log_tail(self, record: BuildRecord, status: BuildStatus) -> BuildStatus:
        """A failed build's status with the end of its log, which usually names the failure.

        One read of what CloudWatch holds (no waiting for late lines): a failure to read is logged
        and the status goes out without the tail.
        """
        region = region_of_build(record, self._services.region)
        try:
            lines = self._services.builder_for_build(status.build_id).log_tail(record).poll(record)
        except Exception as exc:
            log.warning(
                "could not read the build log", extra={"build_id": status.build_id, "error": _describe(exc)}
            )
            return status
        return build_status(record, region=region, log_tail=lines) if lines else status

    @property
    def _poll_lease_seconds(self) -> float:
        return float(min(self._lease_seconds, POLL_LEASE_SECONDS))

    def _claim_is_fresh(self, build_id: str) -> bool:
        now = self._services.monotonic()
        return (
            now - self._claimed_at < self._poll_lease_seconds / 2
            and self._written.get(build_id, float("-inf")) < self._claimed_at
        )

    def _reported_recently(self, build_id: str) -> bool:
        last = self._reported_at.get(build_id)
        return last is not None and self._services.monotonic() - last < self._phase_report_interval

    def stop_build(self, build_id: str) -> BuildRecord:
        """Stop a build through the builder that owns it, and report what the stop changed."""
        record = self._services.builder_for_build(build_id).stop(build_id)
        self.apply_record(record)
        return record

    # -- (c) EventBridge via SNS -------------------------------------------------------------------

    def handle_codebuild_event(self, detail: Mapping[str, Any]) -> bool:
        """Apply one "CodeBuild Build State Change" detail at once; True when it changed a status.

        Builds bridge did not start (other projects on the same event bus) are ignored.
        """
        record = record_from_event(detail)
        if not record["id"]:
            return False
        return self.apply_record(record)


def _request_json(request: BuildRequest) -> str:
    """The StartBuild request as sent, for the operator page (it holds references, never secrets)."""
    return json.dumps(dict(request.start_build_kwargs), sort_keys=True, default=str)


def _post(reporter: StatusReporter, reporter_ref: str | None, status: BuildStatus) -> str | None:
    if reporter_ref is None:
        return reporter.start(status)
    return reporter.update(reporter_ref, status)


def _describe(exc: BaseException) -> str:
    """Bridge errors carry safe messages; anything else is named by type only (it might hold a secret)."""
    if isinstance(exc, BridgeError):
        return str(exc)
    return type(exc).__name__
