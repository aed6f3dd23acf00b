"""Front door 1: the GitHub Action.

Reads the runner's environment (INPUT_* with hyphens kept, GITHUB_*), builds exactly this commit on
the shared CodeBuild project, streams the log grouped by phase, keeps a check run up to date, and
writes outputs and a step summary. The exit code is 0 only for SUCCEEDED (or a started build with
`wait: false`). Everything the engine raises arrives here as a BridgeError and leaves as one
`::error::` line with its fix-it hint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from bridge import events
from bridge.builders.base import Builder
from bridge.core.cache import parse_cache_mode
from bridge.core.platforms import parse_platforms
from bridge.core.signing import parse_sign_key
from bridge.core.trust import Grant, Policy, TrustFacts, decide
from bridge.errors import BridgeError, InputError, ReporterError
from bridge.model import (
    BuildOptions,
    BuildRecord,
    BuildRequest,
    BuildStatus,
    ForkPolicy,
    RegistryAuth,
    SourceEvent,
)
from bridge.plan import parse_bool, parse_env_vars, plan_build, registry_env
from bridge.poll import Backoff
from bridge.secret import Secret
from bridge.status import build_status, exported_value, is_batch, is_complete
from bridge.workflow import WorkflowCommands, append_summary, write_outputs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from bridge.reporters.github import CheckRunReporter

NO_CREDENTIALS_HINT = (
    "add `aws-actions/configure-aws-credentials` (with role-to-assume and aws-region) before this step, "
    "and give the job `permissions: id-token: write`"
)
LOG_TAIL_LINES = 50
# A check run shows progress, not a live feed: at most one non-final update this often, so a fast
# build does not spend GitHub's write budget (and PyGithub's one-second write spacing) per phase.
CHECK_UPDATE_MIN_SECONDS = 10.0
_PHASE_LINE = re.compile(r"Entering phase ([A-Z_]+)")
# GitHub context passed to the build as plain values, so a buildspec can tag or label with them.
CONTEXT_VARIABLES = (
    "GITHUB_REPOSITORY",
    "GITHUB_SHA",
    "GITHUB_REF",
    "GITHUB_REF_NAME",
    "GITHUB_EVENT_NAME",
    "GITHUB_RUN_ID",
    "GITHUB_RUN_ATTEMPT",
    "GITHUB_RUN_NUMBER",
    "GITHUB_WORKFLOW",
    "GITHUB_JOB",
    "GITHUB_ACTOR",
    "GITHUB_SERVER_URL",
)


# StopBuild is retried this many rounds (each one botocore's own retries) while it answers retryable
# errors (throttling, 5xx): a cancelled or failed Action must not leave a build running.
STOP_ROUNDS = 3


class Cancelled(BaseException):
    """The workflow run was cancelled. Raised by the Action's own checkpoints, never from a signal
    handler; `outcome` says what became of the build, for the final error line."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.outcome = "no build was started"


class Cancellation:
    """The runner's SIGTERM/SIGINT (the workflow run was cancelled), recorded and waited on.

    Nothing is raised from the handler: an exception raised at an arbitrary bytecode can leave a
    lock held (urllib3's pool, a buffered stdout) and hang the next call, abandon StopBuild halfway,
    or skip the check run's last update. The handler only notes the signal; the signal's byte on the
    wakeup pipe (written by the interpreter's C handler) lets a watcher thread set a threading.Event,
    which the loop waits on instead of sleeping and checks at every step. (Setting the Event in the
    handler itself could deadlock: the handler runs on the main thread, which may be holding the
    Event's lock inside wait().)
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: list[str] = []  # signal names, in order; appended by the handler

    @property
    def requested(self) -> bool:
        return bool(self.received) or self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True (at once) when the run is cancelled."""
        return self.requested or self.event.wait(seconds)

    def check(self) -> None:
        if self.requested:
            raise Cancelled(self.received[0] if self.received else "cancelled")

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator[Cancellation]:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)

        def watch() -> None:
            while os.read(read_fd, 64):  # b"" once the write end is closed
                self.event.set()

        watcher = threading.Thread(target=watch, name="cancellation", daemon=True)
        watcher.start()
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.set_wakeup_fd(previous_fd)
            os.close(write_fd)
            watcher.join(timeout=5)
            os.close(read_fd)


