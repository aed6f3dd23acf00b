"""What sits between intake (the webhook answer) and the worker (StartBuild): a queue of delivery ids.

The store holds each delivery's state; the queue only says "this delivery needs work". Two kinds:

- `LocalQueue` (SQLite, one process): the deliveries table *is* the queue. Claiming due pending rows
  with a lease is what the worker always did; the app wakes the worker thread directly.
- `SqsQueue` (several replicas): the app sends the delivery id to SQS after the row is committed;
  whichever replica receives the message claims the row (a conditional write: one claimant at a
  time), starts the build, and deletes the message. A replica that dies mid-delivery never deletes
  it, so it reappears after the visibility timeout for another; a message that keeps failing is
  moved to the dead-letter queue by SQS's redrive policy. SQS may deliver a message twice; the
  store's claim makes the second copy a no-op, and the CodeBuild idempotency token derived from the
  delivery id is the backstop if a replica died between StartBuild and recording the build.
  Sending is on the webhook sender's clock, so it has short deadlines and answers 503 when SQS does
  not; a row stored without its message is then found in the store by a worker (`SqsQueue._sweep`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import botocore.exceptions

from bridge.errors import BridgeError
from bridge.store import PendingDelivery, StateStore

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

__all__ = ["DeliveryQueue", "Job", "LocalQueue", "QueueError", "SqsQueue", "message_body"]

log = logging.getLogger("bridge.queue")

MAX_VISIBILITY_SECONDS: Final = 43_200  # SQS's ceiling (12 hours)
MAX_WAIT_SECONDS: Final = 20  # SQS's long-poll ceiling
SEND_ATTEMPTS: Final = 2
SEND_TIMEOUT_SECONDS: Final = 2.0  # connect and read, each attempt: well inside a sender's 10 s
RECEIVE_MARGIN: Final = 5.0  # a receive's read deadline beyond its long poll
SEND_HINT: Final = (
    "the delivery is stored: a worker starts it even so, within about two visibility timeouts;"
    " check queue.url, the network path to SQS and the task role's sqs permissions"
)
_MESSAGE_VERSION: Final = 1


class QueueError(BridgeError):
    """The queue cannot be reached; the delivery is already stored, so the sender's retry completes it."""

    http_status = 503
    retryable = True
    default_hint = "check the queue URL and the task role's sqs permissions; the sender will retry"


@dataclass(frozen=True)
class Job:
    """One claimed delivery, and how to acknowledge it (an SQS receipt handle; None in-process)."""

    pending: PendingDelivery
    receipt: str | None = None


class DeliveryQueue(Protocol):
    """Intake enqueues; any worker takes, then marks each job done or due again later."""

    @property
    def long_polls(self) -> bool:
        """True when `take` can wait for work itself (the worker then waits in it instead of sleeping)."""
        ...

    def enqueue(self, delivery_id: str) -> None: ...

    def nudge(self, delivery_id: str) -> None:
        """A redelivery of a known id: make sure a still-pending original has a message to be found by."""
        ...

    def take(self, limit: int, *, lease_seconds: float, wait_seconds: float = 0.0) -> list[Job]: ...

    def done(self, job: Job) -> None: ...

    def retry(self, job: Job, delay_seconds: float) -> None: ...


def message_body(delivery_id: str) -> str:
    return json.dumps({"delivery_id": delivery_id, "v": _MESSAGE_VERSION}, separators=(",", ":"))


