"""The local builder for real: git clones of a repository made here, buildah (`--isolation chroot
--storage-driver vfs`, since this machine has no user namespaces and can pull no base image) on
`FROM scratch` Dockerfiles, a push to an OCI layout directory, stop, restart, and the worker
reporting a local build to the fake GitHub.

buildah must be installed: scripts/test installs it (Debian package) when it runs as root. These
tests fail, not skip, without it: a missing build tool must not look like a green suite.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import events
from bridge.builders.local import ID_PREFIX, LocalBuilder, LocalLogTail, find_tool
from bridge.config import LocalBuilderSettings, parse_config
from bridge.errors import BuilderError, ConfigError
from bridge.model import BuildOptions, BuildRecord, BuildRequest, SourceEvent
from bridge.plan import plan_build
from bridge.secret import Secret
from bridge.status import build_status
from bridge.worker import Worker
from tests.e2e.support import config_text, github_payload, make_services, secret_env
from tests.fakes.github_api import FakeGitHub

DOCKERFILE = "FROM scratch\nCOPY hello.txt /hello.txt\n"
HELLO = "hello from a local build\n"
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def buildah() -> str:
    path = shutil.which("buildah")
    if path is None:
        pytest.fail(
            "buildah is not installed, and the local builder's tests need it: run scripts/test as root "
            "(it installs the Debian package) or `apt-get install -y buildah`"
        )
    return path


@dataclasses.dataclass
class Repo:
    path: Path
    sha: str

    @property
    def url(self) -> str:
        return self.path.as_uri()


def git(*args: str, cwd: Path) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(root: Path, files: dict[str, str]) -> Repo:
    root.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch", "main", cwd=root)
    for name, text in files.items():
        (root / name).write_text(text)
    git("add", ".", cwd=root)
    git("commit", "--quiet", "-m", "build me", cwd=root)
    sha = git("rev-parse", "HEAD", cwd=root)
    # A later commit on the branch: the builder must build the exact SHA, not the branch's tip.
    (root / "hello.txt").write_text("a newer commit\n")
    git("commit", "--quiet", "-am", "newer", cwd=root)
    return Repo(root, sha)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path / "repo", {"Dockerfile": DOCKERFILE, "hello.txt": HELLO})


def gate_wrapper(tmp_path: Path, buildah_path: str) -> tuple[Path, Path]:
    """A buildah that waits for a gate file before running: it holds a build in BUILD on demand."""
    gate = tmp_path / "gate"
    wrapper = tmp_path / "gated-buildah"
    wrapper.write_text(
        f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.05; done\nexec "{buildah_path}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, gate


def make_builder(tmp_path: Path, buildah_path: str, **options: Any) -> LocalBuilder:
    return LocalBuilder(
        tmp_path / "work",
        tool="buildah",
        isolation="chroot",
        storage_driver="vfs",
        storage_root=tmp_path / "storage",
        allowed_schemes=options.pop("allowed_schemes", ("file",)),
        which=options.pop("which", lambda name: buildah_path if name == "buildah" else None),
        **options,
    )


def buildah_cli(tmp_path: Path, buildah_path: str, *args: str) -> str:
    storage = tmp_path / "storage"
    argv = [
        buildah_path,
        "--storage-driver",
        "vfs",
        "--root",
        f"{storage}/root",
        "--runroot",
        f"{storage}/run",
    ]
    return subprocess.run([*argv, *args], check=True, capture_output=True, text=True).stdout


def event_for(repo: Repo) -> SourceEvent:
    return SourceEvent(
        provider="github",
        kind="push",
        event_name="push",
        action=None,
        repository="acme/demo",
        clone_url=repo.url,
        sha=repo.sha,
        ref="refs/heads/main",
        server_url="https://github.com",
        branch="main",
    )


def request_for(repo: Repo, *, image_repository: str | None = None, seed: str = "test") -> BuildRequest:
    options = BuildOptions(project_name="demo", image_repository=image_repository, image_tag="{short_sha}")
    return plan_build(event_for(repo), options, idempotency_seed=seed)


def wait_done(builder: LocalBuilder, build_id: str) -> BuildRecord:
    record = builder.wait(build_id, WAIT_SECONDS)
    assert record["buildComplete"], record
    return record


def wait_for(builder: LocalBuilder, build_id: str, phase: str) -> BuildRecord:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        record = builder.get_many([build_id])[build_id]
        if record["currentPhase"] == phase:
            return record
        if record["buildComplete"]:  # it will not get there: say why, instead of waiting out the deadline
            raise AssertionError(f"{build_id} ended before {phase}: {_story(record)}")
        time.sleep(0.02)
    raise AssertionError(
        f"{build_id} never reached {phase}: {_story(builder.get_many([build_id])[build_id])}"
    )


def _story(record: BuildRecord) -> str:
    """What a failed wait needs to be diagnosed from CI output alone: phases, status, log tail."""
    log_path = Path(record["logs"]["localPath"])
    tail = log_path.read_text()[-2000:] if log_path.exists() else "(no log)"
    return f"status {record['buildStatus']}, phases {phases(record)}, log tail:\n{tail}"


def phases(record: BuildRecord) -> list[tuple[str, str | None]]:
    return [(p["phaseType"], p.get("phaseStatus")) for p in record["phases"]]


def log_text(record: BuildRecord) -> str:
    return Path(record["logs"]["localPath"]).read_text()


def exported(record: BuildRecord) -> dict[str, str]:
    return {v["name"]: v["value"] for v in record["exportedEnvironmentVariables"]}


# -- building --------------------------------------------------------------------------------------------


def test_build_goes_queued_in_progress_succeeded_and_the_image_exists(
    tmp_path: Path, buildah: str, repo: Repo
) -> None:
    wrapper, gate = gate_wrapper(tmp_path, buildah)
    builder = make_builder(tmp_path, buildah, max_concurrent_builds=1, which=lambda name: str(wrapper))

    first = builder.start(request_for(repo, seed="first"))
    second = builder.start(request_for(repo, seed="second"))
    assert first["id"].startswith(ID_PREFIX)
    assert first["id"] != second["id"]
    assert build_status(first, region="local").state == "queued"
    assert second["buildNumber"] == first["buildNumber"] + 1

    running = wait_for(builder, first["id"], "BUILD")  # held by the gate
    waiting = builder.get_many([second["id"]])[second["id"]]
    assert build_status(running, region="local").state == "in_progress"
    assert build_status(waiting, region="local").state == "queued"  # one slot: it waits its turn
    gate.touch()

    for build_id in (first["id"], second["id"]):
        record = wait_done(builder, build_id)
        status = build_status(record, region="local")
        assert (record["buildStatus"], status.state, status.conclusion) == (
            "SUCCEEDED",
            "completed",
            "success",
        )
        assert phases(record) == [
            ("SUBMITTED", "SUCCEEDED"),
            ("QUEUED", "SUCCEEDED"),
            ("DOWNLOAD_SOURCE", "SUCCEEDED"),
            ("BUILD", "SUCCEEDED"),
            ("COMPLETED", None),
        ]
        assert record["endTime"] >= record["startTime"]
        assert all(isinstance(p.get("durationInSeconds", 0), int) for p in record["phases"])
        assert status.title.startswith(f"Build #{record['buildNumber']} succeeded")

    image = exported(record)["IMAGE_URI"]
    assert image.startswith("localhost/bridge/demo:")
    listed = buildah_cli(tmp_path, buildah, "images", "--format", "{{.Name}}:{{.Tag}}").split()
    assert image in listed
    inspected = json.loads(buildah_cli(tmp_path, buildah, "inspect", "--type", "image", image))
    assert "sha256:" + inspected["FromImageID"] == exported(record)["IMAGE_ID"]
    lines = log_text(record)
    assert f"Fetching {repo.url} at {repo.sha}" in lines
    assert "COPY hello.txt /hello.txt" in lines  # buildah's own output is in the log
    assert lines.rstrip().endswith("[bridge] Build succeeded")


def test_push_writes_the_image_and_exports_its_digest(tmp_path: Path, buildah: str, repo: Repo) -> None:
    """`buildah push` to an OCI layout directory: the same step a registry push runs, checked byte for
    byte (no registry can be pulled or run on this machine; see docs/local-builder.md)."""
    layout = tmp_path / "pushed"
    builder = make_builder(tmp_path, buildah, push_destination=f"oci:{layout}:demo")

    record = wait_done(
        builder, builder.start(request_for(repo, image_repository="registry.example.com/demo"))["id"]
    )

    assert record["buildStatus"] == "SUCCEEDED", log_text(record)
    assert ("POST_BUILD", "SUCCEEDED") in phases(record)
    values = exported(record)
    assert values["IMAGE_URI"] == f"registry.example.com/demo:{repo.sha[:7]}"
    index = json.loads((layout / "index.json").read_text())
    (manifest_entry,) = index["manifests"]
    assert values["IMAGE_DIGEST"] == manifest_entry["digest"]
    status = build_status(record, region="local")
    assert (status.image_uri, status.image_digest) == (values["IMAGE_URI"], values["IMAGE_DIGEST"])
    # The pushed layer holds the file of the exact commit built, not the branch's newer tip.
    manifest = json.loads(blob(layout, manifest_entry["digest"]).read_text())
    (layer,) = manifest["layers"]
    with tarfile.open(blob(layout, layer["digest"])) as archive:
        member = archive.extractfile("hello.txt")
        assert member is not None
        assert member.read().decode() == HELLO


def blob(layout: Path, digest: str) -> Path:
    algorithm, _, value = digest.partition(":")
    return layout / "blobs" / algorithm / value


@pytest.mark.parametrize(
    ("files", "failed_phase", "code", "in_log"),
    [
        pytest.param(
            {"Dockerfile": "FROM scratch\nCOPY missing.txt /missing.txt\n", "hello.txt": HELLO},
            "BUILD",
            "COMMAND_EXECUTION_ERROR",
            "missing.txt",
            id="failing-dockerfile",
        ),
        pytest.param(
            {"hello.txt": HELLO}, "DOWNLOAD_SOURCE", "CLIENT_ERROR", "no Dockerfile", id="no-dockerfile"
        ),
    ],
)
def test_a_failing_build_is_failed_in_its_phase(
    tmp_path: Path, buildah: str, files: dict[str, str], failed_phase: str, code: str, in_log: str
) -> None:
    repo = make_repo(tmp_path / "repo", files)
    builder = make_builder(tmp_path, buildah)

    record = wait_done(builder, builder.start(request_for(repo))["id"])

    assert record["buildStatus"] == "FAILED"
    failing = next(p for p in record["phases"] if p.get("phaseStatus") == "FAILED")
    assert failing["phaseType"] == failed_phase
    assert failing["contexts"][0]["statusCode"] == code
    assert in_log in log_text(record)
    status = build_status(record, region="local", log_tail=LocalLogTail().poll(record))
    assert status.conclusion == "failure"
    assert f"failed in {failed_phase}" in status.title
    assert in_log in status.summary  # the end of the log reaches the check run


def test_an_unknown_commit_fails_the_download(tmp_path: Path, buildah: str, repo: Repo) -> None:
    builder = make_builder(tmp_path, buildah)
    request = request_for(dataclasses.replace(repo, sha="0" * 40))

    record = wait_done(builder, builder.start(request)["id"])

    assert record["buildStatus"] == "FAILED"
    assert ("DOWNLOAD_SOURCE", "FAILED") in phases(record)
    assert "git fetch exited with status" in record["phases"][-2]["contexts"][0]["message"]


# -- stopping, restarting ----------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_stop_kills_the_build_process_group(tmp_path: Path, buildah: str, repo: Repo) -> None:
    wrapper, _gate = gate_wrapper(tmp_path, buildah)  # never opened: the build waits until stopped
    builder = make_builder(tmp_path, buildah, which=lambda name: str(wrapper))
    build_id = builder.start(request_for(repo))["id"]
    wait_for(builder, build_id, "BUILD")
    deadline = time.monotonic() + WAIT_SECONDS
    while not (pids := wrapper_pids(wrapper)) and time.monotonic() < deadline:
        time.sleep(0.02)  # the phase is recorded just before the tool is spawned
    assert pids, "the gated build tool should be running"

    record = builder.stop(build_id)

    assert record["buildStatus"] == "STOPPED"
    assert ("BUILD", "STOPPED") in phases(record)
    assert build_status(record, region="local").conclusion == "cancelled"
    assert not [pid for pid in pids if process_alive(pid)]
    assert "[bridge] Build stopped" in log_text(record)


def wrapper_pids(wrapper: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(wrapper).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_stop_while_queued(tmp_path: Path, buildah: str, repo: Repo) -> None:
    wrapper, gate = gate_wrapper(tmp_path, buildah)
    builder = make_builder(tmp_path, buildah, max_concurrent_builds=1, which=lambda name: str(wrapper))
    running = builder.start(request_for(repo, seed="a"))["id"]
    queued = builder.start(request_for(repo, seed="b"))["id"]
    wait_for(builder, running, "BUILD")

    record = builder.stop(queued)

    assert record["buildStatus"] == "STOPPED"
    assert ("QUEUED", "STOPPED") in phases(record)
    gate.touch()
    assert wait_done(builder, running)["buildStatus"] == "SUCCEEDED"


def test_a_retried_start_returns_the_same_build(tmp_path: Path, buildah: str, repo: Repo) -> None:
    builder = make_builder(tmp_path, buildah)
    request = request_for(repo, seed="delivery/1/route")

    first, again = builder.start(request), builder.start(request)
    other = builder.start(request_for(repo, seed="delivery/2/route"))

    assert first["id"] == again["id"] != other["id"]
    for build_id in (first["id"], other["id"]):
        wait_done(builder, build_id)


def test_records_survive_a_restart(tmp_path: Path, buildah: str, repo: Repo) -> None:
    builder = make_builder(tmp_path, buildah)
    done = wait_done(builder, builder.start(request_for(repo, seed="done"))["id"])
    wrapper, _gate = gate_wrapper(tmp_path, buildah)
    gated = make_builder(tmp_path, buildah, which=lambda name: str(wrapper))
    running = gated.start(request_for(repo, seed="running"))["id"]
    wait_for(gated, running, "BUILD")

    restarted = make_builder(tmp_path, buildah)  # a new process reading the same work dir
    records = restarted.get_many([done["id"], running])

    assert records[done["id"]] == done
    interrupted = records[running]
    assert (interrupted["buildStatus"], interrupted["buildComplete"]) == ("FAULT", True)
    assert interrupted["phases"][-2]["contexts"][0]["statusCode"] == "BRIDGE_RESTARTED"
    assert build_status(interrupted, region="local").done
    assert restarted.start(request_for(repo, seed="next"))["buildNumber"] == interrupted["buildNumber"] + 1
    gated.stop(running)


# -- what the builder refuses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://github.com/acme/demo.git", "ext::sh -c touch% /tmp/pwned", "/srv/repo", "ssh://git@host/x.git"],
)
def test_only_allowed_clone_schemes_start(tmp_path: Path, buildah: str, url: str) -> None:
    builder = make_builder(tmp_path, buildah)  # allows file:// only
    event = dataclasses.replace(event_for(Repo(tmp_path, "a" * 40)), clone_url=url)
    request = plan_build(event, BuildOptions(project_name="demo"), idempotency_seed="x")

    with pytest.raises(BuilderError, match="clones only file URLs"):
        builder.start(request)
    assert builder.get_many([]) == {}


def test_disabled_builder_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalBuilder.from_settings(LocalBuilderSettings(enabled=False, work_dir=tmp_path))
    assert caught.value.key == "builders.local.enabled"
    assert not (tmp_path / "builds").exists()


@pytest.mark.parametrize(
    ("preference", "installed", "expected"),
    [
        ("auto", {"buildah", "podman", "docker"}, "buildah"),
        ("auto", {"podman", "docker"}, "podman"),
        ("auto", {"docker"}, "docker"),
        ("podman", {"buildah", "podman"}, "podman"),
    ],
)
def test_find_tool_prefers_buildah_then_podman_then_docker(
    preference: str, installed: set[str], expected: str
) -> None:
    name, path = find_tool(preference, lambda tool: f"/opt/{tool}" if tool in installed else None)
    assert (name, path) == (expected, f"/opt/{expected}")


@pytest.mark.parametrize(("preference", "installed"), [("auto", set()), ("docker", {"buildah"})])
def test_find_tool_names_the_key_when_nothing_fits(preference: str, installed: set[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        find_tool(preference, lambda tool: f"/opt/{tool}" if tool in installed else None)
    assert caught.value.key == "builders.local.tool"
    assert "apt-get install buildah" in str(caught.value)


# -- the clone token -----------------------------------------------------------------------------------------


class GitHttpRecorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def git_http() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Recorder", (GitHttpRecorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_the_clone_token_travels_in_the_environment_not_argv(
    tmp_path: Path, buildah: str, git_http: tuple[str, list[tuple[str, str | None]]]
) -> None:
    base_url, seen = git_http
    token = "tok-" + "s3cr3t" * 4
    builder = make_builder(
        tmp_path,
        buildah,
        allowed_schemes=("http",),
        clone_credentials=lambda request: ("x-access-token", Secret(token)),
    )
    event = dataclasses.replace(event_for(Repo(tmp_path, "b" * 40)), clone_url=f"{base_url}/acme/demo.git")
    request = plan_build(event, BuildOptions(project_name="demo"), idempotency_seed="x")

    record = wait_done(builder, builder.start(request)["id"])

    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert seen
    assert seen[0][0].startswith("/acme/demo.git/info/refs")
    assert seen[0][1] == expected  # git sent the header it got through GIT_CONFIG_* variables
    assert record["buildStatus"] == "FAILED"  # the recorder has no repository to serve
    assert "git fetch" in log_text(record)  # the argv of each step is logged ...
    persisted = "".join(p.read_text() for p in (tmp_path / "work").rglob("*") if p.is_file())
    assert token not in persisted
    assert base64.b64encode(token.encode()).decode() not in persisted


# -- the log tail --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(codec="utf-8", blacklist_characters="\n\r"), max_size=20),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    trailing_newline=st.booleans(),
)
def test_log_tail_never_drops_or_repeats_a_line(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], cuts: list[int], trailing_newline: bool
) -> None:
    data = "\n".join(lines).encode() + (b"\n" if trailing_newline and lines else b"")
    path = tmp_path_factory.mktemp("log") / "build.log"
    path.write_bytes(b"")
    running: dict[str, Any] = {"logs": {"localPath": str(path)}, "buildComplete": False}
    tail = LocalLogTail()
    seen: list[str] = []
    written = 0
    for cut in sorted({min(cut, len(data)) for cut in cuts}):  # appended in chunks, even mid-character
        with path.open("ab") as file:
            file.write(data[written:cut])
        written = cut
        seen += tail.poll(running)
    with path.open("ab") as file:
        file.write(data[written:])
    seen += tail.poll(running)
    seen += list(tail.drain({**running, "buildComplete": True}))

    expected = data.decode().split("\n")
    if expected and expected[-1] == "":
        expected.pop()
    assert seen == expected
    assert tail.poll({**running, "buildComplete": True}) == []


def test_log_tail_before_the_log_exists(tmp_path: Path) -> None:
    assert LocalLogTail().poll({"logs": {"localPath": str(tmp_path / "nope.log")}}) == []
    assert LocalLogTail().poll({}) == []


# -- through the worker -----------------------------------------------------------------------------------


def test_a_local_route_builds_through_the_worker_and_completes_the_check_run(
    tmp_path: Path, buildah: str, repo: Repo, github_api: FakeGitHub
) -> None:
    text = config_text(
        github_url=github_api.url,
        state_path=str(tmp_path / "state.sqlite3"),
        github_route_extra='builder = "local"',
    )
    text += f"""
