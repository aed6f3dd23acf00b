"""Layer cache plan (bridge.core.cache) and the packaged buildspec's cache command lines.

The inline-cache path runs for real in tests/test_image_buildspec.py; the buildx paths (registry cache
manifests) need a buildx plugin this machine does not have, so their exact command lines are checked
here with the recording fake tools of tests/test_plan.py, from the variables plan_build really sets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge.core.cache import cache_tag, parse_cache_mode, plan_cache
from bridge.core.trust import Grant, Policy, TrustFacts, decide
from bridge.errors import InputError
from bridge.model import BuildOptions, CacheMode, SourceEvent
from bridge.plan import plan_build
from tests.test_plan import GH_FORK_PR, GH_PUSH, GH_TAG, assert_valid_start_build
from tests.test_plan import run_buildspec as run_with_fake_tools

REPO = "ghcr.io/octo/app"
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com/app"
FEATURE = replace(GH_PUSH, ref="refs/heads/Feature/Login", branch="Feature/Login", default_branch="main")
SAME_REPO_PR = replace(
    GH_PUSH, kind="pull_request", event_name="pull_request", branch="fix", base_branch="release/2"
)


def env_of(event: SourceEvent, options: BuildOptions) -> dict[str, str]:
    kwargs = plan_build(event, options, idempotency_seed="s").start_build_kwargs
    assert_valid_start_build(kwargs)
    return {
        v["name"]: v["value"]
        for v in kwargs["environmentVariablesOverride"]
        if v["name"].startswith("BRIDGE_CACHE")
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            FEATURE,
            {
                "BRIDGE_CACHE": "registry",
                "BRIDGE_CACHE_REF": f"{REPO}:buildcache-feature-login",
                "BRIDGE_CACHE_FALLBACK_REF": f"{REPO}:buildcache-main",
                "BRIDGE_CACHE_WRITE": "1",
            },
        ),
        (  # the default branch itself: one ref, no fallback
            replace(FEATURE, branch="main", ref="refs/heads/main"),
            {
                "BRIDGE_CACHE": "registry",
                "BRIDGE_CACHE_REF": f"{REPO}:buildcache-main",
                "BRIDGE_CACHE_WRITE": "1",
            },
        ),
        (  # a pull request falls back to its base branch's cache
            SAME_REPO_PR,
            {
                "BRIDGE_CACHE": "registry",
                "BRIDGE_CACHE_REF": f"{REPO}:buildcache-fix",
                "BRIDGE_CACHE_FALLBACK_REF": f"{REPO}:buildcache-release-2",
                "BRIDGE_CACHE_WRITE": "1",
            },
        ),
        (  # an untrusted fork (no grant given: without-secrets) neither reads nor writes the cache
            GH_FORK_PR,
            {},
        ),
        (  # a tag has no branch cache of its own: it reads the default branch's
            replace(GH_TAG, default_branch="main"),
            {
                "BRIDGE_CACHE": "registry",
                "BRIDGE_CACHE_FALLBACK_REF": f"{REPO}:buildcache-main",
                "BRIDGE_CACHE_WRITE": "0",
            },
        ),
    ],
)
def test_cache_refs_are_per_branch_with_a_fallback(event: SourceEvent, expected: dict[str, str]) -> None:
    assert env_of(event, BuildOptions("p", image_repository=REPO)) == expected


def test_a_fork_never_writes_the_cache_even_when_the_route_grants_it() -> None:
    assert GH_FORK_PR.is_fork
    assert not plan_cache(GH_FORK_PR, REPO, "registry", write=True).write
    assert plan_cache(FEATURE, REPO, "registry", write=True).write
    assert not plan_cache(FEATURE, REPO, "registry", write=False).write


@pytest.mark.parametrize("mode", ["none", "local"])
def test_none_and_local_name_no_registry_ref(mode: CacheMode) -> None:
    options = BuildOptions("p", image_repository=REPO, cache=mode)
    assert env_of(FEATURE, options) == {"BRIDGE_CACHE": mode, "BRIDGE_CACHE_WRITE": "0"}


def test_local_cache_asks_codebuild_for_its_docker_layer_cache() -> None:
    kwargs = plan_build(
        FEATURE, BuildOptions("p", image_repository=REPO, cache="local"), idempotency_seed="s"
    )
    assert kwargs.start_build_kwargs["cacheOverride"] == {
        "type": "LOCAL",
        "modes": ["LOCAL_DOCKER_LAYER_CACHE"],
    }
    default = plan_build(FEATURE, BuildOptions("p", image_repository=REPO), idempotency_seed="s")
    assert "cacheOverride" not in default.start_build_kwargs


@pytest.mark.parametrize("branch", ["a" * 300, "UPPER/case_and.dots", "---", "ü"])
def test_cache_tags_are_valid_tags_for_any_branch(branch: str) -> None:
    tag = cache_tag(branch)
    assert tag.startswith("buildcache-")
    assert len(tag) <= 128
    assert all(c.islower() or c.isdigit() or c == "-" for c in tag)
    assert not tag.endswith("-")


def test_cache_mode_input() -> None:
    assert parse_cache_mode(" Inline ") == "inline"
    with pytest.raises(InputError, match="unknown cache mode") as raised:
        parse_cache_mode("s3")
    assert raised.value.name == "cache"


# --- the buildspec's command lines -----------------------------------------------------------------


def docker_calls(tmp_path: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    calls, digest = run_with_fake_tools("buildspec-image.yml", tmp_path, {"IMAGE_URI": f"{REPO}:1", **env})
    return [c["args"] for c in calls if c["tool"] == "docker"], digest


def without_metadata_path(args: list[str]) -> list[Any]:
    index = args.index("--metadata-file")
    return [*args[: index + 1], "<file>", *args[index + 2 :]]


def test_buildx_builds_with_a_registry_cache_and_pushes_by_itself(tmp_path: Path) -> None:
    env = env_of(FEATURE, BuildOptions("p", image_repository=REPO))
    docker, digest = docker_calls(tmp_path, {**env, "FAKE_BUILDX": "1"})
    builds = [args for args in docker if args[:2] == ["buildx", "build"]]
    assert [without_metadata_path(args) for args in builds] == [
        [
            "buildx", "build", "--file", "Dockerfile", "--tag", f"{REPO}:1",
            "--cache-from", f"type=registry,ref={REPO}:buildcache-feature-login",
            "--cache-from", f"type=registry,ref={REPO}:buildcache-main",
            "--cache-to",
            f"type=registry,ref={REPO}:buildcache-feature-login,mode=max,image-manifest=true,oci-mediatypes=true",
            "--provenance", "mode=max", "--sbom", "true",
            "--push", "--metadata-file", "<file>", ".",
        ]
    ]  # fmt: skip
    assert ["buildx", "create", "--use", "--name", "bridge", "--driver", "docker-container"] in docker
    assert all(args[0] != "push" for args in docker)  # buildx pushed; post_build only reads the digest
    assert digest == "sha256:" + "cd" * 32


@pytest.mark.parametrize("buildx", ["0", "1"])
def test_an_untrusted_fork_build_neither_logs_in_nor_pushes_nor_touches_the_cache(
    tmp_path: Path, buildx: str
) -> None:
    """Issue 19, item 2: the packaged buildspec run with exactly the variables plan gives a fork's build."""
    kwargs = plan_build(
        GH_FORK_PR, BuildOptions("p", image_repository=ECR), idempotency_seed="s"
    ).start_build_kwargs
    env = {v["name"]: v["value"] for v in kwargs["environmentVariablesOverride"]}
    assert env["BRIDGE_PUSH"] == "false"
    calls, digest = run_with_fake_tools("buildspec-image.yml", tmp_path, {**env, "FAKE_BUILDX": buildx})
    docker = [c["args"] for c in calls if c["tool"] == "docker"]
    builds = [args for args in docker if "build" in args[:2]]
    assert len(builds) == 1
    assert not [c for c in calls if c["tool"] == "aws"]  # no ECR login with the project's role
    assert not [args for args in docker if args[0] in ("login", "push", "tag")]
    assert "--push" not in builds[0]
    assert not {"--cache-from", "--cache-to"} & set(builds[0])
    assert not any(ECR.partition("/")[0] in arg for arg in builds[0])
    assert not digest


