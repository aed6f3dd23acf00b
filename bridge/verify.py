"""Is this delivery really from GitHub, GitLab or Amazon SNS?

Every check here runs before the body is parsed or anything is stored, so it must be cheap, must
fail closed, and must never echo a secret. Each failure is a `SignatureError` (HTTP 401) whose hint
names the setting to fix. Comparisons of secret-derived values use `hmac.compare_digest` so that
response timing does not reveal how much of a forged signature was right.

Pure: stdlib and `cryptography` only; the SNS certificate download is a collaborator passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bridge.errors import SignatureError
from bridge.secret import Secret

__all__ = [
    "CertificateCache",
    "check_github_signature_header",
    "check_gitlab_token_header",
    "check_standard_webhook_headers",
    "hmac_sha256",
    "is_allowed_sns_certificate_url",
    "verify_github_signature",
    "verify_gitlab_token",
    "verify_sns_message",
    "verify_standard_webhook",
]

# --------------------------------------------------------------------------------------------- GitHub

_GITHUB_HEADER: Final = "X-Hub-Signature-256"
_GITHUB_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")


def check_github_signature_header(signature_header: str | None) -> None:
    """The header alone: present and well-formed. Checked before the body is read, so an unsigned
    or garbled delivery is refused without the server taking in its body."""
    _github_signature(signature_header)


def _github_signature(signature_header: str | None) -> re.Match[str]:
    if not signature_header:
        raise SignatureError(
            f"missing {_GITHUB_HEADER} header",
            hint="set the GitHub webhook's secret (Settings > Webhooks > Secret) to the configured one",
        )
    match = _GITHUB_SIGNATURE.fullmatch(signature_header)
    if match is None:
        raise SignatureError(
            f"malformed {_GITHUB_HEADER} header: expected 'sha256=' followed by 64 hex digits",
            hint="send the header as GitHub computes it; the legacy sha1 X-Hub-Signature is not accepted",
        )
    return match


def verify_github_signature(body: bytes, signature_header: str | None, secrets: Sequence[Secret]) -> None:
    """Check GitHub's HMAC-SHA256 of the raw body; any of several secrets may match (rotation).

    Only the SHA-256 header is accepted: the legacy SHA-1 `X-Hub-Signature` is weaker and GitHub
    always sends both, so a delivery with only SHA-1 is not from a hook we configured.
    """
    keys = _usable(secrets)
    if not keys:
        raise SignatureError(
            "no GitHub webhook secret is configured",
            hint="set the GitHub webhook secret in the config file; unsigned deliveries are refused",
        )
    match = _github_signature(signature_header)
    received = bytes.fromhex(match.group(1))
    if not _any_equal(received, (hmac_sha256(key, body) for key in keys)):
        raise SignatureError(
            f"{_GITHUB_HEADER} does not match the body under any configured secret",
            hint="make the GitHub webhook secret equal to the configured one "
            "(list the old and new during rotation)",
        )


# --------------------------------------------------------------------------------------------- GitLab


def check_gitlab_token_header(token_header: str | None) -> None:
    """The header alone: present (checked before the body is read)."""
    _gitlab_token(token_header)


def _gitlab_token(token_header: str | None) -> str:
    if not token_header:
        raise SignatureError(
            "missing X-Gitlab-Token header",
            hint="set 'Secret token' on the GitLab webhook to the configured token",
        )
    return token_header


def verify_gitlab_token(token_header: str | None, tokens: Sequence[Secret]) -> None:
    """Check GitLab's shared `X-Gitlab-Token`, comparing against every configured token.

    Each side is hashed first, so the comparison neither stops early nor reveals the token length.
    """
    keys = _usable(tokens)
    if not keys:
        raise SignatureError(
            "no GitLab webhook token is configured",
            hint="set the GitLab webhook secret token in the config file",
        )
    token = _gitlab_token(token_header)
    received = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    if not _any_equal(received, (hashlib.sha256(key).digest() for key in keys)):
        raise SignatureError(
            "X-Gitlab-Token does not match any configured token",
            hint="make the GitLab webhook 'Secret token' equal to the configured one",
        )


_STANDARD_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a format marker, not a secret
_DIGITS = re.compile(r"[0-9]{1,15}")


def check_standard_webhook_headers(
    headers: Mapping[str, str], *, now: float, tolerance_seconds: int = 300
) -> None:
    """The headers alone: present, a fresh timestamp, a v1 signature (checked before the body is read)."""
    _standard_headers(headers, now=now, tolerance_seconds=tolerance_seconds)


def _standard_headers(
    headers: Mapping[str, str], *, now: float, tolerance_seconds: int
) -> tuple[str, str, str]:
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    timestamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signatures),
        )
        if not value
    ]
    if missing:
        raise SignatureError(
            f"missing {', '.join(missing)} header{'s' if len(missing) > 1 else ''}",
            hint="add a signing token to the GitLab webhook, or remove signing-token secrets from the config",
        )
    if _DIGITS.fullmatch(timestamp) is None:
        raise SignatureError(
            "webhook-timestamp is not a whole number of seconds since the epoch",
            hint="send webhook-timestamp as Unix seconds, e.g. 1700000000",
        )
    age = now - int(timestamp)
    if age > tolerance_seconds:
        raise SignatureError(
            f"webhook-timestamp is {int(age)} s old, more than the {tolerance_seconds} s allowed",
            hint="this looks like a replayed delivery, or this server's clock is wrong (check NTP)",
        )
    if -age > tolerance_seconds:
        raise SignatureError(
            f"webhook-timestamp is {int(-age)} s in the future, more than the {tolerance_seconds} s allowed",
            hint="the sender's or this server's clock is wrong (check NTP)",
        )

    _v1_signatures(signatures)
    return msg_id, timestamp, signatures


def _v1_signatures(signatures: str) -> list[bytes]:
    received = [sig for sig in (_v1_signature(entry) for entry in signatures.split(" ")) if sig is not None]
    if not received:
        raise SignatureError(
            "webhook-signature holds no 'v1,<base64>' signature",
            hint="only v1 (HMAC-SHA256) Standard Webhooks signatures are supported",
        )
    return received


def verify_standard_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[Secret],
    *,
    now: float,
    tolerance_seconds: int = 300,
) -> str:
    """Check a Standard Webhooks signature (GitLab signing tokens) and return the `webhook-id`.

    The timestamp is signed too, so refusing old ones stops an attacker replaying a captured delivery;
    the id is returned because it is the delivery's identity for de-duplication.
    """
    msg_id, timestamp, signatures = _standard_headers(headers, now=now, tolerance_seconds=tolerance_seconds)
    keys = [key for key in (_standard_key(secret) for secret in secrets) if key]
    if not keys:
        raise SignatureError(
            "no usable GitLab signing token is configured",
            hint="configure the signing token exactly as GitLab shows it ('whsec_' followed by base64)",
        )
    received = _v1_signatures(signatures)
    signed = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
    expected = [hmac_sha256(key, signed) for key in keys]
    if not any(_any_equal(sig, expected) for sig in received):
        raise SignatureError(
            "webhook-signature does not match the body under any configured signing token",
            hint="make the GitLab webhook signing token equal to the configured one "
            "(list the old and new during rotation)",
        )
    return msg_id


def _standard_key(secret: Secret) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; empty (unusable) when it is not valid base64."""
    encoded = secret.reveal().removeprefix(_STANDARD_SECRET_PREFIX)
    try:
        # Some issuers drop the '=' padding; restore it before strict decoding.
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _v1_signature(entry: str) -> bytes | None:
    version, comma, encoded = entry.partition(",")
    if version != "v1" or not comma:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ SNS

