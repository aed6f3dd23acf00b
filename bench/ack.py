"""Webhook ack: signed GitHub push deliveries through `bridge serve` vs a bare Flask endpoint under
the same gunicorn settings that only reads the body. Both are measured in this one run, one server
at a time, so neither takes CPU from the other while it is measured.

    python -m bench.ack [--seconds 10] [--connections 16] [--rate 200] [--total 3000]

1. Latency at a fixed rate: `--total` requests at `--rate` req/s, timed from their scheduled send.
2. Throughput: `--connections` keep-alive connections send back to back for `--seconds` (closed
   loop); the ratio is bridge / baseline.
3. Peak RSS (VmHWM) of the bridge's gunicorn worker process after both phases.

Every bridge request is a real delivery: verified, parsed, routed, persisted to SQLite and answered
202. The worker runs too, as in production: it starts each build on the CodeBuild double and posts
commit statuses to the fake GitHub (both threads of this process, on the same machine). How many
builds it starts while the bridge is measured depends on how fast the double answers, and each
StartBuild costs the bridge's process ~1.5 ms of CPU: `builds_started_by_the_worker` shows it.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub


def measure(*, seconds: float, connections: int, rate: float, total: int) -> dict[str, Any]:
    double = CodeBuildDouble().start()
    github = FakeGitHub().start()
    github.add_token(GITHUB_TOKEN, kind="pat")
    with tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp:
        workdir = Path(tmp)
        config = workdir / "bridge.toml"
        config.write_text(bench_config(workdir, github.url))
        env = server_env(double.url)
        # One server at a time: a server left running beside the other (the bridge's worker still
        # starting the builds of the latency phase) would take CPU from the one being measured.
        load = functools.partial(
            _phases, workdir=workdir, rate=rate, total=total, connections=connections, seconds=seconds
        )
        base_rate, base_tp, baseline_rss = load("baseline", baseline_command, env=None)
        bridge_rate, bridge_tp, peak_rss = load("bridge", lambda port: bridge_command(config, port), env=env)
    double.stop()
    github.stop()
    return {
        "builds_started_by_the_worker": len(double.calls("StartBuild")),
        "throughput": {
            "baseline": base_tp.summary(),
            "bridge": bridge_tp.summary(),
            "ratio": round(bridge_tp.throughput / base_tp.throughput, 3) if base_tp.throughput else None,
        },
        "fixed_rate": {"rate_rps": rate, "baseline": base_rate.summary(), "bridge": bridge_rate.summary()},
        "peak_rss_mb": {"bridge_worker": round(peak_rss, 1), "baseline_worker": round(baseline_rss, 1)},
    }


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
) -> tuple[Result, Result, float]:
    """Warm-up, latency at a fixed rate, then the saturating closed loop, against one fresh server."""
    port = free_port()
    with running(name, command(port), workdir, port, env=env) as server:
        # Gently (lazy imports, first SQLite pages), without leaving the worker a backlog.
        fixed_rate("127.0.0.1", port, signed_push("warm", port), rate=50, total=50)
        latency = fixed_rate("127.0.0.1", port, signed_push("rate", port), rate=rate, total=total)
        throughput = closed_loop(
            "127.0.0.1", port, signed_push("tp", port), connections=connections, seconds=seconds
        )
        return latency, throughput, server.peak_rss_mb()


def report(figures: dict[str, Any]) -> str:
    tp, fr = figures["throughput"], figures["fixed_rate"]
    base, bridge = fr["baseline"], fr["bridge"]
    rate = f"{fr['rate_rps']:.0f} req/s"
    rss = figures["peak_rss_mb"]
    rows = [
        "| | baseline (bare Flask) | bridge | goal |",
        "|---|---|---|---|",
        f"| throughput, closed loop (req/s) | {tp['baseline']['throughput_rps']} "
        f"| {tp['bridge']['throughput_rps']} | ≥ 60% of baseline: **{tp['ratio']:.0%}** |",
        f"| p50 at {rate} (ms) | {base['p50_ms']} | {bridge['p50_ms']} | |",
        f"| p99 at {rate} (ms) | {base['p99_ms']} | {bridge['p99_ms']} | < 25 ms |",
        f"| answers at {rate} | {base['statuses']} | {bridge['statuses']} | all 202 |",
        f"| peak RSS, worker process (MB) | {rss['baseline_worker']} | {rss['bridge_worker']} | ≤ 100 MB |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--total", type=int, default=3000)
    args = parser.parse_args()
    figures = measure(seconds=args.seconds, connections=args.connections, rate=args.rate, total=args.total)
    print(json.dumps(figures, indent=2))
    print()
    print(report(figures))


if __name__ == "__main__":
    main()