@dataclass(frozen=True)
class WorkspaceSource:
    """`source: workspace`: the checked-out folder (or a sub-folder) is zipped and uploaded to S3."""

    context_path: str
    bucket: str
    prefix: str


@dataclass(frozen=True)
class ActionInputs:
    project_name: str
    options: BuildOptions
    wait: bool
    show_logs: bool
    check_name: str  # "" turns the check run off
    github_token: Secret | None
    aws_region: str | None
    poll_interval_seconds: float
    workspace: WorkspaceSource | None = None  # None: CodeBuild fetches the repository itself
    allow_fork_code: bool = False  # build a fork's code on a privileged event (nothing trusted passed)


def _input(env: Mapping[str, str], name: str, default: str = "") -> str:
    """The runner passes `with: project-name` as INPUT_PROJECT-NAME (hyphens kept)."""
    upper = name.upper()
    for key in (f"INPUT_{upper}", f"INPUT_{upper.replace('-', '_')}"):
        if key in env:
            return env[key].strip()
    return default


def _optional(env: Mapping[str, str], name: str) -> str | None:
    return _input(env, name) or None


def _int_input(env: Mapping[str, str], name: str, *, low: int, high: int) -> int | None:
    raw = _input(env, name)
    if not raw:
        return None
    if not re.fullmatch(r"\d+", raw) or not low <= int(raw) <= high:
        raise InputError(name, f"expected a whole number from {low} to {high}", hint=f"e.g. {name}: {low}")
    return int(raw)


def read_inputs(env: Mapping[str, str]) -> ActionInputs:
    project = _input(env, "project-name")
    if not project:
        raise InputError("project-name", "is required", hint="set `with: project-name: <CodeBuild project>`")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-_]{1,254}", project):
        raise InputError(
            "project-name", "is not a CodeBuild project name", hint="letters, digits, - and _, 2-255 chars"
        )
    privileged = _input(env, "privileged-mode")
    poll = _input(env, "poll-interval-seconds", "10")
    try:
        poll_seconds = float(poll)
    except ValueError:
        poll_seconds = -1.0
    if not 0.1 <= poll_seconds <= 300:
        raise InputError(
            "poll-interval-seconds", "expected a number of seconds from 0.1 to 300", hint="the default is 10"
        )
    check_name = _input(env, "check-name", "codebuild/{project}").replace("{project}", project)
    token = _input(env, "github-token")
    workspace = _workspace_source(env)
    options = BuildOptions(
        project_name=project,
        source_location=_optional(env, "source-location"),
        source_type=_optional(env, "source-type"),
        source_version=_optional(env, "source-version"),
        buildspec=_optional(env, "buildspec"),
        image_repository=_optional(env, "image-repository"),
        image_tag=_optional(env, "image-tag"),
        env_vars=parse_env_vars(_input(env, "env-vars"), input_name="env-vars"),
        compute_type=_optional(env, "compute-type"),
        build_image=_optional(env, "build-image"),
        privileged_mode=parse_bool(privileged, input_name="privileged-mode") if privileged else None,
        timeout_minutes=_int_input(env, "timeout-minutes", low=5, high=2160),
        batch=parse_bool(_input(env, "batch") or "false", input_name="batch"),
        registry=_registry_auth(env),
        cache=parse_cache_mode(_input(env, "cache") or "registry"),
        platforms=parse_platforms(_input(env, "platforms")),
        sign_key=parse_sign_key(_input(env, "sign")),
    )
    return ActionInputs(
        project_name=project,
        options=options,
        wait=parse_bool(_input(env, "wait", "true"), input_name="wait"),
        show_logs=parse_bool(_input(env, "show-logs", "true"), input_name="show-logs"),
        check_name=check_name,
        github_token=Secret(token) if token else None,
        aws_region=_optional(env, "aws-region"),
        poll_interval_seconds=poll_seconds,
        workspace=workspace,
        allow_fork_code=parse_bool(_input(env, "allow-fork-code") or "false", input_name="allow-fork-code"),
    )


