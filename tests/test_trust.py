"""The trust table (bridge.core.trust.decide), row by row, over real published payloads.

Every row of the table in SECURITY.md and /work/shared/DESIGN.md is a case here: the event comes from
@octokit/webhooks-examples or the GitLab payloads in tests/payloads, the route from bridge.config, and
each case also checks the StartBuild request that plan_build makes from the grant, since a grant that
plan did not honour would protect nothing.
"""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge import events
from bridge.admission import Accepted, intake
from bridge.config import Route
from bridge.core import trust
from bridge.core.trust import AwaitingApproval, Grant, TrustFacts, decide, fork_tag
from bridge.model import EnvVar, ForkPolicy, Ignored, SourceEvent
from bridge.plan import plan_build
from bridge.routing import build_options
from tests.fixtures import GITLAB_PAYLOADS, github_example

ROUTE_REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web"
FORK_REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web-forks"
SECRET_ENV = (
    EnvVar("NPM_TOKEN", "ci/npm:token", "SECRETS_MANAGER"),
    EnvVar("DB_URL", "/ci/db", "PARAMETER_STORE"),
    EnvVar("MODE", "ci"),
)


def _gitlab(name: str) -> dict[str, Any]:
    return json.loads((GITLAB_PAYLOADS / f"{name}.json").read_text())  # type: ignore[no-any-return]


def _github_fork_pr() -> SourceEvent:
    """The published `synchronize` example with its head moved to a fork (no example has one), and a
    head branch named like the base: the name a fork would pick to overwrite a `{branch}` tag."""
    payload = github_example("pull_request", "synchronize")
    head = payload["pull_request"]["head"]
    head["ref"] = payload["pull_request"]["base"]["ref"]
    head["repo"] = {**head["repo"], "full_name": "mallory/" + head["repo"]["name"]}
    head["repo"]["clone_url"] = f"https://github.com/mallory/{head['repo']['name']}.git"
    result = events.from_github("pull_request", payload)
    assert isinstance(result, SourceEvent)
    assert result.is_fork
    return result


def _github(event: str, action: str | None = None) -> SourceEvent:
    result = events.from_github(event, github_example(event, action))
    assert isinstance(result, SourceEvent)
    return result


def _gitlab_event(header: str, name: str) -> SourceEvent:
    result = events.from_gitlab(header, _gitlab(name))
    assert isinstance(result, SourceEvent)
    return result


GH_PUSH = _github("push")
GH_SAME_PR = _github("pull_request", "synchronize")
GH_TAG = replace(_github("push"), kind="tag", ref="refs/tags/v1.0.0", branch=None, tag="v1.0.0")
GH_FORK_PR = _github_fork_pr()
GL_PUSH = _gitlab_event("Push Hook", "push")
GL_TAG = _gitlab_event("Tag Push Hook", "tag_push")
GL_SAME_MR = _gitlab_event("Merge Request Hook", "merge_request_open")
GL_FORK_MR = _gitlab_event("Merge Request Hook", "merge_request_fork_open")

TRUSTED_EVENTS = [GH_PUSH, GH_SAME_PR, GH_TAG, GL_PUSH, GL_TAG, GL_SAME_MR]
FORK_EVENTS = [GH_FORK_PR, GL_FORK_MR]


def route_for(event: SourceEvent, forks: ForkPolicy, **fields: Any) -> Route:
    clone = fields.pop("clone", False) and event.provider == "gitlab"
    return Route(
        name="web",
        provider=event.provider,
        repositories=("*",),
        project="flex",
        forks=forks,
        image_repository=ROUTE_REPOSITORY,
        image_tag="{branch}",
        env=SECRET_ENV,
        source_mode="clone" if clone else "native",
        clone_token=trust_ref() if clone else None,
        **fields,
    )


def trust_ref() -> Any:
    from bridge.secrets import SecretRef

    return SecretRef("secretsmanager", "ci/gitlab", "token")


def env_of(event: SourceEvent, route: Route, grant: Grant) -> dict[str, tuple[str, str]]:
    options = build_options(route, event)
    kwargs = plan_build(event, options, grant=grant, idempotency_seed="s").start_build_kwargs
    return {v["name"]: (v["value"], v["type"]) for v in kwargs.get("environmentVariablesOverride", [])}


def test_the_fixtures_are_what_the_rows_say() -> None:
    assert not any(event.is_fork for event in TRUSTED_EVENTS)
    assert all(event.is_fork for event in FORK_EVENTS)


# --- row 1: the routed repository's own code, whatever the fork policy ------------------------------


