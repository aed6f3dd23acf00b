"""A real Docker engine and a real registry for tests and benchmarks, from Debian's packages.

`dockerd` (docker.io) runs with the vfs storage driver, no iptables and no bridge network, so it needs
no kernel module and no network namespace setup; builds run with `--network none`. `docker-registry`
(the CNCF distribution registry) serves plain HTTP on 127.0.0.1, which the engine accepts without TLS
for loopback. Both live under a short temporary directory (a unix socket path must stay under 108
bytes), are started as processes of their own session and stopped by their process group id.

The client is Debian's /usr/bin/docker: its classic `docker build` has BuildKit built in
(DOCKER_BUILDKIT=1), while a newer client found first on PATH may refuse BuildKit without the buildx
plugin, which Debian does not package. Callers put `client_bin_dir()` first on PATH.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import bcrypt

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)

DEBIAN_DOCKER = Path("/usr/bin/docker")
PACKAGES = "docker.io docker-registry busybox-static"
INSTALL_HINT = (
    f"run scripts/test as root (it installs Debian's {PACKAGES}) or `apt-get install -y {PACKAGES}`"
)
_START_TIMEOUT = 90.0  # generous: vfs and a loaded 2-core machine make dockerd's first start slow
_STOP_TIMEOUT = 30.0


class EngineMissingError(RuntimeError):
    """A program from the Debian packages is not installed."""


def require(program: str) -> str:
    """The path of a program the Docker tests need, or an error that says how to install it."""
    path = shutil.which(program, path=f"/usr/sbin:/usr/bin:/sbin:/bin:{os.environ.get('PATH', '')}")
    if path is None:
        raise EngineMissingError(f"{program} is not installed: {INSTALL_HINT}")
    return path


def docker_client() -> Path:
    if not DEBIAN_DOCKER.exists():
        raise EngineMissingError(f"{DEBIAN_DOCKER} (Debian's docker client) is not installed: {INSTALL_HINT}")
    return DEBIAN_DOCKER


def client_bin_dir(root: Path) -> Path:
    """A directory holding `docker` (Debian's client) and `busybox`, to put first on PATH."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (("docker", docker_client()), ("busybox", Path(busybox()))):
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(target)
    return bin_dir


def busybox() -> str:
    """busybox-static: the one statically linked binary a `FROM scratch` test image can run."""
    path = require("busybox")
    if _has_interpreter(Path(path).read_bytes()):
        raise EngineMissingError(f"{path} is not statically linked: {INSTALL_HINT}")
    return path


def _has_interpreter(elf: bytes) -> bool:
    """A dynamically linked ELF64 file has a PT_INTERP program header (the loader's path)."""
    pt_interp = 3
    phoff = int.from_bytes(elf[32:40], "little")
    size, count = int.from_bytes(elf[54:56], "little"), int.from_bytes(elf[56:58], "little")
    return any(
        int.from_bytes(elf[phoff + i * size : phoff + i * size + 4], "little") == pt_interp
        for i in range(count)
    )


def short_tempdir(prefix: str) -> Path:
    """A fresh directory under /tmp (not pytest's long tmp_path): unix socket paths are short."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (dockerd stops its containerd), SIGKILL what is left after a while."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for_line(
    process: subprocess.Popen[bytes], log: Path, pattern: re.Pattern[str], what: str
) -> re.Match[str]:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace")
        match = pattern.search(text)
        if match:
            return match
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {_START_TIMEOUT:.0f} s:\n{text[-3000:]}")


@dataclass
class Dockerd:
    """One dockerd with its own data root, exec root and socket, all under `root`."""

    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def start(self) -> Dockerd:
        dockerd = require("dockerd")
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            dockerd,
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "-H", self.host,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_for_line(self.process, self.log, re.compile(r"API listen on"), "dockerd")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)
            self.process = None
        unmount_under(self.root)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class Registry:
    """A distribution registry on 127.0.0.1 (a free port), with htpasswd auth when a user is given."""

    root: Path
    username: str | None = None
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    address: str = ""
    _config: Path = field(init=False)

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    def start(self) -> Registry:
        program = require("docker-registry")
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  delete:",
            "    enabled: true",
            "  filesystem:",
            f"    rootdirectory: {self.root / 'storage'}",
            "http:",
            "  addr: 127.0.0.1:0",
        ]
        if self.username is not None and self.password is not None:
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(f"{self.username}:{hashed}\n", encoding="utf-8")
            lines += ["auth:", "  htpasswd:", "    realm: bridge-tests", f"    path: {htpasswd}"]
        self._config = self.root / "config.yml"
        self._config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [program, "serve", str(self._config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            match = _wait_for_line(
                self.process, self.log, re.compile(r"listening on (127\.0\.0\.1:\d+)"), "docker-registry"
            )
        except BaseException:
            self.stop()
            raise
        self.address = match[1]
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)
            self.process = None

    def get(
        self, path: str, *, accept: str = "application/json", auth: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to the registry's HTTP API: status, headers, body (never raises on 4xx)."""
        request = urllib.request.Request(f"http://{self.address}{path}", headers={"Accept": accept})
        if auth and self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def repositories(self) -> list[str]:
        status, _, body = self.get("/v2/_catalog")
        assert status == 200, body
        return list(json.loads(body)["repositories"] or [])

    def manifest(self, name: str, reference: str) -> tuple[str, dict[str, Any]] | None:
        """(digest, manifest) of a tag or digest, or None when the registry has no such manifest."""
        status, headers, body = self.get(f"/v2/{name}/manifests/{reference}", accept=MANIFEST_TYPES)
        if status == 404:
            return None
        assert status == 200, body
        return headers["Docker-Content-Digest"], json.loads(body)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def docker_env(dockerd: Dockerd, config_dir: Path, bin_dir: Path) -> dict[str, str]:
    """The environment a docker client (or a buildspec) needs to reach this engine and nothing else."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DOCKER_", "BUILDKIT_", "BUILDX_"))
    }
    config_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        DOCKER_HOST=dockerd.host,
        DOCKER_CONFIG=str(config_dir),
        DOCKER_BUILDKIT="1",
        PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


def docker(env: dict[str, str], *args: str, check: bool = True, timeout: float = 300) -> str:
    """Run the docker client against the test engine; its output, or an error that includes it."""
    result = subprocess.run(
        [str(docker_client()), *args], check=False, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def empty_builder(env: dict[str, str]) -> None:
    """What a fresh CodeBuild host has: no image and no build cache."""
    docker(env, "image", "prune", "--all", "--force")
    docker(env, "builder", "prune", "--all", "--force")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def unmount_under(root: Path) -> None:
    """What dockerd leaves mounted under its roots (the host network namespace, nsfs) once stopped."""
    prefix = f"{root}/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


# --- a Python base image from Debian's packages (nothing can be pulled) -----------------------------

BASE_CACHE = Path(os.environ.get("BRIDGE_TEST_CACHE", "/var/cache/bridge-tests"))
PYTHON_BASE = "bridge-test-python-base:bookworm"
_BASE_TARBALL = "python-base-bookworm.tar"
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def python_base_tarball() -> Path:
    """A Debian bookworm root with python3 and pip (debootstrap from the Debian mirror), made once and
    kept outside the repository. It trusts what this host trusts (its CA bundle), so pip behind a TLS
    proxy works as it does on the host; `python` is python3, as in the official python images."""
    tarball = BASE_CACHE / _BASE_TARBALL
    if tarball.exists():
        return tarball
    debootstrap = require("debootstrap")
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=BASE_CACHE))
    try:
        subprocess.run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-pip", "bookworm", str(rootfs),
             "http://deb.debian.org/debian"],
            check=True, capture_output=True, timeout=1800,
        )  # fmt: skip
        (rootfs / "usr/bin/python").symlink_to("python3")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tarball)
    finally:
        remove_tree(rootfs)
    return tarball


def python_base_image(env: dict[str, str]) -> str:
    """PYTHON_BASE in the engine, imported from the cached Debian root (made first when missing)."""
    if subprocess.run(
        [str(docker_client()), "image", "inspect", PYTHON_BASE], env=env, capture_output=True, check=False
    ).returncode:
        docker(env, "import", "--change", f"ENV PATH={_SYSTEM_PATH}", str(python_base_tarball()), PYTHON_BASE)
    return PYTHON_BASE
