"""Three real `bridge serve` processes sharing one DynamoDB table and one SQS queue (moto), the
CodeBuild double and the fake GitHub/GitLab APIs: the short CI profile of bench/replicas.py.

Signed deliveries go round-robin to the replicas, some are redelivered to a different replica, and
one replica is SIGKILLed while it is inside a StartBuild (throttled, so the kill lands mid-delivery
for certain) and while it holds build polls. Each replica names itself in its AWS user agent
(AWS_SDK_UA_APP_ID), which is how the test knows whose StartBuild it is watching.

Then: one CodeBuild build per distinct delivery (a repeated StartBuild may only repeat the same
idempotency token), one completed check run per GitHub build, final GitLab statuses, empty queues
and dead-letter queue.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import boto3
import pytest

from bridge.store_dynamodb import create_table
from tests.e2e.support import config_text, github_payload, gitlab_payload, secret_env
from tests.e2e.test_server import (
    Sent,
    Server,
    expected_request,
    free_port,
    github_sent,
    gitlab_histories,
    gitlab_sent,
    wait_for,
)
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab
from tests.plugins.aws import REGION

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

REPLICAS = 3
# GitHub check runs are written at most once a second per replica (GitHub's advice against secondary
# rate limits), so most deliveries are GitLab pushes, each of its own commit (statuses are per commit).
GITHUB_DELIVERIES = 4
GITLAB_DELIVERIES = 26
REDELIVERED = 3  # 10%
VISIBILITY_SECONDS = 5
LEASE_SECONDS = 3
DEAD_LETTER_AFTER = 5
FINISH_TIMEOUT = 60.0


class Fleet:
    """The replicas, their shared AWS resources, and what was sent where."""

    def __init__(self, servers: list[Server], queue_url: str, dlq_url: str, table: str) -> None:
        self.servers = servers
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.table = table
        self.sqs = boto3.client("sqs", region_name=REGION)

    def live(self) -> list[Server]:
        return [server for server in self.servers if server.process is not None]

    def depth(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def fleet(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Fleet]:
    atomic = AtomicDynamoDBProcess()
    try:
        table = f"bridge-{uuid.uuid4().hex[:8]}"
        create_table(boto3.client("dynamodb", region_name=REGION, endpoint_url=atomic.url), table)
        sqs = boto3.client("sqs", region_name=REGION)
        dlq_url = sqs.create_queue(QueueName="bridge-deliveries-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        queue_url = sqs.create_queue(
            QueueName="bridge-deliveries",
            Attributes={
                "VisibilityTimeout": str(VISIBILITY_SECONDS),
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(DEAD_LETTER_AFTER)}
                ),
            },
        )["QueueUrl"]
        config_path = tmp_path / "bridge.toml"
        config_path.write_text(
            config_text(github_url=github_api.url, gitlab_url=gitlab_api.url, refs="env")
            + f"""
[store]
backend = "dynamodb"
table = "{table}"
lease_seconds = {LEASE_SECONDS}

[queue]
url = "{queue_url}"
visibility_timeout_seconds = {VISIBILITY_SECONDS}
wait_seconds = 1
"""
        )
        base_env = {
            **os.environ,
            **aws_env,
            **secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token),
            "AWS_ENDPOINT_URL_DYNAMODB": atomic.url,
            "PYTHONUNBUFFERED": "1",
        }
        servers = [
            Server(
                config_path,
                tmp_path / f"replica-{index}.log",
                {**base_env, "AWS_SDK_UA_APP_ID": f"replica-{index}"},
                free_port(),
            )
            for index in range(REPLICAS)
        ]
        try:
            starters = [threading.Thread(target=server.start) for server in servers]
            for starter in starters:
                starter.start()
            for starter in starters:
                starter.join()
            for server in servers:
                assert server.ready()
            yield Fleet(servers, queue_url, dlq_url, table)
        finally:
            for server in servers:
                server.stop_hard()
    finally:
        atomic.stop()


def gitlab_push_of(index: int) -> dict[str, Any]:
    """GitLab's documented push, moved to a commit of its own."""
    payload = gitlab_payload("push")
    sha = hashlib.sha1(f"commit-{index}".encode()).hexdigest()  # noqa: S324 - a made-up commit id
    payload["after"] = payload["checkout_sha"] = sha
    return payload


class AtomicDynamoDBProcess:
    """tests.test_store_dynamodb.AtomicDynamoDB in a process of its own: moto's DynamoDB is slow
    Python, and three replicas' worth of requests should not queue behind this test's other fakes
    for one interpreter lock. Killed by PID at teardown. It serves every moto service (requests
    other than DynamoDB's run concurrently), so bench/replicas.py also runs SQS in one of these.
    """

    def __init__(self, *, transactions: str = "moto") -> None:
        code = (
            "import sys, time; from tests.test_store_dynamodb import AtomicDynamoDB;"
            f" s = AtomicDynamoDB(transactions={transactions!r}).start(); print(s.url, flush=True);"
            " time.sleep(7200)"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def stats(self) -> dict[str, dict[str, float]]:
        """Requests by operation so far: count, waited_seconds, served_seconds, max_served_seconds."""
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=10) as response:
            return cast(dict[str, dict[str, float]], json.load(response))

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def replica_of(user_agent: str) -> int | None:
    for part in user_agent.split():
        if part.startswith("app/replica-"):
            return int(part.removeprefix("app/replica-"))
    return None