_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
_URL_CHARS = re.compile(r"[!-~]+")  # printable ASCII, no whitespace: nothing a fetcher might read differently
_SNS_HASHES: Final[Mapping[str, Callable[[], hashes.HashAlgorithm]]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_SNS_SIGNED_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
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
_SNS_OPTIONAL_KEYS: Final = frozenset({"Subject"})


def is_sns_service_url(url: str) -> bool:
    """True only for `https://sns.<region>.amazonaws.com[.cn]/...` with no userinfo, port or fragment.

    SNS URLs (SigningCertURL, SubscribeURL) come from the unauthenticated message itself, so anything
    a URL parser or HTTP client might read differently — userinfo, ports, whitespace, backslashes — is
    refused outright. A query string is allowed (SubscribeURL carries one).
    """
    if not isinstance(url, str) or _URL_CHARS.fullmatch(url) is None or "\\" in url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and _SNS_HOST.fullmatch(parts.netloc) is not None
        and not parts.fragment
        and "#" not in url
    )


def is_allowed_sns_certificate_url(url: str) -> bool:
    """True only for `https://sns.<region>.amazonaws.com[.cn]/<...>.pem` with nothing else in it."""
    return (
        is_sns_service_url(url)
        and urlsplit(url).path.endswith(".pem")
        and not urlsplit(url).query
        and "?" not in url
    )


