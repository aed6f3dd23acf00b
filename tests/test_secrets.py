"""Secret references and SecretStore, against moto's Secrets Manager over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
import pytest
import requests
from botocore.config import Config
from botocore.credentials import CredentialResolver

from bridge.errors import BridgeError, ConfigError, CredentialsError, SecretError
from bridge.secret import Secret
from bridge.secrets import SecretRef, SecretStore, parse_reference

REGION = "us-east-1"


def fake_account_session() -> boto3.session.Session:
    return boto3.session.Session(
        region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


# -- moto: the shared server from tests/plugins/aws.py (`moto_url` empties it before each test) ----


@pytest.fixture(scope="module")
def aws_session() -> boto3.session.Session:
    """One session for the module: botocore caches loaded service models per session."""
    return fake_account_session()


@dataclass
class Moto:
    session: boto3.session.Session
    endpoint: str
    admin: Any  # a secretsmanager client for arranging secrets
    calls: list[str]  # secret ids the store's client asked for, in order

    def factory(self) -> Any:
        client = self.session.client(
            "secretsmanager",
            endpoint_url=self.endpoint,
            config=Config(retries={"mode": "standard", "max_attempts": 2}),
        )

        def count(params: dict[str, Any], **_: Any) -> None:
            self.calls.append(str(params["SecretId"]))

        client.meta.events.register("provide-client-params.secrets-manager.GetSecretValue", count)
        return client

    def secret(self, value: str | None = None, *, binary: bytes | None = None) -> tuple[str, str]:
        """A fresh secret with a unique name; returns (name, arn)."""
        name = f"bridge/test/{uuid.uuid4().hex}"
        extra: dict[str, Any] = {"SecretString": value} if binary is None else {"SecretBinary": binary}
        created = self.admin.create_secret(Name=name, **extra)
        return name, str(created["ARN"])


@pytest.fixture
def moto(aws_session: boto3.session.Session, moto_url: str) -> Moto:
    admin = aws_session.client("secretsmanager", endpoint_url=moto_url)
    return Moto(aws_session, moto_url, admin, [])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def assert_no_value(exc: BaseException, *values: str) -> None:
    """Neither the error nor anything chained to it may show a secret value."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), str(getattr(seen, "hint", ""))):
            for value in values:
                assert value not in text
        seen = seen.__cause__ or seen.__context__


# -- parse_reference --------------------------------------------------------------------------------

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gitlab/token-AbCdEf"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("secretsmanager:gitlab/token", SecretRef("secretsmanager", "gitlab/token")),
        ("secretsmanager:gitlab/token#api", SecretRef("secretsmanager", "gitlab/token", "api")),
        ("secretsmanager:a+b=c.d@e_f-g!h", SecretRef("secretsmanager", "a+b=c.d@e_f-g!h")),
        (f"secretsmanager:{ARN}", SecretRef("secretsmanager", ARN)),
        (f"secretsmanager:{ARN}#private-key", SecretRef("secretsmanager", ARN, "private-key")),
        (
            "secretsmanager:arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x",
            SecretRef("secretsmanager", "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x"),
        ),
        ("secretsmanager:app#key with spaces", SecretRef("secretsmanager", "app", "key with spaces")),
        ("env:GITLAB_TOKEN", SecretRef("env", "GITLAB_TOKEN")),
        ("  env:_X1  ", SecretRef("env", "_X1")),
    ],
)
def test_parse_valid_references(ref: str, expected: SecretRef) -> None:
    assert parse_reference(ref, key="gitlab.token") == expected


