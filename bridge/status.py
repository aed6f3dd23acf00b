"""CodeBuild build record -> provider-neutral BuildStatus.

Pure on purpose: the reporters, the Action's step summary and the webhook worker all show the same
words for the same build, and every odd record CodeBuild (or a test double) can produce is a
table row in a test rather than a server to stand up.

Records come from boto3 (datetimes), from EventBridge JSON (ISO strings) or from other builders
(epoch numbers), so every field is read defensively: a missing field degrades the text, never
raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from bridge.core.text import shorten
from bridge.model import BuildRecord, BuildState, BuildStatus, Conclusion, PhaseRow

TITLE_MAX: Final = 255
DEFAULT_LOG_LINES: Final = 50
TRUNCATED: Final = "(truncated)"

_CONCLUSIONS: Final[Mapping[str, Conclusion]] = {
    "SUCCEEDED": "success",
    "FAILED": "failure",
    "FAULT": "failure",
    "TIMED_OUT": "timed_out",
    "STOPPED": "cancelled",
}
_WAITING_PHASES: Final = frozenset({"SUBMITTED", "QUEUED"})
_BAD_PHASE_STATUSES: Final = frozenset({"FAILED", "FAULT", "TIMED_OUT", "STOPPED", "CLIENT_ERROR"})
_PHASE_ICONS: Final = {"SUCCEEDED": "✅", "FAILED": "❌", "FAULT": "❌", "TIMED_OUT": "⏱️", "STOPPED": "⏹️"}

# CSI (colours, cursor moves), OSC (window titles, hyperlinks), nF (charset switches) and the
# remaining two-byte escapes.
_ANSI: Final = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]+[0-~]|\x1b[0-~]?"
)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BACKTICK_RUN: Final = re.compile(r"`+")
_MAX_LINE_CHARS: Final = 2000
# Where a builder puts the records of a batch's finished builds, by group identifier: the batch record
# itself does not carry what each build exported (its platform, its image digest).
GROUP_BUILDS: Final = "bridgeGroupBuilds"


def build_status(
    build: BuildRecord,
    *,
    region: str,
    log_tail: Sequence[str] = (),
    max_summary_chars: int = 65535,
    log_lines: int = DEFAULT_LOG_LINES,
) -> BuildStatus:
    """Everything a reporter posts about one build, derived from its record alone.

    A batch record (BatchGetBuildBatches) is recognised and summarised build by build, so the
    worker and the Action report batches through the same call.
    """
    if is_batch(build):
        return batch_status(build, region=region, max_summary_chars=max_summary_chars)
    build_id = str(build.get("id") or build.get("arn") or "")
    build_status_value = str(build.get("buildStatus") or "IN_PROGRESS")
    current_phase = _str_or_none(build.get("currentPhase"))
    phases = tuple(_phase_rows(build.get("phases")))
    state = _state(build, build_status_value, current_phase)
    conclusion = _CONCLUSIONS.get(build_status_value, "failure") if state == "completed" else None
    number = build.get("buildNumber")
    build_number = number if isinstance(number, int) and not isinstance(number, bool) else None
    image_uri, image_digest = _exported(build, "IMAGE_URI"), _exported(build, "IMAGE_DIGEST")

    console = _console_link(build, build_id, region)
    logs_url = _logs_url(build, region)
    failing = _failing_phase(build)
    title = _title(
        build,
        build_number=build_number,
        build_status_value=build_status_value,
        state=state,
        current_phase=current_phase,
        failing=failing,
    )
    summary = _summary(
        build,
        title=title,
        done=state == "completed",
        phases=phases,
        failing=failing,
        image=(image_uri, image_digest),
        log_tail=clean_log_lines(log_tail)[-log_lines:] if log_lines > 0 else [],
        links=(console, logs_url),
        max_chars=max_summary_chars,
    )
    return BuildStatus(
        build_id=build_id,
        build_number=build_number,
        build_status=build_status_value,
        state=state,
        conclusion=conclusion,
        title=title,
        summary=summary,
        phases=phases,
        current_phase=current_phase,
        console_url=console,
        logs_url=logs_url,
        image_uri=image_uri,
        image_digest=image_digest,
    )


def _console_link(build: BuildRecord, build_id: str, region: str) -> str:
    """The CodeBuild console page, for records CodeBuild made; "" for other builders' records.

    A CodeBuild record always carries its ARN; a record without one (the local builder's) has no
    console page, and a made-up AWS link would send users to a build that does not exist.
    """
    arn = build.get("arn")
    if isinstance(arn, str) and arn.startswith("arn:"):
        return console_url(arn, region)
    return ""


def console_url(build_id_or_arn: str, region: str, account_id: str | None = None) -> str:
    """The build's page in the CodeBuild console (the account-scoped form when the account is known).

    An ARN carries the account, so callers holding one never need to pass `account_id`.
    """
    build_id = build_id_or_arn
    page = "build"
    if build_id_or_arn.startswith("arn:"):
        parts = build_id_or_arn.split(":", 5)
        if len(parts) < 6 or not parts[5].startswith(("build/", "build-batch/")):
            raise ValueError(f"not a CodeBuild build ARN: {build_id_or_arn!r}")
        account_id = account_id or parts[4] or None
        resource, _, build_id = parts[5].partition("/")
        page = "batch" if resource == "build-batch" else "build"
    project, sep, _ = build_id.partition(":")
    if not sep or not project:
        raise ValueError(f"not a CodeBuild build id (expected 'project:uuid'): {build_id_or_arn!r}")
    account = f"{quote(account_id, safe='')}/" if account_id else ""
    return (
        f"https://{region}.{_console_host(region)}/codesuite/codebuild/{account}projects/"
        f"{quote(project, safe='')}/{page}/{quote(build_id, safe='')}/?region={region}"
    )


# -- batches -----------------------------------------------------------------------------------------


def is_batch(record: BuildRecord) -> bool:
    """A BatchGetBuildBatches record rather than a BatchGetBuilds one."""
    return "buildBatchStatus" in record or ":build-batch/" in str(record.get("arn") or "")


def is_complete(record: BuildRecord) -> bool:
    """Builds say buildComplete, batches say complete."""
    return bool(record.get("complete") if is_batch(record) else record.get("buildComplete"))


def batch_status(batch: BuildRecord, *, region: str, max_summary_chars: int = 65535) -> BuildStatus:
    """One status for a whole batch, with a row per build group (identifier, status, link)."""
    batch_id = str(batch.get("id") or "")
    status_value = str(batch.get("buildBatchStatus") or "IN_PROGRESS")
    current_phase = _str_or_none(batch.get("currentPhase"))
    complete = batch.get("complete")
    if complete is True or (complete is None and status_value in _CONCLUSIONS):
        state: BuildState = "completed"
    elif current_phase in (None, "SUBMITTED"):
        state = "queued"
    else:
        state = "in_progress"
    conclusion = _CONCLUSIONS.get(status_value, "failure") if state == "completed" else None
    number = batch.get("buildBatchNumber")
    batch_number = number if isinstance(number, int) and not isinstance(number, bool) else None
    members = batch.get(GROUP_BUILDS)
    members = members if isinstance(members, Mapping) else {}
    groups = _build_groups(batch.get("buildGroups"), region)
    console = console_url(str(batch.get("arn") or batch_id), region) if batch_id else ""
    merge = members.get("merge")  # the packaged multi-platform batch's merge build pushed the index
    merge = merge if isinstance(merge, Mapping) else {}
    image_uri, image_digest = _exported(merge, "IMAGE_URI"), _exported(merge, "IMAGE_DIGEST")

    label = f"Batch #{batch_number}" if batch_number is not None else "Batch"
    total = len(groups)
    finished = sum(1 for group in groups if group[1] in _CONCLUSIONS)
    failed = [group[0] for group in groups if group[1] in _CONCLUSIONS and group[1] != "SUCCEEDED"]
    seconds = _seconds_between(batch.get("startTime"), batch.get("endTime"))
    if state == "queued":
        title = f"{label} queued"
    elif state == "in_progress":
        title = f"{label} running: {finished} of {total} builds done" if total else f"{label} running"
    elif status_value == "SUCCEEDED":
        title = f"{label} succeeded: {total} builds" + (
            f" in {format_duration(seconds)}" if seconds is not None else ""
        )
    elif failed:
        verb = _VERB.get(status_value, "failed")
        title = f"{label} {verb}: {len(failed)} of {total} builds did not succeed ({', '.join(failed)})"
    else:
        title = f"{label} {_VERB.get(status_value, 'failed')}"
    title = " ".join(title.split())
    title = shorten(title, TITLE_MAX)

    lines = [f"### {title}"]
    if batch.get("projectName"):
        lines.append(f"Project: `{_cell(str(batch['projectName'])).replace('`', '')}`")
    if image_uri and image_digest:
        lines.append(
            f"Image (multi-platform index): `{_cell(image_uri).replace('`', '')}` `{_cell(image_digest)}`"
        )
    if groups:
        rows = ["| Build | Platform | Status | Digest | Link |", "| --- | --- | --- | --- | --- |"]
        for identifier, group_status, link in groups:
            member = members.get(identifier)
            member = member if isinstance(member, Mapping) else {}
            platform = _exported(member, "BRIDGE_PLATFORM")
            digest = _exported(member, "IMAGE_DIGEST") if platform else None
            shown = f"{_PHASE_ICONS.get(group_status, '⏳')} {group_status}".strip()
            rows.append(
                f"| {_cell(identifier)} | {_code(platform)} | {_cell(shown)} | {_code(digest)} | "
                f"{f'[console]({link})' if link else '—'} |"
            )
        lines.append("\n".join(rows))
    if console:
        lines.append(f"[CodeBuild console: batch]({console})")
    summary = "\n\n".join(lines)
    if len(summary) > max_summary_chars:
        keep = max(0, max_summary_chars - len(TRUNCATED) - 1)
        summary = (summary[:keep] + "\n" + TRUNCATED)[:max_summary_chars]
    phases = tuple(_phase_rows(batch.get("phases")))
    return BuildStatus(
        build_id=batch_id,
        build_number=batch_number,
        build_status=status_value,
        state=state,
        conclusion=conclusion,
        title=title,
        summary=summary,
        phases=phases,
        current_phase=current_phase,
        console_url=console,
        image_uri=image_uri,
        image_digest=image_digest,
    )


def _code(value: str | None) -> str:
    """A table cell in code style, or a dash."""
    return f"`{_cell(value).replace('`', '')}`" if value else "—"


_VERB: Final = {
    "FAILED": "failed",
    "FAULT": "failed (CodeBuild fault)",
    "TIMED_OUT": "timed out",
    "STOPPED": "was stopped",
}


def _build_groups(groups: Any, region: str) -> list[tuple[str, str, str | None]]:
    """(identifier, build status, console link) per build group that has a build."""
    rows: list[tuple[str, str, str | None]] = []
    if not isinstance(groups, Sequence):
        return rows
    for group in groups:
        if not isinstance(group, Mapping):
            continue
        summary = group.get("currentBuildSummary")
        summary = summary if isinstance(summary, Mapping) else {}
        arn = str(summary.get("arn") or "")
        try:
            link = console_url(arn, region) if arn else None
        except ValueError:
            link = None
        rows.append(
            (str(group.get("identifier") or "build"), str(summary.get("buildStatus") or "IN_PROGRESS"), link)
        )
    return rows


def gitlab_state(status: BuildStatus) -> str:
    """GitLab commit status state: pending -> running -> success | failed | canceled."""
    if status.state == "queued":
        return "pending"
    if status.state == "in_progress":
        return "running"
    return {"success": "success", "cancelled": "canceled"}.get(status.conclusion or "", "failed")


def commit_status_state(status: BuildStatus) -> str:
    """GitHub commit status state.

    `error` is for outcomes the change did not cause (CodeBuild's own FAULT, a stopped build);
    `failure` for the ones it did (a failing command, a hung build that timed out).
    """
    if not status.done:
        return "pending"
    if status.conclusion == "success":
        return "success"
    if status.build_status in ("FAULT", "STOPPED"):
        return "error"
    return "failure"


def clean_log_lines(lines: Iterable[str]) -> list[str]:
    """Log lines as a terminal would show them: no escape codes, progress bars collapsed."""
    cleaned: list[str] = []
    for raw in lines:
        for line in _ANSI.sub("", raw).rstrip("\r\n").split("\n"):  # CloudWatch events end in \n
            visible = line.rstrip("\r").rsplit("\r", 1)[-1]
            visible = _CONTROL.sub("", visible).rstrip()
            if len(visible) > _MAX_LINE_CHARS:
                visible = visible[: _MAX_LINE_CHARS - 1] + "…"
            cleaned.append(visible)
    while cleaned and not cleaned[-1]:
        cleaned.pop()
    return cleaned


def fenced(text: str, info: str = "text") -> str:
    """A code block no content can close early: the fence is longer than any backtick run inside."""
    longest = max((len(run) for run in _BACKTICK_RUN.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def format_duration(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


# -- reading the record ------------------------------------------------------------------------


def _state(build: BuildRecord, build_status_value: str, current_phase: str | None) -> BuildState:
    complete = build.get("buildComplete")
    if complete is True or (complete is None and build_status_value in _CONCLUSIONS):
        return "completed"
    if current_phase is None or current_phase in _WAITING_PHASES:
        return "queued"
    return "in_progress"


def _phase_rows(phases: Any) -> Iterable[PhaseRow]:
    if not isinstance(phases, Sequence):
        return
    for phase in phases:
        if not isinstance(phase, Mapping) or not phase.get("phaseType"):
            continue
        status = _str_or_none(phase.get("phaseStatus"))
        duration = phase.get("durationInSeconds")
        if not isinstance(duration, int) or isinstance(duration, bool):
            duration = _seconds_between(phase.get("startTime"), phase.get("endTime"))
        yield PhaseRow(
            name=str(phase["phaseType"]),
            status=None if status in (None, "IN_PROGRESS") else status,
            duration_seconds=duration,
        )


def _failing_phase(build: BuildRecord) -> Mapping[str, Any] | None:
    phases = build.get("phases")
    if not isinstance(phases, Sequence):
        return None
    for phase in phases:
        if isinstance(phase, Mapping) and phase.get("phaseStatus") in _BAD_PHASE_STATUSES:
            return phase
    return None


def image_report(build: BuildRecord) -> list[str]:
    """What the packaged image buildspec measured and exported: steps from the layer cache, the
    image's size, the platform, the attestations attached (each only when the build exported it)."""
    facts: list[str] = []
    cached, steps = _exported(build, "BRIDGE_CACHED_STEPS"), _exported(build, "BRIDGE_BUILD_STEPS")
    if cached is not None and steps is not None and cached.isdigit() and steps.isdigit():
        facts.append(f"Layer cache: {cached} of {steps} build steps cached")
    size = _exported(build, "IMAGE_SIZE")
    if size is not None and size.isdigit():
        facts.append(f"Image size: {int(size) / 1e6:.1f} MB")
    platform = _exported(build, "BRIDGE_PLATFORM")
    if platform:
        facts.append(f"Platform: `{_cell(platform).replace('`', '')}`")
    attested = _exported(build, "BRIDGE_ATTESTED")
    if attested:
        facts.append(f"Attestations: {_cell(attested)}")
    return facts


def exported_value(build: BuildRecord, name: str) -> str | None:
    """A variable the build exported (`env.exported-variables`), or None."""
    return _exported(build, name)


def _exported(build: BuildRecord, name: str) -> str | None:
    variables = build.get("exportedEnvironmentVariables")
    if not isinstance(variables, Sequence):
        return None
    for variable in variables:
        if isinstance(variable, Mapping) and variable.get("name") == name:
            value = variable.get("value")
            return str(value) if value else None
    return None


def _logs_url(build: BuildRecord, region: str) -> str | None:
    logs = build.get("logs")
    if not isinstance(logs, Mapping):
        return None
    if logs.get("deepLink"):
        return str(logs["deepLink"])
    group, stream = logs.get("groupName"), logs.get("streamName")
    if not group or not stream:
        return None
    return (
        f"https://{region}.{_console_host(region)}/cloudwatch/home?region={region}"
        f"#logEvent:group={quote(str(group), safe='')};stream={quote(str(stream), safe='')}"
    )


def _console_host(region: str) -> str:
    if region.startswith("cn-"):
        return "console.amazonaws.cn"
    if region.startswith("us-gov-"):
        return "console.amazonaws-us-gov.com"
    return "console.aws.amazon.com"


def _build_duration(build: BuildRecord, phases: Sequence[PhaseRow]) -> int | None:
    seconds = _seconds_between(build.get("startTime"), build.get("endTime"))
    if seconds is not None:
        return seconds
    known = [row.duration_seconds for row in phases if row.duration_seconds is not None]
    return sum(known) if known else None


def _seconds_between(start: Any, end: Any) -> int | None:
    start_at, end_at = _as_datetime(start), _as_datetime(end)
    if start_at is None or end_at is None:
        return None
    try:
        return max(0, round((end_at - start_at).total_seconds()))
    except TypeError:  # one naive, one aware
        return None


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value).astimezone()
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _str_or_none(value: Any) -> str | None:
    return str(value) if value else None


# -- rendering ---------------------------------------------------------------------------------


def _build_label(build: BuildRecord, build_number: int | None) -> str:
    if build_number is not None:
        return f"Build #{build_number}"
    build_id = str(build.get("id") or "")
    suffix = build_id.rpartition(":")[2]
    return f"Build {suffix[:8]}" if suffix else "Build"


def _title(
    build: BuildRecord,
    *,
    build_number: int | None,
    build_status_value: str,
    state: BuildState,
    current_phase: str | None,
    failing: Mapping[str, Any] | None,
) -> str:
    label = _build_label(build, build_number)
    seconds = _build_duration(build, tuple(_phase_rows(build.get("phases"))))
    duration = format_duration(seconds)
    where = str(failing.get("phaseType")) if failing else current_phase
    if state == "queued":
        text = f"{label} queued"
    elif state == "in_progress":
        text = f"{label} running: {current_phase}"
    elif build_status_value == "SUCCEEDED":
        text = f"{label} succeeded" + (f" in {duration}" if seconds is not None else "")
    elif build_status_value == "TIMED_OUT":
        text = f"{label} timed out" + (f" after {duration}" if seconds is not None else "")
        text += f" in {where}" if where else ""
    elif build_status_value == "STOPPED":
        text = f"{label} was stopped" + (f" in {where}" if where else "")
    elif build_status_value == "FAULT":
        text = f"{label} failed (CodeBuild fault)" + (f" in {where}" if where else "")
    else:
        text = f"{label} failed" + (f" in {where}" if where else "")
    text = " ".join(text.split())
    return shorten(text, TITLE_MAX)


def _cell(text: str) -> str:
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def _phase_table(phases: Sequence[PhaseRow], *, done: bool) -> str:
    rows = ["| Phase | Status | Duration |", "| --- | --- | --- |"]
    for row in phases:
        if row.status:
            status = f"{_PHASE_ICONS.get(row.status, '')} {row.status}".strip()
        else:  # CodeBuild's closing COMPLETED phase never gets a status
            status = "—" if done else "⏳ running"
        rows.append(f"| {_cell(row.name)} | {_cell(status)} | {format_duration(row.duration_seconds)} |")
    return "\n".join(rows)


def _failure_text(failing: Mapping[str, Any]) -> tuple[str, str]:
    """(heading, message) for the failing phase; message may be empty."""
    heading = f"**{_cell(str(failing.get('phaseType')))} {_cell(str(failing.get('phaseStatus')).lower())}**"
    contexts = failing.get("contexts")
    messages: list[str] = []
    codes: list[str] = []
    if isinstance(contexts, Sequence):
        for context in contexts:
            if not isinstance(context, Mapping):
                continue
            if context.get("statusCode"):
                codes.append(str(context["statusCode"]))
            if context.get("message"):
                messages.append(str(context["message"]))
    if codes:
        heading += " (" + ", ".join(f"`{_cell(code).replace('`', '')}`" for code in codes) + ")"
    return heading, "\n".join(clean_log_lines(messages))


def _fit_head(text: str, budget: int) -> str | None:
    """A fenced block of `text` within `budget` chars, cutting the end; None when nothing fits."""
    block = fenced(text)
    if len(block) <= budget:
        return block
    note = f"\n{TRUNCATED}"
    low, high = 0, len(text)  # the longest prefix whose block fits: a fence only grows with text
    while low < high:
        middle = (low + high + 1) // 2
        if len(fenced(text[:middle])) + len(note) <= budget:
            low = middle
        else:
            high = middle - 1
    kept = text[:low]
    if "\n" in kept:  # end on a whole line when there is one
        kept = kept.rsplit("\n", 1)[0]
    return fenced(kept) + note if kept else None


def _fit_tail(lines: list[str], budget: int) -> tuple[str, int] | None:
    """A fenced block of the last lines within `budget` chars and how many lines it holds."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line) + 1
        kept.append(line)
        if size > budget:
            kept.pop()
            break
    kept.reverse()
    while kept:
        block = fenced("\n".join(kept))
        if len(block) <= budget:
            return block, len(kept)
        kept.pop(0)
    return None


def _summary(
    build: BuildRecord,
    *,
    title: str,
    done: bool,
    phases: Sequence[PhaseRow],
    failing: Mapping[str, Any] | None,
    image: tuple[str | None, str | None],
    log_tail: list[str],
    links: tuple[str, str | None],
    max_chars: int,
) -> str:
    header = [f"### {title}"]
    facts = []
    if build.get("projectName"):
        facts.append(f"Project: `{_cell(str(build['projectName'])).replace('`', '')}`")
    source = build.get("resolvedSourceVersion") or build.get("sourceVersion")
    if source:
        facts.append(f"Source: `{_cell(str(source)).replace('`', '')}`")
    image_uri, image_digest = image
    if image_uri:
        facts.append(f"Image: `{_cell(image_uri).replace('`', '')}`")
    if image_digest:
        facts.append(f"Digest: `{_cell(image_digest).replace('`', '')}`")
    if facts:
        header.append(" · ".join(facts))
    report = image_report(build)
    if report:
        header.append(" · ".join(report))
    if phases:
        header.append(_phase_table(phases, done=done))
    console, logs = links
    link_parts = [f"[CodeBuild console]({console})"] if console else []
    if logs:
        link_parts.append(f"[CloudWatch logs]({logs})")
    footer = " · ".join(link_parts)

    fixed = "\n\n".join(header) + ("\n\n" + footer if footer else "")
    if len(fixed) > max_chars:
        # Nothing fenced yet, so a plain cut cannot open a code block.
        keep = max(0, max_chars - len(TRUNCATED) - 1)
        return (fixed[:keep] + "\n" + TRUNCATED)[:max_chars]

    blocks: list[str] = []
    budget = max_chars - len(fixed)
    if failing is not None:
        heading, message = _failure_text(failing)
        block = heading
        if message:
            fitted = _fit_head(message, budget - len(heading) - 5)
            block = f"{heading}\n\n{fitted}" if fitted else f"{heading} {TRUNCATED}"
        if len(block) + 2 <= budget:
            blocks.append(block)
            budget -= len(block) + 2
    if log_tail:
        heading = f"**Last {len(log_tail)} log lines**"
        note = f"\n{TRUNCATED}"
        room = budget - len(heading) - 2 - 2
        fitted_tail = _fit_tail(log_tail, room)
        if fitted_tail is not None and fitted_tail[1] == len(log_tail):
            blocks.append(f"{heading}\n\n{fitted_tail[0]}")
        else:
            fitted_tail = _fit_tail(log_tail, room - len(note))
            if fitted_tail is not None:
                kept = fitted_tail[1]
                blocks.append(f"**Last {kept} log lines** {TRUNCATED}\n\n{fitted_tail[0]}")
    body = "\n\n".join([*header, *blocks])
    return body + ("\n\n" + footer if footer else "")


# -- statuses of deliveries and builds CodeBuild cannot describe ------------------------------------


def waiting_status(reason: str, *, attempts: int) -> BuildStatus:
    """A delivery accepted but not started yet because CodeBuild refused or could not be reached.

    Queued, not completed: the worker keeps trying for as long as the store keeps the delivery, and
    the same check run (or commit status) moves on to the build's own states once it starts.
    """
    title = f"Waiting for CodeBuild: {reason}"
    return BuildStatus(
        build_id="",
        build_number=None,
        build_status="IN_PROGRESS",
        state="queued",
        conclusion=None,
        title=shorten(title, TITLE_MAX),
        summary=(
            "### Waiting for CodeBuild\n\n"
            f"The build has not started yet: {reason}\n\n"
            f"The bridge tries again with a growing pause ({attempts} attempts so far); nothing is lost "
            "meanwhile. *Re-run* or redelivering the webhook tries again at once.\n"
        )[:65535],
        phases=(),
        current_phase=None,
        console_url="",
    )


def not_started_status(message: str, hint: str = "") -> BuildStatus:
    """What the commit shows when a build cannot start until someone fixes something (bad route,
    access denied, unknown project, no credentials): final, with the fix, and never retried alone."""
    title = f"Build not started: {message}"
    fix = (
        f"\n\n**To fix:** {hint}\n\nThen *Re-run*, redeliver the webhook, or run `bridge redeliver`."
        if hint
        else ""
    )
    return BuildStatus(
        build_id="",
        build_number=None,
        build_status="FAULT",
        state="completed",
        conclusion="failure",
        title=shorten(title, TITLE_MAX),
        summary=f"### Build not started\n\n{message}{fix}\n"[:65535],
        phases=(),
        current_phase=None,
        console_url="",
    )


def rerun_refused_status(route_name: str, reason: str) -> BuildStatus:
    """What a check shows when its *Re-run* builds nothing: final, naming the route and why.

    Concluded `failure`, not `neutral`: GitHub counts a neutral run as passing a required check, and
    a re-run that built nothing must not turn a check green (a fork's failed build whose route no
    longer builds forks, say). The commit status fallback shows it as `error`.
    """
    fix = (
        f"A re-run builds on the route the original build ran on, routes[{route_name}], and only while "
        "that route exists, lists `rerun` in its `events` and still builds this commit (its repositories, "
        "branches or tags, and its fork policy).\n\n"
        f"**To fix:** restore routes[{route_name}] (or its filters) if this commit should build there, "
        "then *Re-run* again; or push a new commit, which is routed afresh."
    )
    return BuildStatus(
        build_id="",
        build_number=None,
        build_status="FAULT",
        state="completed",
        conclusion="failure",
        title=shorten(f"Re-run not built: {reason}", TITLE_MAX),
        summary=f"### Re-run not built\n\n{reason}\n\n{fix}\n"[:65535],
        phases=(),
        current_phase=None,
        console_url="",
    )


def lost_status(build_id: str, reason: str, *, region: str) -> BuildStatus:
    """A build the bridge started and can no longer read: a final failure that says why, so a
    required check does not wait forever on a build nobody can see."""
    try:
        link = console_url(build_id, region)
    except ValueError:
        link = ""
    title = f"Build {build_id} lost: {reason}"
    return BuildStatus(
        build_id=build_id,
        build_number=None,
        build_status="FAULT",
        state="completed",
        conclusion="failure",
        title=shorten(title, TITLE_MAX),
        summary=(
            "### Build lost\n\n"
            f"The bridge stopped following build `{build_id}`: {reason}\n\n"
            "Its result is unknown. *Re-run* starts a new build.\n"
        )[:65535],
        phases=(),
        current_phase=None,
        console_url=link,
    )
