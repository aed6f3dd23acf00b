"""plan.py: every StartBuild shape it can produce, proven against botocore's own CodeBuild model.

The packaged buildspecs are parsed with yaml.safe_load and also *run* with bash against fake
docker/aws/git executables, so "a ref name can never inject shell" and "the clone token never
appears on a command line" are observed behaviour, not a reading of the YAML.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from botocore.model import StructureShape
from botocore.session import get_session
from botocore.validate import ParamValidator
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.trust import Policy, TrustFacts, granted
from bridge.errors import ConfigError, InputError
from bridge.model import BuildOptions, EnvVar, ForkPolicy, SourceEvent
from bridge.plan import (
    compose_image_uri,
    idempotency_token,
    looks_like_credential,
    packaged_buildspec,
    parse_bool,
    parse_env_vars,
    plan_build,
    render_image_tag,
    start_build_batch_kwargs,
)

DATA = Path(__file__).resolve().parent.parent / "bridge" / "data"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
HEAD_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
ECR_REPO = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-app"
T = TypeVar("T")
SEED = "delivery-72d3162e-cc78-11e3-81ab-4c9367dc0958"


def _start_build_shape() -> StructureShape:
    shape = get_session().get_service_model("codebuild").operation_model("StartBuild").input_shape
    assert shape is not None
    return shape


_START_BUILD_SHAPE = _start_build_shape()


def assert_valid_start_build(kwargs: Mapping[str, Any]) -> None:
    """botocore validates exactly what boto3 would send; any shape it rejects fails the test."""
    report = ParamValidator().validate(dict(kwargs), _START_BUILD_SHAPE)
    assert not report.has_errors(), report.generate_report()


# --- events, built directly (events.py is somebody else's) -----------------------------------------

GH_PUSH = SourceEvent(
    provider="github",
    kind="push",
    event_name="push",
    action=None,
    repository="octo/app",
    clone_url="https://github.com/octo/app.git",
    sha=SHA,
    ref="refs/heads/main",
    server_url="https://github.com",
    branch="main",
)
GHES_PUSH = replace(
    GH_PUSH,
    clone_url="https://github.example.com/octo/app.git",
    server_url="https://github.example.com",
    api_url="https://github.example.com/api/v3",
)
GH_TAG = replace(GH_PUSH, kind="tag", ref="refs/tags/v1.2.0", branch=None, tag="v1.2.0")
GH_FORK_PR = replace(
    GH_PUSH,
    kind="pull_request",
    event_name="pull_request",
    action="synchronize",
    clone_url="https://github.com/forker/app.git",
    sha=HEAD_SHA,
    ref="refs/pull/7/head",
    branch="feature/x",
    pr_number=7,
    base_branch="main",
    base_repository="octo/app",
    head_repository="forker/app",
    is_fork=True,
)
GH_MANUAL_NO_CLONE_URL = replace(GH_PUSH, kind="manual", event_name="workflow_dispatch", clone_url="")
GL_PUSH = SourceEvent(
    provider="gitlab",
    kind="push",
    event_name="Push Hook",
    action=None,
    repository="group/sub/app",
    clone_url="https://gitlab.com/group/sub/app.git",
    sha=SHA,
    ref="refs/heads/main",
    server_url="https://gitlab.com",
    branch="main",
    project_id=42,
)
GL_SELF_MR = replace(
    GL_PUSH,
    kind="merge_request",
    event_name="Merge Request Hook",
    action="update",
    clone_url="https://gitlab.example.com/group/app.git",
    repository="group/app",
    server_url="https://gitlab.example.com",
    sha=HEAD_SHA,
    ref=None,
    branch="feat/login",
    pr_number=12,
)

ALL_EVENTS = [GH_PUSH, GHES_PUSH, GH_TAG, GH_FORK_PR, GH_MANUAL_NO_CLONE_URL, GL_PUSH, GL_SELF_MR]
CLONE = BuildOptions(
    project_name="builder",
    source_mode="clone",
    clone_token_ref="secretsmanager:gitlab/clone#token",
    image_repository=ECR_REPO,
)


def outcome(call: Callable[[], T]) -> T | InputError:
    """The result, or the InputError: any other exception escapes and fails the property."""
    try:
        return call()
    except InputError as error:
        return error


def env_of(kwargs: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    pairs = [(v["name"], (v["value"], v["type"])) for v in kwargs.get("environmentVariablesOverride", [])]
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"duplicate variable names: {names}"
    return dict(pairs)


# --- source selection --------------------------------------------------------------------------------

SOURCE_CASES = [
    pytest.param(
        GH_PUSH,
        BuildOptions("p"),
        {"sourceTypeOverride": "GITHUB", "sourceLocationOverride": GH_PUSH.clone_url, "sourceVersion": SHA},
        id="github.com-push",
    ),
    pytest.param(
        GHES_PUSH,
        BuildOptions("p"),
        {"sourceTypeOverride": "GITHUB_ENTERPRISE", "sourceLocationOverride": GHES_PUSH.clone_url},
        id="ghes-push",
    ),
    pytest.param(
        GH_TAG,
        BuildOptions("p"),
        {"sourceTypeOverride": "GITHUB", "sourceVersion": SHA},
        id="github-tag-builds-the-sha",
    ),
    pytest.param(
        GH_FORK_PR,
        BuildOptions("p"),
        {
            "sourceTypeOverride": "GITHUB",
            "sourceLocationOverride": "https://github.com/forker/app.git",
            "sourceVersion": HEAD_SHA,
        },
        id="fork-pr-builds-head-sha-from-fork",
    ),
    pytest.param(
        GH_MANUAL_NO_CLONE_URL,
        BuildOptions("p"),
        {"sourceLocationOverride": "https://github.com/octo/app.git"},
        id="no-clone-url-falls-back-to-server-and-repo",
    ),
    pytest.param(
        replace(GH_MANUAL_NO_CLONE_URL, server_url="https://github.example.com/"),
        BuildOptions("p"),
        {
            "sourceTypeOverride": "GITHUB_ENTERPRISE",
            "sourceLocationOverride": "https://github.example.com/octo/app.git",
        },
        id="fallback-location-with-trailing-slash-server",
    ),
    pytest.param(
        GL_PUSH,
        BuildOptions("p"),
        {"sourceTypeOverride": "GITLAB", "sourceLocationOverride": GL_PUSH.clone_url, "sourceVersion": SHA},
        id="gitlab.com-native",
    ),
    pytest.param(
        GL_SELF_MR,
        BuildOptions("p"),
        {"sourceTypeOverride": "GITLAB_SELF_MANAGED", "sourceVersion": HEAD_SHA},
        id="gitlab-self-managed-mr",
    ),
    pytest.param(
        GH_PUSH,
        BuildOptions("p", source_location="https://github.com/other/repo.git", source_type="GITHUB"),
        {"sourceLocationOverride": "https://github.com/other/repo.git", "sourceVersion": SHA},
        id="location-override-keeps-sourceVersion",
    ),
    pytest.param(
        GH_PUSH,
        BuildOptions("p", source_location="my-bucket/src.zip", source_type="S3", source_version="3HL4kqtJ"),
        {
            "sourceTypeOverride": "S3",
            "sourceLocationOverride": "my-bucket/src.zip",
            "sourceVersion": "3HL4kqtJ",
        },
        id="type-override-keeps-given-sourceVersion",
    ),
    pytest.param(
        GH_FORK_PR,
        BuildOptions("p", source_version="pr/7"),
        {"sourceVersion": "pr/7"},
        id="explicit-source-version",
    ),
]


@pytest.mark.parametrize(("event", "options", "expected"), SOURCE_CASES)
def test_source_fields(event: SourceEvent, options: BuildOptions, expected: dict[str, str]) -> None:
    kwargs = plan_build(event, options, idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)
    assert kwargs["projectName"] == options.project_name
    assert {key: kwargs[key] for key in expected} == expected
    assert "buildspecOverride" not in kwargs  # no image, no buildspec: the project's own


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: f"{e.server_url}-{e.kind}")
def test_event_context_variables(event: SourceEvent) -> None:
    context = {"GITHUB_RUN_ID": "1658821493", "GITHUB_WORKFLOW": "ci"}
    kwargs = plan_build(
        event, BuildOptions("p"), idempotency_seed=SEED, context_env=context
    ).start_build_kwargs
    assert_valid_start_build(kwargs)
    env = env_of(kwargs)
    expected = {
        "GITHUB_RUN_ID": ("1658821493", "PLAINTEXT"),
        "GITHUB_WORKFLOW": ("ci", "PLAINTEXT"),
        "BRIDGE_REPOSITORY": (event.repository, "PLAINTEXT"),
        "BRIDGE_SHA": (event.sha, "PLAINTEXT"),
        "BRIDGE_EVENT": (event.kind, "PLAINTEXT"),
    }
    if event.ref:
        expected["BRIDGE_REF"] = (event.ref, "PLAINTEXT")
    if event.pr_number is not None:
        expected["BRIDGE_PR_NUMBER"] = (str(event.pr_number), "PLAINTEXT")
    assert env == expected
    assert list(env)[:2] == ["GITHUB_RUN_ID", "GITHUB_WORKFLOW"]  # context first


# --- GitLab clone mode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_ref", "codebuild_value"),
    [
        ("secretsmanager:gitlab/clone#token", "gitlab/clone:token"),
        ("secretsmanager:gitlab/clone", "gitlab/clone"),
        ("gitlab/clone", "gitlab/clone"),
        (
            "secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:gl-AbCdEf#token",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gl-AbCdEf:token",
        ),
        ("secretsmanager:gitlab/clone:token:AWSCURRENT:", "gitlab/clone:token:AWSCURRENT:"),
    ],
)
@pytest.mark.parametrize("event", [GL_PUSH, GL_SELF_MR], ids=["gitlab.com", "self-managed"])
def test_clone_mode(event: SourceEvent, token_ref: str, codebuild_value: str) -> None:
    request = plan_build(event, replace(CLONE, clone_token_ref=token_ref), idempotency_seed=SEED)
    kwargs = request.start_build_kwargs
    assert_valid_start_build(kwargs)
    assert kwargs["sourceTypeOverride"] == "NO_SOURCE"
    assert "sourceLocationOverride" not in kwargs
    assert "sourceVersion" not in kwargs
    assert kwargs["buildspecOverride"] == (DATA / "buildspec-gitlab-clone.yml").read_text()
    env = env_of(kwargs)
    assert env["BRIDGE_CLONE_URL"] == (event.clone_url, "PLAINTEXT")
    assert env["BRIDGE_COMMIT_SHA"] == (event.sha, "PLAINTEXT")
    assert env["BRIDGE_CLONE_TOKEN"] == (codebuild_value, "SECRETS_MANAGER")
    assert env["IMAGE_URI"] == (request.image_uri, "PLAINTEXT")


def test_clone_mode_with_own_buildspec_keeps_clone_variables() -> None:
    buildspec = "version: 0.2\nphases:\n  build:\n    commands:\n      - make\n"
    kwargs = plan_build(
        GL_PUSH, replace(CLONE, buildspec=buildspec, image_repository=None), idempotency_seed=SEED
    ).start_build_kwargs
    assert_valid_start_build(kwargs)
    assert kwargs["buildspecOverride"] == buildspec
    assert {"BRIDGE_CLONE_URL", "BRIDGE_COMMIT_SHA", "BRIDGE_CLONE_TOKEN"} <= set(env_of(kwargs))


@pytest.mark.parametrize(("forks", "trusted"), [("without-secrets", False), ("allow", True)])
def test_a_fork_gets_the_clone_token_and_secrets_only_when_trusted(forks: ForkPolicy, trusted: bool) -> None:
    fork_mr = replace(GL_SELF_MR, is_fork=True, clone_url="https://gitlab.example.com/someone/app.git")
    options = replace(
        CLONE, env_vars=(EnvVar("API_KEY", "prod/api", "SECRETS_MANAGER"), EnvVar("MODE", "ci"))
    )
    grant = granted(fork_mr, Policy.of_options("r", options, forks=forks), TrustFacts.of(fork_mr))
    kwargs = plan_build(fork_mr, options, grant=grant, idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)
    env = env_of(kwargs)
    assert ("BRIDGE_CLONE_TOKEN" in env) is trusted
    assert ("API_KEY" in env) is trusted
    assert env["MODE"] == ("ci", "PLAINTEXT")
    assert env["BRIDGE_CLONE_URL"] == (fork_mr.clone_url, "PLAINTEXT")
    # Either way the fork never pushes to the route's repository: the packaged buildspec only builds.
    assert "IMAGE_URI" not in env
    assert env["BRIDGE_PUSH"] == ("false", "PLAINTEXT")


@pytest.mark.parametrize(
    ("event", "options", "key"),
    [
        pytest.param(GL_PUSH, replace(CLONE, clone_token_ref=None), "clone_token", id="missing-token"),
        pytest.param(GL_PUSH, replace(CLONE, clone_token_ref="  "), "clone_token", id="blank-token"),
        pytest.param(GL_PUSH, replace(CLONE, clone_token_ref="env:GL_TOKEN"), "clone_token", id="env-token"),
        pytest.param(GH_PUSH, CLONE, "source_mode", id="clone-on-github"),
        pytest.param(
            GL_PUSH, replace(CLONE, image_repository=None), "image_repository", id="nothing-to-build"
        ),
        pytest.param(GL_PUSH, replace(CLONE, source_type="GITLAB"), "source_type", id="contradicting-type"),
    ],
)
def test_clone_mode_errors(event: SourceEvent, options: BuildOptions, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_build(event, options, idempotency_seed=SEED)
    assert caught.value.key == key
    assert caught.value.hint


def test_clone_token_reference_malformed_is_input_error() -> None:
    with pytest.raises(InputError, match="malformed"):
        plan_build(GL_PUSH, replace(CLONE, clone_token_ref="secretsmanager:name#"), idempotency_seed=SEED)


# --- environment variables ---------------------------------------------------------------------------


def test_env_order_context_then_bridge_then_image_then_user() -> None:
    options = BuildOptions(
        "p", image_repository=ECR_REPO, env_vars=(EnvVar("ZED", "1"), EnvVar("ALPHA", "2"))
    )
    kwargs = plan_build(
        GH_PUSH, options, idempotency_seed=SEED, context_env={"GITHUB_SHA": SHA}
    ).start_build_kwargs
    assert list(env_of(kwargs)) == [
        "GITHUB_SHA",
        "BRIDGE_REPOSITORY",
        "BRIDGE_SHA",
        "BRIDGE_REF",
        "BRIDGE_EVENT",
        "IMAGE_REPOSITORY",
        "IMAGE_TAG",
        "IMAGE_URI",
        "BRIDGE_CACHE",
        "BRIDGE_CACHE_REF",
        "BRIDGE_CACHE_WRITE",
        "ZED",
        "ALPHA",
    ]


@pytest.mark.parametrize(
    ("event", "options", "name"),
    [
        pytest.param(GH_PUSH, BuildOptions("p"), "GITHUB_SHA", id="context"),
        pytest.param(GH_PUSH, BuildOptions("p"), "BRIDGE_SHA", id="event"),
        pytest.param(GH_FORK_PR, BuildOptions("p"), "BRIDGE_PR_NUMBER", id="pr-number"),
        pytest.param(GH_PUSH, BuildOptions("p", image_repository=ECR_REPO), "IMAGE_URI", id="image"),
        pytest.param(GL_PUSH, CLONE, "BRIDGE_CLONE_TOKEN", id="clone-token"),
    ],
)
def test_user_variable_clashing_with_bridge_name_is_an_error(
    event: SourceEvent, options: BuildOptions, name: str
) -> None:
    options = replace(options, env_vars=(EnvVar(name, "mine"),))
    with pytest.raises(InputError) as caught:
        plan_build(event, options, idempotency_seed=SEED, context_env={"GITHUB_SHA": SHA})
    assert caught.value.name == "env-vars"
    assert name in caught.value.message
    assert "mine" not in str(caught.value)


def test_image_variable_names_are_free_without_an_image() -> None:
    options = BuildOptions("p", env_vars=(EnvVar("IMAGE_URI", "ghcr.io/me/x:1"),))
    env = env_of(plan_build(GH_PUSH, options, idempotency_seed=SEED).start_build_kwargs)
    assert env["IMAGE_URI"] == ("ghcr.io/me/x:1", "PLAINTEXT")


@pytest.mark.parametrize(("forks", "include_secrets"), [("allow", True), ("without-secrets", False)])
def test_secret_variables_follow_the_grant(forks: ForkPolicy, include_secrets: bool) -> None:
    user = parse_env_vars("PLAIN=1\nSM=secretsmanager:prod/db#password\nPS=ssm:/prod/url\n")
    options = BuildOptions("p", env_vars=user)
    grant = granted(GH_FORK_PR, Policy.of_options("r", options, forks=forks), TrustFacts.of(GH_FORK_PR))
    kwargs = plan_build(GH_FORK_PR, options, grant=grant, idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)
    env = env_of(kwargs)
    assert env["PLAIN"] == ("1", "PLAINTEXT")
    if include_secrets:
        assert env["SM"] == ("prod/db:password", "SECRETS_MANAGER")
        assert env["PS"] == ("/prod/url", "PARAMETER_STORE")
    else:
        assert "SM" not in env
        assert "PS" not in env
        assert {t for _, t in env.values()} == {"PLAINTEXT"}


# --- buildspec and environment overrides -------------------------------------------------------------

INLINE = "version: 0.2\nphases:\n  build:\n    commands:\n      - make test\n"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(BuildOptions("p"), None, id="project-default"),
        pytest.param(BuildOptions("p", buildspec=""), None, id="empty-is-default"),
        pytest.param(BuildOptions("p", buildspec="ci/buildspec.yml"), "ci/buildspec.yml", id="path"),
        pytest.param(BuildOptions("p", buildspec=INLINE), INLINE, id="inline"),
        pytest.param(BuildOptions("p", image_repository=ECR_REPO), "IMAGE", id="packaged-image"),
        pytest.param(
            BuildOptions("p", image_repository=ECR_REPO, buildspec="ci/docker.yml"),
            "ci/docker.yml",
            id="own-buildspec-wins-over-image",
        ),
    ],
)
def test_buildspec_override(options: BuildOptions, expected: str | None) -> None:
    kwargs = plan_build(GH_PUSH, options, idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)
    if expected == "IMAGE":
        expected = (DATA / "buildspec-image.yml").read_text()
    assert kwargs.get("buildspecOverride") == expected


@pytest.mark.parametrize("event", [*ALL_EVENTS[:4], replace(GH_PUSH, branch="$(touch pwned)`id`")])
def test_packaged_buildspec_is_never_templated(event: SourceEvent) -> None:
    """The buildspec text is byte-identical whatever the event: values travel only as variables."""
    event = replace(event, is_fork=False)  # a trusted build: the one that renders a tag and pushes
    options = BuildOptions("p", image_repository="ghcr.io/octo/app", image_tag="b-{branch}-{short_sha}")
    if event.branch is None:
        options = replace(options, image_tag="{ref_slug}")
    request = plan_build(event, options, idempotency_seed=SEED)
    assert request.start_build_kwargs["buildspecOverride"] == packaged_buildspec("buildspec-image.yml")
    assert request.image_uri is not None
    assert re.fullmatch(r"ghcr\.io/octo/app:[A-Za-z0-9_][A-Za-z0-9_.-]*", request.image_uri)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(
            BuildOptions("p", build_image="aws/codebuild/standard:7.0", compute_type="BUILD_GENERAL1_LARGE"),
            {"imageOverride": "aws/codebuild/standard:7.0", "computeTypeOverride": "BUILD_GENERAL1_LARGE"},
            id="image-and-compute",
        ),
        pytest.param(
            BuildOptions("p", privileged_mode=True), {"privilegedModeOverride": True}, id="privileged"
        ),
        pytest.param(
            BuildOptions("p", privileged_mode=False, image_repository=ECR_REPO),
            {"privilegedModeOverride": False},
            id="explicit-unprivileged-kept",
        ),
        pytest.param(
            BuildOptions("p", image_repository=ECR_REPO),
            {"privilegedModeOverride": True},
            id="docker-build-needs-privileged",
        ),
        pytest.param(BuildOptions("p", timeout_minutes=5), {"timeoutInMinutesOverride": 5}, id="timeout-min"),
        pytest.param(
            BuildOptions("p", timeout_minutes=2160), {"timeoutInMinutesOverride": 2160}, id="timeout-max"
        ),
        pytest.param(
            BuildOptions(
                "p", extra_overrides={"gitCloneDepthOverride": 1, "queuedTimeoutInMinutesOverride": 30}
            ),
            {"gitCloneDepthOverride": 1, "queuedTimeoutInMinutesOverride": 30},
            id="extra-overrides",
        ),
        pytest.param(
            BuildOptions(
                "p", extra_overrides={"sourceVersion": "pr/7", "cacheOverride": {"type": "NO_CACHE"}}
            ),
            {"sourceVersion": "pr/7", "cacheOverride": {"type": "NO_CACHE"}},
            id="extra-overrides-merged-last",
        ),
    ],
)
def test_environment_overrides(options: BuildOptions, expected: dict[str, Any]) -> None:
    kwargs = plan_build(GH_PUSH, options, idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)
    assert {key: kwargs.get(key) for key in expected} == expected


def test_no_overrides_means_no_keys() -> None:
    kwargs = plan_build(GH_PUSH, BuildOptions("p"), idempotency_seed=SEED).start_build_kwargs
    assert set(kwargs) == {
        "projectName",
        "sourceVersion",
        "sourceLocationOverride",
        "sourceTypeOverride",
        "environmentVariablesOverride",
        "idempotencyToken",
    }


@pytest.mark.parametrize("minutes", [-1, 0, 4, 2161, 10_000])
def test_timeout_out_of_range(minutes: int) -> None:
    with pytest.raises(InputError) as caught:
        plan_build(GH_PUSH, BuildOptions("p", timeout_minutes=minutes), idempotency_seed=SEED)
    assert caught.value.name == "timeout-minutes"
    assert "5" in caught.value.message
    assert "2160" in caught.value.message


@pytest.mark.parametrize("key", ["projectName", "idempotencyToken"])
def test_extra_overrides_cannot_replace_protected_keys(key: str) -> None:
    with pytest.raises(InputError, match=key):
        plan_build(GH_PUSH, BuildOptions("p", extra_overrides={key: "x"}), idempotency_seed=SEED)


def test_image_request_fields() -> None:
    options = BuildOptions("p", image_repository=ECR_REPO, image_tag="{branch}-{short_sha}")
    request = plan_build(replace(GH_FORK_PR, is_fork=False), options, idempotency_seed=SEED)
    assert request.image_uri == f"{ECR_REPO}:feature-x-{HEAD_SHA[:7]}"
    assert request.project_name == "p"
    env = env_of(request.start_build_kwargs)
    assert env["IMAGE_REPOSITORY"] == (ECR_REPO, "PLAINTEXT")
    assert env["IMAGE_TAG"] == (f"feature-x-{HEAD_SHA[:7]}", "PLAINTEXT")
    assert env["IMAGE_URI"] == (request.image_uri, "PLAINTEXT")
    assert plan_build(GH_PUSH, BuildOptions("p"), idempotency_seed=SEED).image_uri is None


def test_bad_image_repository_fails_planning() -> None:
    with pytest.raises(InputError) as caught:
        plan_build(GH_PUSH, BuildOptions("p", image_repository="ghcr.io/Octo/App"), idempotency_seed=SEED)
    assert caught.value.name == "image-repository"


# --- idempotency token -------------------------------------------------------------------------------

BASE_OPTIONS = BuildOptions("p", image_repository=ECR_REPO, env_vars=(EnvVar("A", "1"),))
TOKEN_VARIANTS = [
    pytest.param(GH_PUSH, BASE_OPTIONS, id="base"),
    pytest.param(replace(GH_PUSH, sha=HEAD_SHA), BASE_OPTIONS, id="sha"),
    pytest.param(GHES_PUSH, BASE_OPTIONS, id="source-type-and-location"),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, project_name="q"), id="project"),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, image_tag="latest"), id="image-tag"),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, env_vars=(EnvVar("A", "2"),)), id="env-value"),
    pytest.param(
        GH_PUSH, replace(BASE_OPTIONS, env_vars=(EnvVar("A", "1", "PARAMETER_STORE"),)), id="env-type"
    ),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, buildspec="other.yml"), id="buildspec"),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, timeout_minutes=60), id="timeout"),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, privileged_mode=False), id="privileged"),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, compute_type="BUILD_GENERAL1_SMALL"), id="compute"),
    pytest.param(GH_PUSH, replace(BASE_OPTIONS, extra_overrides={"gitCloneDepthOverride": 1}), id="extra"),
]


def _token(event: SourceEvent, options: BuildOptions, seed: str = SEED) -> str:
    return str(plan_build(event, options, idempotency_seed=seed).start_build_kwargs["idempotencyToken"])


def test_token_differs_on_any_kwarg_change() -> None:
    tokens = [_token(p.values[0], p.values[1]) for p in TOKEN_VARIANTS]  # type: ignore[arg-type]
    assert len(set(tokens)) == len(tokens)


@pytest.mark.parametrize(("event", "options"), TOKEN_VARIANTS)
def test_token_is_deterministic_and_seeded(event: SourceEvent, options: BuildOptions) -> None:
    first = plan_build(event, options, idempotency_seed=SEED).start_build_kwargs
    again = plan_build(event, options, idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(first)
    assert first == again
    assert _token(event, options, seed=SEED + "-2") != first["idempotencyToken"]
    token = first["idempotencyToken"]
    assert str(uuid.UUID(token)) == token  # the shape AWS SDKs send; 36 characters
    body = {k: v for k, v in first.items() if k != "idempotencyToken"}
    assert idempotency_token(SEED, body) == token


def test_token_ignores_key_order() -> None:
    one = BuildOptions("p", extra_overrides={"gitCloneDepthOverride": 1, "queuedTimeoutInMinutesOverride": 9})
    two = BuildOptions("p", extra_overrides={"queuedTimeoutInMinutesOverride": 9, "gitCloneDepthOverride": 1})
    assert _token(GH_PUSH, one) == _token(GH_PUSH, two)


def test_token_rejects_non_json_overrides() -> None:
    with pytest.raises(InputError, match="JSON"):
        plan_build(GH_PUSH, BuildOptions("p", extra_overrides={"x": object()}), idempotency_seed=SEED)


# --- parse_env_vars ----------------------------------------------------------------------------------

ENV_GOOD = [
    ("FOO=bar", [("FOO", "bar", "PLAINTEXT")]),
    ("FOO=", [("FOO", "", "PLAINTEXT")]),
    ("_x1=a=b", [("_x1", "a=b", "PLAINTEXT")]),
    ("URL=https://example.com/?q=1#frag", [("URL", "https://example.com/?q=1#frag", "PLAINTEXT")]),
    ("T=secretsmanager:prod/token", [("T", "prod/token", "SECRETS_MANAGER")]),
    ("T=secretsmanager:prod/creds#password", [("T", "prod/creds:password", "SECRETS_MANAGER")]),
    (
        "T=secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/creds-AbCdEf#password",
        [
            (
                "T",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/creds-AbCdEf:password",
                "SECRETS_MANAGER",
            )
        ],
    ),
    (
        "T=secretsmanager:prod/creds:password:AWSCURRENT:",
        [("T", "prod/creds:password:AWSCURRENT:", "SECRETS_MANAGER")],
    ),
    (
        "T=secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:c-AbC:key::3f2a",
        [("T", "arn:aws:secretsmanager:us-east-1:123456789012:secret:c-AbC:key::3f2a", "SECRETS_MANAGER")],
    ),
    ("P=ssm:/app/db/url", [("P", "/app/db/url", "PARAMETER_STORE")]),
    ("P=ssm:plain-name", [("P", "plain-name", "PARAMETER_STORE")]),
    (
        "# comment\n\n  A=1  \r\nB=secretsmanager:x#y\r\n   # indented comment\n\tC=ssm:/c\n",
        [("A", "1", "PLAINTEXT"), ("B", "x:y", "SECRETS_MANAGER"), ("C", "/c", "PARAMETER_STORE")],
    ),
    ("", []),
    ("\n\n# only comments\n", []),
    ("V=a\x1eb\x85c", [("V", "a\x1eb\x85c", "PLAINTEXT")]),  # not line breaks in an Action input
]


@pytest.mark.parametrize(("text", "expected"), ENV_GOOD)
def test_parse_env_vars(text: str, expected: list[tuple[str, str, str]]) -> None:
    parsed = parse_env_vars(text)
    assert [(v.name, v.value, v.type) for v in parsed] == expected
    kwargs = plan_build(GH_PUSH, BuildOptions("p", env_vars=parsed), idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)


LEAK = "hunter2-s3cr3t"
ENV_BAD = [
    (LEAK, "line 1: expected NAME=value"),
    (f"\n\nA=1\nghp_{LEAK}", "line 4: expected NAME=value"),
    (f"1FOO={LEAK}", "line 1: the variable name is not valid"),
    (f"FOO-BAR={LEAK}", "the variable name is not valid"),
    (f"FOO BAR={LEAK}", "the variable name is not valid"),
    (f"={LEAK}", "the variable name is not valid"),
    (f"CODEBUILD_SRC_DIR={LEAK}", "line 1: CODEBUILD_SRC_DIR starts with CODEBUILD_"),
    (f"codebuild_x={LEAK}", "codebuild_x starts with CODEBUILD_"),
    (f"A=1\n# c\nA={LEAK}", "line 3: A is already set on line 1"),
    ("T=secretsmanager:", "needs a secret id"),
    (f"T=secretsmanager:#{LEAK}", "needs a secret id"),
    (f"T=secretsmanager:{LEAK}#", "malformed"),
    (f"T=secretsmanager:{LEAK}:key#k2", "malformed"),
    (f"T=secretsmanager:{LEAK}#a#b", "malformed"),
    (f"T=secretsmanager:{LEAK}#a:b", "malformed"),
    (f"T=secretsmanager:{LEAK} x", "needs a secret id"),
    ("P=ssm:", "ssm: reference"),
    (f"P=ssm:/a {LEAK}", "ssm: reference"),
]


@pytest.mark.parametrize(("text", "message"), ENV_BAD)
def test_parse_env_vars_errors(text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_env_vars(text, input_name="env-vars")
    error = caught.value
    assert error.name == "env-vars"
    assert message in error.message
    assert error.hint
    assert LEAK not in str(error)
    assert LEAK not in error.hint


def test_parse_env_vars_names_the_input() -> None:
    with pytest.raises(InputError) as caught:
        parse_env_vars("nope", input_name="routes[2].env")
    assert caught.value.name == "routes[2].env"


_MARKER = "Zq9SECRETxK"
_NAMES = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), st.text(max_size=8))
_LINES = st.tuples(
    _NAMES,
    st.sampled_from(["=", "", "= "]),
    st.sampled_from(["", "secretsmanager:", "ssm:", "secretsmanager:arn:aws:secretsmanager:x:1:secret:n"]),
    st.text(max_size=12),
    st.sampled_from(["", "#", "#k", ":a:b:c", " "]),
).map(lambda t: f"{t[0]}{t[1]}{t[2]}{_MARKER}{t[3].replace(chr(10), '')}{t[4]}")


@settings(max_examples=200, deadline=None)
@given(st.lists(_LINES | st.text(max_size=40), max_size=6))
def test_parse_env_vars_never_leaks_and_only_raises_input_error(lines: list[str]) -> None:
    parsed = outcome(lambda: parse_env_vars("\n".join(lines)))
    if isinstance(parsed, InputError):
        assert _MARKER not in str(parsed)
        assert _MARKER not in parsed.hint
    else:
        for var in parsed:
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var.name)
            assert not var.name.upper().startswith("CODEBUILD_")
        assert len({v.name for v in parsed}) == len(parsed)


@settings(max_examples=200, deadline=None)
@given(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(
        lambda n: not n.upper().startswith("CODEBUILD_")
    ),
    st.text(alphabet=st.characters(exclude_characters="\n\r", codec="utf-8"), max_size=40),
)
def test_parse_env_vars_plaintext_round_trip(name: str, value: str) -> None:
    value = value.strip(" \t")
    if value.startswith(("secretsmanager:", "ssm:")):
        value = "x" + value
    if looks_like_credential(name, value):
        value = ""  # refused, below; an empty value is never a credential
    assert parse_env_vars(f"{name}={value}") == (EnvVar(name, value, "PLAINTEXT"),)


# --- literal credentials -----------------------------------------------------------------------------

CREDENTIAL_PREFIXES = [
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "npm_",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "sk_live_",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
]
CREDENTIAL_WORDS = ["TOKEN", "PASSWORD", "SECRET", "PASSWD", "CREDENTIALS", "APIKEY", "PAT"]
CREDENTIAL_SUFFIXES = ["API_KEY", "PRIVATE_KEY", "ACCESS_KEY", "SECRET_KEY", "SSH_KEY", "SIGNING_KEY"]
# Words that make up names no one would hold a credential in; none is, or ends like, a credential word.
SAFE_WORDS = st.sampled_from(
    ["NODE", "ENV", "APP", "BUILD", "TARGET", "REGION", "MODE", "X", "LEVEL", "IMAGE"]
)
SAFE_NAMES = st.lists(SAFE_WORDS, min_size=1, max_size=3).map("_".join)
NAME_PARTS = st.lists(SAFE_WORDS, max_size=2)
# No `_` or `-`, no upper case: cannot start like any token prefix or AWS key id.
# Minus the two reference forms (`ssm:...`, `secretsmanager:...`), which are parsed as references, not values.
SAFE_VALUES = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789./:=@ ", max_size=30)
    .map(str.strip)
    .filter(lambda value: not value.startswith(("ssm:", "secretsmanager:")))
)
TAILS = st.text(alphabet=st.characters(exclude_characters="\n\r", codec="utf-8"), max_size=30).map(
    lambda tail: _MARKER + tail
)


def assert_refused_as_credential(text: str, line: int, name: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_env_vars(text, input_name="env-vars")
    error = caught.value
    assert error.name == "env-vars"
    assert f"line {line}: {name} looks like a credential but is a literal value" in error.message
    assert f"{name}=secretsmanager:" in (error.hint or "")
    assert "ssm:" in (error.hint or "")
    assert _MARKER not in str(error)
    assert _MARKER not in (error.hint or "")


@settings(max_examples=150, deadline=None)
@given(SAFE_NAMES, st.sampled_from(CREDENTIAL_PREFIXES), TAILS, st.lists(SAFE_NAMES, max_size=3))
def test_a_token_shaped_literal_is_refused_under_any_name(
    name: str, prefix: str, tail: str, before: list[str]
) -> None:
    lines = [f"{other}_{i}=1" for i, other in enumerate(before)]
    assert_refused_as_credential("\n".join([*lines, f"{name}={prefix}{tail}"]), len(lines) + 1, name)


@settings(max_examples=150, deadline=None)
@given(
    NAME_PARTS,
    st.sampled_from(CREDENTIAL_WORDS + CREDENTIAL_SUFFIXES),
    NAME_PARTS,
    st.booleans(),
    SAFE_VALUES.filter(bool),
)
def test_a_literal_under_a_credential_name_is_refused_and_a_reference_is_not(
    head: list[str], word: str, tail: list[str], lower: bool, value: str
) -> None:
    parts = [*head, word] if word in CREDENTIAL_SUFFIXES else [*head, word, *tail]
    name = "_".join(parts)
    name = name.lower() if lower else name
    if name.upper().startswith("CODEBUILD_"):
        return
    assert_refused_as_credential(f"{name}={_MARKER}{value}", 1, name)
    assert (
        parse_env_vars(f"{name}=secretsmanager:ci/{value.replace(' ', '') or 'x'}")[0].type
        == "SECRETS_MANAGER"
    )
    assert parse_env_vars(f"{name}=ssm:/ci/x")[0].type == "PARAMETER_STORE"
    assert parse_env_vars(f"{name}=") == (EnvVar(name, "", "PLAINTEXT"),)


@settings(max_examples=150, deadline=None)
@given(SAFE_NAMES, SAFE_VALUES)
def test_ordinary_names_and_values_are_not_mistaken_for_credentials(name: str, value: str) -> None:
    assert parse_env_vars(f"{name}={value}") == (EnvVar(name, value, "PLAINTEXT"),)


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("AKIAIOSFODNN7EXAMPLE", True),  # AWS's documented example access key id
        ("ASIAIOSFODNN7EXAMPLE", True),  # a temporary (STS) one
        ("AKIAIOSFODNN7EXAMPLE:more", True),
        ("AKIAIOSFODNN7EXAMPL", False),  # 19 characters: not a key id
        ("AKIAIOSFODNN7EXAMPLEX", False),  # 21
        ("ASIA-PACIFIC", False),
        ("xoxb-123-456-abc", True),
        ("xoxo", False),
        ("npm_", True),
        ("sk_test_abc", False),  # Stripe test keys reach nothing real
        ("-----BEGIN RSA PRIVATE KEY-----", True),
    ],
)
def test_credential_shapes(value: str, refused: bool) -> None:
    assert looks_like_credential("VALUE", value) is refused
    if refused:
        assert_refused_as_credential(f"VALUE={value}", 1, "VALUE")
    else:
        assert parse_env_vars(f"VALUE={value}") == (EnvVar("VALUE", value, "PLAINTEXT"),)


def test_a_caller_that_words_the_refusal_itself_gets_the_variable() -> None:
    assert parse_env_vars("NPM_TOKEN=npm_abc", refuse_credentials=False) == (
        EnvVar("NPM_TOKEN", "npm_abc", "PLAINTEXT"),
    )


# --- parse_bool --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("YES", True),
        ("1", True),
        (" false ", False),
        ("No", False),
        ("0", False),
    ],
)
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text, input_name="wait") is expected


@pytest.mark.parametrize("text", ["", "y", "on", "2", "truthy", "nope"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_bool(text, input_name="show-logs")
    assert caught.value.name == "show-logs"
    assert "true or false" in caught.value.hint


# --- image URIs --------------------------------------------------------------------------------------

IMAGE_GOOD = [
    (ECR_REPO, "v1", ("123456789012", "us-east-1")),
    ("123456789012.dkr.ecr.eu-central-1.amazonaws.com/team/my_app", SHA, ("123456789012", "eu-central-1")),
    ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/app", "1.0", ("123456789012", "cn-north-1")),
    ("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com/app", "x", ("123456789012", "us-gov-west-1")),
    ("ghcr.io/owner/app", "main", None),
    ("registry.example.com:5000/team/app", "_build.7-x", None),
    ("docker.io/library/nginx", "1.27", None),
    ("localhost:5000/app", "a", None),
    ("localhost/app", "A" * 128, None),
    ("registry:5000/app", "v1", None),
    ("quay.io/a/b__c", "latest", None),
    ("ghcr.io/o/a.b-c--d_e", "latest", None),
]


@pytest.mark.parametrize(("repository", "tag", "ecr"), IMAGE_GOOD)
def test_compose_image_uri(repository: str, tag: str, ecr: tuple[str, str] | None) -> None:
    uri = compose_image_uri(repository, tag)
    assert uri == f"{repository}:{tag}"


IMAGE_BAD = [
    ("", "v1", "image-repository", "registry host"),
    ("app", "v1", "image-repository", "registry host"),
    ("library/nginx", "v1", "image-repository", "registry host"),
    ("ghcr.io", "v1", "image-repository", "registry host"),
    ("ghcr.io/Owner/App", "v1", "image-repository", "invalid repository path"),
    ("ghcr.io/o/r:v1", "v1", "image-repository", "already contains a tag"),
    ("ghcr.io/o/r@sha256:" + "a" * 64, "v1", "image-repository", "already contains a digest"),
    ("https://ghcr.io/o/r", "v1", "image-repository", "scheme"),
    ("ghcr.io/o/r/", "v1", "image-repository", "invalid repository path"),
    ("ghcr.io//r", "v1", "image-repository", "invalid repository path"),
    ("ghcr.io/o/-r", "v1", "image-repository", "invalid repository path"),
    ("ghcr.io/o/r..s", "v1", "image-repository", "invalid repository path"),
    ("ghcr.io/o/r___s", "v1", "image-repository", "invalid repository path"),
    ("gh cr.io/o/r", "v1", "image-repository", "registry host"),
    ("12345.dkr.ecr.us-east-1.amazonaws.com/app", "v1", "image-repository", "ECR"),
    ("123456789012.dkr.ecr.useast.amazonaws.com/app", "v1", "image-repository", "ECR"),
    ("123456789012.DKR.ECR.us-east-1.amazonaws.com/app", "v1", "image-repository", "ECR"),
    ("ghcr.io/" + "a" * 250, "v1", "image-repository", "longer than 255"),
    ("ghcr.io/o/r", "", "image-tag", "not a valid image tag"),
    ("ghcr.io/o/r", "-bad", "image-tag", "not a valid image tag"),
    ("ghcr.io/o/r", ".bad", "image-tag", "not a valid image tag"),
    ("ghcr.io/o/r", "a" * 129, "image-tag", "not a valid image tag"),
    ("ghcr.io/o/r", "feature/x", "image-tag", "not a valid image tag"),
    ("ghcr.io/o/r", "v1;rm", "image-tag", "not a valid image tag"),
]


@pytest.mark.parametrize(("repository", "tag", "name", "message"), IMAGE_BAD)
def test_compose_image_uri_errors(repository: str, tag: str, name: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        compose_image_uri(repository, tag)
    assert caught.value.name == name
    assert message in caught.value.message
    assert caught.value.hint


def test_compose_image_uri_names_the_input() -> None:
    with pytest.raises(InputError) as caught:
        compose_image_uri("nohost", "v1", input_name="routes[0].image_repository")
    assert caught.value.name == "routes[0].image_repository"
    assert "ghcr.io/owner/app" in caught.value.hint  # shows the expected form


_COMPONENT = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,2}", fullmatch=True)
_HOSTS = st.sampled_from(
    ["ghcr.io", "registry.example.com:5000", "localhost", "123456789012.dkr.ecr.us-west-2.amazonaws.com"]
)
_TAGS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(_HOSTS, st.lists(_COMPONENT, min_size=1, max_size=4), _TAGS)
def test_compose_image_uri_accepts_every_valid_reference(host: str, path: list[str], tag: str) -> None:
    repository = "/".join([host, *path])
    if len(repository) <= 255:
        assert compose_image_uri(repository, tag) == f"{repository}:{tag}"


_REFERENCE = re.compile(
    r"(?P<host>[^/]+)/(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60) | st.from_regex(r"[a-z.:/@0-9A-Z_-]{1,40}", fullmatch=True), st.text(max_size=20))
def test_compose_image_uri_only_returns_valid_references(repository: str, tag: str) -> None:
    uri = outcome(lambda: compose_image_uri(repository, tag))
    if isinstance(uri, InputError):
        assert uri.name in {"image-repository", "image-tag"}
    else:
        assert _REFERENCE.fullmatch(uri), uri
        assert "@" not in uri


# --- image tag templates -----------------------------------------------------------------------------

TAG_GOOD = [
    (None, GH_PUSH, SHA),
    ("", GH_PUSH, SHA),
    ("{sha}", GH_PUSH, SHA),
    ("{short_sha}", GH_PUSH, SHA[:7]),
    ("latest", GH_PUSH, "latest"),
    ("{branch}-{short_sha}", GH_FORK_PR, f"feature-x-{HEAD_SHA[:7]}"),
    ("{tag}", GH_TAG, "v1.2.0"),
    ("release-{tag}", GH_TAG, "release-v1.2.0"),
    ("pr-{pr}", GH_FORK_PR, "pr-7"),
    ("mr-{pr}-{short_sha}", GL_SELF_MR, f"mr-12-{HEAD_SHA[:7]}"),
    ("{ref_slug}", replace(GH_PUSH, branch="Feature/Big_Thing"), "feature-big-thing"),
    ("{ref_slug}", GH_TAG, "v1-2-0"),
    ("{ref_slug}", replace(GH_PUSH, branch=None, ref="refs/heads/dev"), "dev"),
    ("{ref_slug}", replace(GH_PUSH, branch=None, ref=None), SHA),
    ("{ref_slug}", replace(GH_PUSH, branch="/" * 5), SHA[:7]),
    ("{ref_slug}", replace(GH_PUSH, branch="x" * 100), "x" * 63),
    ("b-{branch}", replace(GH_PUSH, branch="$(touch pwned)`id`;x"), "b---touch-pwned--id--x"),
    ("{branch}", replace(GH_PUSH, branch="renovate/node-20.x"), "renovate-node-20.x"),
]


@pytest.mark.parametrize(("template", "event", "expected"), TAG_GOOD)
def test_render_image_tag(template: str | None, event: SourceEvent, expected: str) -> None:
    assert render_image_tag(template, event) == expected


TAG_BAD = [
    ("{nope}", GH_PUSH, "unknown placeholder {nope}"),
    ("{}", GH_PUSH, "unknown placeholder"),
    ("{sha!r}", GH_PUSH, "unknown placeholder"),
    ("{sha:>50}", GH_PUSH, "unknown placeholder"),
    ("{sha.upper}", GH_PUSH, "unknown placeholder"),
    ("{sha", GH_PUSH, "unbalanced"),
    ("sha}", GH_PUSH, "unbalanced"),
    ("{tag}", GH_PUSH, "{tag} has no value for a push event"),
    ("{pr}", GH_PUSH, "{pr} has no value"),
    ("{branch}", GH_TAG, "{branch} has no value for a tag event"),
    ("-{sha}", GH_PUSH, "valid image tag"),
    ("a b", GH_PUSH, "valid image tag"),
    ("{{sha}}", GH_PUSH, "valid image tag"),
    ("{branch}-{sha}", replace(GH_PUSH, branch="b" * 100), "valid image tag"),
]


@pytest.mark.parametrize(("template", "event", "message"), TAG_BAD)
def test_render_image_tag_errors(template: str, event: SourceEvent, message: str) -> None:
    with pytest.raises(InputError) as caught:
        render_image_tag(template, event)
    assert caught.value.name == "image-tag"
    assert message in caught.value.message
    assert caught.value.hint


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=150), st.sampled_from(["b-{branch}", "{ref_slug}", "{short_sha}-{branch}"])
)
def test_render_image_tag_any_branch_gives_a_safe_tag(branch: str, template: str) -> None:
    tag = outcome(lambda: render_image_tag(template, replace(GH_PUSH, branch=branch)))
    if isinstance(tag, InputError):
        assert "valid image tag" in tag.message  # only length can break these templates
    else:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag)


# --- the packaged buildspecs -------------------------------------------------------------------------

BUILDSPECS = ["buildspec-image.yml", "buildspec-gitlab-clone.yml"]


def _commands(name: str) -> list[str]:
    spec = yaml.safe_load(packaged_buildspec(name))
    return [cmd for phase in ("install", "pre_build", "build", "post_build") for cmd in _phase(spec, phase)]


def _phase(spec: dict[str, Any], phase: str) -> list[str]:
    commands: list[str] = spec["phases"].get(phase, {}).get("commands", [])
    return commands


def unquoted_expansions(script: str) -> list[str]:
    """Every `$...` expansion that is not inside double quotes, tracking '...', "...", $( ) nesting."""
    found: list[str] = []
    stack: list[list[Any]] = [["U", 0]]  # context kind and open-paren depth for $( ) contexts
    i = 0
    while i < len(script):
        c, kind = script[i], stack[-1][0]
        nxt = script[i + 1] if i + 1 < len(script) else ""
        if kind == "D":
            if c == "\\":
                i += 2
                continue
            if c == '"':
                stack.pop()
            elif c == "$" and nxt == "(":
                stack.append(["S", 0])
                i += 2
                continue
        else:  # unquoted, at top level ("U") or inside a command substitution ("S")
            if c == "\\":
                i += 2
                continue
            if c == "#" and (i == 0 or script[i - 1] in " \t\n;"):
                i = script.find("\n", i) if "\n" in script[i:] else len(script)
                continue
            if c == "'":
                i = script.index("'", i + 1) + 1
                continue
            if c == '"':
                stack.append(["D", 0])
            elif c == "$" and (nxt.isalnum() or nxt in "_{(?@*#!-"):
                found.append(script[i : i + 20])
                if nxt == "(":
                    stack.append(["S", 0])
                    i += 2
                    continue
            elif kind == "S" and c == "(":
                stack[-1][1] += 1
            elif kind == "S" and c == ")":
                if stack[-1][1] == 0:
                    stack.pop()
                else:
                    stack[-1][1] -= 1
        i += 1
    assert stack == [["U", 0]], f"unbalanced quoting in: {script!r}"
    return found


@pytest.mark.parametrize(
    ("script", "bad"),
    [
        ('docker build -t "$IMAGE_URI" .', 0),
        ("docker build -t $IMAGE_URI .", 1),
        ('X="$(docker inspect "$IMAGE_URI")"', 0),
        ('X="$(docker inspect $IMAGE_URI)"', 1),
        ("X=$(date)", 1),
        ("echo '$NOT_EXPANDED' \"${OK:-x}\"", 0),
        ('echo "a" ${B}', 1),
        ('case "$A" in\n  x*) echo "$A" ;;\nesac', 0),
    ],
)
def test_quote_checker_itself(script: str, bad: int) -> None:
    assert len(unquoted_expansions(script)) == bad


@pytest.mark.parametrize("name", BUILDSPECS)
def test_buildspec_shape_and_quoting(name: str) -> None:
    spec = yaml.safe_load(packaged_buildspec(name))
    assert str(spec["version"]) == "0.2"
    assert spec["env"]["exported-variables"] == [
        "IMAGE_URI",
        "IMAGE_DIGEST",
        "IMAGE_SIZE",
        "BRIDGE_CACHED_STEPS",
        "BRIDGE_BUILD_STEPS",
        "BRIDGE_PLATFORM",
        "BRIDGE_ATTESTED",
    ]
    assert spec["env"]["shell"] == "bash"
    commands = _commands(name)
    assert commands
    for command in commands:
        assert unquoted_expansions(command) == [], command
        assert not re.search(r"set\s+-[a-z]*x|xtrace", command)
    assert packaged_buildspec(name) == (DATA / name).read_text()


def test_clone_buildspec_shares_the_image_steps() -> None:
    image = yaml.safe_load(packaged_buildspec("buildspec-image.yml"))
    clone = yaml.safe_load(packaged_buildspec("buildspec-gitlab-clone.yml"))
    for phase in ("build", "post_build"):
        assert _phase(clone, phase) == _phase(image, phase)
    pre = _phase(image, "pre_build")
    assert _phase(clone, "pre_build")[-len(pre) :] == pre


def test_clone_buildspec_only_uses_the_token_through_builtins() -> None:
    uses = [line.strip() for cmd in _commands("buildspec-gitlab-clone.yml") for line in cmd.splitlines()]
    token_lines = [line for line in uses if "BRIDGE_CLONE_TOKEN" in line]
    assert len(token_lines) == 3
    assert token_lines[0] == 'if [ -n "${BRIDGE_CLONE_TOKEN:-}" ]; then'  # absent for a fork's build
    assert token_lines[1].startswith('GIT_CONFIG_VALUE_0="Authorization: Basic $(printf ')
    assert token_lines[2].startswith("unset ")


# --- running the buildspecs with bash against fake docker / aws / git ---------------------------------

FAKE_TOOL = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
stdin = sys.stdin.read() if name == "docker" and args[:1] == ["login"] else ""
env = {{k: os.environ.get(k) for k in ("GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0",
                                      "BRIDGE_CLONE_TOKEN")}}
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"tool": name, "args": args, "stdin": stdin, "env": env}}) + "\\n")
if name == "aws" and args[:2] == ["codebuild", "batch-get-builds"] and "builds[0].buildBatchArn" in args:
    print("arn:aws:codebuild:eu-west-1:123456789012:build-batch/p:batch-1")
elif name == "aws" and args[:2] == ["codebuild", "batch-get-build-batches"]:
    print("\\t".join(f"arn:aws:codebuild:eu-west-1:123456789012:build/p:{{b}}" for b in ("amd", "arm")))
elif name == "aws" and args[:2] == ["codebuild", "batch-get-builds"]:
    print(os.environ.get("FAKE_PLATFORM_DIGESTS", "sha256:" + "a1" * 32 + "\\t" + "sha256:" + "b2" * 32))
elif name == "aws":
    print("ecr-password")
if name == "docker" and args[:1] == ["inspect"]:
    print("ghcr.io/o/r@sha256:" + "ab" * 32)
if name == "docker" and args[:1] == ["buildx"] and os.environ.get("FAKE_BUILDX") != "1":
    sys.exit(1)  # the classic client: no buildx plugin
if name == "docker" and args[:2] == ["manifest", "push"]:
    print("sha256:" + "ef" * 32)
if name == "docker" and args[:3] == ["buildx", "imagetools", "inspect"]:
    print('"sha256:' + "fe" * 32 + '"')
if name == "docker" and args[:2] == ["buildx", "build"]:
    metadata = args[args.index("--metadata-file") + 1]
    with open(metadata, "w") as out:
        json.dump({{"containerimage.digest": "sha256:" + "cd" * 32, "image.name": "x"}}, out, indent=2)
"""


