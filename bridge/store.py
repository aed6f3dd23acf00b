"""Deliveries and tracked builds, in one SQLite file.

The webhook answers only after its delivery is committed here, so what GitHub or GitLab was told
"accepted" survives a crash: WAL journal with synchronous=FULL syncs every commit to disk. The
delivery id is the primary key, which makes dedupe a property of the insert, not a check-then-act
race. The worker claims deliveries with a lease instead of a lock: if it dies between claiming and
recording the started build, the delivery is offered again once the lease runs out, and the
idempotency token derived from the delivery id keeps CodeBuild from starting a second build.

One connection guarded by a lock serves every thread of a process; SQLite's own file locking (with
a busy timeout) orders writes between processes. Every write is one `BEGIN IMMEDIATE` transaction.

`StateStore` is what the app and the worker need from any store; `SqliteStore` is the embedded
default and `bridge.store_dynamodb.DynamoStore` the one several replicas share. Build leases
(`claim_builds`, `lock_build`, `release_build`) are real in both: `bridge serve` runs the worker in
a process of its own, and a CodeBuild event or a stop request answered by the server process must
not report on a build while the worker's poll is reporting on it. SQLite has exactly one poller
(that worker), so its `claim_builds` leases every active build, without DynamoDB's poll slots.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, TypeVar, cast, get_args

from bridge import jsonfast
from bridge.errors import BridgeError
from bridge.model import SourceEvent

__all__ = [
    "DeliveryRow",
    "DeliveryState",
    "PendingDelivery",
    "SqliteStore",
    "StateStore",
    "Store",
    "StoreError",
    "TrackedBuild",
    "event_from_json",
    "event_to_json",
]

DeliveryState = Literal["pending", "started", "failed", "ignored"]

# How long one store call waits for a lock (this process's, or another process's on the file):
# the webhook sender is waiting behind it (GitHub gives up after 10 s), and a delivery may wait for
# the write in flight before its own, so two waits must fit well inside that.
_BUSY_TIMEOUT_SECONDS: Final = 2.0
_SCHEMA_VERSION: Final = 3
# Columns added after version 1, for state files written by an older bridge: (table, column, type).
# Version 3: what the operator page shows (an ignored delivery's repository and commit, the
# StartBuild request a delivery made, the status a build's commit got and when the build began).
_ADDED_COLUMNS: Final = (
    ("builds", "lease_owner", "TEXT"),
    ("deliveries", "repository", "TEXT"),
    ("deliveries", "sha", "TEXT"),
    ("deliveries", "request_json", "TEXT"),
    ("deliveries", "grant_json", "TEXT"),
    ("builds", "status_json", "TEXT"),
    ("builds", "created_at", "REAL"),
    ("deliveries", "reporter_ref", "TEXT"),
)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    event_name TEXT NOT NULL,
    received_at REAL NOT NULL,
    route_name TEXT NOT NULL,
    event_json TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'started', 'failed', 'ignored')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    build_id TEXT,
    repository TEXT,
    sha TEXT,
    request_json TEXT,
    grant_json TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_received ON deliveries (received_at);
CREATE TABLE IF NOT EXISTS builds (
    build_id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    route_name TEXT NOT NULL,
    event_json TEXT NOT NULL,
    reporter_ref TEXT,
    last_build_status TEXT,
    last_reported_state TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    status_json TEXT,
    created_at REAL
);
CREATE INDEX IF NOT EXISTS builds_active ON builds (done);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), written_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (
    provider TEXT NOT NULL,
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    sha TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at REAL NOT NULL,
    PRIMARY KEY (provider, repository, number)
);
"""


_BUILD_COLUMNS: Final = (
    "build_id, delivery_id, provider, route_name, event_json, reporter_ref, last_build_status,"
    " last_reported_state, done, updated_at, status_json, created_at"
)
_DELIVERY_COLUMNS: Final = (
    "delivery_id, provider, event_name, received_at, route_name, event_json, state, attempts,"
    " next_attempt_at, last_error, build_id, repository, sha, request_json, grant_json"
)
_SELECT_BUILDS: Final = f"SELECT {_BUILD_COLUMNS} FROM builds"  # noqa: S608  (constants only)


class StoreError(BridgeError):
    """The state file cannot be read or written (disk full, locked too long, unreadable)."""

    http_status = 503
    default_hint = "check the disk and permissions of server.state_path; the sender will retry"


