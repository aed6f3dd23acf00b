"""The project's own image, built from this Dockerfile on a real engine and run as GitHub's runner runs a
container action.

Nothing can be pulled here, so the base is a Python root made from Debian's packages (debootstrap, cached
outside the repository: tests/docker_engine.py) and passed as the BASE_IMAGE build argument; the
dependencies come from PyPI (the package registry) during the build, hash-checked by the lock.

The run follows the runner's `docker run` for a `runs.using: docker` action: the workspace mounted at
/github/workspace (the working directory), the file-command folder at /github/file_commands and the
event file under /github/workflow, INPUT_* variables named with their dashes, the GITHUB_* context, and
the host network so the container reaches moto, the CodeBuild double and the fake GitHub on loopback.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker_engine import Dockerd, client_bin_dir, docker, docker_env, python_base_image, remove_tree
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.test_action import (
    DIGEST,
    ECR_REPO,
    build_lines,
    check_run_requests,
    parse_outputs,
    push_payload,
    runner_env,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "bridge-test-image:dev"


@pytest.fixture(scope="session")
def project_image(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Build this checkout's Dockerfile once per session; the docker client env to use it with."""
    root = tmp_path_factory.mktemp("image")
    env = docker_env(dockerd, root / "config", client_bin_dir(root))
    base = python_base_image(env)
    docker(
        env,
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        IMAGE,
        str(ROOT),
        timeout=900,
    )
    try:
        yield env
    finally:
        remove_tree(root)


def test_the_image_runs_the_action_as_the_runner_does(
    project_image: dict[str, str],
    tmp_path: Path,
    aws_env: dict[str, str],
    github_api: FakeGitHub,
    codebuild_double: CodeBuildDouble,
) -> None:
    token = github_api.add_token("ghs_image_test_token", kind="actions")
    payload = push_payload()
    sha = payload["after"]
    host_env = runner_env(
        tmp_path,
        aws_env,
        github_api,
        "push",
        payload,
        {"image-repository": ECR_REPO, "env-vars": "NODE_ENV=production", "poll-interval-seconds": "0.1"},
        github_sha=sha,
        github_ref=payload["ref"],
    )
    host_env["INPUT_GITHUB-TOKEN"] = token
    # The runner's folders, mounted where it mounts them; the paths inside are what the action sees.
    workspace, commands, workflow = tmp_path / "workspace", tmp_path / "file_commands", tmp_path / "workflow"
    for folder in (workspace, commands, workflow):
        folder.mkdir()
    (workflow / "event.json").write_text(json.dumps(payload), encoding="utf-8")
    (commands / "set_output_1").touch()
    (commands / "step_summary_1").touch()
    container_env = {
        **{k: v for k, v in host_env.items() if k.startswith(("INPUT_", "GITHUB_", "AWS_"))},
        "GITHUB_WORKSPACE": "/github/workspace",
        "GITHUB_EVENT_PATH": "/github/workflow/event.json",
        "GITHUB_OUTPUT": "/github/file_commands/set_output_1",
        "GITHUB_STEP_SUMMARY": "/github/file_commands/step_summary_1",
        "HOME": "/github/home",
        "CI": "true",
        "RUNNER_OS": "Linux",
    }
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        container_env[name] = "/github/home/absent"
    command = ["docker", "run", "--rm", "--network", "host", "--workdir", "/github/workspace"]
    for name in sorted(container_env):
        command += ["-e", name]  # names only: values come from the client's environment, as the runner does
    command += [
        "-v", f"{workspace}:/github/workspace",
        "-v", f"{commands}:/github/file_commands",
        "-v", f"{workflow}:/github/workflow",
        IMAGE,
    ]  # fmt: skip
    codebuild_double.script_next(
        Scenario(
            log_lines=build_lines(), exported_env={"IMAGE_URI": f"{ECR_REPO}:{sha}", "IMAGE_DIGEST": DIGEST}
        )
    )

    started = time.monotonic()
    process = subprocess.Popen(
        command,
        env={**project_image, **container_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not codebuild_double.calls("StartBuild") and process.poll() is None:
        time.sleep(0.01)
    start_build_seconds = time.monotonic() - started
    stdout, stderr = process.communicate(timeout=300)

    assert process.returncode == 0, stdout + stderr
    print(f"container start -> StartBuild: {start_build_seconds:.2f} s")
    [start] = codebuild_double.calls("StartBuild")
    assert start.params["sourceVersion"] == sha
    assert start.params["environmentVariablesOverride"][0]["name"] == "GITHUB_REPOSITORY"
    outputs = parse_outputs((commands / "set_output_1").read_text(encoding="utf-8"))
    assert outputs["build-status"] == "SUCCEEDED"
    assert outputs["image-digest"] == DIGEST
    assert outputs["image-uri"] == f"{ECR_REPO}:{sha}"
    summary = (commands / "step_summary_1").read_text(encoding="utf-8")
    assert "SUCCEEDED" in summary
    assert "::group::" in stdout  # the log, grouped by phase
    assert next(method for method, _ in check_run_requests(github_api)) == "POST"


def test_the_image_is_small_and_runs_its_cli(project_image: dict[str, str]) -> None:
    size = int(docker(project_image, "image", "inspect", "--format", "{{.Size}}", IMAGE))
    print(f"image size: {size / 1e6:.0f} MB")
    version = docker(project_image, "run", "--rm", "--network", "none", IMAGE, "--version")
    assert version.strip()
