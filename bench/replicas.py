"""Throughput of one, two and three `bridge serve` replicas on DynamoDB + SQS (moto), and the
exactly-once check at scale: the long profile of tests/e2e/test_replicas.py.

    python -m bench.replicas [--deliveries 1000] [--replicas 1,2,3] [--no-kill]

For each fleet size: a fresh table and queue (with a dead-letter queue), N real `bridge serve`
processes, then signed GitLab push deliveries (each its own commit) sent round-robin by 16 client
threads; 10% are sent again to a different replica. A last run of the largest fleet SIGKILLs one
replica half way: its delivery in flight reappears after the queue's 30 s visibility timeout,
which that run's time includes.

Measured from the first send until every distinct delivery has its StartBuild: deliveries per
second acknowledged and started, and the ack latency. Checked: exactly one successful StartBuild
per distinct delivery, the queue drained, the dead-letter queue empty. The poll interval is long
so that build tracking does not compete with intake (tests/e2e/test_replicas.py covers tracking).

Every AWS call lands on moto (one Python process, DynamoDB requests applied one at a time, as
DynamoDB applies each item write atomically), so absolute figures measure this machine and moto;
the ratio between fleet sizes is what carries over. BENCH_KEEP=1 keeps the replicas' logs and
BENCH_LOG_LEVEL=INFO makes them say more.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from dataclasses import dataclass
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from bridge.store_dynamodb import create_table
from tests.e2e.support import config_text, gitlab_delivery, gitlab_payload, secret_env
from tests.e2e.test_replicas import AtomicDynamoDBProcess
from tests.e2e.test_server import Server, free_port, wait_for
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.gitlab_api import FakeGitLab

REGION = "eu-west-1"
CLIENTS = 16
TIMEOUT_SECONDS = 1800.0


@dataclass
class Result:
    replicas: int
    deliveries: int
    redelivered: int
    killed: bool
    seconds: float
    ack_p50_ms: float
    ack_p99_ms: float
    start_calls: int
    dlq: int

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds


class BenchServer(Server):
    """The e2e test's server process, polling builds every 600 s instead of every second."""

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
            "600",
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


def run(replicas: int, deliveries: int, *, kill: bool, work: Path) -> Result:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    dynamodb = AtomicDynamoDBProcess()
    session = boto3.session.Session(
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto
    )
    double = CodeBuildDouble(logs=session.client("logs", endpoint_url=moto_url), region=REGION).start()
    gitlab = FakeGitLab()
    gitlab.start()
    servers: list[Server] = []
    try:
        table = f"bench-{uuid.uuid4().hex[:8]}"
        create_table(session.client("dynamodb", endpoint_url=dynamodb.url), table)
        sqs = session.client("sqs", endpoint_url=moto_url)
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
            config_text(gitlab_url=gitlab.url, refs="env", poll_interval_seconds=600)
            + f'\n[store]\nbackend = "dynamodb"\ntable = "{table}"\n\n'
            f'[queue]\nurl = "{queue}"\nvisibility_timeout_seconds = 30\nwait_seconds = 5\n'
        )
        env = {
            **os.environ,
            **aws_env(moto_url, dynamodb.url, double.url, work),
            **secret_env(gitlab_token=gitlab.token),
            "BRIDGE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
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
        seconds = time.perf_counter() - started_at
        per_token = tokens()
        depth = {"queue": -1}
        while depth["queue"] != 0 and time.monotonic() < deadline:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            depth["queue"] = sum(int(value) for value in attributes.values())
            time.sleep(0.2)
        dlq_depth = int(
            sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
        )
        if set(per_token.values()) != {1}:
            raise SystemExit(f"a delivery was started twice: {per_token.most_common(3)}")
        quantiles = statistics.quantiles(latencies, n=100)
        return Result(
            replicas=replicas,
            deliveries=deliveries,
            redelivered=len(repeats),
            killed=bool(dead),
            seconds=seconds,
            ack_p50_ms=quantiles[49] * 1000,
            ack_p99_ms=quantiles[98] * 1000,
            start_calls=len(double.calls("StartBuild")),
            dlq=dlq_depth,
        )
    finally:
        for server in servers:
            server.stop_hard()
        gitlab.stop()
        double.stop()
        dynamodb.stop()
        moto.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--replicas", default="1,2,3", help="fleet sizes to measure, e.g. 1,2,3")
    parser.add_argument(
        "--no-kill", action="store_true", help="skip the last run (largest fleet, one replica SIGKILLed)"
    )
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.deliveries} deliveries per run")
    print(
        "replicas  redelivered  killed  seconds  deliveries/s  ack p50 ms  ack p99 ms  StartBuild calls  DLQ"
    )
    keep = bool(os.environ.get("BENCH_KEEP"))  # keep the replicas' logs (printed at the end)
    tmp = mkdtemp(prefix="bench-replicas-")
    try:
        sizes = [int(value) for value in args.replicas.split(",")]
        runs = [(size, False) for size in sizes] + ([] if args.no_kill else [(max(sizes), True)])
        for replicas, kill in runs:
            result = run(replicas, args.deliveries, kill=kill, work=Path(tmp))
            print(
                f"{result.replicas:>8}  {result.redelivered:>11}  {'yes' if result.killed else 'no':>6}"
                f"  {result.seconds:>7.1f}  {result.per_second:>12.1f}  {result.ack_p50_ms:>10.1f}"
                f"  {result.ack_p99_ms:>10.1f}  {result.start_calls:>16}  {result.dlq:>3}",
                flush=True,
            )
        print("every distinct delivery: exactly one successful StartBuild; delivery queue drained")
    finally:
        if keep:
            print(f"logs: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
