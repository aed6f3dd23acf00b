"""status.py: every CodeBuild state, phase and odd record maps to the words a reviewer reads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.model import BuildStatus
from bridge.status import (
    TITLE_MAX,
    TRUNCATED,
    build_status,
    clean_log_lines,
    commit_status_state,
    console_url,
    fenced,
    format_duration,
    gitlab_state,
)

REGION = "eu-west-1"
ACCOUNT = "123456789012"
PROJECT = "image-builder"
UUID = "5f3f0a2e-9c1d-4c55-8a0b-2b7f1e1c9d01"
BUILD_ID = f"{PROJECT}:{UUID}"
ARN = f"arn:aws:codebuild:{REGION}:{ACCOUNT}:build/{BUILD_ID}"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PHASE_ORDER = [
    "SUBMITTED",
    "QUEUED",
    "PROVISIONING",
    "DOWNLOAD_SOURCE",
    "INSTALL",
    "PRE_BUILD",
    "BUILD",
    "POST_BUILD",
    "UPLOAD_ARTIFACTS",
    "FINALIZING",
    "COMPLETED",
]
WORK_PHASES = PHASE_ORDER[2:-1]


def record(
    *,
    reached: str = "COMPLETED",
    build_status_value: str = "SUCCEEDED",
    failed_phase: str | None = None,
    failed_as: str = "FAILED",
    message: str | None = "Error while executing command: docker build . Reason: exit status 1",
    phase_seconds: int = 10,
    **overrides: Any,
) -> dict[str, Any]:
    """A BatchGetBuilds-shaped record of a build that got as far as `reached`."""
    phases: list[dict[str, Any]] = []
    clock = T0
    last = PHASE_ORDER.index(reached)
    for index, name in enumerate(PHASE_ORDER[: last + 1]):
        phase: dict[str, Any] = {"phaseType": name, "startTime": clock}
        if name == "COMPLETED" or (index == last and reached != "COMPLETED"):
            phases.append(phase)  # the running phase (or CodeBuild's closing marker): no status
            break
        clock += timedelta(seconds=phase_seconds)
        phase.update(endTime=clock, durationInSeconds=phase_seconds, phaseStatus="SUCCEEDED")
        if name == failed_phase:
            phase["phaseStatus"] = failed_as
            if message is not None:
                phase["contexts"] = [{"statusCode": "COMMAND_EXECUTION_ERROR", "message": message}]
        phases.append(phase)
    complete = reached == "COMPLETED"
    built: dict[str, Any] = {
        "id": BUILD_ID,
        "arn": ARN,
        "buildNumber": 12,
        "startTime": T0,
        "currentPhase": reached,
        "buildStatus": build_status_value if complete else "IN_PROGRESS",
        "projectName": PROJECT,
        "sourceVersion": "refs/heads/main",
        "resolvedSourceVersion": "0123456789abcdef0123456789abcdef01234567",
        "phases": phases,
        "buildComplete": complete,
        "logs": {
            "groupName": f"/aws/codebuild/{PROJECT}",
            "streamName": UUID,
            "deepLink": f"https://console.aws.amazon.com/cloudwatch/home?region={REGION}"
            f"#logEvent:group=/aws/codebuild/{PROJECT};stream={UUID}",
        },
    }
    if complete:
        built["endTime"] = clock
    built.update(overrides)
    return built


def fences(markdown: str) -> list[tuple[int, int, list[str]]]:
    """CommonMark backtick fences: (opening line, closing line or -1 if unclosed, content lines)."""
    found: list[tuple[int, int, list[str]]] = []
    lines = markdown.split("\n")
    index = 0
    while index < len(lines):
        opening = re.match(r"^ {0,3}(`{3,})([^`]*)$", lines[index])
        if not opening:
            index += 1
            continue
        width, start, content = len(opening.group(1)), index, []
        index += 1
        while index < len(lines):
            closing = re.match(r"^ {0,3}(`{3,})[ \t]*$", lines[index])
            if closing and len(closing.group(1)) >= width:
                break
            content.append(lines[index])
            index += 1
        found.append((start, index if index < len(lines) else -1, content))
        index += 1
    return found


def outside_fences(markdown: str) -> list[str]:
    lines = markdown.split("\n")
    inside: set[int] = set()
    for start, end, _ in fences(markdown):
        inside.update(range(start, (end if end >= 0 else len(lines) - 1) + 1))
    return [line for number, line in enumerate(lines) if number not in inside]


def assert_valid_markdown(summary: str) -> None:
    assert all(end >= 0 for _, end, _ in fences(summary)), f"unclosed code fence in:\n{summary}"


# -- state, conclusion, provider states --------------------------------------------------------

COMPLETED_CASES = [
    # buildStatus, conclusion, GitHub status state, GitLab state, title
    ("SUCCEEDED", "success", "success", "success", "Build #12 succeeded in 1m 40s"),
    ("FAILED", "failure", "failure", "failed", "Build #12 failed in BUILD"),
    ("FAULT", "failure", "error", "failed", "Build #12 failed (CodeBuild fault) in BUILD"),
    ("TIMED_OUT", "timed_out", "failure", "failed", "Build #12 timed out after 1m 40s in BUILD"),
    ("STOPPED", "cancelled", "error", "canceled", "Build #12 was stopped in BUILD"),
]


@pytest.mark.parametrize(("build_status_value", "conclusion", "github", "gitlab", "title"), COMPLETED_CASES)
def test_completed_builds_map_to_conclusions_and_provider_states(
    build_status_value: str, conclusion: str, github: str, gitlab: str, title: str
) -> None:
    failed_as = {"FAILED": "FAILED", "FAULT": "FAULT", "TIMED_OUT": "TIMED_OUT", "STOPPED": "STOPPED"}
    status = build_status(
        record(
            build_status_value=build_status_value,
            failed_phase=None if build_status_value == "SUCCEEDED" else "BUILD",
            failed_as=failed_as.get(build_status_value, "FAILED"),
        ),
        region=REGION,
    )
    assert status.state == "completed"
    assert status.done
    assert status.conclusion == conclusion
    assert status.build_status == build_status_value
    assert commit_status_state(status) == github
    assert gitlab_state(status) == gitlab
    assert status.title == title
    assert status.build_number == 12
    assert status.build_id == BUILD_ID


@pytest.mark.parametrize("phase", PHASE_ORDER[:-1])
def test_running_build_state_follows_the_current_phase(phase: str) -> None:
    status = build_status(record(reached=phase), region=REGION)
    waiting = phase in ("SUBMITTED", "QUEUED")
    assert status.state == ("queued" if waiting else "in_progress")
    assert status.conclusion is None
    assert not status.done
    assert status.current_phase == phase
    assert commit_status_state(status) == "pending"
    assert gitlab_state(status) == ("pending" if waiting else "running")
    assert status.title == ("Build #12 queued" if waiting else f"Build #12 running: {phase}")
    assert status.phases[-1].name == phase
    assert status.phases[-1].status is None
    assert f"| {phase} | ⏳ running | — |" in status.summary


@pytest.mark.parametrize("phase", WORK_PHASES)
@pytest.mark.parametrize("phase_status", ["FAILED", "FAULT", "TIMED_OUT", "STOPPED", "CLIENT_ERROR"])
def test_the_failing_phase_names_the_title_and_shows_its_message(phase: str, phase_status: str) -> None:
    message = f"{phase} broke: `make` exited 2\nsecond line of context"
    status = build_status(
        record(build_status_value="FAILED", failed_phase=phase, failed_as=phase_status, message=message),
        region=REGION,
    )
    assert status.title == f"Build #12 failed in {phase}"
    assert f"**{phase} {phase_status.lower()}** (`COMMAND_EXECUTION_ERROR`)" in status.summary
    (_, _, content), *_ = fences(status.summary)
    assert content == message.split("\n")
    assert f"| {phase} | " in status.summary
    assert_valid_markdown(status.summary)


def test_failure_without_contexts_still_names_the_phase() -> None:
    status = build_status(
        record(build_status_value="FAILED", failed_phase="INSTALL", message=None), region=REGION
    )
    assert status.title == "Build #12 failed in INSTALL"
    assert "**INSTALL failed**" in status.summary
    assert fences(status.summary) == []


def test_phase_rows_carry_name_status_and_duration() -> None:
    status = build_status(record(build_status_value="FAILED", failed_phase="BUILD"), region=REGION)
    rows = {row.name: row for row in status.phases}
    assert [row.name for row in status.phases] == PHASE_ORDER[: len(status.phases)]
    assert rows["BUILD"].status == "FAILED"
    assert rows["BUILD"].duration_seconds == 10
    assert rows["COMPLETED"].status is None
    assert "| BUILD | ❌ FAILED | 10s |" in status.summary
    assert "| COMPLETED | — | — |" in status.summary  # done: the closing marker is not "running"


def test_phase_duration_falls_back_to_start_and_end_times() -> None:
    build = record()
    for phase in build["phases"]:
        phase.pop("durationInSeconds", None)
        if "startTime" in phase and "endTime" in phase:
            phase["startTime"] = phase["startTime"].isoformat()
            phase["endTime"] = phase["endTime"].isoformat().replace("+00:00", "Z")
    status = build_status(build, region=REGION)
    assert status.phases[0].duration_seconds == 10


# -- missing and odd fields --------------------------------------------------------------------

ODD_RECORDS: list[tuple[str, Mapping[str, Any]]] = [
    ("empty", {}),
    ("id only", {"id": BUILD_ID}),
    ("arn only", {"arn": ARN}),
    ("phases not a list", {"id": BUILD_ID, "phases": "BUILD"}),
    ("phases with junk", {"id": BUILD_ID, "phases": [None, 3, {"phaseStatus": "FAILED"}, {}]}),
    (
        "contexts junk",
        {"id": BUILD_ID, "phases": [{"phaseType": "BUILD", "phaseStatus": "FAILED", "contexts": [1]}]},
    ),
    ("logs not a dict", {"id": BUILD_ID, "logs": "nope"}),
    ("env vars junk", {"id": BUILD_ID, "exportedEnvironmentVariables": [None, {"name": "IMAGE_URI"}]}),
    ("bad times", {"id": BUILD_ID, "startTime": "yesterday", "endTime": object()}),
    ("naive and aware times", {"id": BUILD_ID, "startTime": datetime(2024, 1, 1), "endTime": T0}),
    ("epoch times", {"id": BUILD_ID, "startTime": 1_700_000_000, "endTime": 1_700_000_065.4}),
    ("bool build number", {"id": BUILD_ID, "buildNumber": True}),
    ("unknown terminal status", {"id": BUILD_ID, "buildStatus": "EXPLODED", "buildComplete": True}),
]


@pytest.mark.parametrize(("name", "build"), ODD_RECORDS, ids=[name for name, _ in ODD_RECORDS])
def test_odd_records_degrade_without_raising(name: str, build: Mapping[str, Any]) -> None:
    status = build_status(build, region=REGION)
    assert status.title
    assert len(status.title) <= TITLE_MAX
    assert status.summary.startswith("### ")
    assert_valid_markdown(status.summary)
    assert status.state in ("queued", "in_progress", "completed")
    if status.state == "completed":
        assert status.conclusion is not None


def test_missing_build_number_uses_the_build_uuid() -> None:
    build = record()
    del build["buildNumber"]
    status = build_status(build, region=REGION)
    assert status.build_number is None
    assert status.title.startswith(f"Build {UUID[:8]} succeeded")


def test_unknown_terminal_status_counts_as_failure() -> None:
    status = build_status({"id": BUILD_ID, "buildStatus": "EXPLODED", "buildComplete": True}, region=REGION)
    assert status.conclusion == "failure"
    assert commit_status_state(status) == "failure"
    assert gitlab_state(status) == "failed"


def test_terminal_status_without_build_complete_is_completed() -> None:
    build = record(build_status_value="FAILED", failed_phase="BUILD")
    del build["buildComplete"]
    assert build_status(build, region=REGION).state == "completed"


def test_epoch_times_give_the_duration() -> None:
    status = build_status(
        {"id": BUILD_ID, "buildNumber": 3, "buildStatus": "SUCCEEDED", "startTime": 100, "endTime": 284},
        region=REGION,
    )
    assert status.title == "Build #3 succeeded in 3m 4s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0, "0s"),
        (59, "59s"),
        (60, "1m 0s"),
        (184, "3m 4s"),
        (3600, "1h 0m 0s"),
        (3723, "1h 2m 3s"),
    ],
)
def test_format_duration(seconds: int | None, text: str) -> None:
    assert format_duration(seconds) == text


# -- image and links ---------------------------------------------------------------------------


def test_image_uri_and_digest_come_from_exported_variables() -> None:
    uri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:0123456"
    digest = "sha256:" + "ab" * 32
    status = build_status(
        record(
            exportedEnvironmentVariables=[
                {"name": "OTHER", "value": "x"},
                {"name": "IMAGE_URI", "value": uri},
                {"name": "IMAGE_DIGEST", "value": digest},
            ]
        ),
        region=REGION,
    )
    assert (status.image_uri, status.image_digest) == (uri, digest)
    assert uri in status.summary
    assert digest in status.summary


def test_no_exported_variables_means_no_image() -> None:
    status = build_status(record(), region=REGION)
    assert (status.image_uri, status.image_digest) == (None, None)


def test_summary_links_console_and_cloudwatch() -> None:
    build = record()
    status = build_status(build, region=REGION)
    expected_console = (
        f"https://{REGION}.console.aws.amazon.com/codesuite/codebuild/{ACCOUNT}/projects/{PROJECT}"
        f"/build/{PROJECT}%3A{UUID}/?region={REGION}"
    )
    assert status.console_url == expected_console
    assert status.logs_url == build["logs"]["deepLink"]
    assert status.summary.endswith(
        f"[CodeBuild console]({expected_console}) · [CloudWatch logs]({build['logs']['deepLink']})"
    )


def test_logs_link_is_built_from_group_and_stream_without_deep_link() -> None:
    build = record()
    del build["logs"]["deepLink"]
    status = build_status(build, region=REGION)
    assert status.logs_url == (
        f"https://{REGION}.console.aws.amazon.com/cloudwatch/home?region={REGION}"
        f"#logEvent:group=%2Faws%2Fcodebuild%2F{PROJECT};stream={UUID}"
    )


def test_no_logs_before_provisioning_means_no_logs_link() -> None:
    build = record(reached="QUEUED")
    del build["logs"]
    status = build_status(build, region=REGION)
    assert status.logs_url is None
    assert "CloudWatch" not in status.summary


CONSOLE_CASES = [
    (
        BUILD_ID,
        "us-east-1",
        None,
        f"https://us-east-1.console.aws.amazon.com/codesuite/codebuild/projects/{PROJECT}"
        f"/build/{PROJECT}%3A{UUID}/?region=us-east-1",
    ),
    (
        BUILD_ID,
        "us-east-1",
        ACCOUNT,
        f"https://us-east-1.console.aws.amazon.com/codesuite/codebuild/{ACCOUNT}/projects/{PROJECT}"
        f"/build/{PROJECT}%3A{UUID}/?region=us-east-1",
    ),
    (
        ARN,
        REGION,
        None,
        f"https://{REGION}.console.aws.amazon.com/codesuite/codebuild/{ACCOUNT}/projects/{PROJECT}"
        f"/build/{PROJECT}%3A{UUID}/?region={REGION}",
    ),
    (
        f"arn:aws-cn:codebuild:cn-north-1:{ACCOUNT}:build/{BUILD_ID}",
        "cn-north-1",
        None,
        f"https://cn-north-1.console.amazonaws.cn/codesuite/codebuild/{ACCOUNT}/projects/{PROJECT}"
        f"/build/{PROJECT}%3A{UUID}/?region=cn-north-1",
    ),
    (
        BUILD_ID,
        "us-gov-west-1",
        None,
        f"https://us-gov-west-1.console.amazonaws-us-gov.com/codesuite/codebuild/projects/{PROJECT}"
        f"/build/{PROJECT}%3A{UUID}/?region=us-gov-west-1",
    ),
]


@pytest.mark.parametrize(("build_id", "region", "account", "url"), CONSOLE_CASES)
def test_console_url(build_id: str, region: str, account: str | None, url: str) -> None:
    assert console_url(build_id, region, account) == url


@pytest.mark.parametrize("bad", ["just-a-uuid", ":uuid", "arn:aws:codebuild:us-east-1:1:project/x"])
def test_console_url_rejects_what_is_not_a_build(bad: str) -> None:
    with pytest.raises(ValueError, match="not a CodeBuild build"):
        console_url(bad, REGION)


# -- the log tail ------------------------------------------------------------------------------


def log_block(status: BuildStatus) -> list[str]:
    """The content of the log tail's fence (the last fence in the summary)."""
    found = fences(status.summary)
    assert found, status.summary
    return found[-1][2]


