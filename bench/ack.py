"""Webhook ack: signed GitHub push deliveries through `bridge serve` vs a bare Flask endpoint under
the same gunicorn settings that only reads the body. Both are measured in this one run, one server
at a time, so neither takes CPU from the other while it is measured, in `--rounds` alternating
rounds of fresh servers: on a shared machine one round's ratio moves by ±8 points, the median of
paired rounds much less.

    python -m bench.ack [--rounds 3] [--seconds 10] [--connections 16] [--rate 200] [--total 3000]

Each round, against each server:
1. Latency at a fixed rate: `--total` requests at `--rate` req/s, timed from their scheduled send.
2. Throughput: `--connections` keep-alive connections send back to back for `--seconds` (closed
   loop); the ratio is bridge / baseline. The CPU the server's worker process used in this phase,
   per request, is the same comparison with the machine's noise mostly taken out.
3. Peak RSS (VmHWM) of the server's worker process after both phases.

Every bridge request is a real delivery: verified, parsed, routed, persisted to SQLite and answered
202. The worker runs too, as in production: it starts each build on the CodeBuild double and posts
commit statuses to the fake GitHub (both in a process of their own, on the same machine). How many
builds it starts while the bridge is measured depends on how fast the double answers, and each
StartBuild costs the bridge's process ~4 ms of CPU: `builds_started` shows it for each round.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._fakes import FakesProcess
from bench._load import Result, closed_loop, fixed_rate
from bench._servers import (
    GITHUB_TOKEN,
    baseline_command,
    bench_config,
    bridge_command,
    free_port,
    running,
    server_env,
    signed_push,
)


@dataclass(frozen=True)
class Phases:
    """One server's figures in one round."""

    latency: Result
    throughput: Result
    cpu_ms_per_request: float  # every server process's user + system CPU in the throughput phase
    serving_cpu_ms_per_request: float  # the request-serving process's share of it
    peak_rss_mb: float  # the request-serving process
    background_rss_mb: float  # the bridge's worker process (NaN for the baseline: it has none)
    builds_started: int  # StartBuild calls the double answered during the throughput phase


def measure(*, rounds: int, seconds: float, connections: int, rate: float, total: int) -> dict[str, Any]:
    pairs: list[tuple[Phases, Phases]] = []
    # The fakes the worker calls run in a process of their own, not beside the load generator
    # (see bench/_fakes.py): in this process they stalled the generator under the bridge only.
    with FakesProcess(GITHUB_TOKEN) as fakes, tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp:
        env = server_env(fakes.codebuild_url)
        for number in range(rounds):
            workdir = Path(tmp) / f"round-{number}"  # a fresh state file: no backlog from the last round
            workdir.mkdir()
            config = workdir / "bridge.toml"
            config.write_text(bench_config(workdir, fakes.github_url))
            # One server at a time: a server left running beside the other (the bridge's worker still
            # starting the builds of the latency phase) would take CPU from the one being measured.
            load = functools.partial(
                _phases,
                workdir=workdir,
                rate=rate,
                total=total,
                connections=connections,
                seconds=seconds,
                starts=fakes.start_build_calls,
            )
            baseline = load("baseline", baseline_command, env=None)
            bridge = load("bridge", functools.partial(bridge_command, config), env=env)
            pairs.append((baseline, bridge))
        builds = fakes.start_build_calls()
    return {**summarize(pairs, rate=rate), "builds_started_by_the_worker": builds}


