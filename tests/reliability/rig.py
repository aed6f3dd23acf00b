"""The in-process rig the reliability suites share: the real Flask app and worker, wired to moto,
the CodeBuild double and the fake GitHub/GitLab APIs, with the routing file adjustable per test.

Builds are counted where they would really happen: the worker drains what the app persisted and
the CodeBuild double records every StartBuild it received.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from bridge.app import create_app
from bridge.config import parse_config
from bridge.services import Services
from bridge.worker import Worker
from tests.e2e.support import Delivery, Recorder, config_text, make_services, secret_env
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab
from tests.sns_signing import default_signer

LIMIT = 262_144
SIGNING_ENV = "GITLAB_SIGNING_TOKEN"


@dataclass
class Rig:
    client: FlaskClient
    services: Services
    worker: Worker
    double: CodeBuildDouble
    environ: dict[str, str]

    def send(self, delivery: Delivery, environ: dict[str, Any] | None = None) -> TestResponse:
        """POST the delivery; `environ` overrides what the test client puts in the WSGI environ."""
        return self.client.post(
            delivery.path, data=delivery.body, headers=delivery.headers, environ_overrides=environ
        )

    def builds_started(self) -> int:
        self.worker.drain_pending()
        return len(self.double.calls("StartBuild"))

    def start_build_params(self) -> list[dict[str, Any]]:
        self.worker.drain_pending()
        return [call.params for call in self.double.calls("StartBuild")]


RigFactory = Callable[..., Rig]


def make_rig(
    tmp_path: Path,
    double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
    *,
    edit: Callable[[str], str] = lambda text: text,
    signing_secret: str | None = None,
    secretsmanager: Callable[[], Any] | None = None,
    **options: Any,
) -> Rig:
    """`edit` rewrites the routing file text (e.g. a wildcard branch list) before it is parsed."""
    text = config_text(
        github_url=github_api.url,
        gitlab_url=gitlab_api.url,
        state_path=str(tmp_path / f"state-{len(list(tmp_path.iterdir()))}.sqlite3"),
        max_body_bytes=LIMIT,
        signing=signing_secret is not None,
        **options,
    )
    config = parse_config(edit(text), base_dir=tmp_path)
    environ = secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token)
    if signing_secret is not None:
        environ[SIGNING_ENV] = signing_secret
    services = make_services(
        config,
        environ=environ,
        secretsmanager=secretsmanager,
        fetch_certificate=default_signer().fetcher(),
        confirm_subscription=Recorder(),
    )
    worker = Worker(services)
    app = create_app(config, services, worker=worker)
    return Rig(app.test_client(), services, worker, double, environ)


@pytest.fixture
def rig_factory(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[RigFactory]:
    made: list[Rig] = []

    def factory(**kwargs: Any) -> Rig:
        rig = make_rig(tmp_path, codebuild_double, github_api, gitlab_api, **kwargs)
        made.append(rig)
        return rig

    yield factory
    for rig in made:
        rig.services.store.close()


@pytest.fixture
def rig(rig_factory: RigFactory) -> Rig:
    return rig_factory()
