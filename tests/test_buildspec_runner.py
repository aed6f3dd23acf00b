"""The test-side buildspec runner keeps CodeBuild's rules, or the Docker tests built on it prove nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.buildspec_runner import UnsupportedBuildspecError, env_from_request, run_buildspec


def test_phases_run_in_order_and_variables_carry_between_commands_and_phases(tmp_path: Path) -> None:
    spec = """
version: 0.2
env:
  shell: bash
  variables:
    FROM_SPEC: spec
    OVERRIDDEN: spec
  exported-variables: [RESULT, FROM_SPEC, OVERRIDDEN, NEVER_SET]
phases:
  build:
    commands:
      - echo "build sees $LOCAL_ONLY"
      - mkdir sub && cd sub
      - export RESULT="$(pwd)"
  install:
    commands:
      - LOCAL_ONLY=install-local
      - echo "install $LOCAL_ONLY"
  pre_build:
    commands:
      - export CARRIED=yes
  post_build:
    commands:
      - echo "post_build in $(basename "$PWD") carried=$CARRIED"
"""
    result = run_buildspec(spec, env={"OVERRIDDEN": "request"}, source_dir=tmp_path)
    assert result.status == "SUCCEEDED"
    assert [p.name for p in result.phases] == ["INSTALL", "PRE_BUILD", "BUILD", "POST_BUILD"]
    assert "install install-local" in result.log
    assert "build sees \n" in result.log  # an unexported variable stays in its phase's shell
    assert "post_build in sub carried=yes" in result.log  # cwd and exports carry to the next phase
    assert result.exported == {"RESULT": str(tmp_path / "sub"), "FROM_SPEC": "spec", "OVERRIDDEN": "request"}


def test_a_failed_build_phase_still_runs_post_build_with_succeeding_0(tmp_path: Path) -> None:
    spec = """
version: 0.2
phases:
  build:
    commands:
      - echo before
      - "false"
      - echo never
  post_build:
    commands:
      - echo "succeeding=$CODEBUILD_BUILD_SUCCEEDING"
"""
    result = run_buildspec(spec, env={}, source_dir=tmp_path)
    assert result.status == "FAILED"
    assert [(p.name, p.status) for p in result.phases] == [("BUILD", "FAILED"), ("POST_BUILD", "SUCCEEDED")]
    assert "never" not in result.log
    assert "succeeding=0" in result.log


def test_a_failed_pre_build_ends_the_build(tmp_path: Path) -> None:
    spec = "version: 0.2\nphases:\n  pre_build:\n    commands: ['exit 3']\n  build:\n    commands: [echo x]\n"
    result = run_buildspec(spec, env={}, source_dir=tmp_path)
    assert result.status == "FAILED"
    assert [p.name for p in result.phases] == ["PRE_BUILD"]
    assert "exit status 3" in result.log


def test_sections_the_runner_does_not_reproduce_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedBuildspecError, match="artifacts"):
        run_buildspec("version: 0.2\nartifacts:\n  files: ['**/*']\n", env={}, source_dir=tmp_path)
    with pytest.raises(UnsupportedBuildspecError, match="finally"):
        run_buildspec("version: 0.2\nphases:\n  build:\n    finally: [x]\n", env={}, source_dir=tmp_path)


def test_request_variables_resolve_secrets_by_reference() -> None:
    kwargs = {
        "environmentVariablesOverride": [
            {"name": "PLAIN", "value": "v", "type": "PLAINTEXT"},
            {"name": "PASSWORD", "value": "registry:password", "type": "SECRETS_MANAGER"},
        ]
    }
    assert env_from_request(kwargs, {"registry:password": "s3cret"}) == {"PLAIN": "v", "PASSWORD": "s3cret"}
    with pytest.raises(KeyError, match="PASSWORD"):
        env_from_request(kwargs)