_CONTEXT_INPUTS = ("context-path", "context-bucket", "context-prefix")
_REPOSITORY_INPUTS = ("source-location", "source-type", "source-version")


def _workspace_source(env: Mapping[str, str]) -> WorkspaceSource | None:
    source = (_input(env, "source") or "repository").lower()
    if source not in ("repository", "workspace"):
        raise InputError("source", f"unknown source '{source}'", hint="repository (the default) or workspace")
    if source == "repository":
        for name in _CONTEXT_INPUTS:
            if _input(env, name):
                raise InputError(name, "is only used with source: workspace", hint="add `source: workspace`")
        return None
    for name in _REPOSITORY_INPUTS:
        if _input(env, name):
            raise InputError(
                name, "does not apply to source: workspace (the build's source is the uploaded zip)"
            )
    bucket = _input(env, "context-bucket")
    if not bucket:
        raise InputError(
            "context-bucket",
            "is required with source: workspace",
            hint="name an S3 bucket in the project's region that the job's role can write to",
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise InputError(
            "context-bucket", "is not an S3 bucket name", hint="the bucket name only, no s3:// or path"
        )
    return WorkspaceSource(_input(env, "context-path", "."), bucket, _input(env, "context-prefix"))


def _registry_auth(env: Mapping[str, str]) -> RegistryAuth | None:
    """`registry-credentials` (one JSON secret) or `registry-username` + `registry-password`."""
    credentials = _input(env, "registry-credentials")
    username, password = _input(env, "registry-username"), _input(env, "registry-password")
    server = _optional(env, "registry-server")
    if credentials and (username or password):
        raise InputError(
            "registry-credentials",
            "set it, or registry-username + registry-password, not both",
            hint="registry-credentials: secretsmanager:NAME (a JSON secret with username and password)",
        )
    if credentials:
        if not credentials.startswith("secretsmanager:") or "#" in credentials:
            raise InputError(
                "registry-credentials",
                "must name a JSON secret in Secrets Manager, not hold a value",
                hint='secretsmanager:NAME_OR_ARN of a secret {"username": ..., "password": ...}',
            )
        auth = RegistryAuth.from_json_secret(credentials, server=server)
    elif username or password:
        if not (username and password):
            missing = "registry-password" if username else "registry-username"
            raise InputError(
                missing, "is required with the other registry credential", hint="set both or neither"
            )
        auth = RegistryAuth(username, password, server=server)
    elif server:
        raise InputError("registry-server", "needs registry credentials", hint="set registry-credentials too")
    else:
        return None
    registry_env(auth)  # refuse a literal value now, before anything is zipped or started
    return auth


def idempotency_seed(env: Mapping[str, str]) -> str:
    """Run, attempt, job and step: a re-run attempt builds again; a retried call does not."""
    parts = (
        env.get(name, "") for name in ("GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_JOB", "GITHUB_ACTION")
    )
    return "action/" + "/".join(parts)


def load_event(env: Mapping[str, str]) -> SourceEvent:
    path = env.get("GITHUB_EVENT_PATH", "")
    payload: Mapping[str, Any] = {}
    if path:
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(
                "GITHUB_EVENT_PATH", f"cannot read the event file ({type(error).__name__})"
            ) from error
        if isinstance(loaded, dict):
            payload = loaded
    return events.from_actions(env, payload)


class BuildRun:
    """One build from start to final status, with its log stream and check run."""

    def __init__(
        self,
        *,
        inputs: ActionInputs,
        event: SourceEvent,
        request: BuildRequest,
        builder: Builder,
        region: str,
        commands: WorkflowCommands,
        checks: Callable[[], CheckRunReporter | None],
        describe_image_digest: Callable[[str], str | None],
        cancel: Cancellation | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inputs = inputs
        self.event = event
        self.request = request
        self.builder = builder
        self.region = region
        self.commands = commands
        # Made only once the build has started: PyGithub's import must not delay StartBuild.
        self.make_checks = checks
        self.checks: CheckRunReporter | None = None
        self.describe_image_digest = describe_image_digest
        self.cancel = cancel or Cancellation()
        self.sleep = sleep  # only between StopBuild rounds: every other wait is cancel.wait
        self.clock = clock
        self.last_report_at = float("-inf")
        self.check_run_id: int | None = None
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.last_reported: tuple[str, str | None] | None = None
        self.batch_states: dict[str, str] = {}
        self.last: BuildRecord = {}  # the latest record of the build being followed

    def _status(self, build: BuildRecord) -> BuildStatus:
        return build_status(build, region=self.region, log_tail=tuple(self.tail))

    def _report(self, status: BuildStatus, *, force: bool = False) -> None:
        """Update the check on phase changes, at most every CHECK_UPDATE_MIN_SECONDS until the end."""
        key = (status.build_status, status.current_phase)
        if self.checks is None or self.check_run_id is None:
            return
        recent = self.clock() - self.last_report_at < CHECK_UPDATE_MIN_SECONDS
        if not force and (key == self.last_reported or recent):
            return
        self.last_reported = key
        self.last_report_at = self.clock()
        try:
            self.checks.update(self.check_run_id, status)
        except ReporterError as error:
            self.commands.warning(f"could not update the check run: {error}", title="check run")

    def _start_check(self, status: BuildStatus) -> None:
        self.checks = self.make_checks()
        if self.checks is None:
            return
        try:
            # The step is running from the user's point of view: the check starts in_progress.
            running = replace(status, state="in_progress") if status.state == "queued" else status
            self.check_run_id = self.checks.start(self.event, running, status.console_url)
        except ReporterError as error:
            self.commands.warning(f"no check run: {error}", title="check run")
            self.checks = None

    def _emit(self, lines: list[str]) -> None:
        if not lines:
            return
        self.tail.extend(lines)
        if not self.inputs.show_logs:
            return
        batch: list[str] = []
        for line in lines:
            phase = _PHASE_LINE.search(line)
            if phase:
                self.commands.untrusted_lines(batch)
                batch = []
                self.commands.group(phase.group(1))
            batch.append(line)
        self.commands.untrusted_lines(batch)

    def _emit_batch(self, batch: BuildRecord) -> None:
        """A batch has no single log: one line per build whose status changed."""
        for group in batch.get("buildGroups") or []:
            summary = group.get("currentBuildSummary") or {}
            identifier, state = str(group.get("identifier")), str(summary.get("buildStatus") or "")
            if state and self.batch_states.get(identifier) != state:
                self.batch_states[identifier] = state
                self.commands.info(f"batch build {identifier}: {state}")

    def run(self) -> tuple[BuildRecord, BuildStatus]:
        self.cancel.check()  # cancelled before anything started: start nothing
        build = self.builder.start(self.request)
        kind = "batch" if is_batch(build) else "build"
        self.commands.info(f"Started CodeBuild {kind} {build['id']} of {self.event.sha}")
        if not self.inputs.wait:
            status = self._status(build)
            self._start_check(status)
            return build, status
        # From here on, every way out but the build's own end stops the build and ends the check.
        self.last = build
        try:
            return self._follow(build)
        except BaseException as exc:
            self._abandon(exc)
            raise

    def _follow(self, build: BuildRecord) -> tuple[BuildRecord, BuildStatus]:
        self.cancel.check()
        self._start_check(self._status(build))
        self.cancel.check()
        build_id = str(build["id"])
        tail = self.builder.log_tail(build)
        backoff = Backoff(self.inputs.poll_interval_seconds)
        while True:
            self.cancel.check()
            try:
                build = self.builder.get_many([build_id])[build_id]
            except BridgeError as error:
                if not getattr(error, "retryable", False):
                    raise
                self.cancel.wait(backoff.failure())
                continue
            self.last = build
            self.cancel.check()
            self._emit(tail.poll(build))
            if is_batch(build):
                self._emit_batch(build)
            self._report(self._status(build))
            if is_complete(build):
                break
            self.cancel.wait(backoff.success())
        self._emit(list(tail.drain(build)))
        self.commands.end_group()
        status = self._status(build)
        image_uri = status.image_uri or self.request.image_uri
        if status.build_status == "SUCCEEDED" and image_uri and not status.image_digest:
            status = replace(status, image_uri=image_uri, image_digest=self.describe_image_digest(image_uri))
        self._report(status, force=True)
        return build, status

    def _abandon(self, exc: BaseException) -> None:
        """The Action is leaving before the build ended: stop it, and complete the check run.

        Runs for a cancellation, an error and a bug alike. Nothing here raises (the original
        exception is what the job must report) and a second signal changes nothing: it is recorded,
        not raised.
        """
        self.commands.end_group()
        build, build_id = self.last, str(self.last["id"])
        cancelled = isinstance(exc, Cancelled)
        if not is_complete(build):
            if cancelled:
                self.commands.warning(f"workflow cancelled: stopping build {build_id}", title="cancelled")
            else:
                self.commands.warning(
                    f"the Action failed while following build {build_id}: stopping the build",
                    title="stopping the build",
                )
            stopped = self._stop(build_id)
            if stopped is not None:
                build = stopped
            outcome = (
                f"build {build_id} was stopped"
                if stopped is not None
                else f"build {build_id} could not be stopped and may still be running"
            )
        else:
            outcome = f"build {build_id} had already ended"
        if isinstance(exc, Cancelled):
            exc.outcome = outcome
        status = self._status(build)
        if cancelled:
            status = replace(
                status, state="completed", conclusion="cancelled", title="Cancelled with the workflow run"
            )
        elif not is_complete(self.last):
            reason = exc.message if isinstance(exc, BridgeError) else type(exc).__name__
            status = replace(
                status,
                state="completed",
                conclusion="failure",
                title=f"The Action failed, so the build was stopped: {reason}"[:255],
            )
        try:
            self._report(status, force=True)
        except Exception as error:  # the original exception is the one to report
            self.commands.warning(
                f"could not update the check run: {type(error).__name__}", title="check run"
            )

    def _stop(self, build_id: str) -> BuildRecord | None:
        """StopBuild, retried through throttling; None when it could not be stopped (warned)."""
        backoff = Backoff(1.0)
        for attempt in range(1, STOP_ROUNDS + 1):
            try:
                return self.builder.stop(build_id)
            except Exception as error:  # whatever happens: say so, end the check
                if getattr(error, "retryable", False) and attempt < STOP_ROUNDS:
                    self.sleep(backoff.failure())
                    continue
                reason = error.message if isinstance(error, BridgeError) else type(error).__name__
                console = build_status(self.last, region=self.region).console_url
                self.commands.warning(
                    f"could not stop build {build_id}: {reason}. Stop it in the CodeBuild console: {console}",
                    title="build still running",
                )
                return None
        return None


def outputs_for(build: BuildRecord, status: BuildStatus, request: BuildRequest) -> dict[str, str]:
    """For a batch, build-id and batch-id are both the batch id: the one id every later step
    (console, StopBuildBatch, BatchGetBuildBatches) takes; the builds are listed in the summary."""
    batch = is_batch(build)
    number = build.get("buildBatchNumber" if batch else "buildNumber", "")
    return {
        "build-id": str(build["id"]),
        "batch-id": str(build["id"]) if batch else "",
        "build-number": str(number),
        "build-status": status.build_status,
        "build-url": status.console_url,
        "image-uri": status.image_uri or request.image_uri or "",
        "image-digest": status.image_digest or "",
        "attestations": exported_value(build, "BRIDGE_ATTESTED") or "",
    }


def _make_check_reporter(inputs: ActionInputs, env: Mapping[str, str]) -> CheckRunReporter | None:
    if not inputs.check_name or inputs.github_token is None:
        return None
    # PyGithub is imported only when a check is reported: it is the slowest import at start-up.
    from bridge.reporters.github import CheckRunReporter, github_client

    api_url = env.get("GITHUB_API_URL", "https://api.github.com")
    client = github_client(api_url, inputs.github_token)
    return CheckRunReporter(client, env["GITHUB_REPOSITORY"], name=inputs.check_name)


def run(env: Mapping[str, str], out: TextIO) -> int:
    commands = WorkflowCommands(out)
    try:
        with Cancellation().installed() as cancel:
            return _run(env, commands, cancel)
    except Cancelled as cancelled:
        commands.end_group()
        commands.error(f"the workflow run was cancelled; {cancelled.outcome}", title="cancelled")
        return 130
    except BridgeError as error:
        commands.end_group()
        message = f"{error.message}. Fix: {error.hint}" if error.hint else error.message
        commands.error(message, title=type(error).__name__)
        return error.exit_code


class _OnFirstUse:
    """A boto3 client created on its first attribute access."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)


def _run(env: Mapping[str, str], commands: WorkflowCommands, cancel: Cancellation) -> int:
    inputs = read_inputs(env)
    if inputs.github_token is not None:
        commands.mask(inputs.github_token)
    event = load_event(env)
    grant = _grant(event, inputs, inputs.options, commands)  # before anything is uploaded or started
    from bridge import aws
    from bridge.builders.codebuild import CodeBuildBuilder

    session = aws.session(region=inputs.aws_region)
    aws.check_credentials(session, hint=NO_CREDENTIALS_HINT)
    region = aws.region_of(session)
    context = {name: env[name] for name in CONTEXT_VARIABLES if env.get(name)}
    options = inputs.options
    if inputs.workspace is not None:
        cancel.check()
        options = _upload_workspace(
            env, inputs, inputs.workspace, aws.client("s3", session=session), commands
        )
    request = plan_build(
        event, options, grant=grant, idempotency_seed=idempotency_seed(env), context_env=context
    )
    # The logs and ECR clients are first used after StartBuild: made then, they keep ~60 ms each
    # of service-model loading off the start-up path (bench/startup.py).
    logs: Any = _OnFirstUse(lambda: aws.client("logs", session=session))
    builder = CodeBuildBuilder(aws.client("codebuild", session=session), logs)
    ecr: Any = _OnFirstUse(lambda: aws.client("ecr", session=session)) if request.image_uri else None

    def digest(image_uri: str) -> str | None:
        return aws.ecr_image_digest(ecr, image_uri) if ecr is not None else None

    build_run = BuildRun(
        inputs=inputs,
        event=event,
        request=request,
        builder=builder,
        region=region,
        commands=commands,
        checks=lambda: _make_check_reporter(inputs, env),
        describe_image_digest=digest,
        cancel=cancel,
    )
    build, status = build_run.run()
    outputs = outputs_for(build, status, request)
    write_outputs(env.get("GITHUB_OUTPUT"), outputs)
    append_summary(env.get("GITHUB_STEP_SUMMARY"), _summary(inputs, status, outputs))
    if not inputs.wait:
        commands.notice(f"build {outputs['build-id']} started; not waiting (wait: false)")
        return 0
    if status.build_status == "SUCCEEDED":
        return 0
    commands.error(
        f"{status.title}. Open the build log: {status.console_url}",
        title=f"CodeBuild {status.build_status}",
    )
    return 1


# Events whose workflows run with the repository's secrets and write token, although what they carry
# (a pull request's head, a triggering run's head and artifacts) can be a fork's code.
PRIVILEGED_EVENTS = frozenset({"pull_request_target", "workflow_run"})


def _grant(
    event: SourceEvent, inputs: ActionInputs, options: BuildOptions, commands: WorkflowCommands
) -> Grant:
    """What this build gets, decided by bridge.core.trust as for the server's routes.

    The Action's "route" is its inputs. On `pull_request` a fork's workflow has no secrets to give
    (GitHub withholds them), so forks = allow; a fork's code still never pushes. On a privileged event
    the workflow holds this repository's secrets: a fork's code is refused (forks = never) unless
    `allow-fork-code` says to build it with nothing trusted (forks = without-secrets).
    """
    privileged = event.event_name in PRIVILEGED_EVENTS
    forks: ForkPolicy = ("without-secrets" if inputs.allow_fork_code else "never") if privileged else "allow"
    decision = decide(event, Policy.of_options("action", options, forks=forks), TrustFacts.of(event))
    if not isinstance(decision, Grant):
        what = f"pull request #{event.pr_number}" if event.pr_number is not None else "the triggering run"
        source = event.head_repository or "a deleted fork"
        raise InputError(
            "allow-fork-code",
            f"{event.event_name} runs with this repository's secrets, and the head of {what} is fork code "
            f"({source}): not building it",
            hint="build fork pull requests on `pull_request` (GitHub gives their workflows no secrets), or "
            "set `allow-fork-code: true` to build the fork's code with no secret or parameter-store "
            "variables, no registry credentials and no push",
        )
    if privileged and decision.source == "fork":
        commands.warning(
            f"allow-fork-code: building fork code from {event.head_repository or 'a deleted fork'} on "
            f"{event.event_name} without this repository's secret variables, registry credentials or push",
            title="fork code",
        )
    for reason in decision.dropped:
        commands.warning(f"not passed to this build: {reason}")
    return decision


def _upload_workspace(
    env: Mapping[str, str],
    inputs: ActionInputs,
    workspace: WorkspaceSource,
    s3: S3Client,
    commands: WorkflowCommands,
) -> BuildOptions:
    """Zip the context, upload it unless that exact content is there already, point the build at it."""
    from bridge.context import resolve_context, upload_context, zip_context

    root = resolve_context(env.get("GITHUB_WORKSPACE") or os.getcwd(), workspace.context_path)
    dockerfile = next(
        (v.value for v in inputs.options.env_vars if v.name == "DOCKERFILE" and v.type == "PLAINTEXT"),
        "Dockerfile",
    )
    with tempfile.TemporaryDirectory(prefix="bridge-context-") as scratch:
        archive = zip_context(root, Path(scratch) / "context.zip", dockerfile=dockerfile)
        commands.info(f"Build context {workspace.context_path}: {archive.describe()}")
        location = upload_context(s3, archive, bucket=workspace.bucket, prefix=workspace.prefix)
    if location.uploaded:
        commands.info(f"Uploaded the build context to {location.uri}")
    else:
        commands.info(f"The same build context is already at {location.uri}: not uploading it again")
    return replace(
        inputs.options,
        source_type="S3",
        source_location=location.source_location,
        source_version=location.version_id,
    )


def _summary(inputs: ActionInputs, status: BuildStatus, outputs: Mapping[str, str]) -> str:
    rows = "\n".join(f"| `{name}` | {value or '—'} |" for name, value in outputs.items())
    return (
        f"## {inputs.project_name}: {status.title}\n\n"
        f"| output | value |\n|---|---|\n{rows}\n\n{status.summary}\n"
    )


def main() -> int:
    return run(os.environ, sys.stdout)
