"""Environment variables for a build, as people write them (`NAME=value`,
`NAME=secretsmanager:ID[#json-key]`, `NAME=ssm:/param`) → CodeBuild's typed variables; and the check
that keeps a credential out of PLAINTEXT. Pure, used by bridge.plan and the Action's inputs."""

from __future__ import annotations

import re

from bridge.errors import InputError
from bridge.model import EnvVar

__all__ = ["SECRETS_PREFIX", "looks_like_credential", "parse_env_vars", "secrets_manager_value"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_PREFIX = "CODEBUILD_"
_ENV_FORM = "NAME=value, NAME=secretsmanager:SECRET_ID[#json-key] or NAME=ssm:/parameter/name, one per line"
SECRETS_PREFIX = "secretsmanager:"
_SSM_PREFIX = "ssm:"
_BLANKS = " \t\r"
# An ARN is arn:partition:secretsmanager:region:account:secret:name; more parts means CodeBuild's
# long form (json-key, version-stage, version-id) already follows.
_ARN_PARTS = 7

# A plain value under one of these names (split on `_`) is almost certainly a pasted credential.
_CREDENTIAL_WORDS = frozenset(
    {"TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "CREDENTIALS"}
    | {"APIKEY", "PAT"}
)
_CREDENTIAL_SUFFIXES = (
    "API_KEY",
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "SECRET_KEY",
    "AUTH_KEY",
    "SSH_KEY",
    "SIGNING_KEY",
    "ENCRYPTION_KEY",
    "LICENSE_KEY",
    "MASTER_KEY",
)
# Values shaped like a known credential: GitHub, GitLab, npm, Slack and Stripe tokens, AWS access
# key ids (long-term AKIA, temporary ASIA: exactly 20 characters), PEM private keys.
_CREDENTIAL_VALUE = re.compile(
    r"gh[pousr]_|github_pat_|glpat-|gldt-|glrt-|npm_|xox[abeoprs]-|[rs]k_live_"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])|-----BEGIN"
)


def looks_like_credential(name: str, value: str) -> bool:
    """True for a literal value that is clearly a credential, by its name or by its shape.

    The one detector behind the server's route `env` tables, the Action's `env-vars` and the Python
    API: CodeBuild shows PLAINTEXT variables to anyone who can read the build, so a credential must
    be a `secretsmanager:`/`ssm:` reference instead. An empty value holds nothing to leak.
    """
    if not value:
        return False
    upper = name.upper()
    return (
        bool(set(upper.split("_")) & _CREDENTIAL_WORDS)
        or upper.endswith(_CREDENTIAL_SUFFIXES)
        or _CREDENTIAL_VALUE.match(value) is not None
    )


def parse_env_vars(
    text: str, *, input_name: str = "env-vars", refuse_credentials: bool = True
) -> tuple[EnvVar, ...]:
    """Read the `env-vars` lines into typed CodeBuild variables.

    Messages name the line and, once it is known to be a valid identifier, the variable; never the
    value, which may be a secret pasted in the wrong place. A plain value that `looks_like_credential`
    is refused (unless the caller words that refusal itself: `refuse_credentials=False`).
    """
    seen: dict[str, int] = {}
    result: list[EnvVar] = []
    # Split on newlines only (str.splitlines also splits on \x1c, \x85, ... inside values).
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(_BLANKS)
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise InputError(input_name, f"line {number}: expected NAME=value (no '=' found)", hint=_ENV_FORM)
        if not _ENV_NAME.fullmatch(name):
            raise InputError(
                input_name,
                f"line {number}: the variable name is not valid: it must match [A-Za-z_][A-Za-z0-9_]*",
                hint=_ENV_FORM,
            )
        if name.upper().startswith(_RESERVED_PREFIX):
            raise InputError(
                input_name,
                f"line {number}: {name} starts with {_RESERVED_PREFIX}, which CodeBuild reserves",
                hint="rename the variable",
            )
        if name in seen:
            raise InputError(
                input_name,
                f"line {number}: {name} is already set on line {seen[name]}",
                hint="set each variable once",
            )
        seen[name] = number
        var = _typed_env_var(name, value, input_name=input_name, where=f"line {number}: {name}")
        if refuse_credentials and var.type == "PLAINTEXT" and looks_like_credential(name, value):
            raise InputError(
                input_name,
                f"line {number}: {name} looks like a credential but is a literal value: CodeBuild shows "
                "plain values to anyone who can read the build",
                hint=f"store it in Secrets Manager and write {name}=secretsmanager:NAME[#json-key] "
                f"(or {name}=ssm:/parameter/name for Parameter Store)",
            )
        result.append(var)
    return tuple(result)


def _typed_env_var(name: str, value: str, *, input_name: str, where: str) -> EnvVar:
    if value.startswith(SECRETS_PREFIX):
        body = value[len(SECRETS_PREFIX) :]
        return EnvVar(
            name, secrets_manager_value(body, input_name=input_name, where=where), "SECRETS_MANAGER"
        )
    if value.startswith(_SSM_PREFIX):
        parameter = value[len(_SSM_PREFIX) :]
        if not parameter or any(c.isspace() for c in parameter):
            raise InputError(
                input_name,
                f"{where}: the ssm: reference needs a parameter name without spaces",
                hint="NAME=ssm:/path/to/parameter",
            )
        return EnvVar(name, parameter, "PARAMETER_STORE")
    return EnvVar(name, value, "PLAINTEXT")


def secrets_manager_value(reference: str, *, input_name: str, where: str = "") -> str:
    """Turn `SECRET_ID[#json-key]` (what follows `secretsmanager:`) into CodeBuild's value form.

    CodeBuild wants `secret-id:json-key:version-stage:version-id`; its long form passes through
    unchanged so users who already know it need not relearn anything.
    """
    prefix = f"{where}: " if where else ""
    hint = "secretsmanager:SECRET_NAME_OR_ARN[#json-key]"
    secret_id, sep, json_key = reference.partition("#")
    if not secret_id or any(c.isspace() for c in reference):
        raise InputError(input_name, f"{prefix}the secretsmanager: reference needs a secret id", hint=hint)
    if not sep:
        return secret_id
    parts = secret_id.split(":")
    is_plain_name = len(parts) == 1
    is_plain_arn = secret_id.startswith("arn:") and len(parts) == _ARN_PARTS
    if not json_key or "#" in json_key or ":" in json_key or not (is_plain_name or is_plain_arn):
        raise InputError(
            input_name,
            f"{prefix}the secretsmanager: reference is malformed: use SECRET_ID#json-key, or CodeBuild's "
            "own secret-id:json-key:version-stage:version-id form without '#'",
            hint=hint,
        )
    return f"{secret_id}:{json_key}"
