"""A scripted AWS CodeBuild that boto3 talks to over HTTP, for tests.

moto's CodeBuild jumps straight to SUCCEEDED and ignores overrides, so build progress is driven
here instead. The double speaks both wire protocols botocore may choose for CodeBuild: Smithy
RPC v2 CBOR (`POST /service/CodeBuild_20161006/operation/<Op>`, what current botocore sends) and
AWS JSON 1.1 (`POST /` with `X-Amz-Target: CodeBuild_20161006.<Op>`, older SDKs).

Every request is validated against botocore's own service model (ParamValidator on the input
shape, plus the enum and max-length rules the real service enforces server-side) and recorded,
so a test can assert the exact StartBuild request and trust that an invalid one would have been
refused. Every response is validated against the output shape, so the records look like real ones.

Builds advance one step per BatchGetBuilds that asks for them (deterministic, no timers) through
SUBMITTED → QUEUED → PROVISIONING → DOWNLOAD_SOURCE → ... → FINALIZING → COMPLETED. Their logs
are real CloudWatch Logs in the moto server: the stream is created only once PROVISIONING is
over, and lines are appended as the build is polled.

Set-up happens in-process through the Python API (script_project, script_next, fail, throttle,
...) or, for a test that drives a subprocess, through `POST /_double/...` and
`GET /_double/requests`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import botocore.model
import botocore.session
import cbor2
from botocore.validate import ParamValidator
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from tests.fakes.hold import Hold
from tests.fakes.quiet import QuietRequestHandler

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_logs.type_defs import InputLogEventTypeDef

PHASES = (
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
)
# The log stream exists only after PROVISIONING, so only these phases can write lines.
LOGGED_PHASES = PHASES[PHASES.index("DOWNLOAD_SOURCE") : PHASES.index("COMPLETED")]
FINAL_STATUSES = ("SUCCEEDED", "FAILED", "FAULT", "TIMED_OUT", "STOPPED")
OPERATIONS = (
    "StartBuild",
    "BatchGetBuilds",
    "StopBuild",
    "StartBuildBatch",
    "BatchGetBuildBatches",
    "StopBuildBatch",
    "ListBuildsForProject",
)
LIST_PAGE_SIZE = 100  # ListBuildsForProject answers at most 100 ids a page
BATCH_PHASES = ("SUBMITTED", "DOWNLOAD_BATCHSPEC", "IN_PROGRESS")
TARGET_PREFIX = "CodeBuild_20161006"
CBOR_PATH_PREFIX = f"/service/{TARGET_PREFIX}/operation/"
IDEMPOTENCY_WINDOW = 300.0  # seconds a StartBuild idempotencyToken is remembered
ACCOUNT = "123456789012"

_FAILURE_CONTEXT = {
    "FAILED": ("COMMAND_EXECUTION_ERROR", "Error while executing command: make image. Reason: exit status 2"),
    "FAULT": ("CLIENT_ERROR", "Internal service error while running the build"),
    "TIMED_OUT": ("BUILD_TIMED_OUT", "Build has timed out."),
    "STOPPED": ("BUILD_STOPPED", "Build was stopped."),
}

_SERVICE_MODEL = botocore.session.get_session().get_service_model("codebuild")


@dataclass(frozen=True)
class Scenario:
    """How one build plays out."""

    final_status: str = "SUCCEEDED"
    polls_per_phase: int | Mapping[str, int] = 1  # BatchGetBuilds calls each phase lasts
    log_lines: Mapping[str, Sequence[str]] = field(default_factory=dict)  # phase → lines it writes
    failing_phase: str = "BUILD"  # where a non-SUCCEEDED final status happens
    exported_env: Mapping[str, str] = field(default_factory=dict)  # exportedEnvironmentVariables on success
    stream_delay_polls: int = 0  # polls after PROVISIONING before the log stream exists
    seconds_per_poll: float = 5.0  # simulated build time that passes per poll

    def __post_init__(self) -> None:
        if self.final_status not in FINAL_STATUSES:
            raise ValueError(f"final_status must be one of {FINAL_STATUSES}")
        if self.failing_phase not in PHASES[1:-1]:
            raise ValueError(f"failing_phase must be one of {PHASES[1:-1]}")
        for phase in self.log_lines:
            if phase not in LOGGED_PHASES:
                raise ValueError(
                    f"phase {phase} cannot write log lines (the stream exists from DOWNLOAD_SOURCE)"
                )

    def polls(self, phase: str) -> int:
        if isinstance(self.polls_per_phase, int):
            return max(1, self.polls_per_phase)
        return max(1, self.polls_per_phase.get(phase, 1))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scenario:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class Recorded:
    """One request as the double saw it."""

    operation: str
    params: dict[str, Any]
    protocol: str  # "cbor" or "json"
    status: int
    error_code: str | None
    attempt: int | None  # botocore's attempt number from the amz-sdk-request header
    user_agent: str

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "params": self.params,
            "protocol": self.protocol,
            "status": self.status,
            "error_code": self.error_code,
            "attempt": self.attempt,
            "user_agent": self.user_agent,
        }


@dataclass
class Fault:
    operation: str | None  # None: any operation
    code: str
    remaining: int
    status: int = 400
    message: str = ""
    after: bool = False  # the operation takes effect, then the answer is this error (a lost answer)


class ServiceError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class _Build:
    """One build's state machine."""

    def __init__(
        self,
        *,
        project: str,
        number: int,
        params: Mapping[str, Any],
        scenario: Scenario,
        region: str,
        logs: CloudWatchLogsClient | None,
    ) -> None:
        self.uuid = str(uuid.uuid4())
        self.id = f"{project}:{self.uuid}"
        self.project = project
        self.number = number
        self.params = dict(params)
        self.scenario = scenario
        self.region = region
        self._logs = logs
        self.start_time = time.time()
        self.now = self.start_time
        self.end_time: float | None = None
        self.phase_index = 0
        self.polls_in_phase = 0
        self.phases: list[dict[str, Any]] = [{"phaseType": "SUBMITTED", "startTime": self.now}]
        self.status = "IN_PROGRESS"
        self.failed = False
        self.past_provisioning = False
        self.stream_wait = 0
        self.stream_created = False
        self.pending_lines: list[str] = []
        self.lines_due: dict[str, int] = {}
        self.last_timestamp = 0
        self.batch_arn: str | None = None  # set for a build that belongs to a batch

    @property
    def phase(self) -> str:
        return PHASES[self.phase_index]

    @property
    def complete(self) -> bool:
        return self.phase == "COMPLETED"

    @property
    def group(self) -> str:
        return f"/aws/codebuild/{self.project}"

    def tick(self) -> None:
        """One poll's worth of progress."""
        if self.complete:
            return
        self.now += self.scenario.seconds_per_poll
        self.polls_in_phase += 1
        phase = self.phase
        self._queue_lines(phase)
        self._flush_logs()
        if self.polls_in_phase < self.scenario.polls(phase):
            return
        if (
            not self.failed
            and self.scenario.final_status != "SUCCEEDED"
            and phase == self.scenario.failing_phase
        ):
            self._end_phase(self.scenario.final_status)
            self.failed = True
            self._enter(max(self.phase_index + 1, PHASES.index("FINALIZING")))
        else:
            self._end_phase("SUCCEEDED")
            self._enter(self.phase_index + 1)

    def stop(self) -> None:
        if self.complete:
            return
        self._end_phase("STOPPED")
        self.failed = True
        self.status = "STOPPED"
        self._enter(PHASES.index("COMPLETED"))

    def _queue_lines(self, phase: str) -> None:
        lines = list(self.scenario.log_lines.get(phase, ()))
        if not lines or not self.past_provisioning:
            return
        due = math.ceil(len(lines) * self.polls_in_phase / self.scenario.polls(phase))
        done = self.lines_due.get(phase, 0)
        self.pending_lines.extend(lines[done:due])
        self.lines_due[phase] = max(done, due)

    def _end_phase(self, status: str) -> None:
        current = self.phases[-1]
        current["phaseStatus"] = status
        current["endTime"] = self.now
        current["durationInSeconds"] = round(self.now - current["startTime"])
        if status in _FAILURE_CONTEXT:
            code, message = _FAILURE_CONTEXT[status]
            current["contexts"] = [{"statusCode": code, "message": message}]

    def _enter(self, index: int) -> None:
        if self.phase == "PROVISIONING" and not self.failed:
            self.past_provisioning = True
        self.phase_index = index
        self.polls_in_phase = 0
        self.phases.append({"phaseType": self.phase, "startTime": self.now})
        if self.complete:
            self.end_time = self.now
            if self.status == "IN_PROGRESS":
                self.status = self.scenario.final_status
            # The COMPLETED phase has no status or duration in real records.
        self._flush_logs()

    def _flush_logs(self) -> None:
        if not self.past_provisioning:
            return
        if not self.stream_created:
            if self.stream_wait < self.scenario.stream_delay_polls and not self.complete:
                self.stream_wait += 1
                return
            self._create_stream()
        if self.pending_lines and self._logs is not None:
            self._put(self.pending_lines)
        self.pending_lines = []

    def _create_stream(self) -> None:
        self.stream_created = True
        if self._logs is None:
            return
        try:
            self._logs.create_log_group(logGroupName=self.group)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                raise
        self._logs.create_log_stream(logGroupName=self.group, logStreamName=self.uuid)

    def _put(self, lines: Sequence[str]) -> None:
        assert self._logs is not None
        for offset in range(0, len(lines), 1000):
            events: list[InputLogEventTypeDef] = []
            for line in lines[offset : offset + 1000]:
                self.last_timestamp = max(self.last_timestamp, int(time.time() * 1000))
                events.append({"timestamp": self.last_timestamp, "message": line + "\n"})
            self._logs.put_log_events(logGroupName=self.group, logStreamName=self.uuid, logEvents=events)

    def record(self) -> dict[str, Any]:
        params = self.params
        source_version = params.get("sourceVersion")
        record: dict[str, Any] = {
            "id": self.id,
            "arn": f"arn:aws:codebuild:{self.region}:{ACCOUNT}:build/{self.id}",
            "buildNumber": self.number,
            "startTime": self.start_time,
            "currentPhase": self.phase,
            "buildStatus": self.status,
            "projectName": self.project,
            "phases": [dict(phase) for phase in self.phases],
            "source": self._source(),
            "secondarySources": [],
            "secondarySourceVersions": [],
            "artifacts": {"location": ""},
            "cache": {"type": "NO_CACHE"},
            "environment": {
                "type": params.get("environmentTypeOverride", "LINUX_CONTAINER"),
                "image": params.get("imageOverride", "aws/codebuild/standard:7.0"),
                "computeType": params.get("computeTypeOverride", "BUILD_GENERAL1_SMALL"),
                "environmentVariables": list(params.get("environmentVariablesOverride", [])),
                "privilegedMode": params.get("privilegedModeOverride", False),
                "imagePullCredentialsType": "CODEBUILD",
            },
            "serviceRole": f"arn:aws:iam::{ACCOUNT}:role/service-role/codebuild-{self.project}-service-role",
            "logs": self._logs_location(),
            "timeoutInMinutes": params.get("timeoutInMinutesOverride", 60),
            "queuedTimeoutInMinutes": params.get("queuedTimeoutInMinutesOverride", 480),
            "buildComplete": self.complete,
            "initiator": "bridge-tests",
            **({"buildBatchArn": self.batch_arn} if self.batch_arn else {}),
            "encryptionKey": f"arn:aws:kms:{self.region}:{ACCOUNT}:alias/aws/s3",
        }
        if source_version is not None:
            record["sourceVersion"] = source_version
        if self.phase_index > PHASES.index("DOWNLOAD_SOURCE"):
            record["resolvedSourceVersion"] = _resolve(source_version)
        if self.end_time is not None:
            record["endTime"] = self.end_time
        if self.complete and self.status == "SUCCEEDED" and self.scenario.exported_env:
            record["exportedEnvironmentVariables"] = [
                {"name": name, "value": value} for name, value in self.scenario.exported_env.items()
            ]
        return record

    def _source(self) -> dict[str, Any]:
        params = self.params
        source_type = params.get("sourceTypeOverride", "GITHUB")
        source: dict[str, Any] = {
            "type": source_type,
            "insecureSsl": params.get("insecureSslOverride", False),
        }
        if source_type != "NO_SOURCE":
            source["location"] = params.get(
                "sourceLocationOverride", f"https://github.com/example/{self.project}.git"
            )
        if "buildspecOverride" in params:
            source["buildspec"] = params["buildspecOverride"]
        return source

    def _logs_location(self) -> dict[str, Any]:
        console = f"https://console.aws.amazon.com/cloudwatch/home?region={self.region}#logEvent:"
        if not self.past_provisioning:
            return {"deepLink": console + "group=null;stream=null"}
        return {
            "groupName": self.group,
            "streamName": self.uuid,
            "deepLink": f"{console}group={self.group};stream={self.uuid}",
            "cloudWatchLogsArn": (
                f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{self.group}:log-stream:{self.uuid}"
            ),
            "cloudWatchLogs": {"status": "ENABLED"},
            "s3Logs": {"status": "DISABLED", "encryptionDisabled": False},
        }