def summarize(pairs: list[tuple[Phases, Phases]], *, rate: float) -> dict[str, Any]:
    """Medians over the rounds; each ratio is taken within its round, then the median of those."""
    baselines = [baseline for baseline, _ in pairs]
    bridges = [bridge for _, bridge in pairs]
    rounds = [
        {
            "baseline_rps": round(baseline.throughput.throughput, 1),
            "bridge_rps": round(bridge.throughput.throughput, 1),
            "bridge_requests": len(bridge.throughput.latencies),
            "ratio": round(_ratio(bridge.throughput.throughput, baseline.throughput.throughput), 3),
            "baseline_cpu_ms_per_request": round(baseline.cpu_ms_per_request, 3),
            "bridge_cpu_ms_per_request": round(bridge.cpu_ms_per_request, 3),
            "bridge_serving_cpu_ms_per_request": round(bridge.serving_cpu_ms_per_request, 3),
            "builds_started": bridge.builds_started,
        }
        for baseline, bridge in pairs
    ]
    return {
        "rounds": rounds,
        "throughput": {
            "baseline_rps": _median([b.throughput.throughput for b in baselines]),
            "bridge_rps": _median([b.throughput.throughput for b in bridges]),
            "ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        },
        "cpu_ms_per_request": {
            "baseline": _median([b.cpu_ms_per_request for b in baselines], 3),
            "bridge": _median([b.cpu_ms_per_request for b in bridges], 3),
            "bridge_serving": _median([b.serving_cpu_ms_per_request for b in bridges], 3),
            # baseline / bridge: what the throughput ratio would be with a core to itself
            "ratio": round(
                statistics.median(
                    _ratio(baseline.cpu_ms_per_request, bridge.cpu_ms_per_request)
                    for baseline, bridge in pairs
                ),
                3,
            ),
        },
        "fixed_rate": {
            "rate_rps": rate,
            "baseline": _pooled([b.latency for b in baselines]).summary(),
            "bridge": _pooled([b.latency for b in bridges]).summary(),
        },
        "peak_rss_mb": {
            "bridge_worker": round(max(b.peak_rss_mb for b in bridges), 1),
            "bridge_worker_process": round(max(b.background_rss_mb for b in bridges), 1),
            "baseline_worker": round(max(b.peak_rss_mb for b in baselines), 1),
        },
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _median(values: list[float], digits: int = 1) -> float:
    return round(statistics.median(values), digits)


def _pooled(results: list[Result]) -> Result:
    """Every round's requests as one sample, for percentiles over all of them."""
    pooled = Result()
    for result in results:
        pooled.sent += result.sent
        pooled.seconds += result.seconds
        pooled.latencies += result.latencies
        pooled.statuses += result.statuses
        pooled.errors += result.errors
    return pooled


def _phases(
    name: str,
    command: Callable[[int], list[str]],
    *,
    workdir: Path,
    env: dict[str, str] | None,
    rate: float,
    total: int,
    connections: int,
    seconds: float,
    starts: Callable[[], int],
) -> Phases:
    """Warm-up, latency at a fixed rate, then the saturating closed loop, against one fresh server."""
    port = free_port()
    with running(name, command(port), workdir, port, env=env) as server:
        # Gently (lazy imports, first SQLite pages), without leaving the worker a backlog.
        fixed_rate("127.0.0.1", port, signed_push("warm", port), rate=50, total=50)
        latency = fixed_rate("127.0.0.1", port, signed_push("rate", port), rate=rate, total=total)
        cpu_before, serving_before = server.cpu_seconds(), server.cpu_seconds(background=False)
        starts_before = starts()
        throughput = closed_loop(
            "127.0.0.1", port, signed_push("tp", port), connections=connections, seconds=seconds
        )
        cpu = server.cpu_seconds() - cpu_before
        serving = server.cpu_seconds(background=False) - serving_before
        answered = len(throughput.latencies)
        return Phases(
            latency=latency,
            throughput=throughput,
            cpu_ms_per_request=cpu / answered * 1000 if answered else float("nan"),
            serving_cpu_ms_per_request=serving / answered * 1000 if answered else float("nan"),
            peak_rss_mb=server.peak_rss_mb(),
            background_rss_mb=server.peak_rss_mb(background=True),
            builds_started=starts() - starts_before,
        )


def report(figures: dict[str, Any]) -> str:
    tp, fr, cpu = figures["throughput"], figures["fixed_rate"], figures["cpu_ms_per_request"]
    base, bridge = fr["baseline"], fr["bridge"]
    rate = f"{fr['rate_rps']:.0f} req/s"
    rss = figures["peak_rss_mb"]
    rounds = figures["rounds"]
    ratios = ", ".join(f"{r['ratio']:.0%}" for r in rounds)
    rows = [
        "| | baseline (bare Flask) | bridge | goal |",
        "|---|---|---|---|",
        f"| throughput, closed loop (req/s, median of {len(rounds)}) | {tp['baseline_rps']} "
        f"| {tp['bridge_rps']} | ≥ 60% of baseline: **{tp['ratio']:.0%}** (rounds: {ratios}) |",
        f"| server CPU per request, all its processes (ms, median) | {cpu['baseline']} | {cpu['bridge']} "
        f"| baseline / bridge: {cpu['ratio']:.0%} |",
        f"| of which the request-serving process | {cpu['baseline']} | {cpu['bridge_serving']} | |",
        f"| builds the worker started during the closed loop | | "
        f"{', '.join(str(r['builds_started']) for r in rounds)} | |",
        f"| p50 at {rate} (ms) | {base['p50_ms']} | {bridge['p50_ms']} | |",
        f"| p99 at {rate} (ms) | {base['p99_ms']} | {bridge['p99_ms']} | < 25 ms |",
        f"| answers at {rate} | {base['statuses']} | {bridge['statuses']} | all 202 |",
        f"| peak RSS, request-serving process (MB) | {rss['baseline_worker']} | {rss['bridge_worker']} "
        "| ≤ 100 MB |",
        f"| peak RSS, the bridge's worker process (MB) | | {rss['bridge_worker_process']} | ≤ 100 MB |",
    ]
    return "\n".join(rows)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=_positive, default=3, help="alternating rounds of fresh servers")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--total", type=int, default=3000)
    args = parser.parse_args()
    figures = measure(
        rounds=args.rounds,
        seconds=args.seconds,
        connections=args.connections,
        rate=args.rate,
        total=args.total,
    )
    print(json.dumps(figures, indent=2))
    print()
    print(report(figures))


if __name__ == "__main__":
    main()