@pytest.mark.parametrize("forks", trust.FORK_POLICIES)
@pytest.mark.parametrize("event", TRUSTED_EVENTS, ids=lambda e: f"{e.provider}-{e.kind}")
def test_own_code_gets_everything_the_route_has(event: SourceEvent, forks: ForkPolicy) -> None:
    route = route_for(event, forks, clone=True)
    grant = decide(event, route, TrustFacts.of(event))
    assert isinstance(grant, Grant)
    assert (grant.source, grant.secrets, grant.clone_token, grant.push, grant.cache_write) == (
        "repository",
        True,
        True,
        True,
        True,
    )
    assert grant.image_repository == ROUTE_REPOSITORY
    assert grant.image_tag == "{branch}"
    assert grant.dropped == ()
    if event.branch is None:
        return  # a tag or release: the {branch} template has no value (plan says so), not a trust matter
    env = env_of(event, route, grant)
    assert env["NPM_TOKEN"][1] == "SECRETS_MANAGER"
    assert env["DB_URL"][1] == "PARAMETER_STORE"
    assert env["IMAGE_URI"][0].startswith(ROUTE_REPOSITORY + ":")
    if event.provider == "gitlab":
        assert env["BRIDGE_CLONE_TOKEN"][1] == "SECRETS_MANAGER"


# --- row 2: a fork under forks = never ----------------------------------------------------------------


@pytest.mark.parametrize("event", FORK_EVENTS, ids=lambda e: e.provider)
def test_a_fork_under_never_is_not_built(event: SourceEvent) -> None:
    outcome = decide(event, route_for(event, "never"), TrustFacts.of(event))
    assert isinstance(outcome, Ignored)
    assert "forks = never" in outcome.reason


# --- rows 3-6: a fork under without-secrets, approve (waiting / approved) and allow --------------------

# (policy, approved?) → (secrets and clone token?)
FORK_ROWS = [
    pytest.param("without-secrets", None, False, id="without-secrets"),
    pytest.param("without-secrets", "head", False, id="without-secrets-approval-changes-nothing"),
    pytest.param("approve", "head", True, id="approve-approved"),
    pytest.param("allow", None, True, id="allow"),
]


@pytest.mark.parametrize("fork_repository", [None, FORK_REPOSITORY])
@pytest.mark.parametrize(("forks", "approval", "trusted"), FORK_ROWS)
@pytest.mark.parametrize("event", FORK_EVENTS, ids=lambda e: e.provider)
def test_a_fork_never_touches_the_trusted_image_or_cache(
    event: SourceEvent, forks: ForkPolicy, approval: str | None, trusted: bool, fork_repository: str | None
) -> None:
    route = route_for(event, forks, clone=True, fork_image_repository=fork_repository)
    approved_sha = event.sha if approval == "head" else None
    grant = decide(event, route, TrustFacts.of(event, approved_sha=approved_sha))
    assert isinstance(grant, Grant)
    assert grant.source == "fork"
    assert grant.secrets is trusted
    assert grant.clone_token is trusted
    assert grant.cache_write is False
    assert grant.image_repository != ROUTE_REPOSITORY
    env = env_of(event, route, grant)
    secret_types = {"SECRETS_MANAGER", "PARAMETER_STORE"}
    assert ({name for name, (_, kind) in env.items() if kind in secret_types} != set()) is trusted
    assert ("BRIDGE_CLONE_TOKEN" in env) is (trusted and event.provider == "gitlab")  # clone mode: GitLab
    assert env["MODE"] == ("ci", "PLAINTEXT")
    if fork_repository is None:
        assert grant.push is False
        assert "IMAGE_URI" not in env
        assert env["BRIDGE_PUSH"] == ("false", "PLAINTEXT")
        assert any("pushing" in line for line in grant.dropped)
    else:
        # The branch is the fork's choice (here the base's own name): it never reaches the tag.
        assert grant.push is True
        assert env["IMAGE_URI"] == (f"{FORK_REPOSITORY}:{fork_tag(event)}", "PLAINTEXT")
        assert fork_tag(event) == f"pr-{event.pr_number}-{event.sha}"
    assert any("layer cache" in line for line in grant.dropped)
    if not trusted:
        assert any("NPM_TOKEN, DB_URL" in line for line in grant.dropped)


@pytest.mark.parametrize("event", FORK_EVENTS, ids=lambda e: e.provider)
def test_a_fork_under_approve_waits_for_an_approval_of_its_head(event: SourceEvent) -> None:
    route = route_for(event, "approve")
    waiting = decide(event, route, TrustFacts.of(event))
    assert isinstance(waiting, AwaitingApproval)
    assert (waiting.route, waiting.sha) == ("web", event.sha)
    assert "waiting for a maintainer" in waiting.reason
    # An approval is for one commit: a push after it needs a new one.
    stale = decide(event, route, TrustFacts.of(event, approved_sha="f" * 40))
    assert isinstance(stale, AwaitingApproval)
    assert "fffffff" in stale.reason
    assert event.short_sha in stale.reason


