"""bench/_fakes.py: the fakes the ack benchmark's bridge talks to, in a process of their own."""

from __future__ import annotations

import os

import requests

from bench._fakes import FakesProcess
from tests.fakes.codebuild_double import codebuild_client


def test_the_fakes_answer_from_their_own_process_count_start_builds_and_stop() -> None:
    fakes = FakesProcess("ghp_bench-token")
    pid = fakes._process.pid
    try:
        assert pid != os.getpid()
        assert fakes.codebuild_url.startswith("http://127.0.0.1:")
        assert fakes.github_url.startswith("http://127.0.0.1:")
        assert fakes.start_build_calls() == 0
        codebuild_client(fakes.codebuild_url).start_build(projectName="bench")
        assert fakes.start_build_calls() == 1
        # The fake GitHub takes the token it was given, and only that one.
        status = f"{fakes.github_url}/repos/octo-org/octo-repo/statuses/{'a' * 40}"
        for token, expected in (("ghp_bench-token", 201), ("ghp_another", 401)):
            answer = requests.post(
                status, json={"state": "pending"}, headers={"Authorization": f"token {token}"}, timeout=10
            )
            assert answer.status_code == expected
    finally:
        fakes.stop()
    assert fakes._process.returncode == 0  # stopped by itself when asked, not killed
    assert not os.path.exists(f"/proc/{pid}")