@dataclass(frozen=True)
class PendingDelivery:
    """A delivery the worker must start a build for (attempts already counts this claim)."""

    delivery_id: str
    provider: str
    event_name: str
    route_name: str
    event: SourceEvent
    attempts: int
    received_at: float
    last_error: str | None = None  # why the previous attempt failed (None: the first attempt)
    reporter_ref: str | None = None  # the "waiting for CodeBuild" status posted meanwhile, to update


@dataclass(frozen=True)
class DeliveryRow:
    delivery_id: str
    provider: str
    event_name: str
    received_at: float
    route_name: str
    event: SourceEvent | None  # None only for ignored deliveries
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None  # why it failed, or (ignored) why it was not built
    build_id: str | None
    repository: str | None = None  # also for ignored deliveries, when the payload named one
    sha: str | None = None
    request_json: str | None = None  # the StartBuild request it made (JSON), once started
    grant_json: str | None = None  # what its build was granted and what was dropped (JSON), once started

    @property
    def outcome(self) -> str:
        """What became of it, in the operator's words: the state, or "retrying" while a start fails."""
        if self.state == "pending" and self.last_error:
            return "retrying"
        return self.state


@dataclass(frozen=True)
class TrackedBuild:
    build_id: str
    delivery_id: str
    provider: str
    route_name: str
    event: SourceEvent
    reporter_ref: str | None  # what the reporter needs to update its status (JSON text it owns)
    last_build_status: str | None
    last_reported_state: str | None
    done: bool
    updated_at: float
    status_json: str | None = None  # the status its commit got last (bridge.core.activity reads it)
    created_at: float | None = None  # when it was started (None in rows older than schema 3)


_INSERT_DELIVERIES: Final = (
    "INSERT INTO deliveries (delivery_id, provider, event_name, received_at, route_name, event_json, state,"
    " attempts, next_attempt_at) VALUES "
)
_DELIVERY_ROW: Final = "(?, ?, ?, ?, ?, ?, 'pending', 0, ?)"
# Rows (or ids) per statement: 7 parameters a row stays under 999, the oldest SQLite's limit.
_ROWS_PER_STATEMENT: Final = 100

_T = TypeVar("_T")


def delivery_row(
    delivery_id: str, provider: str, event_name: str, route_name: str, event: SourceEvent, *, now: float
) -> tuple[Any, ...]:
    """A pending delivery's values in `_DELIVERY_ROW`'s order (received and due now)."""
    return (delivery_id, provider, event_name, now, route_name, event_to_json(event), now)


def _slices(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), _ROWS_PER_STATEMENT):
        yield items[start : start + _ROWS_PER_STATEMENT]


# --- SourceEvent <-> JSON ---------------------------------------------------------------------------

_EVENT_FIELDS: Final = {f.name: f for f in dataclasses.fields(SourceEvent)}
_EVENT_ENCODER: Final = jsonfast.Encoder(sort_keys=True)


def event_to_json(event: SourceEvent) -> str:
    # SourceEvent's fields are all flat values and all it keeps in its __dict__, so that dict is
    # what asdict() returns, minus its deep recursion (a fifth of a millisecond on every acked
    # delivery) and minus a Python-level copy of some twenty fields (a fortieth of the ack's work).
    return _EVENT_ENCODER.encode(vars(event))


