"""The AWS CodeBuild builder: StartBuild, batched BatchGetBuilds, StopBuild and a CloudWatch log tail.

Clients are passed in (see bridge.aws.client) so the retry policy lives in one place and tests can
hand in real clients pointed at local servers. Throttling is absorbed by botocore's retry mode;
whatever still fails is turned into a BuilderError whose `retryable` flag is decided by the
error *code* (never by message text), so the worker knows whether to try again later.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from bridge.aws import DEFAULT_CREDENTIALS_HINT
from bridge.errors import BuilderError, CredentialsError
from bridge.model import BuildRecord, BuildRequest
from bridge.plan import DELIVERY_ID_VARIABLE, start_build_batch_kwargs
from bridge.status import GROUP_BUILDS

if TYPE_CHECKING:
    from mypy_boto3_codebuild import CodeBuildClient
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_logs.type_defs import GetLogEventsResponseTypeDef

BATCH_GET_LIMIT = 100  # BatchGetBuilds accepts at most 100 ids a call
FIND_PAGES = 20  # ListBuildsForProject pages (100 builds each) searched for an earlier attempt
FINISHED_KEPT = 1024  # records of finished batch builds remembered (they never change again)
_FINISHED = frozenset({"SUCCEEDED", "FAILED", "FAULT", "TIMED_OUT", "STOPPED"})

# Error codes worth trying again later. AccountLimitExceededException is CodeBuild's concurrent
# build quota: a slot frees up when another build ends, so the same request succeeds later.
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "AccountLimitExceededException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def project_of(build_id: str) -> str:
    """CodeBuild build ids are `project:uuid`; the project is what users recognise in a hint."""
    return build_id.split(":", 1)[0]


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def builder_error(
    exc: botocore.exceptions.ClientError, *, operation: str, project: str | None
) -> BuilderError:
    """Translate a service error into a BuilderError a front door can explain."""
    error = exc.response.get("Error", {})
    code = error_code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = str(error.get("Message", "")).strip()
    subject = f"CodeBuild {operation}" + (f" for project '{project}'" if project else "")
    message = f"{subject} failed ({code or status})" + (f": {detail}" if detail else "")
    if code in RETRYABLE_CODES or status >= 500:
        hint = (
            "the concurrent build quota is reached; the build can start once others finish"
            if code == "AccountLimitExceededException"
            else "AWS is busy or throttling; try again later"
        )
        return BuilderError(message, retryable=True, hint=hint)
    hints = {
        "ResourceNotFoundException": f"check that the CodeBuild project '{project}' exists in this account "
        "and region",
        "InvalidInputException": f"check the StartBuild parameters for project '{project}' (source version, "
        "overrides, environment variables)",
        "IdempotentParameterMismatchException": "the idempotency token was reused within 5 minutes with "
        "other parameters; derive it from the delivery id, not from the commit",
        "AccessDeniedException": f"allow codebuild:{operation} on project '{project}' in the IAM policy of "
        "the role bridge runs as",
    }
    return BuilderError(message, retryable=False, hint=hints.get(code, ""))


@contextmanager
def aws_call(operation: str, project: str | None) -> Iterator[None]:
    """Every boto3 call goes through here, so no raw botocore exception escapes the builder."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        raise builder_error(exc, operation=operation, project=project) from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise CredentialsError("no AWS credentials found", hint=DEFAULT_CREDENTIALS_HINT) from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise BuilderError(
            f"CodeBuild {operation} could not reach AWS: {type(exc).__name__}",
            retryable=True,
            hint="check the network path to the AWS endpoint",
        ) from exc


def _finished_groups(batch: BuildRecord) -> Iterator[tuple[str, str]]:
    """(identifier, build id) of each build group whose current build has finished."""
    groups = batch.get("buildGroups")
    for group in groups if isinstance(groups, list) else ():
        summary = group.get("currentBuildSummary") if isinstance(group, dict) else None
        if not isinstance(summary, dict) or summary.get("buildStatus") not in _FINISHED:
            continue
        arn = str(summary.get("arn") or "")
        if ":build/" in arn:
            yield str(group.get("identifier") or ""), arn.partition(":build/")[2]


