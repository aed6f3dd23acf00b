"""Action start-up: process start → StartBuild received by CodeBuild, and what the time goes on.

    python -m bench.startup [--runs 7]

entrypoint.py runs as the runner starts it (INPUT_*, GITHUB_* environment, an event file) against
the CodeBuild double, with `wait: false` so the process ends once the build is started. The clock
starts just before the process is spawned and stops when the double records the StartBuild
request. Two configurations: without a check (no github-token: PyGithub is never imported) and
with one (github-token set: PyGithub is imported and the check run is created on the fake GitHub
before the build starts).
Then one run under `python -X importtime` lists the slowest imports (cumulative).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fixtures import github_example

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 400


TOKEN = "ghs_bench0123456789abcdef"  # noqa: S105 - the fake GitHub's Actions token


def action_env(workdir: Path, codebuild_url: str, *, github_url: str, token: bool) -> dict[str, str]:
    payload = github_example("push", None, 4)
    event = workdir / "event.json"
    event.write_text(json.dumps(payload))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ENDPOINT_URL_CODEBUILD": codebuild_url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(workdir / "absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "absent"),
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_SHA": payload["after"],
        "GITHUB_REF": payload["ref"],
        "GITHUB_REPOSITORY": payload["repository"]["full_name"],
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_API_URL": github_url,
        "GITHUB_RUN_ID": "1",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_OUTPUT": str(workdir / "output.txt"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary.md"),
        "INPUT_PROJECT-NAME": "bench",
        "INPUT_WAIT": "false",
    }
    if token:
        env["INPUT_GITHUB-TOKEN"] = TOKEN
    return env


def time_to_start_build(double: CodeBuildDouble, env: dict[str, str], workdir: Path) -> float:
    """Milliseconds from spawning the process to the double recording its StartBuild."""
    before = len(double.calls("StartBuild"))
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "entrypoint.py")],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while len(double.calls("StartBuild")) == before:
        if process.poll() is not None and len(double.calls("StartBuild")) == before:
            raise RuntimeError(f"the Action exited with {process.returncode} before StartBuild")
        time.sleep(0.0005)
    elapsed = (time.perf_counter() - began) * 1000
    process.wait(timeout=60)
    return elapsed


def import_offenders(env: dict[str, str], workdir: Path, top: int = 12) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "entrypoint.py")],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    rows: list[tuple[str, float, float]] = []  # (module, self ms, cumulative ms)
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, own, cumulative, name = (part.strip() for part in line.replace("import time:", "|").split("|"))
        rows.append((name, int(own) / 1000, int(cumulative) / 1000))
    top_level = sorted((row for row in rows if "." not in row[0]), key=lambda row: row[2], reverse=True)
    return [{"module": name, "self_ms": own, "cumulative_ms": total} for name, own, total in top_level[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    double = CodeBuildDouble().start()
    github = FakeGitHub().start()
    github.add_token(TOKEN, kind="actions")
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        workdir = Path(tmp)
        envs = {
            label: action_env(workdir, double.url, github_url=github.url, token=token)
            for label, token in (("no check", False), ("with check", True))
        }
        for env in envs.values():
            time_to_start_build(double, env, workdir)  # warm the OS file cache
        # Interleaved, so a busy spell on the shared machine lands on both configurations alike.
        runs: dict[str, list[float]] = {label: [] for label in envs}
        for _ in range(args.runs):
            for label, env in envs.items():
                runs[label].append(time_to_start_build(double, env, workdir))
        for label, times in runs.items():
            figures[label] = {
                "median_ms": round(statistics.median(times), 1),
                "min_ms": round(min(times), 1),
                "max_ms": round(max(times), 1),
            }
        env = action_env(workdir, double.url, github_url=github.url, token=False)
        figures["import_offenders"] = import_offenders(env, workdir)
    double.stop()
    github.stop()
    print(json.dumps(figures, indent=2))
    print()
    print(f"| Action start → StartBuild | median | min | max | goal ≤ {GOAL_MS} ms |")
    print("|---|---|---|---|---|")
    for label in ("no check", "with check"):
        row = figures[label]
        verdict = "met" if row["median_ms"] <= GOAL_MS else "NOT met"
        print(f"| {label} | {row['median_ms']} ms | {row['min_ms']} ms | {row['max_ms']} ms | {verdict} |")
    print()
    print("| slowest imports (cumulative) | ms |")
    print("|---|---|")
    for row in figures["import_offenders"]:
        print(f"| {row['module']} | {row['cumulative_ms']:.1f} |")


if __name__ == "__main__":
    main()