def event_from_json(text: str) -> SourceEvent:
    """Unknown keys are dropped so a file written by a newer version still loads."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"a stored event is not valid JSON: {exc}", hint="the state file is damaged"
        ) from None
    if not isinstance(data, dict):
        raise StoreError("a stored event is not a JSON object", hint="the state file is damaged")
    try:
        return SourceEvent(**{key: value for key, value in data.items() if key in _EVENT_FIELDS})
    except TypeError as exc:
        raise StoreError(f"a stored event lacks a field: {exc}", hint="the state file is damaged") from None


# --- what every store offers --------------------------------------------------------------------------


class StateStore(Protocol):
    """Deliveries (deduped by id) and the builds started for them, shared by the app and the worker."""

    def add_delivery(
        self, delivery_id: str, provider: str, event_name: str, route_name: str, event: SourceEvent
    ) -> bool: ...

    def add_ignored(
        self,
        delivery_id: str,
        provider: str,
        event_name: str,
        reason: str,
        *,
        repository: str | None = None,
        sha: str | None = None,
    ) -> bool: ...

    def release_claims(self) -> int:
        """At start-up: make the claims of a process that died due now; how many were released."""
        ...

    def claim_pending(self, limit: int = 10, *, lease_seconds: float = 60) -> list[PendingDelivery]: ...

    def claim_overdue(
        self, limit: int, *, lease_seconds: float, overdue_seconds: float
    ) -> list[PendingDelivery]:
        """Like `claim_pending`, for deliveries due at least `overdue_seconds` ago: the ones a queue
        message should have brought to a worker by now (its enqueue failed after the row was stored)."""
        ...

    def claim_delivery(self, delivery_id: str, *, lease_seconds: float = 60) -> PendingDelivery | None:
        """This one delivery, leased, if it is pending and due; None when it is done or leased elsewhere."""
        ...

    def mark_started(
        self,
        delivery_id: str,
        build_id: str,
        reporter_ref: str | None = None,
        *,
        lease_owner: str | None = None,
        lease_seconds: float = 60,
        request_json: str | None = None,
        grant_json: str | None = None,
    ) -> bool:
        """True when this call recorded the build (False: it was already recorded, report nothing)."""
        ...

    def mark_retry(
        self, delivery_id: str, error: str, delay_seconds: float, *, reporter_ref: str | None = None
    ) -> None: ...

    def restart_delivery(self, delivery_id: str) -> bool:
        """A delivery whose start failed is due again now; False when there is none to restart."""
        ...

    def mark_failed(self, delivery_id: str, error: str, *, reporter_ref: str | None = None) -> None: ...

    def mark_ignored(self, delivery_id: str, reason: str) -> None:
        """An accepted delivery that turned out to build nothing (a fork waiting for approval)."""
        ...

    def get_delivery(self, delivery_id: str) -> DeliveryRow | None: ...

    def recent_deliveries(
        self, limit: int = 50, *, repository: str | None = None, sha: str | None = None
    ) -> list[DeliveryRow]:
        """Newest first; `sha` matches a commit or a prefix of one (what the operator page shows)."""
        ...

    def get_builds(self, build_ids: Sequence[str]) -> dict[str, TrackedBuild]:
        """The tracked builds among `build_ids`, by id (unknown ids are left out)."""
        ...

    def active_builds(self) -> list[TrackedBuild]: ...

    def get_build(self, build_id: str) -> TrackedBuild | None: ...

    def latest_build_of(self, provider: str, repository: str, sha: str) -> TrackedBuild | None: ...

    def update_build(
        self,
        build_id: str,
        *,
        last_build_status: str | None = None,
        last_reported_state: str | None = None,
        reporter_ref: str | None = None,
        done: bool | None = None,
        status_json: str | None = None,
    ) -> None: ...

    def claim_builds(self, owner: str, *, lease_seconds: float, poll_interval: float) -> list[TrackedBuild]:
        """Active builds due for a poll, leased to `owner`: the fleet polls each once per interval."""
        ...

    def lock_build(self, build_id: str, owner: str, *, lease_seconds: float) -> TrackedBuild | None:
        """The right to report on one build now; None while another replica holds it."""
        ...

    def release_build(self, build_id: str, owner: str) -> None: ...

    def record_approval(self, provider: str, repository: str, number: int, sha: str, by: str) -> None:
        """A maintainer approved head `sha` of change `number` (a fork PR/MR); replaces an older one."""
        ...

    def approved_sha(self, provider: str, repository: str, number: int) -> str | None:
        """The head SHA last approved for change `number`, or None: what core.trust compares."""
        ...

    def counts(self) -> dict[str, int]: ...

    def writable(self) -> bool: ...

    def close(self) -> None: ...


# --- the SQLite store ---------------------------------------------------------------------------------


def _locked() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class _GroupCommit:
    """Leader/follower batching: whoever finds no write in flight writes everyone's rows at once.

    Each caller queues its row and waits; a caller that finds no write in flight becomes the leader,
    takes every queued row, writes them in one transaction and wakes the others with their own
    results (or the shared error). Then it hands the lead to the first row queued meanwhile, if
    any. Each waiter sleeps on a lock of its own, so a write wakes exactly the callers it answered
    and the next leader: a shared condition woke every waiter on every write, and the callers that
    were not in it went back to sleep, each a context switch and a GIL hand-over for nothing.
    No thread of its own, so nothing to start or stop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[_Queued] = []
        self._writing = False

    @property
    def queued(self) -> int:
        """Rows waiting for the next write (for tests and metrics)."""
        with self._lock:
            return len(self._queued)

    def submit(
        self, params: tuple[Any, ...], write: Callable[[Sequence[tuple[Any, ...]]], list[bool]]
    ) -> bool:
        mine = _Queued(params)
        with self._lock:
            self._queued.append(mine)
            leading = not self._writing
            self._writing = True
        if not leading:
            mine.turn.acquire()  # released when a write answered this row, or when it is this row's lead
            if mine.done:
                return mine.result()
        with self._lock:
            batch, self._queued = self._queued, []
        try:
            results = write([queued.params for queued in batch])
            for queued, added in zip(batch, results, strict=True):
                queued.added = added
        except BaseException as exc:
            for queued in batch:
                queued.error = exc
        finally:
            for queued in batch:
                queued.done = True
            with self._lock:
                successor = self._queued[0] if self._queued else None
                self._writing = successor is not None
            for queued in batch:
                if queued is not mine:
                    queued.turn.release()
            if successor is not None:
                successor.turn.release()
        return mine.result()