class CodeBuildBuilder:
    name = "codebuild"

    def __init__(
        self,
        codebuild: CodeBuildClient,
        logs: CloudWatchLogsClient,
        *,
        log_page_limit: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._codebuild = codebuild
        self._logs = logs
        self._log_page_limit = log_page_limit
        self._sleep = sleep
        # Batch ids look like build ids (project:uuid): the ones started here are remembered, and
        # callers name the others (the worker knows which routes build batches).
        self._batch_ids: set[str] = set()
        self._finished: OrderedDict[str, BuildRecord] = OrderedDict()

    def start(self, request: BuildRequest) -> BuildRecord:
        """StartBuild, or StartBuildBatch for a batch request (the record is then a batch record)."""
        if request.batch:
            batch_kwargs = start_build_batch_kwargs(request.start_build_kwargs)
            with aws_call("StartBuildBatch", request.project_name):
                batch = self._codebuild.start_build_batch(**batch_kwargs)["buildBatch"]
            self._batch_ids.add(str(batch["id"]))
            return batch
        kwargs: dict[str, Any] = dict(request.start_build_kwargs)
        with aws_call("StartBuild", request.project_name):
            return self._codebuild.start_build(**kwargs)["build"]

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        """Build records, and batch records for the ids named in `batch_ids` or started here as batches.

        Nothing else is asked of BatchGetBuildBatches: the bridge's IAM policy allows the batch
        actions only where a route builds batches, and an id CodeBuild does not know is simply
        absent from the result (BatchGetBuilds lists it under buildsNotFound), for the caller to judge.
        """
        unique = list(dict.fromkeys(build_ids))
        batches = [build_id for build_id in unique if build_id in self._batch_ids or build_id in batch_ids]
        records = self._get_builds([build_id for build_id in unique if build_id not in batches])
        if batches:
            records.update(self.get_batches(batches))
        return records

    def get_batches(self, batch_ids: Sequence[str]) -> dict[str, BuildRecord]:
        unique = list(dict.fromkeys(batch_ids))
        records: dict[str, BuildRecord] = {}
        for offset in range(0, len(unique), BATCH_GET_LIMIT):
            chunk = unique[offset : offset + BATCH_GET_LIMIT]
            with aws_call(
                "BatchGetBuildBatches", ", ".join(sorted({project_of(batch_id) for batch_id in chunk}))
            ):
                response = self._codebuild.batch_get_build_batches(ids=chunk)
            for batch in response.get("buildBatches", []):
                self._batch_ids.add(str(batch["id"]))
                records[str(batch["id"])] = batch
        self._attach_group_builds(list(records.values()))
        return records

    def _attach_group_builds(self, batches: Sequence[BuildRecord]) -> None:
        """Each finished build of a batch, by its group identifier, under GROUP_BUILDS: the batch record
        names its builds but not what they exported (a platform's image digest, the index's), which
        the report shows per platform. A finished build never changes, so it is read once (one
        BatchGetBuilds for all the batches polled together) and remembered."""
        wanted: dict[str, str] = {}  # build id -> identifier
        for batch in batches:
            for identifier, build_id in _finished_groups(batch):
                wanted[build_id] = identifier
        missing = [build_id for build_id in wanted if build_id not in self._finished]
        if missing:
            for build_id, build in self._get_builds(missing).items():
                if build.get("buildComplete"):
                    self._finished[build_id] = build
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        for batch in batches:
            found = {
                identifier: self._finished[build_id]
                for identifier, build_id in _finished_groups(batch)
                if build_id in self._finished
            }
            if found and isinstance(batch, dict):
                batch[GROUP_BUILDS] = found

    def _get_builds(self, build_ids: Sequence[str]) -> dict[str, BuildRecord]:
        unique = list(build_ids)
        records: dict[str, BuildRecord] = {}
        for offset in range(0, len(unique), BATCH_GET_LIMIT):
            chunk = unique[offset : offset + BATCH_GET_LIMIT]
            with aws_call("BatchGetBuilds", ", ".join(sorted({project_of(build_id) for build_id in chunk}))):
                response = self._codebuild.batch_get_builds(ids=chunk)
            for build in response.get("builds", []):
                records[build["id"]] = build
        return records

    def find_started(self, request: BuildRequest, delivery_id: str, *, since: float) -> BuildRecord | None:
        """ListBuildsForProject newest first, read 100 at a time with BatchGetBuilds, until a build
        older than `since` (or the page limit): both allowed by the bridge's IAM policy on the project.

        Batches are not looked up (their listing needs actions the policy does not grant): a batch
        route's retry relies on the idempotency token alone.
        """
        if request.batch:
            return None
        project = request.project_name
        token: str | None = None
        for _ in range(FIND_PAGES):
            kwargs: dict[str, Any] = {"projectName": project, "sortOrder": "DESCENDING"}
            if token:
                kwargs["nextToken"] = token
            with aws_call("ListBuildsForProject", project):
                page = self._codebuild.list_builds_for_project(**kwargs)
            ids = list(page.get("ids", []))
            if not ids:
                return None
            records = self._get_builds(ids)
            older = False
            for build_id in ids:
                record = records.get(build_id)
                if record is None:
                    continue
                if _variable(record, DELIVERY_ID_VARIABLE) == delivery_id:
                    return record
                started = record.get("startTime")
                if isinstance(started, datetime) and started.timestamp() < since:
                    older = True
            token = page.get("nextToken")
            if older or not token:
                return None
        return None

    def stop(self, build_id: str) -> BuildRecord:
        if build_id in self._batch_ids:
            with aws_call("StopBuildBatch", project_of(build_id)):
                return self._codebuild.stop_build_batch(id=build_id)["buildBatch"]
        with aws_call("StopBuild", project_of(build_id)):
            return self._codebuild.stop_build(id=build_id)["build"]

    def log_tail(self, build: BuildRecord) -> CloudWatchLogTail:
        return CloudWatchLogTail(self._logs, page_limit=self._log_page_limit, sleep=self._sleep)

    def close(self) -> None:
        """Nothing to stop: CodeBuild runs the builds, and they go on (and are tracked) without us."""


def _variable(record: BuildRecord, name: str) -> str | None:
    environment = record.get("environment") or {}
    for variable in environment.get("environmentVariables") or []:
        if variable.get("name") == name and variable.get("type", "PLAINTEXT") == "PLAINTEXT":
            return str(variable.get("value"))
    return None


def log_location(build: BuildRecord) -> tuple[str, str] | None:
    """(group, stream) once CodeBuild has created them, i.e. after PROVISIONING; None before."""
    logs = build.get("logs") or {}
    group, stream = logs.get("groupName"), logs.get("streamName")
    return (group, stream) if group and stream else None


class CloudWatchLogTail:
    """Reads one build's CloudWatch log incrementally.

    The forward token is kept between polls: CloudWatch returns the same token when there is
    nothing newer, and asking again with it later returns exactly the events appended since, so
    no line is dropped or repeated however the polls and pages fall.
    """

    def __init__(
        self,
        logs: CloudWatchLogsClient,
        *,
        page_limit: int | None = None,
        max_pages_per_poll: int = 100,
        drain_attempts: int = 2,
        drain_delay: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._logs = logs
        self._page_limit = page_limit
        self._max_pages = max_pages_per_poll
        self._drain_attempts = drain_attempts
        self._drain_delay = drain_delay
        self._sleep = sleep
        self._location: tuple[str, str] | None = None
        self._token: str | None = None

    def poll(self, build: BuildRecord) -> list[str]:
        location = log_location(build)
        if location is None:
            return []
        if location != self._location:
            self._location, self._token = location, None
        group, stream = location
        lines: list[str] = []
        for _ in range(self._max_pages):
            kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            if self._token is not None:
                kwargs["nextToken"] = self._token
            if self._page_limit is not None:
                kwargs["limit"] = self._page_limit
            try:
                page = self._page(kwargs, build.get("projectName"))
            except BuilderError:
                if lines:
                    return lines  # keep what was read (the token matches it); the next poll retries
                raise
            if page is None:
                return lines  # the stream is created a little after PROVISIONING ends
            lines.extend(_text(event.get("message", "")) for event in page.get("events", []))
            token = page.get("nextForwardToken")
            if token is None or token == self._token:
                break
            self._token = token
        return lines

    def _page(self, kwargs: dict[str, Any], project: str | None) -> GetLogEventsResponseTypeDef | None:
        """One GetLogEvents page, or None while the group or stream does not exist yet."""
        with aws_call("GetLogEvents", project):
            try:
                return self._logs.get_log_events(**kwargs)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return None
                raise

    def drain(self, build: BuildRecord) -> Iterator[str]:
        if log_location(build) is None:
            return  # the build ended before it had a log; nothing will ever appear
        yield from self.poll(build)
        quiet = 0
        while quiet < self._drain_attempts:
            self._sleep(self._drain_delay)  # CloudWatch ingestion lags the build by a few seconds
            lines = self.poll(build)
            yield from lines
            quiet = 0 if lines else quiet + 1


def _text(message: str) -> str:
    return message.removesuffix("\n").removesuffix("\r")
