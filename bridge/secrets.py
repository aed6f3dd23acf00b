"""Secret references in the config file, resolved to `Secret` values at the moment they are used.

The config file never holds a secret, only a reference (`secretsmanager:NAME_OR_ARN[#json-key]` or
`env:NAME`), so the file can be reviewed and committed. Values are read lazily and cached for a
short TTL: a webhook server must start without any AWS account, must not call Secrets Manager on
every delivery, and must pick up a rotated token within minutes (or at once, through
`with_refresh`, when the old token is rejected).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from bridge.errors import ConfigError, CredentialsError, SecretError
from bridge.secret import Secret

T = TypeVar("T")

Scheme = Literal["secretsmanager", "env"]

EXPECTED_FORMS: Final = (
    "write `secretsmanager:NAME_OR_ARN`, `secretsmanager:NAME_OR_ARN#json-key` or `env:NAME`; "
    "never put the secret value itself in the config"
)

# Secrets Manager names: 1-512 of these characters. ARNs are matched separately because they hold ':'.
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@!-]{1,512}")
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]{1,512}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Error codes after which a second attempt cannot succeed without someone changing something.
_NOT_FOUND_CODES: Final = frozenset({"ResourceNotFoundException"})
_ACCESS_CODES: Final = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
_KMS_CODES: Final = frozenset({"DecryptionFailure", "KMSAccessDeniedException"})


@dataclass(frozen=True)
class SecretRef:
    """A parsed reference. `name` is a secret name/ARN or an environment variable name."""

    scheme: Scheme
    name: str
    json_key: str | None = None

    def __str__(self) -> str:
        suffix = f"#{self.json_key}" if self.json_key is not None else ""
        return f"{self.scheme}:{self.name}{suffix}"


def parse_reference(ref: str, *, key: str) -> SecretRef:
    """Validate the form of a reference without reading it.

    The input is never echoed in the error: a value that is not a reference may well be the
    secret itself, pasted into the config by mistake.
    """
    text = ref.strip() if isinstance(ref, str) else ""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("secretsmanager", "env"):
        raise ConfigError("is not a secret reference", key=key, hint=EXPECTED_FORMS)
    if scheme == "env":
        if not _ENV_NAME.fullmatch(rest):
            raise ConfigError(
                "env: reference needs an environment variable name (letters, digits, _)",
                key=key,
                hint=EXPECTED_FORMS,
            )
        return SecretRef("env", rest)
    name, hash_sep, json_key = rest.partition("#")
    if hash_sep and not json_key:
        raise ConfigError(
            "secretsmanager: reference has an empty JSON key after '#'", key=key, hint=EXPECTED_FORMS
        )
    if not (_SECRET_NAME.fullmatch(name) or _SECRET_ARN.fullmatch(name)):
        raise ConfigError(
            "secretsmanager: reference needs a secret name (letters, digits, /_+=.@!-) or a secret ARN",
            key=key,
            hint=EXPECTED_FORMS
            + " (CodeBuild's `id:json-key:stage:version` form belongs in env-vars, not here)",
        )
    return SecretRef("secretsmanager", name, json_key if hash_sep else None)


@dataclass
class _Cached:
    secret_string: Secret
    fetched_at: float


class SecretStore:
    """Reads references, caching Secrets Manager answers per secret for `ttl_seconds`.

    One secret with several JSON keys costs one GetSecretValue per TTL. `env:` references are read
    live: the environment is local and cheap, and tests (or an operator) may change it.
    """

    def __init__(
        self,
        secretsmanager_client_factory: Callable[[], Any] | None,
        *,
        ttl_seconds: float = 300,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_factory = secretsmanager_client_factory
        self._client: Any = None
        self._ttl = ttl_seconds
        self._environ = environ
        self._clock = clock
        self._lock = threading.Lock()  # guards _client, _cache and _fetch_locks
        self._cache: dict[str, _Cached] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}

    def get(self, ref: str | SecretRef, *, key: str = "") -> Secret:
        parsed = ref if isinstance(ref, SecretRef) else parse_reference(ref, key=key)
        if parsed.scheme == "env":
            return self._read_env(parsed, key)
        secret_string = self._secret_string(parsed.name, key)
        if parsed.json_key is None:
            return secret_string
        return _json_field(secret_string, parsed, key)

    def get_all(self, refs: Sequence[str | SecretRef], *, key: str = "") -> list[Secret]:
        """Several references under one config key (e.g. webhook secrets during a rotation)."""
        return [self.get(ref, key=f"{key}[{i}]" if key else "") for i, ref in enumerate(refs)]

    def invalidate(self, ref: str | SecretRef) -> None:
        parsed = ref if isinstance(ref, SecretRef) else parse_reference(ref, key="")
        if parsed.scheme == "secretsmanager":
            with self._lock:
                self._cache.pop(parsed.name, None)

    def with_refresh(
        self,
        ref: str | SecretRef,
        use: Callable[[Secret], T],
        *,
        is_auth_failure: Callable[[BaseException], bool],
        key: str = "",
    ) -> T:
        """Call `use` with the secret; when the value is rejected, re-read it once and try again.

        A rotated token is rejected until the cache expires; this closes that window without
        polling Secrets Manager. Only one re-read, so a revoked token fails fast instead of looping.
        """
        try:
            return use(self.get(ref, key=key))
        except Exception as exc:
            if not is_auth_failure(exc):
                raise
        self.invalidate(ref)
        return use(self.get(ref, key=key))

    # -- internals -------------------------------------------------------------------------------

    def _read_env(self, ref: SecretRef, key: str) -> Secret:
        environ = self._environ if self._environ is not None else os.environ
        value = environ.get(ref.name)
        if value is None:
            raise SecretError(
                f"{_where(key)}environment variable {ref.name} is not set",
                hint=f"export {ref.name} in the server's (or the Action step's) environment",
            )
        return Secret(value)

    def _secret_string(self, name: str, key: str) -> Secret:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and now - cached.fetched_at < self._ttl:
                return cached.secret_string
            fetch_lock = self._fetch_locks.setdefault(name, threading.Lock())
        # One fetch per secret at a time; other threads wanting it wait and reuse the answer.
        with fetch_lock:
            with self._lock:
                cached = self._cache.get(name)
                if cached is not None and self._clock() - cached.fetched_at < self._ttl:
                    return cached.secret_string
            secret_string = self._fetch(name, key)
            with self._lock:
                self._cache[name] = _Cached(secret_string, self._clock())
            return secret_string

    def _secretsmanager(self, key: str) -> Any:
        with self._lock:
            if self._client is None:
                if self._client_factory is None:
                    raise SecretError(
                        f"{_where(key)}a secretsmanager: reference needs AWS access, and none is configured",
                        hint="run with AWS credentials and a region, or use an env: reference",
                    )
                try:
                    self._client = self._client_factory()
                except ConfigError as exc:  # no region: the backend is unavailable, not the request bad
                    raise SecretError(
                        f"{_where(key)}Secrets Manager is unavailable: {exc.message}",
                        hint="set [aws] region in the config, or AWS_REGION in the server's environment",
                    ) from None
            return self._client

    def _fetch(self, name: str, key: str) -> Secret:
        where = _where(key)
        try:
            response = self._secretsmanager(key).get_secret_value(SecretId=name)
        except ClientError as exc:
            raise _client_error(exc, name, where) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise CredentialsError(
                f"{where}no AWS credentials to read secret {name}",
                hint="give the server an IAM role, or set AWS_PROFILE / AWS_ACCESS_KEY_ID",
            ) from None
        except NoRegionError:
            raise SecretError(
                f"{where}no AWS region to read secret {name} in",
                hint="set AWS_REGION (or AWS_DEFAULT_REGION) in the server's environment",
            ) from None
        except BotoCoreError as exc:
            raise SecretError(
                f"{where}could not reach Secrets Manager to read secret {name}: {type(exc).__name__}",
                hint="this is usually transient (network, endpoint, region); it will be retried",
            ) from None
        secret_string = response.get("SecretString")
        if secret_string is None:
            raise SecretError(
                f"{where}secret {name} holds SecretBinary, which bridge does not read",
                hint="store the value as a SecretString (plain text or a JSON object)",
            )
        return Secret(str(secret_string))


def _client_error(exc: ClientError, name: str, where: str) -> SecretError:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    http_status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _NOT_FOUND_CODES:
        return SecretError(
            f"{where}secret {name} was not found",
            hint="check the name or ARN, the region (AWS_REGION), and that the secret is not "
            "scheduled for deletion",
        )
    if code in _ACCESS_CODES or http_status == 403:
        return SecretError(
            f"{where}access denied reading secret {name}",
            hint="allow secretsmanager:GetSecretValue on this secret for the server's IAM role",
        )
    if code in _KMS_CODES:
        return SecretError(
            f"{where}secret {name} could not be decrypted",
            hint="allow kms:Decrypt on the secret's KMS key for the server's IAM role",
        )
    if code == "InvalidRequestException":
        return SecretError(
            f"{where}Secrets Manager refused to read secret {name} ({code})",
            hint="the secret may be scheduled for deletion; restore it or point to another secret",
        )
    return SecretError(
        f"{where}reading secret {name} failed ({code or 'unknown error'})",
        hint="this is usually transient (throttling, service error); it will be retried",
    )


def _json_field(secret_string: Secret, ref: SecretRef, key: str) -> Secret:
    where = _where(key)
    try:
        document = json.loads(secret_string.reveal())
    except ValueError:
        # `from None`: JSONDecodeError keeps the whole document in `.doc`.
        raise SecretError(
            f"{where}secret {ref.name} is not JSON, so it has no key {ref.json_key!r}",
            hint=f"store a JSON object in the secret, or drop '#{ref.json_key}' to use the whole value",
        ) from None
    if not isinstance(document, dict):
        raise SecretError(
            f"{where}secret {ref.name} holds JSON that is not an object, so it has no key {ref.json_key!r}",
            hint=f"store a JSON object in the secret, or drop '#{ref.json_key}' to use the whole value",
        )
    if ref.json_key not in document:
        keys = ", ".join(sorted(map(str, document))) or "none"
        raise SecretError(
            f"{where}secret {ref.name} has no JSON key {ref.json_key!r} (keys: {keys})",
            hint="fix the key after '#' in the reference, or add the key to the secret",
        )
    value = document[ref.json_key]
    return Secret(value if isinstance(value, str) else json.dumps(value))


def _where(key: str) -> str:
    return f"{key}: " if key else ""
