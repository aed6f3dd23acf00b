"""Test-side signers for GitHub and Standard Webhooks (GitLab signing token) deliveries.

Written from the providers' documentation, independently of bridge/verify.py, so a test that signs
here and verifies there checks one reading of the spec against another. test_verify.py also checks
these signers against third-party ones (@octokit/webhooks-methods, the standardwebhooks package).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def github_signature(body: bytes, secret: str) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def github_headers(body: bytes, secret: str, *, event: str, delivery: str) -> dict[str, str]:
    """The headers of a GitHub webhook delivery that matter to the server."""
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": github_signature(body, secret),
        "Content-Type": "application/json",
    }


def new_standard_webhook_secret() -> str:
    """A fresh signing token in the form GitLab shows it: 'whsec_' + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def standard_webhook_signature(body: bytes, secret: str, msg_id: str, timestamp: int) -> str:
    """One 'v1,<base64>' entry of the webhook-signature header."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def standard_webhook_headers(body: bytes, secret: str, msg_id: str, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers GitLab sends when the hook has a signing token."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_webhook_signature(body, secret, msg_id, timestamp),
    }