@dataclass
class _Queued:
    params: tuple[Any, ...]
    added: bool = False
    error: BaseException | None = None
    done: bool = False
    turn: threading.Lock = dataclasses.field(default_factory=_locked)

    def result(self) -> bool:
        if self.error is not None:
            raise self.error
        return self.added


# The two context managers around every write are classes, not @contextmanager generators: a
# generator-based one costs several times as much to enter and leave, and every acked delivery
# goes through both.


class _Transaction:
    """BEGIN IMMEDIATE under the store's lock; commit on success, roll back on any exception.

    `commit()` rather than executing COMMIT: the module runs it in one stretch without the GIL,
    where a statement lets go and takes it back around each of its steps (a hand-over each, with
    eight request threads waiting), and COMMIT is the fsync.
    """

    __slots__ = ("_conn", "_lock", "_wait")

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock, wait: float) -> None:
        self._conn = conn
        self._lock = lock
        self._wait = wait

    def __enter__(self) -> sqlite3.Connection:
        _acquire(self._lock, self._wait)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if kind is not None:
                self._roll_back()
                return
            try:
                self._conn.commit()
            except BaseException:
                self._roll_back()
                raise
        finally:
            self._lock.release()

    def _roll_back(self) -> None:
        if self._conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
            self._conn.execute("ROLLBACK")


def _acquire(lock: threading.Lock, wait: float) -> None:
    """The store's lock, or StoreError once `wait` has passed: a call never waits without a deadline."""
    if not lock.acquire(timeout=wait):
        raise StoreError(
            f"the state store is busy: no turn within {wait:g} s",
            hint="another request or process holds the state file; the sender will retry",
        )


class _Guard:
    """A sqlite3 error inside becomes a StoreError that names what the store was doing."""

    __slots__ = ("_action",)

    def __init__(self, action: str) -> None:
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if isinstance(error, sqlite3.Error):
            if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                raise StoreError(
                    f"the state store is busy: {self._action} waited too long for the state file's lock",
                    hint="another process holds server.state_path; the sender will retry",
                ) from None
            raise StoreError(f"state store: {self._action} failed: {error}") from None


