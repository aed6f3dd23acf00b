"""Sign Amazon SNS HTTP(S) deliveries the way SNS does, with a key and certificate made here.

The real SNS certificate cannot be used offline, so tests stand up their own: an RSA key, a self-signed
certificate, and a fetcher that serves it at an SNS-looking URL and records every URL it was asked for
(so a test can prove a forged URL was never fetched). The string to sign is built here from the AWS
documentation, independently of bridge/verify.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

DEFAULT_CERT_URL = (
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000000000000a.pem"
)
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:codebuild-bridge-events"

# AWS docs, "Verifying the signatures of Amazon SNS messages": the keys signed per message type, in order.
SIGNED_KEYS: Mapping[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


@dataclass
class RecordingFetcher:
    """A certificate fetcher serving fixed PEMs by URL; `calls` lists every URL asked for."""

    certificates: Mapping[str, bytes]
    calls: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        try:
            return self.certificates[url]
        except KeyError:
            raise ConnectionError(f"test fetcher has no certificate at {url}") from None


@dataclass(frozen=True)
class SnsSigner:
    private_key: rsa.RSAPrivateKey
    certificate_pem: bytes
    cert_url: str = DEFAULT_CERT_URL

    @classmethod
    def create(cls, cert_url: str = DEFAULT_CERT_URL) -> SnsSigner:
        """A signer with a fresh key (key generation is slow: prefer `default_signer()` in tests)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, self_signed_certificate(key), cert_url)

    def sign(self, message: Mapping[str, str], version: str = "2") -> dict[str, str]:
        """`message` plus SignatureVersion, Signature and SigningCertURL, as SNS delivers it."""
        signature = self.private_key.sign(string_to_sign(message), padding.PKCS1v15(), _HASHES[version]())
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode("ascii"),
            "SigningCertURL": self.cert_url,
        }

    def fetcher(self) -> RecordingFetcher:
        return RecordingFetcher({self.cert_url: self.certificate_pem})


@cache
def default_signer() -> SnsSigner:
    """One signer shared by the whole test session (RSA key generation takes a noticeable while)."""
    return SnsSigner.create()


def self_signed_certificate(key: rsa.RSAPrivateKey, common_name: str = "sns.amazonaws.com") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def string_to_sign(message: Mapping[str, str]) -> bytes:
    parts = [f"{key}\n{message[key]}\n" for key in SIGNED_KEYS[message["Type"]] if key in message]
    return "".join(parts).encode("utf-8")


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notification(
    message: str, *, topic_arn: str = TOPIC_ARN, subject: str | None = None, region: str = "us-east-1"
) -> dict[str, str]:
    """An unsigned Notification as SNS posts it to an HTTP(S) subscriber."""
    body = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": message,
        "Timestamp": _timestamp(),
        "UnsubscribeURL": f"https://sns.{region}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:1",
    }
    if subject is not None:
        body["Subject"] = subject
    return body


def subscription_confirmation(
    *, topic_arn: str = TOPIC_ARN, region: str = "us-east-1", unsubscribe: bool = False
) -> dict[str, str]:
    """An unsigned SubscriptionConfirmation (or UnsubscribeConfirmation)."""
    token = uuid.uuid4().hex * 4
    kind = "UnsubscribeConfirmation" if unsubscribe else "SubscriptionConfirmation"
    verb = "unsubscribed from" if unsubscribe else "chosen to subscribe to"
    return {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": (
            f"You have {verb} the topic {topic_arn}.\n"
            "To confirm, visit the SubscribeURL included in this message."
        ),
        "SubscribeURL": (
            f"https://sns.{region}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}"
        ),
        "Timestamp": _timestamp(),
    }
