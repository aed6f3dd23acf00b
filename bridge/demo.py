"""`bridge demo`: the whole bridge on this machine in one command, with no AWS account.

It writes a config whose secrets are `env:` references (the values generated for this run, or
taken from the environment, and printed once), starts the server with it (a process of its own:
`python -m bridge.demo serve DIR`, gunicorn as `bridge serve` runs it), sends it signed deliveries
made from published example payloads shipped with the package (GitHub push, pull request and an
event that builds nothing; GitLab push and merge request), waits until each is built or recorded,
prints what happened and the operator page's URL, and serves until Ctrl-C or SIGTERM.

Builds: with buildah, podman or docker installed (`--builder auto`, the default, or `local`), the
local builder builds a small repository the demo makes (a Dockerfile `FROM scratch`), which the demo
serves to it over git's smart HTTP on 127.0.0.1 (`git http-backend`); the sample payloads are
adjusted to name that repository and its commit. Otherwise (`--builder record`, or no tool found) a
CodeBuild stand-in (bridge.builders.record) records the exact StartBuild requests CodeBuild would get
and runs nothing. No status is posted to GitHub or GitLab (there is no account to post to): the
status each commit would get is kept in the store and shown on the page.

Everything it writes lives in its state directory ($XDG_STATE_HOME/bridge/demo by default), never
in the current directory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from bridge.config import default_state_path
from bridge.demo_repository import HOST, DemoRepository
from bridge.errors import BridgeError, ConfigError

__all__ = ["SECRET_ENV", "default_demo_dir", "demo_config_text", "run", "samples"]

DEFAULT_PORT: Final = 8080
READY_TIMEOUT_SECONDS: Final = 60.0
RECORD_DONE_TIMEOUT_SECONDS: Final = 120.0
LOCAL_DONE_TIMEOUT_SECONDS: Final = 600.0
STOP_TIMEOUT_SECONDS: Final = 45.0
# The config names each secret by these variables; their values are this run's (or the caller's).
SECRET_ENV: Final = {
    "github.webhook_secrets": "BRIDGE_DEMO_GITHUB_WEBHOOK_SECRET",
    "github.token": "BRIDGE_DEMO_GITHUB_TOKEN",
    "gitlab.webhook_tokens": "BRIDGE_DEMO_GITLAB_WEBHOOK_TOKEN",
    "gitlab.token": "BRIDGE_DEMO_GITLAB_TOKEN",
}
GITHUB_REPOSITORY: Final = "Codertocat/Hello-World"  # what the published examples name
GITLAB_HOST: Final = "example.com"  # the host GitLab's documented examples name


def default_demo_dir() -> Path:
    """Beside the default state file: the user's state directory, not the current one."""
    return default_state_path().parent / "demo"


@dataclass(frozen=True)
class Sample:
    provider: str
    event: str  # the event header
    file: str  # under bridge/data/demo
    what: str  # how the summary names it

    def payload(self) -> dict[str, Any]:
        text = (
            resources.files("bridge").joinpath("data").joinpath("demo").joinpath(self.file).read_text("utf-8")
        )
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ConfigError(f"the demo payload {self.file} is not a JSON object", hint="reinstall bridge")
        return loaded


def samples() -> tuple[Sample, ...]:
    return (
        Sample("github", "push", "github-push.json", "GitHub push to master"),
        Sample("github", "pull_request", "github-pull_request.json", "GitHub pull request opened"),
        Sample("github", "issues", "github-issues.json", "GitHub issue edited (builds nothing)"),
        Sample("gitlab", "Push Hook", "gitlab-push.json", "GitLab push to master"),
        Sample(
            "gitlab", "Merge Request Hook", "gitlab-merge_request_open.json", "GitLab merge request opened"
        ),
    )


# -- the config ------------------------------------------------------------------------------------