def run_buildspec(
    name: str,
    tmp_path: Path,
    env: dict[str, str],
    tools: tuple[str, ...] = ("docker", "aws", "git", "cosign"),
) -> tuple[list[dict[str, Any]], str]:
    """Run every command of every phase in one bash, as CodeBuild 0.2 does, with fake tools on PATH.
    Returns the tools' recorded calls and IMAGE_DIGEST as the shell left it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        path = bin_dir / tool
        path.write_text(FAKE_TOOL.format(python=sys.executable))
        path.chmod(0o755)
    work = tmp_path / "src"
    work.mkdir()
    log = tmp_path / "calls.jsonl"
    checked = [f'{cmd}\n__rc="$?"; [ "$__rc" = 0 ] || exit "$__rc"' for cmd in _commands(name)]
    script = "\n".join([*checked, 'printf "%s" "${IMAGE_DIGEST:-}" > ../digest'])
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "FAKE_LOG": str(log),
            "CODEBUILD_BUILD_SUCCEEDING": "1",
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(p.name for p in work.iterdir()) == [], "a command created files: injection?"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "calls.jsonl", "digest", "src"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return calls, (tmp_path / "digest").read_text()


EVIL = "$(touch pwned)`touch pwned2`;touch pwned3 \"x\" 'y' $HOME"


@pytest.mark.parametrize(
    ("image_uri", "extra_env", "login"),
    [
        (f"{ECR_REPO}:v1", {}, (["ecr", "get-login-password", "--region", "us-east-1"], "AWS")),
        (
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/a:b",
            {},
            (["ecr", "get-login-password", "--region", "cn-north-1"], "AWS"),
        ),
        (
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com/a:b",
            {},
            (["ecr", "get-login-password", "--region", "us-gov-west-1"], "AWS"),
        ),
        ("ghcr.io/o/r:main", {"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": "pw-" + EVIL}, (None, "bot")),
        ("ghcr.io/o/r:main", {}, None),
        (f"ghcr.io/o/r:{EVIL}", {"DOCKERFILE": EVIL, "DOCKER_CONTEXT": EVIL}, None),
    ],
)
def test_image_buildspec_runs(
    tmp_path: Path, image_uri: str, extra_env: dict[str, str], login: tuple[list[str] | None, str] | None
) -> None:
    calls, digest = run_buildspec("buildspec-image.yml", tmp_path, {"IMAGE_URI": image_uri, **extra_env})
    registry = image_uri.split("/", 1)[0]
    docker = [c["args"] for c in calls if c["tool"] == "docker"]
    aws = [c["args"] for c in calls if c["tool"] == "aws"]
    logins = [c for c in calls if c["tool"] == "docker" and c["args"][0] == "login"]
    if login is None:
        assert aws == []
        assert logins == []
    else:
        aws_args, user = login
        assert aws == ([aws_args] if aws_args else [])
        assert logins[0]["args"] == ["login", "--username", user, "--password-stdin", registry]
        assert logins[0]["stdin"] == ("ecr-password\n" if aws_args else extra_env["REGISTRY_PASSWORD"])
    dockerfile = extra_env.get("DOCKERFILE", "Dockerfile")
    assert ["build", "--file", dockerfile, "--tag", image_uri, extra_env.get("DOCKER_CONTEXT", ".")] in docker
    assert docker[-3:] == [
        ["push", image_uri],
        ["inspect", "--format", "{{index .RepoDigests 0}}", image_uri],
        ["image", "inspect", "--format", "{{.Size}}", image_uri],
    ]
    assert digest == "sha256:" + "ab" * 32


def test_image_buildspec_does_not_push_a_failed_build(tmp_path: Path) -> None:
    calls, digest = run_buildspec(
        "buildspec-image.yml", tmp_path, {"IMAGE_URI": "ghcr.io/o/r:1", "CODEBUILD_BUILD_SUCCEEDING": "0"}
    )
    assert all(c["args"][0] != "push" for c in calls)
    assert digest == ""


def test_clone_buildspec_runs_and_keeps_the_token_off_command_lines(tmp_path: Path) -> None:
    token = "glpat-" + "Xy7" * 6
    clone_url = f"https://gitlab.example.com/group/app.git?{EVIL}"
    calls, digest = run_buildspec(
        "buildspec-gitlab-clone.yml",
        tmp_path,
        {
            "BRIDGE_CLONE_URL": clone_url,
            "BRIDGE_COMMIT_SHA": HEAD_SHA,
            "BRIDGE_CLONE_TOKEN": token,
            "IMAGE_URI": f"{ECR_REPO}:{HEAD_SHA}",
        },
    )
    git = [c for c in calls if c["tool"] == "git"]
    assert [c["args"] for c in git[:4]] == [
        ["init", "--quiet", "."],
        ["remote", "add", "origin", clone_url],
        ["fetch", "--quiet", "--no-tags", "--depth", "1", "origin", HEAD_SHA],
        ["checkout", "--quiet", "--detach", "FETCH_HEAD"],
    ]
    fetch_env = git[2]["env"]
    header = "Authorization: Basic " + base64.b64encode(f"oauth2:{token}".encode()).decode()
    assert fetch_env == {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": header,
        "BRIDGE_CLONE_TOKEN": token,
    }
    for call in calls:
        assert all(token not in arg and header not in arg for arg in call["args"])
    after_fetch = calls[calls.index(git[2]) + 1 :]
    assert after_fetch
    assert all(set(c["env"].values()) == {None} for c in after_fetch), "token still in the environment"
    assert ["push", f"{ECR_REPO}:{HEAD_SHA}"] in [c["args"] for c in calls]
    assert digest == "sha256:" + "ab" * 32
    # and the real git reads that header from those variables (no command-line config involved)
    real = subprocess.run(
        ["git", "config", "--get", "http.extraHeader"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **{k: v for k, v in fetch_env.items() if v}},
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert real.stdout.strip() == header


def test_clone_buildspec_fails_without_an_image(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="nothing to build"):
        run_buildspec(
            "buildspec-gitlab-clone.yml",
            tmp_path,
            {
                "BRIDGE_CLONE_URL": "https://gitlab.com/a/b.git",
                "BRIDGE_COMMIT_SHA": SHA,
                "BRIDGE_CLONE_TOKEN": "t",
            },
        )


def test_plan_module_stays_pure() -> None:
    source = (Path(__file__).resolve().parent.parent / "bridge" / "plan.py").read_text()
    imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source, flags=re.MULTILINE)
    assert not {i.split(".")[0] for i in imports} & {"boto3", "botocore", "github", "gitlab", "flask"}


# --- S3 sources (workspace contexts) -----------------------------------------------------------------

S3_OPTIONS = BuildOptions(
    project_name="flex",
    source_type="S3",
    source_location="ctx-bucket/contexts/ab12.zip",
    image_repository=ECR_REPO,
)


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_s3_source_sends_the_object_and_no_commit(event: SourceEvent) -> None:
    kwargs = plan_build(event, S3_OPTIONS, idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)
    assert kwargs["sourceTypeOverride"] == "S3"
    assert kwargs["sourceLocationOverride"] == "ctx-bucket/contexts/ab12.zip"
    assert "sourceVersion" not in kwargs  # a commit SHA is not an S3 object version id
    assert kwargs["buildspecOverride"] == packaged_buildspec("buildspec-image.yml")


def test_s3_source_version_is_the_object_version_id() -> None:
    options = replace(S3_OPTIONS, source_version="3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")
    kwargs = plan_build(GH_PUSH, options, idempotency_seed=SEED).start_build_kwargs
    assert kwargs["sourceVersion"] == "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"


@pytest.mark.parametrize("location", [None, "", "bucket-only", "s3://bucket/key.zip", "/key.zip", "bucket/"])
def test_s3_source_needs_bucket_and_key(location: str | None) -> None:
    with pytest.raises(InputError, match="BUCKET/KEY"):
        plan_build(GH_PUSH, replace(S3_OPTIONS, source_location=location), idempotency_seed=SEED)


# --- batch builds ----------------------------------------------------------------------------------

_CODEBUILD_MODEL = get_session().get_service_model("codebuild")


def _batch_shape() -> StructureShape:
    shape = _CODEBUILD_MODEL.operation_model("StartBuildBatch").input_shape
    assert shape is not None
    return shape


def test_every_start_build_parameter_maps_to_start_build_batch_or_is_refused() -> None:
    batch_members = set(_batch_shape().members)
    for name in _START_BUILD_SHAPE.members:
        kwargs = {"projectName": "p", name: None}
        try:
            mapped = start_build_batch_kwargs(kwargs)
        except InputError:
            assert name not in batch_members, f"{name} exists in StartBuildBatch but is refused"
            continue
        assert set(mapped) <= batch_members, f"{name} maps to {set(mapped) - batch_members}"


@pytest.mark.parametrize("event", [GH_PUSH, GH_FORK_PR, GL_PUSH])
def test_batch_request_is_valid_for_start_build_batch(event: SourceEvent) -> None:
    options = replace(S3_OPTIONS, batch=True, timeout_minutes=30, env_vars=(EnvVar("A", "1"),))
    request = plan_build(event, options, idempotency_seed=SEED)
    assert request.batch
    mapped = start_build_batch_kwargs(request.start_build_kwargs)
    report = ParamValidator().validate(mapped, _batch_shape())
    assert not report.has_errors(), report.generate_report()
    assert mapped["buildTimeoutInMinutesOverride"] == 30
    assert "timeoutInMinutesOverride" not in mapped
    assert (
        mapped["environmentVariablesOverride"] == request.start_build_kwargs["environmentVariablesOverride"]
    )


def test_batch_and_single_build_of_one_request_get_different_tokens() -> None:
    single = plan_build(GH_PUSH, S3_OPTIONS, idempotency_seed=SEED)
    batch = plan_build(GH_PUSH, replace(S3_OPTIONS, batch=True), idempotency_seed=SEED)
    assert not single.batch
    assert single.start_build_kwargs["idempotencyToken"] != batch.start_build_kwargs["idempotencyToken"]


@pytest.mark.parametrize("override", ["fleetOverride", "autoRetryLimitOverride", "buildStatusConfigOverride"])
def test_batch_with_a_build_only_override_fails_at_planning(override: str) -> None:
    options = replace(S3_OPTIONS, batch=True, extra_overrides={override: 1})
    with pytest.raises(InputError, match=override) as raised:
        plan_build(GH_PUSH, options, idempotency_seed=SEED)
    assert raised.value.name == "batch"


def test_without_a_grant_a_fork_gets_nothing_trusted() -> None:
    options = BuildOptions("p", image_repository="ghcr.io/octo/app", env_vars=parse_env_vars("SM=ssm:/x"))
    env = env_of(plan_build(GH_FORK_PR, options, idempotency_seed=SEED).start_build_kwargs)
    assert "SM" not in env
    assert "IMAGE_URI" not in env
