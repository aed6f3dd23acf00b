"""The black-box rig of the attack suites: `bridge serve` as a real process (tests/e2e/test_server.serve)
on the shared routing file (tests/e2e/support.config_text), adjustable per test, with moto, the
CodeBuild double and the fake GitHub/GitLab APIs behind it.

Builds are counted where they would really happen, in the CodeBuild double. That a delivery built
nothing is shown by a canary: a push the server does build, sent after it; once the canary's build has
started, everything accepted before it has been through the worker.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import Delivery, config_text, github_delivery, github_payload
from tests.e2e.test_server import FINISH_TIMEOUT, Server, serve, started, wait_for
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

SIGNING_ENV = "GITLAB_SIGNING_TOKEN"
CANARY_SHA = "c" * 40


@dataclass
class Served:
    server: Server
    double: CodeBuildDouble

    def send(self, delivery: Delivery) -> tuple[int, dict[str, Any]]:
        return self.server.post(delivery)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.server.url}{path}", timeout=10) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def start_build_params(self, count: int) -> list[dict[str, Any]]:
        """The StartBuild requests, once `count` of them have arrived."""
        wait_for(
            lambda: len(started(self.double)) >= count,
            FINISH_TIMEOUT,
            f"{count} builds",
            self.server.log_path,
        )
        return started(self.double)

    def builds_started(self) -> int:
        """How many builds the deliveries sent so far started (the canary's left out)."""
        canary = github_payload("push", None, 4)  # Codertocat/Hello-World master: routes[hello] builds it
        canary["after"] = CANARY_SHA
        status, body = self.send(github_delivery("push", canary))
        assert status == 202, body
        wait_for(
            lambda: any(params["sourceVersion"] == CANARY_SHA for params in started(self.double)),
            FINISH_TIMEOUT,
            "the canary build",
            self.server.log_path,
        )
        return len([params for params in started(self.double) if params["sourceVersion"] != CANARY_SHA])


ServedFactory = Callable[..., Served]


@pytest.fixture
def served_factory(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[ServedFactory]:
    """`edit` rewrites the routing file text before the server reads it; `signing_secret` adds a GitLab
    signing token; `ready_path` is what says the server is up (its /readyz may be meant to fail).
    One server a test: their routing files differ."""
    with contextlib.ExitStack() as stack:

        def factory(
            *,
            edit: Callable[[str], str] = lambda text: text,
            signing_secret: str | None = None,
            ready_path: str = "/readyz",
            **options: Any,
        ) -> Served:
            text = config_text(
                github_url=github_api.url,
                gitlab_url=gitlab_api.url,
                refs="secretsmanager",
                signing=signing_secret is not None,
                **options,
            )
            extra_env = {SIGNING_ENV: signing_secret} if signing_secret is not None else {}
            server = stack.enter_context(
                serve(
                    tmp_path,
                    aws_env,
                    github_api,
                    gitlab_api,
                    edit(text),
                    extra_env=extra_env,
                    ready_path=ready_path,
                )
            )
            return Served(server, codebuild_double)

        yield factory
