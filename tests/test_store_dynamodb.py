"""The DynamoDB store against moto in server mode: the same contract as SQLite (shared tests run on
both), plus what several replicas need: dedupe across stores, one claimant per delivery, an atomic
start that a slower replica loses, build leases that expire, TTL, and the table the stack declares.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3
import pytest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

from bridge.model import SourceEvent
from bridge.store import SqliteStore, StateStore, Store, StoreError
from bridge.store_dynamodb import TABLE_DEFINITION, TTL_ATTRIBUTE, DynamoStore, create_table
from tests.stack import template

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

REGION = "eu-west-1"
SHA = "0123456789abcdef0123456789abcdef01234567"
EVENT = SourceEvent(
    provider="github",
    kind="push",
    event_name="push",
    action=None,
    repository="acme/web",
    clone_url="https://github.com/acme/web.git",
    sha=SHA,
    ref="refs/heads/main",
    server_url="https://github.com",
    branch="main",
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class AtomicDynamoDB:
    """moto's WSGI app with DynamoDB requests applied one at a time, on the session's moto state.

    DynamoDB applies a conditional write atomically; moto's threaded server does not (two concurrent
    conditional updates of one item can both pass), which would make every race test here flaky.
    Other services (SQS long polls) stay concurrent. It serves the same in-process moto backends as
    the `moto_server` fixture, so `moto_url`'s reset empties both.

    It also counts and times every request by operation (`GET /_stats`, JSON): how bench/replicas.py
    tells the time moto spends from the time the bridge's access pattern asks for.

    `transactions="item-undo"` applies TransactWriteItems here instead of in moto: moto copies every
    table a transaction names before applying it (to roll back), so each transaction costs time in
    proportion to the table's size (~0.17 ms per item on this machine), which DynamoDB's do not.
    Under the lock a transaction only has to undo what it wrote: each item is read, each operation
    applied as the single-item write it names (moto evaluates its condition), and on the first
    failed condition the written items are put back and the cancellation reasons returned as
    DynamoDB does. The contract tests use moto's own transactions; the benchmark uses this.
    """

    def __init__(self, *, transactions: Literal["moto", "item-undo"] = "moto") -> None:
        self._app = DomainDispatcherApplication(create_backend_app)
        self._transactions = transactions
        self._key_names: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: dict[str, OperationStats] = {}
        self._server = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def stats(self) -> dict[str, OperationStats]:
        with self._stats_lock:
            return {name: replace(value) for name, value in self._stats.items()}

    def _record(self, operation: str, waited: float, served: float) -> None:
        with self._stats_lock:
            entry = self._stats.setdefault(operation, OperationStats())
            entry.count += 1
            entry.waited_seconds += waited
            entry.served_seconds += served
            entry.max_served_seconds = max(entry.max_served_seconds, served)

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_stats" and environ.get("REQUEST_METHOD") == "GET":
            body = json.dumps({name: asdict(value) for name, value in self.stats().items()}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        operation = target.rpartition(".")[2] or str(environ.get("PATH_INFO", "/"))
        arrived = time.perf_counter()
        if not target.startswith("DynamoDB_"):
            response = list(self._app(environ, start_response))
            self._record(operation, 0.0, time.perf_counter() - arrived)
            return response
        label = operation
        if operation == "UpdateItem":
            label = f"UpdateItem {_updated_first(environ)}"
        with self._lock:
            began = time.perf_counter()
            if operation == "TransactWriteItems" and self._transactions == "item-undo":
                response = self._transact(environ, start_response)
            else:
                response = list(self._app(environ, start_response))
        self._record(label, began - arrived, time.perf_counter() - began)
        return response

    def _call(self, environ: dict[str, Any], operation: str, payload: dict[str, Any]) -> tuple[int, Any]:
        """One DynamoDB request to moto, signed as the transaction was (moto reads the service from it)."""
        headers = {
            "Authorization": str(environ.get("HTTP_AUTHORIZATION", "")),
            "X-Amz-Date": str(environ.get("HTTP_X_AMZ_DATE", "")),
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{operation}",
            "Host": str(environ.get("HTTP_HOST", "localhost")),
        }
        request = EnvironBuilder(
            method="POST", path="/", headers=list(headers.items()), data=json.dumps(payload)
        )
        status: list[str] = []

        def start(line: str, _headers: list[tuple[str, str]], _exc: Any = None) -> None:
            status.append(line)

        body = b"".join(self._app(request.get_environ(), start))
        return int(status[0].split()[0]), json.loads(body or b"{}")

    def _key_of(self, environ: dict[str, Any], table: str, item: dict[str, Any]) -> dict[str, Any]:
        if table not in self._key_names:
            _status, described = self._call(environ, "DescribeTable", {"TableName": table})
            self._key_names[table] = [key["AttributeName"] for key in described["Table"]["KeySchema"]]
        return {name: item[name] for name in self._key_names[table]}

    def _transact(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request = json.loads(environ["wsgi.input"].read(length) or b"{}")
        writes: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (operation, request, key)
        for entry in request.get("TransactItems", []):
            ((kind, op),) = entry.items()
            fields = {name: op[name] for name in _WRITE_FIELDS if name in op}
            if kind == "Put":
                writes.append(("PutItem", fields, self._key_of(environ, op["TableName"], op["Item"])))
            elif kind in ("Update", "Delete"):
                writes.append((f"{kind}Item", fields, op["Key"]))
            else:
                return self._reply(start_response, 400, _error("ValidationException", f"{kind}: not here"))
        before = [
            self._call(environ, "GetItem", {"TableName": op["TableName"], "Key": key, "ConsistentRead": True})
            for _operation, op, key in writes
        ]
        for index, (operation, op, _key) in enumerate(writes):
            status, answer = self._call(environ, operation, op)
            if status == 200:
                continue
            for (_operation, undo, key), (_status, old) in reversed(
                list(zip(writes[:index], before[:index], strict=True))
            ):
                if "Item" in old:
                    self._call(environ, "PutItem", {"TableName": undo["TableName"], "Item": old["Item"]})
                else:
                    self._call(environ, "DeleteItem", {"TableName": undo["TableName"], "Key": key})
            if not str(answer.get("__type", "")).endswith("ConditionalCheckFailedException"):
                return self._reply(start_response, status, answer)
            reasons: list[dict[str, str]] = [{"Code": "None"} for _ in writes]
            reasons[index] = {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}
            codes = ", ".join(reason["Code"] for reason in reasons)
            return self._reply(
                start_response,
                400,
                {
                    **_error(
                        "TransactionCanceledException",
                        f"Transaction cancelled, please refer cancellation reasons for specific reasons"
                        f" [{codes}]",
                    ),
                    "CancellationReasons": reasons,
                },
            )
        return self._reply(start_response, 200, {})

    @staticmethod
    def _reply(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
        phrase = "OK" if status == 200 else "Bad Request"
        start_response(f"{status} {phrase}", [("Content-Type", "application/x-amz-json-1.0")])
        return [json.dumps(body).encode()]

    def start(self) -> AtomicDynamoDB:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


_WRITE_FIELDS = (
    "TableName",
    "Item",
    "Key",
    "UpdateExpression",
    "ConditionExpression",
    "ExpressionAttributeNames",
    "ExpressionAttributeValues",
)


def _updated_first(environ: dict[str, Any]) -> str:
    """What an UpdateItem sets first ("SET poll_at"): which of the store's updates it is. The body
    is read and put back for moto."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    expression = str(json.loads(body or b"{}").get("UpdateExpression", ""))
    return " ".join(expression.replace("=", " ").split()[:2])


