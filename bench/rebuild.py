"""Cold build vs rebuild of a one-line source change on a fresh host, through the packaged buildspec.

    python -m bench.rebuild [--rounds 1] [--cache registry|inline|none]

A real dockerd and registry from Debian's packages (tests/docker_engine.py) on loopback. The reference
Dockerfile is multi-stage: a toolchain stage, a dependency stage with expensive steps (sleep plus work,
standing in for package installs and compilation), then the application stage that copies the source
last. Each round:

1. cold: an emptied builder and an empty registry, commit 1 built and pushed by
   bridge/data/buildspec-image.yml as bridge.plan plans it (the default `cache: registry`, which is
   BuildKit's inline cache with Debian's docker client, which has no buildx);
2. rebuild: one line of the source changed, the builder emptied again (every CodeBuild build starts on a
   fresh host), commit 2 built the same way.

It prints both wall times (buildspec start to end: login, build, push, digest), the BUILD phase alone,
the warm/cold ratio, and how many build steps came from the cache. Goal: ratio <= 0.25.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from bridge.model import BuildOptions, CacheMode, SourceEvent
from bridge.plan import plan_build
from tests.buildspec_runner import BuildResult, env_from_request, run_buildspec
from tests.docker_engine import (
    Dockerd,
    Registry,
    busybox,
    client_bin_dir,
    docker_env,
    empty_builder,
    remove_tree,
    short_tempdir,
)

GOAL = 0.25
DOCKERFILE = """\
# syntax-free on purpose: the Dockerfile frontend built into the engine, nothing to pull.
FROM scratch AS toolchain
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin"]

FROM toolchain AS dependencies
# "install the dependencies": 3 s and 8 MB of output
RUN sleep 3 && mkdir -p /deps && head -c 8000000 /dev/urandom > /deps/lib.bin
# "compile them": 2 s of CPU-free waiting plus a checksum over the output
RUN sleep 2 && sha256sum /deps/lib.bin > /deps/lib.sha256

FROM toolchain AS app
COPY --from=dependencies /deps /opt/deps
RUN sleep 1 && echo "tests of the dependencies passed" > /opt/deps/ok
COPY src/ /opt/app/
RUN cat /opt/app/main.txt > /opt/app/built
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    build_seconds: float
    cached_steps: int
    total_steps: int


def _event(sha: str) -> SourceEvent:
    return SourceEvent(
        provider="github",
        kind="push",
        event_name="push",
        action=None,
        repository="bench/app",
        clone_url="https://github.com/bench/app.git",
        sha=sha,
        ref="refs/heads/main",
        server_url="https://github.com",
        branch="main",
        default_branch="main",
    )


def _source(root: Path, line: str) -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox(), root / "busybox")
    (root / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
    (root / "src" / "main.txt").write_text(f"print('hello')\n{line}\n", encoding="utf-8")
    return root


def _build(source: Path, env: dict[str, str], registry: Registry, sha: str, cache: CacheMode) -> Run:
    options = BuildOptions(
        project_name="bench", image_repository=f"{registry.address}/bench/app", cache=cache
    )
    kwargs = plan_build(_event(sha), options, idempotency_seed="bench").start_build_kwargs
    build_env = {**env, **env_from_request(kwargs), "DOCKER_NETWORK": "none"}
    started = time.perf_counter()
    result: BuildResult = run_buildspec(kwargs["buildspecOverride"], env=build_env, source_dir=source)
    seconds = time.perf_counter() - started
    if result.status != "SUCCEEDED":
        raise SystemExit(f"the build failed:\n{result.log[-4000:]}")
    build_phase = result.phase("BUILD")
    steps = re.findall(r"^#\d+ \[[^\]]*\d+/\d+\] ", result.log, flags=re.MULTILINE)
    cached = re.findall(r"^#(\d+) CACHED$", result.log, flags=re.MULTILINE)
    return Run(seconds, build_phase.seconds if build_phase else 0.0, len(set(cached)), len(set(steps)))


def one_round(workdir: Path, dockerd: Dockerd, cache: CacheMode) -> tuple[Run, Run]:
    env = docker_env(dockerd, workdir / "config", client_bin_dir(workdir))
    registry_root = short_tempdir("rg")
    try:
        with Registry(registry_root) as registry:
            empty_builder(env)
            cold = _build(_source(workdir / "one", "x = 1"), env, registry, "1" * 40, cache)
            empty_builder(env)
            warm = _build(_source(workdir / "two", "x = 2"), env, registry, "2" * 40, cache)
    finally:
        remove_tree(registry_root)
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cache", choices=get_args(CacheMode), default="registry")
    args = parser.parse_args()
    root = short_tempdir("bk")
    ratios: list[float] = []
    try:
        with Dockerd(root / "engine") as dockerd:
            for number in range(1, args.rounds + 1):
                work = root / f"round{number}"
                work.mkdir()
                cold, warm = one_round(work, dockerd, args.cache)
                ratio = warm.seconds / cold.seconds
                ratios.append(ratio)
                print(
                    f"round {number}: cold {cold.seconds:.2f} s (BUILD {cold.build_seconds:.2f} s, "
                    f"{cold.cached_steps}/{cold.total_steps} steps cached) | rebuild {warm.seconds:.2f} s "
                    f"(BUILD {warm.build_seconds:.2f} s, {warm.cached_steps}/{warm.total_steps} steps cached)"
                    f" | warm/cold {ratio:.3f}"
                )
    finally:
        remove_tree(root)
    median = statistics.median(ratios)
    verdict = "meets" if median <= GOAL else "misses"
    print(
        f"cache={args.cache}: warm/cold ratio {median:.3f} (median of {len(ratios)}); "
        f"{verdict} the goal <= {GOAL}"
    )


if __name__ == "__main__":
    main()
