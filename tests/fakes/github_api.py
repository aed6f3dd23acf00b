"""A fake GitHub REST API that holds our requests to GitHub's own OpenAPI description.

Why a fake and not recorded responses: the reporter's value is in the exact requests it sends
(body shapes, auth, retries), so the fake *judges* every request against the published OpenAPI
description (@octokit/openapi), answers with the description's own example payloads, and records
what it saw. A request the description rejects gets GitHub's 422 and is remembered as a
violation, which the `github_api` fixture turns into a test failure.

Auth is modelled like GitHub's: App JWTs (RS256, iss = app id, at most 10 minutes) for /app
endpoints, installation tokens minted by POST /app/installations/{id}/access_tokens, and static
tokens (an Actions GITHUB_TOKEN or a PAT) with their own permissions.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlencode

import jsonschema  # type: ignore[import-untyped]  # no stubs; check-jsonschema brings it
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, g, request
from werkzeug.serving import BaseWSGIServer, make_server

from tests.fakes.hold import Hold
from tests.fakes.quiet import QuietRequestHandler
from tests.fixtures import GITHUB_OPENAPI

# (method, OpenAPI path template) of every operation the fake serves.
SERVED: Final = (
    ("GET", "/rate_limit"),
    ("GET", "/repos/{owner}/{repo}"),
    ("GET", "/repos/{owner}/{repo}/installation"),
    ("POST", "/repos/{owner}/{repo}/check-runs"),
    ("GET", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
    ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs"),
    ("POST", "/repos/{owner}/{repo}/statuses/{sha}"),
    ("POST", "/app/installations/{installation_id}/access_tokens"),
    ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"),
)

JWT_MAX_LIFETIME: Final = 600
DOCS: Final = "https://docs.github.com/rest"
SECONDARY_RATE_LIMIT_MESSAGE: Final = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
FaultKind = Literal["bad_gateway", "secondary_rate_limit", "not_accessible"]
TokenKind = Literal["actions", "pat"]


# -- the OpenAPI description -------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    operation_id: str
    request_schema: Mapping[str, Any] | None
    body_required: bool
    response_status: int
    response_schema: Mapping[str, Any] | None
    response_example: Any


_SCHEMA_MAPS: Final = frozenset({"properties", "patternProperties", "definitions"})
_SCHEMA_LISTS: Final = frozenset({"allOf", "anyOf", "oneOf"})
_SCHEMA_VALUES: Final = frozenset({"items", "additionalProperties", "not"})


class _Resolver:
    """Inlines $refs and turns OpenAPI 3.0 `nullable` into JSON Schema, for one operation at a time."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    def pointer(self, ref: str) -> Any:
        node: Any = self.spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def schema(self, node: Any, seen: tuple[str, ...] = ()) -> Any:
        if not isinstance(node, Mapping):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            if ref in seen:  # a recursive schema: accept anything below the cycle
                return {}
            return self.schema(self.pointer(ref), (*seen, ref))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, Mapping):
                out[key] = {name: self.schema(sub, seen) for name, sub in value.items()}
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [self.schema(sub, seen) for sub in value]
            elif key in _SCHEMA_VALUES:
                out[key] = self.schema(value, seen)
            elif key != "nullable":
                out[key] = value
        if node.get("nullable") is True:
            if "type" in out:
                types = out["type"] if isinstance(out["type"], list) else [out["type"]]
                out["type"] = [*types, "null"]
                if "enum" in out:
                    out["enum"] = [*out["enum"], None]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out

    def deref(self, node: Any) -> Any:
        while isinstance(node, Mapping) and "$ref" in node:
            node = self.pointer(node["$ref"])
        return node


