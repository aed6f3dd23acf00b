"""Poll cost: AWS calls per poll interval with 100 builds in flight, batched vs per-build polling.

    python -m bench.poll_cost [--builds 100] [--intervals 5]

100 real deliveries go through the app and the worker starts 100 builds on the CodeBuild double
(which records every request it receives). Then the worker's tracker runs `--intervals` poll
cycles, and the same builds are polled the naive way, one BatchGetBuilds per build, with the same
boto3 client. Printed: calls per interval and wall time per interval for each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from bridge.app import create_app
from bridge.config import parse_config
from bridge.worker import Worker
from tests.e2e.support import config_text, github_delivery, github_payload, make_services, secret_env
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario


def measure(builds: int, intervals: int) -> dict[str, Any]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the double's access log
    double = CodeBuildDouble().start()
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ENDPOINT_URL_CODEBUILD": double.url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    double.script_project("hello-build", Scenario(polls_per_phase=10_000))  # stay in flight
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        config = parse_config(config_text(state_path=str(Path(tmp) / "s.sqlite3")), base_dir=Path(tmp))
        services = make_services(config, environ=secret_env(), reporters=lambda _event, _route: None)
        worker = Worker(services)
        client = create_app(config, services, worker=worker).test_client()
        payload = github_payload("push", None, 4)
        for number in range(builds):
            delivery = github_delivery("push", payload, delivery_id=f"poll-{number}")
            assert client.post(delivery.path, data=delivery.body, headers=delivery.headers).status_code == 202
        worker.drain_pending()
        ids = [build.build_id for build in services.store.active_builds()]
        assert len(ids) == builds, len(ids)

        before = len(double.requests)
        began = time.perf_counter()
        for _ in range(intervals):
            worker.track_builds()
        batched_seconds = (time.perf_counter() - began) / intervals
        batched = double.requests[before:]

        codebuild = boto3.client("codebuild", region_name="eu-west-1")
        before = len(double.requests)
        began = time.perf_counter()
        for _ in range(intervals):
            for build_id in ids:
                codebuild.batch_get_builds(ids=[build_id])
        naive_seconds = (time.perf_counter() - began) / intervals
        naive = double.requests[before:]
        services.store.close()
    double.stop()
    return {
        "builds_in_flight": builds,
        "intervals": intervals,
        "batched": {
            "calls_per_interval": len(batched) / intervals,
            "operations": sorted({call.operation for call in batched}),
            "ids_per_call": max(len(call.params.get("ids", [])) for call in batched),
            "seconds_per_interval": round(batched_seconds, 4),
        },
        "per_build": {
            "calls_per_interval": len(naive) / intervals,
            "seconds_per_interval": round(naive_seconds, 4),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--builds", type=int, default=100)
    parser.add_argument("--intervals", type=int, default=5)
    args = parser.parse_args()
    figures = measure(args.builds, args.intervals)
    print(json.dumps(figures, indent=2))
    batched, naive = figures["batched"], figures["per_build"]
    print()
    rows = [
        ("bridge (batched)", batched["calls_per_interval"], batched["seconds_per_interval"]),
        ("one call per build", naive["calls_per_interval"], naive["seconds_per_interval"]),
    ]
    print("| polling | AWS calls per interval | wall time per interval |")
    print("|---|---|---|")
    for name, calls, seconds in rows:
        print(f"| {name} | {calls:g} | {seconds * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