def verify_sns_message(
    message: Mapping[str, Any],
    *,
    fetch_certificate: Callable[[str], bytes],
    allowed_topic_arns: Collection[str],
) -> None:
    """Check an SNS HTTP(S) delivery: allowed topic, AWS-hosted certificate, RSA signature v1 or v2.

    Everything that needs no network is checked first, so a forged message never makes us fetch a
    URL. Errors raised by `fetch_certificate` itself (network trouble) propagate unchanged: that is
    not a bad signature, and SNS retries only deliveries that fail with a server error.
    """
    if not isinstance(message, Mapping):
        raise SignatureError(
            "SNS delivery body is not a JSON object",
            hint="POST only SNS HTTP(S) deliveries to this endpoint",
        )
    msg_type = message.get("Type")
    if not isinstance(msg_type, str) or msg_type not in _SNS_SIGNED_KEYS:
        raise SignatureError(
            f"SNS message Type {_shown(msg_type)} is not one of {', '.join(sorted(_SNS_SIGNED_KEYS))}",
            hint="POST only SNS HTTP(S) deliveries to this endpoint",
        )
    version = message.get("SignatureVersion")
    if not isinstance(version, str) or version not in _SNS_HASHES:
        raise SignatureError(
            f"SNS SignatureVersion {_shown(version)} is not supported (1 or 2)",
            hint="set the topic attribute SignatureVersion to 2",
        )
    topic = message.get("TopicArn")
    if not isinstance(topic, str) or topic not in allowed_topic_arns:
        raise SignatureError(
            f"SNS TopicArn {_shown(topic)} is not an allowed topic",
            hint="add the topic ARN to the configured SNS topic list, or unsubscribe this endpoint",
        )
    cert_url = message.get("SigningCertURL")
    if not isinstance(cert_url, str) or not is_allowed_sns_certificate_url(cert_url):
        raise SignatureError(
            "SNS SigningCertURL is not an https://sns.<region>.amazonaws.com/....pem URL",
            hint="only certificates served by Amazon SNS are trusted; this message was not sent by SNS",
        )
    canonical = _sns_canonical(message, msg_type)
    encoded = message.get("Signature")
    try:
        signature = base64.b64decode(encoded if isinstance(encoded, str) else "", validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if not signature:
        raise SignatureError(
            "SNS Signature is missing or not base64",
            hint="POST the SNS delivery body unchanged",
        )

    pem = fetch_certificate(cert_url)
    try:
        public_key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError as exc:
        raise SignatureError(
            "the SNS signing certificate is not a PEM X.509 certificate",
            hint="check that the certificate fetcher returns the body of SigningCertURL unchanged",
        ) from exc
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureError(
            "the SNS signing certificate does not hold an RSA key",
            hint="SNS signs with RSA; this message was not sent by SNS",
        )
    try:
        public_key.verify(signature, canonical, padding.PKCS1v15(), _SNS_HASHES[version]())
    except InvalidSignature as exc:
        raise SignatureError(
            f"SNS {msg_type} signature does not verify",
            hint="the message was altered in transit or not sent by SNS; POST the body unchanged",
        ) from exc


def _sns_canonical(message: Mapping[str, Any], msg_type: str) -> bytes:
    """The string SNS signs: `Key\\nValue\\n` for each documented key of this Type, in order."""
    lines: list[str] = []
    for key in _SNS_SIGNED_KEYS[msg_type]:
        value = message.get(key)
        if value is None and key in _SNS_OPTIONAL_KEYS:
            continue
        if not isinstance(value, str):
            raise SignatureError(
                f"SNS {msg_type} has no string {key!r}",
                hint="POST the SNS delivery body unchanged",
            )
        lines.append(f"{key}\n{value}\n")
    return "".join(lines).encode("utf-8", "surrogatepass")


class CertificateCache:
    """Fetch each SNS signing certificate once: SNS reuses a handful, and each fetch is a slow HTTPS call.

    Concurrent callers for the same URL wait for one fetch instead of starting their own. Failures are
    not cached, so a transient network error does not poison the URL. Least recently used URLs are
    dropped beyond `max_entries`.
    """

    def __init__(self, fetch: Callable[[str], bytes], max_entries: int = 32) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._fetch = fetch
        self._max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._in_flight: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        cached = self._cached(url)
        if cached is not None:
            return cached
        with self._lock:
            url_lock = self._in_flight.setdefault(url, threading.Lock())
        with url_lock:
            cached = self._cached(url)
            if cached is not None:
                return cached
            try:
                pem = self._fetch(url)
                with self._lock:
                    self._entries[url] = pem
                    while len(self._entries) > self._max_entries:
                        self._entries.popitem(last=False)
            finally:
                with self._lock:
                    self._in_flight.pop(url, None)
        return pem

    def _cached(self, url: str) -> bytes | None:
        with self._lock:
            pem = self._entries.get(url)
            if pem is not None:
                self._entries.move_to_end(url)
            return pem


# -------------------------------------------------------------------------------------------- helpers

# CPython lets go of the GIL for the whole of `hmac.digest()` and for every `update()` of 2,048
# bytes or more (HASHLIB_GIL_MINSIZE; the same in 3.11 to 3.13). For the ~10 µs an ordinary
# delivery takes to hash, letting go buys nothing: another request thread takes the GIL, and this
# one queues to get it back, a futex wake-up and context switches each way (under the ack
# benchmark's load, 7% of the serving process's futex calls came from here). So a body below
# _RELEASE_FROM is fed in pieces just under the threshold, and only a large one, where another
# thread gets real work done meanwhile, is hashed with the GIL released.
_HELD_PIECE: Final = 2047
_RELEASE_FROM: Final = 64 * 1024


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """`hmac.digest(key, message, "sha256")`, keeping the GIL for a message of ordinary size."""
    if len(message) >= _RELEASE_FROM:
        return hmac.digest(key, message, hashlib.sha256)
    mac = hmac.new(key, digestmod=hashlib.sha256)
    view = memoryview(message)
    for start in range(0, len(view), _HELD_PIECE):
        mac.update(view[start : start + _HELD_PIECE])
    return mac.digest()


def _usable(secrets: Sequence[Secret]) -> list[bytes]:
    """Key bytes of the non-empty secrets: an empty key would let anyone sign."""
    return [secret.reveal().encode("utf-8") for secret in secrets if secret.reveal()]


def _any_equal(received: bytes, candidates: Iterable[bytes]) -> bool:
    """Constant-time membership: compares against every candidate, no early exit."""
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(received, candidate)
    return found


def _shown(value: object, limit: int = 80) -> str:
    """An attacker-supplied value made safe for an error message: repr'd and cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