@dataclass(frozen=True)
class BatchScenario:
    """How one batch plays out: its build groups (identifier -> how that build plays out).

    Without a scripted one, the identifiers come from the buildspec's `batch: build-list` (as the
    real service reads them), or one group "build1".
    """

    builds: Mapping[str, Scenario] = field(default_factory=lambda: {"build1": Scenario()})


def codebuild_client(url: str) -> Any:
    """A boto3 CodeBuild client for the double at `url`, throwaway credentials: it reaches nothing else."""
    return boto3.client(
        "codebuild",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def batch_identifiers(buildspec: str | None) -> list[str]:
    import yaml

    try:
        spec = yaml.safe_load(buildspec or "") or {}
    except yaml.YAMLError:
        return ["build1"]
    batch = spec.get("batch") if isinstance(spec, dict) else None
    entries = batch.get("build-list") if isinstance(batch, dict) else None
    names = [str(e["identifier"]) for e in entries or [] if isinstance(e, dict) and e.get("identifier")]
    return names or ["build1"]


_BATCH_TO_BUILD = {"buildTimeoutInMinutesOverride": "timeoutInMinutesOverride"}
_BATCH_ONLY = {"buildBatchConfigOverride", "reportBuildBatchStatusOverride", "idempotencyToken"}


class _Batch:
    """One batch: SUBMITTED -> DOWNLOAD_BATCHSPEC -> IN_PROGRESS (its builds advance) -> final."""

    def __init__(
        self,
        *,
        project: str,
        number: int,
        params: Mapping[str, Any],
        scenario: BatchScenario,
        region: str,
        make_build: Callable[[Scenario, Mapping[str, Any]], _Build],
    ) -> None:
        self.uuid = str(uuid.uuid4())
        self.id = f"{project}:{self.uuid}"
        self.arn = f"arn:aws:codebuild:{region}:{ACCOUNT}:build-batch/{self.id}"
        self.project = project
        self.number = number
        self.params = dict(params)
        self.scenario = scenario
        self.make_build = make_build
        self.start_time = time.time()
        self.now = self.start_time
        self.end_time: float | None = None
        self.phase_index = 0
        self.phases: list[dict[str, Any]] = [{"phaseType": "SUBMITTED", "startTime": self.now}]
        self.status = "IN_PROGRESS"
        self.builds: dict[str, _Build] = {}
        self.requested: dict[str, float] = {}

    @property
    def complete(self) -> bool:
        return self.status != "IN_PROGRESS"

    def tick(self) -> None:
        if self.complete:
            return
        self.now += 5.0
        phase = BATCH_PHASES[self.phase_index]
        if phase != "IN_PROGRESS":
            self._enter(self.phase_index + 1)
            if BATCH_PHASES[self.phase_index] == "IN_PROGRESS":
                build_params = {
                    _BATCH_TO_BUILD.get(key, key): value
                    for key, value in self.params.items()
                    if key not in _BATCH_ONLY
                }
                for identifier, scenario in self.scenario.builds.items():
                    build = self.make_build(scenario, build_params)
                    build.batch_arn = self.arn
                    self.builds[identifier] = build
                    self.requested[identifier] = self.now
            return
        for build in self.builds.values():
            build.tick()
        if all(build.complete for build in self.builds.values()):
            ok = all(build.status == "SUCCEEDED" for build in self.builds.values())
            self._finish("SUCCEEDED" if ok else "FAILED")

    def stop(self) -> None:
        if self.complete:
            return
        for build in self.builds.values():
            build.stop()
        self._finish("STOPPED")

    def _enter(self, index: int) -> None:
        current = self.phases[-1]
        current.update(
            phaseStatus="SUCCEEDED",
            endTime=self.now,
            durationInSeconds=round(self.now - current["startTime"]),
        )
        self.phase_index = index
        self.phases.append({"phaseType": BATCH_PHASES[index], "startTime": self.now})

    def _finish(self, status: str) -> None:
        current = self.phases[-1]
        current.update(
            phaseStatus="SUCCEEDED" if status == "SUCCEEDED" else "FAILED",
            endTime=self.now,
            durationInSeconds=round(self.now - current["startTime"]),
        )
        self.phases.append(
            {"phaseType": "SUCCEEDED" if status == "SUCCEEDED" else status, "startTime": self.now}
        )
        if status not in ("SUCCEEDED", "FAILED", "STOPPED"):
            self.phases[-1]["phaseType"] = "FAILED"
        self.status = status
        self.end_time = self.now

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": self.id,
            "arn": self.arn,
            "startTime": self.start_time,
            "currentPhase": self.phases[-1]["phaseType"],
            "buildBatchStatus": self.status,
            "projectName": self.project,
            "phases": [dict(phase) for phase in self.phases],
            "source": {"type": self.params.get("sourceTypeOverride", "GITHUB")},
            "buildBatchNumber": self.number,
            "complete": self.complete,
            "initiator": "bridge-tests",
            "buildGroups": [
                {
                    "identifier": identifier,
                    "dependsOn": [],
                    "ignoreFailure": False,
                    "currentBuildSummary": {
                        "arn": f"arn:aws:codebuild:{build.region}:{ACCOUNT}:build/{build.id}",
                        "requestedOn": self.requested[identifier],
                        "buildStatus": build.status,
                    },
                }
                for identifier, build in self.builds.items()
            ],
        }
        if "sourceLocationOverride" in self.params:
            record["source"]["location"] = self.params["sourceLocationOverride"]
        if "sourceVersion" in self.params:
            record["sourceVersion"] = self.params["sourceVersion"]
        if self.end_time is not None:
            record["endTime"] = self.end_time
        return record