def demo_config_text(state_dir: Path, *, local_tool: str | None, repository_site: str = "127.0.0.1") -> str:
    """The demo's bridge.toml: secrets as env: references, routes for the sample repositories.

    `local_tool`: build with the local builder and this tool; None: CodeBuild routes (recorded).
    """
    state = json.dumps(str(state_dir / "bridge.sqlite3"))
    if local_tool is None:
        route_extra = (
            'image_repository = "123456789012.dkr.ecr.us-east-1.amazonaws.com/hello-world"\n'
            'image_tag = "{short_sha}"\n'
        )
        builders = ""
        hosts_github = '["github.com"]'
        hosts_gitlab = f'["{GITLAB_HOST}"]'
    else:
        route_extra = 'builder = "local"\nforks = "never"\n'
        work = json.dumps(str(state_dir / "local"))
        builders = (
            f'[builders.local]\nenabled = true\ntool = "{local_tool}"\nwork_dir = {work}\n'
            "max_concurrent_builds = 2\n"
        )
        if local_tool in ("buildah", "podman") and os.geteuid() == 0:
            # As root in a container, user namespaces and overlay mounts are usually unavailable; the
            # images go to the demo's own storage, not the host's.
            storage = json.dumps(str(state_dir / "local" / "storage"))
            builders += f'isolation = "chroot"\nstorage_driver = "vfs"\nstorage_root = {storage}\n'
        # host:port of the demo's git server: a repository URL must name the host and the port.
        hosts_github = hosts_gitlab = json.dumps([repository_site])
    return f"""# Written by `bridge demo`; every secret is an env: reference, set for the demo's server only.
[server]
state_path = {state}
poll_interval_seconds = 1
threads = 4
operator_page = "auto"

[aws]
region = "us-east-1"

[github]
webhook_secrets = ["env:{SECRET_ENV["github.webhook_secrets"]}"]
token = "env:{SECRET_ENV["github.token"]}"  # never used: the demo posts no status
repository_hosts = {hosts_github}

[gitlab]
url = "https://{GITLAB_HOST}"
token = "env:{SECRET_ENV["gitlab.token"]}"  # never used: the demo posts no status
webhook_tokens = ["env:{SECRET_ENV["gitlab.webhook_tokens"]}"]
repository_hosts = {hosts_gitlab}

{builders}
[[routes]]
name = "github-demo"
provider = "github"
repositories = ["Codertocat/*"]
events = ["push", "pull_request"]
branches = ["*"]
project = "bridge-demo"
{route_extra}
[[routes]]
name = "gitlab-demo"
provider = "gitlab"
repositories = ["mike/*", "gitlabhq/*", "demo/*"]
events = ["push", "merge_request"]
branches = ["*"]
project = "bridge-demo-gitlab"
{route_extra}"""


# -- signing ------------------------------------------------------------------------------------------


def signed_request(
    sample: Sample, body: bytes, values: Mapping[str, str], url: str
) -> urllib.request.Request:
    """The delivery as GitHub or GitLab sends it: its headers, its signature or token."""
    delivery = str(uuid.uuid4())
    headers = {"Content-Type": "application/json", "User-Agent": "bridge-demo"}
    if sample.provider == "github":
        secret = values[SECRET_ENV["github.webhook_secrets"]].encode()
        digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers |= {
            "X-GitHub-Event": sample.event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={digest}",
        }
    else:
        headers |= {
            "X-Gitlab-Event": sample.event,
            "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Token": values[SECRET_ENV["gitlab.webhook_tokens"]],
        }
    return urllib.request.Request(  # noqa: S310 - the demo's own http://127.0.0.1 server
        f"{url}webhooks/{sample.provider}", data=body, headers=headers, method="POST"
    )


# -- the parent: start, send, show, stop ---------------------------------------------------------------


class _StopRequestedError(Exception):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP: stop the demo and its server."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequestedError


@dataclass
class _Sent:
    sample: Sample
    delivery_id: str
    status: int
    answer: dict[str, Any]


def _prepare(state_dir: Path) -> None:
    """A fresh run: this directory's store and recorded requests of an earlier run go; nothing else."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("bridge.sqlite3", "bridge.sqlite3-wal", "bridge.sqlite3-shm"):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()
    requests = state_dir / "requests"
    if requests.is_dir():
        for old in requests.glob("*.json"):
            old.unlink()


def _choose_tool(choice: str) -> str | None:
    """The local builder's tool, or None to record StartBuild requests instead."""
    if choice == "record":
        return None
    from bridge.builders.local import find_tool

    try:
        tool, _path = find_tool("auto")
    except ConfigError:
        if choice == "local":
            raise
        return None
    return tool