@pytest.mark.parametrize(
    "ref",
    [
        "glpat-abcdefghijklmnop",  # a literal: the value itself
        "",
        "secretsmanager:",
        "secretsmanager:#key",
        "secretsmanager:name#",
        "secretsmanager:name with space",
        "secretsmanager:id:json-key:AWSCURRENT:",  # CodeBuild's form, not ours
        "secretsmanager:arn:aws:secretsmanager:eu-west-1:1234:secret:x",  # short account id
        "secretsmanager:" + "n" * 513,
        "SecretsManager:name",
        "ssm:/param",
        "env:",
        "env:1ABC",
        "env:A-B",
        "env:NAME#key",
        "vault:secret/x",
        "https://example.com/secret",
    ],
)
def test_parse_bad_references_name_the_key_not_the_value(ref: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_reference(ref, key="routes[2].env.TOKEN")
    assert caught.value.key == "routes[2].env.TOKEN"
    assert str(caught.value).startswith("routes[2].env.TOKEN: ")
    assert "secretsmanager:NAME_OR_ARN#json-key" in caught.value.hint
    if len(ref) > 16:  # long enough to be told apart from the words of the message
        assert_no_value(caught.value, ref)


def test_secret_ref_round_trips_to_its_text() -> None:
    for text in ("secretsmanager:a/b#k", f"secretsmanager:{ARN}", "env:X"):
        assert str(parse_reference(text, key="k")) == text


# -- reading Secrets Manager ------------------------------------------------------------------------


def test_plain_secret_string(moto: Moto) -> None:
    name, _ = moto.secret("glpat-plain-value")
    secret = SecretStore(moto.factory).get(f"secretsmanager:{name}")
    assert isinstance(secret, Secret)
    assert secret.reveal() == "glpat-plain-value"


def test_json_key_and_one_call_per_secret(moto: Moto) -> None:
    name, _ = moto.secret(json.dumps({"token": "t-value", "app_id": 12345, "nested": {"a": 1}}))
    store = SecretStore(moto.factory)
    assert store.get(f"secretsmanager:{name}#token").reveal() == "t-value"
    assert store.get(f"secretsmanager:{name}#app_id").reveal() == "12345"
    assert json.loads(store.get(f"secretsmanager:{name}#nested").reveal()) == {"a": 1}
    assert moto.calls == [name]  # the whole secret is cached once, whatever key is asked for


def test_arn_reference(moto: Moto) -> None:
    _, arn = moto.secret("by-arn-value")
    assert SecretStore(moto.factory).get(f"secretsmanager:{arn}").reveal() == "by-arn-value"


def test_missing_secret_names_the_secret_and_key(moto: Moto) -> None:
    with pytest.raises(SecretError) as caught:
        SecretStore(moto.factory).get("secretsmanager:bridge/does-not-exist", key="gitlab.token")
    message = str(caught.value)
    assert "gitlab.token" in message
    assert "bridge/does-not-exist" in message
    assert "not found" in message
    assert "region" in caught.value.hint


def test_missing_json_key(moto: Moto) -> None:
    name, _ = moto.secret(json.dumps({"token": "v-a-l-u-e"}))
    with pytest.raises(SecretError) as caught:
        SecretStore(moto.factory).get(f"secretsmanager:{name}#tokne", key="github.token")
    assert "'tokne'" in str(caught.value)
    assert "keys: token" in str(caught.value)
    assert_no_value(caught.value, "v-a-l-u-e")


@pytest.mark.parametrize("value", ["not json at all: s3cr3t-value", '["s3cr3t-value"]', '"s3cr3t-value"'])
def test_json_key_on_a_secret_that_is_not_a_json_object(moto: Moto, value: str) -> None:
    name, _ = moto.secret(value)
    with pytest.raises(SecretError) as caught:
        SecretStore(moto.factory).get(f"secretsmanager:{name}#token")
    assert "no key 'token'" in str(caught.value)
    assert_no_value(caught.value, "s3cr3t-value")


def test_secret_binary_is_refused_clearly(moto: Moto) -> None:
    name, _ = moto.secret(binary=b"\x00binary-s3cr3t")
    with pytest.raises(SecretError) as caught:
        SecretStore(moto.factory).get(f"secretsmanager:{name}")
    assert "SecretBinary" in str(caught.value)
    assert "SecretString" in caught.value.hint


def test_secretsmanager_reference_without_aws_is_a_clear_error() -> None:
    with pytest.raises(SecretError, match="AWS"):
        SecretStore(None).get("secretsmanager:x", key="gitlab.token")


def test_client_factory_is_lazy_and_called_once(moto: Moto) -> None:
    built: list[int] = []

    def factory() -> Any:
        built.append(1)
        return moto.factory()

    store = SecretStore(factory, environ={"TOKEN": "from-env"})
    assert store.get("env:TOKEN").reveal() == "from-env"
    assert built == []  # no AWS client (nor credential lookup) for env: references
    name, _ = moto.secret("v1")
    other, _ = moto.secret("v2")
    store.get(f"secretsmanager:{name}")
    store.get(f"secretsmanager:{other}")
    assert built == [1]


def test_no_credentials_is_a_credentials_error(moto: Moto) -> None:
    def factory() -> Any:
        session = botocore.session.Session()
        session.register_component("credential_provider", CredentialResolver(providers=[]))
        return session.create_client("secretsmanager", region_name=REGION, endpoint_url=moto.endpoint)

    with pytest.raises(CredentialsError) as caught:
        SecretStore(factory).get("secretsmanager:anything", key="gitlab.token")
    assert "IAM role" in caught.value.hint


def test_unreachable_endpoint_is_a_retryable_secret_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes

    def factory() -> Any:
        return fake_account_session().client(
            "secretsmanager",
            endpoint_url=f"http://127.0.0.1:{port}",
            config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1),
        )

    with pytest.raises(SecretError) as caught:
        SecretStore(factory).get("secretsmanager:x")
    assert "retried" in caught.value.hint


