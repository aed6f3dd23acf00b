"""The one image both front doors run: linted, hash-pinned, runnable from the files it copies, and with a
health check that probes the server and stays out of the Action's way.

The image is built and run for real in tests/test_image.py; here the tests run what the image runs (the
copied files on PYTHONPATH, the HEALTHCHECK's own command) against real processes and sockets on loopback.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import cli

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def _all(name: str) -> list[str]:
    return [args for instruction, args in _instructions() if instruction == name]


def _one(name: str) -> str:
    found = _all(name)
    assert len(found) == 1, f"expected exactly one {name}, found {len(found)}"
    return found[0]


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", args):
            env[key] = value
    return env


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_python_312_slim_by_default_and_a_build_argument() -> None:
    assert _all("FROM") == ["${BASE_IMAGE}"]
    assert _all("ARG") == ["BASE_IMAGE=python:3.12-slim"]


def test_dependencies_install_only_from_the_hash_pinned_lock() -> None:
    installs = [args for args in _all("RUN") if "pip install" in args]
    assert installs, "no pip install"
    for args in installs:
        assert "--require-hashes" in args
        assert "-r requirements.lock" in args
        assert "--only-binary=:all:" in args


def test_the_lock_pins_every_requirement_by_hash() -> None:
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    requirements = re.split(r"\n(?=[A-Za-z0-9])", "\n" + re.sub(r"(?m)^\s*#.*$", "", text))
    pinned = [block for block in requirements if block.strip()]
    assert len(pinned) > 10
    for block in pinned:
        assert re.match(r"\s*[A-Za-z0-9_.\[\],-]+==[^\s\\]+", block), block.splitlines()[0]
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_python_output_is_unbuffered() -> None:
    assert _env()["PYTHONUNBUFFERED"] == "1"


def test_config_path_env_is_the_one_the_cli_reads() -> None:
    assert _env()[cli.CONFIG_ENV] == "/etc/bridge/bridge.toml"


def test_stop_signal_is_sigterm() -> None:
    assert _one("STOPSIGNAL") == "SIGTERM"


def test_action_runs_as_root_and_the_server_has_a_user() -> None:
    """GitHub runs container actions as root (the workspace belongs to the runner): no USER line."""
    assert _all("USER") == []
    users = [args for args in _all("RUN") if "useradd" in args]
    assert len(users) == 1
    assert "--uid 10001" in users[0]
    assert "--home-dir /var/lib/bridge --create-home" in users[0]
    assert re.search(r"\bbridge$|\bbridge\s", users[0])


def test_entrypoint_is_exec_form_and_the_port_is_the_cli_default() -> None:
    assert json.loads(_one("ENTRYPOINT")) == ["python", "/opt/bridge/entrypoint.py"]
    assert _one("WORKDIR") == "/opt/bridge"
    assert _one("EXPOSE") == str(cli.DEFAULT_PORT)


def _copied_sources() -> list[str]:
    sources: list[str] = []
    for args in _all("COPY"):
        parts = args.split()
        sources += [part for part in parts[:-1] if not part.startswith("--")]
    return sources


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        candidates = [body, body.replace("**/", "")] if body.startswith("**/") else [body]
        prefixes = [path, *("/".join(path.split("/")[: i + 1]) for i in range(path.count("/")))]
        if any(fnmatch.fnmatchcase(prefix, c) for c in candidates for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [".venv", "tests/node_modules", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis",
     "bridge/__pycache__", "bridge.sqlite3", "bridge.toml", ".env"],
)  # fmt: skip
def test_dockerignore_keeps_local_state_out_of_the_context(path: str) -> None:
    assert _ignored(path, _dockerignore())


def test_dockerignore_keeps_every_copied_source() -> None:
    sources = _copied_sources()
    assert set(sources) == {"requirements.lock", "entrypoint.py", "bridge"}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, _dockerignore()), f".dockerignore drops {source}, which COPY needs"
    assert not _ignored("bridge/data/buildspec-image.yml", _dockerignore())


def test_the_copied_files_alone_run_the_cli(tmp_path: Path) -> None:
    """The image does not pip-install the project: PYTHONPATH plus the COPY'd files must be enough."""
    image_root = tmp_path / "opt-bridge"
    image_root.mkdir()
    for source in _copied_sources():
        if source == "requirements.lock":
            continue
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, image_root / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / source, image_root / source)
    shutil.copy(ROOT / "examples" / "bridge.toml", tmp_path / "bridge.toml")
    env = {**os.environ, "PYTHONPATH": str(image_root)}
    env.pop(cli.CONFIG_ENV, None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(image_root / "entrypoint.py"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    checked = run("bridge", "check-config", "bridge.toml")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok:")
    where = subprocess.run(
        [sys.executable, "-c", "import bridge, sys; sys.stdout.write(bridge.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert Path(where.stdout).is_relative_to(image_root), "the test must exercise the copied package"
    packaged = run("codebuild-bridge", "plan", "--help")
    assert packaged.returncode == 0, packaged.stderr


# --- HEALTHCHECK -------------------------------------------------------------------------------------


def _healthcheck() -> tuple[str, list[str]]:
    options, _, command = _one("HEALTHCHECK").partition("CMD ")
    argv = json.loads(command)
    assert isinstance(argv, list)
    return options, [str(arg) for arg in argv]


def test_healthcheck_is_exec_form_python_with_bounded_timing() -> None:
    options, argv = _healthcheck()
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2]
    assert re.search(r'@app\.get\("/healthz"\)', (ROOT / "bridge" / "app.py").read_text(encoding="utf-8"))
    assert "--timeout=5s" in options
    assert "--start-period=" in options


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _probe(tmp_path: Path, pid1_argv: list[str]) -> int:
    """Runs the HEALTHCHECK command as Docker would, with PID 1's command line read from a file."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join(arg.encode() for arg in pid1_argv) + b"\0")
    _, argv = _healthcheck()
    code = argv[2]
    assert code.count("/proc/1/cmdline") == 1
    result = subprocess.run(
        [sys.executable, "-c", code.replace("/proc/1/cmdline", str(cmdline))],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode


SERVE = ["python", "/opt/bridge/entrypoint.py", "bridge", "serve", "--config", "/etc/bridge/bridge.toml"]


@pytest.mark.parametrize("port_form", ["separate", "equals"])
def test_healthcheck_passes_when_the_server_answers(
    tmp_path: Path, health_server: tuple[int, type[_Health]], port_form: str
) -> None:
    port, _ = health_server
    flag = ["--port", str(port)] if port_form == "separate" else [f"--port={port}"]
    assert _probe(tmp_path, [*SERVE, "--host", "0.0.0.0", *flag]) == 0


def test_healthcheck_fails_when_the_server_is_unhealthy(
    tmp_path: Path, health_server: tuple[int, type[_Health]]
) -> None:
    port, handler = health_server
    handler.status = 503
    assert _probe(tmp_path, [*SERVE, "--port", str(port)]) == 1


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    assert _probe(tmp_path, [*SERVE, "--port", str(_free_port())]) == 1


@pytest.mark.parametrize(
    "pid1_argv",
    [
        ["python", "/opt/bridge/entrypoint.py"],  # the Action
        ["/sbin/docker-init", "--", "python", "/opt/bridge/entrypoint.py"],  # the Action under --init
        ["python", "/opt/bridge/entrypoint.py", "bridge", "check-config", "/etc/bridge/bridge.toml"],
    ],
)
def test_healthcheck_is_healthy_at_once_outside_server_mode(tmp_path: Path, pid1_argv: list[str]) -> None:
    """Nothing listens (the port is free), yet the probe passes: the Action is never marked unhealthy."""
    assert _probe(tmp_path, [*pid1_argv, "--port", str(_free_port())]) == 0


def test_healthcheck_probes_under_docker_init_too(tmp_path: Path) -> None:
    assert _probe(tmp_path, ["/sbin/docker-init", "--", *SERVE, "--port", str(_free_port())]) == 1
