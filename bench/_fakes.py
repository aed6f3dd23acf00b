"""The fakes the bridge's worker talks to (the CodeBuild double and the fake GitHub), run in a process
of their own.

The load generator is asyncio in the benchmark's process. When the fakes were threads of that same
process, every StartBuild and commit status the bridge's worker sent took the benchmark's GIL for
as long as the fake worked on it (the fake GitHub checks each request against GitHub's OpenAPI
description), and the generator stood still meanwhile: its requests went out late and their answers
were read late. The bridge's throughput and latency then carried the generator's waits, and the
baseline's did not (it starts no builds). In their own process the fakes share only the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub

ROOT: Final = Path(__file__).resolve().parent.parent
_STARTS: Final = "starts"
_STOP_TIMEOUT: Final = 10.0


def _serve(github_token: str, questions: IO[str], answers: IO[str]) -> None:
    """The child: start both fakes, say where they listen, answer questions until stdin closes."""
    double = CodeBuildDouble().start()
    github = FakeGitHub().start()
    try:
        github.add_token(github_token, kind="pat")
        print(json.dumps({"codebuild": double.url, "github": github.url}), file=answers, flush=True)
        for question in questions:  # ends when the benchmark closes our stdin, or dies
            if question.strip() == _STARTS:
                print(len(double.calls("StartBuild")), file=answers, flush=True)
    finally:
        double.stop()
        github.stop()


class FakesProcess:
    """`with FakesProcess(token) as fakes:` the CodeBuild double at `fakes.codebuild_url`, the fake
    GitHub (which takes `token` as a personal access token) at `fakes.github_url`; both bind 127.0.0.1."""

    def __init__(self, github_token: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench._fakes", github_token],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._questions, self._answers = self._process.stdin, self._process.stdout
        line = self._answers.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"the fakes' process exited ({self._process.returncode}) before listening")
        where = json.loads(line)
        self.codebuild_url: str = where["codebuild"]
        self.github_url: str = where["github"]

    def start_build_calls(self) -> int:
        """StartBuild requests the CodeBuild double has answered so far."""
        print(_STARTS, file=self._questions, flush=True)
        return int(self._answers.readline())

    def stop(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()  # the child's loop ends and it stops both fakes
        try:
            self._process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()  # by PID: nothing outlives the benchmark
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> FakesProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.stdin, sys.stdout)
