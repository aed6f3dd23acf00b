"""Deliveries and tracked builds in one DynamoDB table, shared by every replica of the bridge.

Each guarantee the SQLite store gets from its single writer comes here from a conditional write:
- dedupe: a delivery is a `PutItem` conditional on its id being new, so two replicas that receive
  the same delivery (a redelivery through the load balancer) cannot both accept it;
- a delivery is worked on by one replica at a time: claiming it is an `UpdateItem` conditional on
  "pending and due", which also leases it (the SQS visibility timeout is the other half);
- start is atomic: the delivery turning "started" and the build row appearing are one transaction,
  conditional on neither having happened, so a slow replica that raced a faster one learns it lost;
- each running build is polled once per interval across the fleet: the poll slot (`poll_at`) is
  taken with a conditional update, and reporting on a build needs its lease (`lease_owner`,
  `lease_until`), so two replicas never post the same build's status at once, and a replica that
  died holding a lease loses it when it expires.

Old rows leave by themselves: deliveries carry a TTL attribute from the start, builds once done.

Table layout (single table, on-demand; `TABLE_DEFINITION` is what deploy/bridge.yaml declares):
  pk = "d#<delivery id>" | "b#<build id>" | "a#<provider>#<repository>#<change number>" | "probe"
  GSI "active": builds still running (`active` is present only until done), by `poll_at`
  GSI "commit": builds by "<provider>#<repository>#<sha>", newest first (what a re-run inherits)
  GSI "recent": deliveries by the UTC day they came (`day`), newest first (the operator page)
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast, get_args

import botocore.exceptions

from bridge.model import SourceEvent
from bridge.store import (
    DeliveryRow,
    DeliveryState,
    PendingDelivery,
    StoreError,
    TrackedBuild,
    event_from_json,
    event_to_json,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["TABLE_DEFINITION", "TTL_ATTRIBUTE", "DynamoStore", "create_table"]

log = logging.getLogger("bridge.store")

TTL_ATTRIBUTE: Final = "expires_at"
ACTIVE_INDEX: Final = "active"
COMMIT_INDEX: Final = "commit"
RECENT_INDEX: Final = "recent"
DEFAULT_RETENTION_SECONDS: Final = 30 * 86_400
COUNTS_CACHE_SECONDS: Final = 30.0
OVERDUE_DAYS: Final = 2  # today and yesterday (UTC): a delivery stored just before midnight is found after it
_ACTIVE: Final = "1"

# The table as CreateTable takes it; deploy/bridge.yaml declares the same (tests/test_store_dynamodb.py).
TABLE_DEFINITION: Final[Mapping[str, Any]] = {
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "active", "AttributeType": "S"},
        {"AttributeName": "poll_at", "AttributeType": "N"},
        {"AttributeName": "commit", "AttributeType": "S"},
        {"AttributeName": "updated_at", "AttributeType": "N"},
        {"AttributeName": "day", "AttributeType": "S"},
        {"AttributeName": "received_at", "AttributeType": "N"},
    ],
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    "BillingMode": "PAY_PER_REQUEST",
    "GlobalSecondaryIndexes": [
        {
            "IndexName": ACTIVE_INDEX,
            "KeySchema": [
                {"AttributeName": "active", "KeyType": "HASH"},
                {"AttributeName": "poll_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        },
        {
            "IndexName": COMMIT_INDEX,
            "KeySchema": [
                {"AttributeName": "commit", "KeyType": "HASH"},
                {"AttributeName": "updated_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        },
        {
            "IndexName": RECENT_INDEX,
            "KeySchema": [
                {"AttributeName": "day", "KeyType": "HASH"},
                {"AttributeName": "received_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        },
    ],
}


def create_table(client: DynamoDBClient, name: str) -> None:
    """Create the table (and turn its TTL on) as the CloudFormation stack would; for tests and local use."""
    client.create_table(TableName=name, **TABLE_DEFINITION)
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )


# --- attribute values -----------------------------------------------------------------------------


def _s(value: str) -> dict[str, Any]:
    return {"S": value}


def _n(value: float) -> dict[str, Any]:
    return {"N": repr(float(value)) if not float(value).is_integer() else str(int(value))}


def _str(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return None if value is None or "NULL" in value else str(value["S"])


def _num(item: Mapping[str, Any], name: str, default: float = 0.0) -> float:
    value = item.get(name)
    return default if value is None or "NULL" in value else float(value["N"])


def _bool(item: Mapping[str, Any], name: str) -> bool:
    value = item.get(name)
    return bool(value and value.get("BOOL"))


def _delivery_key(delivery_id: str) -> dict[str, Any]:
    return {"pk": _s(f"d#{delivery_id}")}


def _build_key(build_id: str) -> dict[str, Any]:
    return {"pk": _s(f"b#{build_id}")}


def _approval_key(provider: str, repository: str, number: int) -> dict[str, Any]:
    return {"pk": _s(f"a#{provider}#{repository.lower()}#{number}")}


def _commit_key(provider: str, repository: str, sha: str) -> str:
    return f"{provider}#{repository}#{sha}"


def _day(when: float) -> str:
    """The "recent" index's partition: one a UTC day, so listing the newest reads one or two."""
    return time.strftime("%Y-%m-%d", time.gmtime(when))


