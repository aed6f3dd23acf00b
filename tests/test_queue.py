"""The delivery queue: in-process over SQLite, and SQS (moto server) over the shared DynamoDB store.

SQS tests use short visibility timeouts and the real clock: what they prove is exactly what SQS
and the store do with time (a message reappears, a lease runs out), so nothing is faked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from bridge import events
from bridge.model import BuildStatus, SourceEvent
from bridge.queue import Job, LocalQueue, QueueError, SqsQueue, message_body
from bridge.store import Store
from bridge.store_dynamodb import DynamoStore, create_table
from bridge.worker import Worker
from tests.e2e.support import github_payload, make_config, make_services, secret_env
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.test_store_dynamodb import EVENT, AtomicDynamoDB, dynamodb_client

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

REGION = "eu-west-1"


def sqs_client(moto_url: str) -> SQSClient:
    return boto3.client(
        "sqs",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def atomic_dynamodb() -> Iterator[str]:
    server = AtomicDynamoDB().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def dynamodb_url(moto_url: str, atomic_dynamodb: str) -> str:
    return atomic_dynamodb


@pytest.fixture
def shared(dynamodb_url: str) -> DynamoStore:
    table = f"bridge-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb_client(dynamodb_url), table)
    return DynamoStore(table, client=dynamodb_client(dynamodb_url))


@pytest.fixture
def queues(moto_url: str) -> dict[str, str]:
    """A delivery queue whose messages go to a dead-letter queue after two receives."""
    sqs = sqs_client(moto_url)
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName="deliveries",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})},
    )["QueueUrl"]
    return {"url": url, "dlq": dlq}


def replica(moto_url: str, queues: dict[str, str], store: DynamoStore, visibility: int = 30) -> SqsQueue:
    return SqsQueue(queues["url"], store, client=sqs_client(moto_url), visibility_timeout=visibility)


def depth(moto_url: str, url: str) -> int:
    attributes = sqs_client(moto_url).get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def accept(store: DynamoStore | Any, delivery_id: str, event: SourceEvent = EVENT) -> None:
    assert store.add_delivery(delivery_id, event.provider, event.event_name, "web", event)


def take_one(queue: SqsQueue, wait: float = 0.0) -> list[Job]:
    return queue.take(10, lease_seconds=30, wait_seconds=wait)


# --- in-process --------------------------------------------------------------------------------------


def test_local_queue_is_the_sqlite_stores_pending_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "bridge.sqlite3")
    queue = LocalQueue(store)
    assert queue.long_polls is False
    accept(store, "d-1")
    queue.enqueue("d-1")  # nothing to send: the committed row is the message
    (job,) = queue.take(10, lease_seconds=60)
    assert (job.pending.delivery_id, job.pending.attempts, job.receipt) == ("d-1", 1, None)
    assert queue.take(10, lease_seconds=60) == []  # leased
    store.mark_started("d-1", "proj:b1")
    queue.done(job)
    assert store.get_delivery("d-1").state == "started"  # type: ignore[union-attr]
    store.close()


# --- SQS -----------------------------------------------------------------------------------------------


def test_a_message_carries_the_delivery_id_and_is_deleted_once_done(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    queue = replica(moto_url, queues, shared)
    accept(shared, "d-1")
    queue.enqueue("d-1")
    peek = sqs_client(moto_url).receive_message(QueueUrl=queues["url"], VisibilityTimeout=0)
    assert json.loads(peek["Messages"][0]["Body"]) == {"delivery_id": "d-1", "v": 1}
    (job,) = take_one(queue)
    assert (job.pending.delivery_id, job.pending.event, job.pending.attempts) == ("d-1", EVENT, 1)
    assert job.receipt
    shared.mark_started("d-1", "proj:b1")
    queue.done(job)
    assert depth(moto_url, queues["url"]) == 0


def test_another_replica_sees_nothing_while_a_delivery_is_worked_on(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    a, b = replica(moto_url, queues, shared), replica(moto_url, queues, shared)
    accept(shared, "d-1")
    a.enqueue("d-1")
    assert len(take_one(a)) == 1
    assert take_one(b) == []
    assert depth(moto_url, queues["url"]) == 1  # in flight, not lost


def test_a_replica_that_dies_mid_delivery_leaves_it_to_reappear_for_another(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    dying = replica(moto_url, queues, shared, visibility=1)
    survivor = replica(moto_url, queues, shared, visibility=30)
    accept(shared, "d-1")
    dying.enqueue("d-1")
    assert len(take_one(dying)) == 1  # ...and it never calls done: SIGKILL
    (job,) = take_one(survivor, wait=10)  # a long poll: answered once the message reappears (1 s)
    assert (job.pending.delivery_id, job.pending.attempts) == ("d-1", 2)


def test_a_duplicate_message_of_a_finished_delivery_is_deleted_without_work(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    queue = replica(moto_url, queues, shared)
    accept(shared, "d-1")
    shared.mark_started("d-1", "proj:b1")
    queue.enqueue("d-1")  # SQS delivered twice, or a redelivery re-sent it
    assert take_one(queue) == []
    assert depth(moto_url, queues["url"]) == 0


def test_a_duplicate_message_while_the_delivery_is_leased_waits_for_the_lease(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    a, b = replica(moto_url, queues, shared, visibility=2), replica(moto_url, queues, shared, visibility=2)
    accept(shared, "d-1")
    a.enqueue("d-1")
    a.enqueue("d-1")
    (job,) = take_one(a)
    assert take_one(b) == []  # the copy is hidden until the lease ends, not deleted
    assert depth(moto_url, queues["url"]) == 2
    shared.mark_started("d-1", "proj:b1")
    a.done(job)
    deadline = time.monotonic() + 30
    while depth(moto_url, queues["url"]):  # the copy comes back after the lease (2 s)...
        assert time.monotonic() < deadline, "the copy never came back"
        assert take_one(b, wait=1) == []  # ...finds the delivery started, and goes


def test_retry_hides_the_message_until_the_retry_is_due(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    queue = replica(moto_url, queues, shared)
    accept(shared, "d-1")
    queue.enqueue("d-1")
    (job,) = take_one(queue)
    shared.mark_retry("d-1", "ThrottlingException", 1)
    queue.retry(job, 1)
    assert take_one(queue) == []
    (again,) = take_one(queue, wait=10)  # a long poll: answered once the retry is due (1 s)
    assert again.pending.attempts == 2


def test_a_message_nobody_can_handle_ends_in_the_dead_letter_queue(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    queue = replica(moto_url, queues, shared, visibility=1)
    sqs_client(moto_url).send_message(QueueUrl=queues["url"], MessageBody="not a delivery")
    deadline = time.monotonic() + 30
    while not depth(moto_url, queues["dlq"]):  # received twice (each after its 1 s hidden), then moved
        assert time.monotonic() < deadline, "never moved to the dead-letter queue"
        assert take_one(queue, wait=2) == []
    assert depth(moto_url, queues["url"]) == 0
    assert depth(moto_url, queues["dlq"]) == 1


def test_nudge_re_sends_only_a_delivery_still_pending(
    moto_url: str, queues: dict[str, str], shared: DynamoStore
) -> None:
    queue = replica(moto_url, queues, shared)
    accept(shared, "stored-then-crashed")  # a replica died between the commit and the send
    accept(shared, "started")
    shared.mark_started("started", "proj:b1")
    queue.nudge("stored-then-crashed")
    queue.nudge("started")
    queue.nudge("unknown")
    (job,) = take_one(queue)
    assert job.pending.delivery_id == "stored-then-crashed"
    assert depth(moto_url, queues["url"]) == 1


def test_a_delivery_stored_without_a_message_is_claimed_from_the_store_once_overdue(
    moto_url: str, queues: dict[str, str], dynamodb_url: str
) -> None:
    """Its enqueue failed after the row was stored (the sender got a 503): no message will ever come."""
    now = [1_000_000.0]
    table = f"bridge-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb_client(dynamodb_url), table)
    store = DynamoStore(table, client=dynamodb_client(dynamodb_url), clock=lambda: now[0])
    queue = SqsQueue(
        queues["url"], store, client=sqs_client(moto_url), visibility_timeout=30, clock=lambda: now[0]
    )
    accept(store, "stranded")
    assert take_one(queue) == []  # not overdue yet: a message may still be on its way
    now[0] += 31
    (job,) = take_one(queue)
    assert (job.pending.delivery_id, job.receipt) == ("stranded", None)
    assert depth(moto_url, queues["url"]) == 1  # sent a message again, for its retries if any


def test_a_fifo_queue_drops_an_immediate_resend(moto_url: str, shared: DynamoStore) -> None:
    sqs = sqs_client(moto_url)
    url = sqs.create_queue(QueueName="deliveries.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    queue = SqsQueue(url, shared, client=sqs)
    accept(shared, "d-1")
    queue.enqueue("d-1")
    queue.enqueue("d-1")
    assert depth(moto_url, url) == 1


def test_an_unreachable_queue_is_a_retryable_503_with_a_hint(moto_url: str, shared: DynamoStore) -> None:
    queue = SqsQueue(
        f"{moto_url}/123456789012/no-such-queue", shared, client=sqs_client(moto_url), visibility_timeout=5
    )
    with pytest.raises(QueueError, match="sending failed") as caught:
        queue.enqueue("d-1")
    assert caught.value.http_status == 503
    assert "sqs permissions" in caught.value.hint
    assert message_body("d-1") not in str(caught.value)


# --- two workers, one fleet ----------------------------------------------------------------------------


class Recorder:
    """A status reporter that remembers what it posted, per build."""

    def __init__(self) -> None:
        self.created: list[str] = []  # a check run / first status per call
        self.posts: list[tuple[str, str]] = []

    def __call__(self, event: SourceEvent, route: Any) -> Recorder:
        return self

    def start(self, status: BuildStatus) -> str | None:
        self.created.append(status.build_id)
        self.posts.append((status.build_id, status.state))
        return status.build_id

    def update(self, ref: str, status: BuildStatus) -> str | None:
        self.posts.append((ref, status.state))
        return ref


@pytest.fixture
def fleet(
    tmp_path: Path,
    aws_env: dict[str, str],
    moto_url: str,
    queues: dict[str, str],
    shared: DynamoStore,
    codebuild_double: CodeBuildDouble,
) -> tuple[list[Worker], Recorder, SqsQueue]:
    config = make_config(tmp_path)
    recorder = Recorder()
    workers = []
    for _ in range(2):
        services = make_services(config, environ=secret_env(), reporters=recorder)
        services.store.close()
        services = replace(services, store=shared, queue=replica(moto_url, queues, shared))
        workers.append(Worker(services, poll_interval=3600, lease_seconds=30))
    return workers, recorder, replica(moto_url, queues, shared)


def test_two_workers_start_each_delivery_once_and_split_the_polls(
    fleet: tuple[list[Worker], Recorder, SqsQueue], shared: DynamoStore, codebuild_double: CodeBuildDouble
) -> None:
    workers, recorder, queue = fleet
    event = events.from_github("push", github_payload("push", None, 4))  # route "hello" builds it
    assert isinstance(event, SourceEvent)
    for index in range(8):
        shared.add_delivery(f"d-{index}", "github", "push", "hello", event)
        queue.enqueue(f"d-{index}")
        if index % 4 == 0:
            queue.enqueue(f"d-{index}")  # SQS may deliver a message twice
    started = [workers[index % 2].drain_pending() for index in range(4)]
    assert sum(started) == 8
    tokens = Counter(call.params["idempotencyToken"] for call in codebuild_double.calls("StartBuild"))
    assert len(tokens) == 8
    assert set(tokens.values()) == {1}  # one StartBuild per delivery, duplicates and all
    assert len(shared.active_builds()) == 8

    # One poll interval (an hour here): the first worker polls every build; the second, none.
    workers[0].track_builds()
    workers[1].track_builds()
    polled = Counter(
        build_id for call in codebuild_double.calls("BatchGetBuilds") for build_id in call.params["ids"]
    )
    assert len(polled) == 8
    assert set(polled.values()) == {1}
    assert sorted(recorder.created) == sorted(polled)  # one first status per build, from its starter
