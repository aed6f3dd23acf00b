"""What the operator page and `bridge status` say about a delivery, its build and its commit.

Pure: the worker turns each status it reports into `status_record` (kept in the store beside the
build), and the two views read it back with `read_status`; `mask_request` is the StartBuild request
as it may be shown to an operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge.model import BuildStatus

__all__ = ["MASK", "ReportedStatus", "format_duration", "mask_request", "read_status", "status_record"]

MASK: Final = "***"
# A plain-text variable whose name says it holds a credential is shown masked. Bridge never sends a
# secret as PLAINTEXT (secrets travel as SECRETS_MANAGER / PARAMETER_STORE references, which are
# names, not values), but a route's `env` is the user's to fill, and a page is easy to share.
_SECRET_NAME: Final = re.compile(r"TOKEN|SECRET|PASSW|PRIVATE|CREDENTIAL|API_?KEY|ACCESS_?KEY", re.IGNORECASE)


@dataclass(frozen=True)
class ReportedStatus:
    """The status a commit got for one build, as the reporter last posted it."""

    state: str  # queued, in_progress, completed
    conclusion: str | None  # success, failure, ... once completed
    build_status: str  # CodeBuild's buildStatus
    title: str
    phase: str | None
    console_url: str
    logs_url: str | None
    image_uri: str | None
    build_number: int | None
    duration_seconds: int | None


def status_record(status: BuildStatus) -> str:
    """A status as the store keeps it (JSON): what the views show, without the long summary."""
    durations = [phase.duration_seconds for phase in status.phases if phase.duration_seconds is not None]
    return json.dumps(
        {
            "state": status.state,
            "conclusion": status.conclusion,
            "build_status": status.build_status,
            "title": status.title,
            "phase": status.current_phase,
            "console_url": status.console_url,
            "logs_url": status.logs_url,
            "image_uri": status.image_uri,
            "build_number": status.build_number,
            "duration_seconds": sum(durations) if durations else None,
        },
        sort_keys=True,
    )


def read_status(text: str | None) -> ReportedStatus | None:
    """The stored status, or None for none (or one this version cannot read)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None

    def text_of(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) else None

    def int_of(name: str) -> int | None:
        value = data.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return ReportedStatus(
        state=text_of("state") or "",
        conclusion=text_of("conclusion"),
        build_status=text_of("build_status") or "",
        title=text_of("title") or "",
        phase=text_of("phase"),
        console_url=text_of("console_url") or "",
        logs_url=text_of("logs_url"),
        image_uri=text_of("image_uri"),
        build_number=int_of("build_number"),
        duration_seconds=int_of("duration_seconds"),
    )


def mask_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """A StartBuild request fit to show: plain-text variables named like credentials masked."""
    shown = dict(request)
    variables = shown.get("environmentVariablesOverride")
    if isinstance(variables, list):
        shown["environmentVariablesOverride"] = [_masked(variable) for variable in variables]
    return shown


def _masked(variable: Any) -> Any:
    if not isinstance(variable, Mapping):
        return variable
    if variable.get("type", "PLAINTEXT") == "PLAINTEXT" and _SECRET_NAME.search(str(variable.get("name"))):
        return {**variable, "value": MASK}
    return dict(variable)


def format_duration(seconds: float | None) -> str:
    """1m 05s, 2h 03m, 42s; an empty string when unknown."""
    if seconds is None or seconds < 0:
        return ""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
