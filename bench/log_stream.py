"""Log streaming: a build writes 50,000 lines; every line must arrive once and in order.

    python -m bench.log_stream [--lines 50000] [--batch 700]

CloudWatch Logs is moto in server mode (over HTTP). The "build" appends `--batch` lines at a time
while bridge's CloudWatchLogTail polls between appends, as the Action does while a build runs;
after the last append the tail drains. Lines are numbered, so duplicates, gaps and reordering are
all counted. Printed: lines written/received, duplicates, missing, out of order, GetLogEvents
calls and the wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from bridge.builders.codebuild import CloudWatchLogTail

GROUP, STREAM = "/aws/codebuild/bench", "bench-build/0001"


def measure(total: int, batch: int) -> dict[str, Any]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    logs = boto3.client(
        "logs",
        endpoint_url=f"http://{host}:{port}",
        region_name="eu-west-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - moto accepts any key
    )
    calls: list[str] = []
    logs.meta.events.register("before-call.cloudwatch-logs.GetLogEvents", lambda **_: calls.append("get"))
    logs.create_log_group(logGroupName=GROUP)
    logs.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    build = {"projectName": "bench", "logs": {"groupName": GROUP, "streamName": STREAM}}
    tail = CloudWatchLogTail(logs)
    written = [f"{n:06d} step output ✓ {'x' * (n % 50)}" for n in range(total)]
    received: list[str] = []

    began = time.perf_counter()
    base = int(time.time() * 1000)
    for offset in range(0, total, batch):
        chunk = written[offset : offset + batch]
        logs.put_log_events(
            logGroupName=GROUP,
            logStreamName=STREAM,
            logEvents=[{"timestamp": base + offset + i, "message": line} for i, line in enumerate(chunk)],
        )
        received += tail.poll(build)
    for _ in range(3):  # the build is over: drain what is left
        received += tail.poll(build)
    seconds = time.perf_counter() - began
    server.stop()

    numbers = [int(line.split(" ", 1)[0]) for line in received]
    seen: set[int] = set()
    duplicates = 0
    for number in numbers:
        duplicates += number in seen
        seen.add(number)
    out_of_order = sum(1 for a, b in itertools.pairwise(numbers) if b <= a)
    return {
        "lines_written": total,
        "lines_received": len(received),
        "duplicates": duplicates,
        "missing": total - len(seen),
        "out_of_order": out_of_order,
        "identical_to_what_was_written": received == written,
        "get_log_events_calls": len(calls),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=700)
    args = parser.parse_args()
    figures = measure(args.lines, args.batch)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
