"""The HTTP contract of the webhook app (DESIGN.md), request by request, with real signed payloads.

Each case checks the status code, the JSON answer, how many deliveries were persisted and how many
builds the worker then starts (the CodeBuild double's StartBuild log): a rejected request must
leave no trace, an accepted one exactly one build.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from bridge.app import create_app, gitlab_delivery_id
from bridge.services import Services
from bridge.worker import Worker
from tests.e2e.support import (
    GITHUB_OLD_SECRET,
    GITHUB_PROJECT,
    GITHUB_SECRET,
    GITLAB_WEBHOOK_TOKEN,
    Delivery,
    Recorder,
    codebuild_event,
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
from tests.signing import new_standard_webhook_secret
from tests.sns_signing import default_signer, notification, subscription_confirmation

LIMIT = 262_144


@dataclass
class App:
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

    def persisted(self) -> int:
        """Deliveries stored to build (ignored ones are stored too, but only to say why)."""
        counts = self.services.store.counts()
        return sum(
            value
            for key, value in counts.items()
            if key.startswith("deliveries_") and key != "deliveries_ignored"
        )

    def ignored(self) -> list[str]:
        """The reasons of the ignored deliveries the store recorded, newest first."""
        return [
            row.last_error or "" for row in self.services.store.recent_deliveries() if row.state == "ignored"
        ]

    def builds_started(self) -> int:
        self.worker.drain_pending()
        return len(self.double.calls("StartBuild"))


@dataclass
class World:
    """The local services an app under test talks to."""

    tmp_path: Path
    double: CodeBuildDouble
    github_api: FakeGitHub
    gitlab_api: FakeGitLab


@pytest.fixture
def world(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> World:
    return World(tmp_path, codebuild_double, github_api, gitlab_api)


def make_app(world: World, **config_options: Any) -> App:
    tmp_path, github_api, gitlab_api = world.tmp_path, world.github_api, world.gitlab_api
    config = make_config(
        tmp_path,
        github_url=github_api.url,
        gitlab_url=gitlab_api.url,
        state_path=str(tmp_path / "state.sqlite3"),
        max_body_bytes=LIMIT,
        **config_options,
    )
    environ = secret_env(github_app_key=github_api.app_keys.private_key_pem, gitlab_token=gitlab_api.token)
    services = make_services(
        config,
        environ=environ,
        fetch_certificate=default_signer().fetcher(),
        confirm_subscription=Recorder(),
    )
    worker = Worker(services)
    app = create_app(config, services, worker=worker)
    return App(app.test_client(), services, worker, world.double, environ)


@pytest.fixture
def app(world: World) -> Iterator[App]:
    under_test = make_app(world)
    yield under_test
    under_test.services.store.close()


# -- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    request: Callable[[], Delivery]
    status: int
    body: dict[str, Any] | str  # the exact JSON answer, or a key it must have
    persisted: int
    builds: int = 0


def _with(delivery: Delivery, **headers: str | None) -> Delivery:
    merged = {k: v for k, v in delivery.headers.items() if k not in headers}
    merged.update({k: v for k, v in headers.items() if v is not None})
    return replace(delivery, headers=merged)


def _without(delivery: Delivery, name: str) -> Delivery:
    return replace(delivery, headers={k: v for k, v in delivery.headers.items() if k != name})


PUSH = github_payload("push", None, 4)  # refs/heads/master of Codertocat/Hello-World
PR_OPENED = github_payload("pull_request", "opened", 1)


def _signed_raw(body: bytes, event: str = "push") -> Delivery:
    return github_delivery(event, body, delivery_id="raw-1")


def _fork_pr() -> Delivery:
    payload = github_payload("pull_request", "opened", 1)
    payload["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
    payload["pull_request"]["head"]["repo"]["clone_url"] = "https://github.com/mallory/Hello-World.git"
    payload["pull_request"]["head"]["repo"]["fork"] = True
    return github_delivery("pull_request", payload, delivery_id="fork-1")


def _unrouted_repo() -> Delivery:
    payload = github_payload("push", None, 4)
    payload["repository"]["full_name"] = "someone/else"
    payload["repository"]["name"] = "else"
    return github_delivery("push", payload, delivery_id="unrouted-1")


def _other_branch() -> Delivery:
    payload = github_payload("push", None, 4)
    payload["ref"] = "refs/heads/feature/x"
    return github_delivery("push", payload, delivery_id="branch-1")


CASES = [
    Case(
        "github push accepted",
        lambda: github_delivery("push", PUSH, delivery_id="d-1"),
        202,
        {"delivery": "d-1", "route": "hello"},
        1,
        1,
    ),
    Case(
        "github pull_request opened accepted",
        lambda: github_delivery("pull_request", PR_OPENED, delivery_id="d-2"),
        202,
        {"delivery": "d-2", "route": "hello"},
        1,
        1,
    ),
    Case(
        "github re-run of a commit this bridge never built",
        lambda: github_delivery("check_run", github_payload("check_run", "rerequested"), delivery_id="d-3"),
        200,
        "ignored",
        0,
    ),
    Case(
        "github old secret still accepted during rotation",
        lambda: github_delivery("push", PUSH, secret=GITHUB_OLD_SECRET, delivery_id="d-4"),
        202,
        {"delivery": "d-4", "route": "hello"},
        1,
        1,
    ),
    Case("github ping", lambda: github_delivery("ping", github_payload("ping")), 200, {"pong": True}, 0),
    Case(
        "github unhandled event",
        lambda: github_delivery("issues", github_payload("issues", "opened")),
        200,
        "ignored",
        0,
    ),
    Case(
        "github closed pull request",
        lambda: github_delivery("pull_request", github_payload("pull_request", "closed")),
        200,
        "ignored",
        0,
    ),
    Case(
        "github deleted tag push",
        lambda: github_delivery("push", github_payload("push", None, 1)),
        200,
        "ignored",
        0,
    ),
    Case("github branch not routed", _other_branch, 200, "ignored", 0),
    Case("github repository not routed", _unrouted_repo, 200, "ignored", 0),
    Case("github fork pull request (forks = never)", _fork_pr, 200, "ignored", 0),
    Case(
        "github wrong secret", lambda: github_delivery("push", PUSH, secret="not-the-secret"), 401, "error", 0
    ),
    Case(
        "github missing signature",
        lambda: _without(github_delivery("push", PUSH), "X-Hub-Signature-256"),
        401,
        "error",
        0,
    ),
    Case(
        "github sha1-only signature",
        lambda: _with(
            _without(github_delivery("push", PUSH), "X-Hub-Signature-256"),
            **{"X-Hub-Signature": "sha1=" + "0" * 40},
        ),
        401,
        "error",
        0,
    ),
    Case(
        "github body altered after signing",
        lambda: replace(github_delivery("push", PUSH), body=json.dumps({**PUSH, "after": "0" * 40}).encode()),
        401,
        "error",
        0,
    ),
    Case(
        "github missing X-GitHub-Event",
        lambda: _without(github_delivery("push", PUSH), "X-GitHub-Event"),
        400,
        "error",
        0,
    ),
    Case(
        "github missing X-GitHub-Delivery",
        lambda: _without(github_delivery("push", PUSH), "X-GitHub-Delivery"),
        400,
        "error",
        0,
    ),
    Case("github unparseable JSON", lambda: _signed_raw(b"{not json"), 400, "error", 0),
    Case("github JSON array", lambda: _signed_raw(b"[1, 2]"), 400, "error", 0),
    Case(
        "github JSON content type with a charset, in capitals",
        lambda: _with(
            github_delivery("push", PUSH, delivery_id="d-ct"),
            **{"Content-Type": "Application/JSON; charset=utf-8"},
        ),
        202,
        {"delivery": "d-ct", "route": "hello"},
        1,
        1,
    ),
    Case(
        "github form-encoded content type",
        lambda: _with(github_delivery("push", PUSH), **{"Content-Type": "application/x-www-form-urlencoded"}),
        400,
        "error",
        0,
    ),
    Case(
        "github malformed push payload",
        lambda: _signed_raw(json.dumps({"ref": "refs/heads/master"}).encode()),
        400,
        "error",
        0,
    ),
    Case(
        "github body over the limit",
        lambda: github_delivery("push", b"{" + b" " * LIMIT + b"}"),
        413,
        "error",
        0,
    ),
    Case(
        "gitlab push accepted",
        lambda: gitlab_delivery(gitlab_payload("push"), event_uuid="g-1"),
        202,
        {"delivery": "g-1", "route": "diaspora"},
        1,
        1,
    ),
    Case(
        "gitlab merge request accepted",
        lambda: gitlab_delivery(gitlab_payload("merge_request_open"), idempotency_key="g-2"),
        202,
        {"delivery": "g-2", "route": "diaspora"},
        1,
        1,
    ),
    Case(
        "gitlab fork merge request (forks = never)",
        lambda: gitlab_delivery(gitlab_payload("merge_request_fork_open")),
        200,
        "ignored",
        0,
    ),
    Case(
        "gitlab branch deleted",
        lambda: gitlab_delivery(gitlab_payload("push_branch_deleted")),
        200,
        "ignored",
        0,
    ),
    Case(
        "gitlab tag push not routed", lambda: gitlab_delivery(gitlab_payload("tag_push")), 200, "ignored", 0
    ),
    Case(
        "gitlab unhandled event is 200, never a 4xx",
        lambda: gitlab_delivery(b'{"object_kind": "pipeline"}', event="Pipeline Hook"),
        200,
        "ignored",
        0,
    ),
    Case(
        "gitlab malformed payload of a handled event is 200",
        lambda: gitlab_delivery(b'{"object_kind": "push"}', event="Push Hook"),
        200,
        "ignored",
        0,
    ),
    Case(
        "gitlab wrong token", lambda: gitlab_delivery(gitlab_payload("push"), token="wrong"), 401, "error", 0
    ),
    Case(
        "gitlab missing token", lambda: gitlab_delivery(gitlab_payload("push"), token=None), 401, "error", 0
    ),
    Case(
        "gitlab missing X-Gitlab-Event",
        lambda: _without(gitlab_delivery(gitlab_payload("push")), "X-Gitlab-Event"),
        400,
        "error",
        0,
    ),
    Case("gitlab unparseable JSON", lambda: gitlab_delivery(b"{", event="Push Hook"), 400, "error", 0),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_http_contract(app: App, case: Case) -> None:
    response = app.send(case.request())

    assert response.status_code == case.status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    if isinstance(case.body, dict):
        assert body == case.body
    else:
        assert case.body in body
        assert body[case.body]
    if case.status >= 400:
        assert set(body) == {"error", "hint"}
        assert body["hint"]
    assert app.persisted() == case.persisted
    # A verified delivery that builds nothing is recorded with its reason (the operator page lists
    # it); anything refused (4xx/5xx) is not: only a sender holding the secret can add a row.
    if case.status == 200 and (case.body in ("ignored", {"pong": True})):
        assert app.ignored() == [body.get("ignored", "ping: the webhook is set up; nothing to build")]
    else:
        assert app.ignored() == []
    assert app.builds_started() == case.builds


def test_wrong_method_is_405(app: App) -> None:
    for path in ("/webhooks/github", "/webhooks/gitlab", "/events/codebuild"):
        response = app.client.get(path)
        assert response.status_code == 405
        assert "POST" in response.headers["Allow"]
        assert "error" in response.get_json()
    assert app.client.post("/healthz").status_code == 405
    assert app.persisted() == 0


def test_declared_length_over_the_limit_is_413_before_reading(app: App) -> None:
    delivery = github_delivery("push", PUSH)
    response = app.send(delivery, {"CONTENT_LENGTH": str(LIMIT + 1)})
    assert response.status_code == 413
    assert app.persisted() == 0


@pytest.mark.parametrize("length", ["9" * 5000, "1" + "0" * 30], ids=["5,000 digits", "31 digits"])
def test_an_absurd_content_length_is_413(app: App, length: str) -> None:
    """int() refuses a string of over 4,300 digits: such a length is answered as too large, not a 500."""
    response = app.send(github_delivery("push", PUSH), {"CONTENT_LENGTH": length})
    assert response.status_code == 413
    assert app.persisted() == 0


def test_chunked_body_over_the_limit_is_413(app: App) -> None:
    """No Content-Length (chunked): the read itself is capped by MAX_CONTENT_LENGTH.

    gunicorn marks a chunked body with wsgi.input_terminated; the e2e test sends a real chunked one.
    """
    big = b"{" + b" " * (LIMIT + 10) + b"}"
    delivery = github_delivery("push", big)
    headers = {**delivery.headers, "Transfer-Encoding": "chunked"}
    response = app.client.post(
        delivery.path, data=big, headers=headers, environ_overrides={"wsgi.input_terminated": True}
    )
    assert response.status_code == 413
    assert app.persisted() == 0


class _RecordedInput(io.BytesIO):
    """A WSGI input that records how it was read, or fails as a socket does when the client leaves."""

    def __init__(self, body: bytes, *, fail: bool = False) -> None:
        super().__init__(body)
        self.reads: list[int | None] = []
        self.fail = fail

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(size)
        if self.fail:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size)


def test_a_body_of_declared_length_is_read_in_one_call(app: App) -> None:
    """One read of exactly Content-Length bytes: werkzeug's stream reads 64 KB steps through copies.

    The environ is gunicorn's: it marks every input terminated, whatever its length.
    """
    delivery = github_delivery("push", PUSH)
    stream = _RecordedInput(delivery.body)
    response = app.send(delivery, {"wsgi.input": stream, "wsgi.input_terminated": True})
    assert response.status_code == 202
    assert stream.reads == [len(delivery.body)]
    assert app.builds_started() == 1


def test_a_body_shorter_than_its_content_length_is_400(app: App) -> None:
    """The sender stopped mid-body: a clear 400, not an unexpected error and never a build."""
    delivery = github_delivery("push", PUSH)
    response = app.send(delivery, {"CONTENT_LENGTH": str(len(delivery.body) + 10)})
    assert response.status_code == 400
    assert response.get_json()["error"] == (
        f"request body ended after {len(delivery.body)} of its {len(delivery.body) + 10} declared bytes"
    )
    assert app.persisted() == 0
    assert app.builds_started() == 0


def test_a_connection_lost_mid_body_is_400(app: App) -> None:
    delivery = github_delivery("push", PUSH)
    response = app.send(delivery, {"wsgi.input": _RecordedInput(delivery.body, fail=True)})
    assert response.status_code == 400
    assert response.get_json()["error"] == "request body could not be read (ConnectionResetError)"
    assert app.persisted() == 0
    assert app.builds_started() == 0


def test_duplicate_github_delivery_builds_once(app: App) -> None:
    first = app.send(github_delivery("push", PUSH, delivery_id="same"))
    second = app.send(github_delivery("push", PUSH, delivery_id="same"))
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.get_json() == {"duplicate": "same"}
    assert app.persisted() == 1
    assert app.builds_started() == 1
    third = app.send(github_delivery("push", PUSH, delivery_id="same"))  # after the build started
    assert third.get_json() == {"duplicate": "same"}
    assert app.builds_started() == 1


def test_gitlab_retry_with_same_idempotency_key_is_a_duplicate(app: App) -> None:
    """GitLab retries carry a new event UUID but the same Idempotency-Key."""
    payload = gitlab_payload("push")
    first = app.send(gitlab_delivery(payload, idempotency_key="key-1", event_uuid=str(uuid.uuid4())))
    retry = app.send(gitlab_delivery(payload, idempotency_key="key-1", event_uuid=str(uuid.uuid4())))
    assert first.status_code == 202
    assert retry.status_code == 200
    assert retry.get_json() == {"duplicate": "key-1"}
    assert app.builds_started() == 1


@pytest.mark.parametrize(
    ("headers", "signed", "expected"),
    [
        ({"Idempotency-Key": "k", "webhook-id": "w", "X-Gitlab-Event-UUID": "u"}, "s", "s"),
        ({"Idempotency-Key": "k", "webhook-id": "w", "X-Gitlab-Event-UUID": "u"}, None, "k"),
        ({"webhook-id": "w", "X-Gitlab-Event-UUID": "u"}, "s", "s"),
        ({"webhook-id": "w", "X-Gitlab-Event-UUID": "u"}, None, "w"),
        ({"x-gitlab-event-uuid": "u"}, None, "u"),
        ({"Idempotency-Key": "  "}, None, "body-"),
    ],
)
def test_gitlab_delivery_id_precedence(headers: dict[str, str], signed: str | None, expected: str) -> None:
    assert gitlab_delivery_id(headers, signed, b"{}").startswith(expected)


def test_the_accepted_build_has_the_exact_request(app: App) -> None:
    app.send(github_delivery("push", PUSH, delivery_id="exact-1"))
    assert app.builds_started() == 1
    params = app.double.calls("StartBuild")[0].params
    assert params["projectName"] == GITHUB_PROJECT
    assert params["sourceVersion"] == PUSH["after"]
    assert params["sourceLocationOverride"] == "https://github.com/Codertocat/Hello-World.git"
    assert params["sourceTypeOverride"] == "GITHUB"
    assert len(params["idempotencyToken"]) == 36


# -- GitLab signing tokens ----------------------------------------------------------------------------


def test_gitlab_signing_token(world: World) -> None:
    signing = new_standard_webhook_secret()
    under_test = make_app(world, signing=True)
    under_test.environ["GITLAB_SIGNING_TOKEN"] = signing
    payload = gitlab_payload("push")

    good = under_test.send(gitlab_delivery(payload, signing_secret=signing, event_uuid="u-1"))
    unsigned = under_test.send(gitlab_delivery(payload))
    forged = under_test.send(gitlab_delivery(payload, signing_secret=new_standard_webhook_secret()))

    assert good.status_code == 202
    assert good.get_json()["delivery"].startswith("msg_")  # the signed webhook-id identifies it
    assert unsigned.status_code == 401
    assert forged.status_code == 401
    assert under_test.builds_started() == 1


# -- secret rotation through Secrets Manager ------------------------------------------------------------


def test_rotated_webhook_secret_is_reread_once(world: World) -> None:
    tmp_path, github_api, gitlab_api = world.tmp_path, world.github_api, world.gitlab_api
    admin = boto3.client("secretsmanager", region_name="eu-west-1")
    admin.create_secret(Name="bridge/github-webhook", SecretString="first-secret")
    admin.create_secret(Name="bridge/gitlab-token", SecretString=gitlab_api.token)
    config = make_config(
        tmp_path,
        github_url=github_api.url,
        gitlab_url=gitlab_api.url,
        refs="secretsmanager",
        state_path=str(tmp_path / "s.sqlite3"),
        app_key=False,
    )
    calls: list[str] = []

    def client() -> Any:
        sm = boto3.client("secretsmanager", region_name="eu-west-1")
        sm.meta.events.register("before-call.secrets-manager.GetSecretValue", lambda **_: calls.append("get"))
        return sm

    services = make_services(config, environ=secret_env(), secretsmanager=client)
    flask_app = create_app(config, services)
    test_client = flask_app.test_client()

    def post(secret: str, delivery_id: str) -> int:
        delivery = github_delivery("push", PUSH, secret=secret, delivery_id=delivery_id)
        return test_client.post(delivery.path, data=delivery.body, headers=delivery.headers).status_code

    assert post("first-secret", "r-1") == 202
    assert post("first-secret", "r-2") == 202
    assert calls == ["get"]  # cached
    admin.put_secret_value(SecretId="bridge/github-webhook", SecretString="second-secret")
    assert post("second-secret", "r-3") == 202  # a signature failure re-read the secret
    assert calls == ["get", "get"]
    assert post("forged", "r-4") == 401
    assert calls == ["get", "get"]  # no second re-read within the refresh interval
    services.store.close()


def test_unreadable_secret_is_503_not_401(app: App) -> None:
    del app.environ["GITHUB_WEBHOOK_SECRET"]
    response = app.send(github_delivery("push", PUSH))
    assert response.status_code == 503
    # Issue 19 item 9: anyone may post, so the answer names no secret (the log does).
    assert "GITHUB_WEBHOOK_SECRET" not in response.get_data(as_text=True)
    assert "cannot be read" in response.get_json()["error"]
    assert GITHUB_SECRET not in response.get_data(as_text=True)
    assert app.persisted() == 0


def test_a_delivery_refused_before_verification_is_logged_with_its_id_and_event(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22: a delivery whose secret could not be read (503) or whose signature is wrong (401)
    logged "delivery": null, "event": null although the sender named both."""
    caplog.set_level("INFO", logger="bridge.app")
    del app.environ["GITHUB_WEBHOOK_SECRET"]
    del app.environ["GITLAB_WEBHOOK_TOKEN"]
    assert app.send(github_delivery("push", PUSH, delivery_id="gh-unreadable")).status_code == 503
    gitlab = gitlab_delivery(gitlab_payload("push"), event_uuid="gl-unreadable")
    assert app.send(gitlab).status_code == 503
    app.environ["GITHUB_WEBHOOK_SECRET"] = GITHUB_SECRET
    assert (
        app.send(github_delivery("pull_request", PUSH, secret="forged", delivery_id="gh-forged")).status_code
        == 401
    )

    lines = [vars(r) for r in caplog.records if r.name == "bridge.app" and r.getMessage() == "delivery"]
    assert [(line["delivery"], line["event"], line["status"]) for line in lines] == [
        ("gh-unreadable", "push", 503),
        ("gl-unreadable", "Push Hook", 503),
        ("gh-forged", "pull_request", 401),
    ]
    # The metrics count only verified event names: a forger cannot invent label values.
    text = app.client.get("/metrics").get_data(as_text=True)
    assert 'event="pull_request"' not in text


