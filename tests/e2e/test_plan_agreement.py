"""`bridge plan` and the server decide every delivery of the test corpora the same way.

Every published GitHub webhook example (@octokit/webhooks-examples) and every GitLab payload in
tests/payloads (and each GitLab payload again as if sent from a host outside `repository_hosts`) goes
to a real `bridge serve` as a signed delivery, and through `bridge plan` with the same delivery id.
They must agree on the outcome (built, ignored, waiting for approval, refused as bad input) and its
reason, and for a build on the route and the exact StartBuild request the CodeBuild double received.
A `bridge plan` that assembled its own decision (skipping the host check, another route order, its
own trust rules) or its own StartBuild request disagrees on some payload here.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.cli import main
from bridge.errors import BridgeError
from bridge.events import from_github
from tests.e2e.support import (
    GITHUB_SECRET,
    GITLAB_WEBHOOK_TOKEN,
    REGION,
    Delivery,
    github_delivery,
    gitlab_delivery,
)
from tests.e2e.test_server import Server, serve, wait_for
from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab
from tests.fixtures import GITLAB_PAYLOADS, _examples_by_event

GITLAB_EVENTS = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "note": "Note Hook",
}
FOREIGN_HOST = "gitlab.elsewhere.example"
START_TIMEOUT = 120.0


def config(github_url: str, gitlab_url: str) -> str:
    """Routes that build most of the corpora, in an order where the first match matters, with forks
    built, refused and waiting for approval."""
    return f"""
[server]
state_path = "state.sqlite3"
threads = 4
max_build_starts_per_second = 100

[aws]
region = "{REGION}"

[github]
api_url = "{github_url}"
app_id = 31337
private_key = "secretsmanager:bridge/github-app-key"
webhook_secrets = ["secretsmanager:bridge/github-webhook"]
repository_hosts = ["github.com"]

[gitlab]
url = "{gitlab_url}"
token = "secretsmanager:bridge/gitlab-token"
webhook_tokens = ["env:GITLAB_WEBHOOK_TOKEN"]
repository_hosts = ["example.com"]

[[routes]]
name = "hello"
provider = "github"
repositories = ["Codertocat/*"]
events = ["push", "pull_request", "rerun"]
branches = ["master"]
forks = "never"
project = "hello-build"

[[routes]]
name = "github-any"
provider = "github"
repositories = ["*", "!octo-org/*"]
events = ["push", "tag", "pull_request", "release", "rerun"]
branches = ["*"]
tags = ["*"]
forks = "approve"
project = "any-build"
image_repository = "123456789012.dkr.ecr.{REGION}.amazonaws.com/any"

[[routes]]
name = "diaspora"
provider = "gitlab"
repositories = ["mike/*"]
events = ["push", "merge_request"]
branches = ["master"]
forks = "never"
project = "gl-build"