def test_a_trusted_fork_build_reads_the_registry_cache_but_writes_none(tmp_path: Path) -> None:
    grant = decide(
        GH_FORK_PR,
        Policy("r", forks="allow", image_repository=REPO, fork_image_repository=REPO + "-forks"),
        TrustFacts.of(GH_FORK_PR),
    )
    assert isinstance(grant, Grant)
    kwargs = plan_build(
        GH_FORK_PR, BuildOptions("p", image_repository=REPO), grant=grant, idempotency_seed="s"
    ).start_build_kwargs
    env = {
        v["name"]: v["value"]
        for v in kwargs["environmentVariablesOverride"]
        if v["name"].startswith("BRIDGE_C")
    }
    docker, _ = docker_calls(tmp_path, {**env, "FAKE_BUILDX": "1"})
    build = next(args for args in docker if args[:2] == ["buildx", "build"])
    assert "--cache-to" not in build
    assert build.count("--cache-from") == 2


def test_without_buildx_the_registry_cache_becomes_buildkits_inline_cache(tmp_path: Path) -> None:
    env = env_of(FEATURE, BuildOptions("p", image_repository=REPO))
    docker, digest = docker_calls(tmp_path, env)
    assert [args for args in docker if args[0] in ("build", "push", "tag")] == [
        [
            "build", "--file", "Dockerfile", "--tag", f"{REPO}:1",
            "--cache-from", f"{REPO}:buildcache-feature-login",
            "--cache-from", f"{REPO}:buildcache-main",
            "--build-arg", "BUILDKIT_INLINE_CACHE=1", ".",
        ],
        ["push", f"{REPO}:1"],
        ["tag", f"{REPO}:1", f"{REPO}:buildcache-feature-login"],
        ["push", f"{REPO}:buildcache-feature-login"],
    ]  # fmt: skip
    assert digest == "sha256:" + "ab" * 32