def _resolve(source_version: str | None) -> str:
    if source_version and len(source_version) == 40 and all(c in "0123456789abcdef" for c in source_version):
        return source_version
    return hashlib.sha1((source_version or "HEAD").encode(), usedforsecurity=False).hexdigest()


def _service_side_errors(value: Any, shape: botocore.model.Shape, path: str) -> list[str]:
    """What the real service refuses but botocore's client-side validation lets through."""
    errors: list[str] = []
    if isinstance(shape, botocore.model.StructureShape) and isinstance(value, dict):
        for name, member in value.items():
            if name in shape.members:
                errors += _service_side_errors(member, shape.members[name], f"{path}.{name}")
    elif isinstance(shape, botocore.model.ListShape) and isinstance(value, list):
        limit = shape.metadata.get("max")
        if limit is not None and len(value) > limit:
            errors.append(f"{path}: at most {limit} items, got {len(value)}")
        for index, item in enumerate(value):
            errors += _service_side_errors(item, shape.member, f"{path}[{index}]")
    elif isinstance(shape, botocore.model.StringShape) and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: '{value}' is not one of {', '.join(shape.enum)}")
        limit = shape.metadata.get("max")
        if limit is not None and len(value) > limit:
            errors.append(f"{path}: at most {limit} characters")
    return errors