def _is_condition_failure(exc: botocore.exceptions.ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoStore:
    """`StateStore` on DynamoDB. `owner` in the lease methods names one replica's worker."""

    def __init__(
        self,
        table: str,
        *,
        client: DynamoDBClient | None = None,
        region: str | None = None,
        clock: Callable[[], float] = time.time,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        """`retention_seconds`: how long a delivery id is remembered (dedupe) and a finished build kept."""
        if client is None:
            from bridge import aws

            # A delivery's sender waits on these calls (GitHub gives up after 10 s): two short
            # attempts, then a 503 it retries, not botocore's 60 s read timeout.
            client = aws.client("dynamodb", region=region, max_attempts=2, timeout=2.0)
        self._client = client
        self._table = table
        self._clock = clock
        self._retention = retention_seconds
        self._counts_lock = threading.Lock()
        self._counts: tuple[float, dict[str, int]] | None = None

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise StoreError(
                f"state table {self._table}: {action} failed: {code}",
                hint="check the table exists, the region, and the task role's dynamodb permissions;"
                " the sender will retry",
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(
                f"state table {self._table}: {action} failed: {type(exc).__name__}",
                hint="DynamoDB is unreachable from this replica; the sender will retry",
            ) from None

    def _conditional_update(self, action: str, **kwargs: Any) -> dict[str, Any] | None:
        """The item after the update, or None when its condition did not hold."""
        with self._guard(action):
            try:
                response = self._client.update_item(TableName=self._table, **kwargs)
            except botocore.exceptions.ClientError as exc:
                if _is_condition_failure(exc):
                    return None
                raise
        return cast(dict[str, Any], response.get("Attributes", {}))

    def _get(self, key: dict[str, Any], action: str) -> dict[str, Any] | None:
        with self._guard(action):
            response = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        item = response.get("Item")
        return cast(dict[str, Any], item) if item else None

    # --- deliveries -----------------------------------------------------------------------------

    def _put_new(self, item: dict[str, Any], action: str) -> bool:
        with self._guard(action):
            try:
                self._client.put_item(
                    TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
            except botocore.exceptions.ClientError as exc:
                if _is_condition_failure(exc):
                    return False
                raise
        return True

    def add_delivery(
        self, delivery_id: str, provider: str, event_name: str, route_name: str, event: SourceEvent
    ) -> bool:
        """Persist an accepted delivery. False: a replica saw this id before, so it must not build again."""
        item = self._delivery_item(
            delivery_id,
            provider,
            event_name,
            route_name=_s(route_name),
            event_json=_s(event_to_json(event)),
            state=_s("pending"),
            repository=_s(event.repository),
            sha=_s(event.sha),
        )
        return self._put_new(item, "recording a delivery")

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
        named = {"repository": _s(repository)} if repository else {}
        if sha:
            named["sha"] = _s(sha)
        item = self._delivery_item(
            delivery_id,
            provider,
            event_name,
            route_name=_s(""),
            state=_s("ignored"),
            last_error=_s(reason),
            **named,
        )
        return self._put_new(item, "recording a delivery")

    def _delivery_item(
        self, delivery_id: str, provider: str, event_name: str, **fields: dict[str, Any]
    ) -> dict[str, Any]:
        """A new delivery row: received now, due now, kept for the retention period."""
        now = self._clock()
        return {
            **_delivery_key(delivery_id),
            "delivery_id": _s(delivery_id),
            "provider": _s(provider),
            "event_name": _s(event_name),
            "received_at": _n(now),
            "day": _s(_day(now)),
            "attempts": _n(0),
            "next_attempt_at": _n(now),
            TTL_ATTRIBUTE: _n(int(now + self._retention)),
            **fields,
        }

    def claim_delivery(self, delivery_id: str, *, lease_seconds: float = 60) -> PendingDelivery | None:
        now = self._clock()
        item = self._conditional_update(
            "claiming a delivery",
            Key=_delivery_key(delivery_id),
            ConditionExpression="#state = :pending AND next_attempt_at <= :now",
            UpdateExpression="SET attempts = attempts + :one, next_attempt_at = :until",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={
                ":pending": _s("pending"),
                ":now": _n(now),
                ":one": _n(1),
                ":until": _n(now + lease_seconds),
            },
            ReturnValues="ALL_NEW",
        )
        if item is None:
            return None
        return PendingDelivery(
            delivery_id=delivery_id,
            provider=_str(item, "provider") or "",
            event_name=_str(item, "event_name") or "",
            route_name=_str(item, "route_name") or "",
            event=event_from_json(_str(item, "event_json") or "null"),
            attempts=int(_num(item, "attempts")),
            received_at=_num(item, "received_at"),
            last_error=_str(item, "last_error"),
            reporter_ref=_str(item, "reporter_ref"),
        )

    def claim_pending(self, limit: int = 10, *, lease_seconds: float = 60) -> list[PendingDelivery]:
        """A sweep of the table for due deliveries: SQS is the hot path; this is for tools and recovery."""
        now = self._clock()
        claimed: list[PendingDelivery] = []
        with self._guard("listing pending deliveries"):
            pages = self._client.get_paginator("scan").paginate(
                TableName=self._table,
                FilterExpression="#state = :pending AND next_attempt_at <= :now",
                ProjectionExpression="delivery_id",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":pending": _s("pending"), ":now": _n(now)},
                ConsistentRead=True,
            )
            ids = [_str(item, "delivery_id") for page in pages for item in page.get("Items", [])]
        for delivery_id in ids:
            if len(claimed) >= limit:
                break
            if delivery_id and (pending := self.claim_delivery(delivery_id, lease_seconds=lease_seconds)):
                claimed.append(pending)
        return claimed

    def claim_overdue(
        self, limit: int, *, lease_seconds: float, overdue_seconds: float
    ) -> list[PendingDelivery]:
        """Pending deliveries of the last `OVERDUE_DAYS` UTC days due `overdue_seconds` ago or more.

        Read from the "recent" index, not a scan: a delivery is left without a queue message only
        at intake (an enqueue that failed after the row was stored), and a worker that takes it
        sends it a message again, so only recent rows need looking for. Like every filter, this one
        costs the days' deliveries in read units; the queue calls it once per visibility timeout.
        """
        now = self._clock()
        ids: list[str] = []
        with self._guard("listing overdue deliveries"):
            for back in range(OVERDUE_DAYS):
                pages = self._client.get_paginator("query").paginate(
                    TableName=self._table,
                    IndexName=RECENT_INDEX,
                    KeyConditionExpression="#day = :day",
                    FilterExpression="#state = :pending AND next_attempt_at <= :due",
                    ProjectionExpression="delivery_id",
                    ExpressionAttributeNames={"#day": "day", "#state": "state"},
                    ExpressionAttributeValues={
                        ":day": _s(_day(now - back * 86_400)),
                        ":pending": _s("pending"),
                        ":due": _n(now - overdue_seconds),
                    },
                    ScanIndexForward=True,
                )
                ids.extend(
                    _str(item, "delivery_id") or "" for page in pages for item in page.get("Items", [])
                )
        claimed: list[PendingDelivery] = []
        for delivery_id in ids:
            if len(claimed) >= limit:
                break
            if delivery_id and (pending := self.claim_delivery(delivery_id, lease_seconds=lease_seconds)):
                claimed.append(pending)
        return claimed

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
        """One transaction: the delivery turns started, its build row appears (leased to `lease_owner`,
        so nobody else reports on it before its starter posted the first status).

        False when either already happened: another replica recorded this start first.
        """
        now = self._clock()
        delivery = self._get(_delivery_key(delivery_id), "recording a started build")
        if delivery is None or _str(delivery, "event_json") is None:
            raise StoreError(
                f"no pending delivery {delivery_id} to mark started", hint="add_delivery must come first"
            )
        event_json = _str(delivery, "event_json") or ""
        event = event_from_json(event_json)
        build: dict[str, Any] = {
            **_build_key(build_id),
            "build_id": _s(build_id),
            "delivery_id": _s(delivery_id),
            "provider": _s(_str(delivery, "provider") or ""),
            "route_name": _s(_str(delivery, "route_name") or ""),
            "event_json": _s(event_json),
            "done": {"BOOL": False},
            "updated_at": _n(now),
            "created_at": _n(now),
            "active": _s(_ACTIVE),
            "poll_at": _n(now),
            "commit": _s(_commit_key(event.provider, event.repository, event.sha)),
            "lease_owner": _s(lease_owner or ""),
            "lease_until": _n(now + lease_seconds if lease_owner else 0),
        }
        waiting_ref = reporter_ref if reporter_ref is not None else _str(delivery, "reporter_ref")
        if waiting_ref is not None:
            build["reporter_ref"] = _s(waiting_ref)  # the waiting status, if one was posted
        started: dict[str, Any] = {":started": _s("started"), ":build": _s(build_id)}
        if request_json is not None:
            started[":request"] = _s(request_json)
        if grant_json is not None:
            started[":grant"] = _s(grant_json)
        with self._guard("recording a started build"):
            try:
                self._client.transact_write_items(
                    TransactItems=[
                        {
                            "Update": {
                                "TableName": self._table,
                                "Key": _delivery_key(delivery_id),
                                "ConditionExpression": "attribute_exists(pk) AND #state <> :started",
                                "UpdateExpression": "SET #state = :started, build_id = :build"
                                + (", request_json = :request" if request_json is not None else "")
                                + (", grant_json = :grant" if grant_json is not None else "")
                                + " REMOVE last_error",
                                "ExpressionAttributeNames": {"#state": "state"},
                                "ExpressionAttributeValues": started,
                            }
                        },
                        {
                            "Put": {
                                "TableName": self._table,
                                "Item": build,
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        },
                    ]
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                reasons = exc.response.get("CancellationReasons", [])
                if reasons and not any(reason.get("Code") == "ConditionalCheckFailed" for reason in reasons):
                    raise
                return False
        return True

    def mark_retry(
        self, delivery_id: str, error: str, delay_seconds: float, *, reporter_ref: str | None = None
    ) -> None:
        values = {
            ":pending": _s("pending"),
            ":at": _n(self._clock() + delay_seconds),
            ":error": _s(error),
        }
        if reporter_ref is not None:
            values[":ref"] = _s(reporter_ref)
        self._conditional_update(
            "scheduling a retry",
            Key=_delivery_key(delivery_id),
            ConditionExpression="#state = :pending",
            UpdateExpression="SET next_attempt_at = :at, last_error = :error"
            + (", reporter_ref = :ref" if reporter_ref is not None else ""),
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=values,
        )

    def restart_delivery(self, delivery_id: str) -> bool:
        """See SqliteStore.restart_delivery: one conditional update, so replicas agree."""
        item = self._conditional_update(
            "restarting a delivery",
            Key=_delivery_key(delivery_id),
            ConditionExpression="#state = :failed OR (#state = :pending AND attribute_exists(last_error))",
            UpdateExpression="SET #state = :pending, next_attempt_at = :now",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={
                ":failed": _s("failed"),
                ":pending": _s("pending"),
                ":now": _n(self._clock()),
            },
            ReturnValues="ALL_NEW",
        )
        return item is not None

    def mark_failed(self, delivery_id: str, error: str, *, reporter_ref: str | None = None) -> None:
        values = {":failed": _s("failed"), ":error": _s(error)}
        if reporter_ref is not None:
            values[":ref"] = _s(reporter_ref)
        self._conditional_update(
            "recording a failure",
            Key=_delivery_key(delivery_id),
            ConditionExpression="attribute_exists(pk)",
            UpdateExpression="SET #state = :failed, last_error = :error"
            + (", reporter_ref = :ref" if reporter_ref is not None else ""),
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=values,
        )

    def mark_ignored(self, delivery_id: str, reason: str) -> None:
        self._conditional_update(
            "recording an outcome",
            Key=_delivery_key(delivery_id),
            ConditionExpression="attribute_exists(pk)",
            UpdateExpression="SET #state = :ignored, last_error = :reason",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={":ignored": _s("ignored"), ":reason": _s(reason)},
        )

    def get_delivery(self, delivery_id: str) -> DeliveryRow | None:
        item = self._get(_delivery_key(delivery_id), "reading a delivery")
        return self._delivery(item) if item is not None else None

    @staticmethod
    def _delivery(item: Mapping[str, Any]) -> DeliveryRow:
        event_json = _str(item, "event_json")
        return DeliveryRow(
            delivery_id=_str(item, "delivery_id") or "",
            provider=_str(item, "provider") or "",
            event_name=_str(item, "event_name") or "",
            received_at=_num(item, "received_at"),
            route_name=_str(item, "route_name") or "",
            event=event_from_json(event_json) if event_json is not None else None,
            state=cast(DeliveryState, _str(item, "state")),
            attempts=int(_num(item, "attempts")),
            next_attempt_at=_num(item, "next_attempt_at"),
            last_error=_str(item, "last_error"),
            build_id=_str(item, "build_id"),
            repository=_str(item, "repository"),
            sha=_str(item, "sha"),
            request_json=_str(item, "request_json"),
            grant_json=_str(item, "grant_json"),
        )

    def recent_deliveries(
        self, limit: int = 50, *, repository: str | None = None, sha: str | None = None
    ) -> list[DeliveryRow]:
        """Newest first, from the "recent" index one UTC day at a time, back to the retention period.

        The filters are applied by DynamoDB to each day's items (a filter reads what it drops:
        a page filtered to a quiet repository costs the day's deliveries in read units).
        """
        filters: list[str] = []
        values: dict[str, Any] = {}
        if repository:
            filters.append("repository = :repository")
            values[":repository"] = _s(repository)
        if sha:
            filters.append("begins_with(sha, :sha)")
            values[":sha"] = _s(sha.lower())
        now = self._clock()
        found: list[DeliveryRow] = []
        days = int(self._retention // 86_400) + 1
        with self._guard("listing deliveries"):
            for back in range(days + 1):
                query: dict[str, Any] = {
                    "TableName": self._table,
                    "IndexName": RECENT_INDEX,
                    "KeyConditionExpression": "#day = :day",
                    "ExpressionAttributeNames": {"#day": "day"},
                    "ExpressionAttributeValues": {":day": _s(_day(now - back * 86_400)), **values},
                    "ScanIndexForward": False,
                }
                if filters:
                    query["FilterExpression"] = " AND ".join(filters)
                for page in self._client.get_paginator("query").paginate(**query):
                    for item in page.get("Items", []):
                        found.append(self._delivery(item))
                        if len(found) >= limit:
                            return found
        return found

    # --- builds ---------------------------------------------------------------------------------

    @staticmethod
    def _build(item: Mapping[str, Any]) -> TrackedBuild:
        return TrackedBuild(
            build_id=_str(item, "build_id") or "",
            delivery_id=_str(item, "delivery_id") or "",
            provider=_str(item, "provider") or "",
            route_name=_str(item, "route_name") or "",
            event=event_from_json(_str(item, "event_json") or "null"),
            reporter_ref=_str(item, "reporter_ref"),
            last_build_status=_str(item, "last_build_status"),
            last_reported_state=_str(item, "last_reported_state"),
            done=_bool(item, "done"),
            updated_at=_num(item, "updated_at"),
            status_json=_str(item, "status_json"),
            created_at=_num(item, "created_at") if "created_at" in item else None,
        )

    def get_builds(self, build_ids: Sequence[str]) -> dict[str, TrackedBuild]:
        """One consistent GetItem each: a page lists tens, and the task role has no BatchGetItem."""
        found: dict[str, TrackedBuild] = {}
        for build_id in dict.fromkeys(build_ids):
            build = self.get_build(build_id)
            if build is not None:
                found[build_id] = build
        return found

    def _active_items(self, due_before: float | None = None) -> list[dict[str, Any]]:
        condition = "active = :active" + (" AND poll_at <= :now" if due_before is not None else "")
        values: dict[str, Any] = {":active": _s(_ACTIVE)}
        if due_before is not None:
            values[":now"] = _n(due_before)
        with self._guard("listing builds"):
            pages = self._client.get_paginator("query").paginate(
                TableName=self._table,
                IndexName=ACTIVE_INDEX,
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
            return [cast(dict[str, Any], item) for page in pages for item in page.get("Items", [])]

    def active_builds(self) -> list[TrackedBuild]:
        """From the index (eventually consistent: a build finished a moment ago may still be listed)."""
        builds = [self._build(item) for item in self._active_items()]
        return sorted((build for build in builds if not build.done), key=lambda build: build.updated_at)

    def get_build(self, build_id: str) -> TrackedBuild | None:
        item = self._get(_build_key(build_id), "reading a build")
        return self._build(item) if item is not None else None

    def latest_build_of(self, provider: str, repository: str, sha: str) -> TrackedBuild | None:
        with self._guard("reading a build"):
            response = self._client.query(
                TableName=self._table,
                IndexName=COMMIT_INDEX,
                KeyConditionExpression="#commit = :commit",
                ExpressionAttributeNames={"#commit": "commit"},
                ExpressionAttributeValues={":commit": _s(_commit_key(provider, repository, sha))},
                ScanIndexForward=False,
                Limit=1,
            )
        items = response.get("Items", [])
        return self._build(items[0]) if items else None

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
        """Set only the fields given; a finished build leaves the active index and starts its TTL."""
        now = self._clock()
        sets = ["updated_at = :now"]
        removes: list[str] = []
        values: dict[str, Any] = {":now": _n(now)}
        for name, value in (
            ("last_build_status", last_build_status),
            ("last_reported_state", last_reported_state),
            ("reporter_ref", reporter_ref),
            ("status_json", status_json),
        ):
            if value is not None:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = _s(value)
        if done is not None:
            sets.append("done = :done")
            values[":done"] = {"BOOL": done}
            if done:
                sets.append(f"{TTL_ATTRIBUTE} = :expires")
                values[":expires"] = _n(int(now + self._retention))
                removes.append("active")
            else:
                sets.append("active = :active")
                values[":active"] = _s(_ACTIVE)
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        self._conditional_update(
            "updating a build",
            Key=_build_key(build_id),
            ConditionExpression="attribute_exists(pk)",
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
        )

    # --- leases ---------------------------------------------------------------------------------

    def claim_builds(self, owner: str, *, lease_seconds: float, poll_interval: float) -> list[TrackedBuild]:
        """Every running build whose poll slot is due and whose lease is free (or already ours).

        Taking one moves its slot a poll interval on and leases it to `owner`, in one conditional
        update: the replica that wins polls it; the others' conditions fail and they skip it.

        Replicas whose cycles overlap read the same due builds. Walking that list in the same order,
        each would try every build and all but one would fail on each (a failed conditional write
        is still a write: three replicas made 26 claim attempts per build instead of 10). So each
        replica starts at its own place in the list (from its owner name), and stops at the first
        build another replica polled this interval: from there on, that replica is walking. A build
        whose lease is merely held (an event being reported) is skipped, not a reason to stop.
        """
        claimed: list[TrackedBuild] = []
        candidates = self._active_items(due_before=self._clock())
        start = zlib.crc32(owner.encode()) % len(candidates) if candidates else 0
        for candidate in candidates[start:] + candidates[:start]:
            build_id = _str(candidate, "build_id") or ""
            # The time of each claim, not of the walk's start: a walk over hundreds of builds lasts
            # seconds, and a slot or lease dated from its start would already be over for the last.
            now = self._clock()
            item, current = self._claim_build(build_id, owner, now, lease_seconds, poll_interval)
            if item is not None:
                claimed.append(self._build(item))
            elif (
                current is not None
                and _num(current, "poll_at") > now
                and _str(current, "lease_owner") != owner
            ):
                break  # polled this interval by another replica, which walks on from here
        return claimed

    def _claim_build(
        self, build_id: str, owner: str, now: float, lease_seconds: float, poll_interval: float
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(the claimed item, None), or (None, the item as it was when the condition failed)."""
        with self._guard("claiming a build"):
            try:
                response = self._client.update_item(
                    TableName=self._table,
                    Key=_build_key(build_id),
                    ConditionExpression="attribute_exists(active) AND poll_at <= :now"
                    " AND (lease_until <= :now OR lease_owner = :me)",
                    UpdateExpression="SET poll_at = :next, lease_owner = :me, lease_until = :until",
                    ExpressionAttributeValues={
                        ":now": _n(now),
                        ":me": _s(owner),
                        ":next": _n(now + poll_interval),
                        ":until": _n(now + lease_seconds),
                    },
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except botocore.exceptions.ClientError as exc:
                if _is_condition_failure(exc):
                    return None, cast(dict[str, Any] | None, exc.response.get("Item"))
                raise
        return cast(dict[str, Any], response.get("Attributes", {})), None

    def lock_build(self, build_id: str, owner: str, *, lease_seconds: float) -> TrackedBuild | None:
        now = self._clock()
        item = self._conditional_update(
            "leasing a build",
            Key=_build_key(build_id),
            ConditionExpression="attribute_exists(pk) AND (lease_until <= :now OR lease_owner = :me)",
            UpdateExpression="SET lease_owner = :me, lease_until = :until",
            ExpressionAttributeValues={
                ":now": _n(now),
                ":me": _s(owner),
                ":until": _n(now + lease_seconds),
            },
            ReturnValues="ALL_NEW",
        )
        return self._build(item) if item is not None else None

    def release_build(self, build_id: str, owner: str) -> None:
        """Give the lease back early; only its holder can (a lease taken over meanwhile is not ours)."""
        self._conditional_update(
            "releasing a build",
            Key=_build_key(build_id),
            ConditionExpression="lease_owner = :me",
            UpdateExpression="SET lease_until = :zero",
            ExpressionAttributeValues={":me": _s(owner), ":zero": _n(0)},
        )

    # --- health -----------------------------------------------------------------------------------

    # --- approvals ------------------------------------------------------------------------------

    def record_approval(self, provider: str, repository: str, number: int, sha: str, by: str) -> None:
        """One item per change, overwritten by each approval; it expires like a delivery does."""
        now = self._clock()
        with self._guard("recording an approval"):
            self._client.put_item(
                TableName=self._table,
                Item={
                    **_approval_key(provider, repository, number),
                    "sha": _s(sha),
                    "approved_by": _s(by),
                    "approved_at": _n(now),
                    TTL_ATTRIBUTE: _n(int(now + self._retention)),
                },
            )

    def approved_sha(self, provider: str, repository: str, number: int) -> str | None:
        item = self._get(_approval_key(provider, repository, number), "reading an approval")
        return _str(item, "sha") if item is not None else None

    def counts(self) -> dict[str, int]:
        """Deliveries by state and builds by activity, from a table scan cached for 30 s.

        A scan reads the whole table; the cache keeps a scraper polling /metrics every few seconds
        from multiplying that cost.
        """
        with self._counts_lock:
            now = self._clock()
            if self._counts is not None and now - self._counts[0] < COUNTS_CACHE_SECONDS:
                return dict(self._counts[1])
            result = {f"deliveries_{state}": 0 for state in get_args(DeliveryState)}
            result |= {"builds_active": 0, "builds_done": 0}
            with self._guard("counting"):
                pages = self._client.get_paginator("scan").paginate(
                    TableName=self._table,
                    ProjectionExpression="pk, #state, done",
                    ExpressionAttributeNames={"#state": "state"},
                )
                for page in pages:
                    for item in page.get("Items", []):
                        key = _str(item, "pk") or ""
                        if key.startswith("d#"):
                            name = f"deliveries_{_str(item, 'state')}"
                            if name in result:
                                result[name] += 1
                        elif key.startswith("b#"):
                            result["builds_done" if _bool(item, "done") else "builds_active"] += 1
            self._counts = (now, result)
            return dict(result)

    def writable(self) -> bool:
        """A real conditional-free write of one small item: what an unreachable table or a role without
        dynamodb:PutItem fails, unlike DescribeTable."""
        now = self._clock()
        try:
            self._client.put_item(
                TableName=self._table,
                Item={"pk": _s("probe"), "written_at": _n(now), TTL_ATTRIBUTE: _n(int(now + 86_400))},
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False
        return True

    def release_claims(self) -> int:
        """Nothing to release: the table is shared, so a claim held now may be a live replica's."""
        return 0

    def close(self) -> None:
        return None