# -- access denied, with moto enforcing IAM (its own process: enforcement is process-wide) -------


@pytest.fixture(scope="module")
def enforcing_moto() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The first 3 requests (create user, access key, secret) run unauthenticated; then IAM applies.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/moto-api/data.json", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def test_access_denied_hints_at_get_secret_value(enforcing_moto: str) -> None:
    admin = fake_account_session()
    iam = admin.client("iam", endpoint_url=enforcing_moto)
    iam.create_user(UserName="bridge")
    key = iam.create_access_key(UserName="bridge")["AccessKey"]
    admin.client("secretsmanager", endpoint_url=enforcing_moto).create_secret(
        Name="locked", SecretString="locked-s3cr3t"
    )

    def factory() -> Any:  # the bridge user has no policy at all
        return boto3.session.Session(
            region_name=REGION,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        ).client("secretsmanager", endpoint_url=enforcing_moto)

    with pytest.raises(SecretError) as caught:
        SecretStore(factory).get("secretsmanager:locked", key="gitlab.token")
    assert "access denied" in str(caught.value)
    assert "secretsmanager:GetSecretValue" in caught.value.hint
    assert_no_value(caught.value, "locked-s3cr3t", key["SecretAccessKey"])


# -- env: -------------------------------------------------------------------------------------------


def test_env_reference_is_read_live() -> None:
    environ = {"GITLAB_TOKEN": "first"}
    store = SecretStore(None, environ=environ)
    assert store.get("env:GITLAB_TOKEN").reveal() == "first"
    environ["GITLAB_TOKEN"] = "second"
    assert store.get("env:GITLAB_TOKEN").reveal() == "second"


def test_missing_env_variable_names_it() -> None:
    with pytest.raises(SecretError) as caught:
        SecretStore(None, environ={}).get("env:WEBHOOK_SECRET", key="gitlab.webhook_secret")
    assert "gitlab.webhook_secret" in str(caught.value)
    assert "WEBHOOK_SECRET" in str(caught.value)
    assert "export WEBHOOK_SECRET" in caught.value.hint


def test_get_all_resolves_in_order_and_names_the_failing_item() -> None:
    store = SecretStore(None, environ={"A": "a-value", "B": "b-value"})
    assert [s.reveal() for s in store.get_all(["env:A", "env:B"])] == ["a-value", "b-value"]
    with pytest.raises(SecretError, match=r"github\.webhook_secrets\[1\]"):
        store.get_all(["env:A", "env:C"], key="github.webhook_secrets")
    with pytest.raises(ConfigError) as caught:
        store.get_all(["env:A", "literal"], key="github.webhook_secrets")
    assert caught.value.key == "github.webhook_secrets[1]"


# -- caching, invalidation, refresh on auth failure -------------------------------------------------


