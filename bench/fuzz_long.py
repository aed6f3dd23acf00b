"""The long fuzz profile: tests/reliability/test_fuzz.py with 10,000 examples per endpoint.

    python -m bench.fuzz_long [--examples 10000]

Runs the same properties as CI (never a 5xx, never a build without a valid signature) with many
more examples, and prints what the requests were answered, per endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        report = Path(tmp) / "fuzz.jsonl"
        env = {**os.environ, "BRIDGE_FUZZ_EXAMPLES": str(args.examples), "BRIDGE_FUZZ_REPORT": str(report)}
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-o", "timeout=0", "tests/reliability/test_fuzz.py"],
            cwd=ROOT,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - began
        lines = report.read_text().splitlines() if report.exists() else []
    for line in lines:
        print(json.dumps(json.loads(line)))
    print(json.dumps({"pytest_exit_code": done.returncode, "seconds": round(seconds, 1)}))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
