"""The SQLite state store: dedupe, surviving a killed process, leases, atomic start, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.model import SourceEvent
from bridge.store import Store, StoreError, delivery_row, event_from_json, event_to_json

ROOT = Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef0123456789abcdef01234567"
EVENT = SourceEvent(
    provider="github",
    kind="pull_request",
    event_name="pull_request",
    action="opened",
    repository="acme/web",
    clone_url="https://github.com/someone/web.git",
    sha=SHA,
    ref="refs/pull/7/head",
    server_url="https://github.com",
    branch="feature/x",
    pr_number=7,
    base_branch="main",
    is_fork=True,
    installation_id=42,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    opened = Store(tmp_path / "state" / "bridge.sqlite3", clock=clock)
    yield opened
    opened.close()


def add(store: Store, delivery_id: str, event: SourceEvent = EVENT) -> bool:
    return store.add_delivery(delivery_id, event.provider, event.event_name, "web", event)


# --- deliveries -----------------------------------------------------------------------------------


def test_recent_deliveries_are_newest_first_and_filter_by_repository_and_commit_prefix(
    store: Store, clock: Clock
) -> None:
    other = replace(EVENT, repository="acme/api", sha="f" * 40)
    add(store, "d-1")
    clock.now += 1
    add(store, "d-2", other)
    clock.now += 1
    store.add_ignored("d-3", "github", "issues", "GitHub event 'issues' does not trigger builds")
    clock.now += 1
    store.add_ignored("d-4", "gitlab", "Push Hook", "no route", repository="acme/web", sha="ab_%" + "0" * 36)

    assert [row.delivery_id for row in store.recent_deliveries()] == ["d-4", "d-3", "d-2", "d-1"]
    assert [row.delivery_id for row in store.recent_deliveries(limit=2)] == ["d-4", "d-3"]
    assert [row.delivery_id for row in store.recent_deliveries(repository="acme/web")] == ["d-4", "d-1"]
    assert [row.delivery_id for row in store.recent_deliveries(sha=SHA[:7].upper())] == ["d-1"]
    assert [row.delivery_id for row in store.recent_deliveries(sha="ab_%")] == ["d-4"]
    assert store.recent_deliveries(sha="ab__") == []  # "_" and "%" are not wildcards
    assert store.recent_deliveries(repository="acme/api", sha=SHA) == []
    ignored = store.recent_deliveries(repository="acme/web")[0]
    assert (ignored.state, ignored.outcome, ignored.last_error) == ("ignored", "ignored", "no route")


def test_a_started_delivery_keeps_its_request_and_its_build_the_status_reported(
    store: Store, clock: Clock
) -> None:
    add(store, "d-1")
    store.mark_retry("d-1", "ThrottlingException", 5)
    assert store.recent_deliveries()[0].outcome == "retrying"
    clock.now += 3
    store.mark_started("d-1", "proj:b1", request_json='{"projectName": "proj"}')
    clock.now += 40
    store.update_build("proj:b1", status_json='{"state": "completed"}', done=True)

    row = store.get_delivery("d-1")
    assert row is not None
    assert (row.outcome, row.request_json, row.build_id) == ("started", '{"projectName": "proj"}', "proj:b1")
    builds = store.get_builds(["proj:b1", "proj:unknown", "proj:b1"])
    assert list(builds) == ["proj:b1"]
    assert (builds["proj:b1"].status_json, builds["proj:b1"].created_at) == (
        '{"state": "completed"}',
        1_000_003.0,
    )
    assert builds["proj:b1"].updated_at == 1_000_043.0


def test_a_delivery_is_recorded_once(store: Store, clock: Clock) -> None:
    assert add(store, "d-1") is True
    assert add(store, "d-1") is False
    assert add(store, "d-2") is True
    row = store.get_delivery("d-1")
    assert row is not None
    assert (row.state, row.attempts, row.route_name, row.event) == ("pending", 0, "web", EVENT)
    assert row.received_at == clock.now
    assert store.get_delivery("unknown") is None
    assert store.counts()["deliveries_pending"] == 2


def test_an_ignored_delivery_is_remembered_for_dedupe(store: Store) -> None:
    assert (
        store.add_ignored("d-1", "github", "issues", "GitHub event 'issues' does not trigger builds") is True
    )
    assert store.add_ignored("d-1", "github", "issues", "again") is False
    assert add(store, "d-1") is False
    row = store.get_delivery("d-1")
    assert row is not None
    assert (row.state, row.event, row.last_error) == (
        "ignored",
        None,
        "GitHub event 'issues' does not trigger builds",
    )
    assert store.claim_pending() == []
    assert store.counts()["deliveries_ignored"] == 1


def test_the_same_id_added_from_many_threads_builds_once(store: Store) -> None:
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def worker() -> None:
        barrier.wait()
        results.append(add(store, "race"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_the_same_id_added_through_separate_connections_builds_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    Store(path).close()  # create the schema first, as the server does at start
    barrier = threading.Barrier(6)
    results: list[bool] = []

    def worker() -> None:
        own = Store(path)
        barrier.wait()
        results.append(add(own, "race"))
        own.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]


_ADD_THEN_HANG = """
import sys, time
from bridge.store import Store
from tests.test_store import EVENT
store = Store(sys.argv[1])
ok = store.add_delivery("survivor", "github", "pull_request", "web", EVENT)
print("added" if ok else "duplicate", flush=True)
time.sleep(60)
"""


def test_an_acknowledged_delivery_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _ADD_THEN_HANG, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "added"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # the write was still only in the WAL when the process died
    reopened = Store(path)
    row = reopened.get_delivery("survivor")
    assert row is not None
    assert row.event == EVENT
    assert row.state == "pending"
    assert add(reopened, "survivor") is False
    reopened.close()


def test_the_file_uses_wal(store: Store, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "state" / "bridge.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_state_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "reopen.sqlite3"
    first = Store(path)
    add(first, "d-1")
    first.mark_started("d-1", "proj:build-1", '{"check_run_id": 5}')
    first.close()
    second = Store(path)
    build = second.get_build("proj:build-1")
    assert build is not None
    assert build.reporter_ref == '{"check_run_id": 5}'
    assert [b.build_id for b in second.active_builds()] == ["proj:build-1"]
    second.close()


# --- claiming and leases --------------------------------------------------------------------------


def test_claim_leases_and_reoffers_after_the_lease(store: Store, clock: Clock) -> None:
    add(store, "d-1")
    clock.now += 1
    add(store, "d-2")
    claimed = store.claim_pending(limit=10, lease_seconds=60)
    assert [(c.delivery_id, c.attempts) for c in claimed] == [("d-1", 1), ("d-2", 1)]
    assert claimed[0].event == EVENT
    assert claimed[0].route_name == "web"
    # Leased: nobody else gets them while the worker is (maybe) starting the builds.
    assert store.claim_pending() == []
    clock.now += 59
    assert store.claim_pending() == []
    # The worker died: the lease runs out and the deliveries are offered again.
    clock.now += 2
    again = store.claim_pending()
    assert [(c.delivery_id, c.attempts) for c in again] == [("d-1", 2), ("d-2", 2)]


def test_claim_respects_the_limit_and_order(store: Store, clock: Clock) -> None:
    for i in range(5):
        add(store, f"d-{i}")
        clock.now += 1
    assert [c.delivery_id for c in store.claim_pending(limit=2)] == ["d-0", "d-1"]
    assert [c.delivery_id for c in store.claim_pending(limit=10)] == ["d-2", "d-3", "d-4"]


def test_retry_waits_for_its_delay_and_failed_is_final(store: Store, clock: Clock) -> None:
    add(store, "d-1")
    add(store, "d-2")
    store.claim_pending()
    store.mark_retry("d-1", "ThrottlingException", delay_seconds=30)
    store.mark_failed("d-2", "project not found")
    clock.now += 29
    assert store.claim_pending() == []
    clock.now += 2
    (retried,) = store.claim_pending()
    assert (retried.delivery_id, retried.attempts) == ("d-1", 2)
    row = store.get_delivery("d-1")
    assert row is not None
    assert row.last_error == "ThrottlingException"
    failed = store.get_delivery("d-2")
    assert failed is not None
    assert (failed.state, failed.last_error) == ("failed", "project not found")
    clock.now += 1000
    assert [c.delivery_id for c in store.claim_pending()] == ["d-1"]  # d-1's lease ran out; d-2 is final
    assert store.counts()["deliveries_failed"] == 1


# --- builds ---------------------------------------------------------------------------------------


def test_mark_started_records_the_build_and_closes_the_delivery(store: Store, clock: Clock) -> None:
    add(store, "d-1")
    store.claim_pending()
    store.mark_started("d-1", "proj:abc", "codebuild/web")
    row = store.get_delivery("d-1")
    assert row is not None
    assert (row.state, row.build_id) == ("started", "proj:abc")
    build = store.get_build("proj:abc")
    assert build is not None
    assert (build.delivery_id, build.provider, build.route_name, build.event) == (
        "d-1",
        "github",
        "web",
        EVENT,
    )
    assert (build.reporter_ref, build.done, build.updated_at) == ("codebuild/web", False, clock.now)
    clock.now += 1000
    assert store.claim_pending() == []  # started deliveries are never offered again


def test_mark_started_is_atomic(store: Store, tmp_path: Path) -> None:
    add(store, "d-1")
    # Make the second write of the transaction fail, as a full disk would.
    with sqlite3.connect(tmp_path / "state" / "bridge.sqlite3") as raw:
        raw.execute(
            "CREATE TRIGGER no_builds BEFORE INSERT ON builds BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(StoreError) as caught:
        store.mark_started("d-1", "proj:abc")
    assert caught.value.http_status == 503
    row = store.get_delivery("d-1")
    assert row is not None
    assert (row.state, row.build_id) == ("pending", None)  # the delivery update was rolled back too
    assert store.get_build("proj:abc") is None
    assert store.writable() is True  # the connection is usable after the rollback


def test_mark_started_needs_a_delivery(store: Store) -> None:
    with pytest.raises(StoreError):
        store.mark_started("never-added", "proj:abc")
    assert store.get_build("proj:abc") is None


def test_update_build_sets_only_the_given_fields(store: Store, clock: Clock) -> None:
    add(store, "d-1")
    add(store, "d-2")
    store.mark_started("d-1", "b-1", "ref-1")
    store.mark_started("d-2", "b-2")
    clock.now += 5
    store.update_build("b-1", last_build_status="IN_PROGRESS", last_reported_state="in_progress")
    build = store.get_build("b-1")
    assert build is not None
    assert (build.last_build_status, build.last_reported_state, build.reporter_ref, build.done) == (
        "IN_PROGRESS",
        "in_progress",
        "ref-1",
        False,
    )
    assert build.updated_at == clock.now
    store.update_build("b-1", reporter_ref="ref-2", done=True)
    build = store.get_build("b-1")
    assert build is not None
    assert (build.last_build_status, build.reporter_ref, build.done) == ("IN_PROGRESS", "ref-2", True)
    assert [b.build_id for b in store.active_builds()] == ["b-2"]
    assert store.counts() == {
        "deliveries_pending": 0,
        "deliveries_started": 2,
        "deliveries_failed": 0,
        "deliveries_ignored": 0,
        "builds_active": 1,
        "builds_done": 1,
    }


# --- health and errors ----------------------------------------------------------------------------


def test_a_call_waits_for_a_turn_at_the_store_no_longer_than_the_busy_timeout(tmp_path: Path) -> None:
    store = Store(tmp_path / "turn.sqlite3", busy_timeout=0.2)
    with store._transaction():  # a write of this process in flight (the lock is not re-entrant)
        with pytest.raises(StoreError) as caught:
            store.active_builds()
        assert store.writable() is False
    assert caught.value.http_status == 503
    assert "no turn within 0.2 s" in caught.value.message
    assert store.active_builds() == []


def test_a_locked_file_is_a_503_and_not_writable(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    store = Store(path, busy_timeout=0.2)
    assert store.writable() is True
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert store.writable() is False
        with pytest.raises(StoreError) as caught:
            add(store, "d-1")
        assert caught.value.http_status == 503
        assert "state store is busy" in str(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert add(store, "d-1") is True
    store.close()


def test_an_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError):
        Store(blocker / "bridge.sqlite3")


# --- SourceEvent <-> JSON -------------------------------------------------------------------------

_text = st.text(max_size=30)
_maybe_text = st.none() | _text
_maybe_int = st.none() | st.integers(min_value=0, max_value=2**53)

EVENTS = st.builds(
    SourceEvent,
    provider=st.sampled_from(["github", "gitlab"]),
    kind=st.sampled_from(["push", "tag", "pull_request", "merge_request", "manual", "release", "rerun"]),
    event_name=_text,
    action=_maybe_text,
    repository=_text,
    clone_url=_text,
    sha=_text,
    ref=_maybe_text,
    server_url=_text,
    branch=_maybe_text,
    tag=_maybe_text,
    pr_number=_maybe_int,
    base_branch=_maybe_text,
    base_repository=_maybe_text,
    head_repository=_maybe_text,
    is_fork=st.booleans(),
    is_draft=st.booleans(),
    api_url=_maybe_text,
    installation_id=_maybe_int,
    project_id=_maybe_int,
    source_project_id=_maybe_int,
    pipeline_id=_maybe_int,
    sender=_maybe_text,
    check_run_id=_maybe_int,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_event_json_round_trips(source: SourceEvent) -> None:
    assert event_from_json(event_to_json(source)) == source


@settings(max_examples=50, deadline=None)
@given(EVENTS)
def test_event_json_holds_every_field_and_only_the_fields(source: SourceEvent) -> None:
    """event_to_json writes the instance's __dict__: a cached property or any attribute set on
    the side would land in the stored JSON, so SourceEvent must keep nothing but its fields."""
    _ = source.short_sha  # a property computed on use is fine: nothing of it is kept
    assert json.loads(event_to_json(source)) == dataclasses.asdict(source)
    assert list(vars(source)) == [field.name for field in dataclasses.fields(SourceEvent)]


def test_event_json_ignores_fields_from_a_newer_version() -> None:
    text = event_to_json(EVENT)[:-1] + ',"future_field":1}'
    assert event_from_json(text) == EVENT
    assert event_from_json(event_to_json(replace(EVENT, is_draft=True))).is_draft is True


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"provider": "github"}'])
def test_damaged_event_json_is_a_store_error(text: str) -> None:
    with pytest.raises(StoreError):
        event_from_json(text)


def test_concurrent_deliveries_share_one_write_and_each_gets_its_own_answer() -> None:
    """Group commit: rows queued while a write is in flight go out together in the next one."""
    import threading
    from collections.abc import Sequence
    from typing import Any

    from bridge.store import _GroupCommit

    group = _GroupCommit()
    release = threading.Event()
    batches: list[list[str]] = []

    def write(rows: Sequence[tuple[Any, ...]]) -> list[bool]:
        batches.append([row[0] for row in rows])
        if len(batches) == 1:
            release.wait(timeout=10)
        return [row[0] != "dup" for row in rows]

    answers: dict[str, bool] = {}

    def submit(name: str) -> None:
        answers[name] = group.submit((name,), write)

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    while not batches:
        threading.Event().wait(0.01)
    followers = [threading.Thread(target=submit, args=(name,)) for name in ("second", "dup")]
    for thread in followers:
        thread.start()
    while group.queued < 2:
        threading.Event().wait(0.01)
    release.set()
    for thread in (first, *followers):
        thread.join(timeout=10)

    assert batches[0] == ["first"]
    assert sorted(batches[1]) == ["dup", "second"]
    assert len(batches) == 2
    assert answers == {"first": True, "second": True, "dup": False}


def test_many_threads_each_get_their_own_answer_and_every_row_is_written_once() -> None:
    """Group commit under contention: the lead is handed from write to write; nobody waits forever."""
    import random
    from collections.abc import Sequence
    from typing import Any

    from bridge.store import _GroupCommit

    group = _GroupCommit()
    written: list[str] = []
    sizes: list[int] = []

    def write(rows: Sequence[tuple[Any, ...]]) -> list[bool]:
        sizes.append(len(rows))
        threading.Event().wait(random.random() / 1000)
        written.extend(row[0] for row in rows)
        return [not row[0].endswith("-0") for row in rows]

    answers: dict[str, bool] = {}

    def submit(thread: int) -> None:
        for number in range(40):
            name = f"t{thread}-{number}"
            answers[name] = group.submit((name,), write)

    threads = [threading.Thread(target=submit, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(answers) == 12 * 40
    assert sorted(written) == sorted(answers)
    assert answers == {name: not name.endswith("-0") for name in answers}
    assert max(sizes) > 1  # rows did share writes
    assert group.queued == 0


def _delivery_row(delivery_id: str) -> tuple[object, ...]:
    return delivery_row(delivery_id, "github", "push", "web", EVENT, now=1000.0)


def test_a_group_write_answers_each_row_new_known_or_repeated(store: Store) -> None:
    assert add(store, "known")
    batch = [_delivery_row(name) for name in ("new-1", "known", "twice", "twice", "new-2")]

    assert store._insert_deliveries(batch) == [True, False, True, False, True]

    pending = {p.delivery_id: p for p in store.claim_pending(limit=50)}
    assert sorted(pending) == ["known", "new-1", "new-2", "twice"]
    assert (pending["new-2"].event, pending["new-2"].route_name) == (EVENT, "web")


def test_a_group_write_is_two_statements_whatever_its_size(store: Store) -> None:
    """Every statement costs GIL hand-overs (sqlite3 lets go around each step): not one per row."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        store._insert_deliveries([_delivery_row(f"d-{number}") for number in range(6)])
    finally:
        store._conn.set_trace_callback(None)
    kinds = [statement.split()[0] for statement in statements]
    assert kinds == ["BEGIN", "SELECT", "INSERT", "COMMIT"]