def test_the_fork_branch_named_like_the_base_cannot_overwrite_its_tag() -> None:
    """Issue 19, item 2: `image_tag = "{branch}"` and a fork branch called `main` must not push `:main`."""
    event = GH_FORK_PR
    assert event.branch == event.base_branch
    for forks in ("without-secrets", "allow"):
        route = route_for(event, forks, fork_image_repository=FORK_REPOSITORY)
        grant = decide(event, route, TrustFacts.of(event))
        assert isinstance(grant, Grant)
        env = env_of(event, route, grant)
        assert env["IMAGE_TAG"][0] != event.branch
        assert env["IMAGE_URI"][0].partition(":")[0] == FORK_REPOSITORY


# --- a private fork: it cannot be cloned without the token that only approval grants ---------------------


def test_a_private_fork_in_clone_mode_says_why_it_cannot_build() -> None:
    private = replace(GL_FORK_MR, source_private=True)
    route = route_for(private, "without-secrets", clone=True)
    outcome = decide(private, route, TrustFacts.of(private))
    assert isinstance(outcome, Ignored)
    assert "private repository" in outcome.reason
    assert "clone token" in outcome.reason
    facts = TrustFacts.of(private, approved_sha=private.sha)
    approved = decide(private, replace(route, forks="approve"), facts)
    assert isinstance(approved, Grant)
    assert approved.clone_token


def test_gitlab_visibility_decides_whether_a_fork_is_private() -> None:
    payload = _gitlab("merge_request_fork_open")
    for level, private in ((0, True), (10, True), (20, False)):
        payload["object_attributes"]["source"]["visibility_level"] = level
        result = events.from_gitlab("Merge Request Hook", payload)
        assert isinstance(result, SourceEvent)
        assert result.source_private is private


def test_github_private_head_repository_is_private() -> None:
    payload = github_example("pull_request", "synchronize")
    payload["pull_request"]["head"]["repo"]["private"] = True
    result = events.from_github("pull_request", payload)
    assert isinstance(result, SourceEvent)
    assert result.source_private


# --- what bridge plan and the logs show ------------------------------------------------------------------


def test_describe_lists_what_is_passed_and_what_is_dropped() -> None:
    grant = decide(GH_FORK_PR, route_for(GH_FORK_PR, "without-secrets"), TrustFacts.of(GH_FORK_PR))
    assert isinstance(grant, Grant)
    lines = grant.describe()
    assert "secret and parameter-store variables: dropped" in lines
    assert "push: no (the image is built, not pushed)" in lines
    assert any(line.startswith("dropped: secret and parameter-store variables NPM_TOKEN") for line in lines)


# --- one decision: nothing else in the package drops or adds secrets --------------------------------------