def _wait_ready(base: str, child: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise ConfigError(
                f"the demo's server exited with status {child.returncode} before it was ready",
                hint=f"its log is {log_path}; the last lines say why",
            )
        try:
            with urllib.request.urlopen(f"{base}readyz", timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ConfigError(
        f"the demo's server was not ready within {READY_TIMEOUT_SECONDS:.0f} s",
        hint=f"its log is {log_path}",
    )


def _send(sample: Sample, body: bytes, values: Mapping[str, str], base: str) -> _Sent:
    from bridge.admission import delivery_key

    request = signed_request(sample, body, values, base)
    delivery = request.headers.get("X-github-delivery") or request.headers.get("X-gitlab-event-uuid") or ""
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {}
    key = delivery_key(sample.provider, delivery)  # the store keys deliveries per provider
    return _Sent(sample, key, status, answer if isinstance(answer, dict) else {})


def _wait_done(state_path: Path, sent: Sequence[_Sent], timeout: float) -> bool:
    """Until every accepted delivery's build has finished (or its start failed for good)."""
    from bridge.store import Store

    accepted = [item.delivery_id for item in sent if item.status == 202]
    deadline = time.monotonic() + timeout
    store = Store(state_path)
    try:
        while time.monotonic() < deadline:
            rows = [store.get_delivery(delivery_id) for delivery_id in accepted]
            builds = store.get_builds([row.build_id for row in rows if row is not None and row.build_id])
            if all(
                row is not None
                and (row.state == "failed" or (row.build_id in builds and builds[row.build_id].done))
                for row in rows
            ):
                return True
            time.sleep(0.3)
        return False
    finally:
        store.close()


def _summary(state_path: Path, sent: Sequence[_Sent], out: IO[str], *, recorded: bool) -> None:
    from bridge.operator_page import overview
    from bridge.store import Store

    store = Store(state_path)
    try:
        views = {view.row.delivery_id: view for view in overview(store, limit=100).deliveries}
    finally:
        store.close()
    for item in sent:
        view = views.get(item.delivery_id)
        if view is None:
            outcome = f"HTTP {item.status}: {item.answer.get('error') or item.answer}"
        elif view.outcome == "ignored":
            outcome = f"ignored: {view.reason}"
        elif view.build is not None and recorded:
            outcome = f"StartBuild recorded, not run; the commit would get {view.commit_status!r}"
        elif view.build is not None:
            outcome = f"{view.build_state}; the commit would get {view.commit_status!r}"
        else:
            outcome = f"{view.outcome}{': ' + view.reason if view.reason else ''}"
        print(f"  {item.sample.what:<40} {outcome}", file=out)


def run(
    *,
    state_dir: Path,
    port: int,
    builder: str,
    out: IO[str] = sys.stdout,
    python: str = sys.executable,
) -> int:
    """The demo, start to Ctrl-C; the exit status."""
    state_dir = state_dir.expanduser().resolve()
    _prepare(state_dir)
    tool = _choose_tool(builder)
    values: dict[str, str] = {}
    generated: list[str] = []
    for name in SECRET_ENV.values():
        given = os.environ.get(name, "").strip()
        values[name] = given or secrets.token_urlsafe(24)
        if not given:
            generated.append(name)
    config_path = state_dir / "bridge.toml"
    repository: DemoRepository | None = None
    if tool is not None:
        repository = DemoRepository(state_dir / "git")
        repository.start()
    site = repository.base.removeprefix("http://") if repository is not None else HOST
    text = demo_config_text(state_dir, local_tool=tool, repository_site=site)
    config_path.write_text(text, encoding="utf-8")
    from bridge.config import load_config

    load_config(config_path)  # a config the demo wrote must load; say so here, not in the server's log

    base = f"http://{HOST}:{port}/"
    print(f"bridge demo: state in {state_dir}", file=out)
    print(f"  config {config_path} (secrets are env: references; this run's values:)", file=out)
    for name, value in values.items():
        print(f"    {name}={value}{'' if name in generated else '  (from your environment)'}", file=out)
    print(
        "  builds: "
        + (
            f"the local builder with {tool} (docs/local-builder.md)"
            if tool is not None
            else f"recorded, not run: no AWS call; each StartBuild request goes to {state_dir / 'requests'}"
        ),
        file=out,
    )
    out.flush()

    log_path = state_dir / "server.log"
    # SIGINT too, explicitly: a process started in the background of a script inherits it ignored.
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in stops}
    child: subprocess.Popen[bytes] | None = None
    status = 0
    try:
        with open(log_path, "ab") as log:
            child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [python, "-m", "bridge.demo", "serve", str(state_dir), "--port", str(port)],
                env={**os.environ, **values, "BRIDGE_LOG_FORMAT": "json"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches this process, which stops the server gracefully
            )
        (state_dir / "server.pid").write_text(f"{child.pid}\n", encoding="utf-8")
        print(f"  server pid {child.pid}, log {log_path}", file=out)
        _wait_ready(base, child, log_path)
        sent = []
        for sample in samples():
            payload = sample.payload()
            if repository is not None:
                payload = repository.adjust(payload)
            sent.append(_send(sample, json.dumps(payload).encode(), values, base))
        print(f"sent {len(sent)} signed deliveries; waiting for their builds...", file=out)
        out.flush()
        done = _wait_done(
            state_dir / "bridge.sqlite3",
            sent,
            LOCAL_DONE_TIMEOUT_SECONDS if tool is not None else RECORD_DONE_TIMEOUT_SECONDS,
        )
        _summary(state_dir / "bridge.sqlite3", sent, out, recorded=tool is None)
        if not done:
            print("  (some builds are still running: the page shows them as they finish)", file=out)
        print(f"bridge demo is ready: {base}", file=out)
        print(
            "  open it for every delivery, build and commit status; `bridge status --config "
            f"{config_path} <sha|delivery-id>` prints the same. Ctrl-C stops the demo.",
            file=out,
        )
        out.flush()
        status = child.wait()
        print(f"bridge demo: the server exited with status {status}; its log is {log_path}", file=out)
        status = status or 1
    except (KeyboardInterrupt, _StopRequestedError):
        status = 0
    finally:
        if child is not None and child.poll() is None:
            child.terminate()  # gunicorn's graceful stop: in-flight requests finish, the worker stops
            try:
                child.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if repository is not None:
            repository.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("bridge demo stopped", file=out)
        out.flush()
    return status


# -- the child: the server with the demo's stand-ins -------------------------------------------------


def _serve(state_dir: Path, port: int) -> int:
    from bridge import cli

    cli._prepare_metrics_dir()  # before prometheus_client is imported
    from bridge.builders.record import RecordingBuilder
    from bridge.config import Config, load_config
    from bridge.logs import configure_logging
    from bridge.services import Services, build_services

    config = load_config(state_dir / "bridge.toml")
    configure_logging("info", "json")

    def no_reporter(event: Any, route: Any) -> None:
        """Nothing to post to: the worker keeps the status each commit would get (the page shows it)."""

    def make_services(loaded: Config) -> Services:
        return build_services(
            loaded,
            builder=RecordingBuilder(state_dir),
            reporters=no_reporter,
            builders=_local_builders(loaded),
        )

    from bridge import server

    def app_factory() -> Any:
        return server.served_app(config, host=HOST, make_services=make_services)

    server.run(app_factory, host=HOST, port=port, threads=config.server.threads)
    return 0


def _local_builders(config: Any) -> dict[str, Any]:
    """The local builder when the demo's routes name it, allowed to fetch the demo's http:// repository."""
    if not any(route.builder == "local" for route in config.routes):
        return {}
    from bridge.builders.local import LocalBuilder

    return {"local": LocalBuilder.from_settings(config.local_builder, allowed_schemes=("https", "http"))}


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bridge.demo", description="the demo's server (internal)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("state_dir", type=Path)
    serve.add_argument("--port", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        return _serve(args.state_dir, args.port)
    except BridgeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