[[routes]]
name = "gitlab-any"
provider = "gitlab"
repositories = ["*"]
events = ["push", "tag", "merge_request"]
branches = ["*"]
tags = ["*"]
forks = "approve"
project = "gl-any"
"""


@dataclass(frozen=True)
class Case:
    name: str  # for messages: event and example
    provider: str
    event: str
    payload: dict[str, Any]
    delivery_id: str
    rerun: bool

    def delivery(self) -> Delivery:
        if self.provider == "github":
            return github_delivery(
                self.event, self.payload, secret=GITHUB_SECRET, delivery_id=self.delivery_id
            )
        return gitlab_delivery(self.payload, event=self.event, idempotency_key=self.delivery_id)


@dataclass(frozen=True)
class Outcome:
    kind: str  # build | ignored | waiting | invalid | approval (plan only: judged with the provider's API)
    reason: str = ""
    route: str = ""
    request: Any = None


def _is_rerun(event: str, payload: dict[str, Any]) -> bool:
    try:
        parsed = from_github(event, payload, api_url="https://api.github.com")
    except BridgeError:
        return False
    return getattr(parsed, "kind", None) == "rerun"


def _moved(payload: dict[str, Any]) -> dict[str, Any]:
    """The same payload as if its project lived on a host this bridge is not set up for."""
    return json.loads(json.dumps(payload).replace("http://example.com/", f"http://{FOREIGN_HOST}/"))  # type: ignore[no-any-return]


def corpus() -> list[Case]:
    cases: list[Case] = []
    for event, examples in sorted(_examples_by_event().items()):
        for index, example in enumerate(examples):
            payload = json.loads(json.dumps(example))
            if isinstance(payload.get("installation"), dict):
                payload["installation"]["id"] = 4242  # the fake GitHub's installation
            name = f"github {event} #{index}"
            cases.append(
                Case(name, "github", event, payload, f"agree-gh-{len(cases)}", _is_rerun(event, payload))
            )
    for path in sorted(GITLAB_PAYLOADS.glob("*.json")):
        payload = json.loads(path.read_text())
        event = GITLAB_EVENTS[str(payload["object_kind"])]
        for label, body in ((path.stem, payload), (f"{path.stem} from {FOREIGN_HOST}", _moved(payload))):
            cases.append(Case(f"gitlab {label}", "gitlab", event, body, f"agree-gl-{len(cases)}", False))
    # A re-run finds the build it re-runs in the server's store, which `bridge plan` has not got: they
    # go first, while the server has built nothing, so both see "never built".
    return sorted(cases, key=lambda case: not case.rerun)


def planned(case: Case, config_path: Path, workdir: Path) -> Outcome:
    payload_path = workdir / "payload.json"
    payload_path.write_text(json.dumps(case.payload))
    out, err = io.StringIO(), io.StringIO()
    argv = ["plan", "--config", str(config_path), "--provider", case.provider, "--event", case.event]
    argv += ["--payload", str(payload_path), "--delivery-id", case.delivery_id]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code == 2:
        return Outcome("invalid")
    answer = json.loads(out.getvalue())
    if code == 0:
        (route,) = [
            line.removeprefix("route: ") for line in err.getvalue().splitlines() if line.startswith("route: ")
        ]
        return Outcome("build", route=route, request=answer)
    assert code == 3, f"{case.name}: bridge plan exited {code}: {err.getvalue()}"
    if "waiting" in answer:
        return Outcome("waiting", answer["waiting"])
    if "approval" in answer:
        return Outcome("approval", answer["approval"])
    return Outcome("ignored", answer["ignored"])


def served(case: Case, server: Server) -> Outcome:
    status, body = server.post(case.delivery())
    if status == 202:
        return Outcome("build", route=body["route"])
    if status == 400:
        return Outcome("invalid")
    assert status == 200, f"{case.name}: the server answered {status} {body}"
    if "waiting" in body:
        return Outcome("waiting", body["waiting"])
    if body.get("pong"):
        return Outcome("ignored", "ping: the webhook is set up; nothing to build")
    assert "ignored" in body, f"{case.name}: the server answered {body}"
    return Outcome("ignored", body["ignored"])


@contextlib.contextmanager
def bridge(
    tmp_path: Path,
    aws_env: dict[str, str],
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> Iterator[tuple[Server, Path]]:
    with serve(tmp_path, aws_env, github_api, gitlab_api, config(github_api.url, gitlab_api.url)) as server:
        yield server, server.config_path


def test_plan_and_server_agree_on_every_corpus_payload(
    tmp_path: Path,
    aws_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    gitlab_api: FakeGitLab,
) -> None:
    cases = corpus()
    assert GITLAB_WEBHOOK_TOKEN
    disagreements: list[str] = []
    outcomes: dict[str, tuple[Case, Outcome, Outcome]] = {}
    with bridge(tmp_path, aws_env, github_api, gitlab_api) as (server, config_path):
        for case in cases:
            outcomes[case.delivery_id] = (case, planned(case, config_path, tmp_path), served(case, server))
        plans = {p.request["idempotencyToken"]: d for d, (_, p, _s) in outcomes.items() if p.kind == "build"}
        builds = sum(1 for _, _p, s in outcomes.values() if s.kind == "build")

        def started() -> bool:
            return len(codebuild_double.calls("StartBuild")) >= builds

        wait_for(started, START_TIMEOUT, f"{builds} StartBuild requests", server.log_path)
        requests = {
            call.params["idempotencyToken"]: call.params for call in codebuild_double.calls("StartBuild")
        }
    kinds: dict[str, int] = {}
    for case, plan, server_outcome in outcomes.values():
        kinds[server_outcome.kind] = kinds.get(server_outcome.kind, 0) + 1
        if plan.kind == "approval":
            # Read as an approval by both; the fake APIs let nobody approve, so the server refuses it.
            kinds["approval"] = kinds.get("approval", 0) + 1
            if server_outcome.kind != "ignored":
                disagreements.append(f"{case.name}: plan {plan} / server {server_outcome}")
            continue
        if (plan.kind, plan.reason, plan.route) != (
            server_outcome.kind,
            server_outcome.reason,
            server_outcome.route,
        ):
            disagreements.append(f"{case.name}: plan {plan} / server {server_outcome}")
        elif plan.kind == "build":
            sent = requests.get(plan.request["idempotencyToken"])
            if sent != plan.request:
                disagreements.append(f"{case.name}: plan's StartBuild {plan.request}\n  server's {sent}")
    extra = set(requests) - set(plans)
    if extra:
        disagreements.append(f"the server started builds bridge plan did not plan: {sorted(extra)}")
    assert not disagreements, "\n".join(disagreements)
    # The corpora exercise every outcome, so an agreement cannot come from deciding nothing.
    assert {"build", "ignored", "waiting", "approval"} <= set(kinds), kinds
