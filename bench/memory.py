"""Memory: peak RSS (VmHWM) of the bridge's processes under the ack benchmark's load.

    python -m bench.memory [--seconds 20] [--rate 200]

Runs bench/ack.py's measurement (a fixed-rate phase of `--rate` req/s for `--seconds`, then a
saturating closed loop for `--seconds`) and prints the peak resident set of the request-serving
process (gunicorn's worker) and of the bridge's worker process, with the bare Flask baseline's for
comparison. Every delivery is persisted and built, so the store, the tracked
builds and the worker's state all grow during the run.
"""

from __future__ import annotations

import argparse
import json

from bench.ack import measure

GOAL_MB = 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    figures = measure(
        rounds=1, seconds=args.seconds, connections=16, rate=args.rate, total=int(args.rate * args.seconds)
    )
    rss = figures["peak_rss_mb"]
    deliveries = sum(figures["fixed_rate"]["bridge"]["statuses"].values()) + sum(
        bridge_round["bridge_requests"] for bridge_round in figures["rounds"]
    )
    print(
        json.dumps(
            {"deliveries": deliveries, **rss, "builds_started": figures["builds_started_by_the_worker"]}
        )
    )
    largest = max(rss["bridge_worker"], rss["bridge_worker_process"])
    verdict = "met" if largest <= GOAL_MB else "NOT met"
    print(
        f"| peak RSS after {deliveries} deliveries | bridge: serving {rss['bridge_worker']} MB, "
        f"worker process {rss['bridge_worker_process']} MB | baseline {rss['baseline_worker']} MB "
        f"| goal ≤ {GOAL_MB} MB each: {verdict} |"
    )


if __name__ == "__main__":
    main()
