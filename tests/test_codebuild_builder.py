"""CodeBuildBuilder and CloudWatchLogTail against the CodeBuild double and moto's CloudWatch Logs."""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest

from bridge import aws
from bridge.builders.base import Builder, LogTail
from bridge.builders.codebuild import CloudWatchLogTail, CodeBuildBuilder, builder_error
from bridge.errors import BuilderError
from bridge.model import BuildRecord, BuildRequest, SourceEvent
from bridge.reporters.github import CheckRunReporter, github_client
from bridge.secret import Secret
from bridge.status import GROUP_BUILDS, build_status
from tests.fakes.codebuild_double import PHASES, BatchScenario, CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient

MakeBuilder = Callable[..., CodeBuildBuilder]


@pytest.fixture
def make_builder(boto_session: boto3.session.Session) -> MakeBuilder:
    def make(*, max_attempts: int = 3, log_page_limit: int | None = None) -> CodeBuildBuilder:
        return CodeBuildBuilder(
            aws.client("codebuild", session=boto_session, max_attempts=max_attempts),
            aws.client("logs", session=boto_session),
            log_page_limit=log_page_limit,
            sleep=lambda _seconds: None,
        )

    return make


def request(project: str = "app", **kwargs: object) -> BuildRequest:
    return BuildRequest({"projectName": project, **kwargs})


def run_to_end(
    builder: CodeBuildBuilder, build: BuildRecord, tail: LogTail | None = None
) -> tuple[BuildRecord, list[str]]:
    lines: list[str] = []
    for _ in range(500):
        build = builder.get_many([build["id"]])[build["id"]]
        if tail is not None:
            lines += tail.poll(build)
        if build["buildComplete"]:
            return build, lines
    raise AssertionError("build never completed")


def test_builder_satisfies_the_protocol(make_builder: MakeBuilder) -> None:
    builder: Builder = make_builder()
    assert builder.name == "codebuild"