def _delivery_id_of(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("delivery_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


class LocalQueue:
    """The SQLite store's pending rows, claimed with a lease, as the worker has always drained them."""

    long_polls = False

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def enqueue(self, delivery_id: str) -> None:
        return None  # the committed row is the message

    def nudge(self, delivery_id: str) -> None:
        return None

    def take(self, limit: int, *, lease_seconds: float, wait_seconds: float = 0.0) -> list[Job]:
        return [Job(pending) for pending in self._store.claim_pending(limit, lease_seconds=lease_seconds)]

    def done(self, job: Job) -> None:
        return None  # the row's state already says so

    def retry(self, job: Job, delay_seconds: float) -> None:
        return None  # mark_retry moved the row's next attempt


class SqsQueue:
    """Delivery ids on an SQS queue (standard or FIFO), claimed in the shared store on receipt."""

    long_polls = True

    def __init__(
        self,
        url: str,
        store: StateStore,
        *,
        client: SQSClient | None = None,
        region: str | None = None,
        visibility_timeout: int = 60,
        max_wait_seconds: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`visibility_timeout` is also the store lease on a received delivery: one clock for both.

        `client`: one client for every call (tests); by default sending, which a webhook sender
        waits on, gets a client of its own with two short attempts (a 503 inside GitHub's 10 s
        rather than botocore's eight attempts of up to 60 s each), and receiving one whose read
        deadline outlasts its long poll.
        """
        self._max_wait = max(0, min(max_wait_seconds, MAX_WAIT_SECONDS))
        if client is None:
            from bridge import aws

            client = aws.client("sqs", region=region, max_attempts=3, timeout=self._max_wait + RECEIVE_MARGIN)
            self._send_client = aws.client(
                "sqs", region=region, max_attempts=SEND_ATTEMPTS, timeout=SEND_TIMEOUT_SECONDS
            )
        else:
            self._send_client = client
        self._client = client
        self._url = url
        self._store = store
        self._visibility = max(1, min(visibility_timeout, MAX_VISIBILITY_SECONDS))
        self._fifo = url.endswith(".fifo")
        self._clock = clock
        self._next_sweep = 0.0  # the first take looks for overdue deliveries (e.g. after a restart)

    def _call(self, action: str, call: Callable[[], object], *, hint: str | None = None) -> None:
        try:
            call()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            code = (
                exc.response.get("Error", {}).get("Code", "error")
                if isinstance(exc, botocore.exceptions.ClientError)
                else type(exc).__name__
            )
            raise QueueError(f"delivery queue: {action} failed: {code}", hint=hint) from None

    def enqueue(self, delivery_id: str) -> None:
        body = message_body(delivery_id)
        if self._fifo:
            # Same id, same group: SQS's own 5-minute deduplication drops an immediate repeat.
            digest = hashlib.sha256(delivery_id.encode()).hexdigest()
            self._call(
                "sending",
                lambda: self._send_client.send_message(
                    QueueUrl=self._url,
                    MessageBody=body,
                    MessageGroupId=digest[:64],
                    MessageDeduplicationId=digest[:128],
                ),
                hint=SEND_HINT,
            )
        else:
            self._call(
                "sending", lambda: self._send_client.send_message(QueueUrl=self._url, MessageBody=body)
            )

    def nudge(self, delivery_id: str) -> None:
        """The original may have been stored by a replica that died before it could send the message."""
        row = self._store.get_delivery(delivery_id)
        if row is not None and row.state == "pending":
            self.enqueue(delivery_id)

    def take(self, limit: int, *, lease_seconds: float, wait_seconds: float = 0.0) -> list[Job]:
        """At most one received message whose delivery this replica could claim; others are settled
        here: deleted when their delivery is finished (a duplicate), hidden until due when it is
        leased elsewhere or waiting for a retry.

        One at a time, whatever `limit` says: a claim lasts one visibility timeout, so a replica
        must never hold more deliveries than it is working on (a batch of ten behind slow status
        posts would outlive its leases and be started twice); idle replicas take the rest.
        """
        overdue = self._sweep()
        if overdue:
            return overdue
        wait = max(0, min(self._max_wait, math.floor(wait_seconds)))
        try:
            response = self._client.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=wait,
                VisibilityTimeout=self._visibility,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise QueueError(f"delivery queue: receiving failed: {type(exc).__name__}") from None
        jobs: list[Job] = []
        for message in response.get("Messages", []):
            receipt = message["ReceiptHandle"]
            delivery_id = _delivery_id_of(message.get("Body", ""))
            if delivery_id is None:
                # Not ours to interpret: after maxReceiveCount receives, SQS moves it to the DLQ.
                log.warning("queue message is not a delivery; leaving it for the dead-letter queue")
                continue
            pending = self._store.claim_delivery(delivery_id, lease_seconds=self._visibility)
            if pending is not None:
                jobs.append(Job(pending, receipt))
                continue
            row = self._store.get_delivery(delivery_id)
            if row is None or row.state != "pending":
                self._delete(receipt)  # finished (or expired): this copy has nothing left to do
            else:
                self._hide(receipt, row.next_attempt_at - self._clock())
        return jobs

    def _sweep(self) -> list[Job]:
        """A delivery stored without a message (its enqueue failed, the sender was told 503) is
        still built: once per visibility timeout, a delivery overdue by one is claimed from the
        store directly, and sent a message again so its retries, if any, go through the queue.
        Store and queue errors here are logged and left to the next sweep: receiving goes on.
        """
        now = self._clock()
        if now < self._next_sweep:
            return []
        try:
            found = self._store.claim_overdue(
                1, lease_seconds=self._visibility, overdue_seconds=self._visibility
            )
        except BridgeError as exc:
            log.warning("looking for deliveries without a queue message failed", extra={"error": exc.message})
            found = []
        if not found:
            self._next_sweep = now + self._visibility  # while it finds some, it looks again next time
            return []
        pending = found[0]
        log.warning(
            "a delivery had no queue message; started from the store", extra={"delivery": pending.delivery_id}
        )
        try:
            self.enqueue(pending.delivery_id)
        except QueueError as exc:
            log.warning(
                "could not send the delivery a message; a later sweep finds it", extra={"error": exc.message}
            )
        return [Job(pending)]

    def done(self, job: Job) -> None:
        if job.receipt is not None:
            self._delete(job.receipt)

    def retry(self, job: Job, delay_seconds: float) -> None:
        if job.receipt is not None:
            self._hide(job.receipt, delay_seconds)

    def _delete(self, receipt: str) -> None:
        self._call(
            "deleting a message",
            lambda: self._client.delete_message(QueueUrl=self._url, ReceiptHandle=receipt),
        )

    def _hide(self, receipt: str, seconds: float) -> None:
        timeout = max(1, min(MAX_VISIBILITY_SECONDS, math.ceil(seconds)))
        self._call(
            "delaying a message",
            lambda: self._client.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=receipt, VisibilityTimeout=timeout
            ),
        )