def test_core_trust_imports_nothing_outside_the_core() -> None:
    tree = ast.parse(Path(trust.__file__).read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.module != "__future__"
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    allowed = {"collections.abc", "dataclasses", "typing", "bridge.model", "bridge.errors"}
    assert imported <= allowed | {name for name in imported if name.startswith("bridge.core")}


def test_no_other_module_decides_on_forks() -> None:
    """`is_fork`/`forks` policy decisions live in core.trust (routing may only refuse forks = never
    early, which decide repeats)."""
    package = Path(trust.__file__).resolve().parents[1]
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "trust.py" or path.parent.name == "core":
            continue
        text = path.read_text()
        for needle in ("include_secrets", 'forks == "allow"', 'forks == "without-secrets"'):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []


@pytest.mark.parametrize(
    ("forks", "fork_repository", "reads"),
    [
        ("without-secrets", FORK_REPOSITORY, False),
        ("without-secrets", None, False),
        ("allow", None, False),  # not pushed: no registry login, so nothing to read with
        ("allow", FORK_REPOSITORY, True),
    ],
)
def test_only_a_trusted_pushing_fork_reads_the_cache_and_none_writes_it(
    forks: ForkPolicy, fork_repository: str | None, reads: bool
) -> None:
    event = GH_FORK_PR
    route = route_for(event, forks, fork_image_repository=fork_repository)
    grant = decide(event, route, TrustFacts.of(event))
    assert isinstance(grant, Grant)
    assert (grant.cache_read, grant.cache_write) == (reads, False)
    env = env_of(event, route, grant)
    assert ("BRIDGE_CACHE_REF" in env) is reads
    if reads:
        assert env["BRIDGE_CACHE_WRITE"] == ("0", "PLAINTEXT")
        assert env["BRIDGE_CACHE_REF"][0].startswith(ROUTE_REPOSITORY + ":")  # read, never pushed


def test_the_repository_itself_reads_and_writes_the_cache() -> None:
    route = route_for(GH_SAME_PR, "never")
    grant = decide(GH_SAME_PR, route, TrustFacts.of(GH_SAME_PR))
    assert isinstance(grant, Grant)
    assert env_of(GH_SAME_PR, route, grant)["BRIDGE_CACHE_WRITE"] == ("1", "PLAINTEXT")


OVERRIDES = {
    "serviceRoleOverride": "arn:aws:iam::123456789012:role/deploy",
    "cacheOverride": {"type": "S3", "location": "trusted-cache/web"},
    "artifactsOverride": {"type": "S3", "location": "releases"},
    "queuedTimeoutInMinutesOverride": 30,
}


@pytest.mark.parametrize(
    ("event", "forks", "approved", "passed"),
    [
        (GH_SAME_PR, "never", False, set(OVERRIDES)),
        (GH_FORK_PR, "without-secrets", False, {"queuedTimeoutInMinutesOverride"}),
        (GH_FORK_PR, "allow", False, {"queuedTimeoutInMinutesOverride", "serviceRoleOverride"}),
        (GH_FORK_PR, "approve", True, {"queuedTimeoutInMinutesOverride", "serviceRoleOverride"}),
    ],
)
def test_a_forks_build_gets_only_the_route_overrides_its_trust_allows(
    event: SourceEvent, forks: ForkPolicy, approved: bool, passed: set[str]
) -> None:
    route = route_for(event, forks, overrides=OVERRIDES)
    grant = decide(event, route, TrustFacts.of(event, approved_sha=event.sha if approved else None))
    assert isinstance(grant, Grant)
    kwargs = plan_build(
        event, build_options(route, event), grant=grant, idempotency_seed="s"
    ).start_build_kwargs
    assert {name for name in OVERRIDES if name in kwargs} == passed
    assert set(grant.withheld_overrides) == set(OVERRIDES) - passed
    if grant.withheld_overrides:
        assert any("overrides" in line for line in grant.describe())


# --- re-runs: the original build's route, by name, only while it still admits the event ------------------


def _rerun_config(dev_branches: list[str]) -> Any:
    from bridge.config import parse_config

    text = f"""
[github]
token = "env:T"
webhook_secrets = ["env:W"]

[[routes]]
name = "prod"
provider = "github"
repositories = ["*"]
branches = ["release"]
events = ["push", "rerun"]
project = "prod"
env = {{ DEPLOY_KEY = "secretsmanager:prod/deploy" }}

[[routes]]
name = "dev"
provider = "github"
repositories = ["*"]
branches = {json.dumps(dev_branches)}
events = ["push", "rerun"]
project = "dev"
"""
    return parse_config(text, base_dir=Path("/tmp"))


def _rerun_of(event: SourceEvent) -> SourceEvent:
    return replace(event, kind="rerun", event_name="check_run", action="rerequested", branch=None, ref=None)


def test_a_rerun_builds_on_the_original_route_not_the_first_route_taking_reruns() -> None:
    """Issue 19, item 5: a build made on `dev` (branches *) re-run must not become a `prod` build."""
    config = _rerun_config(["*"])
    original = replace(GH_SAME_PR, kind="push", branch="feature", ref="refs/heads/feature", pr_number=None)
    outcome = intake(config, _rerun_of(original), original_build=lambda rerun: ("dev", original))
    assert isinstance(outcome, Accepted)
    assert outcome.route.name == "dev"
    assert outcome.route.project == "dev"


def test_a_rerun_whose_route_is_gone_or_no_longer_admits_it_builds_nothing() -> None:
    original = replace(GH_SAME_PR, kind="push", branch="feature", ref="refs/heads/feature", pr_number=None)
    gone = intake(_rerun_config(["*"]), _rerun_of(original), original_build=lambda rerun: ("qa", original))
    assert isinstance(gone, Ignored)
    assert "routes[qa], which no longer exists" in gone.reason
    narrowed = intake(
        _rerun_config(["main"]), _rerun_of(original), original_build=lambda rerun: ("dev", original)
    )
    assert isinstance(narrowed, Ignored)
    assert "routes[dev] no longer builds it" in narrowed.reason
    unknown = intake(_rerun_config(["*"]), _rerun_of(original), original_build=lambda rerun: None)
    assert isinstance(unknown, Ignored)
    assert "has not built" in unknown.reason
