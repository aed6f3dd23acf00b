"""A local stand-in for GitLab's REST API v4, only as much as bridge uses: commit statuses.

It answers like GitLab does (lib/api/commit_statuses.rb and Ci::CreateCommitStatusService in
gitlab-org/gitlab): `POST /projects/:id/statuses/:sha` with the documented parameters, the
PRIVATE-TOKEN check, and the commit status state machine per (project, sha, name), including
the 400 "Cannot transition status via :run from :running ..." for a repeated state. It is
stricter than GitLab in one way: unknown parameters are rejected, so a misspelt field fails a
test instead of being silently ignored.
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from tests.fakes.quiet import QuietRequestHandler

STATES: Final = ("pending", "running", "success", "failed", "canceled", "skipped")
MAX_FIELD_LENGTH: Final = 255
_STRING_PARAMS: Final = ("ref", "target_url", "description", "name", "context")
_KNOWN_PARAMS: Final = frozenset({"state", "coverage", "pipeline_id", *_STRING_PARAMS})
_SHA = re.compile(r"[0-9a-f]{7,40}")
# A status is looked up among running_or_pending ones; a finished one is left alone and a new
# status is created (GitLab's "retry"), which starts in `created`.
_OPEN_STATES: Final = frozenset({"pending", "running"})
# state param -> state machine event, and the states that event may leave (CommitStatus model).
_EVENTS: Final = {
    "pending": ("enqueue", frozenset({"created"})),
    "running": ("run", frozenset({"pending"})),
    "success": ("success", frozenset({"created", "pending", "running"})),
    "failed": ("drop", frozenset({"created", "pending", "running"})),
    "canceled": ("cancel", frozenset({"created", "pending", "running"})),
    "skipped": ("skip", frozenset({"created", "pending"})),
}
_DEFAULT_FAULT_BODIES: Final[dict[int, Any]] = {
    401: {"message": "401 Unauthorized"},
    403: {"message": "403 Forbidden"},
    404: {"message": "404 Not Found"},
    409: {"message": "409 Conflict"},
    429: {"message": "429 Too Many Requests"},
    500: {"message": "500 Internal Server Error"},
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    raw_path: str  # as sent, still URL-encoded: proves the project path was encoded
    project: str | None  # decoded project id or path
    sha: str | None
    body: dict[str, Any]
    token_ok: bool  # whether PRIVATE-TOKEN matched; the token itself is never recorded
    status_code: int


@dataclass
class _Fault:
    status: int
    body: Any


@dataclass
class _Status:
    state: str
    fields: dict[str, Any] = field(default_factory=dict)


class FakeGitLab:
    def __init__(self, token: str | None = None) -> None:
        self.token = token or f"glpat-{secrets.token_urlsafe(20)}"
        self.requests: list[RecordedRequest] = []
        self.transitions: list[tuple[str, str, str, str]] = []  # (project, sha, name, state) accepted
        self._current: dict[tuple[str, str, str], _Status] = {}
        # (project id or path, user id) -> access level (10 Guest ... 30 Developer, 40 Maintainer, 50 Owner)
        self.members: dict[tuple[str, int], int] = {}
        self._faults: deque[_Fault] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._port = 0
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=QuietRequestHandler
        )
        self._port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Idempotent, so a test may stop the server early to see how clients cope."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._port, "start() first"
        return f"http://127.0.0.1:{self._port}"

    def fail_next(self, status: int, times: int = 1, *, body: Any = None) -> None:
        """The next `times` API requests answer `status` (502 answers an HTML page, like a proxy)."""
        if body is None:
            body = "<html><body><h1>502 Bad Gateway</h1></body></html>" if status == 502 else None
        if body is None:
            body = _DEFAULT_FAULT_BODIES.get(status, {"message": f"{status} Error"})
        with self._lock:
            self._faults.extend(_Fault(status, body) for _ in range(times))

    @property
    def statuses(self) -> dict[tuple[str, str], str]:
        """Latest state per (sha, name), over all projects."""
        with self._lock:
            return {(sha, name): s.state for (_, sha, name), s in self._current.items()}

    def status_fields(self, sha: str, name: str) -> dict[str, Any]:
        with self._lock:
            for (_, s, n), status in self._current.items():
                if (s, n) == (sha, name):
                    return dict(status.fields)
        raise KeyError((sha, name))

    @property
    def status_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.sha is not None]

    # -- the API ---------------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("fake-gitlab")

        @app.post("/api/v4/projects/<path:project>/statuses/<sha>")
        def create_status(project: str, sha: str) -> Response:
            return self._handle(project, sha)

        @app.get("/api/v4/projects/<path:project>")
        def get_project(project: str) -> Response:
            return self._handle(project, None)

        @app.get("/api/v4/projects/<project>/members/all/<user_id>")
        def get_member(project: str, user_id: str) -> Response:
            return self._member(project, user_id)

        return app

    def _answered(
        self, project: str, sha: str | None, respond: Callable[[str, dict[str, Any]], Response]
    ) -> Response:
        """One request, recorded: a queued fault, or 401 without the token, else what `respond` (given
        the raw path and the parameters) answers, under the lock."""
        raw_path = str(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path)
        params = _request_params()
        token_ok = request.headers.get("PRIVATE-TOKEN") == self.token
        with self._lock:
            if self._faults:
                fault = self._faults.popleft()
                response = _answer(fault.status, fault.body)
            elif not token_ok:
                response = _answer(401, {"message": "401 Unauthorized"})
            else:
                response = respond(raw_path, params)
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    raw_path=raw_path,
                    project=project,
                    sha=sha,
                    body=params,
                    token_ok=token_ok,
                    status_code=response.status_code,
                )
            )
        return response

    def _handle(self, project: str, sha: str | None) -> Response:
        def respond(raw_path: str, body: dict[str, Any]) -> Response:
            if not _project_segment_encoded(raw_path):
                return _answer(404, {"message": "404 Project Not Found"})
            if sha is None:
                return _answer(200, _project_json(project))
            return self._create_status(project, sha, body)

        return self._answered(project, sha, respond)

    def _member(self, project: str, user_id: str) -> Response:
        """lib/api/members.rb `GET :id/members/all/:user_id`: direct and inherited members; 404
        "Member Not Found" for anyone else. `user_id` is an integer (Grape answers 400 otherwise)."""

        def respond(raw_path: str, params: dict[str, Any]) -> Response:
            del raw_path  # the project id is a plain number here
            if params:
                return _answer(400, {"error": f"unknown parameter(s) {', '.join(sorted(params))}"})
            if not user_id.isdigit():
                return _answer(400, {"error": "user_id is invalid"})
            if (project, int(user_id)) not in self.members:
                return _answer(404, {"message": "404 Member Not Found"})
            return _answer(
                200,
                {
                    "id": int(user_id),
                    "username": f"user{user_id}",
                    "name": f"User {user_id}",
                    "state": "active",
                    "avatar_url": None,
                    "web_url": f"https://gitlab.example.com/user{user_id}",
                    "access_level": self.members[(project, int(user_id))],
                    "created_at": "2026-01-01T00:00:00.000Z",
                    "expires_at": None,
                },
            )

        return self._answered(project, None, respond)

    def _create_status(self, project: str, sha: str, params: dict[str, Any]) -> Response:
        problem = _validate(params)
        if problem is not None:
            return problem
        if not _SHA.fullmatch(sha):
            return _answer(404, {"message": "404 Commit Not Found"})
        name = str(params.get("name") or params.get("context") or "default")
        state = str(params["state"])
        machine_key = (project, sha, name)
        existing = self._current.get(machine_key)
        current = existing.state if existing is not None and existing.state in _OPEN_STATES else "created"
        # `running` on a fresh status first enqueues it (GitLab calls enqueue, then run!).
        if state == "running" and current == "created":
            current = "pending"
        event, allowed_from = _EVENTS[state]
        if current not in allowed_from:
            message = (
                f"Cannot transition status via :{event} from :{current} "
                f'(Reason(s): Status cannot transition via "{event}")'
            )
            return _answer(400, {"message": message})
        fields = dict(existing.fields) if existing is not None and existing.state in _OPEN_STATES else {}
        if existing is None or existing.state not in _OPEN_STATES:
            fields["id"] = next(self._ids)
        fields.update({k: params[k] for k in ("target_url", "description", "coverage") if k in params})
        fields.update(
            {
                "sha": sha,
                "ref": params.get("ref", fields.get("ref", "main")),
                "status": state,
                "name": name,
                "pipeline_id": params.get("pipeline_id", fields.get("pipeline_id", 1)),
                "allow_failure": False,
            }
        )
        self._current[machine_key] = _Status(state, fields)
        self.transitions.append((project, sha, name, state))
        full = {"target_url": None, "description": None, "coverage": None, **fields}
        return _answer(201, full)


def _request_params() -> dict[str, Any]:
    """GitLab takes JSON or form bodies (and query parameters); python-gitlab sends JSON."""
    params: dict[str, Any] = dict(request.args.items())
    if request.is_json:
        data = request.get_json(silent=True)
        if isinstance(data, dict):
            params.update(data)
    else:
        params.update(request.form.items())
    return params


def _validate(params: dict[str, Any]) -> Response | None:
    """Grape's parameter checks (400 {"error": ...}), then the model's (400 {"message": {...}})."""
    unknown = sorted(set(params) - _KNOWN_PARAMS)
    if unknown:
        return _answer(400, {"error": f"unknown parameter(s) {', '.join(unknown)} (rejected by the fake)"})
    if "state" not in params:
        return _answer(400, {"error": "state is missing"})
    if params["state"] not in STATES:
        return _answer(400, {"error": "state does not have a valid value"})
    for name in _STRING_PARAMS:
        if name in params and not isinstance(params[name], str):
            return _answer(400, {"error": f"{name} is invalid"})
    if "coverage" in params and not _is_float(params["coverage"]):
        return _answer(400, {"error": "coverage is invalid"})
    if "pipeline_id" in params and not _is_int(params["pipeline_id"]):
        return _answer(400, {"error": "pipeline_id is invalid"})
    errors: dict[str, list[str]] = {}
    for name in ("target_url", "description"):
        if len(params.get(name) or "") > MAX_FIELD_LENGTH:
            errors.setdefault(name, []).append(f"is too long (maximum is {MAX_FIELD_LENGTH} characters)")
    target_url = params.get("target_url")
    if target_url and urlsplit(target_url).scheme not in ("http", "https"):
        errors.setdefault("target_url", []).append("is blocked: Only allowed schemes are http, https")
    if errors:
        return _answer(400, {"message": errors})
    return None


def _is_float(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


def _project_segment_encoded(raw_path: str) -> bool:
    """A namespaced path must arrive as one segment (group%2Fproject), or GitLab routes elsewhere."""
    path = urlsplit(raw_path).path
    prefix = "/api/v4/projects/"
    if not path.startswith(prefix):
        return False
    rest = path[len(prefix) :]
    segments = rest.split("/")
    return len(segments) in (1, 3) and bool(unquote(segments[0]))


def _project_json(project: str) -> dict[str, Any]:
    numeric = project.isdigit()
    path = f"group/project-{project}" if numeric else project
    return {
        "id": int(project) if numeric else 1000,
        "path_with_namespace": path,
        "name": path.rsplit("/", 1)[-1],
        "web_url": f"https://gitlab.example.com/{path}",
        "default_branch": "main",
    }


def _answer(status: int, body: Any) -> Response:
    if isinstance(body, str):
        return Response(body, status=status, content_type="text/html")
    response = jsonify(body)
    response.status_code = status
    return response
