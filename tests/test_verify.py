"""Signature and token checks: published vectors, third-party signers, tampering, and fuzzing."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import standardwebhooks
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import SignatureError
from bridge.secret import Secret
from bridge.verify import (
    CertificateCache,
    hmac_sha256,
    is_allowed_sns_certificate_url,
    verify_github_signature,
    verify_gitlab_token,
    verify_sns_message,
    verify_standard_webhook,
)
from tests.fixtures import TESTS
from tests.signing import (
    github_signature,
    new_standard_webhook_secret,
    standard_webhook_headers,
    standard_webhook_signature,
)
from tests.sns_signing import (
    TOPIC_ARN,
    RecordingFetcher,
    SnsSigner,
    default_signer,
    notification,
    self_signed_certificate,
    string_to_sign,
    subscription_confirmation,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BODIES: list[bytes] = [
    b"Hello, World!",
    b"{}",
    json.dumps(
        {"action": "opened", "title": "caf\u00e9 \u2603 \U0001f680 \u65e5\u672c"}, ensure_ascii=False
    ).encode(),
    "\u0645\u0631\u062d\u0628\u0627\n\ttabs and newlines\r\n".encode(),
    b'{"zero":"\\u0000","quote":"\\""}',
    b"x" * 70_000,
]
SECRETS = ["It's a Secret to Everybody", "s3cr\u00e9t-\u2603", "a", "k" * 200]


def _secret_free(exc: pytest.ExceptionInfo[SignatureError], *values: str) -> None:
    """Every rejection must explain itself without echoing a secret."""
    text = f"{exc.value} {exc.value.hint!r} {exc.value.args!r}"
    assert exc.value.hint, "a SignatureError must carry a hint"
    for value in values:
        if len(value) >= 6:  # shorter ones occur in ordinary words
            assert value not in text


# ---------------------------------------------------------------------------------------------- GitHub


def test_github_published_test_vector() -> None:
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    verify_github_signature(b"Hello, World!", expected, [Secret("It's a Secret to Everybody")])
    assert github_signature(b"Hello, World!", "It's a Secret to Everybody") == expected


@pytest.fixture(scope="module")
def octokit_signatures() -> dict[tuple[str, str], str]:
    """Signatures computed by @octokit/webhooks-methods `sign` in node, for every secret x body."""
    cases = [[secret, body.decode()] for secret in SECRETS for body in BODIES]
    script = (
        "import { sign } from '@octokit/webhooks-methods';"
        "let input = ''; for await (const chunk of process.stdin) input += chunk;"
        "const cases = JSON.parse(input);"
        "const out = []; for (const [s, p] of cases) out.push(await sign(s, p));"
        "process.stdout.write(JSON.stringify(out));"
    )
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=TESTS,  # node resolves the package from tests/node_modules
        check=True,
        timeout=60,
    )
    signatures = json.loads(done.stdout)
    assert len(signatures) == len(cases)
    return {(secret, body): sig for (secret, body), sig in zip(cases, signatures, strict=True)}


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("body", BODIES, ids=lambda b: f"{len(b)}B")
def test_github_accepts_octokit_signatures(
    octokit_signatures: dict[tuple[str, str], str], secret: str, body: bytes
) -> None:
    signature = octokit_signatures[(secret, body.decode())]
    assert signature == github_signature(body, secret)  # our test-side signer agrees with octokit
    verify_github_signature(body, signature, [Secret(secret)])
    with pytest.raises(SignatureError) as exc:
        verify_github_signature(body + b" ", signature, [Secret(secret)])
    _secret_free(exc, secret)


def test_github_rotation_second_secret_matches() -> None:
    body = BODIES[2]
    verify_github_signature(body, github_signature(body, "new"), [Secret("old"), Secret("new")])
    verify_github_signature(body, github_signature(body, "old"), [Secret("old"), Secret("new")])


def test_github_uppercase_hex_is_the_same_mac() -> None:
    body = b"Hello, World!"
    signature = github_signature(body, "k")
    verify_github_signature(body, "sha256=" + signature.removeprefix("sha256=").upper(), [Secret("k")])


GOOD = github_signature(b"Hello, World!", "right")


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"Hello, World!", None, "missing X-Hub-Signature-256"),
        (b"Hello, World!", "", "missing X-Hub-Signature-256"),
        (b"Hello, World!", github_signature(b"Hello, World!", "wrong"), "does not match"),
        (b"Hello, World?", GOOD, "does not match"),
        (b"Hello, World!!", GOOD, "does not match"),
        (b"Hello, World", GOOD, "does not match"),
        (b"Hello, World!", GOOD[:-1], "malformed"),
        (b"Hello, World!", GOOD + "0", "malformed"),
        (b"Hello, World!", GOOD.removeprefix("sha256="), "malformed"),
        (b"Hello, World!", "SHA256=" + GOOD.removeprefix("sha256="), "malformed"),
        (b"Hello, World!", " " + GOOD, "malformed"),
        (b"Hello, World!", GOOD + "\n", "malformed"),
        (b"Hello, World!", "sha1=" + hmac.new(b"right", b"Hello, World!", "sha1").hexdigest(), "malformed"),
        (b"Hello, World!", "sha256=" + "zz" * 32, "malformed"),
        (b"Hello, World!", "sha256=" + " ".join([GOOD[7:][i : i + 2] for i in range(0, 64, 2)]), "malformed"),
    ],
    ids=[
        "no-header",
        "empty-header",
        "wrong-secret",
        "byte-changed",
        "byte-added",
        "byte-removed",
        "truncated",
        "too-long",
        "no-prefix",
        "upper-prefix",
        "leading-space",
        "trailing-newline",
        "sha1-only",
        "not-hex",
        "spaced-hex",
    ],
)
def test_github_rejects(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(SignatureError, match=message) as exc:
        verify_github_signature(body, header, [Secret("right")])
    assert exc.value.http_status == 401
    _secret_free(exc, "right")


@pytest.mark.parametrize("secrets", [[], [Secret("")]], ids=["none", "empty"])
def test_github_without_a_usable_secret_refuses_even_an_empty_key_signature(secrets: list[Secret]) -> None:
    body = b"{}"
    with pytest.raises(SignatureError, match="no GitHub webhook secret"):
        verify_github_signature(body, github_signature(body, ""), secrets)


# ---------------------------------------------------------------------------------------------- GitLab


def test_gitlab_token_matches_any_configured_token() -> None:
    tokens = [Secret("old-token"), Secret("new-token")]
    verify_gitlab_token("old-token", tokens)
    verify_gitlab_token("new-token", tokens)


@pytest.mark.parametrize(
    ("header", "tokens", "message"),
    [
        (None, ["tok"], "missing X-Gitlab-Token"),
        ("", ["tok"], "missing X-Gitlab-Token"),
        ("tok2", ["tok"], "does not match"),
        ("to", ["tok"], "does not match"),
        ("TOK", ["tok"], "does not match"),
        ("tok ", ["tok"], "does not match"),
        ("", [""], "no GitLab webhook token"),
        ("anything", [], "no GitLab webhook token"),
    ],
)
def test_gitlab_token_rejects(header: str | None, tokens: list[str], message: str) -> None:
    with pytest.raises(SignatureError, match=message) as exc:
        verify_gitlab_token(header, [Secret(t) for t in tokens])
    _secret_free(exc, *(t for t in tokens if t))


# ------------------------------------------------------------------------------------ Standard Webhooks

NOW = 1_700_000_000


@pytest.mark.parametrize("body", BODIES, ids=lambda b: f"{len(b)}B")
def test_standard_webhook_accepts_the_standardwebhooks_package(body: bytes) -> None:
    secret = new_standard_webhook_secret()
    signature = standardwebhooks.Webhook(secret).sign(
        msg_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        timestamp=dt.datetime.fromtimestamp(NOW, dt.UTC),
        data=body.decode(),
    )
    headers = {
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": str(NOW),
        "webhook-signature": signature,
    }
    assert (
        verify_standard_webhook(body, headers, [Secret(secret)], now=NOW) == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
    )
    # and our test-side signer produces what the package produces
    assert standard_webhook_headers(body, secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", NOW) == headers


def test_standard_webhook_test_signer_passes_the_packages_own_verifier() -> None:
    secret = new_standard_webhook_secret()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = standard_webhook_headers(BODIES[2], secret, "delivery-1", now)
    assert standardwebhooks.Webhook(secret).verify(BODIES[2], headers) == json.loads(BODIES[2])


def _headers(body: bytes = b"{}", secret: str = "", msg_id: str = "id-1", ts: int = NOW) -> dict[str, str]:
    return standard_webhook_headers(body, secret or SW_SECRET, msg_id, ts)


SW_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_standard_webhook_header_names_are_case_insensitive() -> None:
    headers = {name.title(): value for name, value in _headers().items()}
    assert "Webhook-Signature" in headers
    assert verify_standard_webhook(b"{}", headers, [Secret(SW_SECRET)], now=NOW) == "id-1"


@pytest.mark.parametrize(
    "configured",
    [
        SW_SECRET.removeprefix("whsec_"),  # GitLab UI may show the token without the prefix
        SW_SECRET.rstrip("="),  # unpadded base64
    ],
    ids=["no-prefix", "unpadded"],
)
def test_standard_webhook_secret_forms(configured: str) -> None:
    verify_standard_webhook(b"{}", _headers(), [Secret(configured)], now=NOW)


def test_standard_webhook_rotation_and_several_signatures() -> None:
    old = new_standard_webhook_secret()
    headers = _headers()
    verify_standard_webhook(b"{}", headers, [Secret(old), Secret(SW_SECRET)], now=NOW)
    both = f"{standard_webhook_signature(b'{}', old, 'id-1', NOW)} {headers['webhook-signature']}"
    verify_standard_webhook(b"{}", {**headers, "webhook-signature": both}, [Secret(SW_SECRET)], now=NOW)
    garbage_first = f"v1,!!notbase64 v2,abc nocomma {headers['webhook-signature']}"
    verify_standard_webhook(
        b"{}", {**headers, "webhook-signature": garbage_first}, [Secret(SW_SECRET)], now=NOW
    )


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_standard_webhook_tolerance_edges_accepted(skew: int) -> None:
    verify_standard_webhook(b"{}", _headers(ts=NOW + skew), [Secret(SW_SECRET)], now=NOW)


def _sig_of(headers: Mapping[str, str]) -> str:
    return headers["webhook-signature"].removeprefix("v1,")


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{} ", _headers(), "does not match"),
        (b"{}", _headers(secret=new_standard_webhook_secret()), "does not match"),
        (b"{}", {**_headers(), "webhook-id": "id-2"}, "does not match"),
        (b"{}", _headers(ts=NOW - 301), "old"),
        (b"{}", _headers(ts=NOW + 301), "future"),
        (b"{}", _headers(ts=0), "old"),
        (b"{}", {**_headers(), "webhook-timestamp": f"{NOW}.0"}, "whole number"),
        (b"{}", {**_headers(), "webhook-timestamp": "abc"}, "whole number"),
        (b"{}", {**_headers(), "webhook-timestamp": "-5"}, "whole number"),
        (b"{}", {**_headers(), "webhook-timestamp": f" {NOW}"}, "whole number"),
        (b"{}", {**_headers(), "webhook-timestamp": "1_700_000_000"}, "whole number"),
        (b"{}", {**_headers(), "webhook-timestamp": "\u0661\u0667\u0660\u0660"}, "whole number"),
        (b"{}", {**_headers(), "webhook-timestamp": "9" * 400}, "whole number"),
        (b"{}", {**_headers(), "webhook-signature": "v1a," + _sig_of(_headers())}, "no 'v1,<base64>'"),
        (b"{}", {**_headers(), "webhook-signature": "v2," + _sig_of(_headers())}, "no 'v1,<base64>'"),
        (b"{}", {**_headers(), "webhook-signature": _sig_of(_headers())}, "no 'v1,<base64>'"),
        (b"{}", {**_headers(), "webhook-signature": "v1," + _sig_of(_headers())[:-4]}, "does not match"),
        (b"{}", {k: v for k, v in _headers().items() if k != "webhook-id"}, "missing webhook-id"),
        (
            b"{}",
            {k: v for k, v in _headers().items() if k != "webhook-timestamp"},
            "missing webhook-timestamp",
        ),
        (
            b"{}",
            {k: v for k, v in _headers().items() if k != "webhook-signature"},
            "missing webhook-signature",
        ),
        (b"{}", {}, "missing webhook-id, webhook-timestamp, webhook-signature headers"),
    ],
    ids=[
        "body-changed",
        "wrong-secret",
        "id-changed",
        "stale",
        "future",
        "epoch",
        "fractional-ts",
        "alpha-ts",
        "negative-ts",
        "spaced-ts",
        "underscore-ts",
        "arabic-digits-ts",
        "huge-ts",
        "v1a-prefix",
        "v2-prefix",
        "no-version",
        "truncated",
        "no-id",
        "no-timestamp",
        "no-signature",
        "no-headers",
    ],
)
def test_standard_webhook_rejects(body: bytes, headers: dict[str, str], message: str) -> None:
    with pytest.raises(SignatureError, match=message) as exc:
        verify_standard_webhook(body, headers, [Secret(SW_SECRET)], now=NOW)
    _secret_free(exc, SW_SECRET, SW_SECRET.removeprefix("whsec_"))


@pytest.mark.parametrize(
    "configured", [[], ["whsec_"], ["whsec_!!!not-base64"]], ids=["none", "empty", "bad"]
)
def test_standard_webhook_without_a_usable_secret(configured: list[str]) -> None:
    with pytest.raises(SignatureError, match="no usable GitLab signing token"):
        verify_standard_webhook(b"{}", _headers(), [Secret(s) for s in configured], now=NOW)


# ------------------------------------------------------------------------------------------------- SNS

OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-else"
ALLOWED = frozenset({TOPIC_ARN, "arn:aws:sns:eu-west-1:123456789012:second"})

UNSIGNED_MESSAGES: dict[str, Callable[[], dict[str, str]]] = {
    "notification": lambda: notification('{"detail-type":"CodeBuild Build State Change"}'),
    "notification-subject": lambda: notification("caf\u00e9 \u2603\nline two", subject="Build \u00e9tat"),
    "subscription": subscription_confirmation,
    "unsubscribe": lambda: subscription_confirmation(unsubscribe=True),
}


@pytest.fixture(scope="module")
def signer() -> SnsSigner:
    return default_signer()


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("kind", list(UNSIGNED_MESSAGES))
def test_sns_accepts_each_type_and_version(signer: SnsSigner, kind: str, version: str) -> None:
    message = signer.sign(UNSIGNED_MESSAGES[kind](), version)
    fetcher = signer.fetcher()
    verify_sns_message(message, fetch_certificate=fetcher, allowed_topic_arns=ALLOWED)
    assert fetcher.calls == [signer.cert_url]
    # the verified string really is what a SHA1 / SHA256 signature covers (not a vacuous pass)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 - SNS v1 is SHA1
    signer.private_key.public_key().verify(
        base64.b64decode(message["Signature"]), string_to_sign(message), padding.PKCS1v15(), algorithm
    )


def test_sns_accepts_json_round_trip_with_unicode(signer: SnsSigner) -> None:
    message = signer.sign(
        notification(json.dumps({"k": "\u65e5\u672c\u8a9e \U0001f680"}, ensure_ascii=False))
    )
    wire = json.loads(json.dumps(message))  # SNS escapes; the parsed value is what was signed
    verify_sns_message(wire, fetch_certificate=signer.fetcher(), allowed_topic_arns=ALLOWED)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("notification", "Message", '{"detail-type":"CodeBuild Build State Change!"}'),
        ("notification", "MessageId", "00000000-0000-0000-0000-000000000000"),
        ("notification", "Timestamp", "2012-05-02T00:54:06.655Z"),
        ("notification", "TopicArn", "arn:aws:sns:eu-west-1:123456789012:second"),
        ("notification", "Subject", "added subject"),
        ("notification-subject", "Subject", "changed"),
        ("notification", "Type", "SubscriptionConfirmation"),
        ("subscription", "Token", "forged-token"),
        (
            "subscription",
            "SubscribeURL",
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&x=1",
        ),
        ("unsubscribe", "Message", "changed"),
        ("subscription", "Type", "UnsubscribeConfirmation"),
    ],
)
def test_sns_rejects_tampered_message(
    signer: SnsSigner, version: str, kind: str, field: str, value: str
) -> None:
    message = {**signer.sign(UNSIGNED_MESSAGES[kind](), version), field: value}
    with pytest.raises(SignatureError):
        verify_sns_message(message, fetch_certificate=signer.fetcher(), allowed_topic_arns=ALLOWED)


@pytest.mark.parametrize("kind", list(UNSIGNED_MESSAGES))
def test_sns_rejects_signature_of_another_version(signer: SnsSigner, kind: str) -> None:
    message = {**signer.sign(UNSIGNED_MESSAGES[kind](), "1"), "SignatureVersion": "2"}
    with pytest.raises(SignatureError, match="does not verify"):
        verify_sns_message(message, fetch_certificate=signer.fetcher(), allowed_topic_arns=ALLOWED)


def test_sns_rejects_a_key_other_than_the_certificates(signer: SnsSigner) -> None:
    impostor = SnsSigner.create(signer.cert_url)
    message = impostor.sign(notification("hi"))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_sns_message(message, fetch_certificate=signer.fetcher(), allowed_topic_arns=ALLOWED)


BAD_CERT_URLS = [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
    "https://sns.evil.com/SimpleNotificationService-a.pem",
    "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-a.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.txt",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem.txt",
    "https://sns.us-east-1.amazonaws.com/",
    "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
    "https://user:pw@sns.us-east-1.amazonaws.com/x.pem",
    "https://evil.com#@sns.us-east-1.amazonaws.com/x.pem",
    "https://evil.com\\@sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com:8443/x.pem",
    "https://sns.us-east-1.amazonaws.com/x.pem?x=1",
    "https://sns.us-east-1.amazonaws.com/x.pem#frag",
    "https://sns.us-east-1.amazonaws.com/x?.pem",
    "https://sns.us-east-1.amazonaws.com\n.evil.com/x.pem",
    "https://sns.us-east-1.amazonaws.com/x.pem\n",
    "https://sns.us-east-1.amazonaws.com\t/x.pem",
    "https://SNS.US-EAST-1.AMAZONAWS.COM.evil.com/x.pem",
    "https://sns.us-east-1.amazonaws.co/x.pem",
    "https://sns.us-east-1.amazonaws.com.cn.evil.com/x.pem",
    "https://sns..amazonaws.com/x.pem",
    "https://sns.us_east_1.amazonaws.com/x.pem",
    "https://xsns.us-east-1.amazonaws.com/x.pem",
    "https://s3.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com./x.pem",
    "https://sns.us-east-1.amazonaws\u3002com/x.pem",
    "ftp://sns.us-east-1.amazonaws.com/x.pem",
    "//sns.us-east-1.amazonaws.com/x.pem",
    "https:sns.us-east-1.amazonaws.com/x.pem",
    "file:///etc/x.pem",
    "",
]
GOOD_CERT_URLS = [
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
    "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-3242f46b5ef7d1b01e9bd6f1d8b11d6e.pem",
    "https://sns.us-gov-west-1.amazonaws.com/a/b.pem",
]


@pytest.mark.parametrize("url", BAD_CERT_URLS)
def test_sns_rejects_certificate_url_without_fetching(url: str) -> None:
    assert not is_allowed_sns_certificate_url(url)
    key_holder = SnsSigner(default_signer().private_key, default_signer().certificate_pem, url)
    message = key_holder.sign(notification("hi"))
    fetcher = RecordingFetcher({url: key_holder.certificate_pem})  # would verify, were it fetched
    with pytest.raises(SignatureError, match="SigningCertURL"):
        verify_sns_message(message, fetch_certificate=fetcher, allowed_topic_arns=ALLOWED)
    assert fetcher.calls == []


@pytest.mark.parametrize("url", GOOD_CERT_URLS)
def test_sns_certificate_urls_of_every_partition_are_allowed(url: str) -> None:
    assert is_allowed_sns_certificate_url(url)
    key_holder = SnsSigner(default_signer().private_key, default_signer().certificate_pem, url)
    fetcher = key_holder.fetcher()
    verify_sns_message(
        key_holder.sign(notification("hi")), fetch_certificate=fetcher, allowed_topic_arns=ALLOWED
    )
    assert fetcher.calls == [url]


def _resigned(signer: SnsSigner, **changes: Any) -> dict[str, Any]:
    return {**signer.sign(notification("hi")), **changes}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: _resigned(s, TopicArn=OTHER_TOPIC), "not an allowed topic"),
        (lambda s: s.sign(notification("hi", topic_arn=OTHER_TOPIC)), "not an allowed topic"),
        (lambda s: {k: v for k, v in s.sign(notification("hi")).items() if k != "TopicArn"}, "allowed topic"),
        (lambda s: _resigned(s, SignatureVersion="3"), "SignatureVersion '3'"),
        (lambda s: _resigned(s, SignatureVersion=2), "SignatureVersion 2"),
        (lambda s: _resigned(s, SignatureVersion=None), "SignatureVersion None"),
        (lambda s: _resigned(s, Type="Notice"), "Type 'Notice'"),
        (lambda s: _resigned(s, Type=None), "Type None"),
        (lambda s: _resigned(s, Signature="not base64!"), "not base64"),
        (lambda s: _resigned(s, Signature=""), "missing"),
        (lambda s: _resigned(s, Signature=None), "missing"),
        (lambda s: _resigned(s, Message=None), "no string 'Message'"),
        (lambda s: _resigned(s, MessageId=7), "no string 'MessageId'"),
        (lambda s: _resigned(s, SigningCertURL=None), "SigningCertURL"),
        (lambda s: [s.sign(notification("hi"))], "not a JSON object"),
    ],
    ids=[
        "topic-swapped",
        "topic-signed-but-not-allowed",
        "no-topic",
        "version-3",
        "version-int",
        "version-null",
        "bad-type",
        "no-type",
        "signature-not-b64",
        "signature-empty",
        "signature-null",
        "message-null",
        "message-id-int",
        "cert-url-null",
        "not-an-object",
    ],
)
def test_sns_rejects_before_fetching(
    signer: SnsSigner, make: Callable[[SnsSigner], Any], message: str
) -> None:
    fetcher = signer.fetcher()
    with pytest.raises(SignatureError, match=message):
        verify_sns_message(make(signer), fetch_certificate=fetcher, allowed_topic_arns=ALLOWED)
    assert fetcher.calls == []


def test_sns_subject_null_is_treated_as_absent(signer: SnsSigner) -> None:
    message = {**signer.sign(notification("hi")), "Subject": None}
    verify_sns_message(message, fetch_certificate=signer.fetcher(), allowed_topic_arns=ALLOWED)


def test_sns_rejects_a_certificate_that_is_not_pem(signer: SnsSigner) -> None:
    fetcher = RecordingFetcher({signer.cert_url: b"<html>not a certificate</html>"})
    with pytest.raises(SignatureError, match=r"not a PEM X\.509 certificate"):
        verify_sns_message(
            signer.sign(notification("hi")), fetch_certificate=fetcher, allowed_topic_arns=ALLOWED
        )


def test_sns_rejects_a_non_rsa_certificate(signer: SnsSigner) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    fetcher = RecordingFetcher({signer.cert_url: cert.public_bytes(serialization.Encoding.PEM)})
    with pytest.raises(SignatureError, match="RSA"):
        verify_sns_message(
            signer.sign(notification("hi")), fetch_certificate=fetcher, allowed_topic_arns=ALLOWED
        )


def test_sns_fetch_failure_is_not_a_signature_error(signer: SnsSigner) -> None:
    """A network failure must surface as itself, so the server answers 5xx and SNS retries."""
    with pytest.raises(ConnectionError):
        verify_sns_message(
            signer.sign(notification("hi")),
            fetch_certificate=RecordingFetcher({}),
            allowed_topic_arns=ALLOWED,
        )


def test_self_signed_certificate_helper_round_trips(signer: SnsSigner) -> None:
    pem = self_signed_certificate(signer.private_key, "x")
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")


# ----------------------------------------------------------------------------------- CertificateCache


def test_certificate_cache_fetches_each_url_once(signer: SnsSigner) -> None:
    fetcher = signer.fetcher()
    cache = CertificateCache(fetcher)
    for make in UNSIGNED_MESSAGES.values():
        verify_sns_message(signer.sign(make()), fetch_certificate=cache, allowed_topic_arns=ALLOWED)
    assert fetcher.calls == [signer.cert_url]


def test_certificate_cache_evicts_least_recently_used() -> None:
    fetcher = RecordingFetcher({f"u{i}": f"pem{i}".encode() for i in range(3)})
    cache = CertificateCache(fetcher, max_entries=2)
    assert cache("u0") == b"pem0"
    cache("u1")
    cache("u0")  # u0 is now the most recently used
    cache("u2")  # evicts u1
    cache("u0")
    cache("u1")
    assert fetcher.calls == ["u0", "u1", "u2", "u1"]


def test_certificate_cache_does_not_cache_failures() -> None:
    answers: list[bytes | Exception] = [ConnectionError("down"), b"pem"]
    calls: list[str] = []

    def flaky(url: str) -> bytes:
        calls.append(url)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = CertificateCache(flaky)
    with pytest.raises(ConnectionError):
        cache("u")
    assert cache("u") == b"pem"
    assert cache("u") == b"pem"
    assert calls == ["u", "u"]


def test_certificate_cache_concurrent_callers_share_one_fetch() -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow(url: str) -> bytes:
        calls.append(url)
        release.wait(5)
        return b"pem:" + url.encode()

    cache = CertificateCache(slow)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache("same"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == [b"pem:same"] * 8
    assert calls == ["same"]


def test_certificate_cache_rejects_zero_size() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CertificateCache(RecordingFetcher({}), max_entries=0)


# ------------------------------------------------------------------------------------------------ HMAC

# Around CPython's 2,048-byte GIL threshold, the 2,047-byte pieces, GitHub's 8 KB push example and
# the 64 KiB from which the hash lets go of the GIL.
HMAC_SIZES = [0, 1, 2046, 2047, 2048, 4094, 4095, 8006, 65535, 65536, 65537, 300_000]


@pytest.mark.parametrize("size", HMAC_SIZES)
def test_hmac_sha256_is_the_standard_hmac_at_every_size(size: int) -> None:
    message = bytes(index % 251 for index in range(size))
    assert hmac_sha256(b"key", message) == hmac.digest(b"key", message, hashlib.sha256)


@FUZZ
@given(key=st.binary(max_size=200), message=st.binary(max_size=10_000))
def test_fuzz_hmac_sha256_is_the_standard_hmac(key: bytes, message: bytes) -> None:
    assert hmac_sha256(key, message) == hmac.digest(key, message, hashlib.sha256)


def _another_thread_ran_during(work: Callable[[], object], *, repeats: int) -> bool:
    """Whether a spinning Python thread got a turn while `work` ran `repeats` times in a row: never,
    unless `work` let go of the GIL.

    The switch interval is raised so the interpreter forces no hand-over meanwhile; the spinner is
    made to wait for the GIL under the raised interval first (the sleep), so its wait times out only
    long after `work` is done. It stops at the first turn seen: a turn lasts the whole interval.
    """
    turns = 0
    stop = False

    def spin() -> None:
        nonlocal turns
        while not stop:
            turns += 1

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    spinner = threading.Thread(target=spin, daemon=True)
    try:
        spinner.start()
        time.sleep(0.01)
        before = turns
        for _ in range(repeats):
            work()
            if turns != before:
                return True
        return False
    finally:
        stop = True
        sys.setswitchinterval(previous)
        spinner.join()


def test_hmac_of_a_delivery_sized_body_keeps_the_gil() -> None:
    """Letting go for a ~10 µs hash hands the GIL to another request thread and queues for it back."""
    body = bytes(8006)
    assert not _another_thread_ran_during(lambda: hmac_sha256(b"key", body), repeats=500)


def test_the_gil_check_sees_a_hash_that_lets_go() -> None:
    """The check above can fail: hmac.digest() lets go of the GIL, and so does hmac_sha256 from 64 KiB."""
    body = bytes(8006)
    assert _another_thread_ran_during(lambda: hmac.digest(b"key", body, hashlib.sha256), repeats=5000)
    large = bytes(1 << 20)
    assert _another_thread_ran_during(lambda: hmac_sha256(b"key", large), repeats=50)


# --------------------------------------------------------------------------------------------- fuzzing


@FUZZ
@given(body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=64), data=st.data())
def test_fuzz_github_sign_verify_and_single_byte_change(
    body: bytes, secret: str, data: st.DataObject
) -> None:
    signature = github_signature(body, secret)
    verify_github_signature(body, signature, [Secret(secret)])
    if body:
        index = data.draw(st.integers(0, len(body) - 1), label="index")
        delta = data.draw(st.integers(1, 255), label="delta")
        changed = body[:index] + bytes([(body[index] + delta) % 256]) + body[index + 1 :]
        with pytest.raises(SignatureError):
            verify_github_signature(changed, signature, [Secret(secret)])


@FUZZ
@given(body=st.binary(max_size=512), key=st.binary(min_size=1, max_size=64), data=st.data())
def test_fuzz_standard_webhook_sign_verify_and_single_byte_change(
    body: bytes, key: bytes, data: st.DataObject
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    msg_id = data.draw(
        st.text(alphabet=st.characters(codec="ascii", min_codepoint=33), min_size=1), label="id"
    )
    headers = standard_webhook_headers(body, secret, msg_id, NOW)
    assert verify_standard_webhook(body, headers, [Secret(secret)], now=NOW) == msg_id
    if body:
        index = data.draw(st.integers(0, len(body) - 1), label="index")
        changed = body[:index] + bytes([body[index] ^ data.draw(st.integers(1, 255))]) + body[index + 1 :]
        with pytest.raises(SignatureError):
            verify_standard_webhook(changed, headers, [Secret(secret)], now=NOW)


@FUZZ
@given(header=st.one_of(st.none(), st.text(max_size=100)), body=st.binary(max_size=64))
def test_fuzz_github_header_only_ever_raises_signature_error(header: str | None, body: bytes) -> None:
    with pytest.raises(SignatureError) as exc:
        verify_github_signature(body, header, [Secret("fuzz-secret")])
    _secret_free(exc, "fuzz-secret")


@FUZZ
@given(header=st.one_of(st.none(), st.text(max_size=100)))
def test_fuzz_gitlab_token_only_ever_raises_signature_error(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_gitlab_token(header, [Secret("fuzz-token-value")])


header_names = st.sampled_from(
    ["webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "webhook-timestamp", "x"]
)
signature_lists = st.lists(
    st.tuples(st.sampled_from(["v1", "v1a", "v2", "", "v1,"]), st.text(max_size=50)).map(",".join), max_size=4
).map(" ".join)


@FUZZ
@given(
    headers=st.dictionaries(header_names, st.text(max_size=60), max_size=5),
    signature=signature_lists,
    timestamp=st.one_of(st.text(max_size=20), st.integers(NOW - 1000, NOW + 1000).map(str)),
)
def test_fuzz_standard_webhook_headers_only_ever_raise_signature_error(
    headers: dict[str, str], signature: str, timestamp: str
) -> None:
    attempt = {"webhook-id": "id", **headers, "webhook-signature": signature, "webhook-timestamp": timestamp}
    with pytest.raises(SignatureError):
        verify_standard_webhook(b"{}", attempt, [Secret(SW_SECRET)], now=NOW)
    with pytest.raises(SignatureError):
        verify_standard_webhook(b"{}", headers, [Secret(SW_SECRET)], now=NOW)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "Type",
                "SignatureVersion",
                "TopicArn",
                "SigningCertURL",
                "Signature",
                "Message",
                "Subject",
                "Token",
            ]
        ),
        json_scalars,
        min_size=1,
    ),
    url=st.text(max_size=80),
)
def test_fuzz_sns_fields_only_ever_raise_signature_error(overrides: dict[str, Any], url: str) -> None:
    signer = default_signer()
    message = {**signer.sign(notification("hi")), **overrides}
    fetcher = signer.fetcher()
    try:
        verify_sns_message(message, fetch_certificate=fetcher, allowed_topic_arns=ALLOWED)
    except SignatureError:
        pass
    except ConnectionError:
        pytest.fail("a URL outside the allowed form was fetched")
    if "SigningCertURL" in overrides:
        assert fetcher.calls in ([], [signer.cert_url])
    assert is_allowed_sns_certificate_url(url) in (True, False)


@FUZZ
@given(url=st.one_of(st.text(max_size=80), st.sampled_from(BAD_CERT_URLS + GOOD_CERT_URLS)))
def test_fuzz_allowed_certificate_urls_are_plain_https_sns_hosts(url: str) -> None:
    if is_allowed_sns_certificate_url(url):
        assert url.startswith("https://sns.")
        host = url.removeprefix("https://").split("/", 1)[0]
        assert host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
        assert "@" not in host
        assert ":" not in host
        assert url.endswith(".pem")