def test_start_sends_exactly_the_planned_request(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    kwargs = {
        "projectName": "image-builder",
        "sourceVersion": "0123456789abcdef0123456789abcdef01234567",
        "sourceTypeOverride": "GITHUB",
        "sourceLocationOverride": "https://github.com/octo/app.git",
        "buildspecOverride": "version: 0.2\nphases:\n  build:\n    commands: [make]\n",
        "environmentVariablesOverride": [
            {
                "name": "IMAGE_REPO",
                "value": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app",
                "type": "PLAINTEXT",
            },
            {"name": "NPM_TOKEN", "value": "ci/npm:token", "type": "SECRETS_MANAGER"},
        ],
        "imageOverride": "aws/codebuild/standard:7.0",
        "computeTypeOverride": "BUILD_GENERAL1_MEDIUM",
        "privilegedModeOverride": True,
        "timeoutInMinutesOverride": 30,
        "idempotencyToken": "delivery-72d3162e",
    }
    build = make_builder().start(BuildRequest(kwargs))

    [call] = codebuild_double.calls("StartBuild")
    assert call.params == kwargs
    assert call.status == 200
    assert "bridge/0.1.0" in call.user_agent
    assert build["id"].startswith("image-builder:")
    assert build["buildStatus"] == "IN_PROGRESS"
    assert build["buildComplete"] is False
    assert build["environment"]["computeType"] == "BUILD_GENERAL1_MEDIUM"
    assert build["environment"]["environmentVariables"] == kwargs["environmentVariablesOverride"]
    assert build["sourceVersion"] == kwargs["sourceVersion"]


def test_get_many_asks_for_at_most_100_ids_a_call(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    builder = make_builder()
    started = [builder.start(request(f"p{i}"))["id"] for i in range(3)]
    unknown = [f"p0:{uuid.uuid4()}" for _ in range(247)]
    ids = [started[0], *unknown[:120], started[1], *unknown[120:], started[2]]

    records = builder.get_many([*ids, started[0]])  # a repeated id is asked for once

    calls = codebuild_double.calls("BatchGetBuilds")
    assert [len(call.params["ids"]) for call in calls] == [100, 100, 50]
    assert [i for call in calls for i in call.params["ids"]] == ids
    assert set(records) == set(started)
    assert all(records[build_id]["id"] == build_id for build_id in started)


@pytest.mark.parametrize("final_status", ["SUCCEEDED", "FAILED", "FAULT", "TIMED_OUT", "STOPPED"])
def test_each_final_status_is_reported(
    final_status: str, make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_project(
        "app",
        Scenario(
            final_status=final_status, exported_env={"IMAGE_URI": "repo/app:abc", "IMAGE_DIGEST": "sha256:1"}
        ),
    )
    builder = make_builder()
    final, _ = run_to_end(builder, builder.start(request()))

    assert final["buildStatus"] == final_status
    assert final["currentPhase"] == "COMPLETED"
    assert final["endTime"] >= final["startTime"]
    statuses = {phase["phaseType"]: phase.get("phaseStatus") for phase in final["phases"]}
    if final_status == "SUCCEEDED":
        assert all(statuses[phase] == "SUCCEEDED" for phase in PHASES[:-1])
        assert {v["name"]: v["value"] for v in final["exportedEnvironmentVariables"]} == {
            "IMAGE_URI": "repo/app:abc",
            "IMAGE_DIGEST": "sha256:1",
        }
    else:
        assert statuses["BUILD"] == final_status
        assert "POST_BUILD" not in statuses
        assert "exportedEnvironmentVariables" not in final


def test_stop_ends_the_build_as_stopped(make_builder: MakeBuilder, codebuild_double: CodeBuildDouble) -> None:
    builder = make_builder()
    build = builder.start(request())
    builder.get_many([build["id"]])

    stopped = builder.stop(build["id"])

    assert [call.params for call in codebuild_double.calls("StopBuild")] == [{"id": build["id"]}]
    assert stopped["buildStatus"] == "STOPPED"
    assert stopped["buildComplete"] is True
    assert builder.get_many([build["id"]])[build["id"]]["buildStatus"] == "STOPPED"


def test_stop_of_an_unknown_build_names_the_project(make_builder: MakeBuilder) -> None:
    with pytest.raises(BuilderError) as caught:
        make_builder().stop(f"ghost:{uuid.uuid4()}")
    assert not caught.value.retryable
    assert "ghost" in caught.value.hint


def test_botocore_retries_absorb_a_few_throttles(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    builder = make_builder(max_attempts=4)
    build = builder.start(request())
    codebuild_double.throttle(2, "BatchGetBuilds")

    assert build["id"] in builder.get_many([build["id"]])

    calls = codebuild_double.calls("BatchGetBuilds")
    assert [(call.attempt, call.error_code) for call in calls] == [
        (1, "ThrottlingException"),
        (2, "ThrottlingException"),
        (3, None),
    ]


def test_throttling_beyond_max_attempts_is_a_retryable_builder_error(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.throttle(5, "StartBuild")
    with pytest.raises(BuilderError) as caught:
        make_builder(max_attempts=2).start(request())
    assert caught.value.retryable
    assert "ThrottlingException" in caught.value.message
    assert [call.attempt for call in codebuild_double.calls("StartBuild")] == [1, 2]


def test_concurrent_build_quota_is_retryable(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.fail(
        "StartBuild", "AccountLimitExceededException", message="Cannot have more than 60 builds"
    )
    with pytest.raises(BuilderError) as caught:
        make_builder().start(request())
    assert caught.value.retryable
    assert "quota" in caught.value.hint
    assert (
        len(codebuild_double.calls("StartBuild")) == 1
    )  # botocore does not retry it; the worker does, later


def test_server_errors_are_retried_then_retryable(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.fail("BatchGetBuilds", "InternalFailure", count=10, status=500)
    with pytest.raises(BuilderError) as caught:
        make_builder(max_attempts=3).get_many([f"app:{uuid.uuid4()}"])
    assert caught.value.retryable
    assert len(codebuild_double.calls("BatchGetBuilds")) == 3


def test_missing_project_is_not_retryable_and_named(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.mark_missing("gone")
    with pytest.raises(BuilderError) as caught:
        make_builder().start(request("gone"))
    assert not caught.value.retryable
    assert "'gone'" in caught.value.hint
    assert "ResourceNotFoundException" in caught.value.message


def test_input_the_service_refuses_is_not_retryable(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    # botocore validates types client-side but not enums; the service does.
    with pytest.raises(BuilderError) as caught:
        make_builder().start(request("app", computeTypeOverride="BUILD_GENERAL1_HUGE"))
    assert not caught.value.retryable
    assert "InvalidInputException" in caught.value.message
    assert "'app'" in caught.value.hint
    assert codebuild_double.calls("StartBuild")[0].error_code == "InvalidInputException"


def test_idempotency_token_reuse(make_builder: MakeBuilder) -> None:
    builder = make_builder()
    first = builder.start(request(sourceVersion="main", idempotencyToken="delivery-1"))
    again = builder.start(request(sourceVersion="main", idempotencyToken="delivery-1"))
    assert again["id"] == first["id"]

    with pytest.raises(BuilderError) as caught:
        builder.start(request(sourceVersion="develop", idempotencyToken="delivery-1"))
    assert not caught.value.retryable
    assert "idempotency token" in caught.value.hint


def test_unreachable_endpoint_is_retryable(
    boto_session: boto3.session.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_CODEBUILD", f"http://127.0.0.1:{port}")
    session = boto3.session.Session()
    builder = CodeBuildBuilder(
        aws.client("codebuild", session=session, max_attempts=1), aws.client("logs", session=session)
    )
    with pytest.raises(BuilderError) as caught:
        builder.get_many([f"app:{uuid.uuid4()}"])
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("ThrottlingException", 400, True),
        ("Throttling", 400, True),
        ("TooManyRequestsException", 429, True),
        ("AccountLimitExceededException", 400, True),
        ("ServiceUnavailable", 503, True),
        ("SomethingNew", 502, True),
        ("InternalFailure", 500, True),
        ("ResourceNotFoundException", 400, False),
        ("InvalidInputException", 400, False),
        ("AccessDeniedException", 400, False),
        ("IdempotentParameterMismatchException", 400, False),
        # The code decides, never the message text.
        ("ValidationException", 400, False),
    ],
)
def test_error_codes_decide_retryability(code: str, status: int, retryable: bool) -> None:
    response: Any = {
        "Error": {"Code": code, "Message": "Rate exceeded, throttling"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    exc = botocore.exceptions.ClientError(response, "StartBuild")
    error = builder_error(exc, operation="StartBuild", project="app")
    assert error.retryable is retryable
    assert code in error.message
    assert "'app'" in error.message


# ---- log tail -----------------------------------------------------------------------------


def test_tail_returns_nothing_until_the_stream_exists(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble, boto_session: boto3.session.Session
) -> None:
    codebuild_double.script_next(Scenario(stream_delay_polls=2, log_lines={"INSTALL": ["installing"]}))
    builder = make_builder()
    build = builder.start(request("late"))
    tail = builder.log_tail(build)
    logs = aws.client("logs", session=boto_session)

    seen_named_but_missing = False
    lines: list[str] = []
    while not build["buildComplete"]:
        build = builder.get_many([build["id"]])[build["id"]]
        group, stream = build["logs"].get("groupName"), build["logs"].get("streamName")
        if group and stream and not _stream_exists(logs, group, stream):
            seen_named_but_missing = True
        lines += tail.poll(build)
    assert seen_named_but_missing  # the record named a stream that did not exist yet, and poll coped
    assert lines == ["installing"]


def _stream_exists(logs: CloudWatchLogsClient, group: str, stream: str) -> bool:
    try:
        found = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)["logStreams"]
    except logs.exceptions.ResourceNotFoundException:
        return False
    return any(s.get("logStreamName") == stream for s in found)


@pytest.mark.parametrize("page_limit", [None, 37])
def test_tail_delivers_every_line_once_in_order(
    page_limit: int | None,
    make_builder: MakeBuilder,
    codebuild_double: CodeBuildDouble,
    boto_session: boto3.session.Session,
) -> None:
    expected_by_phase = {
        "DOWNLOAD_SOURCE": [
            "[Container] Waiting for agent ping",
            "CODEBUILD_SRC_DIR=/codebuild/output/src1/src",
        ],
        "INSTALL": [f"install {i}" for i in range(15)],
        "BUILD": [f"#{i} step output \t with spaces  " for i in range(2000)],
        "POST_BUILD": ["pushing", "done"],
    }
    codebuild_double.script_next(
        Scenario(log_lines=expected_by_phase, polls_per_phase={"BUILD": 25, "INSTALL": 3})
    )
    builder = make_builder()
    build = builder.start(request())
    logs = aws.client("logs", session=boto_session)
    reads: list[str] = []
    logs.meta.events.register("before-call.logs.GetLogEvents", lambda **_: reads.append("page"))
    tail = CloudWatchLogTail(logs, page_limit=page_limit, sleep=lambda _s: None)

    batches: list[list[str]] = []
    while not build["buildComplete"]:
        build = builder.get_many([build["id"]])[build["id"]]
        batches.append(tail.poll(build))
    lines = [line for batch in batches for line in batch] + list(tail.drain(build))

    expected = [line for phase in expected_by_phase.values() for line in phase]
    assert lines == expected
    assert sum(1 for batch in batches if batch) >= 25  # the log grew while it was polled
    # Paging stops when the forward token repeats: one closing read per poll, not a sweep of pages.
    data_pages = math.ceil(len(expected) / page_limit) if page_limit else 0
    assert len(reads) <= 2 * (len(batches) + 3) + data_pages


def test_drain_reads_the_tail_after_the_build_ended(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    expected = [f"line {i}" for i in range(300)]
    codebuild_double.script_next(Scenario(log_lines={"BUILD": expected[:200], "FINALIZING": expected[200:]}))
    builder = make_builder(log_page_limit=50)
    build = builder.start(request())
    tail = builder.log_tail(build)
    polled: list[str] = []
    while build["currentPhase"] != "POST_BUILD":
        build = builder.get_many([build["id"]])[build["id"]]
        polled += tail.poll(build)
    final, _ = run_to_end(builder, build)

    assert polled + list(tail.drain(final)) == expected


def test_drain_waits_for_lines_that_arrive_late(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble, boto_session: boto3.session.Session
) -> None:
    codebuild_double.script_next(Scenario(log_lines={"BUILD": ["built"]}))
    builder = make_builder()
    final, _ = run_to_end(builder, builder.start(request()))
    logs = aws.client("logs", session=boto_session)
    group, stream = final["logs"]["groupName"], final["logs"]["streamName"]
    late = iter(["late 1", "late 2"])
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        """CloudWatch ingestion lag: a line shows up while the tail waits."""
        sleeps.append(seconds)
        line = next(late, None)
        if line is not None:
            events = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=False)[
                "events"
            ]
            logs.put_log_events(
                logGroupName=group,
                logStreamName=stream,
                logEvents=[{"timestamp": events[-1]["timestamp"] + 1, "message": line + "\n"}],
            )

    tail = CloudWatchLogTail(logs, drain_attempts=2, drain_delay=0.5, sleep=sleep)
    assert list(tail.drain(final)) == ["built", "late 1", "late 2"]
    assert sleeps == [0.5, 0.5, 0.5, 0.5]  # two lines came late, then two quiet tries


def test_tail_of_a_build_without_logs_is_empty_and_does_not_wait(make_builder: MakeBuilder) -> None:
    codebuild_double_record: BuildRecord = {
        "id": "app:1",
        "projectName": "app",
        "buildComplete": True,
        "logs": {},
    }
    sleeps: list[float] = []
    builder = make_builder()
    tail = CloudWatchLogTail(aws.client("logs"), sleep=sleeps.append)
    assert tail.poll(codebuild_double_record) == []
    assert list(tail.drain(codebuild_double_record)) == []
    assert sleeps == []
    assert builder.log_tail(codebuild_double_record).poll(codebuild_double_record) == []


def test_tail_keeps_text_but_drops_the_newline(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    odd = ["  indented", "trailing space ", "tab\t", "", "ünïcödé ✓", "crlf\r"]
    codebuild_double.script_next(Scenario(log_lines={"BUILD": odd}))
    builder = make_builder()
    build = builder.start(request())
    final, lines = run_to_end(builder, build, builder.log_tail(build))
    assert lines == [*odd[:-1], "crlf"]
    assert final["buildStatus"] == "SUCCEEDED"


# --- batch builds ------------------------------------------------------------------------------------

BATCH_SPEC = """version: 0.2
batch:
  build-list:
    - identifier: linux_amd64
    - identifier: linux_arm64
phases:
  build:
    commands: [make]
"""


def batch_request(project: str = "app", **kwargs: object) -> BuildRequest:
    return BuildRequest({"projectName": project, "buildspecOverride": BATCH_SPEC, **kwargs}, batch=True)


def run_batch_to_end(builder: CodeBuildBuilder, batch: BuildRecord) -> BuildRecord:
    for _ in range(500):
        batch = builder.get_many([batch["id"]])[batch["id"]]
        if batch["complete"]:
            return batch
    raise AssertionError("batch never completed")


def test_a_batch_request_starts_a_batch_with_the_mapped_overrides(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    builder = make_builder()
    batch = builder.start(batch_request(timeoutInMinutesOverride=30, sourceVersion="main"))
    assert batch["arn"].endswith(f":build-batch/{batch['id']}")
    (call,) = codebuild_double.calls("StartBuildBatch")
    assert call.status == 200
    assert call.params["buildTimeoutInMinutesOverride"] == 30
    assert "timeoutInMinutesOverride" not in call.params
    assert codebuild_double.calls("StartBuild") == []


def test_a_batch_is_polled_with_batch_get_build_batches_and_summarises_its_builds(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    builder = make_builder()
    batch = run_batch_to_end(builder, builder.start(batch_request()))
    assert batch["buildBatchStatus"] == "SUCCEEDED"
    assert [group["identifier"] for group in batch["buildGroups"]] == ["linux_amd64", "linux_arm64"]
    child_ids = [group["currentBuildSummary"]["arn"].split(":build/")[1] for group in batch["buildGroups"]]
    asked = [build_id for call in codebuild_double.calls("BatchGetBuilds") for build_id in call.params["ids"]]
    assert batch["id"] not in asked  # a known batch id skips BatchGetBuilds
    assert sorted(asked) == sorted(child_ids)  # its finished builds are read once, for the report
    children = builder.get_many(child_ids)
    assert {record["buildStatus"] for record in children.values()} == {"SUCCEEDED"}
    assert all(record["buildBatchArn"] == batch["arn"] for record in children.values())


def test_a_batch_started_by_another_process_is_read_as_a_batch_when_named_one(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    batch = make_builder().start(batch_request())
    build = make_builder().start(request())
    fresh = make_builder()  # knows neither id, as after a restart
    records = fresh.get_many([batch["id"], build["id"]], batch_ids={batch["id"]})
    assert set(records) == {batch["id"], build["id"]}
    assert "buildBatchStatus" in records[batch["id"]]
    assert "buildStatus" in records[build["id"]]
    assert [c.params["ids"] for c in codebuild_double.calls("BatchGetBuildBatches")] == [[batch["id"]]]
    assert [c.params["ids"] for c in codebuild_double.calls("BatchGetBuilds")] == [[build["id"]]]
    assert fresh.stop(batch["id"])["buildBatchStatus"] == "STOPPED"  # now known as a batch


def test_an_id_codebuild_does_not_know_is_absent_and_never_asked_of_the_batch_api(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    """The bridge's role may not call BatchGetBuildBatches (deploy/bridge.yaml): a plain id that
    BatchGetBuilds does not return is left for the caller to judge, not sent to the batch API."""
    builder = make_builder()
    build = builder.start(request())
    gone = builder.start(request())
    codebuild_double.forget(gone["id"])
    records = builder.get_many([build["id"], gone["id"]])
    assert set(records) == {build["id"]}
    assert codebuild_double.calls("BatchGetBuildBatches") == []


def test_stopping_a_batch_stops_its_builds(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    builder = make_builder()
    batch = builder.start(batch_request())
    for _ in range(3):
        batch = builder.get_many([batch["id"]])[batch["id"]]
    stopped = builder.stop(batch["id"])
    assert stopped["buildBatchStatus"] == "STOPPED"
    assert stopped["complete"] is True
    assert {g["currentBuildSummary"]["buildStatus"] for g in stopped["buildGroups"]} == {"STOPPED"}
    assert [c.params for c in codebuild_double.calls("StopBuildBatch")] == [{"id": batch["id"]}]
    assert codebuild_double.calls("StopBuild") == []


def test_a_failing_build_fails_the_batch(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    from tests.fakes.codebuild_double import BatchScenario

    codebuild_double.script_next_batch(
        BatchScenario({"ok": Scenario(), "broken": Scenario(final_status="FAILED")})
    )
    builder = make_builder()
    batch = run_batch_to_end(builder, builder.start(batch_request()))
    assert batch["buildBatchStatus"] == "FAILED"
    statuses = {g["identifier"]: g["currentBuildSummary"]["buildStatus"] for g in batch["buildGroups"]}
    assert statuses == {"ok": "SUCCEEDED", "broken": "FAILED"}


def test_a_build_only_override_is_refused_before_any_call(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble
) -> None:
    from bridge.errors import InputError

    with pytest.raises(InputError, match="fleetOverride"):
        make_builder().start(batch_request(fleetOverride={"fleetArn": "arn:aws:codebuild:x"}))
    assert codebuild_double.requests == []


BATCH_EVENT = SourceEvent(
    provider="github",
    kind="push",
    event_name="push",
    action=None,
    repository="octo-org/app",
    clone_url="https://github.com/octo-org/app.git",
    sha="6dcb09b5b57875f334f61aebed695e2e4193db5e",
    ref="refs/heads/main",
    server_url="https://github.com",
)


def test_a_finished_batch_carries_what_each_platform_build_exported_into_the_check_run(
    make_builder: MakeBuilder, codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    """The batch record names its builds; the report shows each platform's status and digest and the
    index the merge build pushed, as posted to GitHub's check run (the fake validates the request)."""
    digests = {arch: "sha256:" + char * 64 for arch, char in (("amd64", "a"), ("arm64", "b"), ("index", "c"))}
    codebuild_double.script_next_batch(
        BatchScenario(
            builds={
                "linux_amd64": Scenario(
                    exported_env={"BRIDGE_PLATFORM": "linux/amd64", "IMAGE_DIGEST": digests["amd64"]}
                ),
                "linux_arm64": Scenario(
                    exported_env={"BRIDGE_PLATFORM": "linux/arm64", "IMAGE_DIGEST": digests["arm64"]},
                    polls_per_phase=3,
                ),
                "merge": Scenario(
                    exported_env={"IMAGE_URI": "ghcr.io/octo/app:v1", "IMAGE_DIGEST": digests["index"]}
                ),
            }
        )
    )
    builder = make_builder()
    batch = builder.start(batch_request())
    seen_partial = False
    for _ in range(500):
        batch = builder.get_many([batch["id"]])[batch["id"]]
        members = batch.get(GROUP_BUILDS, {})
        seen_partial = seen_partial or ("linux_amd64" in members and "linux_arm64" not in members)
        if batch["complete"]:
            break
    assert seen_partial  # a platform shows its digest as soon as its own build has finished
    status = build_status(batch, region="eu-west-1")
    assert (status.image_uri, status.image_digest) == ("ghcr.io/octo/app:v1", digests["index"])
    asked = [build_id for call in codebuild_double.calls("BatchGetBuilds") for build_id in call.params["ids"]]
    assert len(asked) == len(set(asked)) == 3  # each finished build read once

    github_api.add_token("ghs_batchReportToken0123456789abcdef")
    client = github_client(github_api.url, Secret("ghs_batchReportToken0123456789abcdef"))
    reporter = CheckRunReporter(client, "octo-org/app", name="codebuild / image")
    run_id = reporter.start(BATCH_EVENT, None, "https://github.com/octo-org/app/actions/runs/1")
    reporter.update(run_id, status)
    summary = github_api.check_runs[run_id]["output"]["summary"]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in summary.splitlines() if line.startswith("| ")}
    for arch in ("amd64", "arm64"):
        assert f"| `linux/{arch}` | ✅ SUCCEEDED | `{digests[arch]}` |" in rows[f"linux_{arch}"]
    assert "| — | ✅ SUCCEEDED | — |" in rows["merge"]
    assert f"`ghcr.io/octo/app:v1` `{digests['index']}`" in summary
    client.close()