def test_three_replicas_start_each_delivery_once_through_a_sigkill(
    fleet: Fleet, codebuild_double: CodeBuildDouble, github_api: FakeGitHub, gitlab_api: FakeGitLab
) -> None:
    github = [
        github_sent("push", github_payload("push", None, 4), f"gh-push-{index}")
        if index % 2
        else github_sent("pull_request", github_payload("pull_request", "opened", 1), f"gh-pr-{index}")
        for index in range(GITHUB_DELIVERIES)
    ]
    gitlab = [gitlab_sent(gitlab_push_of(index), f"gl-push-{index}") for index in range(GITLAB_DELIVERIES)]
    everything = [item for pair in zip(gitlab[: len(github)], github, strict=True) for item in pair]
    everything += gitlab[len(github) :]
    first, mid_flight, rest = everything[:20], everything[20], everything[21:]
    sent_to: dict[str, int] = {}

    def first_statuses(batch: list[Sent]) -> bool:
        pending = {sha for _project, sha, _name, state in gitlab_api.transitions if state == "pending"}
        shas = {str(item.payload["checkout_sha"]) for item in batch if item.provider == "gitlab"}
        github_count = sum(item.provider == "github" for item in batch)
        return len(github_api.check_runs) == github_count and shas <= pending

    def post_all(batch: list[Sent], targets: list[Server]) -> None:
        def post(pair: tuple[int, Sent]) -> None:
            index, item = pair
            server = targets[index % len(targets)]
            sent_to[item.delivery_id] = fleet.servers.index(server)
            status, body = server.post(item.delivery)
            assert (status, body.get("delivery")) == (202, item.delivery_id), body

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(post, enumerate(batch)))

    # 1. Twenty deliveries spread over the three replicas; all build and get their first status.
    post_all(first, fleet.servers)
    wait_for(
        lambda: first_statuses(first), FINISH_TIMEOUT, "twenty first statuses", fleet.servers[0].log_path
    )

    # 2. The next delivery's StartBuild is throttled; SIGKILL whichever replica is inside it.
    throttled_before = len(codebuild_double.calls("StartBuild"))
    # A 500 is retried by botocore (a throttle would also slow every later call: adaptive mode's rate
    # limiter). Few of them: a survivor's retries stay well inside the visibility timeout.
    codebuild_double.fail("StartBuild", "InternalFailure", count=3, status=500)
    post_all([mid_flight], fleet.servers)

    def throttled_replica() -> int | None:
        for call in codebuild_double.calls("StartBuild")[throttled_before:]:
            if call.error_code == "InternalFailure":
                return replica_of(call.user_agent)
        return None

    deadline = time.monotonic() + FINISH_TIMEOUT
    while (victim := throttled_replica()) is None:  # a tight loop: kill before the retry succeeds
        assert time.monotonic() < deadline, "no throttled StartBuild"
        time.sleep(0.005)
    fleet.servers[victim].stop_hard()  # mid-delivery, and holding whatever polls it had claimed

    # 3. The rest go to the survivors, and 10% are redelivered to a replica other than the first.
    survivors = fleet.live()
    post_all(rest, survivors)
    for item in everything[:: len(everything) // REDELIVERED][:REDELIVERED]:
        target = next(
            server for server in survivors if fleet.servers.index(server) != sent_to[item.delivery_id]
        )
        assert target.post(item.delivery) == (200, {"duplicate": item.delivery_id})

    def finished() -> bool:
        runs = list(github_api.check_runs.values())
        histories = gitlab_histories(gitlab_api)
        return (
            len(runs) == GITHUB_DELIVERIES
            and all(run["status"] == "completed" for run in runs)
            and len(histories) == GITLAB_DELIVERIES
            and all(states[-1] in ("success", "failed", "canceled") for states in histories.values())
        )

    wait_for(finished, FINISH_TIMEOUT, "every status to be final", survivors[0].log_path)
    wait_for(lambda: fleet.depth(fleet.queue_url) == 0, FINISH_TIMEOUT, "the delivery queue to drain")

    # Exactly one StartBuild per distinct delivery: every successful call carried a planned token, once.
    started = [call for call in codebuild_double.calls("StartBuild") if call.status == 200]
    per_token = Counter(call.params["idempotencyToken"] for call in started)
    expected = {expected_request(fleet.servers[0], item)["idempotencyToken"] for item in everything}
    assert set(per_token) == expected
    assert set(per_token.values()) == {1}
    build_ids = {run["external_id"] for run in github_api.check_runs.values()}
    assert len(build_ids) == GITHUB_DELIVERIES  # one check run per build, none doubled
    assert {run["conclusion"] for run in github_api.check_runs.values()} == {"success"}
    assert fleet.depth(fleet.dlq_url) == 0
    # The killed replica really died mid-delivery: a survivor started that delivery's build.
    token = expected_request(fleet.servers[0], mid_flight)["idempotencyToken"]
    (rescue,) = [call for call in started if call.params["idempotencyToken"] == token]
    assert replica_of(rescue.user_agent) not in (victim, None)
    # Every replica's worker started builds (any replica takes any delivery).
    assert {replica_of(call.user_agent) for call in started} == set(range(REPLICAS))
