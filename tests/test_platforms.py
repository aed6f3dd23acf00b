"""Multi-platform images on native hardware (bridge.core.platforms, buildspec-multiarch.yml).

There is no arm64 host or buildx here: the StartBuild(Batch) requests are validated against botocore's
CodeBuild model, and the buildspec's per-platform and merge command lines are checked with the recording
fake tools of tests/test_plan.py, from the variables the plan really sets.
"""

from __future__ import annotations

import shutil
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
from tests.fakes.codebuild_double import BatchScenario, CodeBuildDouble, Scenario, codebuild_client
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


BUILD_ID = "p:0b1c2d3e-0000-4000-8000-000000000001"


def tool_calls(tmp_path: Path, env: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    request = plan_build(
        GH_PUSH, BuildOptions("p", image_repository=REPO, platforms=BOTH), idempotency_seed="s"
    )
    planned = {v["name"]: v["value"] for v in request.start_build_kwargs["environmentVariablesOverride"]}
    image_env = {k: v for k, v in planned.items() if k.startswith(("IMAGE_", "BRIDGE_CACHE"))}
    return run_with_fake_tools(
        "buildspec-multiarch.yml", tmp_path, {**image_env, "CODEBUILD_BUILD_ID": BUILD_ID, **env}
    )


def docker_calls(tmp_path: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    calls, digest = tool_calls(tmp_path, env)
    return [c["args"] for c in calls if c["tool"] == "docker"], digest


def test_a_platform_build_without_buildx_pushes_a_unique_temporary_ref_and_exports_its_digest(
    tmp_path: Path,
) -> None:
    docker, digest = docker_calls(tmp_path, {"BRIDGE_ARCH": "arm64"})
    temporary = f"{REPO}:bridge-tmp-arm64-{BUILD_ID.split(':')[1]}"
    build: list[Any] = next(args for args in docker if args[0] == "build")
    assert build[:5] == ["build", "--file", "Dockerfile", "--tag", temporary]
    assert f"{REPO}:buildcache-main-arm64" in build  # the cache is per platform too
    assert ["push", temporary] in docker
    assert not any(args[:1] == ["push"] and ":" + GH_PUSH.sha in args[1] for args in docker)
    assert ["push", f"{REPO}:buildcache-main-arm64"] in docker
    assert digest == "sha256:" + "ab" * 32  # what `docker inspect` gave after the push


def test_a_platform_build_with_buildx_pushes_by_digest(tmp_path: Path) -> None:
    docker, digest = docker_calls(tmp_path, {"BRIDGE_ARCH": "arm64", "FAKE_BUILDX": "1"})
    build: list[Any] = next(args for args in docker if args[:2] == ["buildx", "build"])
    assert [
        "--output",
        f"type=image,name={REPO},push-by-digest=true,name-canonical=true,push=true",
    ] == build[build.index("--output") : build.index("--output") + 2]
    assert "--tag" not in build
    assert "--push" not in build
    assert "type=registry,ref=" + f"{REPO}:buildcache-main-arm64" in build  # cache read per platform
    assert not any(args[:1] == ["push"] for args in docker)
    assert digest == "sha256:" + "cd" * 32  # from the build's metadata file


@pytest.mark.parametrize("buildx", [True, False])
def test_the_merge_build_makes_the_index_from_the_platform_digests(tmp_path: Path, buildx: bool) -> None:
    calls, digest = tool_calls(tmp_path, {"BRIDGE_MERGE": "1", "FAKE_BUILDX": "1" if buildx else "0"})
    docker = [c["args"] for c in calls if c["tool"] == "docker"]
    aws = [c["args"] for c in calls if c["tool"] == "aws"]
    assert aws == [
        [
            "codebuild",
            "batch-get-builds",
            "--ids",
            BUILD_ID,
            "--query",
            "builds[0].buildBatchArn",
            "--output",
            "text",
        ],
        [
            "codebuild",
            "batch-get-build-batches",
            "--ids",
            "p:batch-1",
            "--query",
            "buildBatches[0].buildGroups[?identifier!='merge'].currentBuildSummary.arn",
            "--output",
            "text",
        ],
        [
            "codebuild",
            "batch-get-builds",
            "--ids",
            "p:amd",
            "p:arm",
            "--query",
            "builds[].exportedEnvironmentVariables[?name=='IMAGE_DIGEST'].value[]",
            "--output",
            "text",
        ],
    ]
    uri = f"{REPO}:{GH_PUSH.sha}"
    by_digest = [f"{REPO}@sha256:" + "a1" * 32, f"{REPO}@sha256:" + "b2" * 32]
    if buildx:
        assert ["buildx", "imagetools", "create", "--tag", uri, *by_digest] in docker
        assert digest == "sha256:" + "fe" * 32
    else:
        assert ["manifest", "create", uri, *by_digest] in docker
        assert ["manifest", "push", uri] in docker
        assert digest == "sha256:" + "ef" * 32
    assert not any(args[0] in ("build", "push", "tag") or args[:2] == ["buildx", "build"] for args in docker)


def test_an_untrusted_merge_build_merges_nothing(tmp_path: Path) -> None:
    calls, digest = tool_calls(tmp_path, {"BRIDGE_MERGE": "1", "BRIDGE_PUSH": "false"})
    assert [c for c in calls if c["tool"] in ("aws", "docker") and c["args"][:1] != ["buildx"]] == []
    assert digest == ""


def _fake_aws(bin_dir: Path, digests: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    aws = bin_dir / "aws"
    aws.write_text(f"#!/bin/sh\necho 'arn:aws:codebuild:eu-west-1:1:build/p:x'\necho '{digests}'\n")
    aws.chmod(0o755)


@pytest.mark.parametrize(
    "digests", ["sha256:" + "a1" * 32, "sha256:" + "a1" * 32 + " $(touch pwned) sha256:zz", ""]
)
def test_the_merge_build_fails_without_both_platform_digests(
    docker_client_env: dict[str, str], registry: Registry, tmp_path: Path, digests: str
) -> None:
    source = make_source(tmp_path / "src", BUSYBOX_IMAGE, {"app.txt": "v1\n"})
    options = BuildOptions("p", image_repository=f"{registry.address}/octo/app", platforms=BOTH)
    kwargs = plan_build(push_event(), options, idempotency_seed="s").start_build_kwargs
    _fake_aws(tmp_path / "fake", digests)
    env = {
        **docker_client_env,
        **env_from_request(kwargs),
        "PATH": f"{tmp_path / 'fake'}:{docker_client_env['PATH']}",
    }
    result = run_buildspec(kwargs["buildspecOverride"], env=env, source_dir=source, batch_entry="merge")
    assert result.status == "FAILED"
    assert [(phase.name, phase.status) for phase in result.phases][-2:] == [
        ("BUILD", "FAILED"),
        ("POST_BUILD", "SUCCEEDED"),
    ]
    assert "platform images from this batch's builds, found 1: not merging" in result.log or (
        digests == "" and "found 0: not merging" in result.log
    )
    assert registry.manifest("octo/app", SHA) is None
    assert not (source / "pwned").exists()


def test_the_batch_builds_push_by_digest_and_the_merge_indexes_them_for_real(
    docker_client_env: dict[str, str], registry: Registry, codebuild_double: CodeBuildDouble, tmp_path: Path
) -> None:
    """Each build-graph entry of the multi-platform batch run on the real engine (both 'native' builds
    are amd64 here: this machine is), pushing by digest without buildx; then the merge, which reads the
    platform digests with the real AWS CLI from the CodeBuild double's batch (whose platform builds
    export what the real runs exported) and makes the index without buildx (docker manifest)."""
    options = BuildOptions("p", image_repository=f"{registry.address}/octo/app", platforms=BOTH)
    kwargs = plan_build(push_event(), options, idempotency_seed="s").start_build_kwargs
    env = {**docker_client_env, **env_from_request(kwargs), "DOCKER_NETWORK": "none"}
    platforms = {}
    for number, entry in enumerate(("linux_amd64", "linux_arm64"), start=1):
        build_id = f"p:00000000-0000-4000-8000-00000000000{number}"
        # Two native hosts build two different images; this one host makes them differ by content.
        source = make_source(tmp_path / entry, BUSYBOX_IMAGE, {"app.txt": f"built on {entry}\n"})
        platforms[entry] = run_buildspec(
            kwargs["buildspecOverride"], env=env, source_dir=source, batch_entry=entry, build_id=build_id
        )
        result = platforms[entry]
        assert result.status == "SUCCEEDED", f"{entry}:\n{result.log}"
        digest = result.exported["IMAGE_DIGEST"]
        assert result.exported["IMAGE_URI"] == f"{registry.address}/octo/app@{digest}"
        arch = entry.split("_")[1]
        pushed = registry.manifest("octo/app", f"bridge-tmp-{arch}-{build_id.split(':')[1]}")
        assert pushed is not None
        assert pushed[0] == digest
    assert platforms["linux_arm64"].exported["BRIDGE_PLATFORM"] == "linux/arm64"
    assert registry.manifest("octo/app", SHA) is None  # nothing under the tag before the merge

    codebuild_double.script_next_batch(
        BatchScenario(
            builds={
                entry: Scenario(
                    exported_env={k: result.exported[k] for k in ("IMAGE_DIGEST", "BRIDGE_PLATFORM")}
                )
                for entry, result in platforms.items()
            }
            | {"merge": Scenario()}
        )
    )
    client = codebuild_client(codebuild_double.url)
    batch = client.start_build_batch(projectName="p", buildspecOverride=kwargs["buildspecOverride"])[
        "buildBatch"
    ]
    for _ in range(500):
        batch = client.batch_get_build_batches(ids=[batch["id"]])["buildBatches"][0]
        groups = {g["identifier"]: g.get("currentBuildSummary", {}) for g in batch.get("buildGroups", [])}
        if len(groups) == 3 and groups["linux_arm64"].get("buildStatus") == "SUCCEEDED":
            break
        started = [s["arn"].split(":build/")[1] for s in groups.values() if "arn" in s]
        if started:
            client.batch_get_builds(ids=started)
    merge_id = groups["merge"]["arn"].split(":build/")[1]
    aws = shutil.which("aws")
    assert aws, "the AWS CLI (awscli) is part of this machine's Python; the merge build calls it"
    merge_env = {
        **env,
        "AWS_ENDPOINT_URL_CODEBUILD": codebuild_double.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "PATH": f"{Path(aws).parent}:{env['PATH']}",
    }
    merge = run_buildspec(
        kwargs["buildspecOverride"],
        env=merge_env,
        source_dir=tmp_path / "linux_amd64",
        batch_entry="merge",
        build_id=merge_id,
    )
    assert merge.status == "SUCCEEDED", merge.log
    index = registry.manifest("octo/app", SHA)
    assert index is not None
    digest, body = index
    assert merge.exported["IMAGE_DIGEST"] == digest
    assert body["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert sorted(m["digest"] for m in body["manifests"]) == sorted(
        result.exported["IMAGE_DIGEST"] for result in platforms.values()
    )
    asked = [call.operation for call in codebuild_double.requests if "aws-cli" in call.user_agent]
    assert asked == ["BatchGetBuilds", "BatchGetBuildBatches", "BatchGetBuilds"], merge.log