def _error(code: str, message: str) -> dict[str, Any]:
    return {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "Message": message}


@dataclass
class OperationStats:
    """One AWS operation's requests: how many, time waiting for the DynamoDB lock, time in moto."""

    count: int = 0
    waited_seconds: float = 0.0
    served_seconds: float = 0.0
    max_served_seconds: float = 0.0


@pytest.fixture(scope="session")
def atomic_dynamodb_server(moto_server: str) -> Iterator[str]:
    server = AtomicDynamoDB().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def dynamodb_url(moto_url: str, atomic_dynamodb_server: str) -> str:
    """DynamoDB with atomic conditional writes, emptied with the rest of moto by `moto_url`."""
    return atomic_dynamodb_server


def dynamodb_client(url: str) -> DynamoDBClient:
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(dynamodb_url: str) -> str:
    name = f"bridge-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb_client(dynamodb_url), name)
    return name


def replica(url: str, table: str, clock: Clock) -> DynamoStore:
    """One replica's view of the shared table: its own client, the same table."""
    return DynamoStore(table, client=dynamodb_client(url), clock=clock, retention_seconds=86_400)


@pytest.fixture
def dynamo(dynamodb_url: str, table: str, clock: Clock) -> DynamoStore:
    return replica(dynamodb_url, table, clock)


