"""The worker against the CodeBuild double (over HTTP, botocore-validated), moto's CloudWatch Logs and
the fake GitHub and GitLab APIs: starting builds exactly once, batched polls, EventBridge events,
retries, and resuming from the store after a restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from bridge import events, routing
from bridge.admission import idempotency_seed
from bridge.builders.base import Builder, LogTail
from bridge.config import Config, Route
from bridge.model import BuildRecord, BuildRequest, BuildStatus, Ignored, SourceEvent
from bridge.plan import plan_build
from bridge.secrets import SecretStore
from bridge.services import ProviderReporters, ReporterFactory, Services, StatusReporter
from bridge.status import build_status
from bridge.store import SqliteStore, TrackedBuild
from bridge.store_dynamodb import DynamoStore, create_table
from bridge.worker import (
    MAX_MISSING_POLLS,
    PHASE_REPORT_INTERVAL_SECONDS,
    POLL_LEASE_SECONDS,
    Worker,
    record_from_event,
    retry_delay,
    state_key,
)
from tests.e2e.support import (
    GITHUB_PROJECT,
    GITLAB_PROJECT,
    REGION,
    codebuild_event,
    github_payload,
    gitlab_payload,
    make_config,
    make_services,
    secret_env,
)
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

MAX_POLLS = 40


class Clock:
    """Time the test moves by hand: store leases, retry delays and report throttling follow it."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    config: Config
    services: Services
    worker: Worker
    clock: Clock
    double: CodeBuildDouble
    github_api: FakeGitHub
    gitlab_api: FakeGitLab
    tmp_path: Path

    def enqueue(self, event: SourceEvent | Ignored, delivery_id: str) -> Route:
        """What the app does after verifying a delivery: route it and persist it."""
        assert isinstance(event, SourceEvent)
        route = routing.match_route(event, self.config.routes)
        assert isinstance(route, Route), route
        assert self.services.store.add_delivery(
            delivery_id, event.provider, event.event_name, route.name, event
        )
        return route

    def poll_until_done(self, step: float = 1.0) -> int:
        """Poll like the worker loop does, `step` seconds apart; returns how many polls it took.

        The default step is shorter than the phase report interval, so only state changes are posted.
        """
        for polls in range(1, MAX_POLLS + 1):
            self.clock.advance(step)
            self.worker.track_builds()
            if not self.services.store.active_builds():
                return polls
        raise AssertionError("builds did not finish")


def make_rig(
    tmp_path: Path,
    double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
    *,
    reporters: Any = None,
    state_file: str = "state.sqlite3",
    config_options: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
    github_write_interval: float | None = None,
    **worker_options: Any,
) -> Rig:
    """`github_write_interval`: real PyGithub reporters spacing their writes that far apart, seen
    through `StartsSeenByReports` (the default reporters do not space writes, to keep tests fast)."""
    config = make_config(
        tmp_path,
        github_url=github_api.url,
        gitlab_url=gitlab_api.url,
        state_path=str(tmp_path / state_file),
        **(config_options or {}),
    )
    clock = Clock()
    environ = secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token)
    environ = {**environ, **(extra_env or {})}
    if github_write_interval is not None:
        spaced = ProviderReporters(
            config, SecretStore(None, environ=environ), github_write_interval=github_write_interval
        )
        reporters = StartsSeenByReports(spaced, double)
    services = make_services(
        config,
        environ=environ,
        clock=clock,
        monotonic=clock,
        reporters=reporters,
    )
    worker = Worker(services, sleep_rand=lambda: 0.0, **worker_options)
    return Rig(config, services, worker, clock, double, github_api, gitlab_api, tmp_path)


@pytest.fixture
def rig(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Rig]:
    made = make_rig(tmp_path, codebuild_double, github_api, gitlab_api)
    yield made
    made.services.store.close()


def github_push() -> SourceEvent | Ignored:
    return events.from_github("push", github_payload("push", None, 4))


def gitlab_push() -> SourceEvent | Ignored:
    return events.from_gitlab("Push Hook", gitlab_payload("push"))


def check_run_statuses(github_api: FakeGitHub) -> list[str]:
    return [
        f"{r.method} {r.json.get('status')}"
        for r in github_api.requests
        if "/check-runs" in r.path and r.method in ("POST", "PATCH")
    ]


class StartsSeenByReports:
    """Real reporters, watched: how many StartBuild calls the CodeBuild double had answered when
    each first status was about to be posted (`seen`, in posting order)."""

    def __init__(self, inner: ReporterFactory, double: CodeBuildDouble) -> None:
        self._inner = inner
        self._double = double
        self.seen: list[int] = []
        self.posted_at: list[float] = []  # time.monotonic() after each first status went out

    def __call__(self, event: SourceEvent, route: Route) -> StatusReporter | None:
        reporter = self._inner(event, route)
        return None if reporter is None else _Watched(reporter, self)


