"""What the webhook-server tests share: a routing file, signed deliveries built from real payloads,
and Services wired to real clients pointed at local servers (moto, the CodeBuild double, fake APIs).

Used by tests/test_app.py, tests/test_worker.py and tests/e2e/test_server.py, so the in-process
tests and the real-process test send byte-for-byte the same deliveries.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.config import Config, parse_config
from bridge.secrets import SecretStore
from bridge.services import LazyCodeBuild, ProviderReporters, ReporterFactory, Services
from bridge.store import Store
from tests.fixtures import GITLAB_PAYLOADS, github_example
from tests.signing import github_headers, standard_webhook_headers
from tests.sns_signing import TOPIC_ARN

REGION = "eu-west-1"
GITHUB_SECRET = "gh-webhook-secret-current"
GITHUB_OLD_SECRET = "gh-webhook-secret-previous"
GITLAB_WEBHOOK_TOKEN = "gl-hook-token-0123456789"
GITHUB_PROJECT = "hello-build"
GITLAB_PROJECT = "gl-build"


def config_text(
    *,
    github_url: str = "http://127.0.0.1:9/api",
    gitlab_url: str = "http://127.0.0.1:9",
    state_path: str = "state.sqlite3",
    refs: str = "env",
    max_body_bytes: int = 262_144,
    poll_interval_seconds: int = 5,
    signing: bool = False,
    app_key: bool = True,
    github_route_extra: str = "",
) -> str:
    """A routing file for the Codertocat/Hello-World examples (GitHub) and GitLab's documented payloads.

    `refs` "env" makes env:NAME references; "secretsmanager" makes references to bridge/* secrets.
    """

    def ref(name: str, env_name: str) -> str:
        return f"secretsmanager:{name}" if refs == "secretsmanager" else f"env:{env_name}"

    github_auth = (
        f'app_id = 31337\nprivate_key = "{ref("bridge/github-app-key", "GITHUB_APP_KEY")}"'
        if app_key
        else f'token = "{ref("bridge/github-token", "GITHUB_TOKEN_FOR_STATUSES")}"'
    )
    signing_line = 'signing_tokens = ["env:GITLAB_SIGNING_TOKEN"]' if signing else ""
    return f"""
[server]
max_body_bytes = {max_body_bytes}
poll_interval_seconds = {poll_interval_seconds}
state_path = "{state_path}"
threads = 4

[aws]
region = "{REGION}"

[github]
api_url = "{github_url}"
{github_auth}
webhook_secrets = ["env:GITHUB_OLD_WEBHOOK_SECRET", "{ref("bridge/github-webhook", "GITHUB_WEBHOOK_SECRET")}"]
repository_hosts = ["github.com"]

[gitlab]
url = "{gitlab_url}"
token = "{ref("bridge/gitlab-token", "GITLAB_TOKEN")}"
webhook_tokens = ["env:GITLAB_WEBHOOK_TOKEN"]
repository_hosts = ["example.com"]
{signing_line}

[sns]
topic_arns = ["{TOPIC_ARN}"]

[[routes]]
name = "hello"
provider = "github"
repositories = ["Codertocat/*", "github/*"]
events = ["push", "pull_request", "rerun"]
branches = ["master"]
project = "{GITHUB_PROJECT}"
{github_route_extra}

[[routes]]
name = "diaspora"
provider = "gitlab"
repositories = ["mike/*", "gitlabhq/*"]
events = ["push", "merge_request"]
branches = ["master"]
forks = "never"
project = "{GITLAB_PROJECT}"
"""


def make_config(tmp_path: Path, **options: Any) -> Config:
    return parse_config(config_text(**options), base_dir=tmp_path)


def secret_env(*, github_app_key: str = "", gitlab_token: str = "") -> dict[str, str]:
    return {
        "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
        "GITHUB_OLD_WEBHOOK_SECRET": GITHUB_OLD_SECRET,
        "GITLAB_WEBHOOK_TOKEN": GITLAB_WEBHOOK_TOKEN,
        "GITHUB_APP_KEY": github_app_key,
        "GITLAB_TOKEN": gitlab_token,
    }


@dataclass
class Recorder:
    """A collaborator that remembers its calls (SNS SubscribeURL visits)."""

    calls: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> None:
        self.calls.append(url)


def make_services(
    config: Config,
    *,
    environ: Mapping[str, str],
    secretsmanager: Callable[[], Any] | None = None,
    fetch_certificate: Callable[[str], bytes] | None = None,
    confirm_subscription: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    reporters: ReporterFactory | None = None,
) -> Services:
    """Real collaborators; the builder's boto3 clients follow AWS_ENDPOINT_URL* (the aws_env fixture).

    `clock` drives the store (lease and retry times) and signature timestamps alike.
    """
    secrets = SecretStore(secretsmanager, environ=environ)

    def no_fetch(url: str) -> bytes:
        raise ConnectionError(f"no certificate fetcher in this test ({url})")

    return Services(
        config=config,
        store=Store(config.server.state_path, clock=clock),
        secrets=secrets,
        builder=LazyCodeBuild(REGION),
        reporters=reporters or ProviderReporters(config, secrets, github_write_interval=None),
        region=REGION,
        fetch_certificate=fetch_certificate or no_fetch,
        confirm_subscription=confirm_subscription or Recorder(),
        clock=clock,
        monotonic=monotonic,
    )


# -- deliveries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    path: str
    body: bytes
    headers: dict[str, str]


def github_payload(
    event: str, action: str | None = None, index: int = 0, *, installation_id: int = 4242
) -> dict[str, Any]:
    """A published example; the installation id is the fake GitHub's, so App auth can succeed."""
    payload = github_example(event, action, index)
    if isinstance(payload.get("installation"), dict):
        payload["installation"]["id"] = installation_id
    return payload


def github_delivery(
    event: str,
    payload: Mapping[str, Any] | bytes,
    *,
    secret: str = GITHUB_SECRET,
    delivery_id: str | None = None,
) -> Delivery:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = github_headers(body, secret, event=event, delivery=delivery_id or str(uuid.uuid4()))
    return Delivery("/webhooks/github", body, headers)


def gitlab_payload(name: str) -> dict[str, Any]:
    return json.loads((GITLAB_PAYLOADS / f"{name}.json").read_text())  # type: ignore[no-any-return]


GITLAB_EVENTS = {"push": "Push Hook", "tag_push": "Tag Push Hook", "merge_request": "Merge Request Hook"}


def gitlab_delivery(
    payload: Mapping[str, Any] | bytes,
    *,
    event: str | None = None,
    token: str | None = GITLAB_WEBHOOK_TOKEN,
    event_uuid: str | None = None,
    idempotency_key: str | None = None,
    signing_secret: str | None = None,
) -> Delivery:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    if event is None and isinstance(payload, Mapping):
        event = GITLAB_EVENTS[str(payload["object_kind"])]
    headers = {"Content-Type": "application/json", "X-Gitlab-Event-UUID": event_uuid or str(uuid.uuid4())}
    if event is not None:
        headers["X-Gitlab-Event"] = event
    if token is not None:
        headers["X-Gitlab-Token"] = token
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if signing_secret is not None:
        headers.update(
            standard_webhook_headers(body, signing_secret, f"msg_{uuid.uuid4().hex}", int(time.time()))
        )
    return Delivery("/webhooks/gitlab", body, headers)


def codebuild_event(record: Mapping[str, Any], *, region: str = REGION) -> dict[str, Any]:
    """An EventBridge "CodeBuild Build State Change" event for a BatchGetBuilds record (AWS's shape)."""
    phases = [
        {
            "phase-type": phase.get("phaseType"),
            "phase-status": phase.get("phaseStatus"),
            "start-time": str(phase.get("startTime")) if phase.get("startTime") else None,
            "end-time": str(phase.get("endTime")) if phase.get("endTime") else None,
            "duration-in-seconds": phase.get("durationInSeconds"),
            "phase-context": [],
        }
        for phase in record.get("phases", [])
    ]
    logs = record.get("logs") or {}
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "CodeBuild Build State Change",
        "source": "aws.codebuild",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": region,
        "resources": [record["arn"]],
        "detail": {
            "build-status": record["buildStatus"],
            "project-name": record["projectName"],
            "build-id": record["arn"],
            "current-phase": record.get("currentPhase"),
            "current-phase-context": "[]",
            "version": "1",
            "additional-information": {
                "build-complete": record.get("buildComplete", False),
                "build-number": record.get("buildNumber"),
                "initiator": record.get("initiator", "bridge"),
                "source-version": record.get("sourceVersion"),
                "logs": {
                    "group-name": logs.get("groupName"),
                    "stream-name": logs.get("streamName"),
                    "deep-link": logs.get("deepLink"),
                },
                "phases": phases,
            },
        },
    }