# -- SNS ---------------------------------------------------------------------------------------------


def _sns(app: App, message: dict[str, str]) -> TestResponse:
    return app.client.post(
        "/events/codebuild", data=json.dumps(message), headers={"Content-Type": "text/plain; charset=UTF-8"}
    )


def test_sns_subscription_confirmation_visits_the_subscribe_url(app: App) -> None:
    message = default_signer().sign(subscription_confirmation())
    response = _sns(app, message)
    assert response.status_code == 200
    recorder = app.services.confirm_subscription
    assert isinstance(recorder, Recorder)
    assert recorder.calls == [message["SubscribeURL"]]


def test_sns_subscribe_url_off_amazon_is_refused(app: App) -> None:
    unsigned = subscription_confirmation()
    unsigned["SubscribeURL"] = "https://evil.example.com/?Action=ConfirmSubscription"
    response = _sns(app, default_signer().sign(unsigned))
    assert response.status_code == 400
    recorder = app.services.confirm_subscription
    assert isinstance(recorder, Recorder)
    assert recorder.calls == []


@pytest.mark.parametrize("problem", ["bad-signature", "unknown-topic", "forged-cert-url"])
def test_sns_rejections_are_401(app: App, problem: str) -> None:
    message = notification(json.dumps({"detail-type": "CodeBuild Build State Change", "detail": {}}))
    if problem == "unknown-topic":
        message = notification("{}", topic_arn="arn:aws:sns:us-east-1:123456789012:someone-else")
    signed = default_signer().sign(message)
    if problem == "bad-signature":
        signed["Message"] = signed["Message"] + " "
    if problem == "forged-cert-url":
        signed["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
    response = _sns(app, signed)
    assert response.status_code == 401
    assert set(response.get_json()) == {"error", "hint"}


def test_sns_codebuild_event_finishes_a_status_without_a_poll(app: App, gitlab_api: FakeGitLab) -> None:
    app.double.script_project("gl-build", Scenario(final_status="SUCCEEDED"))
    assert app.send(gitlab_delivery(gitlab_payload("push"), event_uuid="sns-1")).status_code == 202
    assert app.builds_started() == 1
    build_id = app.double.calls("StartBuild")[0]
    tracked = app.services.store.active_builds()
    assert len(tracked) == 1
    assert build_id
    record = app.double.build(tracked[0].build_id)
    final = {**record, "buildStatus": "SUCCEEDED", "buildComplete": True, "currentPhase": "COMPLETED"}
    envelope = codebuild_event(final)

    response = _sns(app, default_signer().sign(notification(json.dumps(envelope))))
    duplicate = _sns(app, default_signer().sign(notification(json.dumps(envelope))))

    assert response.status_code == 200
    assert response.get_json() == {"updated": True}
    assert duplicate.status_code == 200
    assert duplicate.get_json() == {"updated": False}
    assert app.services.store.active_builds() == []
    assert len(app.double.calls("BatchGetBuilds")) == 0
    sha = gitlab_payload("push")["checkout_sha"]
    assert [t[3] for t in gitlab_api.transitions if t[1] == sha] == ["pending", "success"]


def test_sns_other_notifications_are_ignored(app: App) -> None:
    for text in ("not json", json.dumps({"detail-type": "CodeBuild Build Phase Change", "detail": {}})):
        response = _sns(app, default_signer().sign(notification(text)))
        assert response.status_code == 200
        assert "ignored" in response.get_json()


# -- operations -------------------------------------------------------------------------------------------


def test_healthz_and_readyz(app: App) -> None:
    assert app.client.get("/healthz").get_json() == {"status": "ok"}
    ready = app.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["ready"] is True
    app.services.store.close()  # the state file is gone for this process
    not_ready = app.client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.get_json()["reasons"]


def test_store_unavailable_answers_503_so_the_sender_retries(app: App) -> None:
    app.services.store.close()
    response = app.send(github_delivery("push", PUSH))
    assert response.status_code == 503


def test_metrics_count_deliveries_by_outcome(app: App) -> None:
    app.send(github_delivery("push", PUSH))
    app.send(github_delivery("push", PUSH, secret="wrong"))
    app.send(github_delivery("ping", github_payload("ping")))
    text = app.client.get("/metrics").get_data(as_text=True)
    assert 'bridge_deliveries_total{event="push",outcome="accepted",provider="github"} 1.0' in text
    assert 'bridge_deliveries_total{event="-",outcome="unauthorized",provider="github"} 1.0' in text
    assert 'bridge_deliveries_total{event="ping",outcome="pong",provider="github"} 1.0' in text
    assert 'bridge_ack_seconds_count{provider="github"} 3.0' in text


def test_one_json_log_line_per_delivery(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="bridge.app")
    app.send(github_delivery("push", PUSH, delivery_id="log-1"))
    lines = [r for r in caplog.records if r.name == "bridge.app" and r.getMessage() == "delivery"]
    assert len(lines) == 1
    record = lines[0]
    assert vars(record)["delivery"] == "log-1"
    assert vars(record)["outcome"] == "accepted"
    assert vars(record)["route"] == "hello"
    assert vars(record)["latency_ms"] >= 0
    assert GITHUB_SECRET not in caplog.text
    assert GITLAB_WEBHOOK_TOKEN not in caplog.text


@pytest.mark.parametrize("refusal", ["unreadable secret", "forged signature", "forged gitlab token"])
def test_a_refused_delivery_is_logged_with_the_delivery_and_event_it_was_sent_with(
    app: App, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    """An operator looking for a delivery GitHub or GitLab shows as failed finds it by its id."""
    caplog.set_level("INFO", logger="bridge.app")
    if refusal == "unreadable secret":
        del app.environ["GITHUB_WEBHOOK_SECRET"]
        delivery, expected = github_delivery("push", PUSH, delivery_id="refused-1"), (503, "push")
    elif refusal == "forged signature":
        delivery = github_delivery("push", PUSH, secret="forged", delivery_id="refused-1")
        expected = (401, "push")
    else:
        delivery = gitlab_delivery(gitlab_payload("push"), token="forged", event_uuid="refused-1")
        expected = (401, "Push Hook")
    assert app.send(delivery).status_code == expected[0]
    (record,) = [r for r in caplog.records if r.name == "bridge.app" and r.getMessage() == "delivery"]
    assert (vars(record)["delivery"], vars(record)["event"]) == ("refused-1", expected[1])
    assert app.persisted() == 0


def _rerun_suite(sha: str) -> dict[str, Any]:
    """A check_suite re-run as GitHub sends it for a fork's commit: no pull request listed."""
    payload = github_payload("check_suite", "rerequested")
    payload["check_suite"]["head_sha"] = sha
    payload["check_suite"]["pull_requests"] = []
    payload["repository"] = PR_OPENED["repository"]
    return payload


def test_a_rerun_builds_what_the_original_built_with_its_fork_restrictions(world: World) -> None:
    app = make_app(
        world,
        github_route_extra=(
            'forks = "without-secrets"\nenv = { NPM_TOKEN = "secretsmanager:ci/npm#token", MODE = "ci" }'
        ),
    )
    fork = _fork_pr()
    assert app.send(fork).status_code == 202
    assert app.builds_started() == 1
    sha = json.loads(fork.body)["pull_request"]["head"]["sha"]

    rerun = app.send(github_delivery("check_suite", _rerun_suite(sha), delivery_id="rerun-fork-1"))

    assert rerun.status_code == 202, rerun.get_json()
    assert app.builds_started() == 2
    original, again = world.double.calls("StartBuild")
    for start in (original, again):
        assert start.params["sourceVersion"] == sha
        assert start.params["sourceLocationOverride"] == "https://github.com/mallory/Hello-World.git"
        names = {variable["name"] for variable in start.params["environmentVariablesOverride"]}
        assert "MODE" in names
        assert "NPM_TOKEN" not in names
    assert again.params["idempotencyToken"] != original.params["idempotencyToken"]