@dataclass
class _Watched:
    reporter: StatusReporter
    watcher: StartsSeenByReports

    def start(self, status: BuildStatus) -> str | None:
        self.watcher.seen.append(len(self.watcher._double.calls("StartBuild")))
        ref = self.reporter.start(status)
        self.watcher.posted_at.append(time.monotonic())
        return ref

    def update(self, ref: str, status: BuildStatus) -> str | None:
        return self.reporter.update(ref, status)


class NoReports:
    """A reporter factory for tests about CodeBuild traffic only."""

    def __call__(self, event: SourceEvent, route: Route) -> StatusReporter | None:
        return None


# -- start and track -----------------------------------------------------------------------------------


def test_github_build_runs_to_success_with_a_check_run(rig: Rig) -> None:
    rig.enqueue(github_push(), "gh-1")

    assert rig.worker.drain_pending() == 1
    rig.poll_until_done()

    starts = rig.double.calls("StartBuild")
    assert len(starts) == 1
    assert starts[0].params["projectName"] == GITHUB_PROJECT
    assert check_run_statuses(rig.github_api) == ["POST queued", "PATCH in_progress", "PATCH completed"]
    (run,) = rig.github_api.check_runs.values()
    assert run["conclusion"] == "success"
    assert run["name"] == "codebuild/hello"
    assert run["head_sha"] == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    assert run["external_id"] == rig.services.store.get_delivery("gh-1").build_id  # type: ignore[union-attr]
    assert {r.identity for r in rig.github_api.requests if "/check-runs" in r.path} == {"installation:4242"}