def test_cached_until_ttl_expires(moto: Moto) -> None:
    name, _ = moto.secret("v1")
    clock = Clock()
    store = SecretStore(moto.factory, ttl_seconds=300, clock=clock)
    ref = f"secretsmanager:{name}"
    assert store.get(ref).reveal() == "v1"
    moto.admin.put_secret_value(SecretId=name, SecretString="v2")
    clock.now += 299
    assert store.get(ref).reveal() == "v1"  # still cached
    assert moto.calls == [name]
    clock.now += 1
    assert store.get(ref).reveal() == "v2"  # expired: read again
    assert moto.calls == [name, name]


def test_invalidate_forces_a_fresh_read(moto: Moto) -> None:
    name, _ = moto.secret("v1")
    store = SecretStore(moto.factory, clock=Clock())
    ref = f"secretsmanager:{name}"
    assert store.get(ref).reveal() == "v1"
    moto.admin.put_secret_value(SecretId=name, SecretString="v2")
    store.invalidate(ref)
    assert store.get(ref).reveal() == "v2"
    assert moto.calls == [name, name]


def test_concurrent_readers_share_one_fetch(moto: Moto) -> None:
    name, _ = moto.secret("shared")
    store = SecretStore(moto.factory)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        results.append(store.get(f"secretsmanager:{name}").reveal())

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == ["shared"] * 8
    assert moto.calls == [name]


class RejectedError(Exception):
    pass


def rejecting(accepted: str, seen: list[str]) -> Callable[[Secret], str]:
    """A stand-in API call: accepts one token value, rejects any other like a 401 would."""

    def use(token: Secret) -> str:
        seen.append(token.reveal())
        if token.reveal() != accepted:
            raise RejectedError("401 Unauthorized")
        return "ok"

    return use


def test_with_refresh_rereads_a_rotated_secret_once(moto: Moto) -> None:
    name, _ = moto.secret("old-token")
    store = SecretStore(moto.factory, clock=Clock())
    ref = f"secretsmanager:{name}"
    assert store.get(ref).reveal() == "old-token"  # cached
    moto.admin.put_secret_value(SecretId=name, SecretString="new-token")  # rotation
    seen: list[str] = []
    result = store.with_refresh(
        ref, rejecting("new-token", seen), is_auth_failure=lambda e: isinstance(e, RejectedError)
    )
    assert result == "ok"
    assert seen == ["old-token", "new-token"]
    assert moto.calls == [name, name]
    assert store.get(ref).reveal() == "new-token"  # the fresh value stays cached


def test_with_refresh_second_failure_propagates(moto: Moto) -> None:
    name, _ = moto.secret("revoked-token")
    store = SecretStore(moto.factory)
    seen: list[str] = []
    with pytest.raises(RejectedError):
        store.with_refresh(
            f"secretsmanager:{name}",
            rejecting("something-else", seen),
            is_auth_failure=lambda e: isinstance(e, RejectedError),
        )
    assert seen == ["revoked-token", "revoked-token"]  # exactly one re-read, one retry
    assert moto.calls == [name, name]


def test_with_refresh_leaves_other_errors_alone(moto: Moto) -> None:
    name, _ = moto.secret("token")
    store = SecretStore(moto.factory)
    calls: list[int] = []

    def use(_: Secret) -> str:
        calls.append(1)
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError):
        store.with_refresh(
            f"secretsmanager:{name}", use, is_auth_failure=lambda e: isinstance(e, RejectedError)
        )
    assert calls == [1]
    assert moto.calls == [name]


# -- no value in any error ----------------------------------------------------------------------


def test_no_secret_value_in_any_error(moto: Moto) -> None:
    value = "sup3r-s3cr3t-value-0042"
    name, _ = moto.secret(value)
    json_name, _ = moto.secret(json.dumps({"k": value}))
    store = SecretStore(moto.factory, environ={"E": value})
    failing = [
        f"secretsmanager:{name}#k",  # not JSON
        f"secretsmanager:{json_name}#missing",
        "secretsmanager:absent-" + uuid.uuid4().hex,
        "env:ABSENT",
        value,  # the value pasted as a reference
        f"env:{value}",
    ]
    errors: list[BridgeError] = []
    for ref in failing:
        with pytest.raises(BridgeError) as caught:
            store.get(ref, key="gitlab.token")
        errors.append(caught.value)
    assert len(errors) == len(failing)
    for error in errors:
        assert_no_value(error, value)
    assert value not in repr(store.get("env:E"))
