"""Throughput of one, two and three `bridge serve` replicas on DynamoDB + SQS (moto), and the
exactly-once check at scale: the long profile of tests/e2e/test_replicas.py.

    python -m bench.replicas [--deliveries 1000] [--replicas 1,2,3] [--no-kill]
                             [--poll-interval 5] [--transactions item-undo|moto] [--operations]

For each fleet size: a fresh table and queue (with a dead-letter queue), N real `bridge serve`
processes, then signed GitLab push deliveries (each its own commit) sent round-robin by 16 client
threads; 10% are sent again to a different replica. A last run of the largest fleet SIGKILLs one
replica half way: its delivery in flight reappears after the queue's 30 s visibility timeout, and
the builds it was reporting on are taken over when their leases expire; that run's times include
both.

Measured from the first send: until every distinct delivery has its StartBuild (deliveries per
second started), and until every delivery's commit status on the fake GitLab is final (builds are
tracked all along, every `--poll-interval` seconds, as in production); the ack latency. Checked:
exactly one successful StartBuild per distinct delivery, every status final, the queue drained,
the dead-letter queue empty.

Every AWS call lands on moto, in two processes of their own (DynamoDB, with requests applied one at
a time as DynamoDB applies each item write atomically; SQS and CloudWatch Logs), which count and
time each operation: the table after each run (`--operations`) says where the time went. moto's
TransactWriteItems copies the whole table before it applies anything, so its cost grows with the
table (~0.17 ms per item); `--transactions item-undo` (the default) applies transactions in the test
proxy with per-item undo instead, so that the figures measure the bridge rather than that copy;
`moto` keeps moto's own. Absolute figures measure this machine and moto; the ratio between fleet
sizes is what carries over. BENCH_KEEP=1 keeps the replicas' logs and BENCH_LOG_LEVEL=INFO makes
them say more.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import boto3

from bridge.store_dynamodb import create_table
from tests.e2e.support import config_text, gitlab_delivery, gitlab_payload, secret_env
from tests.e2e.test_replicas import AtomicDynamoDBProcess
from tests.e2e.test_server import Server, free_port, wait_for
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.gitlab_api import FakeGitLab

REGION = "eu-west-1"
CLIENTS = 16
TIMEOUT_SECONDS = 1800.0
FINAL_STATES = ("success", "failed", "canceled")
TOP_OPERATIONS = 12


@dataclass
class Result:
    replicas: int
    deliveries: int
    redelivered: int
    killed: bool
    started_seconds: float
    final_seconds: float
    ack_p50_ms: float
    ack_p99_ms: float
    start_calls: int
    dlq: int
    operations: dict[str, dict[str, float]] = field(default_factory=dict)  # "service Operation" → stats

    @property
    def per_second(self) -> float:
        return self.deliveries / self.started_seconds


class BenchServer(Server):
    """The e2e test's server process, with the benchmark's poll interval and eight threads."""

    poll_interval = 5

    def start(self) -> None:
        command = [sys.executable, "-m", "bridge", "serve", "--config", str(self.config_path)]
        command += [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            "8",
            "--poll-interval",
            str(self.poll_interval),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.ready, 60, "the server to be ready", self.log_path)


def aws_env(moto_url: str, dynamodb_url: str, double_url: str, home: Path) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url,
        "AWS_ENDPOINT_URL_CODEBUILD": double_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "absent"),
    }


def push_of(index: int) -> dict[str, Any]:
    payload = gitlab_payload("push")
    payload["after"] = payload["checkout_sha"] = hashlib.sha1(f"bench-{index}".encode()).hexdigest()  # noqa: S324
    return payload


def operations_between(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], service: str
) -> dict[str, dict[str, float]]:
    """What each operation cost during the run (the stats are totals since the process started)."""
    spent: dict[str, dict[str, float]] = {}
    for name, totals in after.items():
        earlier = before.get(name, {})
        delta = {key: value - earlier.get(key, 0.0) for key, value in totals.items()}
        delta["max_served_seconds"] = totals["max_served_seconds"]
        if delta["count"]:
            spent[f"{service} {name}"] = delta
    return spent


def final_commits(gitlab: FakeGitLab) -> set[str]:
    """Commits whose latest status is final (each delivery is a commit of its own)."""
    latest: dict[str, str] = {}
    for _project, sha, _name, state in list(gitlab.transitions):
        latest[sha] = state
    return {sha for sha, state in latest.items() if state in FINAL_STATES}


def run(
    replicas: int, deliveries: int, *, kill: bool, work: Path, poll_interval: int, transactions: str
) -> Result:
    moto = AtomicDynamoDBProcess()  # SQS and CloudWatch Logs
    dynamodb = AtomicDynamoDBProcess(transactions=transactions)
    session = boto3.session.Session(
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto
    )
    double = CodeBuildDouble(logs=session.client("logs", endpoint_url=moto.url), region=REGION).start()
    gitlab = FakeGitLab()
    gitlab.start()
    servers: list[Server] = []
    try:
        table = f"bench-{uuid.uuid4().hex[:8]}"
        create_table(session.client("dynamodb", endpoint_url=dynamodb.url), table)
        sqs = session.client("sqs", endpoint_url=moto.url)
        dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        queue = sqs.create_queue(
            QueueName="deliveries",
            Attributes={
                "VisibilityTimeout": "30",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "10"}),
            },
        )["QueueUrl"]
        config = work / f"bridge-{replicas}.toml"
        config.write_text(
            config_text(gitlab_url=gitlab.url, refs="env", poll_interval_seconds=poll_interval)
            + f'\n[store]\nbackend = "dynamodb"\ntable = "{table}"\n\n'
            f'[queue]\nurl = "{queue}"\nvisibility_timeout_seconds = 30\nwait_seconds = 5\n'
        )
        env = {
            **os.environ,
            **aws_env(moto.url, dynamodb.url, double.url, work),
            **secret_env(gitlab_token=gitlab.token),
            "BRIDGE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
        BenchServer.poll_interval = poll_interval
        servers = [
            BenchServer(
                config,
                work / f"replica-{replicas}-{index}.log",
                {**env, "AWS_SDK_UA_APP_ID": f"r{index}"},
                free_port(),
            )
            for index in range(replicas)
        ]
        starters = [threading.Thread(target=server.start) for server in servers]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join()

        sent = [
            gitlab_delivery(push_of(index), idempotency_key=f"bench-{index}") for index in range(deliveries)
        ]
        commits = {str(push_of(index)["checkout_sha"]) for index in range(deliveries)}
        repeats = sent[::10][: deliveries // 10] if replicas > 1 else []
        plan = [(index % replicas, item) for index, item in enumerate(sent)]
        plan += [((index + 1) % replicas, item) for index, item in enumerate(repeats)]
        latencies: list[float] = []
        dead: set[int] = set()
        lock = threading.Lock()
        done = 0

        def post(pair: tuple[int, Any]) -> None:
            nonlocal done
            target, item = pair
            began = time.perf_counter()
            while True:
                while target in dead:
                    target = (target + 1) % replicas
                try:
                    status, _body = servers[target].post(item)
                    break
                except OSError:  # the replica was killed under this request: the sender retries
                    target = (target + 1) % replicas
            with lock:
                latencies.append(time.perf_counter() - began)
                done += 1
                if kill and replicas > 1 and done == deliveries // 2 and not dead:
                    dead.add(replicas - 1)
                    servers[replicas - 1].stop_hard()
            assert status in (200, 202), status

        before = {"dynamodb": dynamodb.stats(), "aws": moto.stats()}
        started_at = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            list(pool.map(post, plan))

        def tokens() -> Counter[str]:
            return Counter(
                call.params["idempotencyToken"] for call in double.calls("StartBuild") if call.status == 200
            )

        deadline = time.monotonic() + TIMEOUT_SECONDS
        while len(tokens()) < deliveries:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(tokens())} of {deliveries} builds started")
            time.sleep(0.05)
        started_seconds = time.perf_counter() - started_at
        while not commits <= final_commits(gitlab):
            if time.monotonic() > deadline:
                missing = len(commits - final_commits(gitlab))
                raise SystemExit(f"{missing} of {deliveries} commit statuses are not final")
            time.sleep(0.2)
        final_seconds = time.perf_counter() - started_at
        operations = operations_between(before["dynamodb"], dynamodb.stats(), "DynamoDB")
        operations |= operations_between(before["aws"], moto.stats(), "SQS/Logs")
        per_token = tokens()
        depth = -1
        while depth != 0 and time.monotonic() < deadline:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            depth = sum(int(value) for value in attributes.values())
            time.sleep(0.2)
        dlq_depth = int(
            sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
        )
        if set(per_token.values()) != {1} or len(per_token) != deliveries:
            raise SystemExit(f"a delivery was started twice: {per_token.most_common(3)}")
        if depth != 0:
            raise SystemExit(f"{depth} messages left on the delivery queue")
        quantiles = statistics.quantiles(latencies, n=100)
        return Result(
            replicas=replicas,
            deliveries=deliveries,
            redelivered=len(repeats),
            killed=bool(dead),
            started_seconds=started_seconds,
            final_seconds=final_seconds,
            ack_p50_ms=quantiles[49] * 1000,
            ack_p99_ms=quantiles[98] * 1000,
            start_calls=len(double.calls("StartBuild")),
            dlq=dlq_depth,
            operations=operations,
        )
    finally:
        for server in servers:
            server.stop_hard()
        gitlab.stop()
        double.stop()
        dynamodb.stop()
        moto.stop()


def print_operations(result: Result) -> None:
    """The costliest operations of the run: where moto's time went, per delivery."""
    rows = sorted(result.operations.items(), key=lambda pair: -pair[1]["served_seconds"])
    rows = [(name, stats) for name, stats in rows if not name.endswith("ReceiveMessage")]
    print(f"    {'operation':<38}  calls  per delivery  mean ms  max ms  lock wait ms  total s")
    for name, stats in rows[:TOP_OPERATIONS]:
        count = stats["count"]
        print(
            f"    {name:<38}  {int(count):>5}  {count / result.deliveries:>12.2f}"
            f"  {stats['served_seconds'] / count * 1000:>7.1f}  {stats['max_served_seconds'] * 1000:>6.0f}"
            f"  {stats['waited_seconds'] / count * 1000:>12.1f}  {stats['served_seconds']:>7.1f}"
        )
    receives = result.operations.get("SQS/Logs ReceiveMessage")
    if receives:
        print(f"    (ReceiveMessage: {int(receives['count'])} calls, long polls: their time is waiting)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--replicas", default="1,2,3", help="fleet sizes to measure, e.g. 1,2,3")
    parser.add_argument(
        "--no-kill", action="store_true", help="skip the last run (largest fleet, one replica SIGKILLed)"
    )
    parser.add_argument("--poll-interval", type=int, default=5, help="seconds between build polls")
    parser.add_argument(
        "--transactions",
        choices=("item-undo", "moto"),
        default="item-undo",
        help="who applies TransactWriteItems: the test proxy (per-item undo) or moto (copies the table)",
    )
    parser.add_argument("--operations", action="store_true", help="print each run's costliest operations")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the fake GitLab's and double's request lines
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.deliveries} deliveries per run;"
        f" poll interval {args.poll_interval} s; transactions: {args.transactions}"
    )
    print(
        "replicas  redelivered  killed  started s  deliveries/s  all final s  ack p50 ms  ack p99 ms"
        "  StartBuild calls  DLQ"
    )
    keep = bool(os.environ.get("BENCH_KEEP"))  # keep the replicas' logs (printed at the end)
    tmp = mkdtemp(prefix="bench-replicas-")
    try:
        sizes = [int(value) for value in args.replicas.split(",")]
        runs = [(size, False) for size in sizes] + ([] if args.no_kill else [(max(sizes), True)])
        for replicas, kill in runs:
            result = run(
                replicas,
                args.deliveries,
                kill=kill,
                work=Path(tmp),
                poll_interval=args.poll_interval,
                transactions=args.transactions,
            )
            print(
                f"{result.replicas:>8}  {result.redelivered:>11}  {'yes' if result.killed else 'no':>6}"
                f"  {result.started_seconds:>9.1f}  {result.per_second:>12.1f}  {result.final_seconds:>11.1f}"
                f"  {result.ack_p50_ms:>10.1f}  {result.ack_p99_ms:>10.1f}  {result.start_calls:>16}"
                f"  {result.dlq:>3}",
                flush=True,
            )
            if args.operations:
                print_operations(result)
                sys.stdout.flush()
        print(
            "every distinct delivery: exactly one successful StartBuild, a final commit status;"
            " delivery queue drained"
        )
    finally:
        if keep:
            print(f"logs: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