[builders.local]
enabled = true
tool = "buildah"
work_dir = "{tmp_path / "work"}"
isolation = "chroot"
storage_driver = "vfs"
storage_root = "{tmp_path / "storage"}"
"""
    config = parse_config(text, base_dir=tmp_path)
    (route,) = [r for r in config.routes if r.provider == "github"]
    assert route.builder == "local"
    services = make_services(config, environ=secret_env(github_app_key=github_api.app_keys.private_key_pem))
    local = LocalBuilder.from_settings(config.local_builder, allowed_schemes=("file",))
    services = dataclasses.replace(services, builders={"local": local})
    worker = Worker(services, sleep_rand=lambda: 0.0, phase_report_interval=0.0)
    pushed = events.from_github("push", github_payload("push", None, 4))
    assert isinstance(pushed, SourceEvent)
    event = dataclasses.replace(pushed, clone_url=repo.url, sha=repo.sha)
    assert services.store.add_delivery("local-1", "github", "push", route.name, event)

    assert worker.drain_pending() == 1
    build_id = services.store.get_delivery("local-1").build_id  # type: ignore[union-attr]
    assert build_id is not None
    assert build_id.startswith(ID_PREFIX)
    local.wait(build_id, WAIT_SECONDS)
    worker.track_builds()

    assert not services.store.active_builds()
    posted = [
        (r.method, r.json.get("status"))
        for r in github_api.requests
        if "/check-runs" in r.path and r.method in ("POST", "PATCH")
    ]
    assert posted[0][0] == "POST"
    assert posted[-1] == ("PATCH", "completed")
    (run,) = github_api.check_runs.values()
    assert (run["conclusion"], run["head_sha"], run["external_id"]) == ("success", repo.sha, build_id)
    assert run["output"]["title"].startswith("Build #1 succeeded")
    services.store.close()