class SqliteStore:
    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = _BUSY_TIMEOUT_SECONDS,
    ) -> None:
        """`busy_timeout`: how long a write waits for another process's lock before StoreError."""
        self._clock = clock
        self._lock = threading.Lock()
        self._wait = busy_timeout
        self._batch = _GroupCommit()
        self._path = str(path)
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly with BEGIN IMMEDIATE.
            self._conn = sqlite3.connect(
                self._path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._transaction() as conn:
                # Not executescript(): it would COMMIT behind the transaction's back.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                for table, column, kind in _ADDED_COLUMNS:
                    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in present:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the state file {self._path}: {exc}") from None

    def _transaction(self) -> _Transaction:
        """One write transaction; the write lock is taken up front so it cannot deadlock on upgrade."""
        return _Transaction(self._conn, self._lock, self._wait)

    def _guard(self, action: str) -> _Guard:
        return _Guard(action)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        _acquire(self._lock, self._wait)
        try:
            return self._conn.execute(sql, params).fetchall()
        finally:
            self._lock.release()

    # --- deliveries -----------------------------------------------------------------------------

    def add_delivery(
        self, delivery_id: str, provider: str, event_name: str, route_name: str, event: SourceEvent
    ) -> bool:
        """Persist an accepted delivery. False: this id was seen before, so it must not build again.

        Returns only once the row is committed (synchronous=FULL), so a 202 always means "on disk".
        Concurrent calls share one transaction and one fsync (group commit): the durable write per
        delivery was what bounded the ack throughput.
        """
        row = delivery_row(delivery_id, provider, event_name, route_name, event, now=self._clock())
        return self._batch.submit(row, self._insert_deliveries)

    def _insert_deliveries(self, batch: Sequence[tuple[Any, ...]]) -> list[bool]:
        """One transaction for the batch, and two statements in it whatever its size.

        The sqlite3 module lets go of the GIL around every step of every statement, and with eight
        request threads each let-go is a hand-over and a wait to get it back: one INSERT per row
        made that cost grow with the batch. The ids already stored are read first (the write lock
        is held, so the answer holds until COMMIT), then the new rows go in one INSERT; an id twice
        in one batch is added once, as the second INSERT of it used to be refused.
        """
        with self._guard("recording a delivery"), self._transaction() as conn:
            known: set[str] = set()
            for ids in _slices([params[0] for params in batch]):
                marks = ", ".join("?" * len(ids))
                sql = f"SELECT delivery_id FROM deliveries WHERE delivery_id IN ({marks})"  # noqa: S608
                known.update(row[0] for row in conn.execute(sql, ids))
            added: list[bool] = []
            rows: list[tuple[Any, ...]] = []
            for params in batch:
                new = params[0] not in known
                added.append(new)
                if new:
                    known.add(params[0])
                    rows.append(params)
            for chunk in _slices(rows):
                conn.execute(
                    _INSERT_DELIVERIES + ", ".join([_DELIVERY_ROW] * len(chunk)),
                    [value for params in chunk for value in params],
                )
            return added

    def add_ignored(
        self,
        delivery_id: str,
        provider: str,
        event_name: str,
        reason: str,
        *,
        repository: str | None = None,
        sha: str | None = None,
    ) -> bool:
        """Remember a delivery that asked for no build, and why: a redelivery is recognised and
        answered alike, and the operator page can say what became of it."""
        now = self._clock()
        with self._guard("recording a delivery"), self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO deliveries (delivery_id, provider, event_name, received_at, route_name,"
                " event_json, state, attempts, next_attempt_at, last_error, repository, sha)"
                " VALUES (?, ?, ?, ?, '', NULL, 'ignored', 0, ?, ?, ?, ?)"
                " ON CONFLICT (delivery_id) DO NOTHING",
                (delivery_id, provider, event_name, now, now, reason, repository, sha),
            )
            return cursor.rowcount == 1

    def release_claims(self) -> int:
        """At start-up: pending deliveries are due now, whatever lease or retry delay they had.

        One worker process owns a SQLite file, and it calls this before the server process takes
        requests, so a claim held at start-up belongs to a process that died (SIGKILL between
        StartBuild and mark_started). Re-offering it at once is safe: the
        idempotencyToken derived from the delivery id makes the repeated StartBuild return the same
        build within CodeBuild's 5-minute window, instead of waiting out a 60-second lease.
        """
        now = self._clock()
        with self._guard("releasing claims"), self._transaction() as conn:
            # Build leases too: a build the dead worker started holds its lease until its first
            # status is out, and that status is now this worker's to post, not in a minute.
            conn.execute("UPDATE builds SET lease_until = 0 WHERE done = 0 AND lease_until > ?", (now,))
            return conn.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
                (now, now),
            ).rowcount

    def claim_pending(self, limit: int = 10, *, lease_seconds: float = 60) -> list[PendingDelivery]:
        """Due pending deliveries, each leased for `lease_seconds` so no other worker takes it meanwhile."""
        return self._claim(limit, lease_seconds, overdue_seconds=0.0)

    def claim_overdue(
        self, limit: int, *, lease_seconds: float, overdue_seconds: float
    ) -> list[PendingDelivery]:
        return self._claim(limit, lease_seconds, overdue_seconds=overdue_seconds)

    def _claim(self, limit: int, lease_seconds: float, *, overdue_seconds: float) -> list[PendingDelivery]:
        now = self._clock()
        with self._guard("claiming deliveries"), self._transaction() as conn:
            rows = conn.execute(
                "SELECT delivery_id, provider, event_name, route_name, event_json, attempts, received_at,"
                " last_error, reporter_ref"
                " FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, received_at LIMIT ?",
                (now - overdue_seconds, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ? WHERE delivery_id = ?",
                [(now + lease_seconds, row[0]) for row in rows],
            )
        return [
            PendingDelivery(
                delivery_id=row[0],
                provider=row[1],
                event_name=row[2],
                route_name=row[3],
                event=event_from_json(row[4]),
                attempts=row[5] + 1,
                received_at=row[6],
                last_error=row[7],
                reporter_ref=row[8],
            )
            for row in rows
        ]

    def claim_delivery(self, delivery_id: str, *, lease_seconds: float = 60) -> PendingDelivery | None:
        now = self._clock()
        with self._guard("claiming a delivery"), self._transaction() as conn:
            row = conn.execute(
                "SELECT delivery_id, provider, event_name, route_name, event_json, attempts, received_at,"
                " last_error, reporter_ref"
                " FROM deliveries WHERE delivery_id = ? AND state = 'pending' AND next_attempt_at <= ?",
                (delivery_id, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ? WHERE delivery_id = ?",
                (now + lease_seconds, delivery_id),
            )
        return PendingDelivery(
            delivery_id=row[0],
            provider=row[1],
            event_name=row[2],
            route_name=row[3],
            event=event_from_json(row[4]),
            attempts=row[5] + 1,
            received_at=row[6],
            last_error=row[7],
            reporter_ref=row[8],
        )

    def mark_started(
        self,
        delivery_id: str,
        build_id: str,
        reporter_ref: str | None = None,
        *,
        lease_owner: str | None = None,
        lease_seconds: float = 60,
        request_json: str | None = None,
        grant_json: str | None = None,
    ) -> bool:
        """The delivery is done and its build is tracked: both, or (on any error) neither.

        The new build row is leased to `lease_owner`, so nobody else reports on it before its
        starter posted the first status.
        """
        now = self._clock()
        with self._guard("recording a started build"), self._transaction() as conn:
            row = conn.execute(
                "SELECT provider, route_name, event_json, reporter_ref FROM deliveries WHERE delivery_id = ?",
                (delivery_id,),
            ).fetchone()
            if row is None or row[2] is None:
                raise StoreError(
                    f"no pending delivery {delivery_id} to mark started", hint="add_delivery must come first"
                )
            conn.execute(
                "UPDATE deliveries SET state = 'started', build_id = ?, last_error = NULL,"
                " request_json = COALESCE(?, request_json), grant_json = COALESCE(?, grant_json)"
                " WHERE delivery_id = ?",
                (build_id, request_json, grant_json, delivery_id),
            )
            cursor = conn.execute(
                "INSERT INTO builds (build_id, delivery_id, provider, route_name, event_json, reporter_ref,"
                " done, updated_at, lease_owner, lease_until, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) ON CONFLICT (build_id) DO NOTHING",
                (
                    build_id,
                    delivery_id,
                    row[0],
                    row[1],
                    row[2],
                    reporter_ref if reporter_ref is not None else row[3],  # the waiting status, if any
                    now,
                    lease_owner,
                    now + lease_seconds if lease_owner is not None else 0,
                    now,
                ),
            )
            return cursor.rowcount == 1

    def mark_retry(
        self, delivery_id: str, error: str, delay_seconds: float, *, reporter_ref: str | None = None
    ) -> None:
        """Due again in `delay_seconds`; `reporter_ref`: the waiting status posted, which the build's
        own statuses will update (None keeps the one recorded)."""
        now = self._clock()
        with self._guard("scheduling a retry"), self._transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, last_error = ?,"
                " reporter_ref = COALESCE(?, reporter_ref) WHERE delivery_id = ? AND state = 'pending'",
                (now + delay_seconds, error, reporter_ref, delivery_id),
            )

    def restart_delivery(self, delivery_id: str) -> bool:
        """A delivery whose start failed (for good, or so far) is due again now: a redelivery, a
        re-run or `bridge redeliver` asked for it. False: unknown, ignored, or already started."""
        now = self._clock()
        with self._guard("restarting a delivery"), self._transaction() as conn:
            return (
                conn.execute(
                    "UPDATE deliveries SET state = 'pending', next_attempt_at = ? WHERE delivery_id = ?"
                    " AND (state = 'failed' OR (state = 'pending' AND last_error IS NOT NULL))",
                    (now, delivery_id),
                ).rowcount
                == 1
            )

    def mark_failed(self, delivery_id: str, error: str, *, reporter_ref: str | None = None) -> None:
        with self._guard("recording a failure"), self._transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET state = 'failed', last_error = ?,"
                " reporter_ref = COALESCE(?, reporter_ref) WHERE delivery_id = ?",
                (error, reporter_ref, delivery_id),
            )

    def mark_ignored(self, delivery_id: str, reason: str) -> None:
        with self._guard("recording an outcome"), self._transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET state = 'ignored', last_error = ? WHERE delivery_id = ?",
                (reason, delivery_id),
            )

    def get_delivery(self, delivery_id: str) -> DeliveryRow | None:
        with self._guard("reading a delivery"):
            rows = self._read(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = ?",  # noqa: S608 (constants)
                (delivery_id,),
            )
        return self._delivery(rows[0]) if rows else None

    def recent_deliveries(
        self, limit: int = 50, *, repository: str | None = None, sha: str | None = None
    ) -> list[DeliveryRow]:
        """Newest first. An accepted delivery's repository and commit are those of its event; an
        ignored one's, what its payload named (its own columns)."""
        where: list[str] = []
        params: list[Any] = []
        if repository:
            where.append("COALESCE(repository, json_extract(event_json, '$.repository')) = ?")
            params.append(repository)
        if sha:
            # A prefix, as git abbreviates commits; LIKE's wildcards in the input are matched literally.
            escaped = sha.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
            where.append("lower(COALESCE(sha, json_extract(event_json, '$.sha'))) LIKE ? ESCAPE '!'")
            params.append(escaped + "%")
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries"  # noqa: S608 (constants and placeholders)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at DESC LIMIT ?"
        with self._guard("listing deliveries"):
            rows = self._read(sql, (*params, limit))
        return [self._delivery(row) for row in rows]

    @staticmethod
    def _delivery(row: tuple[Any, ...]) -> DeliveryRow:
        event = event_from_json(row[5]) if row[5] is not None else None
        return DeliveryRow(
            delivery_id=row[0],
            provider=row[1],
            event_name=row[2],
            received_at=row[3],
            route_name=row[4],
            event=event,
            state=cast(DeliveryState, row[6]),
            attempts=row[7],
            next_attempt_at=row[8],
            last_error=row[9],
            build_id=row[10],
            repository=row[11] or (event.repository if event is not None else None),
            sha=row[12] or (event.sha if event is not None else None),
            request_json=row[13],
            grant_json=row[14],
        )

    # --- builds ---------------------------------------------------------------------------------

    @staticmethod
    def _build(row: tuple[Any, ...]) -> TrackedBuild:
        return TrackedBuild(
            build_id=row[0],
            delivery_id=row[1],
            provider=row[2],
            route_name=row[3],
            event=event_from_json(row[4]),
            reporter_ref=row[5],
            last_build_status=row[6],
            last_reported_state=row[7],
            done=bool(row[8]),
            updated_at=row[9],
            status_json=row[10],
            created_at=row[11],
        )

    def get_builds(self, build_ids: Sequence[str]) -> dict[str, TrackedBuild]:
        found: dict[str, TrackedBuild] = {}
        for ids in _slices(list(dict.fromkeys(build_ids))):
            marks = ", ".join("?" * len(ids))
            with self._guard("reading builds"):
                rows = self._read(_SELECT_BUILDS + f" WHERE build_id IN ({marks})", tuple(ids))
            found.update((row[0], self._build(row)) for row in rows)
        return found

    def active_builds(self) -> list[TrackedBuild]:
        with self._guard("listing builds"):
            rows = self._read(_SELECT_BUILDS + " WHERE done = 0 ORDER BY updated_at")
        return [self._build(row) for row in rows]

    def get_build(self, build_id: str) -> TrackedBuild | None:
        with self._guard("reading a build"):
            rows = self._read(_SELECT_BUILDS + " WHERE build_id = ?", (build_id,))
        return self._build(rows[0]) if rows else None

    def latest_build_of(self, provider: str, repository: str, sha: str) -> TrackedBuild | None:
        """The most recent build of one commit: what a re-run inherits (fork status, clone URL, route)."""
        with self._guard("reading a build"):
            rows = self._read(
                _SELECT_BUILDS + " WHERE provider = ? AND json_extract(event_json, '$.repository') = ?"
                " AND json_extract(event_json, '$.sha') = ? ORDER BY updated_at DESC LIMIT 1",
                (provider, repository, sha),
            )
        return self._build(rows[0]) if rows else None

    def update_build(
        self,
        build_id: str,
        *,
        last_build_status: str | None = None,
        last_reported_state: str | None = None,
        reporter_ref: str | None = None,
        done: bool | None = None,
        status_json: str | None = None,
    ) -> None:
        """Set only the fields given; None leaves a field as it is."""
        with self._guard("updating a build"), self._transaction() as conn:
            conn.execute(
                "UPDATE builds SET last_build_status = COALESCE(?, last_build_status),"
                " last_reported_state = COALESCE(?, last_reported_state),"
                " reporter_ref = COALESCE(?, reporter_ref), done = COALESCE(?, done),"
                " status_json = COALESCE(?, status_json), updated_at = ?"
                " WHERE build_id = ?",
                (
                    last_build_status,
                    last_reported_state,
                    reporter_ref,
                    None if done is None else int(done),
                    status_json,
                    self._clock(),
                    build_id,
                ),
            )

    # --- leases ---------------------------------------------------------------------------------------

    def claim_builds(self, owner: str, *, lease_seconds: float, poll_interval: float) -> list[TrackedBuild]:
        """Every running build whose lease is free (or already ours), leased to `owner`.

        One worker polls a SQLite file, and its loop already spaces the polls: `poll_interval` (the
        shared store's slot) is not needed here. The lease keeps the server process's event and
        stop handlers off a build while this poll may be reporting on it.
        """
        rows = self._lease("claiming builds", "done = 0", (), owner, lease_seconds)
        return sorted((self._build(row) for row in rows), key=lambda build: build.updated_at)

    def lock_build(self, build_id: str, owner: str, *, lease_seconds: float) -> TrackedBuild | None:
        """The build, leased to `owner`; None when another holds its lease or it is not tracked."""
        rows = self._lease("leasing a build", "build_id = ?", (build_id,), owner, lease_seconds)
        return self._build(rows[0]) if rows else None

    def _lease(
        self, action: str, where: str, params: tuple[Any, ...], owner: str, lease_seconds: float
    ) -> list[tuple[Any, ...]]:
        """Lease to `owner` the builds matching `where` whose lease is free or already theirs: one
        conditional UPDATE, so of two processes taking the same build at once exactly one gets it."""
        now = self._clock()
        with self._guard(action), self._transaction() as conn:
            return conn.execute(
                "UPDATE builds SET lease_owner = ?, lease_until = ?"  # noqa: S608  (constants only)
                f" WHERE {where} AND (lease_until <= ? OR lease_owner = ?) RETURNING {_BUILD_COLUMNS}",
                (owner, now + lease_seconds, *params, now, owner),
            ).fetchall()

    def release_build(self, build_id: str, owner: str) -> None:
        """Give the lease back early; only its holder can (a lease taken over meanwhile is not ours)."""
        with self._guard("releasing a build"), self._transaction() as conn:
            conn.execute(
                "UPDATE builds SET lease_until = 0 WHERE build_id = ? AND lease_owner = ?", (build_id, owner)
            )

    # --- health -----------------------------------------------------------------------------------

    # --- approvals ------------------------------------------------------------------------------

    def record_approval(self, provider: str, repository: str, number: int, sha: str, by: str) -> None:
        with self._guard("recording an approval"), self._transaction() as conn:
            conn.execute(
                "INSERT INTO approvals (provider, repository, number, sha, approved_by, approved_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, repository, number) DO UPDATE SET"
                " sha = excluded.sha, approved_by = excluded.approved_by, approved_at = excluded.approved_at",
                (provider, repository.lower(), number, sha, by, self._clock()),
            )

    def approved_sha(self, provider: str, repository: str, number: int) -> str | None:
        with self._guard("reading an approval"):
            rows = self._read(
                "SELECT sha FROM approvals WHERE provider = ? AND repository = ? AND number = ?",
                (provider, repository.lower(), number),
            )
        return str(rows[0][0]) if rows else None

    def counts(self) -> dict[str, int]:
        """Deliveries by state and builds by activity, every key present even when zero."""
        result = {f"deliveries_{state}": 0 for state in get_args(DeliveryState)}
        result |= {"builds_active": 0, "builds_done": 0}
        with self._guard("counting"):
            for state, count in self._read("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
                result[f"deliveries_{state}"] = count
            for done, count in self._read("SELECT done, COUNT(*) FROM builds GROUP BY done"):
                result["builds_done" if done else "builds_active"] = count
        return result

    def writable(self) -> bool:
        """A real committed write: a full disk or a read-only file fails it, unlike a SELECT."""
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO probe (id, written_at) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at",
                    (self._clock(),),
                )
        except (sqlite3.Error, StoreError):
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()


Store = SqliteStore  # the name existing callers construct: `Store(path)` is the embedded default
