"""Multi-platform images on native hardware (bridge.core.platforms, buildspec-multiarch.yml).

There is no arm64 host or buildx here: the StartBuild(Batch) requests are validated against botocore's
CodeBuild model, and the buildspec's per-platform and merge command lines are checked with the recording
fake tools of tests/test_plan.py, from the variables the plan really sets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.validate import ParamValidator

from bridge.action import read_inputs
from bridge.errors import InputError
from bridge.model import BuildOptions
from bridge.plan import packaged_buildspec, plan_build, start_build_batch_kwargs
from bridge.routing import build_options
from tests.buildspec_runner import env_from_request, run_buildspec
from tests.docker_engine import Registry
from tests.test_config import GITHUB, parse, route
from tests.test_image_buildspec import BUSYBOX_IMAGE, SHA, make_source, push_event
from tests.test_plan import _CODEBUILD_MODEL, GH_PUSH, assert_valid_start_build
from tests.test_plan import run_buildspec as run_with_fake_tools

REPO = "ghcr.io/octo/app"
BOTH = ("linux/amd64", "linux/arm64")


def test_two_platforms_are_a_batch_of_native_builds_and_a_merge() -> None:
    request = plan_build(
        GH_PUSH, BuildOptions("p", image_repository=REPO, platforms=BOTH), idempotency_seed="s"
    )
    assert request.batch
    kwargs = start_build_batch_kwargs(request.start_build_kwargs)
    shape = _CODEBUILD_MODEL.operation_model("StartBuildBatch").input_shape
    assert shape is not None
    report = ParamValidator().validate(kwargs, shape)
    assert not report.has_errors(), report.generate_report()
    spec = yaml.safe_load(kwargs["buildspecOverride"])
    graph = {entry["identifier"]: entry for entry in spec["batch"]["build-graph"]}
    assert graph["linux_arm64"]["env"]["type"] == "ARM_CONTAINER"
    assert "aarch64" in graph["linux_arm64"]["env"]["image"]
    assert graph["linux_amd64"]["env"]["type"] == "LINUX_CONTAINER"
    assert "x86_64" in graph["linux_amd64"]["env"]["image"]
    assert graph["linux_arm64"]["env"]["variables"] == {"BRIDGE_ARCH": "arm64"}
    assert graph["merge"]["depend-on"] == ["linux_amd64", "linux_arm64"]
    assert graph["merge"]["env"]["variables"] == {"BRIDGE_MERGE": "1"}
    assert all(entry["env"]["privileged-mode"] for entry in graph.values())


def test_the_multiarch_buildspec_runs_exactly_the_image_buildspecs_phases() -> None:
    image = yaml.safe_load(packaged_buildspec("buildspec-image.yml"))
    multi = yaml.safe_load(packaged_buildspec("buildspec-multiarch.yml"))
    assert multi["phases"] == image["phases"]
    assert multi["env"] == image["env"]


def test_arm64_alone_is_one_build_on_arm_hardware() -> None:
    options = BuildOptions("p", image_repository=REPO, platforms=("linux/arm64",))
    request = plan_build(GH_PUSH, options, idempotency_seed="s")
    assert not request.batch
    kwargs = request.start_build_kwargs
    assert_valid_start_build(kwargs)
    assert kwargs["environmentTypeOverride"] == "ARM_CONTAINER"
    assert kwargs["imageOverride"] == "aws/codebuild/amazonlinux-aarch64-standard:3.0"
    assert kwargs["buildspecOverride"] == packaged_buildspec("buildspec-image.yml")
    own = plan_build(GH_PUSH, replace(options, build_image="my/arm:1"), idempotency_seed="s")
    assert own.start_build_kwargs["imageOverride"] == "my/arm:1"
    amd64 = plan_build(GH_PUSH, replace(options, platforms=("linux/amd64",)), idempotency_seed="s")
    assert "environmentTypeOverride" not in amd64.start_build_kwargs


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (BuildOptions("p", platforms=BOTH), "need an image"),
        (BuildOptions("p", image_repository=REPO, platforms=BOTH, buildspec="buildspec.yml"), "of your own"),
        (BuildOptions("p", image_repository=REPO, platforms=BOTH, image_tag="t" * 125), "too long"),
    ],
)
def test_multi_platform_refusals(options: BuildOptions, message: str) -> None:
    with pytest.raises(InputError, match=message):
        plan_build(GH_PUSH, options, idempotency_seed="s")


def test_the_action_input_and_the_route_key() -> None:
    inputs = read_inputs({"INPUT_PROJECT-NAME": "proj", "INPUT_PLATFORMS": "linux/arm64, linux/amd64"})
    assert inputs.options.platforms == BOTH
    with pytest.raises(InputError, match="unsupported platform 'linux/s390x'"):
        read_inputs({"INPUT_PROJECT-NAME": "proj", "INPUT_PLATFORMS": "linux/s390x"})
    config = parse(GITHUB + route(platforms=["linux/arm64"], image_repository=REPO))
    assert build_options(config.routes[0], GH_PUSH).platforms == ("linux/arm64",)
    with pytest.raises(Exception, match=r"platforms\[0\]: unsupported platform"):
        parse(GITHUB + route(platforms=["windows/amd64"]))


def docker_calls(tmp_path: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    request = plan_build(
        GH_PUSH, BuildOptions("p", image_repository=REPO, platforms=BOTH), idempotency_seed="s"
    )
    planned = {v["name"]: v["value"] for v in request.start_build_kwargs["environmentVariablesOverride"]}
    image_env = {k: v for k, v in planned.items() if k.startswith(("IMAGE_", "BRIDGE_CACHE"))}
    calls, digest = run_with_fake_tools("buildspec-multiarch.yml", tmp_path, {**image_env, **env})
    return [c["args"] for c in calls if c["tool"] == "docker"], digest


def test_each_platform_build_pushes_its_own_tag_and_cache(tmp_path: Path) -> None:
    docker, _ = docker_calls(tmp_path, {"BRIDGE_ARCH": "arm64"})
    uri = f"{REPO}:{GH_PUSH.sha}"
    build: list[Any] = next(args for args in docker if args[0] == "build")
    assert build[:5] == ["build", "--file", "Dockerfile", "--tag", f"{uri}-arm64"]
    assert f"{REPO}:buildcache-main-arm64" in build  # the cache is per platform too
    assert ["push", f"{uri}-arm64"] in docker
    assert ["push", f"{REPO}:buildcache-main-arm64"] in docker


@pytest.mark.parametrize("buildx", [True, False])
def test_the_merge_build_makes_the_index_and_exports_its_digest(tmp_path: Path, buildx: bool) -> None:
    docker, digest = docker_calls(tmp_path, {"BRIDGE_MERGE": "1", "FAKE_BUILDX": "1" if buildx else "0"})
    uri = f"{REPO}:{GH_PUSH.sha}"
    if buildx:
        assert ["buildx", "imagetools", "create", "--tag", uri, f"{uri}-amd64", f"{uri}-arm64"] in docker
        assert digest == "sha256:" + "fe" * 32
    else:
        assert ["manifest", "create", uri, f"{uri}-amd64", f"{uri}-arm64"] in docker
        assert ["manifest", "push", uri] in docker
        assert digest == "sha256:" + "ef" * 32
    assert not any(args[0] in ("build", "push", "tag") or args[:2] == ["buildx", "build"] for args in docker)


def test_the_batch_builds_and_merge_run_for_real(
    docker_client_env: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    """Each build-graph entry of the multi-platform batch, run in order on the real engine (both 'native'
    builds are amd64 here: this machine is), then the merge without buildx (docker manifest)."""
    source = make_source(tmp_path / "src", BUSYBOX_IMAGE, {"app.txt": "v1\n"})
    options = BuildOptions("p", image_repository=f"{registry.address}/octo/app", platforms=BOTH)
    kwargs = plan_build(push_event(), options, idempotency_seed="s").start_build_kwargs
    env = {**docker_client_env, **env_from_request(kwargs), "DOCKER_NETWORK": "none"}
    results = {
        entry: run_buildspec(kwargs["buildspecOverride"], env=env, source_dir=source, batch_entry=entry)
        for entry in ("linux_amd64", "linux_arm64", "merge")
    }
    for entry, result in results.items():
        assert result.status == "SUCCEEDED", f"{entry}:\n{result.log}"
    assert results["linux_arm64"].exported["BRIDGE_PLATFORM"] == "linux/arm64"
    per_arch = {arch: registry.manifest("octo/app", f"{SHA}-{arch}") for arch in ("amd64", "arm64")}
    index = registry.manifest("octo/app", SHA)
    assert index is not None
    digest, body = index
    assert results["merge"].exported["IMAGE_DIGEST"] == digest
    assert body["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert [m["digest"] for m in body["manifests"]] == [found[0] for found in per_arch.values() if found]
    assert len(body["manifests"]) == 2