def test_a_group_write_larger_than_one_statement_allows_answers_every_row(store: Store) -> None:
    # The oldest SQLite's limit, 999 parameters a statement (3.32 raised it to 32,766): 250 rows of
    # 7 values only fit sliced.
    store._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    for number in range(0, 250, 7):
        assert add(store, f"d-{number}")
    batch = [_delivery_row(f"d-{number}") for number in range(250)]

    added = store._insert_deliveries(batch)

    assert added == [number % 7 != 0 for number in range(250)]
    assert len(store.claim_pending(limit=1000)) == 250


def test_a_failed_group_write_fails_every_delivery_in_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite3")
    store.close()
    with pytest.raises(StoreError):
        store.add_delivery("d-1", "github", "push", "web", EVENT)


def test_release_claims_reoffers_a_delivery_claimed_by_a_dead_process(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite3")
    assert store.add_delivery("d-1", "github", "push", "web", EVENT)
    assert [p.delivery_id for p in store.claim_pending(lease_seconds=60)] == ["d-1"]
    assert store.claim_pending() == []  # leased: not offered twice while the claim holds

    assert store.release_claims() == 1

    assert [p.delivery_id for p in store.claim_pending()] == ["d-1"]
    store.close()


# --- build leases: the worker process and the server process share one file -----------------------


def _second(path: Path, clock: Clock) -> Store:
    """Another connection to the same file, as the other process has."""
    return Store(path, clock=clock)


def test_a_started_build_stays_with_its_starter_until_released(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.sqlite3"
    worker, server = Store(path, clock=clock), _second(path, clock)
    add(worker, "d-1")
    assert worker.mark_started("d-1", "proj:b1", lease_owner="worker", lease_seconds=30)
    # The starter posts the first status; an event handled meanwhile must not report first.
    assert server.lock_build("proj:b1", "server", lease_seconds=30) is None
    worker.release_build("proj:b1", "worker")
    locked = server.lock_build("proj:b1", "server", lease_seconds=30)
    assert locked is not None
    assert (locked.build_id, locked.event) == ("proj:b1", EVENT)
    worker.close()
    server.close()


def test_a_poll_claim_keeps_an_event_off_the_build_until_the_lease_ends(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.sqlite3"
    worker, server = Store(path, clock=clock), _second(path, clock)
    for index in range(3):
        add(worker, f"d-{index}")
        clock.now += 1
        worker.mark_started(f"d-{index}", f"proj:b{index}")
    worker.update_build("proj:b2", done=True)

    claimed = worker.claim_builds("worker", lease_seconds=5, poll_interval=15)
    assert [build.build_id for build in claimed] == ["proj:b0", "proj:b1"]  # active ones, oldest first
    assert server.lock_build("proj:b0", "server", lease_seconds=30) is None
    assert server.claim_builds("server", lease_seconds=5, poll_interval=15) == []
    # The holder claims again at once (one poller, no poll slots: its loop spaces the polls).
    assert len(worker.claim_builds("worker", lease_seconds=5, poll_interval=15)) == 2
    clock.now += 5
    assert server.lock_build("proj:b0", "server", lease_seconds=30) is not None
    worker.release_build("proj:b0", "worker")  # a late release by the old holder changes nothing
    assert worker.lock_build("proj:b0", "worker", lease_seconds=30) is None
    worker.close()
    server.close()


def test_one_of_two_processes_racing_for_a_build_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = Store(path)
    add(first, "d-1")
    first.mark_started("d-1", "proj:b1")
    stores = [first, *(Store(path) for _ in range(3))]
    barrier = threading.Barrier(len(stores))
    won: list[bool] = []

    def lock(index: int, store: Store) -> None:
        barrier.wait()
        won.append(store.lock_build("proj:b1", f"owner-{index}", lease_seconds=30) is not None)

    threads = [threading.Thread(target=lock, args=pair) for pair in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False, False, False, True]
    for store in stores:
        store.close()


def test_a_build_that_is_not_tracked_cannot_be_locked(store: Store) -> None:
    assert store.lock_build("proj:unknown", "worker", lease_seconds=30) is None


def test_release_claims_frees_the_builds_a_dead_worker_held(tmp_path: Path, clock: Clock) -> None:
    store = Store(tmp_path / "state.sqlite3", clock=clock)
    add(store, "d-1")
    store.mark_started("d-1", "proj:b1", lease_owner="dead", lease_seconds=60)
    assert store.lock_build("proj:b1", "next", lease_seconds=60) is None

    store.release_claims()

    assert store.lock_build("proj:b1", "next", lease_seconds=60) is not None
    store.close()


def test_a_state_file_from_before_build_leases_is_upgraded(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE builds (
            build_id TEXT PRIMARY KEY, delivery_id TEXT NOT NULL, provider TEXT NOT NULL,
            route_name TEXT NOT NULL, event_json TEXT NOT NULL, reporter_ref TEXT,
            last_build_status TEXT, last_reported_state TEXT, done INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL, lease_until REAL NOT NULL DEFAULT 0
        );
        PRAGMA user_version = 1;
        """
    )
    old.execute(
        "INSERT INTO builds (build_id, delivery_id, provider, route_name, event_json, updated_at)"
        " VALUES ('proj:b1', 'd-1', 'github', 'web', ?, 1.0)",
        (event_to_json(EVENT),),
    )
    old.commit()
    old.close()

    store = Store(path, clock=clock)

    (claimed,) = store.claim_builds("worker", lease_seconds=5, poll_interval=15)
    assert (claimed.build_id, claimed.event) == ("proj:b1", EVENT)
    assert store.lock_build("proj:b1", "server", lease_seconds=5) is None
    assert (claimed.status_json, claimed.created_at) == (None, None)  # columns of schema 3, empty
    store.update_build("proj:b1", status_json='{"state": "completed"}')
    assert store.get_builds(["proj:b1"])["proj:b1"].status_json == '{"state": "completed"}'
    store.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (3,)


def test_a_state_file_of_schema_2_gains_the_operator_columns(tmp_path: Path, clock: Clock) -> None:
    """A file written before the operator page (schema 2) opens, keeps its deliveries, and records
    an ignored delivery's repository from then on."""
    path = tmp_path / "state.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE deliveries (
            delivery_id TEXT PRIMARY KEY, provider TEXT NOT NULL, event_name TEXT NOT NULL,
            received_at REAL NOT NULL, route_name TEXT NOT NULL, event_json TEXT,
            state TEXT NOT NULL CHECK (state IN ('pending', 'started', 'failed', 'ignored')),
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, last_error TEXT,
            build_id TEXT
        );
        PRAGMA user_version = 2;
        """
    )
    old.execute(
        "INSERT INTO deliveries (delivery_id, provider, event_name, received_at, route_name, event_json,"
        " state, next_attempt_at) VALUES ('old', 'github', 'pull_request', 5.0, 'web', ?, 'pending', 5.0)",
        (event_to_json(EVENT),),
    )
    old.commit()
    old.close()

    store = Store(path, clock=clock)
    store.add_ignored("new", "github", "issues", "not a build event", repository="acme/web")

    assert [(row.delivery_id, row.repository, row.sha) for row in store.recent_deliveries()] == [
        ("new", "acme/web", None),
        ("old", "acme/web", SHA),
    ]
    store.close()


def test_an_exception_inside_a_write_rolls_it_back_and_frees_the_store(store: Store) -> None:
    add(store, "d-1")

    def fail_midway() -> None:
        with store._transaction() as conn:
            conn.execute("UPDATE deliveries SET state = 'failed' WHERE delivery_id = 'd-1'")
            raise RuntimeError("boom")  # not a sqlite3 error: it reaches the caller as it is

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    row = store.get_delivery("d-1")
    assert row is not None
    assert row.state == "pending"
    assert add(store, "d-2") is True  # the lock was released and no transaction is left open


def test_a_commit_that_fails_is_rolled_back_and_reported_as_a_store_error(store: Store) -> None:
    """COMMIT itself can fail (here a deferred foreign key); SQLite then keeps the transaction
    open, so the store must roll it back before anything else is written on the connection."""
    conn = store._conn
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )

    def orphan() -> None:
        with store._guard("testing a commit"), store._transaction() as written:
            written.execute("INSERT INTO child VALUES (1)")  # accepted now, refused at COMMIT

    with pytest.raises(StoreError, match="testing a commit failed: FOREIGN KEY") as caught:
        orphan()
    assert caught.value.http_status == 503
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM child").fetchone() == (0,)
    assert add(store, "d-1") is True


def test_a_transaction_that_cannot_begin_leaves_the_lock_free(store: Store, tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "state" / "bridge.sqlite3", timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        store._conn.execute("PRAGMA busy_timeout = 0")
        with pytest.raises(sqlite3.OperationalError, match="locked"), store._transaction():
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store._lock.acquire(blocking=False)
    store._lock.release()
    assert add(store, "d-1") is True
