"""Route matching and route → BuildOptions, over a table of events built directly as SourceEvents."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bridge.config import Route, SecretRef
from bridge.model import EnvVar, Ignored, SourceEvent
from bridge.routing import build_options, glob_match, match_route

SHA = "0123456789abcdef0123456789abcdef01234567"


def event(
    provider: str = "github", kind: str = "push", repository: str = "acme/web", **fields: Any
) -> SourceEvent:
    server = "https://github.com" if provider == "github" else "https://gitlab.example.com"
    base: dict[str, Any] = {
        "provider": provider,
        "kind": kind,
        "event_name": kind,
        "action": None,
        "repository": repository,
        "clone_url": f"{server}/{repository}.git",
        "sha": SHA,
        "ref": None,
        "server_url": server,
    }
    base.update(fields)
    return SourceEvent(**base)


def push(branch: str, repository: str = "acme/web", provider: str = "github") -> SourceEvent:
    return event(provider, "push", repository, branch=branch, ref=f"refs/heads/{branch}")


def tag(name: str, repository: str = "acme/web", provider: str = "github", kind: str = "tag") -> SourceEvent:
    return event(provider, kind, repository, tag=name, ref=f"refs/tags/{name}")


def change(
    base: str,
    *,
    repository: str = "acme/web",
    provider: str = "github",
    draft: bool = False,
    fork: bool = False,
    head: str = "feature/x",
) -> SourceEvent:
    kind = "pull_request" if provider == "github" else "merge_request"
    return event(
        provider,
        kind,
        repository,
        action="opened",
        branch=head,
        base_branch=base,
        pr_number=7,
        is_draft=draft,
        is_fork=fork,
        head_repository="someone/web" if fork else repository,
        ref="refs/pull/7/head",
    )


RELEASE = Route(
    name="release",
    provider="github",
    repositories=("acme/web",),
    project="release-builds",
    events=("tag", "release"),
    tags=("v*", "!v*-rc*"),
)
WEB = Route(
    name="web",
    provider="github",
    repositories=("acme/*", "!acme/legacy-*"),
    project="codebuild-flex",
    events=("push", "pull_request", "rerun"),
    branches=("main", "release/*"),
)
OPEN = Route(
    name="open",
    provider="github",
    repositories=("oss/*",),
    project="oss",
    events=("pull_request",),
    drafts=True,
    forks="without-secrets",
)
TRUSTED = Route(
    name="trusted",
    provider="github",
    repositories=("inner/*",),
    project="inner",
    events=("pull_request",),
    forks="allow",
)
GITLAB = Route(
    name="gl",
    provider="gitlab",
    repositories=("group/*",),
    project="gl",
    events=("push", "merge_request", "tag"),
    branches=("main",),
    tags=("v[0-9]*",),
)
ROUTES = (RELEASE, WEB, OPEN, TRUSTED, GITLAB)

CASES: list[tuple[str, SourceEvent, str]] = [
    # repositories: globs, exclusions, case
    ("push to main", push("main"), "web"),
    ("glob matches any acme repo", push("main", "acme/api"), "web"),
    ("repository case is ignored", push("main", "ACME/Web"), "web"),
    (
        "excluded repository",
        push("main", "acme/legacy-app"),
        "no route for github repository acme/legacy-app",
    ),
    ("exclusion ignores case too", push("main", "Acme/Legacy-App"), "no route for github repository"),
    ("unknown owner", push("main", "other/web"), "no route for github repository other/web"),
    (
        "provider must match",
        push("main", "acme/web", provider="gitlab"),
        "no route for gitlab repository acme/web",
    ),
    ("star spans slashes", push("main", "group/sub/project", provider="gitlab"), "gl"),
    # branches
    ("release branch glob", push("release/1.x"), "web"),
    ("nested release branch", push("release/1.x/hotfix"), "web"),
    ("branch not listed", push("feature/x"), "branch feature/x not in routes[web].branches"),
    ("branch case matters", push("Main"), "branch Main not in routes[web].branches"),
    ("gitlab branch", push("main", "group/app", provider="gitlab"), "gl"),
    (
        "gitlab other branch",
        push("dev", "group/app", provider="gitlab"),
        "branch dev not in routes[gl].branches",
    ),
    # tags vs branches
    ("tag goes to the tag route", tag("v1.2.0"), "release"),
    ("release event on the tag route", tag("v1.2.0", kind="release"), "release"),
    ("tag exclusion", tag("v1.2.0-rc1"), "tag v1.2.0-rc1 not in routes[release].tags"),
    ("tag not matching", tag("nightly"), "tag nightly not in routes[release].tags"),
    ("tag on a repo with no tag route", tag("v1", "acme/api"), "tag events are not in routes[web].events"),
    ("gitlab tag", tag("v2.0", "group/app", provider="gitlab"), "gl"),
    (
        "gitlab tag not matching",
        tag("x2.0", "group/app", provider="gitlab"),
        "tag x2.0 not in routes[gl].tags",
    ),
    # pull requests: the TARGET branch decides
    ("pr into main", change("main"), "web"),
    ("pr into release branch", change("release/2"), "web"),
    ("pr into a feature branch", change("dev", head="main"), "target branch dev of pull request not in"),
    ("gitlab mr into main", change("main", repository="group/app", provider="gitlab"), "gl"),
    (
        "gitlab mr elsewhere",
        change("dev", repository="group/app", provider="gitlab"),
        "target branch dev of merge request not in routes[gl].branches",
    ),
    # drafts
    ("draft pr", change("main", draft=True), "draft pull requests are not built by routes[web]"),
    ("draft pr where drafts are on", change("main", repository="oss/lib", draft=True), "open"),
    (
        "draft gitlab mr",
        change("main", repository="group/app", provider="gitlab", draft=True),
        "draft merge requests are not built by routes[gl]",
    ),
    # forks under each policy
    ("fork pr, forks = never", change("main", fork=True), "fork pull request: routes[web].forks = never"),
    ("fork pr, without-secrets", change("main", repository="oss/lib", fork=True), "open"),
    ("fork pr, allow", change("main", repository="inner/tool", fork=True), "trusted"),
    (
        "fork gitlab mr, never",
        change("main", repository="group/app", provider="gitlab", fork=True),
        "fork merge request: routes[gl].forks = never",
    ),
    # events
    ("push where only prs are built", push("main", "oss/lib"), "push events are not in routes[open].events"),
    ("rerun skips branch filters", event("github", "rerun", "acme/web", branch="feature/x"), "web"),
    ("rerun on a repo without reruns", event("github", "rerun", "oss/lib"), "rerun events are not in"),
    ("push without a branch", event("github", "push", "acme/web"), "the push event names no branch"),
    ("manual events are not routed", event("github", "manual", "acme/web", branch="main"), "manual events"),
]


@pytest.mark.parametrize(("case", "source", "expected"), CASES, ids=[c[0] for c in CASES])
def test_match_route(case: str, source: SourceEvent, expected: str) -> None:
    result = match_route(source, ROUTES)
    if isinstance(result, Route):
        assert result.name == expected, case
    else:
        assert isinstance(result, Ignored)
        assert expected in result.reason, (case, result.reason)
        assert " " in expected  # a reason, never a bare route name


def test_the_first_matching_route_wins() -> None:
    narrow = replace(WEB, name="api-only", repositories=("acme/api",))
    assert match_route(push("main", "acme/api"), (narrow, WEB)) == narrow
    assert match_route(push("main", "acme/api"), (WEB, narrow)) == WEB
    assert match_route(push("main", "acme/web"), (narrow, WEB)) == WEB


def test_the_deepest_reason_wins_over_route_order() -> None:
    # The first route fails on the repository, the second gets as far as the fork check.
    routes = (replace(WEB, name="a", repositories=("other/*",)), replace(WEB, name="b"))
    result = match_route(change("main", fork=True), routes)
    assert result == Ignored("fork pull request: routes[b].forks = never")
    # Among equally deep failures the first route's reason is kept.
    routes = (replace(WEB, name="a"), replace(WEB, name="b"))
    assert match_route(push("dev"), routes) == Ignored("branch dev not in routes[a].branches")


def test_no_routes_says_so() -> None:
    result = match_route(push("main"), ())
    assert isinstance(result, Ignored)
    assert "no routes are configured" in result.reason


@pytest.mark.parametrize(
    ("name", "patterns", "ignore_case", "expected"),
    [
        ("acme/web", ("acme/*",), False, True),
        ("acme/web", ("!acme/web",), False, False),  # only exclusions match nothing
        ("acme/web", ("*", "!acme/w*"), False, False),
        ("acme/web", ("*", "!acme/x*"), False, True),
        ("Acme/Web", ("acme/web",), False, False),
        ("Acme/Web", ("acme/web",), True, True),
        ("Acme/Web", ("*", "!acme/*"), True, False),
        ("a/b/c", ("a/*",), False, True),
        ("v1", ("v[0-9]",), False, True),
        ("vx", ("v[0-9]",), False, False),
        ("release/1", ("release/?",), False, True),
    ],
)
def test_glob_match(name: str, patterns: tuple[str, ...], ignore_case: bool, expected: bool) -> None:
    assert glob_match(name, patterns, ignore_case=ignore_case) is expected


# --- build_options ---------------------------------------------------------------------------------

FULL = Route(
    name="full",
    provider="gitlab",
    repositories=("group/*",),
    project="gl-project",
    forks="without-secrets",
    source_mode="clone",
    clone_token=SecretRef("secretsmanager", "bridge/gitlab", "token"),
    image_repository="123456789012.dkr.ecr.eu-west-1.amazonaws.com/app",
    image_tag="{short_sha}",
    buildspec="version: 0.2\nphases: {}\n",
    env=(EnvVar("A", "1"), EnvVar("B", "ci/npm:token", "SECRETS_MANAGER")),
    compute_type="BUILD_GENERAL1_LARGE",
    build_image="aws/codebuild/standard:7.0",
    privileged_mode=True,
    timeout_minutes=45,
    overrides={"queuedTimeoutInMinutesOverride": 30},
)


def test_build_options_carry_every_route_setting() -> None:
    options = build_options(FULL, push("main", "group/app", provider="gitlab"))
    assert options.project_name == "gl-project"
    assert options.source_mode == "clone"
    assert options.clone_token_ref == "secretsmanager:bridge/gitlab#token"
    assert options.image_repository == FULL.image_repository
    assert options.image_tag == "{short_sha}"
    assert options.buildspec == FULL.buildspec
    assert options.env_vars == FULL.env
    assert options.compute_type == "BUILD_GENERAL1_LARGE"
    assert options.build_image == "aws/codebuild/standard:7.0"
    assert options.privileged_mode is True
    assert options.timeout_minutes == 45
    assert dict(options.extra_overrides) == {"queuedTimeoutInMinutesOverride": 30}


def test_native_mode_has_no_clone_token() -> None:
    options = build_options(replace(WEB, clone_token=None), push("main"))
    assert options.source_mode == "native"
    assert options.clone_token_ref is None
    assert options.env_vars == ()
    assert dict(options.extra_overrides) == {}
