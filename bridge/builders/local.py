"""The `local` builder: builds the repository's Dockerfile on the bridge's own host.

It exists so a newcomer can run `bridge serve` and watch builds and statuses with no AWS account.
The price is stated in docs/local-builder.md: the repository's Dockerfile runs on this machine,
so it is off unless `[builders.local] enabled = true`.

Each build is one thread that runs, in order, `git init` + `git fetch --depth 1 origin SHA` +
`git checkout FETCH_HEAD` (the exact commit, never a branch that may have moved), the build tool
(buildah, podman or docker, whichever is installed) and, when an image repository is set, a push.
Every child process runs in its own process group, so `stop` and timeouts end the whole tree.

Records are CodeBuild-shaped (see model.BuildRecord) so status.py and the reporters work
unchanged, and each one is written to the work directory as JSON after every change: a restarted
bridge reads them back and can finish the statuses of builds it had started.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal
from urllib.parse import urlsplit

from bridge.builders import LOCAL_CAPABILITIES
from bridge.config import LocalBuilderSettings
from bridge.errors import BuilderError, ConfigError
from bridge.model import BuildRecord, BuildRequest
from bridge.secret import Secret

log = logging.getLogger("bridge.builders.local")

NAME: Final = "local"
ID_PREFIX: Final = f"{NAME}:"
TOOLS: Final = ("buildah", "podman", "docker")
CAPABILITIES: Final = LOCAL_CAPABILITIES
DEFAULT_TIMEOUT_MINUTES: Final = 60
STOP_GRACE_SECONDS: Final = 10.0
_READ_CHUNK: Final = 1 << 20
_FINAL: Final = frozenset({"SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT"})
_IMAGE_COMPONENT: Final = re.compile(r"[^a-z0-9._-]+")

ToolName = Literal["buildah", "podman", "docker"]
# (username, token) for the clone, or None to clone without credentials.
CloneCredentials = Callable[[BuildRequest], "tuple[str, Secret] | None"]


def find_tool(preference: str, which: Callable[[str], str | None] = shutil.which) -> tuple[ToolName, str]:
    """The build tool to use: the named one, or for "auto" the first of buildah, podman, docker found."""
    candidates = TOOLS if preference == "auto" else (preference,)
    for candidate in candidates:
        if candidate not in TOOLS:
            break
        path = which(candidate)
        if path:
            return candidate, path  # type: ignore[return-value]  # checked against TOOLS above
    wanted = "buildah, podman or docker" if preference == "auto" else preference
    raise ConfigError(
        f"the local builder needs {wanted} on PATH, and none was found",
        key="builders.local.tool",
        hint="install one (Debian/Ubuntu: apt-get install buildah), or set tool to one that is installed",
    )


@dataclass
class _Run:
    """What one running build needs besides its record: its stop flag and current process group."""

    request: BuildRequest
    stop_requested: bool = False
    timed_out: bool = False
    process: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None


@dataclass
class _Job:
    """One build while its steps run: where it works, where it logs, and when it must end."""

    build_id: str
    run: _Run
    source: Path
    log_file: BinaryIO
    deadline: float

    def say(self, line: str) -> None:
        self.log_file.write(f"[bridge] {line}\n".encode())


class _InterruptedError(Exception):
    """The running step was ended on purpose (stop or timeout); the record says which."""


class _StepFailedError(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class LocalBuilder:
    name = NAME
    capabilities = CAPABILITIES

    def __init__(
        self,
        work_dir: Path,
        *,
        tool: str = "auto",
        max_concurrent_builds: int = 2,
        isolation: str | None = None,
        storage_driver: str | None = None,
        storage_root: Path | None = None,
        tls_verify: bool = True,
        push_destination: str = "docker://{image}",
        allowed_schemes: Sequence[str] = ("https",),
        clone_credentials: CloneCredentials | None = None,
        which: Callable[[str], str | None] = shutil.which,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tool, self._tool_path = find_tool(tool, which)
        self._work_dir = Path(work_dir)
        self._records_dir = self._work_dir / "builds"
        self._logs_dir = self._work_dir / "logs"
        self._records_dir.mkdir(parents=True, exist_ok=True)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        self._isolation = isolation
        self._storage_driver = storage_driver
        self._storage_root = storage_root
        self._tls_verify = tls_verify
        self._push_destination = push_destination
        self._allowed_schemes = tuple(allowed_schemes)
        self._clone_credentials = clone_credentials
        self._clock = clock
        self._slots = threading.BoundedSemaphore(max_concurrent_builds)
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._runs: dict[str, _Run] = {}
        self._last_number = 0
        self._load()

    @classmethod
    def from_settings(cls, settings: LocalBuilderSettings, **options: Any) -> LocalBuilder:
        """The builder a config asks for; refuses unless the config switched it on explicitly."""
        if not settings.enabled:
            raise ConfigError(
                "the local builder runs repository code on this host and is not enabled",
                key="builders.local.enabled",
                hint="set enabled = true under [builders.local] only if you trust every committer of the "
                "repositories routed to it (see docs/local-builder.md)",
            )
        return cls(
            settings.work_dir,
            tool=settings.tool,
            max_concurrent_builds=settings.max_concurrent_builds,
            isolation=settings.isolation,
            storage_driver=settings.storage_driver,
            storage_root=settings.storage_root,
            tls_verify=settings.tls_verify,
            **options,
        )

    # -- the Builder interface -------------------------------------------------------------------

    def start(self, request: BuildRequest) -> BuildRecord:
        kwargs = request.start_build_kwargs
        url = self._source_url(request)
        now = self._clock()
        build_uuid = str(uuid.uuid4())
        build_id = ID_PREFIX + build_uuid
        token = kwargs.get("idempotencyToken")
        with self._lock:
            for known in self._records.values():  # like StartBuild: a retried start gets the same build
                if token and known.get("idempotencyToken") == token and now - known["startTime"] < 300:
                    return _deep_copy(known)
            self._last_number += 1
            record: dict[str, Any] = {
                "id": build_id,
                "buildNumber": self._last_number,
                "projectName": request.project_name,
                "initiator": "bridge-local",
                "idempotencyToken": token,
                "sourceVersion": _source_version(kwargs),
                "source": {"type": "GIT", "location": url},
                "buildStatus": "IN_PROGRESS",
                "currentPhase": "QUEUED",
                "buildComplete": False,
                "startTime": now,
                "timeoutInMinutes": int(kwargs.get("timeoutInMinutesOverride") or DEFAULT_TIMEOUT_MINUTES),
                "phases": [
                    _phase("SUBMITTED", now, now, "SUCCEEDED"),
                    _phase("QUEUED", now),
                ],
                "logs": {"localPath": str(self._logs_dir / f"{build_uuid}.log")},
                "environment": {"type": "LOCAL", "image": self.tool},
                "exportedEnvironmentVariables": [],
            }
            self._records[build_id] = record
            run = _Run(request)
            self._runs[build_id] = run
            self._save(record)
            submitted = _deep_copy(record)  # as StartBuild answers: the build as queued
        Path(record["logs"]["localPath"]).touch()
        thread = threading.Thread(target=self._run, args=(build_id, run), name=f"local-{build_uuid[:8]}")
        run.thread = thread
        thread.daemon = True
        thread.start()
        return submitted

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        with self._lock:
            return {b: _deep_copy(self._records[b]) for b in dict.fromkeys(build_ids) if b in self._records}

    def find_started(self, request: BuildRequest, delivery_id: str, *, since: float) -> BuildRecord | None:
        return None  # a local build is started in this process: no start of it can be lost

    def stop(self, build_id: str) -> BuildRecord:
        """Ask the build to stop and wait a little for it to end; returns the record as it is then."""
        with self._lock:
            if build_id not in self._records:
                raise BuilderError(
                    f"local build {build_id} is unknown", hint="list the work directory's builds/ folder"
                )
            run = self._runs.get(build_id)
            if run is None or self._records[build_id]["buildComplete"]:
                return _deep_copy(self._records[build_id])
            run.stop_requested = True
            process = run.process
        if process is not None:
            _kill_group(process)
        if run.thread is not None:
            run.thread.join(STOP_GRACE_SECONDS)
        return self._copy(build_id)

    def log_tail(self, build: BuildRecord) -> LocalLogTail:
        return LocalLogTail()

    # -- for tests and the Python API ----------------------------------------------------------

    def wait(self, build_id: str, timeout: float | None = None) -> BuildRecord:
        """Block until the build ends (or `timeout` passes); returns its record."""
        with self._lock:
            run = self._runs.get(build_id)
        if run is not None and run.thread is not None:
            run.thread.join(timeout)
        return self._copy(build_id)

    def close(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        """Stop every running build (on shutdown: a build must not outlive the bridge that tracks it)."""
        with self._lock:
            running = [b for b, r in self._runs.items() if not self._records[b]["buildComplete"]]
        for build_id in running:
            self.stop(build_id)

    # -- one build -------------------------------------------------------------------------------

    def _run(self, build_id: str, run: _Run) -> None:
        record = self._records[build_id]
        log_path = Path(record["logs"]["localPath"])
        try:
            with open(log_path, "ab", buffering=0) as log_file:
                job = _Job(build_id, run, self._work_dir, log_file, deadline=0.0)
                try:
                    with self._slot(run):
                        job.deadline = time.monotonic() + 60 * float(record["timeoutInMinutes"])
                        with tempfile.TemporaryDirectory(prefix="src-", dir=self._work_dir) as source:
                            job.source = Path(source)
                            self._steps(job)
                    job.say("Build succeeded")  # the log is complete before the record says so
                    self._finish(build_id, "SUCCEEDED")
                except _InterruptedError:
                    status = "TIMED_OUT" if run.timed_out else "STOPPED"
                    message = (
                        f"the build ran longer than {record['timeoutInMinutes']} minutes"
                        if run.timed_out
                        else "the build was stopped"
                    )
                    job.say(f"Build {status.lower().replace('_', ' ')}: {message}")
                    self._finish(build_id, status, message=message, code=status)
                except _StepFailedError as exc:
                    job.say(f"Build failed: {exc}")
                    self._finish(build_id, "FAILED", message=str(exc), code=exc.code)
        except Exception as exc:  # a bug or an unwritable work dir: the record must still end
            log.exception("local build crashed", extra={"build_id": build_id})
            self._finish(
                build_id, "FAULT", message=f"the local builder failed: {type(exc).__name__}", code="FAULT"
            )
        finally:
            with self._lock:
                self._runs.pop(build_id, None)

    @contextlib.contextmanager
    def _slot(self, run: _Run) -> Iterator[None]:
        """Wait (in QUEUED) for one of max_concurrent_builds slots; a stop while waiting ends the wait."""
        while not self._slots.acquire(timeout=0.2):
            if run.stop_requested:
                raise _InterruptedError
        try:
            if run.stop_requested:
                raise _InterruptedError
            yield
        finally:
            self._slots.release()

    def _steps(self, job: _Job) -> None:
        build_id, request, source = job.build_id, job.run.request, job.source
        record = self._records[build_id]
        url, sha = record["source"]["location"], record["sourceVersion"]

        def step(argv: list[str], *, env: Mapping[str, str] | None = None) -> None:
            self._execute(job, argv, env=env)

        self._enter(build_id, "DOWNLOAD_SOURCE")
        job.say(f"Fetching {_redact_url(url)} at {sha}")
        git_env = self._git_env(request)
        step(["git", "init", "--quiet"], env=git_env)
        step(["git", "remote", "add", "origin", url], env=git_env)
        step(["git", "fetch", "--depth", "1", "--no-tags", "origin", sha], env=git_env)
        step(["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "FETCH_HEAD"], env=git_env)
        if not (source / "Dockerfile").is_file():
            raise _StepFailedError(
                "the repository has no Dockerfile at its root: the local builder builds that file",
                "CLIENT_ERROR",
            )

        self._enter(build_id, "BUILD")
        image_uri = request.image_uri
        tag = (
            image_uri
            or f"localhost/bridge/{_image_component(request.project_name)}:{build_id[len(ID_PREFIX) :]}"
        )
        iid_file = source.parent / f"{source.name}.iid"
        step(self._build_argv(request, source, tag, iid_file))
        exported = [{"name": "IMAGE_URI", "value": tag}]
        with contextlib.suppress(OSError):
            exported.append({"name": "IMAGE_ID", "value": iid_file.read_text().strip()})
            iid_file.unlink()

        if image_uri:
            self._enter(build_id, "POST_BUILD")
            destination = self._push_destination.format(image=image_uri)
            job.say(f"Pushing {image_uri} to {destination}")
            digest_file = source.parent / f"{source.name}.digest"
            for argv in self._push_argv(tag, destination, digest_file):
                step(argv)
            digest = self._digest(job, tag, digest_file)
            if digest:
                exported.append({"name": "IMAGE_DIGEST", "value": digest})
                job.say(f"Pushed {image_uri} ({digest})")
        self._update(build_id, exportedEnvironmentVariables=exported)

    def _execute(
        self, job: _Job, argv: list[str], *, env: Mapping[str, str] | None = None, capture: bool = False
    ) -> str:
        """Run one command in its own process group, output to the log (or captured); honour stop/timeout."""
        run = job.run
        with self._lock:
            if run.stop_requested:
                raise _InterruptedError
            job.say("Running: " + " ".join(_redact_url(arg) for arg in argv))
            process = subprocess.Popen(  # noqa: S603 - argv from fixed programs; no shell
                argv,
                cwd=job.source,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else job.log_file,
                stderr=job.log_file,
                start_new_session=True,
            )
            run.process = process
        try:
            output, _ = process.communicate(timeout=max(0.0, job.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.timed_out = True
            _kill_group(process)
            process.wait()
            raise _InterruptedError from None
        finally:
            with self._lock:
                run.process = None
        if run.stop_requested:
            raise _InterruptedError
        if process.returncode != 0:
            raise _StepFailedError(
                f"{argv[0]} {argv[1]} exited with status {process.returncode}", "COMMAND_EXECUTION_ERROR"
            )
        return (output or b"").decode("utf-8", "replace")

    # -- commands ---------------------------------------------------------------------------------

    def _global_args(self) -> list[str]:
        if self.tool == "docker":
            return []
        args: list[str] = []
        if self._storage_driver:
            args += ["--storage-driver", self._storage_driver]
        if self._storage_root is not None:
            args += ["--root", str(self._storage_root / "root"), "--runroot", str(self._storage_root / "run")]
        return args

    def _build_argv(self, request: BuildRequest, source: Path, tag: str, iid_file: Path) -> list[str]:
        verb = "bud" if self.tool == "buildah" else "build"
        argv = [
            self._tool_path,
            *self._global_args(),
            verb,
            "--file",
            str(source / "Dockerfile"),
            "--tag",
            tag,
        ]
        argv += ["--iidfile", str(iid_file)]
        if self._isolation and self.tool != "docker":
            argv += ["--isolation", self._isolation]
        for variable in request.start_build_kwargs.get("environmentVariablesOverride") or ():
            if variable.get("type", "PLAINTEXT") == "PLAINTEXT":
                argv += ["--build-arg", f"{variable['name']}={variable['value']}"]
        return [*argv, str(source)]

    def _push_argv(self, tag: str, destination: str, digest_file: Path) -> list[list[str]]:
        if self.tool == "docker":
            image = destination.removeprefix("docker://")
            if image == destination:
                raise _StepFailedError("docker can only push to a registry (docker://...)", "CLIENT_ERROR")
            steps = [] if image == tag else [[self._tool_path, "tag", tag, image]]
            return [*steps, [self._tool_path, "push", image]]
        argv = [self._tool_path, *self._global_args(), "push", "--digestfile", str(digest_file)]
        if not self._tls_verify:
            argv.append("--tls-verify=false")
        return [[*argv, tag, destination]]

    def _digest(self, job: _Job, tag: str, digest_file: Path) -> str | None:
        if self.tool != "docker":
            try:
                return digest_file.read_text().strip() or None
            except OSError:
                return None
        argv = [self._tool_path, "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", tag]
        output = self._execute(job, argv, capture=True)
        digests = [line.partition("@")[2] for line in output.splitlines() if "@" in line]
        return digests[0] if digests else None

    def _git_env(self, request: BuildRequest) -> dict[str, str]:
        """git runs with no user or system config, no prompt, only the allowed protocols, and the token
        (if any) as an HTTP header through GIT_CONFIG_* variables: never in argv, where `ps` shows it."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._work_dir),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": ":".join(self._allowed_schemes),
        }
        credentials = self._clone_credentials(request) if self._clone_credentials is not None else None
        if credentials is not None:
            username, token = credentials
            basic = base64.b64encode(f"{username}:{token.reveal()}".encode()).decode()
            env |= {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            }
        return env

    def _source_url(self, request: BuildRequest) -> str:
        kwargs = request.start_build_kwargs
        url = str(kwargs.get("sourceLocationOverride") or _env_value(kwargs, "BRIDGE_CLONE_URL") or "")
        scheme = urlsplit(url).scheme
        if not url or scheme not in self._allowed_schemes:
            raise BuilderError(
                f"the local builder clones only {', '.join(self._allowed_schemes)} URLs, not "
                f"{scheme or 'an empty'} URL {_redact_url(url)!r}",
                hint="build from the repository's https clone URL",
            )
        if not _source_version(kwargs):
            raise BuilderError("the local builder needs the commit to build", hint="the event carries no SHA")
        return url

    # -- records ----------------------------------------------------------------------------------

    def _enter(self, build_id: str, phase: str) -> None:
        now = self._clock()
        with self._lock:
            record = self._records[build_id]
            _close_phase(record, now, "SUCCEEDED")
            record["phases"].append(_phase(phase, now))
            record["currentPhase"] = phase
            self._save(record)

    def _finish(self, build_id: str, status: str, *, message: str = "", code: str = "") -> None:
        now = self._clock()
        with self._lock:
            record = self._records[build_id]
            contexts = [{"statusCode": code, "message": message}] if message else []
            _close_phase(record, now, "SUCCEEDED" if status == "SUCCEEDED" else status, contexts)
            record["phases"].append(_phase("COMPLETED", now))
            record.update(buildStatus=status, currentPhase="COMPLETED", buildComplete=True, endTime=now)
            self._save(record)

    def _update(self, build_id: str, **fields: Any) -> None:
        with self._lock:
            self._records[build_id].update(fields)
            self._save(self._records[build_id])

    def _copy(self, build_id: str) -> BuildRecord:
        with self._lock:
            return _deep_copy(self._records[build_id])

    def _save(self, record: Mapping[str, Any]) -> None:
        """Atomic: a crash mid-write leaves the previous version, never half a record."""
        path = self._records_dir / f"{str(record['id'])[len(ID_PREFIX) :]}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, sort_keys=True))
        os.replace(temporary, path)

    def _load(self) -> None:
        """Read records back after a restart. A build that was running is over: its thread died with
        the process that ran it, so its record ends as FAULT and its status can be finished."""
        for path in sorted(self._records_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                build_id = str(record["id"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable local build record skipped", extra={"path": str(path)})
                continue
            self._records[build_id] = record
            number = record.get("buildNumber")
            if isinstance(number, int):
                self._last_number = max(self._last_number, number)
            if not record.get("buildComplete"):
                now = self._clock()
                _close_phase(
                    record,
                    now,
                    "FAULT",
                    [
                        {
                            "statusCode": "BRIDGE_RESTARTED",
                            "message": "the bridge stopped while this build ran",
                        }
                    ],
                )
                record["phases"].append(_phase("COMPLETED", now))
                record.update(buildStatus="FAULT", currentPhase="COMPLETED", buildComplete=True, endTime=now)
                self._save(record)


class LocalLogTail:
    """Reads a local build log incrementally by byte offset.

    Only whole lines are returned while the build runs; a partial last line is kept back until its
    newline arrives (or the build ends), so no line is ever split, dropped or returned twice.
    """

    def __init__(self) -> None:
        self._path: str | None = None
        self._offset = 0
        self._partial = b""

    def poll(self, build: BuildRecord) -> list[str]:
        logs = build.get("logs") or {}
        path = logs.get("localPath") if isinstance(logs, Mapping) else None
        if not path:
            return []
        if path != self._path:
            self._path, self._offset, self._partial = str(path), 0, b""
        try:
            with open(path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        if build.get("buildComplete") and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", "replace").removesuffix("\r") for line in lines]

    def drain(self, build: BuildRecord) -> Iterator[str]:
        yield from self.poll({**build, "buildComplete": True})


# -- helpers ----------------------------------------------------------------------------------------


def _phase(name: str, start: float, end: float | None = None, status: str | None = None) -> dict[str, Any]:
    phase: dict[str, Any] = {"phaseType": name, "startTime": start}
    if end is not None:
        phase.update(endTime=end, durationInSeconds=max(0, round(end - start)), phaseStatus=status)
    return phase


def _close_phase(
    record: dict[str, Any], now: float, status: str, contexts: list[dict[str, str]] | None = None
) -> None:
    phase = record["phases"][-1]
    if "endTime" in phase:
        return
    phase.update(endTime=now, durationInSeconds=max(0, round(now - phase["startTime"])), phaseStatus=status)
    if contexts:
        phase["contexts"] = contexts


def _source_version(kwargs: Mapping[str, Any]) -> str:
    return str(kwargs.get("sourceVersion") or _env_value(kwargs, "BRIDGE_COMMIT_SHA") or "")


def _env_value(kwargs: Mapping[str, Any], name: str) -> str | None:
    for variable in kwargs.get("environmentVariablesOverride") or ():
        if variable.get("name") == name and variable.get("type", "PLAINTEXT") == "PLAINTEXT":
            return str(variable.get("value") or "")
    return None


def _redact_url(url: str) -> str:
    """A URL as it may be logged: any user:password@ part dropped."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.hostname or "").geturl()


def _image_component(name: str) -> str:
    return _IMAGE_COMPONENT.sub("-", name.lower()).strip("-._") or "build"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _deep_copy(record: Mapping[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(record))
    return copied