def test_without_an_app_a_token_posts_commit_statuses(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> None:
    token = github_api.add_token("ghp_statuses_only_0123456789", kind="pat")
    made = make_rig(
        tmp_path,
        codebuild_double,
        github_api,
        gitlab_api,
        config_options={"app_key": False},
        extra_env={"GITHUB_TOKEN_FOR_STATUSES": token},
    )
    codebuild_double.script_project(GITHUB_PROJECT, Scenario(final_status="FAULT"))
    made.enqueue(github_push(), "gh-pat")
    made.worker.drain_pending()
    made.poll_until_done()

    assert github_api.check_runs == {}
    assert [(s["context"], s["state"]) for s in github_api.statuses] == [
        ("codebuild/hello", "pending"),
        ("codebuild/hello", "pending"),
        ("codebuild/hello", "error"),  # CodeBuild's own fault, not the change's
    ]
    made.services.store.close()


@pytest.mark.parametrize(
    ("final", "gitlab_final"),
    [("SUCCEEDED", "success"), ("FAILED", "failed"), ("STOPPED", "canceled"), ("TIMED_OUT", "failed")],
)
def test_gitlab_statuses_in_order(rig: Rig, final: str, gitlab_final: str) -> None:
    rig.double.script_project(GITLAB_PROJECT, Scenario(final_status=final))
    rig.enqueue(gitlab_push(), "gl-1")

    rig.worker.drain_pending()
    rig.poll_until_done()

    sha = gitlab_payload("push")["checkout_sha"]
    states = [state for (_, commit, name, state) in rig.gitlab_api.transitions if commit == sha]
    assert states == ["pending", "running", gitlab_final]
    assert {name for (_, _, name, _) in rig.gitlab_api.transitions} == {"codebuild/diaspora"}


def test_phase_changes_are_reported_when_time_allows(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> None:
    """With no throttle every phase is one update; with the default only state changes are."""
    eager = make_rig(tmp_path, codebuild_double, github_api, gitlab_api, phase_report_interval=0.0)
    eager.enqueue(github_push(), "gh-phases")
    eager.worker.drain_pending()
    eager.poll_until_done()
    statuses = check_run_statuses(github_api)
    assert statuses[0] == "POST queued"
    assert statuses[-1] == "PATCH completed"
    assert statuses.count("PATCH in_progress") >= 6  # PROVISIONING, DOWNLOAD_SOURCE, ..., FINALIZING
    eager.services.store.close()


class LockCountingStore(SqliteStore):
    """The real store, counting lock_build: a conditional write per call on DynamoDB."""

    locks = 0

    def lock_build(self, build_id: str, owner: str, *, lease_seconds: float) -> TrackedBuild | None:
        self.locks += 1
        return super().lock_build(build_id, owner, lease_seconds=lease_seconds)


@dataclass
class Delegating:
    """The real builder behind a test's wrapper: each wrapper overrides the one call it watches."""

    inner: Builder
    name: str = field(default="codebuild", kw_only=True)

    def start(self, request: BuildRequest) -> BuildRecord:
        return self.inner.start(request)

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        return self.inner.get_many(build_ids, batch_ids=batch_ids)

    def find_started(self, request: BuildRequest, delivery_id: str, *, since: float) -> BuildRecord | None:
        return self.inner.find_started(request, delivery_id, since=since)

    def stop(self, build_id: str) -> BuildRecord:
        return self.inner.stop(build_id)

    def log_tail(self, build: BuildRecord) -> LogTail:
        return self.inner.log_tail(build)

    def close(self) -> None:
        self.inner.close()


@dataclass
class SlowPolls(Delegating):
    """The real builder, whose batched read takes `seconds` of the test's clock (a slow cycle)."""

    clock: Clock
    seconds: float = 0.0

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        self.clock.advance(self.seconds)
        return self.inner.get_many(build_ids, batch_ids=batch_ids)


def test_a_slow_poll_renews_no_lease_of_a_build_with_nothing_new(rig: Rig) -> None:
    """A cycle slower than half the poll lease re-takes a build's lease only to post something: a
    quiet build costs no store write (on DynamoDB each renewal is a conditional write)."""
    store = LockCountingStore(rig.config.server.state_path, clock=rig.clock)
    builder = SlowPolls(rig.services.builder, rig.clock)
    reporters = RecordingReporters()
    services = replace(rig.services, store=store, builder=builder, reporters=reporters)
    worker = Worker(services, sleep_rand=lambda: 0.0)
    for n in range(3):
        rig.enqueue(github_push(), f"quiet-{n}")
    assert worker.drain_pending() == 3
    rig.clock.advance(1)
    assert worker.track_builds() == 0  # still queued (the double's QUEUED phase): nothing to post
    rig.clock.advance(1)
    assert worker.track_builds() == 3  # queued → in progress: posted
    builder.seconds = POLL_LEASE_SECONDS  # from here on each cycle outlives half the poll lease
    store.locks = 0

    polls = len(rig.double.calls("BatchGetBuilds"))
    rig.clock.advance(1)
    assert worker.track_builds() == 0  # only the phase moved, and the commits were updated just now
    assert len(rig.double.calls("BatchGetBuilds")) == polls + 1
    assert store.locks == 0

    rig.clock.advance(PHASE_REPORT_INTERVAL_SECONDS)  # now the phase is worth an update again
    assert worker.track_builds() == 3
    assert store.locks == 3  # each lease re-taken (the claim was stale) before its update went out
    assert len(reporters.updated) == 6


def test_failed_build_reports_the_end_of_its_log(rig: Rig) -> None:
    lines = {"BUILD": ["step 1/3 : FROM python", "npm ERR! missing script: image"]}
    rig.double.script_project(GITHUB_PROJECT, Scenario(final_status="FAILED", log_lines=lines))
    rig.enqueue(github_push(), "gh-failed")
    rig.worker.drain_pending()
    rig.poll_until_done()

    (run,) = rig.github_api.check_runs.values()
    assert run["conclusion"] == "failure"
    assert "npm ERR! missing script: image" in run["output"]["summary"]


def test_build_that_cannot_start_fails_the_status(rig: Rig) -> None:
    rig.double.mark_missing(GITLAB_PROJECT)
    rig.enqueue(gitlab_push(), "gl-missing")

    assert rig.worker.drain_pending() == 0

    delivery = rig.services.store.get_delivery("gl-missing")
    assert delivery is not None
    assert delivery.state == "failed"
    assert "ResourceNotFoundException" in (delivery.last_error or "")
    assert [state for (*_, state) in rig.gitlab_api.transitions] == ["failed"]
    assert rig.services.store.active_builds() == []


# -- exactly once ----------------------------------------------------------------------------------------


def test_crash_between_start_and_record_reuses_the_same_build(rig: Rig) -> None:
    """StartBuild went through but the process died before mark_started: the token makes it one build."""
    event = github_push()
    route = rig.enqueue(event, "gh-crash")
    assert isinstance(event, SourceEvent)
    request = plan_build(
        event,
        routing.build_options(route, event),
        idempotency_seed=idempotency_seed("gh-crash", route.name),
        delivery_id="gh-crash",
    )
    first = rig.services.builder.start(request)  # the call the crashed worker made

    rig.worker.drain_pending()  # the restarted worker claims the delivery again

    builds = {call.params["idempotencyToken"] for call in rig.double.calls("StartBuild")}
    assert len(builds) == 1
    assert rig.services.store.get_delivery("gh-crash").build_id == first["id"]  # type: ignore[union-attr]
    assert len(rig.services.store.active_builds()) == 1


def test_claimed_delivery_is_not_started_twice(rig: Rig) -> None:
    rig.enqueue(gitlab_push(), "gl-once")
    assert rig.worker.drain_pending() == 1
    rig.clock.advance(3600)  # long after any lease
    assert rig.worker.drain_pending() == 0
    assert len(rig.double.calls("StartBuild")) == 1


def test_rerun_starts_a_new_build_of_the_same_commit(rig: Rig) -> None:
    rerun = events.from_github("check_run", github_payload("check_run", "rerequested"))
    assert isinstance(rerun, SourceEvent)
    assert rerun.kind == "rerun"
    rig.enqueue(rerun, "rerun-1")
    rig.enqueue(rerun, "rerun-2")  # a second click: a new delivery id

    assert rig.worker.drain_pending() == 2

    starts = rig.double.calls("StartBuild")
    assert {call.params["sourceVersion"] for call in starts} == {rerun.sha}
    assert len({call.params["idempotencyToken"] for call in starts}) == 2
    assert len(rig.github_api.check_runs) == 2


# -- bursts ----------------------------------------------------------------------------------------------

BURST = 10
WRITE_SPACING = 0.2  # shorter than GitHub's 1 s, but real: PyGithub sleeps between writes


def test_a_burst_starts_every_build_before_the_spaced_status_writes(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> None:
    """GitHub writes are spaced (secondary rate limits); the builds must not queue behind them."""
    made = make_rig(tmp_path, codebuild_double, github_api, gitlab_api, github_write_interval=WRITE_SPACING)
    watcher = made.services.reporters
    assert isinstance(watcher, StartsSeenByReports)
    event = github_push()
    for n in range(BURST):
        made.enqueue(event, f"burst-{n}")

    assert made.worker.drain_pending() == BURST

    starts = codebuild_double.calls("StartBuild")
    assert len(starts) == BURST
    assert len({call.params["idempotencyToken"] for call in starts}) == BURST
    # Every StartBuild had been answered before the second status write went out.
    assert len(watcher.seen) == BURST
    assert watcher.seen[1:] == [BURST] * (BURST - 1)
    # One build per delivery, and each build has its one first status (a check run naming it).
    deliveries = [made.services.store.get_delivery(f"burst-{n}") for n in range(BURST)]
    build_ids = sorted(d.build_id or "" for d in deliveries if d is not None)
    assert len(set(build_ids)) == BURST
    assert "" not in build_ids
    assert sorted(run["external_id"] for run in github_api.check_runs.values()) == build_ids
    assert check_run_statuses(github_api) == ["POST queued"] * BURST
    assert all(b.last_reported_state for b in made.services.store.active_builds())
    # GitHub's spacing is kept: only the builds stopped waiting for it.
    spacing = [b - a for a, b in zip(watcher.posted_at, watcher.posted_at[1:], strict=False)]
    assert min(spacing) >= WRITE_SPACING * 0.9
    made.services.store.close()


class RecordingReporters:
    """First statuses and updates by build id, with no API behind them; `on_start` runs at each post."""

    def __init__(self, on_start: Callable[[], None] | None = None) -> None:
        self.started: list[str] = []
        self.updated: list[str] = []
        self._on_start = on_start

    def __call__(self, event: SourceEvent, route: Route) -> StatusReporter | None:
        return _Recording(self)


@dataclass
class _Recording:
    owner: RecordingReporters

    def start(self, status: BuildStatus) -> str | None:
        self.owner.started.append(status.build_id)
        if self.owner._on_start is not None:
            self.owner._on_start()
        return f"ref-{status.build_id}"

    def update(self, ref: str, status: BuildStatus) -> str | None:
        self.owner.updated.append(status.build_id)
        return ref


@dataclass
class StopsAfterStarts(Delegating):
    """The real builder; `then` runs once `count` builds have started (a stop arriving mid-burst)."""

    count: int
    then: Callable[[], None]

    def start(self, request: BuildRequest) -> BuildRecord:
        record = self.inner.start(request)
        self.count -= 1
        if self.count == 0:
            self.then()
        return record


def test_a_delivery_accepted_while_a_burst_reports_starts_before_the_next_first_status(rig: Rig) -> None:
    """The spaced first statuses of a burst (a second each on GitHub) must not hold up a delivery
    accepted meanwhile: it starts before the burst's second status goes out, not after all of them."""
    starts_seen: list[int] = []
    event = github_push()

    def count_starts_and_accept_one_more() -> None:
        starts_seen.append(len(rig.double.calls("StartBuild")))
        if len(starts_seen) == 1:
            rig.enqueue(event, "late")

    reporters = RecordingReporters(on_start=count_starts_and_accept_one_more)
    worker = Worker(replace(rig.services, reporters=reporters), sleep_rand=lambda: 0.0)
    for n in range(BURST):
        rig.enqueue(event, f"early-{n}")

    assert worker.drain_pending() == BURST + 1

    assert starts_seen[:2] == [BURST, BURST + 1]
    late = rig.services.store.get_delivery("late")
    assert late is not None
    assert late.build_id is not None
    tracked = {b.build_id for b in rig.services.store.active_builds()}
    assert sorted(reporters.started) == sorted(tracked)  # every build, the late one too: one status each
    assert len(tracked) == BURST + 1


def test_starts_are_paced_past_the_burst_allowance(rig: Rig) -> None:
    """`server.max_build_starts_per_second`: the first `rate` starts go at once, the rest 1/rate apart."""
    reporters = RecordingReporters()
    worker = Worker(replace(rig.services, reporters=reporters), sleep_rand=lambda: 0.0, starts_per_second=10)
    event = github_push()
    for n in range(25):
        rig.enqueue(event, f"paced-{n}")

    began = time.monotonic()
    assert worker.drain_pending() == 25
    elapsed = time.monotonic() - began

    assert len(rig.double.calls("StartBuild")) == 25
    assert elapsed >= 15 / 10 * 0.9  # 15 starts past the allowance of 10, a tenth of a second apart
    assert len(reporters.started) == 25


def test_the_configured_start_rate_paces_the_worker(rig: Rig) -> None:
    """Without an explicit rate the worker takes `[server] max_build_starts_per_second`."""
    slow = replace(rig.config, server=replace(rig.config.server, max_build_starts_per_second=2))
    worker = Worker(
        replace(rig.services, config=slow, reporters=RecordingReporters()), sleep_rand=lambda: 0.0
    )
    event = github_push()
    for n in range(4):
        rig.enqueue(event, f"configured-{n}")

    began = time.monotonic()
    assert worker.drain_pending() == 4
    assert time.monotonic() - began >= 2 / 2 * 0.9  # two at once, then two half a second apart


def test_stopping_interrupts_a_paced_wait(rig: Rig) -> None:
    """A shutdown is never held up by pacing: the wait is on the stop event, and nothing more starts."""
    worker = Worker(replace(rig.services, reporters=RecordingReporters()), starts_per_second=0.1)
    event = github_push()
    for n in range(3):
        rig.enqueue(event, f"stopped-{n}")
    stopper = threading.Timer(0.5, worker.stop)
    stopper.start()

    began = time.monotonic()
    started = worker.drain_pending()
    elapsed = time.monotonic() - began
    stopper.join()

    assert started == 1  # the allowance of one; the second would have waited ten seconds
    assert len(rig.double.calls("StartBuild")) == 1
    assert elapsed < 5  # far below those ten seconds, even on a loaded machine


@pytest.mark.parametrize("stop_during", ["starts", "first statuses"])
def test_stop_during_a_burst_starts_nothing_more_and_loses_no_build(rig: Rig, stop_during: str) -> None:
    """Stopping mid-burst: no StartBuild after the stop, every started build recorded, and the first
    statuses not posted before the stop are posted by tracking later (here: after a restart)."""

    def stop() -> None:
        worker.stop()  # the worker below; no thread runs, so this only sets the flag

    reporters = RecordingReporters(on_start=stop if stop_during == "first statuses" else None)
    builder: Builder = rig.services.builder
    if stop_during == "starts":
        builder = StopsAfterStarts(builder, count=3, then=stop)
    services = replace(rig.services, reporters=reporters, builder=builder)
    worker = Worker(services, sleep_rand=lambda: 0.0)
    event = github_push()
    for n in range(BURST):
        rig.enqueue(event, f"stop-{n}")

    started = worker.drain_pending()

    expected = 3 if stop_during == "starts" else BURST
    assert started == expected
    assert len(rig.double.calls("StartBuild")) == expected
    tracked = {b.build_id for b in services.store.active_builds()}
    assert len(tracked) == expected
    assert reporters.started == ([] if stop_during == "starts" else reporters.started[:1])
    assert len(reporters.started) == (0 if stop_during == "starts" else 1)

    after = Worker(services, sleep_rand=lambda: 0.0)  # the next process: tracking posts the rest
    after.track_builds()
    assert sorted(reporters.started) == sorted(tracked)
    assert len(rig.double.calls("StartBuild")) == expected


def test_an_event_during_a_burst_posts_that_build_s_first_status_once(rig: Rig) -> None:
    """An EventBridge event for a build still waiting for its first status posts it; the burst's
    own first status for that build is then skipped (two check runs on one commit otherwise)."""
    event = github_push()
    for n in range(3):
        rig.enqueue(event, f"event-{n}")

    def last_build_runs() -> None:
        if len(reporters.started) > 1:
            return
        last = rig.services.store.get_delivery("event-2")
        assert last is not None
        assert last.build_id is not None
        running = {**rig.double.build(last.build_id), "buildStatus": "IN_PROGRESS", "currentPhase": "BUILD"}
        assert worker.handle_codebuild_event(codebuild_event(running)["detail"]) is True

    reporters = RecordingReporters(on_start=last_build_runs)
    worker = Worker(replace(rig.services, reporters=reporters), sleep_rand=lambda: 0.0)

    assert worker.drain_pending() == 3

    build_ids = [d.build_id or "" for n in range(3) if (d := rig.services.store.get_delivery(f"event-{n}"))]
    assert sorted(reporters.started) == sorted(build_ids)
    assert reporters.started[1] == build_ids[2]  # the event's, posted during the first one's
    assert reporters.updated == []  # and that build's status never went back to queued


@pytest.fixture
def dynamodb_table(moto_url: str, aws_env: dict[str, str]) -> str:
    name = f"bridge-{uuid.uuid4().hex[:8]}"
    create_table(boto3.client("dynamodb", region_name=REGION), name)
    return name


def test_first_status_leases_are_renewed_while_a_burst_reports(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
    dynamodb_table: str,
) -> None:
    """Two replicas on DynamoDB. Replica A's first statuses take 3 s each, so the last ones are
    posted long after a 10-s lease taken at start; replica B polls during each of them and must
    never post a first status itself (it would be a second check run on the commit)."""
    made = make_rig(tmp_path, codebuild_double, github_api, gitlab_api)
    made.services.store.close()
    clock = made.clock
    store_b = DynamoStore(dynamodb_table, region=REGION, clock=clock)
    reporters_b = RecordingReporters()
    replica_b = Worker(replace(made.services, store=store_b, reporters=reporters_b), sleep_rand=lambda: 0.0)

    def slow_post_while_b_polls() -> None:
        clock.advance(3)
        replica_b.track_builds()

    store_a = DynamoStore(dynamodb_table, region=REGION, clock=clock)
    reporters_a = RecordingReporters(on_start=slow_post_while_b_polls)
    services_a = replace(made.services, store=store_a, reporters=reporters_a)
    replica_a = Worker(services_a, lease_seconds=10, sleep_rand=lambda: 0.0)
    event = github_push()
    assert isinstance(event, SourceEvent)
    for n in range(6):
        assert store_a.add_delivery(f"lease-{n}", "github", "push", "hello", event)

    assert replica_a.drain_pending() == 6

    build_ids = {b.build_id for b in store_a.active_builds()}
    assert len(build_ids) == 6
    assert sorted(reporters_a.started) == sorted(build_ids)
    assert reporters_b.started == []
    assert clock.now - 1_800_000_000.0 > 10  # the burst's reports did outlast the first lease
    # Released once posted: B polls (and updates) every build from now on.
    clock.advance(5)
    replica_b.track_builds()
    assert set(reporters_b.updated) == build_ids


# -- retries ---------------------------------------------------------------------------------------------


def test_retryable_start_failure_is_retried_with_backoff(rig: Rig) -> None:
    """The concurrent-build quota is a retryable refusal botocore does not retry itself."""
    rig.double.fail("StartBuild", "AccountLimitExceededException", count=2)
    rig.enqueue(gitlab_push(), "gl-quota")

    assert rig.worker.drain_pending() == 0
    delivery = rig.services.store.get_delivery("gl-quota")
    assert delivery is not None
    assert delivery.state == "pending"
    assert delivery.next_attempt_at == pytest.approx(rig.clock.now + retry_delay(1, rand=lambda: 0.0))
    assert rig.worker.drain_pending() == 0  # not due yet: nothing is called
    assert len(rig.double.calls("StartBuild")) == 1

    rig.clock.advance(retry_delay(1, rand=lambda: 0.0) + 0.1)
    assert rig.worker.drain_pending() == 0  # second refusal, twice the delay
    rig.clock.advance(retry_delay(2, rand=lambda: 0.0) + 0.1)
    assert rig.worker.drain_pending() == 1

    assert len(rig.double.calls("StartBuild")) == 3
    assert rig.gitlab_api.transitions[0][3] == "pending"  # no failure was ever shown


def test_retries_never_give_up_on_a_retryable_refusal_and_the_status_says_why(rig: Rig) -> None:
    """Twenty refusals (the worker used to drop a delivery after 8): it keeps waiting, capped at
    `start_retry_max_delay_seconds`, shows "Waiting for CodeBuild" once per reason, then builds."""
    rig.double.fail("StartBuild", "AccountLimitExceededException", count=20)
    rig.enqueue(gitlab_push(), "gl-patient")
    for _ in range(20):
        rig.worker.drain_pending()
        delivery = rig.services.store.get_delivery("gl-patient")
        assert delivery is not None
        assert delivery.state == "pending"
        assert delivery.next_attempt_at - rig.clock.now <= 120
        rig.clock.advance(120)
    assert rig.worker.drain_pending() == 1
    assert len(rig.double.calls("StartBuild")) == 21
    statuses = rig.gitlab_api.status_requests
    assert statuses[0].body["description"].startswith("Waiting for CodeBuild:")
    assert [state for (*_, state) in rig.gitlab_api.transitions] == [
        "pending"
    ]  # one waiting post, no failure


def test_an_error_that_cannot_heal_is_not_retried_and_the_status_says_how_to_fix_it(rig: Rig) -> None:
    rig.double.fail("StartBuild", "AccessDeniedException", count=1)
    rig.enqueue(github_push(), "gh-denied")
    rig.worker.drain_pending()
    rig.clock.advance(600)
    rig.worker.drain_pending()

    assert rig.services.store.get_delivery("gh-denied").state == "failed"  # type: ignore[union-attr]
    assert len(rig.double.calls("StartBuild")) == 1
    (check_run,) = rig.github_api.check_runs.values()
    assert check_run["conclusion"] == "failure"
    assert "**To fix:** allow codebuild:StartBuild" in check_run["output"]["summary"]


def test_throttled_calls_are_absorbed_by_botocore_retries(rig: Rig) -> None:
    rig.double.throttle(1, "StartBuild")
    rig.enqueue(gitlab_push(), "gl-throttled")
    assert rig.worker.drain_pending() == 1

    assert [c.status for c in rig.double.calls("StartBuild")] == [400, 200]
    assert [state for (*_, state) in rig.gitlab_api.transitions] == ["pending"]


def test_a_failing_status_post_is_retried_by_the_next_poll(rig: Rig) -> None:
    rig.enqueue(gitlab_push(), "gl-flaky")
    rig.worker.drain_pending()
    rig.gitlab_api.fail_next(500, times=10)  # python-gitlab retries 3 times itself; the poll retries after
    rig.clock.advance(5)
    rig.worker.track_builds()
    rig.poll_until_done()
    assert [state for (*_, state) in rig.gitlab_api.transitions][-1] == "success"


# -- batched polling ---------------------------------------------------------------------------------------


def test_150_builds_cost_two_batch_calls_per_poll(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> None:
    made = make_rig(tmp_path, codebuild_double, github_api, gitlab_api, reporters=NoReports())
    event = gitlab_push()
    for n in range(150):
        made.enqueue(event, f"bulk-{n}")
    assert made.worker.drain_pending() == 150
    assert len(made.services.store.active_builds()) == 150

    made.worker.track_builds()
    made.worker.track_builds()

    batches = codebuild_double.calls("BatchGetBuilds")
    assert len(batches) == 4
    assert sorted(len(call.params["ids"]) for call in batches[:2]) == [50, 100]
    made.services.store.close()


def test_poll_failure_backs_off_and_recovers(rig: Rig) -> None:
    rig.enqueue(gitlab_push(), "gl-backoff")
    rig.worker.drain_pending()
    rig.double.fail("BatchGetBuilds", "AccessDeniedException", count=1)
    assert rig.worker.track_builds() == 0
    assert rig.worker.poll_interval == 2 * rig.services.poll_interval
    rig.clock.advance(11)
    assert rig.worker.track_builds() == 1
    assert rig.worker.poll_interval == rig.services.poll_interval
    rig.poll_until_done()


def test_a_build_codebuild_does_not_return_is_reported_lost_after_a_bounded_number_of_polls(rig: Rig) -> None:
    rig.enqueue(gitlab_push(), "gl-kept")
    rig.enqueue(github_push(), "gh-lost")
    rig.worker.drain_pending()
    lost = next(b.build_id for b in rig.services.store.active_builds() if b.delivery_id == "gh-lost")
    rig.double.forget(lost)

    for _ in range(MAX_MISSING_POLLS - 1):
        rig.clock.advance(5)
        rig.worker.track_builds()
        assert rig.services.store.get_build(lost).done is False  # type: ignore[union-attr]
    rig.clock.advance(5)
    rig.worker.track_builds()

    assert rig.services.store.get_build(lost).done is True  # type: ignore[union-attr]
    (check_run,) = rig.github_api.check_runs.values()
    assert check_run["conclusion"] == "failure"
    assert "CodeBuild has not returned it for 5 polls" in check_run["output"]["title"]
    rig.poll_until_done()  # the other build was polled all along, and finishes
    assert [state for (*_, state) in rig.gitlab_api.transitions][-1] == "success"
    assert rig.double.not_found[lost] == MAX_MISSING_POLLS
    assert rig.double.calls("BatchGetBuildBatches") == []


def test_an_id_refused_for_good_does_not_hide_the_others(rig: Rig) -> None:
    """A whole read refused (here: one call's AccessDeniedException) is asked again id by id, so the
    builds it named are still read; the id refused every time is reported lost with the reason."""
    rig.enqueue(gitlab_push(), "gl-one")
    rig.enqueue(github_push(), "gh-two")
    rig.worker.drain_pending()
    rig.double.fail("BatchGetBuilds", "AccessDeniedException", count=1)
    rig.clock.advance(PHASE_REPORT_INTERVAL_SECONDS + 1)
    assert rig.worker.track_builds() == 2  # both read one by one after the refused pair

    ids = [call.params["ids"] for call in rig.double.calls("BatchGetBuilds")]
    assert [len(chunk) for chunk in ids] == [2, 1, 1]
    assert [call.error_code for call in rig.double.calls("BatchGetBuilds")] == [
        "AccessDeniedException",
        None,
        None,
    ]


def test_builds_of_a_batch_route_are_read_with_the_batch_api_only(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> None:
    made = make_rig(
        tmp_path,
        codebuild_double,
        github_api,
        gitlab_api,
        config_options={"github_route_extra": "batch = true"},
    )
    made.enqueue(github_push(), "gh-batch")
    made.worker.drain_pending()
    fresh = Worker(made.services, sleep_rand=lambda: 0.0)  # as after a restart: the route says "batch"
    made.clock.advance(5)
    fresh.track_builds()
    assert len(codebuild_double.calls("BatchGetBuildBatches")) == 1
    assert codebuild_double.calls("BatchGetBuilds") == []
    made.services.store.close()


# -- EventBridge ---------------------------------------------------------------------------------------------


def test_eventbridge_event_finishes_the_status_without_a_poll(rig: Rig) -> None:
    rig.enqueue(gitlab_push(), "gl-event")
    rig.worker.drain_pending()
    (tracked,) = rig.services.store.active_builds()
    record = rig.double.build(tracked.build_id)
    done = {**record, "buildStatus": "FAILED", "buildComplete": True, "currentPhase": "COMPLETED"}
    detail = codebuild_event(done)["detail"]

    assert rig.worker.handle_codebuild_event(detail) is True
    assert rig.worker.handle_codebuild_event(detail) is False  # a duplicate event changes nothing

    assert rig.services.store.active_builds() == []
    assert [state for (*_, state) in rig.gitlab_api.transitions] == ["pending", "failed"]
    assert rig.double.calls("BatchGetBuilds") == []
    rig.worker.track_builds()  # the backup poll has nothing left to do
    assert rig.double.calls("BatchGetBuilds") == []


def test_late_event_never_moves_a_status_backwards(rig: Rig) -> None:
    rig.enqueue(gitlab_push(), "gl-late")
    rig.worker.drain_pending()
    (tracked,) = rig.services.store.active_builds()
    for _ in range(4):  # into DOWNLOAD_SOURCE: running
        rig.worker.track_builds()
    queued = {**rig.double.build(tracked.build_id), "currentPhase": "QUEUED", "buildStatus": "IN_PROGRESS"}
    assert rig.worker.handle_codebuild_event(codebuild_event(queued)["detail"]) is False
    assert [state for (*_, state) in rig.gitlab_api.transitions] == ["pending", "running"]


def test_events_for_builds_bridge_did_not_start_are_ignored(rig: Rig) -> None:
    detail = {
        "build-id": "arn:aws:codebuild:eu-west-1:123456789012:build/other:1234",
        "build-status": "SUCCEEDED",
        "project-name": "other",
    }
    assert rig.worker.handle_codebuild_event(detail) is False


def test_record_from_event_reads_the_documented_fields() -> None:
    detail = {
        "build-status": "FAILED",
        "project-name": "p",
        "build-id": "arn:aws:codebuild:us-west-2:123456789012:build/p:8745a7a9",
        "current-phase": "COMPLETED",
        "additional-information": {
            "build-complete": True,
            "build-number": 55,
            "logs": {"group-name": "/aws/codebuild/p", "stream-name": "8745a7a9", "deep-link": "https://x"},
            "phases": [
                {"phase-type": "BUILD", "phase-status": "FAILED", "duration-in-seconds": 3},
                {"phase-type": "COMPLETED", "start-time": "Sep 1, 2017 4:14:21 PM"},
            ],
        },
    }
    record = record_from_event(detail)
    assert record["id"] == "p:8745a7a9"
    assert record["buildComplete"] is True
    assert record["buildNumber"] == 55
    assert record["logs"]["groupName"] == "/aws/codebuild/p"
    assert record["phases"][0] == {
        "phaseType": "BUILD",
        "phaseStatus": "FAILED",
        "startTime": None,
        "endTime": None,
        "durationInSeconds": 3,
        "contexts": None,
    }


# -- restart -------------------------------------------------------------------------------------------------


def test_a_new_worker_resumes_pending_deliveries_and_active_builds(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> None:
    before = make_rig(tmp_path, codebuild_double, github_api, gitlab_api)
    before.enqueue(gitlab_push(), "gl-running")
    before.worker.drain_pending()
    before.worker.track_builds()
    before.enqueue(github_push(), "gh-pending")  # accepted, never started
    before.services.store.close()

    after = make_rig(tmp_path, codebuild_double, github_api, gitlab_api)
    after.worker.start()
    try:
        for _ in range(MAX_POLLS * 10):
            if after.double.calls("StartBuild") and len(after.double.calls("StartBuild")) == 2:
                break
            after.worker.wake()
            time.sleep(0.05)
        after.poll_until_done()
    finally:
        after.worker.stop()
    assert not after.worker.running
    assert len(codebuild_double.calls("StartBuild")) == 2
    assert [state for (*_, state) in gitlab_api.transitions][-1] == "success"
    (run,) = github_api.check_runs.values()
    assert run["conclusion"] == "success"
    after.services.store.close()


def test_state_key_orders_states() -> None:
    status = BuildStatus(
        build_id="p:1",
        build_number=1,
        build_status="IN_PROGRESS",
        state="in_progress",
        conclusion=None,
        title="t",
        summary="s",
        phases=(),
        current_phase="BUILD",
        console_url="",
    )
    assert state_key(status) == "in_progress|IN_PROGRESS|BUILD"


def test_a_replica_without_the_run_id_adopts_the_check_run_another_one_created(
    tmp_path: Path, github_api: FakeGitHub, gitlab_api: FakeGitLab
) -> None:
    """The server's check-run reporters look before they create: a replica SIGKILLed between
    creating a build's check run and recording its id leaves no second, forever-queued run."""
    config = make_config(tmp_path, github_url=github_api.url, gitlab_url=gitlab_api.url)
    environ = secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token)
    event = github_push()
    assert isinstance(event, SourceEvent)
    route = routing.match_route(event, config.routes)
    assert isinstance(route, Route)

    def replica() -> StatusReporter:
        reporter = ProviderReporters(config, SecretStore(None, environ=environ), github_write_interval=None)(
            event, route
        )
        assert reporter is not None
        return reporter

    def status(state: str) -> BuildStatus:
        record = {
            "id": "bench:adopt-1",
            "arn": f"arn:aws:codebuild:{REGION}:123456789012:build/bench:adopt-1",
        }
        return build_status({**record, "buildStatus": state, "phases": []}, region=REGION)

    created = replica().start(status("IN_PROGRESS"))  # ...and this replica dies before recording it
    adopted = replica().start(status("SUCCEEDED"))

    assert adopted == created
    assert [run["conclusion"] for run in github_api.check_runs.values()] == ["success"]
    assert github_api.violations == []