@pytest.fixture(params=["sqlite", "dynamodb"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[StateStore]:
    if request.param == "sqlite":
        store: StateStore = Store(tmp_path / "bridge.sqlite3", clock=clock)
    else:
        dynamodb_url = request.getfixturevalue("dynamodb_url")
        table = request.getfixturevalue("table")
        store = replica(dynamodb_url, table, clock)
    yield store
    store.close()


def add(store: StateStore, delivery_id: str, event: SourceEvent = EVENT) -> bool:
    return store.add_delivery(delivery_id, event.provider, event.event_name, "web", event)


# --- the contract both backends keep -------------------------------------------------------------------


def test_store_alias_still_builds_the_sqlite_store(tmp_path: Path) -> None:
    assert Store is SqliteStore
    opened = Store(tmp_path / "x.sqlite3")
    assert isinstance(opened, SqliteStore)
    opened.close()


def test_a_delivery_is_accepted_once(any_store: StateStore, clock: Clock) -> None:
    assert add(any_store, "d-1") is True
    assert add(any_store, "d-1") is False
    assert any_store.add_ignored("d-1", "github", "push", "ignored") is False
    assert any_store.add_ignored("d-ign", "github", "ping", "no route") is True
    row = any_store.get_delivery("d-1")
    assert row is not None
    assert (row.state, row.attempts, row.route_name, row.event, row.received_at) == (
        "pending",
        0,
        "web",
        EVENT,
        clock.now,
    )
    ignored = any_store.get_delivery("d-ign")
    assert ignored is not None
    assert (ignored.state, ignored.event, ignored.last_error) == ("ignored", None, "no route")
    assert any_store.get_delivery("unknown") is None


def test_every_delivery_outcome_is_listed_newest_first_with_its_reason(
    any_store: StateStore, clock: Clock
) -> None:
    """What the operator page lists: accepted and ignored deliveries (with why), across days,
    filtered by repository and by a commit prefix."""
    other = replace(EVENT, repository="acme/api", sha="f" * 40)
    clock.now -= 86_400  # yesterday: another day's partition of the "recent" index
    add(any_store, "d-old", other)
    clock.now += 86_400
    add(any_store, "d-1")
    clock.now += 1
    any_store.add_ignored("d-2", "github", "issues", "GitHub event 'issues' does not trigger builds")
    clock.now += 1
    any_store.add_ignored(
        "d-3", "gitlab", "Push Hook", "no route matches", repository="acme/web", sha="ab" * 20
    )

    assert [row.delivery_id for row in any_store.recent_deliveries()] == ["d-3", "d-2", "d-1", "d-old"]
    assert [row.delivery_id for row in any_store.recent_deliveries(limit=3)] == ["d-3", "d-2", "d-1"]
    assert [row.delivery_id for row in any_store.recent_deliveries(repository="acme/web")] == ["d-3", "d-1"]
    assert [row.delivery_id for row in any_store.recent_deliveries(sha=SHA[:7])] == ["d-1"]
    assert [row.delivery_id for row in any_store.recent_deliveries(repository="acme/api")] == ["d-old"]
    assert any_store.recent_deliveries(repository="acme/api", sha=SHA[:7]) == []
    newest = any_store.recent_deliveries(limit=1)[0]
    assert (newest.state, newest.outcome, newest.last_error) == ("ignored", "ignored", "no route matches")
    assert (newest.repository, newest.sha, newest.event) == ("acme/web", "ab" * 20, None)
    accepted = any_store.get_delivery("d-1")
    assert accepted is not None
    assert (accepted.repository, accepted.sha, accepted.outcome) == ("acme/web", SHA, "pending")


def test_a_build_keeps_its_request_its_start_and_the_status_its_commit_got(
    any_store: StateStore, clock: Clock
) -> None:
    add(any_store, "d-1")
    started_at = clock.now
    assert (
        any_store.mark_started(
            "d-1", "proj:b1", request_json='{"projectName": "proj"}', grant_json='{"secrets": true}'
        )
        is True
    )
    clock.now += 30
    any_store.update_build("proj:b1", last_build_status="SUCCEEDED", status_json='{"state": "completed"}')

    delivery = any_store.get_delivery("d-1")
    assert delivery is not None
    assert (delivery.outcome, delivery.build_id, delivery.request_json, delivery.grant_json) == (
        "started",
        "proj:b1",
        '{"projectName": "proj"}',
        '{"secrets": true}',
    )
    builds = any_store.get_builds(["proj:b1", "proj:nope"])
    assert list(builds) == ["proj:b1"]
    build = builds["proj:b1"]
    assert (build.status_json, build.created_at, build.updated_at) == (
        '{"state": "completed"}',
        started_at,
        started_at + 30,
    )


def test_claim_delivery_leases_it_until_the_lease_runs_out(any_store: StateStore, clock: Clock) -> None:
    add(any_store, "d-1")
    first = any_store.claim_delivery("d-1", lease_seconds=30)
    assert first is not None
    assert (first.attempts, first.event, first.route_name) == (1, EVENT, "web")
    assert any_store.claim_delivery("d-1", lease_seconds=30) is None  # leased
    clock.now += 31
    again = any_store.claim_delivery("d-1", lease_seconds=30)
    assert again is not None
    assert again.attempts == 2
    any_store.mark_retry("d-1", "throttled", 100)
    clock.now += 50
    assert any_store.claim_delivery("d-1", lease_seconds=30) is None  # retry not due yet
    clock.now += 51
    assert any_store.claim_delivery("d-1", lease_seconds=30) is not None
    any_store.mark_failed("d-1", "gave up")
    clock.now += 1000
    assert any_store.claim_delivery("d-1") is None
    assert any_store.claim_delivery("never-seen") is None


def test_a_delivery_whose_start_failed_restarts_and_its_waiting_status_goes_to_its_build(
    any_store: StateStore, clock: Clock
) -> None:
    add(any_store, "d-1")
    claimed = any_store.claim_delivery("d-1", lease_seconds=30)
    assert claimed is not None
    assert (claimed.last_error, claimed.reporter_ref) == (None, None)
    any_store.mark_retry("d-1", "quota", 100, reporter_ref="check-7")
    assert any_store.restart_delivery("d-1") is True  # waiting between attempts: due now
    again = any_store.claim_delivery("d-1", lease_seconds=30)
    assert again is not None
    assert (again.last_error, again.reporter_ref) == ("quota", "check-7")
    any_store.mark_failed("d-1", "unknown project")
    assert any_store.claim_delivery("d-1") is None
    assert any_store.restart_delivery("d-1") is True  # failed for good, then fixed: a redelivery
    assert any_store.claim_delivery("d-1") is not None
    assert any_store.mark_started("d-1", "proj:b1") is True
    assert any_store.get_build("proj:b1").reporter_ref == "check-7"  # type: ignore[union-attr]
    assert any_store.restart_delivery("d-1") is False  # started: a duplicate from now on
    assert any_store.restart_delivery("never-seen") is False


def test_claim_pending_returns_due_deliveries_once(any_store: StateStore, clock: Clock) -> None:
    for index in range(3):
        add(any_store, f"d-{index}")
    claimed = any_store.claim_pending(10, lease_seconds=60)
    assert sorted(item.delivery_id for item in claimed) == ["d-0", "d-1", "d-2"]
    assert any_store.claim_pending(10, lease_seconds=60) == []


def test_a_starting_replica_leaves_the_claims_of_the_live_ones_alone(
    dynamo: DynamoStore, dynamodb_url: str, table: str, clock: Clock
) -> None:
    """SQLite releases a dead process's claims at start-up; on a shared table they may be a live replica's."""
    add(dynamo, "d-1")
    assert [item.delivery_id for item in dynamo.claim_pending(10, lease_seconds=60)] == ["d-1"]
    starting = replica(dynamodb_url, table, clock)

    assert starting.release_claims() == 0

    assert starting.claim_pending(10, lease_seconds=60) == []  # still the first replica's


def test_mark_started_records_the_build_once(any_store: StateStore, clock: Clock) -> None:
    add(any_store, "d-1")
    assert any_store.mark_started("d-1", "proj:b1") is True
    assert any_store.mark_started("d-1", "proj:b1") is False  # a slower worker with the same build
    row = any_store.get_delivery("d-1")
    assert row is not None
    assert (row.state, row.build_id) == ("started", "proj:b1")
    (active,) = any_store.active_builds()
    assert (active.build_id, active.delivery_id, active.event, active.done) == (
        "proj:b1",
        "d-1",
        EVENT,
        False,
    )
    assert any_store.claim_delivery("d-1") is None
    with pytest.raises(StoreError, match="no pending delivery missing"):
        any_store.mark_started("missing", "proj:b2")


def test_update_build_sets_only_what_is_given_and_done_leaves_the_active_set(
    any_store: StateStore, clock: Clock
) -> None:
    add(any_store, "d-1")
    any_store.mark_started("d-1", "proj:b1")
    any_store.update_build("proj:b1", last_build_status="IN_PROGRESS", reporter_ref="ref-1")
    any_store.update_build("proj:b1", last_reported_state="in_progress|IN_PROGRESS|BUILD")
    build = any_store.get_build("proj:b1")
    assert build is not None
    assert (build.last_build_status, build.reporter_ref, build.last_reported_state) == (
        "IN_PROGRESS",
        "ref-1",
        "in_progress|IN_PROGRESS|BUILD",
    )
    any_store.update_build("proj:b1", done=True, last_build_status="SUCCEEDED")
    assert any_store.active_builds() == []
    done = any_store.get_build("proj:b1")
    assert done is not None
    assert (done.done, done.reporter_ref, done.last_build_status) == (True, "ref-1", "SUCCEEDED")
    any_store.update_build("no-such-build", done=True)  # ignored, as SQLite's UPDATE of nothing
    assert any_store.get_build("no-such-build") is None
    counts = any_store.counts()
    assert counts["deliveries_started"] == 1
    assert counts["builds_done"] == 1
    assert counts["builds_active"] == 0
    assert any_store.writable() is True


def test_latest_build_of_a_commit_is_the_newest(any_store: StateStore, clock: Clock) -> None:
    other = replace(EVENT, sha="f" * 40)
    add(any_store, "d-old")
    any_store.mark_started("d-old", "proj:old")
    clock.now += 10
    add(any_store, "d-new")
    any_store.mark_started("d-new", "proj:new")
    add(any_store, "d-other", other)
    any_store.mark_started("d-other", "proj:other")
    latest = any_store.latest_build_of("github", "acme/web", SHA)
    assert latest is not None
    assert latest.build_id == "proj:new"
    assert any_store.latest_build_of("gitlab", "acme/web", SHA) is None
    assert any_store.latest_build_of("github", "acme/other", SHA) is None


# --- what several replicas need ------------------------------------------------------------------------


def test_concurrent_replicas_accept_one_copy_of_a_delivery(
    dynamodb_url: str, table: str, clock: Clock
) -> None:
    replicas = [replica(dynamodb_url, table, clock) for _ in range(6)]
    results: list[bool] = []
    barrier = threading.Barrier(len(replicas))

    def accept(store: DynamoStore) -> None:
        barrier.wait()
        results.append(add(store, "same-delivery"))

    threads = [threading.Thread(target=accept, args=(store,)) for store in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]


def test_concurrent_replicas_claim_a_delivery_once(dynamodb_url: str, table: str, clock: Clock) -> None:
    replicas = [replica(dynamodb_url, table, clock) for _ in range(6)]
    add(replicas[0], "d-1")
    claims: list[object] = []
    barrier = threading.Barrier(len(replicas))

    def claim(store: DynamoStore) -> None:
        barrier.wait()
        claims.append(store.claim_delivery("d-1", lease_seconds=60))

    threads = [threading.Thread(target=claim, args=(store,)) for store in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(claim is not None for claim in claims) == 1


def test_a_slower_replica_loses_the_start_and_the_build_row_is_not_doubled(
    dynamodb_url: str, table: str, clock: Clock
) -> None:
    fast, slow = replica(dynamodb_url, table, clock), replica(dynamodb_url, table, clock)
    add(fast, "d-1")
    assert fast.mark_started("d-1", "proj:b1", lease_owner="fast", lease_seconds=30) is True
    assert slow.mark_started("d-1", "proj:b1", lease_owner="slow", lease_seconds=30) is False
    assert len(slow.active_builds()) == 1
    # The starter holds the build until it posted the first status: nobody else may report on it.
    assert slow.lock_build("proj:b1", "slow", lease_seconds=30) is None
    fast.release_build("proj:b1", "fast")
    assert slow.lock_build("proj:b1", "slow", lease_seconds=30) is not None


def test_each_build_is_claimed_by_one_replica_per_poll_interval(
    dynamodb_url: str, table: str, clock: Clock
) -> None:
    a, b, c = (replica(dynamodb_url, table, clock) for _ in range(3))
    for index in range(12):
        add(a, f"d-{index}")
        a.mark_started(f"d-{index}", f"proj:b{index}")
    every = {f"proj:b{index}" for index in range(12)}

    claimed = {
        name: {build.build_id for build in store.claim_builds(name, lease_seconds=5, poll_interval=15)}
        for name, store in (("a", a), ("b", b), ("c", c))
    }
    assert claimed["a"] == every  # the first to come polls them all this interval...
    assert claimed["b"] == claimed["c"] == set()  # ...and nobody else does
    for build_id in every:
        a.release_build(build_id, "a")
    clock.now += 10
    assert b.claim_builds("b", lease_seconds=5, poll_interval=15) == []  # same interval, still
    clock.now += 6
    assert {build.build_id for build in b.claim_builds("b", lease_seconds=5, poll_interval=15)} == every


def test_a_dead_replicas_builds_are_taken_over_when_its_lease_expires(
    dynamodb_url: str, table: str, clock: Clock
) -> None:
    dead, alive = replica(dynamodb_url, table, clock), replica(dynamodb_url, table, clock)
    add(dead, "d-1")
    dead.mark_started("d-1", "proj:b1")
    assert len(dead.claim_builds("dead", lease_seconds=60, poll_interval=1)) == 1  # ...and dies, holding it
    clock.now += 30
    assert alive.claim_builds("alive", lease_seconds=60, poll_interval=1) == []  # slot due, lease held
    assert alive.lock_build("proj:b1", "alive", lease_seconds=60) is None
    clock.now += 31
    (taken,) = alive.claim_builds("alive", lease_seconds=60, poll_interval=1)
    assert taken.build_id == "proj:b1"
    dead.release_build("proj:b1", "dead")  # a late release by the old holder changes nothing
    assert dead.lock_build("proj:b1", "dead", lease_seconds=60) is None


def _claim_builds_at_once(replicas: list[DynamoStore], *, builds: int) -> list[str]:
    """Start `builds` builds through the first replica, then let every replica claim at the same moment."""
    for index in range(builds):
        add(replicas[0], f"d-{index}")
        replicas[0].mark_started(f"d-{index}", f"proj:b{index}")
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(len(replicas))

    def claim(index: int, store: DynamoStore) -> None:
        barrier.wait()
        claimed = store.claim_builds(f"r{index}", lease_seconds=5, poll_interval=15)
        results[index] = [build.build_id for build in claimed]

    threads = [threading.Thread(target=claim, args=pair) for pair in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [build_id for ids in results.values() for build_id in ids]


def test_concurrent_claims_split_builds_without_overlap(dynamodb_url: str, table: str, clock: Clock) -> None:
    replicas = [replica(dynamodb_url, table, clock) for _ in range(3)]
    claimed = _claim_builds_at_once(replicas, builds=30)
    assert sorted(claimed) == sorted(f"proj:b{index}" for index in range(30))  # all, none twice


def test_rows_carry_a_ttl_and_the_table_has_it_enabled(
    dynamodb_url: str, table: str, dynamo: DynamoStore, clock: Clock
) -> None:
    client = dynamodb_client(dynamodb_url)
    ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert (ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")) == ("ENABLED", TTL_ATTRIBUTE)
    add(dynamo, "d-1")
    dynamo.mark_started("d-1", "proj:b1")
    delivery = client.get_item(TableName=table, Key={"pk": {"S": "d#d-1"}})["Item"]
    assert int(delivery[TTL_ATTRIBUTE]["N"]) == int(clock.now + 86_400)
    build = client.get_item(TableName=table, Key={"pk": {"S": "b#proj:b1"}})["Item"]
    assert TTL_ATTRIBUTE not in build  # a running build never expires
    clock.now += 100
    dynamo.update_build("proj:b1", done=True)
    build = client.get_item(TableName=table, Key={"pk": {"S": "b#proj:b1"}})["Item"]
    assert int(build[TTL_ATTRIBUTE]["N"]) == int(clock.now + 86_400)
    assert "active" not in build


def test_an_unreachable_table_is_a_store_error_with_a_hint(dynamodb_url: str, clock: Clock) -> None:
    missing = DynamoStore("no-such-table", client=dynamodb_client(dynamodb_url), clock=clock)
    with pytest.raises(StoreError, match="no-such-table") as caught:
        add(missing, "d-1")
    assert "dynamodb permissions" in caught.value.hint
    assert missing.writable() is False


def test_the_stack_declares_the_table_the_store_expects() -> None:
    resource: dict[str, Any] = template()["Resources"]["StateTable"]
    properties = resource["Properties"]
    assert resource["Condition"] == "ReplicasEnabled"
    for key in ("AttributeDefinitions", "KeySchema", "BillingMode", "GlobalSecondaryIndexes"):
        assert properties[key] == TABLE_DEFINITION[key], key
    assert properties["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


# --- the test proxy itself (bench/replicas.py measures through it) ------------------------------------


@pytest.mark.parametrize("transactions", ["moto", "item-undo"])
def test_the_proxys_transactions_commit_whole_or_not_at_all_and_are_counted(
    moto_url: str, transactions: Literal["moto", "item-undo"], clock: Clock
) -> None:
    server = AtomicDynamoDB(transactions=transactions).start()
    try:
        name = f"bridge-{uuid.uuid4().hex[:8]}"
        create_table(dynamodb_client(server.url), name)
        store = replica(server.url, name, clock)
        add(store, "d-1")
        add(store, "d-2")
        assert store.claim_delivery("d-1") is not None
        assert store.mark_started("d-1", "proj:b1") is True
        assert store.mark_started("d-1", "proj:b1") is False  # the delivery's condition fails
        # The delivery's update passes, the build row's put fails: the update must be undone.
        assert store.mark_started("d-2", "proj:b1") is False
        row = store.get_delivery("d-2")
        assert row is not None
        assert (row.state, row.build_id) == ("pending", None)
        build = store.get_build("proj:b1")
        assert build is not None
        assert build.delivery_id == "d-1"
        stats = server.stats()
        assert stats["UpdateItem SET attempts"].count == 1  # updates are told apart by what they set
        assert stats["TransactWriteItems"].count == 3
        assert stats["PutItem"].count == 2
        assert stats["TransactWriteItems"].served_seconds > 0
    finally:
        server.stop()


@pytest.mark.parametrize("replica_count", [2, 3])
def test_overlapping_claims_do_not_each_try_every_build(
    clock: Clock, moto_url: str, replica_count: int
) -> None:
    """Replicas whose poll cycles overlap read the same due builds; each must not walk all of them
    (every failed conditional write is a billed write): at most one failed claim per replica."""
    server = AtomicDynamoDB().start()
    try:
        name = f"bridge-{uuid.uuid4().hex[:8]}"
        create_table(dynamodb_client(server.url), name)
        replicas = [replica(server.url, name, clock) for _ in range(replica_count)]
        claimed = _claim_builds_at_once(replicas, builds=60)
        assert sorted(claimed) == sorted(f"proj:b{index}" for index in range(60))  # all, none twice
        assert server.stats()["UpdateItem SET poll_at"].count <= 60 + replica_count
    finally:
        server.stop()


def test_a_long_claim_walk_dates_each_slot_and_lease_from_its_own_claim(
    dynamodb_url: str, table: str, clock: Clock
) -> None:
    """A walk over hundreds of builds lasts seconds: a slot dated from its start would already be
    due again (and its lease over) for the last builds, which another replica would then poll too."""
    store = replica(dynamodb_url, table, clock)
    for index in range(4):
        add(store, f"d-{index}")
        store.mark_started(f"d-{index}", f"proj:b{index}")

    def ticking() -> float:
        clock.now += 3  # each request of the walk takes 3 s
        return clock.now

    walker = DynamoStore(table, client=dynamodb_client(dynamodb_url), clock=ticking)
    claimed = walker.claim_builds("r", lease_seconds=5, poll_interval=4)
    assert len(claimed) == 4
    client = dynamodb_client(dynamodb_url)
    slots = []
    for build in claimed:
        key = {"pk": {"S": f"b#{build.build_id}"}}
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        poll_at, lease_until = float(item["poll_at"]["N"]), float(item["lease_until"]["N"])
        assert lease_until - poll_at == 1  # both from the same claim time
        slots.append(poll_at)
    assert slots == sorted(set(slots))  # one claim time each, in the order of the walk


def test_an_approval_is_pinned_to_one_sha_and_a_new_one_replaces_it(any_store: StateStore) -> None:
    assert any_store.approved_sha("github", "Codertocat/Hello-World", 2) is None
    any_store.record_approval("github", "Codertocat/Hello-World", 2, "a" * 40, "maintainer")
    # GitHub names are case-insensitive: the PR's own delivery may spell the owner differently.
    assert any_store.approved_sha("github", "codertocat/hello-world", 2) == "a" * 40
    any_store.record_approval("github", "Codertocat/Hello-World", 2, "b" * 40, "another")
    assert any_store.approved_sha("github", "Codertocat/Hello-World", 2) == "b" * 40
    # Another change, another provider, another repository: nothing approved there.
    assert any_store.approved_sha("github", "Codertocat/Hello-World", 3) is None
    assert any_store.approved_sha("gitlab", "Codertocat/Hello-World", 2) is None
    assert any_store.approved_sha("github", "Codertocat/Other", 2) is None


def test_an_accepted_delivery_that_builds_nothing_is_marked_ignored(any_store: StateStore) -> None:
    add(any_store, "d-waiting")
    any_store.mark_ignored("d-waiting", "waiting for approval")
    row = any_store.get_delivery("d-waiting")
    assert row is not None
    assert (row.state, row.last_error) == ("ignored", "waiting for approval")
    assert any_store.claim_pending() == []  # never offered to a worker again
