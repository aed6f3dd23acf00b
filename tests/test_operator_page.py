"""The operator page (`/`, `/deliveries/<id>`): what it shows after real signed deliveries went
through the app and the worker (CodeBuild double, fake GitHub/GitLab), and who may see it.

The page in a real browser, driven by headless Chromium, is tests/e2e/test_demo.py.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from bridge.app import create_app
from bridge.core.activity import MASK, mask_request
from bridge.secrets import parse_reference
from bridge.worker import Worker
from tests.e2e.support import (
    GITHUB_PROJECT,
    github_delivery,
    github_payload,
    gitlab_delivery,
    gitlab_payload,
    make_config,
    make_services,
    secret_env,
)
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

PUSH = github_payload("push", None, 4)  # refs/heads/master of Codertocat/Hello-World
OPERATOR_TOKEN = "op-token-5d1f0c"


class Page:
    def __init__(
        self, tmp_path: Path, github_api: FakeGitHub, gitlab_api: FakeGitLab, **server: object
    ) -> None:
        config = make_config(
            tmp_path,
            github_url=github_api.url,
            gitlab_url=gitlab_api.url,
            state_path=str(tmp_path / "state.sqlite3"),
            github_route_extra='env = { DEPLOY_TOKEN = "secretsmanager:ci/deploy", STAGE = "ci" }',
        )
        config = replace(config, server=replace(config.server, **server))  # type: ignore[arg-type]
        environ = secret_env(
            github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token
        )
        environ["OPERATOR_TOKEN"] = OPERATOR_TOKEN
        self.services = make_services(config, environ=environ)
        self.worker = Worker(self.services)
        self.loopback_bind = True
        self.config = config

    def client(self, *, loopback_bind: bool = True) -> FlaskClient:
        app = create_app(self.config, self.services, worker=self.worker, loopback_bind=loopback_bind)
        return app.test_client()


@pytest.fixture
def page(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[Page]:
    made = Page(tmp_path, github_api, gitlab_api)
    yield made
    made.services.store.close()


def _text(markup: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def test_the_page_lists_every_delivery_its_build_and_the_status_its_commit_got(
    page: Page, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_project(GITHUB_PROJECT, Scenario(final_status="SUCCEEDED"))
    client = page.client()
    send = client.post
    for delivery in (
        github_delivery("push", PUSH, delivery_id="gh-push"),
        github_delivery("issues", github_payload("issues", "opened"), delivery_id="gh-issue"),
        gitlab_delivery(gitlab_payload("push"), event_uuid="gl-push"),
    ):
        assert send(delivery.path, data=delivery.body, headers=delivery.headers).status_code in (200, 202)
    page.worker.drain_pending()
    for _ in range(40):  # the double moves one phase a poll
        if not page.services.store.active_builds():
            break
        page.worker.track_builds()
    assert page.services.store.active_builds() == []

    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "script-src" not in response.headers["Content-Security-Policy"]  # no script may run at all
    text = _text(response.get_data(as_text=True))
    # Every delivery, with its outcome; the ignored one with why.
    assert "gh-push" in text
    assert "gh-issue" in text
    assert "gl-push" in text
    assert "GitHub event 'issues' does not trigger builds" in text
    assert "Codertocat/Hello-World" in text
    # The GitHub build finished, and the commit got a success check.
    (github_build,) = [
        row
        for row in page.services.store.recent_deliveries()
        if row.delivery_id == "github:gh-push" and row.build_id is not None  # keys are per provider
    ]
    assert (github_build.build_id or "-") in text
    assert "SUCCEEDED" in text
    assert re.search(r"success: \S", text), text

    filtered = _text(
        client.get("/", query_string={"repository": "Codertocat/Hello-World"}).get_data(as_text=True)
    )
    assert "gh-push" in filtered
    assert "gl-push" not in filtered
    by_commit = _text(client.get("/", query_string={"commit": PUSH["after"][:8]}).get_data(as_text=True))
    assert "gh-push" in by_commit
    assert "gh-issue" not in by_commit
    assert "gl-push" not in by_commit


def test_a_delivery_detail_shows_the_start_build_request_with_secrets_as_references(
    page: Page, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_project(GITHUB_PROJECT, Scenario(final_status="SUCCEEDED"))
    client = page.client()
    delivery = github_delivery("push", PUSH, delivery_id="gh-detail")
    client.post(delivery.path, data=delivery.body, headers=delivery.headers)
    page.worker.drain_pending()

    markup = client.get("/deliveries/github:gh-detail").get_data(as_text=True)  # keys are per provider
    text = _text(markup)
    assert '"projectName": "hello-build"' in text
    # A secret is a reference CodeBuild resolves; the page shows the reference, never a value.
    assert re.search(
        r'"name": "DEPLOY_TOKEN",\s*"type": "SECRETS_MANAGER",\s*"value": "ci/deploy"',
        text,
    )
    assert "STAGE" in text
    assert PUSH["after"] in text
    missing = client.get("/deliveries/nope")
    assert missing.status_code == 404
    assert "No delivery" in missing.get_data(as_text=True)


def test_the_page_is_not_served_on_a_public_bind_or_through_a_proxy_by_default(page: Page) -> None:
    public = page.client(loopback_bind=False)
    assert public.get("/").status_code == 404
    assert public.get("/deliveries/x").status_code == 404
    local = page.client()
    assert local.get("/").status_code == 200
    assert local.get("/", environ_overrides={"REMOTE_ADDR": "10.1.2.3"}).status_code == 404
    assert local.get("/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 404


def test_operator_page_on_serves_it_on_any_bind_and_off_on_none(page: Page) -> None:
    page.config = replace(page.config, server=replace(page.config.server, operator_page="on"))
    assert page.client(loopback_bind=False).get("/").status_code == 200
    page.config = replace(page.config, server=replace(page.config.server, operator_page="off"))
    assert page.client().get("/").status_code == 404


def test_with_an_operator_token_the_page_asks_for_it_on_any_bind(page: Page) -> None:
    token = parse_reference("env:OPERATOR_TOKEN", key="server.operator_token")
    page.config = replace(page.config, server=replace(page.config.server, operator_token=token))
    client = page.client(loopback_bind=False)

    def auth(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()}

    refused = client.get("/")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    assert client.get("/", headers=auth("wrong")).status_code == 401
    assert client.get("/", headers={"Authorization": "Basic !!"}).status_code == 401
    assert client.get("/", headers=auth(OPERATOR_TOKEN)).status_code == 200
    assert client.get("/deliveries/x", headers=auth(OPERATOR_TOKEN)).status_code == 404  # served, not found
    assert OPERATOR_TOKEN not in refused.get_data(as_text=True)


def test_mask_request_hides_plain_values_named_like_credentials_and_keeps_references() -> None:
    request: dict[str, Any] = {
        "projectName": "p",
        "environmentVariablesOverride": [
            {"name": "GITHUB_TOKEN", "value": "ghp_visible", "type": "PLAINTEXT"},
            {"name": "db_password", "value": "hunter2"},
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc", "type": "PLAINTEXT"},
            {"name": "NPM_TOKEN", "value": "ci/npm", "type": "SECRETS_MANAGER"},
            {"name": "STAGE", "value": "ci", "type": "PLAINTEXT"},
        ],
    }
    shown = mask_request(request)
    values = {variable["name"]: variable["value"] for variable in shown["environmentVariablesOverride"]}
    assert values == {
        "GITHUB_TOKEN": MASK,
        "db_password": MASK,
        "AWS_SECRET_ACCESS_KEY": MASK,
        "NPM_TOKEN": "ci/npm",
        "STAGE": "ci",
    }
    assert request["environmentVariablesOverride"][0]["value"] == "ghp_visible"  # the input is untouched