@cache
def operations(spec_path: Path = GITHUB_OPENAPI) -> dict[tuple[str, str], Operation]:
    """The served operations, extracted once per session from the (tens of MB) description."""
    if not spec_path.exists():
        raise RuntimeError(f"{spec_path} is missing: run `npm ci --prefix tests`")
    spec = json.loads(spec_path.read_text())
    resolver = _Resolver(spec)
    result: dict[tuple[str, str], Operation] = {}
    for method, template in SERVED:
        op = spec["paths"][template][method.lower()]
        body = resolver.deref(op.get("requestBody"))
        request_schema = None
        if body:
            request_schema = resolver.schema(body["content"]["application/json"]["schema"])
        status_code = min(code for code in op["responses"] if code.startswith("2"))
        response = resolver.deref(op["responses"][status_code])
        content = response["content"]["application/json"]
        example = resolver.deref(next(iter(content["examples"].values())))["value"]
        result[(method, template)] = Operation(
            method=method,
            template=template,
            operation_id=op["operationId"],
            request_schema=request_schema,
            body_required=bool(body and body.get("required")),
            response_status=int(status_code),
            response_schema=resolver.schema(content["schema"]),
            response_example=example,
        )
    return result


def schema_errors(schema: Mapping[str, Any], instance: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '<body>'}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]


# -- test material -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AppKeys:
    """A GitHub App's identity for tests: the App signs JWTs with the private key, the fake verifies."""

    app_id: int
    private_key_pem: str
    public_key_pem: str


@cache
def app_keys(app_id: int = 31337) -> AppKeys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return AppKeys(app_id=app_id, private_key_pem=private, public_key_pem=public)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    json: Any
    headers: Mapping[str, str]  # Authorization reduced to its scheme: "token ***", "Bearer ***"
    identity: str | None  # who the fake authenticated: "app:31337", "installation:4242", "token:actions"
    status: int  # what the fake answered


@dataclass
class _Fault:
    pattern: str
    method: str | None
    remaining: int
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str]


@dataclass(frozen=True)
class _Identity:
    label: str
    kind: Literal["app", "installation", "actions", "pat"]
    permissions: Mapping[str, str] = field(default_factory=dict)


_ALL_PERMISSIONS: Final = {"checks": "write", "statuses": "write", "metadata": "read"}


