"""The demo's git server: a one-commit repository with a Dockerfile, served over git's smart HTTP on
127.0.0.1, so `bridge demo --builder local` clones and builds for real with no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Final

from bridge.errors import ConfigError

__all__ = ["HOST", "DemoRepository"]

HOST: Final = "127.0.0.1"

# What the published examples name, and what the demo's repository replaces them with.
_SAMPLE_SHAS: Final = (
    "6113728f27ae82c7b1a177c8d03f9e96e0adf246",  # GitHub push
    "ec26c3e57ca3a959ca5aad62de7213c562f8c821",  # GitHub pull request head
    "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",  # GitLab push and merge request
)
_SAMPLE_SITES: Final = ("https://github.com", "http://example.com")
_SAMPLE_REPOSITORIES: Final = (
    "Codertocat/Hello-World",
    "mike/diaspora",
    "gitlabhq/gitlab-test",
    "awesome_space/awesome_project",
)
_DOCKERFILE: Final = "FROM scratch\nCOPY hello.txt /hello.txt\n"
_GIT_IDENTITY: Final = {
    "GIT_AUTHOR_NAME": "bridge demo",
    "GIT_AUTHOR_EMAIL": "demo@bridge.invalid",
    "GIT_COMMITTER_NAME": "bridge demo",
    "GIT_COMMITTER_EMAIL": "demo@bridge.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def _git() -> str:
    path = shutil.which("git")
    if path is None:
        raise ConfigError(
            "the demo's local builds need git on PATH, and it was not found",
            hint="install git, or run `bridge demo --builder record` (nothing is built then)",
        )
    return path


class DemoRepository:
    """A one-commit repository with a Dockerfile, served over git's smart HTTP on 127.0.0.1.

    Every repository path the sample payloads name leads to it, so each delivery's clone URL (the
    payload's, adjusted to this server) fetches the same commit: the local builder runs
    `git fetch --depth 1 origin <sha>` against it exactly as against GitHub or GitLab.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sha = ""
        self.base = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from werkzeug.serving import make_server

        if self.root.exists():
            shutil.rmtree(self.root)
        work = self.root / "work"
        work.mkdir(parents=True)
        (work / "Dockerfile").write_text(_DOCKERFILE, encoding="utf-8")
        (work / "hello.txt").write_text("built by bridge demo with the local builder\n", encoding="utf-8")
        env = {**os.environ, **_GIT_IDENTITY}
        git = _git()
        for argv in (
            [git, "init", "--quiet", "--initial-branch", "master"],
            [git, "add", "Dockerfile", "hello.txt"],
            [git, "commit", "--quiet", "-m", "bridge demo: a Dockerfile to build"],
        ):
            subprocess.run(argv, cwd=work, env=env, check=True, capture_output=True)  # noqa: S603
        self.sha = subprocess.run(  # noqa: S603
            [git, "rev-parse", "HEAD"], cwd=work, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        first, *others = _SAMPLE_REPOSITORIES
        served = self.root / "served"
        bare = served / f"{first}.git"
        bare.parent.mkdir(parents=True)
        subprocess.run(  # noqa: S603
            [git, "clone", "--quiet", "--bare", str(work), str(bare)],
            env=env,
            check=True,
            capture_output=True,
        )
        for name in others:
            link = served / f"{name}.git"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(bare, target_is_directory=True)
        self._server = make_server(HOST, 0, _GitHttp(served), threaded=True, request_handler=_quiet_handler())
        self.base = f"http://{HOST}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-git", daemon=True)
        self._thread.start()

    def adjust(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The sample, naming this server instead of GitHub's or GitLab's, this commit instead of theirs."""
        text = json.dumps(payload)
        for site in _SAMPLE_SITES:
            text = text.replace(site, self.base)
        for sha in _SAMPLE_SHAS:
            text = text.replace(sha, self.sha)
        adjusted = json.loads(text)
        return adjusted if isinstance(adjusted, dict) else payload

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _quiet_handler() -> type[Any]:
    from werkzeug.serving import WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        """No request log: the demo's terminal shows the demo, not every git fetch."""

        def log(self, type: str, message: str, *args: Any) -> None:
            return

    return Quiet


class _GitHttp:
    """WSGI over `git http-backend` (CGI): fetches only, from the served directory, nothing else."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = str(environ.get("PATH_INFO") or "")
        query = str(environ.get("QUERY_STRING") or "")
        if "git-receive-pack" in path or "git-receive-pack" in query:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"the demo's repository is read-only\n"]
        length = str(environ.get("CONTENT_LENGTH") or "")
        if length.isdigit():
            body = environ["wsgi.input"].read(int(length))
        elif environ.get("wsgi.input_terminated"):  # chunked: the server ends the stream for us
            body = environ["wsgi.input"].read()
        else:
            body = b""  # a GET: reading would wait for a body that never comes
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self._root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "uploadpack.allowAnySHA1InWant",
            "GIT_CONFIG_VALUE_0": "true",
            "REQUEST_METHOD": str(environ.get("REQUEST_METHOD") or "GET"),
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": str(environ.get("CONTENT_TYPE") or ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": str(environ.get("REMOTE_ADDR") or ""),
            "GIT_PROTOCOL": str(environ.get("HTTP_GIT_PROTOCOL") or ""),
            "HTTP_CONTENT_ENCODING": str(environ.get("HTTP_CONTENT_ENCODING") or ""),
        }
        result = subprocess.run(  # noqa: S603
            [_git(), "http-backend"], input=body, env=env, capture_output=True, check=False, timeout=60
        )
        head, _, content = result.stdout.partition(b"\r\n\r\n")
        status = "200 OK"
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name and value:
                headers.append((name.strip(), value.strip()))
        start_response(status, headers)
        return [content]