@pytest.mark.parametrize("mode", ["none", "local"])
def test_no_cache_flags_without_a_registry_cache(tmp_path: Path, mode: CacheMode) -> None:
    env = env_of(FEATURE, BuildOptions("p", image_repository=REPO, cache=mode))
    docker, _ = docker_calls(tmp_path, {**env, "FAKE_BUILDX": "1"})
    builds = [args for args in docker if "build" in args[:2]]
    if mode == "local":  # CodeBuild's local cache keeps the daemon's layers: the classic builder uses them
        assert builds == [["build", "--file", "Dockerfile", "--tag", f"{REPO}:1", "."]]
    else:
        assert [without_metadata_path(a) for a in builds] == [
            [
                "buildx",
                "build",
                "--file",
                "Dockerfile",
                "--tag",
                f"{REPO}:1",
                "--provenance",
                "mode=max",
                "--sbom",
                "true",
                "--push",
                "--metadata-file",
                "<file>",
                ".",
            ]
        ]
    assert all("buildcache" not in arg for args in docker for arg in args)


def test_the_action_input_and_the_route_key_reach_the_plan() -> None:
    from bridge.action import read_inputs

    inputs = read_inputs(
        {"INPUT_PROJECT-NAME": "proj", "INPUT_IMAGE-REPOSITORY": REPO, "INPUT_CACHE": "inline"}
    )
    assert inputs.options.cache == "inline"
    assert read_inputs({"INPUT_PROJECT-NAME": "proj"}).options.cache == "registry"
    with pytest.raises(InputError, match="unknown cache mode"):
        read_inputs({"INPUT_PROJECT-NAME": "proj", "INPUT_CACHE": "gha"})


def test_the_route_key_reaches_the_plan() -> None:
    from bridge.config import InvalidConfigError
    from bridge.routing import build_options
    from tests.test_config import GITHUB, parse, route

    config = parse(GITHUB + route(cache="local", image_repository=REPO))
    assert build_options(config.routes[0], FEATURE).cache == "local"
    assert build_options(parse(GITHUB + route()).routes[0], FEATURE).cache == "registry"
    with pytest.raises(InvalidConfigError, match="cache"):
        parse(GITHUB + route(cache="gha"))


def test_github_pushes_carry_the_default_branch_for_the_cache_fallback() -> None:
    from bridge.events import from_actions, from_github
    from tests.fixtures import github_example

    payload = github_example("push")
    event = from_github("push", payload)
    assert isinstance(event, SourceEvent)
    assert event.default_branch == payload["repository"]["default_branch"]
    env = {"GITHUB_REPOSITORY": "octo/app", "GITHUB_SHA": "a" * 40, "GITHUB_REF": "refs/heads/x",
           "GITHUB_EVENT_NAME": "push", "GITHUB_SERVER_URL": "https://github.com"}  # fmt: skip
    assert from_actions(env, {"repository": {"default_branch": "trunk"}}).default_branch == "trunk"


def test_attestations_are_on_with_buildx_and_can_be_turned_off(tmp_path: Path) -> None:
    env = env_of(FEATURE, BuildOptions("p", image_repository=REPO, cache="none"))
    for name in ("off", "classic"):
        (tmp_path / name).mkdir()
    docker, _ = docker_calls(tmp_path / "off", {**env, "FAKE_BUILDX": "1", "BRIDGE_ATTESTATIONS": "0"})
    build = next(args for args in docker if args[:2] == ["buildx", "build"])
    assert "--provenance" not in build
    assert "--sbom" not in build
    classic, _ = docker_calls(tmp_path / "classic", env)  # no buildx: nothing to attach them with
    assert all("--provenance" not in args for args in classic)