def _shape(operation: str, direction: str) -> botocore.model.StructureShape:
    model = _SERVICE_MODEL.operation_model(operation)
    shape = model.input_shape if direction == "input" else model.output_shape
    assert shape is not None, f"{operation} has no {direction} shape"
    return shape


def validate(operation: str, params: Mapping[str, Any]) -> None:
    """Refuse a request the way CodeBuild would: InvalidInputException naming the parameter."""
    shape = _shape(operation, "input")
    report = ParamValidator().validate(params, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    problems += _service_side_errors(dict(params), shape, operation)
    if problems:
        raise ServiceError("InvalidInputException", "; ".join(problems))


def _check_output(operation: str, body: Mapping[str, Any]) -> None:
    """The double's own responses must match the model, or the tests relying on it prove nothing."""
    report = ParamValidator().validate(body, _shape(operation, "output"))
    if report.has_errors():
        raise AssertionError(
            f"CodeBuild double produced an invalid {operation} response: {report.generate_report()}"
        )


def _to_cbor(value: Any, shape: botocore.model.Shape | None) -> Any:
    """Timestamps travel as CBOR tag 1 (epoch seconds) in RPC v2 CBOR."""
    if shape is None:
        return value
    if shape.type_name == "timestamp":
        return cbor2.CBORTag(1, float(value))
    if isinstance(shape, botocore.model.StructureShape) and isinstance(value, dict):
        return {key: _to_cbor(item, shape.members.get(key)) for key, item in value.items()}
    if isinstance(shape, botocore.model.ListShape) and isinstance(value, list):
        return [_to_cbor(item, shape.member) for item in value]
    return value


class CodeBuildDouble:
    def __init__(
        self,
        *,
        logs: CloudWatchLogsClient | None = None,
        region: str = "eu-west-1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logs = logs
        self.region = region
        self._clock = clock
        self._lock = threading.RLock()
        self._recorded = threading.Condition(self._lock)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # ---- scripting -------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.requests: list[Recorded] = []
            self._builds: dict[str, _Build] = {}
            self._numbers: dict[str, int] = {}
            self._by_project: dict[str, Scenario] = {}
            self._next: deque[Scenario] = deque()
            self._faults: list[Fault] = []
            self._missing: set[str] = set()
            self._tokens: dict[str, tuple[dict[str, Any], str, float]] = {}
            self._batches: dict[str, _Batch] = {}
            self._next_batch: deque[BatchScenario] = deque()
            self._forgotten: set[str] = set()
            self.not_found: dict[str, int] = {}  # build id → BatchGetBuilds answers that listed it not found
            self._allowed: frozenset[str] | None = None
            self._elapsed = 0.0  # seconds advance() added to the clock
            self._holds: list[Hold] = []
            self.idempotency_window = IDEMPOTENCY_WINDOW  # 0: every token is already forgotten

    def script_project(self, project: str, scenario: Scenario) -> None:
        """Every later build of `project` (unless a script_next scenario is queued) plays `scenario`."""
        with self._lock:
            self._by_project[project] = scenario

    def script_next_batch(self, scenario: BatchScenario) -> None:
        """The next StartBuildBatch plays `scenario` (queued in order)."""
        with self._lock:
            self._next_batch.append(scenario)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The current batch record, without advancing it."""
        with self._lock:
            return self._batches[batch_id].record()

    def script_next(self, scenario: Scenario) -> None:
        """The next StartBuild, whatever its project, plays `scenario` (queued in order)."""
        with self._lock:
            self._next.append(scenario)

    def fail(
        self, operation: str | None, code: str, *, count: int = 1, status: int = 400, message: str = ""
    ) -> None:
        """The next `count` calls of `operation` (any operation if None) fail with `code`."""
        with self._lock:
            self._faults.append(Fault(operation, code, count, status, message or f"{code} (scripted)"))

    def heal(self, operation: str) -> None:
        """Drop the faults still scripted for `operation`: the outage a test made is over."""
        with self._lock:
            self._faults = [fault for fault in self._faults if fault.operation != operation]

    def lose_answers(
        self, operation: str, code: str = "InternalFailure", *, count: int = 1, status: int = 500
    ) -> None:
        """The next `count` calls of `operation` take effect, then answer `code`: the caller cannot
        tell that, say, its StartBuild did start a build."""
        with self._lock:
            self._faults.append(
                Fault(operation, code, count, status, f"{code} (scripted, after the call took effect)", True)
            )

    def restore_project(self, project: str) -> None:
        """Undo mark_missing: the project exists (again)."""
        with self._lock:
            self._missing.discard(project)

    def forget(self, build_id: str) -> None:
        """CodeBuild no longer knows the build (deleted, expired): BatchGetBuilds lists it under
        buildsNotFound, ListBuildsForProject leaves it out, StopBuild answers ResourceNotFoundException."""
        with self._lock:
            self._forgotten.add(build_id)

    def allow_only(self, actions: Sequence[str] | None) -> None:
        """IAM as a policy would apply it: an operation not in `actions` answers AccessDeniedException.
        `actions` are IAM action names (`codebuild:StartBuild`); None allows everything again."""
        with self._lock:
            self._allowed = None if actions is None else frozenset(actions)

    def advance(self, seconds: float) -> None:
        """Move the double's clock on: idempotency tokens older than IDEMPOTENCY_WINDOW are forgotten."""
        with self._lock:
            self._elapsed += seconds

    def _now(self) -> float:
        return self._clock() + self._elapsed

    def throttle(self, count: int, operation: str | None = None) -> None:
        self.fail(operation, "ThrottlingException", count=count, message="Rate exceeded")

    def mark_missing(self, project: str) -> None:
        """StartBuild on `project` answers ResourceNotFoundException, as for a deleted project."""
        with self._lock:
            self._missing.add(project)

    def hold(self, operation: str, *, timeout: float = 120.0) -> Hold:
        """The next `operation` request waits inside the double until the returned Hold is released."""
        hold = Hold(operation, timeout)
        with self._lock:
            self._holds.append(hold)
        return hold

    def wait_for(
        self,
        operation: str,
        count: int = 1,
        *,
        timeout: float = 120.0,
        where: Callable[[Recorded], bool] = lambda recorded: True,
    ) -> list[Recorded]:
        """Block until `count` answered `operation` requests matching `where` are recorded; return them.

        Tests synchronise with a process under test on this (a request it made), never on a sleep;
        `timeout` is only an upper bound for a process that never gets there.
        """
        with self._recorded:
            done = self._recorded.wait_for(
                lambda: len([r for r in self.requests if r.operation == operation and where(r)]) >= count,
                timeout=timeout,
            )
            matching = [r for r in self.requests if r.operation == operation and where(r)]
        if not done:
            raise AssertionError(
                f"{len(matching)} of {count} {operation} requests reached the double in {timeout} s"
            )
        return matching

    def calls(self, operation: str) -> list[Recorded]:
        with self._lock:
            return [request for request in self.requests if request.operation == operation]

    def build_ids(self) -> list[str]:
        """Every build started so far (batch builds too), oldest first."""
        with self._lock:
            return list(self._builds)

    def build(self, build_id: str) -> dict[str, Any]:
        """The current record, without advancing the build."""
        with self._lock:
            return self._builds[build_id].record()

    # ---- server ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> CodeBuildDouble:
        self._server = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=QuietRequestHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="codebuild-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        response = self._control(request) if request.path.startswith("/_double/") else self._api(request)
        return response(environ, start_response)

    # ---- control endpoint ------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path)
        data: dict[str, Any] = {}
        if request.method == "POST":
            data = request.get_json(force=True, silent=True) or {}
        try:
            if route == ("GET", "/_double/requests"):
                with self._lock:
                    payload: Any = [recorded.to_json() for recorded in self.requests]
                return Response(json.dumps(payload, default=str), content_type="application/json")
            if route == ("POST", "/_double/scenario"):
                scenario = Scenario.from_json(data)
                if data.get("project"):
                    self.script_project(str(data["project"]), scenario)
                else:
                    self.script_next(scenario)
            elif route == ("POST", "/_double/fault"):
                self.fail(
                    data.get("operation"),
                    str(data["code"]),
                    count=int(data.get("count", 1)),
                    status=int(data.get("status", 400)),
                )
            elif route == ("POST", "/_double/lost-answer"):
                self.lose_answers(
                    str(data["operation"]),
                    str(data.get("code", "InternalFailure")),
                    count=int(data.get("count", 1)),
                    status=int(data.get("status", 500)),
                )
            elif route == ("POST", "/_double/forget"):
                self.forget(str(data["build_id"]))
            elif route == ("POST", "/_double/iam"):
                actions = data.get("allow")
                self.allow_only(None if actions is None else [str(action) for action in actions])
            elif route == ("POST", "/_double/advance"):
                self.advance(float(data["seconds"]))
            elif route == ("POST", "/_double/missing-project"):
                self.mark_missing(str(data["project"]))
            elif route == ("POST", "/_double/reset"):
                self.reset()
            elif request.method == "GET" and request.path.startswith("/_double/builds/"):
                build_id = request.path.removeprefix("/_double/builds/")
                return Response(json.dumps(self.build(build_id)), content_type="application/json")
            else:
                return Response("unknown control route", status=404)
        except (KeyError, TypeError, ValueError) as exc:
            return Response(f"bad control request: {exc}", status=400)
        return Response(status=204)

    # ---- CodeBuild API ---------------------------------------------------------------------

    def _api(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(status=405)
        if request.path.startswith(CBOR_PATH_PREFIX):
            protocol, operation = "cbor", request.path.removeprefix(CBOR_PATH_PREFIX)
        elif request.path == "/" and request.headers.get("X-Amz-Target", "").startswith(f"{TARGET_PREFIX}."):
            protocol, operation = "json", request.headers["X-Amz-Target"].removeprefix(f"{TARGET_PREFIX}.")
        else:
            return Response("not a CodeBuild request", status=404)
        with self._lock:
            hold = next((h for h in self._holds if h.what == operation), None)
            if hold is not None:
                self._holds.remove(hold)
        if hold is not None:
            hold.block()
        params: dict[str, Any] = {}
        try:
            params = self._decode(protocol, request)
            self._authenticate(operation, request)
            with self._lock:
                self._authorize(operation, params)
                self._inject_fault(operation)
                validate(operation, params)
                body = getattr(self, f"_op_{operation}")(params)
                self._inject_fault(operation, after=True)
            _check_output(operation, body)
            response = self._encode(protocol, operation, body, 200)
            error: ServiceError | None = None
        except ServiceError as exc:
            error = exc
            response = self._encode(protocol, None, {"__type": exc.code, "message": exc.message}, exc.status)
        attempt = request.headers.get("amz-sdk-request", "")
        with self._recorded:
            self.requests.append(
                Recorded(
                    operation=operation,
                    params=params,
                    protocol=protocol,
                    status=response.status_code,
                    error_code=error.code if error else None,
                    attempt=int(attempt.split("attempt=")[1].split(";")[0])
                    if "attempt=" in attempt
                    else None,
                    user_agent=request.headers.get("User-Agent", ""),
                )
            )
            self._recorded.notify_all()
        return response

    def _decode(self, protocol: str, request: Request) -> dict[str, Any]:
        raw = request.get_data()
        if protocol == "cbor":
            if request.headers.get("smithy-protocol") != "rpc-v2-cbor":
                raise ServiceError("SerializationException", "missing header smithy-protocol: rpc-v2-cbor")
            try:
                decoded = cbor2.loads(raw) if raw else {}
            except (cbor2.CBORDecodeError, ValueError) as exc:
                raise ServiceError("SerializationException", f"body is not CBOR: {exc}") from exc
        else:
            if request.mimetype != "application/x-amz-json-1.1":
                raise ServiceError(
                    "SerializationException", "Content-Type must be application/x-amz-json-1.1"
                )
            try:
                decoded = json.loads(raw or b"{}")
            except ValueError as exc:
                raise ServiceError("SerializationException", f"body is not JSON: {exc}") from exc
        if not isinstance(decoded, dict):
            raise ServiceError("SerializationException", "body must be an object")
        return decoded

    def _authenticate(self, operation: str, request: Request) -> None:
        if operation not in OPERATIONS:
            raise ServiceError("UnknownOperationException", f"the double does not implement {operation}")
        authorization = request.headers.get("Authorization", "")
        if (
            not authorization.startswith("AWS4-HMAC-SHA256 ")
            or "/codebuild/aws4_request" not in authorization
        ):
            raise ServiceError(
                "MissingAuthenticationTokenException", "request is not SigV4-signed for codebuild", 403
            )

    def _encode(self, protocol: str, operation: str | None, body: dict[str, Any], status: int) -> Response:
        headers = {"x-amzn-RequestId": str(uuid.uuid4())}
        if protocol == "cbor":
            if operation is None:
                body = {**body, "__type": f"com.amazonaws.codebuild#{body['__type']}"}
            else:
                body = _to_cbor(body, _shape(operation, "output"))
            headers["smithy-protocol"] = "rpc-v2-cbor"
            return Response(
                cbor2.dumps(body), status=status, headers=headers, content_type="application/cbor"
            )
        return Response(
            json.dumps(body), status=status, headers=headers, content_type="application/x-amz-json-1.1"
        )

    def _authorize(self, operation: str, params: Mapping[str, Any]) -> None:
        if self._allowed is None or f"codebuild:{operation}" in self._allowed:
            return
        raise ServiceError(
            "AccessDeniedException",
            f"User: arn:aws:sts::{ACCOUNT}:assumed-role/bridge/task is not authorized to perform:"
            f" codebuild:{operation} because no identity-based policy allows the"
            f" codebuild:{operation} action",
        )

    def _inject_fault(self, operation: str, *, after: bool = False) -> None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.after == after and fault.operation in (None, operation):
                fault.remaining -= 1
                raise ServiceError(fault.code, fault.message, fault.status)

    def _op_StartBuild(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        project = params["projectName"]
        if project in self._missing:
            raise ServiceError(
                "ResourceNotFoundException",
                f"Project cannot be found: arn:aws:codebuild:{self.region}:{ACCOUNT}:project/{project}",
            )
        token = params.get("idempotencyToken")
        request = {key: value for key, value in params.items() if key != "idempotencyToken"}
        now = self._now()
        if token is not None and token in self._tokens:
            earlier, build_id, issued = self._tokens[token]
            if now - issued < self.idempotency_window:
                if earlier != request:
                    raise ServiceError(
                        "IdempotentParameterMismatchException",
                        "The idempotency token was used with different parameters",
                    )
                return {"build": self._builds[build_id].record()}
        scenario = self._next.popleft() if self._next else self._by_project.get(project, Scenario())
        self._numbers[project] = self._numbers.get(project, 0) + 1
        build = _Build(
            project=project,
            number=self._numbers[project],
            params=params,
            scenario=scenario,
            region=self.region,
            logs=self._logs,
        )
        self._builds[build.id] = build
        if token is not None:
            self._tokens[token] = (request, build.id, now)
        return {"build": build.record()}

    def _op_BatchGetBuilds(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        builds, not_found = [], []
        for build_id in dict.fromkeys(params["ids"]):  # a repeated id is answered (and advanced) once
            build = self._builds.get(build_id)
            if build is None or build_id in self._forgotten:
                not_found.append(build_id)
                self.not_found[build_id] = self.not_found.get(build_id, 0) + 1
                continue
            build.tick()
            builds.append(build.record())
        return {"builds": builds, "buildsNotFound": not_found} if not_found else {"builds": builds}

    def _op_StartBuildBatch(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        project = params["projectName"]
        if project in self._missing:
            raise ServiceError("ResourceNotFoundException", f"Project cannot be found: {project}")
        token = params.get("idempotencyToken")
        request = {key: value for key, value in params.items() if key != "idempotencyToken"}
        now = self._now()
        if token is not None and f"batch:{token}" in self._tokens:
            earlier, batch_id, issued = self._tokens[f"batch:{token}"]
            if now - issued < self.idempotency_window:
                if earlier != request:
                    raise ServiceError(
                        "IdempotentParameterMismatchException",
                        "The idempotency token was used with different parameters",
                    )
                return {"buildBatch": self._batches[batch_id].record()}
        if self._next_batch:
            scenario = self._next_batch.popleft()
        else:
            names = batch_identifiers(params.get("buildspecOverride"))
            scenario = BatchScenario({name: self._by_project.get(project, Scenario()) for name in names})

        def make_build(build_scenario: Scenario, build_params: Mapping[str, Any]) -> _Build:
            self._numbers[project] = self._numbers.get(project, 0) + 1
            build = _Build(
                project=project,
                number=self._numbers[project],
                params=build_params,
                scenario=build_scenario,
                region=self.region,
                logs=self._logs,
            )
            self._builds[build.id] = build
            return build

        number = sum(1 for batch in self._batches.values() if batch.project == project) + 1
        batch = _Batch(
            project=project,
            number=number,
            params=params,
            scenario=scenario,
            region=self.region,
            make_build=make_build,
        )
        self._batches[batch.id] = batch
        if token is not None:
            self._tokens[f"batch:{token}"] = (request, batch.id, now)
        return {"buildBatch": batch.record()}

    def _op_BatchGetBuildBatches(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        batches, not_found = [], []
        for batch_id in dict.fromkeys(params["ids"]):
            batch = self._batches.get(batch_id)
            if batch is None:
                not_found.append(batch_id)
                continue
            batch.tick()
            batches.append(batch.record())
        body: dict[str, Any] = {"buildBatches": batches}
        if not_found:
            body["buildBatchesNotFound"] = not_found
        return body

    def _op_StopBuildBatch(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        batch = self._batches.get(params["id"])
        if batch is None:
            raise ServiceError("ResourceNotFoundException", f"Build batch {params['id']} does not exist")
        batch.stop()
        return {"buildBatch": batch.record()}

    def _op_ListBuildsForProject(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """Newest first by default, as CodeBuild lists them; the token is the offset of the next page."""
        project = params["projectName"]
        if project in self._missing:
            raise ServiceError(
                "ResourceNotFoundException", f"The provided project name {project} does not exist"
            )
        ids = [
            build.id
            for build in self._builds.values()
            if build.project == project and build.id not in self._forgotten
        ]
        if params.get("sortOrder", "DESCENDING") == "DESCENDING":
            ids.reverse()
        offset = int(params.get("nextToken") or 0)
        page = ids[offset : offset + LIST_PAGE_SIZE]
        body: dict[str, Any] = {"ids": page} if page else {}  # the model allows no empty list
        if offset + LIST_PAGE_SIZE < len(ids):
            body["nextToken"] = str(offset + LIST_PAGE_SIZE)
        return body

    def _op_StopBuild(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        build = self._builds.get(params["id"])
        if build is None or params["id"] in self._forgotten:
            raise ServiceError("ResourceNotFoundException", f"Build {params['id']} does not exist")
        build.stop()
        return {"build": build.record()}
