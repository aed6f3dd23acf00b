"""One exception family for the whole engine.

The core raises; only the front doors (entrypoint.py, app.py, cli.py) translate an error into an
exit code, an HTTP answer or a log line. Each subclass therefore carries what a front door needs:
the HTTP status, the process exit code and a one-line hint that tells the user how to fix it.
Messages must never contain a secret value: pass names and references, not values.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error bridge raises on purpose."""

    http_status: int = 500
    exit_code: int = 1
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(BridgeError):
    """The routing file or a setting is wrong. `key` is the dotted path of the bad key."""

    exit_code = 2

    def __init__(self, message: str, *, key: str = "", hint: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message, hint=hint)
        self.key = key


class InputError(BridgeError):
    """An Action input or CLI argument is invalid. `name` is the input's name as the user wrote it."""

    exit_code = 2
    http_status = 400

    def __init__(self, name: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"input '{name}': {message}", hint=hint)
        self.name = name


class BadRequestError(BridgeError):
    """A delivery that cannot be understood: missing header, unparseable body."""

    http_status = 400


class SignatureError(BridgeError):
    """A delivery whose signature or token does not verify."""

    http_status = 401


class PayloadTooLargeError(BridgeError):
    http_status = 413


class CredentialsError(BridgeError):
    """No usable AWS (or provider) credentials were found."""

    exit_code = 3


class SecretError(BridgeError):
    """A secret reference could not be resolved (missing secret, missing JSON key, no access)."""

    exit_code = 3


class BuilderError(BridgeError):
    """The build backend refused or failed a call. `retryable` tells the worker to try again later."""

    http_status = 502

    def __init__(self, message: str, *, retryable: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable


class ReporterError(BridgeError):
    """Reporting a status to GitHub or GitLab failed. `retryable` as for BuilderError."""

    http_status = 502

    def __init__(self, message: str, *, retryable: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable


class NotGrantedError(BridgeError):
    """The trust decision refused a build that was accepted earlier (the route or an approval changed)."""

    exit_code = 2
    http_status = 403