class FakeGitHub:
    """One fake API server on 127.0.0.1 and a free port; start(), then stop() at teardown."""

    def __init__(self, *, keys: AppKeys | None = None, installation_id: int = 4242) -> None:
        self.app_keys = keys or app_keys()
        self.installation_id = installation_id
        self.installation_permissions: dict[str, str] = dict(_ALL_PERMISSIONS)
        self.installations: dict[str, int] = {}  # repo full name -> installation; default: everything
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        self.check_runs: dict[int, dict[str, Any]] = {}
        self.check_run_actions: dict[int, list[dict[str, Any]]] = {}  # the buttons each run was given last
        self.statuses: list[dict[str, Any]] = []
        self.issued_tokens: list[str] = []
        # (repo full name lowercased, login) -> collaborator permission; anyone else reads (public repo).
        self.permissions: dict[tuple[str, str], str] = {}
        self.pulls: dict[tuple[str, int], dict[str, Any]] = {}  # (repo full name lowercased, number)
        self._tokens: dict[str, _Identity] = {}
        self._check_run_owner: dict[int, str] = {}
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._recorded = threading.Condition(self._lock)
        self._holds: list[tuple[str, str, Hold]] = []  # (method, path glob, hold)
        self._operations = operations()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.app = self._create_app()

    # -- test controls -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        return f"http://127.0.0.1:{self._server.server_port}"

    def add_token(
        self, value: str, *, kind: TokenKind = "actions", permissions: Mapping[str, str] | None = None
    ) -> str:
        """Accept `value` as an Actions GITHUB_TOKEN or a PAT with these permissions."""
        granted = dict(_ALL_PERMISSIONS if permissions is None else permissions)
        self._tokens[value] = _Identity(label=f"token:{kind}", kind=kind, permissions=granted)
        return value

    def fail_next(
        self,
        path: str,
        *,
        times: int = 1,
        kind: FaultKind = "bad_gateway",
        method: str | None = None,
        retry_after: int = 1,
    ) -> None:
        """The next `times` requests whose path matches the glob `path` get this failure instead."""
        if kind == "bad_gateway":
            status, body, headers = 502, {"message": "Server Error"}, {}
        elif kind == "secondary_rate_limit":
            status = 403
            body = {"message": SECONDARY_RATE_LIMIT_MESSAGE, "documentation_url": f"{DOCS}/overview"}
            headers = {"Retry-After": str(retry_after)}
        else:
            status = 403
            body = {"message": "Resource not accessible by integration", "documentation_url": DOCS}
            headers = {}
        with self._lock:
            self._faults.append(_Fault(path, method, times, status, body, headers))

    def set_permission(self, repository: str, login: str, permission: str) -> None:
        """`login`'s permission on `repository`: admin, write, read or none (GitHub's legacy field)."""
        self.permissions[(repository.lower(), login)] = permission

    def set_pull(
        self,
        repository: str,
        number: int,
        *,
        head_sha: str,
        head_repository: str,
        head_ref: str = "feature",
        base_ref: str = "master",
        state: str = "open",
    ) -> None:
        """What GET /repos/{repository}/pulls/{number} answers: the description's example, made this PR."""
        data = self._example("GET", "/repos/{owner}/{repo}/pulls/{pull_number}")
        data.update(number=number, state=state, html_url=f"https://github.com/{repository}/pull/{number}")
        data["requested_teams"] = []  # the example's teams predate the schema's required `type`
        for side, full_name, ref, sha in (
            ("head", head_repository, head_ref, head_sha),
            ("base", repository, base_ref, data["base"]["sha"]),
        ):
            owner = full_name.split("/")[0]
            part = data[side]
            part.update(ref=ref, sha=sha, label=f"{owner}:{ref}")
            part["repo"].update(
                full_name=full_name,
                name=full_name.split("/")[1],
                html_url=f"https://github.com/{full_name}",
                clone_url=f"https://github.com/{full_name}.git",
                url=f"https://api.github.com/repos/{full_name}",
                private=False,
            )
            part["repo"]["owner"].update(login=owner)
        self.pulls[(repository.lower(), number)] = data

    def hold(self, method: str, path: str, *, timeout: float = 120.0) -> Hold:
        """The next `method` request whose path matches the glob `path` waits until the Hold is released."""
        hold = Hold(f"{method} {path}", timeout)
        with self._lock:
            self._holds.append((method, path, hold))
        return hold

    def wait_for(
        self, method: str, path: str, count: int = 1, *, timeout: float = 120.0
    ) -> list[RecordedRequest]:
        """Block until `count` answered `method` requests on the glob `path` are recorded; return them.

        How a test synchronises with a process under test (on a request it made), never a sleep.
        """

        def matching() -> list[RecordedRequest]:
            return [r for r in self.requests if r.method == method and fnmatch.fnmatchcase(r.path, path)]

        with self._recorded:
            done = self._recorded.wait_for(lambda: len(matching()) >= count, timeout=timeout)
            found = matching()
        if not done:
            raise AssertionError(
                f"{len(found)} of {count} {method} {path} requests reached the fake in {timeout} s"
            )
        return found

    def calls(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far, in order."""
        return [(r.method, r.path, r.status) for r in self.requests]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        self._server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=QuietRequestHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-github", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the Flask app -------------------------------------------------------------------------

    def _create_app(self) -> Flask:
        app = Flask("fake_github")
        handlers: dict[tuple[str, str], Callable[..., Response]] = {
            ("GET", "/rate_limit"): self._rate_limit,
            ("GET", "/repos/{owner}/{repo}"): self._get_repo,
            ("GET", "/repos/{owner}/{repo}/installation"): self._get_repo_installation,
            ("POST", "/repos/{owner}/{repo}/check-runs"): self._create_check_run,
            ("GET", "/repos/{owner}/{repo}/check-runs/{check_run_id}"): self._get_check_run,
            ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}"): self._update_check_run,
            ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs"): self._list_check_runs_for_ref,
            ("POST", "/repos/{owner}/{repo}/statuses/{sha}"): self._create_status,
            ("POST", "/app/installations/{installation_id}/access_tokens"): self._access_token,
            (
                "GET",
                "/repos/{owner}/{repo}/collaborators/{username}/permission",
            ): self._collaborator_permission,
            ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"): self._get_pull,
        }
        for (method, template), handler in handlers.items():
            rule = (
                template.replace("{check_run_id}", "<int:check_run_id>")
                .replace("{installation_id}", "<int:installation_id>")
                .replace("{pull_number}", "<int:pull_number>")
                .replace("{sha}", "<path:sha>")
                .replace("{ref}", "<path:ref>")
                .replace("{", "<")
                .replace("}", ">")
            )
            app.add_url_rule(
                rule,
                endpoint=f"{method} {template}",
                view_func=self._guarded(self._operations[(method, template)], handler),
                methods=[method],
            )

        @app.errorhandler(404)
        @app.errorhandler(405)
        def unserved(error: Exception) -> Response:
            self._violation(f"{request.method} {request.path}: not an endpoint the fake serves ({error})")
            return self._error(404, "Not Found")

        @app.after_request
        def record(response: Response) -> Response:
            authorization = request.headers.get("Authorization")
            headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
            if authorization:
                headers["Authorization"] = f"{authorization.partition(' ')[0]} ***"
            identity: _Identity | None = g.get("identity")
            entry = RecordedRequest(
                method=request.method,
                path=request.path,
                json=request.get_json(silent=True),
                headers=headers,
                identity=identity.label if identity else None,
                status=response.status_code,
            )
            with self._recorded:
                self.requests.append(entry)
                self._recorded.notify_all()
            return response

        return app

    def _guarded(self, op: Operation, handler: Callable[..., Response]) -> Callable[..., Response]:
        """Faults, request validation and auth, in the order GitHub's edge applies them."""

        def view(**params: Any) -> Response:
            with self._lock:
                held = next(
                    (
                        entry
                        for entry in self._holds
                        if entry[0] == request.method and fnmatch.fnmatchcase(request.path, entry[1])
                    ),
                    None,
                )
                if held is not None:
                    self._holds.remove(held)
            if held is not None:
                held[2].block()
            body = request.get_json(silent=True)
            problems = self._request_problems(op, body)
            fault = self._take_fault()
            if fault is not None:
                return self._json(fault.body, fault.status, fault.headers)
            if problems:
                for problem in problems:
                    self._violation(f"{op.method} {request.path} ({op.operation_id}): {problem}")
                return self._json(
                    {"message": "Invalid request.", "errors": problems, "documentation_url": DOCS}, 422
                )
            identity = self._authenticate(op)
            if isinstance(identity, Response):
                return identity
            g.identity = identity
            response = handler(**params)
            if op.response_schema is not None and response.status_code == op.response_status:
                for problem in schema_errors(op.response_schema, response.get_json()):
                    self._violation(f"fake answered {op.operation_id} off the description: {problem}")
            return response

        return view

    def _request_problems(self, op: Operation, body: Any) -> list[str]:
        problems = []
        if not request.headers.get("User-Agent"):
            problems.append("missing User-Agent header (GitHub rejects such requests)")
        version = request.headers.get("X-GitHub-Api-Version")
        if version is not None and version != "2022-11-28":
            problems.append(f"unknown X-GitHub-Api-Version {version!r}")
        if op.request_schema is None:
            if request.get_data():
                problems.append("this operation takes no request body")
            return problems
        if body is None:
            if op.body_required or request.get_data():
                problems.append("request body must be JSON")
            return problems
        if request.mimetype != "application/json":
            problems.append(f"Content-Type is {request.mimetype!r}, not application/json")
        problems.extend(schema_errors(op.request_schema, body))
        return problems

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if (
                    fault.remaining > 0
                    and fnmatch.fnmatchcase(request.path, fault.pattern)
                    and fault.method in (None, request.method)
                ):
                    fault.remaining -= 1
                    return fault
        return None

    def _authenticate(self, op: Operation) -> _Identity | Response:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        needs_app = op.template.startswith("/app/") or op.template.endswith("/installation")
        if not credential:
            return self._error(401, "Requires authentication")
        if needs_app:
            if scheme.lower() != "bearer":
                return self._error(401, "A JSON web token could not be decoded")
            return self._verify_jwt(credential)
        if scheme.lower() not in ("token", "bearer") or credential not in self._tokens:
            return self._error(401, "Bad credentials")
        return self._tokens[credential]

    def _verify_jwt(self, token: str) -> _Identity | Response:
        try:
            claims = jwt.decode(
                token,
                self.app_keys.public_key_pem,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"], "verify_iat": False},
                leeway=60,
            )
        except jwt.PyJWTError as error:
            self._violation(f"App JWT rejected: {error}")
            return self._error(401, "A JSON web token could not be decoded")
        now = time.time()
        if str(claims["iss"]) != str(self.app_keys.app_id):
            self._violation(f"App JWT iss is {claims['iss']!r}, not the app id {self.app_keys.app_id}")
            return self._error(401, "Integration not found")
        if claims["exp"] - now > JWT_MAX_LIFETIME or claims["exp"] - claims["iat"] > JWT_MAX_LIFETIME:
            self._violation("App JWT lives longer than 10 minutes")
            return self._error(401, "'Expiration time' claim ('exp') is too far in the future")
        if claims["iat"] > now + 60:
            self._violation("App JWT issued in the future")
            return self._error(401, "'Issued at' claim ('iat') must be an Integer representing the time")
        return _Identity(label=f"app:{self.app_keys.app_id}", kind="app")

    # -- responses -----------------------------------------------------------------------------

    def _violation(self, message: str) -> None:
        with self._lock:
            self.violations.append(message)

    @staticmethod
    def _json(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
        response = Response(json.dumps(body), status=status, mimetype="application/json")
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    def _error(self, status: int, message: str) -> Response:
        return self._json({"message": message, "documentation_url": DOCS}, status)

    def _example(self, method: str, template: str) -> dict[str, Any]:
        example: dict[str, Any] = copy.deepcopy(self._operations[(method, template)].response_example)
        return example

    def _base(self) -> str:
        return request.host_url.rstrip("/")

    def _require(self, permission: str) -> Response | None:
        identity: _Identity = g.identity
        if identity.kind == "pat" and permission == "checks":
            return self._error(403, "You must authenticate via a GitHub App.")
        if identity.permissions.get(permission) != "write":
            return self._error(403, "Resource not accessible by integration")
        return None

    def _repo_json(self, owner: str, repo: str) -> dict[str, Any]:
        data = self._example("GET", "/repos/{owner}/{repo}")
        base = self._base()
        data.update(
            name=repo,
            full_name=f"{owner}/{repo}",
            url=f"{base}/repos/{owner}/{repo}",
            html_url=f"https://github.com/{owner}/{repo}",
        )
        data["owner"].update(login=owner, url=f"{base}/users/{owner}")
        return data

    def _rate_limit(self) -> Response:
        return self._json(self._example("GET", "/rate_limit"), 200)

    def _get_repo(self, owner: str, repo: str) -> Response:
        return self._json(self._repo_json(owner, repo), 200)

    def _get_repo_installation(self, owner: str, repo: str) -> Response:
        full_name = f"{owner}/{repo}"
        # No explicit map: the App is installed everywhere under `installation_id`.
        installation_id = self.installations.get(full_name) if self.installations else self.installation_id
        if installation_id is None:
            return self._error(404, "Not Found")
        data = self._example("GET", "/repos/{owner}/{repo}/installation")
        base = self._base()
        data.update(
            id=installation_id,
            app_id=self.app_keys.app_id,
            access_tokens_url=f"{base}/app/installations/{installation_id}/access_tokens",
            repositories_url=f"{base}/installation/repositories",
            permissions=dict(self.installation_permissions),
        )
        return self._json(data, 200)

    def _access_token(self, installation_id: int) -> Response:
        known = {self.installation_id, *self.installations.values()}
        if installation_id not in known:
            return self._error(404, "Not Found")
        token = f"ghs_{secrets.token_hex(18)}"
        permissions = dict(self.installation_permissions)
        requested = (request.get_json(silent=True) or {}).get("permissions")
        if requested:
            permissions = {k: v for k, v in requested.items() if k in permissions}
        with self._lock:
            self.issued_tokens.append(token)
            self._tokens[token] = _Identity(
                label=f"installation:{installation_id}", kind="installation", permissions=permissions
            )
        data = self._example("POST", "/app/installations/{installation_id}/access_tokens")
        expires = datetime.now(UTC) + timedelta(hours=1)
        data.update(
            token=token,
            expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            permissions=permissions,
            repository_selection="all",
        )
        data.pop("repositories", None)
        return self._json(data, 201)

    def _check_run_json(
        self, owner: str, repo: str, run_id: int, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        data = self._example("GET", "/repos/{owner}/{repo}/check-runs/{check_run_id}")
        base = self._base()
        data.update(
            id=run_id,
            node_id=f"CR_{run_id}",
            url=f"{base}/repos/{owner}/{repo}/check-runs/{run_id}",
            html_url=f"https://github.com/{owner}/{repo}/runs/{run_id}",
            external_id="",
            details_url=None,
            status="queued",
            conclusion=None,
            started_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            completed_at=None,
            pull_requests=[],
            check_suite={"id": 1},
            output={
                "title": None,
                "summary": None,
                "text": None,
                "annotations_count": 0,
                "annotations_url": f"{base}/repos/{owner}/{repo}/check-runs/{run_id}/annotations",
            },
        )
        return self._apply_check_run_fields(data, fields)

    @staticmethod
    def _apply_check_run_fields(data: dict[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
        for key in ("name", "head_sha", "details_url", "external_id", "status", "started_at", "completed_at"):
            if key in fields:
                data[key] = fields[key]
        if "conclusion" in fields:
            data["conclusion"] = fields["conclusion"]
            data["status"] = "completed"  # GitHub: providing a conclusion completes the run
            data["completed_at"] = data["completed_at"] or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if "output" in fields:
            output = fields["output"]
            data["output"].update({k: output[k] for k in ("title", "summary", "text") if k in output})
        return data

    def _create_check_run(self, owner: str, repo: str) -> Response:
        denied = self._require("checks")
        if denied is not None:
            return denied
        fields = request.get_json()
        if fields.get("status") == "completed" and "conclusion" not in fields:
            return self._error(422, "Invalid request: conclusion is required when status is completed")
        if fields.get("conclusion") == "action_required" and not fields.get("details_url"):
            return self._error(
                422, "Invalid request: details_url is required when conclusion is action_required"
            )
        run_id = next(self._ids)
        data = self._check_run_json(owner, repo, run_id, fields)
        with self._lock:
            self.check_runs[run_id] = data
            self._check_run_owner[run_id] = g.identity.label
            if "actions" in fields:
                self.check_run_actions[run_id] = list(fields["actions"])
        return self._json(data, 201)

    def _get_check_run(self, owner: str, repo: str, check_run_id: int) -> Response:
        data = self.check_runs.get(check_run_id)
        if data is None:
            return self._error(404, "Not Found")
        return self._json(data, 200)

    def _update_check_run(self, owner: str, repo: str, check_run_id: int) -> Response:
        denied = self._require("checks")
        if denied is not None:
            return denied
        data = self.check_runs.get(check_run_id)
        if data is None:
            return self._error(404, "Not Found")
        if self._check_run_owner.get(check_run_id) != g.identity.label:
            # Only the app that created a check run may update it.
            return self._error(403, "Resource not accessible by integration")
        with self._lock:
            self._apply_check_run_fields(data, request.get_json())
            if "actions" in request.get_json():
                self.check_run_actions[check_run_id] = list(request.get_json()["actions"])
        return self._json(data, 200)

    def _list_check_runs_for_ref(self, owner: str, repo: str, ref: str) -> Response:
        """GitHub's list for a commit SHA (branch and tag refs are not modelled): newest first,
        filtered by `check_name` and `status`; `filter=latest` (GitHub's default) keeps the newest
        run of each name. Paginated by `per_page`/`page` with a Link header, as GitHub does."""
        args = request.args
        latest = args.get("filter", "latest")
        status = args.get("status")
        if latest not in ("latest", "all") or status not in (None, "queued", "in_progress", "completed"):
            return self._error(422, "Invalid request: filter must be latest or all, status a check status")
        per_page = min(100, max(1, int(args.get("per_page", 30))))
        page = max(1, int(args.get("page", 1)))
        prefix = f"{self._base()}/repos/{owner}/{repo}/check-runs/"
        with self._lock:
            runs = sorted(self.check_runs.values(), key=lambda run: -int(run["id"]))
        runs = [
            run
            for run in runs
            if run["url"].startswith(prefix)
            and run["head_sha"] == ref
            and args.get("check_name") in (None, run["name"])
            and status in (None, run["status"])
        ]
        if latest == "latest":
            newest: dict[str, dict[str, Any]] = {}
            for run in runs:
                newest.setdefault(run["name"], run)
            runs = list(newest.values())
        chosen = runs[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(runs):
            query = urlencode({**args.to_dict(), "per_page": per_page, "page": page + 1})
            headers["Link"] = f'<{request.base_url}?{query}>; rel="next"'
        return self._json({"total_count": len(runs), "check_runs": chosen}, 200, headers)

    def _collaborator_permission(self, owner: str, repo: str, username: str) -> Response:
        """GitHub's answer for any existing user: on a public repository, someone who is no
        collaborator still reads (permission "read")."""
        permission = self.permissions.get((f"{owner}/{repo}".lower(), username), "read")
        data = self._example("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission")
        data["permission"] = permission
        data["role_name"] = permission
        if isinstance(data.get("user"), dict):
            # The description's example predates its schema's required user.role_name.
            data["user"].update(login=username, role_name=permission)
        return self._json(data, 200)

    def _get_pull(self, owner: str, repo: str, pull_number: int) -> Response:
        data = self.pulls.get((f"{owner}/{repo}".lower(), pull_number))
        if data is None:
            return self._error(404, "Not Found")
        return self._json(data, 200)

    def _create_status(self, owner: str, repo: str, sha: str) -> Response:
        denied = self._require("statuses")
        if denied is not None:
            return denied
        fields = request.get_json()
        base = self._base()
        data = self._example("POST", "/repos/{owner}/{repo}/statuses/{sha}")
        status_id = next(self._ids)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data.update(
            id=status_id,
            node_id=f"SC_{status_id}",
            url=f"{base}/repos/{owner}/{repo}/statuses/{sha}",
            state=fields["state"],
            description=fields.get("description"),
            target_url=fields.get("target_url"),
            context=fields.get("context", "default"),
            created_at=now,
            updated_at=now,
        )
        with self._lock:
            self.statuses.append({"sha": sha, **data})
        return self._json(data, 201)
