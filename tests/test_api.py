"""bridge.api.build end to end: a real folder, moto's S3 (and ECR), the CodeBuild double, no patching.

Also the documented orchestrator example: an image-builder hook in the shape ZenML's and Union's
builders take (a name, a build context directory, options), built on bridge.api.build.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from bridge.api import BuildFailedError, BuildOptions, RegistryAuth, build, split_image
from bridge.errors import BridgeError, InputError
from bridge.model import BuildStatus, EnvVar
from tests.fakes.codebuild_double import BatchScenario, CodeBuildDouble, Scenario

PROJECT = "codebuild-flex"
BUCKET = "ml-contexts"
ECR_REPO = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/trainer"
DIGEST = "sha256:" + "cd" * 32


@pytest.fixture
def s3(aws_env: dict[str, str]) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return client


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "trainer"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\nCOPY train.py /\n")
    (root / "train.py").write_text("print('train')\n")
    (root / "data").mkdir()
    (root / "data" / "big.parquet").write_bytes(b"\0" * 1000)
    (root / ".dockerignore").write_text("data\n")
    return root


def no_sleep(_seconds: float) -> None:
    return None


def test_build_uploads_the_context_runs_the_build_and_returns_the_digest(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_next(
        Scenario(exported_env={"IMAGE_URI": f"{ECR_REPO}:v3", "IMAGE_DIGEST": DIGEST})
    )
    seen: list[BuildStatus] = []

    digest = build(
        f"{ECR_REPO}:v3",
        context,
        {
            "compute_type": "BUILD_GENERAL1_LARGE",
            "env_vars": {"EPOCHS": "3", "WANDB_KEY": "secretsmanager:ml/wandb#key"},
        },
        RegistryAuth.from_json_secret("secretsmanager:dockerhub", server="docker.io"),
        project=PROJECT,
        bucket=BUCKET,
        prefix="api",
        poll_interval=0.01,
        on_status=seen.append,
        sleep=no_sleep,
    )

    assert digest == DIGEST
    [start] = codebuild_double.calls("StartBuild")
    params = start.params
    assert params["projectName"] == PROJECT
    assert params["sourceTypeOverride"] == "S3"
    assert params["computeTypeOverride"] == "BUILD_GENERAL1_LARGE"
    assert params["privilegedModeOverride"] is True
    variables = {v["name"]: (v["type"], v["value"]) for v in params["environmentVariablesOverride"]}
    assert variables["IMAGE_URI"] == ("PLAINTEXT", f"{ECR_REPO}:v3")
    assert variables["EPOCHS"] == ("PLAINTEXT", "3")
    assert variables["WANDB_KEY"] == ("SECRETS_MANAGER", "ml/wandb:key")
    assert variables["REGISTRY_PASSWORD"] == ("SECRETS_MANAGER", "dockerhub:password")
    assert variables["REGISTRY_SERVER"] == ("PLAINTEXT", "docker.io")

    bucket, _, key = params["sourceLocationOverride"].partition("/")
    assert bucket == BUCKET
    assert key.startswith("api/")
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert sorted(zipfile.ZipFile(io.BytesIO(body)).namelist()) == [".dockerignore", "Dockerfile", "train.py"]

    assert seen[-1].build_status == "SUCCEEDED"
    assert seen[0].state in ("queued", "in_progress")
    assert len({(s.build_status, s.current_phase) for s in seen}) == len(seen)  # one callback per change


def test_options_as_build_options_or_keywords(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_project(PROJECT, Scenario(exported_env={"IMAGE_DIGEST": DIGEST}))
    build(
        f"{ECR_REPO}:a",
        context,
        BuildOptions(project_name="ignored", timeout_minutes=20, env_vars=(EnvVar("A", "1"),)),
        project=PROJECT,
        bucket=BUCKET,
        sleep=no_sleep,
    )
    build(f"{ECR_REPO}:b", context, project=PROJECT, bucket=BUCKET, sleep=no_sleep, timeout_minutes=25)
    first, second = codebuild_double.calls("StartBuild")
    assert first.params["timeoutInMinutesOverride"] == 20
    assert second.params["timeoutInMinutesOverride"] == 25
    assert first.params["idempotencyToken"] != second.params["idempotencyToken"]
    # The unchanged context was uploaded once and used twice.
    assert first.params["sourceLocationOverride"] == second.params["sourceLocationOverride"]
    assert len(s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == 1


def test_a_failed_build_raises_with_its_status(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_next(Scenario(final_status="FAILED"))
    with pytest.raises(BuildFailedError) as raised:
        build(f"{ECR_REPO}:x", context, project=PROJECT, bucket=BUCKET, sleep=no_sleep)
    assert raised.value.status.build_status == "FAILED"
    assert "failed in BUILD" in str(raised.value)
    assert "codesuite/codebuild" in (raised.value.hint or "")


def test_wait_false_returns_the_build_id(s3: Any, context: Path, codebuild_double: CodeBuildDouble) -> None:
    build_id = build(f"{ECR_REPO}:x", context, project=PROJECT, bucket=BUCKET, wait=False)
    assert build_id.startswith(f"{PROJECT}:")
    assert codebuild_double.calls("BatchGetBuilds") == []


def test_a_build_past_its_timeout_is_stopped(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase=10_000))
    with pytest.raises(BridgeError, match="did not finish"):
        build(
            f"{ECR_REPO}:x", context, project=PROJECT, bucket=BUCKET, timeout_seconds=0.2, poll_interval=0.05
        )
    [stop] = codebuild_double.calls("StopBuild")
    assert codebuild_double.build(stop.params["id"])["buildStatus"] == "STOPPED"


def _push_to_moto_ecr(tag: str) -> str:
    ecr = boto3.client("ecr")
    ecr.create_repository(repositoryName="trainer")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 2,
            "digest": DIGEST,
        },
        "layers": [],
    }
    ecr.put_image(repositoryName="trainer", imageManifest=json.dumps(manifest), imageTag=tag)
    details = ecr.describe_images(repositoryName="trainer", imageIds=[{"imageTag": tag}])["imageDetails"]
    return str(details[0]["imageDigest"])


def test_a_batch_build_gets_its_digest_from_ecr(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble
) -> None:
    expected = _push_to_moto_ecr("multi")
    codebuild_double.script_next_batch(BatchScenario({"amd64": Scenario(), "arm64": Scenario()}))
    digest = build(f"{ECR_REPO}:multi", context, project=PROJECT, bucket=BUCKET, batch=True, sleep=no_sleep)
    assert digest == expected
    assert len(codebuild_double.calls("StartBuildBatch")) == 1
    assert codebuild_double.calls("StartBuild") == []


def test_an_unknown_digest_is_an_error_not_an_empty_string(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble
) -> None:
    with pytest.raises(BridgeError, match="digest is unknown"):
        build("ghcr.io/octo/trainer:1", context, project=PROJECT, bucket=BUCKET, sleep=no_sleep)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"source_type": "GITHUB"}, "source_type"),
        ({"image_tag": "x"}, "image_tag"),
        ({"compute": "large"}, "compute"),
        ({"registry": RegistryAuth("bot", "hunter2")}, "registry-username"),
    ],
)
def test_bad_options_are_input_errors_before_any_call(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(InputError) as raised:
        build(f"{ECR_REPO}:x", context, project=PROJECT, bucket=BUCKET, **kwargs)
    assert raised.value.name == named
    assert "hunter2" not in str(raised.value)
    assert codebuild_double.requests == []


def test_a_context_that_is_not_a_folder(s3: Any, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        build(f"{ECR_REPO}:x", tmp_path / "missing", project=PROJECT, bucket=BUCKET)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ghcr.io/o/app:1.2", ("ghcr.io/o/app", "1.2")),
        ("ghcr.io/o/app", ("ghcr.io/o/app", "latest")),
        ("registry.example.com:5000/app", ("registry.example.com:5000/app", "latest")),
        ("registry.example.com:5000/app:v1", ("registry.example.com:5000/app", "v1")),
    ],
)
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


def test_split_image_refuses_a_digest() -> None:
    with pytest.raises(InputError, match="digest"):
        split_image("ghcr.io/o/app@sha256:" + "a" * 64)


# --- the documented orchestrator hook -------------------------------------------------------------------


class CodeBuildImageBuilder:
    """What docs/builders.md shows: an orchestrator's image-builder hook delegating to bridge."""

    def __init__(self, project: str, bucket: str, *, poll_interval: float = 10.0, **defaults: Any) -> None:
        self.project, self.bucket, self.defaults = project, bucket, defaults
        self.poll_interval = poll_interval

    def build(self, image_name: str, build_context_root: str, docker_build_options: dict[str, Any]) -> str:
        env = {f"BUILD_ARG_{k.upper()}": str(v) for k, v in docker_build_options.get("buildargs", {}).items()}
        digest = build(
            image_name,
            build_context_root,
            {**self.defaults, "env_vars": env},
            project=self.project,
            bucket=self.bucket,
            prefix="orchestrator",
            poll_interval=self.poll_interval,
        )
        return f"{image_name.rsplit(':', 1)[0]}@{digest}"


def test_an_orchestrator_hook_gets_a_pinned_image_reference(
    s3: Any, context: Path, codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_next(Scenario(exported_env={"IMAGE_DIGEST": DIGEST}, seconds_per_poll=0))
    hook = CodeBuildImageBuilder(PROJECT, BUCKET, compute_type="BUILD_GENERAL1_MEDIUM", poll_interval=0.01)
    pinned = hook.build(f"{ECR_REPO}:run-42", str(context), {"buildargs": {"python": "3.11"}})
    assert pinned == f"{ECR_REPO}@{DIGEST}"
    [start] = codebuild_double.calls("StartBuild")
    assert {"name": "BUILD_ARG_PYTHON", "value": "3.11", "type": "PLAINTEXT"} in start.params[
        "environmentVariablesOverride"
    ]
