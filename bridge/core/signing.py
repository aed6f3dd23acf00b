"""Signing the pushed image digest with cosign and an AWS KMS key.

The key is named by cosign's KMS URI (`awskms:///alias/NAME`, `awskms:///KEY-ID` or `awskms:///ARN`), a
reference and never key material: the build's service role signs with it (kms:Sign, kms:GetPublicKey,
kms:DescribeKey, granted in deploy/ through SigningKeyArns). A fork's build never signs: its Dockerfile
ran untrusted code, and a signature would vouch for it with the project's key.
"""

from __future__ import annotations

import re

from bridge.errors import InputError

_KMS_URI = re.compile(
    r"awskms:///(?:alias/[A-Za-z0-9/_-]{1,250}"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(?:key/[0-9a-f-]{36}|alias/[A-Za-z0-9/_-]{1,250}))"
)
SIGN_HINT = "awskms:///alias/NAME, awskms:///KEY-ID or awskms:///arn:aws:kms:REGION:ACCOUNT:key/KEY-ID"


def parse_sign_key(value: str, *, input_name: str = "sign") -> str | None:
    key = value.strip()
    if not key:
        return None
    if not _KMS_URI.fullmatch(key):
        raise InputError(input_name, "must name an AWS KMS key as cosign does", hint=SIGN_HINT)
    return key