def test_log_tail_keeps_the_last_lines() -> None:
    lines = [f"step {n}" for n in range(200)]
    status = build_status(record(), region=REGION, log_tail=lines, log_lines=30)
    assert log_block(status) == lines[-30:]
    assert "**Last 30 log lines**" in status.summary
    assert TRUNCATED not in status.summary


ANSI_CASES = [
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[1;32mbold green\x1b[m done", "bold green done"),
    ("\x1b[2K\x1b[1Gprogress", "progress"),
    ("\x1b]0;window title\x07text", "text"),
    ("\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("downloading 10%\rdownloading 55%\rdownloading 100%", "downloading 100%"),
    ("tab\tkept", "tab\tkept"),
    ("bell\x07 and nul\x00 dropped", "bell and nul dropped"),
    ("trailing spaces   \r\n", "trailing spaces"),
    ("\x1b(Bcharset", "charset"),
]


@pytest.mark.parametrize(("raw", "clean"), ANSI_CASES)
def test_escape_codes_are_stripped(raw: str, clean: str) -> None:
    assert clean_log_lines([raw]) == [clean]
    status = build_status(record(), region=REGION, log_tail=[raw])
    assert log_block(status) == [clean]
    assert "\x1b" not in status.summary


def test_multi_line_entries_are_split_and_trailing_blank_lines_dropped() -> None:
    assert clean_log_lines(["one\ntwo\n", "three", "", "  "]) == ["one", "two", "three"]


def test_overlong_lines_are_cut() -> None:
    (line,) = clean_log_lines(["x" * 10_000])
    assert len(line) == 2000
    assert line.endswith("…")


BACKTICK_LOGS = [
    ["```"],
    ["````", "still inside"],
    ["``````````"],
    ["echo ```not a fence```", "```python", "print('x')", "```"],
    ["   ```", "~~~", "`"],
    ["```` indented close", "    ```"],
]


@pytest.mark.parametrize("lines", BACKTICK_LOGS)
def test_backticks_in_logs_cannot_close_the_fence(lines: list[str]) -> None:
    status = build_status(record(), region=REGION, log_tail=lines)
    assert log_block(status) == lines
    assert_valid_markdown(status.summary)
    # The links after the log are still markdown, not swallowed by a fence.
    assert any(line.startswith("[CodeBuild console](") for line in outside_fences(status.summary))


@pytest.mark.parametrize("text", ["", "plain", "`", "``` x", "a\n````\nb", "`" * 40])
def test_fenced_is_longer_than_any_backtick_run(text: str) -> None:
    block = fenced(text)
    ((start, end, content),) = fences(block)
    assert (start, end) == (0, len(block.split("\n")) - 1)
    assert content == text.split("\n")


# -- truncation --------------------------------------------------------------------------------


def test_huge_log_is_truncated_to_the_limit_keeping_the_newest_lines() -> None:
    lines = [f"{n:06d} " + "x" * 150 for n in range(100_000)]
    status = build_status(record(), region=REGION, log_tail=lines, log_lines=100_000)
    assert len(status.summary) <= 65535
    assert len(status.summary) > 60_000  # truncation uses the room it has
    kept = log_block(status)
    assert kept == lines[-len(kept) :]
    assert f"**Last {len(kept)} log lines** {TRUNCATED}" in status.summary
    assert_valid_markdown(status.summary)
    assert status.summary.endswith(f"[CloudWatch logs]({status.logs_url})")


@pytest.mark.parametrize("limit", [300, 600, 1000, 2000, 5000])
def test_small_limits_keep_valid_markdown(limit: int) -> None:
    lines = ["```", "`````` tricky", *(f"line {n}" for n in range(500))]
    status = build_status(
        record(build_status_value="FAILED", failed_phase="BUILD", message="m" * 3000),
        region=REGION,
        log_tail=lines,
        max_summary_chars=limit,
        log_lines=1000,
    )
    assert len(status.summary) <= limit
    assert_valid_markdown(status.summary)
    assert TRUNCATED in status.summary


def test_limit_smaller_than_the_table_cuts_plainly() -> None:
    status = build_status(record(), region=REGION, log_tail=["a"], max_summary_chars=120)
    assert len(status.summary) <= 120
    assert status.summary.endswith(TRUNCATED)
    assert fences(status.summary) == []


def test_huge_failure_message_is_cut_and_says_so() -> None:
    status = build_status(
        record(build_status_value="FAILED", failed_phase="BUILD", message="boom\n" * 20_000),
        region=REGION,
    )
    assert len(status.summary) <= 65535
    assert_valid_markdown(status.summary)
    assert TRUNCATED in status.summary
    (_, _, content), *_ = fences(status.summary)
    assert set(content) == {"boom"}
    assert len(content) > 10_000  # cut at the limit, not far before it


log_line = st.text(
    alphabet=st.sampled_from(["`", "~", " ", "\t", "a", "Z", "\x1b", "[", "m", "\r", "\n", "|", "é", "🙂"]),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(log_line, max_size=80), limit=st.integers(min_value=150, max_value=4000))
def test_any_log_and_limit_give_bounded_valid_markdown(lines: list[str], limit: int) -> None:
    status = build_status(record(), region=REGION, log_tail=lines, max_summary_chars=limit)
    assert len(status.summary) <= limit
    assert_valid_markdown(status.summary)
    found = fences(status.summary)
    if found:
        kept = found[-1][2]
        cleaned = clean_log_lines(lines)
        assert kept == cleaned[len(cleaned) - len(kept) :]


# -- the title ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        record(reached="BUILD", currentPhase="P" * 1000),
        record(build_status_value="FAILED", failed_phase="BUILD", buildNumber=10**300),
        {"id": f"{PROJECT}:{'u' * 2000}", "buildStatus": "FAILED", "buildComplete": True},
        record(reached="BUILD", currentPhase="multi\nline\tphase"),
    ],
    ids=["long phase", "huge number", "long id", "control characters"],
)
def test_title_is_one_line_of_at_most_255_chars(build: Mapping[str, Any]) -> None:
    status = build_status(build, region=REGION)
    assert len(status.title) <= TITLE_MAX
    assert "\n" not in status.title
    assert "\t" not in status.title


# --- batches -----------------------------------------------------------------------------------------

BATCH_ARN = f"arn:aws:codebuild:{REGION}:{ACCOUNT}:build-batch/{BUILD_ID}"


def batch_record(status: str = "IN_PROGRESS", phase: str = "IN_PROGRESS", **groups: str) -> dict[str, Any]:
    done = status != "IN_PROGRESS"
    return {
        "id": BUILD_ID,
        "arn": BATCH_ARN,
        "buildBatchNumber": 4,
        "buildBatchStatus": status,
        "currentPhase": phase,
        "complete": done,
        "projectName": PROJECT,
        "startTime": T0,
        **({"endTime": T0 + timedelta(seconds=95)} if done else {}),
        "phases": [{"phaseType": "SUBMITTED", "phaseStatus": "SUCCEEDED", "durationInSeconds": 1}],
        "buildGroups": [
            {
                "identifier": name,
                "currentBuildSummary": {
                    "arn": f"arn:aws:codebuild:{REGION}:{ACCOUNT}:build/{PROJECT}:{index:08d}-0000",
                    "buildStatus": build_state,
                },
            }
            for index, (name, build_state) in enumerate(groups.items())
        ],
    }


@pytest.mark.parametrize(
    ("batch", "state", "conclusion", "title"),
    [
        (batch_record(phase="SUBMITTED"), "queued", None, "Batch #4 queued"),
        (
            batch_record(amd64="SUCCEEDED", arm64="IN_PROGRESS"),
            "in_progress",
            None,
            "Batch #4 running: 1 of 2 builds done",
        ),
        (
            batch_record("SUCCEEDED", "SUCCEEDED", amd64="SUCCEEDED", arm64="SUCCEEDED"),
            "completed",
            "success",
            "Batch #4 succeeded: 2 builds in 1m 35s",
        ),
        (
            batch_record("FAILED", "FAILED", amd64="SUCCEEDED", arm64="FAILED"),
            "completed",
            "failure",
            "Batch #4 failed: 1 of 2 builds did not succeed (arm64)",
        ),
        (
            batch_record("STOPPED", "STOPPED", amd64="STOPPED", arm64="STOPPED"),
            "completed",
            "cancelled",
            "Batch #4 was stopped: 2 of 2 builds did not succeed (amd64, arm64)",
        ),
    ],
)
def test_a_batch_record_is_summarised_build_by_build(
    batch: dict[str, Any], state: str, conclusion: str | None, title: str
) -> None:
    status = build_status(batch, region=REGION)
    assert (status.state, status.conclusion, status.title) == (state, conclusion, title)
    assert status.build_id == BUILD_ID
    assert status.build_number == 4
    assert status.console_url == (
        f"https://{REGION}.console.aws.amazon.com/codesuite/codebuild/{ACCOUNT}/projects/{PROJECT}"
        f"/batch/{PROJECT}%3A{UUID}/?region={REGION}"
    )
    for group in batch["buildGroups"]:
        build_arn = group["currentBuildSummary"]["arn"]
        row = next(
            line for line in status.summary.splitlines() if line.startswith(f"| {group['identifier']} |")
        )
        assert group["currentBuildSummary"]["buildStatus"] in row
        assert f"[console]({console_url(build_arn, REGION)})" in row
    assert_valid_markdown(status.summary)
    assert len(status.title) <= TITLE_MAX


def test_batch_summary_fits_the_limit_and_odd_groups_degrade() -> None:
    batch = batch_record("FAILED", "FAILED", **{f"b{i}": "FAILED" for i in range(400)})
    batch["buildGroups"].append({"identifier": "never-started"})
    batch["buildGroups"].append("junk")
    status = build_status(batch, region=REGION, max_summary_chars=2000)
    assert len(status.summary) <= 2000
    assert status.summary.endswith(TRUNCATED)
    assert len(status.title) <= TITLE_MAX
    assert commit_status_state(status) == "failure"
    assert gitlab_state(status) == "failed"


def test_is_batch_and_is_complete() -> None:
    from bridge.status import is_batch, is_complete

    assert is_batch(batch_record())
    assert not is_batch(record())
    assert is_complete(batch_record("SUCCEEDED", "SUCCEEDED"))
    assert not is_complete(batch_record())
    assert is_complete({"id": BUILD_ID, "buildComplete": True})


def test_a_record_without_a_codebuild_arn_gets_no_console_link() -> None:
    """Other builders' records (the local builder's) have no console page to point at."""
    record = {
        "id": "local:0f1e2d3c",
        "buildStatus": "SUCCEEDED",
        "buildComplete": True,
        "currentPhase": "COMPLETED",
        "logs": {"localPath": "/var/lib/bridge/logs/0f1e2d3c.log"},
    }
    assert build_status(record, region="eu-west-1").console_url == ""
    with_arn = dict(
        record, id="flex:0f1e2d3c", arn="arn:aws:codebuild:eu-west-1:123456789012:build/flex:0f1e2d3c"
    )
    assert build_status(with_arn, region="eu-west-1").console_url.startswith("https://eu-west-1.console.aws")


def test_the_summary_reports_what_the_image_buildspec_measured() -> None:
    from bridge.status import build_status as _build_status

    record = {
        "id": "p:1",
        "buildStatus": "SUCCEEDED",
        "currentPhase": "COMPLETED",
        "exportedEnvironmentVariables": [
            {"name": "IMAGE_URI", "value": "ghcr.io/o/r:1"},
            {"name": "IMAGE_DIGEST", "value": "sha256:" + "ab" * 32},
            {"name": "IMAGE_SIZE", "value": "25300000"},
            {"name": "BRIDGE_CACHED_STEPS", "value": "6"},
            {"name": "BRIDGE_BUILD_STEPS", "value": "8"},
            {"name": "BRIDGE_PLATFORM", "value": "linux/arm64"},
            {"name": "BRIDGE_ATTESTED", "value": "SLSA provenance (mode=max), SBOM"},
        ],
    }
    summary = _build_status(record, region="eu-west-1").summary
    assert "Layer cache: 6 of 8 build steps cached" in summary
    assert "Image size: 25.3 MB" in summary
    assert "Platform: `linux/arm64`" in summary
    assert "Attestations: SLSA provenance (mode=max), SBOM" in summary
    plain = _build_status({**record, "exportedEnvironmentVariables": []}, region="eu-west-1").summary
    assert "Layer cache" not in plain
