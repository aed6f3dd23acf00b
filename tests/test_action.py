"""The Action end to end: entrypoint.py as the runner starts it, against real local services.

Each test writes a real event file from @octokit/webhooks-examples, runs entrypoint.py as a
subprocess with the runner's environment (INPUT_* with hyphens kept, GITHUB_*), and checks what a
user sees: the StartBuild request CodeBuild received, the outputs file, the step summary, the
check-run requests GitHub received, the job log and the exit code.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.fakes.codebuild_double import BatchScenario, CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.fixtures import github_example, github_examples

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "entrypoint.py"
PROJECT = "codebuild-flex"
ECR_REPO = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web"
DIGEST = "sha256:" + "ab" * 32
TOKEN = "ghs_actionsTokenValue0123456789abcdef"  # a value that must never leak
# An upper bound for one Action run, not an expected duration: a loaded machine can be slow.
PROCESS_TIMEOUT = 300.0


@dataclass
class ActionRun:
    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, str]
    summary: str


def parse_outputs(text: str) -> dict[str, str]:
    """Read $GITHUB_OUTPUT the way the runner does (`name<<DELIM` blocks and `name=value` lines)."""
    outputs: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            value: list[str] = []
            for body in lines:
                if body == delimiter:
                    break
                value.append(body)
            outputs[name] = "\n".join(value)
        elif "=" in line:
            name, value_text = line.split("=", 1)
            outputs[name] = value_text
    return outputs


def unescape_command(line: str) -> str:
    """Workflow-command data as the runner decodes it (%25, %0D, %0A)."""
    return line.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")


def runner_env(
    tmp_path: Path,
    aws_env: Mapping[str, str],
    github_api: FakeGitHub,
    event_name: str,
    payload: Mapping[str, Any],
    inputs: Mapping[str, str],
    *,
    github_sha: str,
    github_ref: str,
) -> dict[str, str]:
    event_path = tmp_path / "event.json"
    event_path.write_text(json.dumps(payload))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        **aws_env,
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": event_name,
        "GITHUB_EVENT_PATH": str(event_path),
        "GITHUB_SHA": github_sha,
        "GITHUB_REF": github_ref,
        "GITHUB_REPOSITORY": payload["repository"]["full_name"],
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_API_URL": github_api.url,
        "GITHUB_RUN_ID": "9876543210",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_RUN_NUMBER": "42",
        "GITHUB_JOB": "image",
        "GITHUB_ACTION": "__codebuild-bridge_bridge",
        "GITHUB_ACTOR": "octocat",
        "GITHUB_WORKFLOW": "build",
        "GITHUB_OUTPUT": str(tmp_path / "output.txt"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "INPUT_PROJECT-NAME": PROJECT,
        "INPUT_GITHUB-TOKEN": TOKEN,
        "INPUT_POLL-INTERVAL-SECONDS": "0.1",
    }
    env.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
    return env


def collect(tmp_path: Path, returncode: int, stdout: str, stderr: str) -> ActionRun:
    output_file = tmp_path / "output.txt"
    summary_file = tmp_path / "summary.md"
    return ActionRun(
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        outputs=parse_outputs(output_file.read_text()) if output_file.exists() else {},
        summary=summary_file.read_text() if summary_file.exists() else "",
    )


def run_action(env: Mapping[str, str], tmp_path: Path, timeout: float = PROCESS_TIMEOUT) -> ActionRun:
    try:
        done = subprocess.run(
            [sys.executable, str(ENTRYPOINT)],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(
            f"the Action did not finish in {timeout} s; its output:\n{expired.output!r}\n{expired.stderr!r}"
        )
    return collect(tmp_path, done.returncode, done.stdout, done.stderr)


def push_payload() -> dict[str, Any]:
    """The first published branch push (the package also has tag pushes and deletions)."""
    examples = github_examples("push")
    index = next(i for i, e in enumerate(examples) if e["ref"].startswith("refs/heads/") and not e["deleted"])
    return github_example("push", index=index)


def build_lines() -> dict[str, list[str]]:
    return {
        "DOWNLOAD_SOURCE": ["[Container] 2026/11/23 01:00:00.000001 Entering phase DOWNLOAD_SOURCE"],
        "BUILD": [
            "[Container] 2026/11/23 01:00:05.000001 Entering phase BUILD",
            "Step 1/3 : FROM scratch",
            "::add-mask::not-a-command-from-the-build",
            "::set-output name=image-digest::sha256:forged",
            "Successfully built 0123456789ab",
        ],
        "POST_BUILD": ["[Container] 2026/11/23 01:00:09.000001 Entering phase POST_BUILD", "pushed"],
    }


@pytest.fixture
def actions_token(github_api: FakeGitHub) -> str:
    return github_api.add_token(TOKEN, kind="actions")


@pytest.fixture
def push_env(
    tmp_path: Path, aws_env: dict[str, str], github_api: FakeGitHub, actions_token: str
) -> dict[str, str]:
    payload = push_payload()
    return runner_env(
        tmp_path,
        aws_env,
        github_api,
        "push",
        payload,
        {
            "image-repository": ECR_REPO,
            "env-vars": "NODE_ENV=production\nNPM_TOKEN=secretsmanager:ci/npm:token\nDB_URL=ssm:/ci/db-url",
        },
        github_sha=payload["after"],
        github_ref=payload["ref"],
    )


def check_run_requests(github_api: FakeGitHub) -> list[tuple[str, dict[str, Any]]]:
    return [(r.method, r.json) for r in github_api.requests if "/check-runs" in r.path]


def test_push_builds_this_commit_streams_logs_reports_check_and_sets_outputs(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    sha = json.loads(Path(push_env["GITHUB_EVENT_PATH"]).read_text())["after"]
    codebuild_double.script_next(
        Scenario(
            log_lines=build_lines(), exported_env={"IMAGE_URI": f"{ECR_REPO}:{sha}", "IMAGE_DIGEST": DIGEST}
        )
    )

    run = run_action(push_env, tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    [start] = codebuild_double.calls("StartBuild")
    params = start.params
    assert params["projectName"] == PROJECT
    assert params["sourceVersion"] == sha
    assert params["sourceTypeOverride"] == "GITHUB"
    assert params["sourceLocationOverride"] == "https://github.com/Codertocat/Hello-World.git"
    assert params["buildspecOverride"] == files("bridge").joinpath("data/buildspec-image.yml").read_text()
    assert params["idempotencyToken"]
    variables = {v["name"]: (v["type"], v["value"]) for v in params["environmentVariablesOverride"]}
    assert variables["NODE_ENV"] == ("PLAINTEXT", "production")
    assert variables["NPM_TOKEN"] == ("SECRETS_MANAGER", "ci/npm:token")
    assert variables["DB_URL"] == ("PARAMETER_STORE", "/ci/db-url")
    assert variables["GITHUB_RUN_ID"] == ("PLAINTEXT", "9876543210")
    assert variables["IMAGE_URI"] == ("PLAINTEXT", f"{ECR_REPO}:{sha}")

    build_id = run.outputs["build-id"]
    assert build_id.startswith(f"{PROJECT}:")
    assert run.outputs["build-status"] == "SUCCEEDED"
    assert run.outputs["build-number"] == "1"
    assert run.outputs["image-uri"] == f"{ECR_REPO}:{sha}"
    assert run.outputs["image-digest"] == DIGEST
    assert "codesuite/codebuild" in run.outputs["build-url"]
    assert "| BUILD |" in run.summary
    assert "SUCCEEDED" in run.summary or "succeeded" in run.summary

    # The log is streamed, grouped by phase, and the build's own lines cannot issue commands.
    assert "::group::BUILD" in run.stdout
    assert "Successfully built 0123456789ab" in run.stdout
    lines = run.stdout.splitlines()
    forged = lines.index("::set-output name=image-digest::sha256:forged")
    opened = max(i for i, line in enumerate(lines[:forged]) if line.startswith("::stop-commands::"))
    token = lines[opened].removeprefix("::stop-commands::")
    assert f"::{token}::" in lines[forged:]

    checks = check_run_requests(github_api)
    method, created = checks[0]
    assert method == "POST"
    assert created["name"] == f"codebuild/{PROJECT}"
    assert created["head_sha"] == sha
    assert created["details_url"] == run.outputs["build-url"]
    assert checks[-1][0] == "PATCH"
    assert checks[-1][1]["status"] == "completed"
    assert checks[-1][1]["conclusion"] == "success"
    assert "BUILD" in checks[-1][1]["output"]["summary"]

    # The token is only ever printed inside the runner's add-mask command.
    leaked = [line for line in (run.stdout + run.stderr).splitlines() if TOKEN in line]
    assert leaked == [f"::add-mask::{TOKEN}"]


def test_pull_request_from_a_fork_builds_the_head_commit_of_the_head_repository(
    tmp_path: Path,
    aws_env: dict[str, str],
    github_api: FakeGitHub,
    actions_token: str,
    codebuild_double: CodeBuildDouble,
) -> None:
    payload = github_example("pull_request", "opened")
    payload["pull_request"]["head"]["repo"] = dict(
        payload["pull_request"]["head"]["repo"],
        full_name="forker/Hello-World",
        clone_url="https://github.com/forker/Hello-World.git",
    )
    merge_sha = "f" * 40  # GITHUB_SHA of a pull_request run is the test merge commit
    env = runner_env(
        tmp_path,
        aws_env,
        github_api,
        "pull_request",
        payload,
        {},
        github_sha=merge_sha,
        github_ref=f"refs/pull/{payload['number']}/merge",
    )
    run = run_action(env, tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    [start] = codebuild_double.calls("StartBuild")
    assert start.params["sourceVersion"] == payload["pull_request"]["head"]["sha"]
    assert start.params["sourceVersion"] != merge_sha
    assert start.params["sourceLocationOverride"] == "https://github.com/forker/Hello-World.git"


# --- privileged events that carry fork code -------------------------------------------------------------

TRUSTED_INPUTS = {
    "image-repository": ECR_REPO,
    "env-vars": "NODE_ENV=production\nNPM_TOKEN=secretsmanager:ci/npm:token\nDB_URL=ssm:/ci/db-url",
    "registry-credentials": "secretsmanager:ghcr-bot",
    "registry-server": "ghcr.io",
}
FORK = "forker/Hello-World"


def fork_pull_request(*, deleted: bool = False) -> dict[str, Any]:
    payload = github_example("pull_request", "opened")
    head = payload["pull_request"]["head"]
    head["repo"] = (
        None if deleted else dict(head["repo"], full_name=FORK, clone_url=f"https://github.com/{FORK}.git")
    )
    return payload


def pull_request_target_env(
    tmp_path: Path, aws_env: dict[str, str], github_api: FakeGitHub, payload: dict[str, Any], **inputs: str
) -> dict[str, str]:
    base_tip = "e" * 40  # GITHUB_SHA of a pull_request_target run is the base branch's tip
    return runner_env(
        tmp_path,
        aws_env,
        github_api,
        "pull_request_target",
        payload,
        {**TRUSTED_INPUTS, **inputs},
        github_sha=base_tip,
        github_ref=f"refs/heads/{payload['pull_request']['base']['ref']}",
    )


def workflow_run_env(
    tmp_path: Path, aws_env: dict[str, str], github_api: FakeGitHub, head_repository: str, **inputs: str
) -> dict[str, str]:
    payload = github_example("workflow_run", "completed")
    payload["repository"] = dict(payload["repository"], full_name="Codertocat/Hello-World")
    payload["workflow_run"]["head_repository"] = dict(
        payload["workflow_run"]["head_repository"], full_name=head_repository
    )
    payload["workflow_run"]["event"] = "pull_request"
    return runner_env(
        tmp_path,
        aws_env,
        github_api,
        "workflow_run",
        payload,
        {**TRUSTED_INPUTS, **inputs},
        github_sha="d" * 40,
        github_ref="refs/heads/main",
    )


@dataclass
class Privileged:
    """The Action's runner on a privileged event (the repository's secrets in the workflow), with the
    trusted inputs; `run` runs entrypoint.py in it."""

    tmp_path: Path
    aws_env: dict[str, str]
    github_api: FakeGitHub

    def pull_request_target(self, payload: dict[str, Any], **inputs: str) -> dict[str, str]:
        return pull_request_target_env(self.tmp_path, self.aws_env, self.github_api, payload, **inputs)

    def workflow_run(self, head_repository: str, **inputs: str) -> dict[str, str]:
        return workflow_run_env(self.tmp_path, self.aws_env, self.github_api, head_repository, **inputs)

    def run(self, env: Mapping[str, str]) -> ActionRun:
        return run_action(env, self.tmp_path)


@pytest.fixture
def privileged(
    tmp_path: Path, aws_env: dict[str, str], github_api: FakeGitHub, actions_token: str
) -> Privileged:
    return Privileged(tmp_path, aws_env, github_api)


def start_variables(codebuild_double: CodeBuildDouble) -> dict[str, tuple[str, str]]:
    [start] = codebuild_double.calls("StartBuild")
    return {v["name"]: (v["type"], v["value"]) for v in start.params.get("environmentVariablesOverride", [])}


def assert_refused_naming_the_opt_in(
    run: ActionRun, event_name: str, codebuild_double: CodeBuildDouble
) -> None:
    assert run.returncode == 2, run.stdout + run.stderr
    [error] = error_lines(run)
    assert "allow-fork-code" in error
    assert f"{event_name} runs with this repository's secrets" in error
    assert "fork code" in error
    assert codebuild_double.requests == []


def assert_built_with_nothing_trusted(
    run: ActionRun, codebuild_double: CodeBuildDouble
) -> dict[str, tuple[str, str]]:
    """The build started with no secret or parameter-store variable and no registry credentials."""
    assert run.returncode == 0, run.stdout + run.stderr
    variables = start_variables(codebuild_double)
    assert {name for name, (kind, _) in variables.items() if kind != "PLAINTEXT"} == set()
    assert not any(name.startswith("REGISTRY_") for name in variables)
    return variables


@pytest.mark.parametrize("deleted", [False, True], ids=["fork", "deleted-fork"])
def test_pull_request_target_refuses_a_fork_head_with_one_error_naming_the_opt_in(
    privileged: Privileged, github_api: FakeGitHub, codebuild_double: CodeBuildDouble, deleted: bool
) -> None:
    run = privileged.run(privileged.pull_request_target(fork_pull_request(deleted=deleted)))

    assert_refused_naming_the_opt_in(run, "pull_request_target", codebuild_double)
    assert check_run_requests(github_api) == []


def test_pull_request_target_with_allow_fork_code_drops_secrets_registry_credentials_and_the_push(
    privileged: Privileged, codebuild_double: CodeBuildDouble
) -> None:
    payload = fork_pull_request()
    run = privileged.run(privileged.pull_request_target(payload, **{"allow-fork-code": "true"}))

    variables = assert_built_with_nothing_trusted(run, codebuild_double)
    [start] = codebuild_double.calls("StartBuild")
    assert start.params["sourceVersion"] == payload["pull_request"]["head"]["sha"]
    assert start.params["sourceLocationOverride"] == f"https://github.com/{FORK}.git"
    assert "IMAGE_REPOSITORY" not in variables
    assert variables["NODE_ENV"] == ("PLAINTEXT", "production")
    warnings = [unescape_command(line) for line in run.stdout.splitlines() if line.startswith("::warning")]
    assert any("allow-fork-code: building fork code from forker/Hello-World" in w for w in warnings)
    assert any("NPM_TOKEN" in w and "DB_URL" in w for w in warnings)
    assert any("registry credentials" in w for w in warnings)
    assert error_lines(run) == []


def test_pull_request_target_from_the_repository_itself_builds_with_its_secrets(
    privileged: Privileged, codebuild_double: CodeBuildDouble
) -> None:
    payload = github_example("pull_request", "opened")  # head and base are the same repository
    run = privileged.run(privileged.pull_request_target(payload))

    assert run.returncode == 0, run.stdout + run.stderr
    variables = start_variables(codebuild_double)
    assert variables["NPM_TOKEN"] == ("SECRETS_MANAGER", "ci/npm:token")
    assert variables["REGISTRY_PASSWORD"] == ("SECRETS_MANAGER", "ghcr-bot:password")
    assert variables["IMAGE_REPOSITORY"] == ("PLAINTEXT", ECR_REPO)
    assert not any(line.startswith("::warning") for line in run.stdout.splitlines())


def test_workflow_run_of_a_fork_is_refused_and_built_without_secrets_when_allowed(
    privileged: Privileged, codebuild_double: CodeBuildDouble
) -> None:
    env = privileged.workflow_run(FORK)
    refused = privileged.run(env)
    assert_refused_naming_the_opt_in(refused, "workflow_run", codebuild_double)

    allowed = privileged.run({**env, "INPUT_ALLOW-FORK-CODE": "true"})
    assert_built_with_nothing_trusted(allowed, codebuild_double)


def test_workflow_run_of_the_repository_itself_builds_with_its_secrets(
    privileged: Privileged, codebuild_double: CodeBuildDouble
) -> None:
    run = privileged.run(privileged.workflow_run("Codertocat/Hello-World"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert start_variables(codebuild_double)["NPM_TOKEN"] == ("SECRETS_MANAGER", "ci/npm:token")


@pytest.mark.parametrize(
    ("final_status", "conclusion"),
    [("FAILED", "failure"), ("FAULT", "failure"), ("TIMED_OUT", "timed_out"), ("STOPPED", "cancelled")],
)
def test_a_build_that_does_not_succeed_fails_the_job_and_the_check(
    tmp_path: Path,
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    final_status: str,
    conclusion: str,
) -> None:
    codebuild_double.script_next(Scenario(final_status=final_status, log_lines=build_lines()))

    run = run_action(push_env, tmp_path)

    assert run.returncode == 1
    assert run.outputs["build-status"] == final_status
    assert run.outputs["image-digest"] == ""
    errors = [line for line in run.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert run.outputs["build-url"] in unescape_command(errors[0])
    assert check_run_requests(github_api)[-1][1]["conclusion"] == conclusion


def test_wait_false_returns_right_after_the_start(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase=1000))
    run = run_action({**push_env, "INPUT_WAIT": "false"}, tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    assert len(codebuild_double.calls("StartBuild")) == 1
    assert codebuild_double.calls("BatchGetBuilds") == []
    assert run.outputs["build-status"] == "IN_PROGRESS"
    assert run.outputs["build-id"].startswith(f"{PROJECT}:")
    checks = check_run_requests(github_api)
    assert [method for method, _ in checks] == ["POST"]
    assert checks[0][1]["status"] == "in_progress"


def test_without_aws_credentials_one_error_line_names_the_step_to_add(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble
) -> None:
    env = {k: v for k, v in push_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    run = run_action(env, tmp_path)

    assert run.returncode == 3
    errors = [line for line in run.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert "configure-aws-credentials" in errors[0]
    assert codebuild_double.calls("StartBuild") == []


NO_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
NO_REGION = ("AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.mark.parametrize(
    ("unset", "start_build_error", "fix"),
    [
        (NO_CREDENTIALS, None, "configure-aws-credentials"),
        (NO_REGION, None, "AWS_REGION"),
        ((), "AccessDeniedException", "codebuild:StartBuild"),
        ((), "ResourceNotFoundException", "exists in this account and region"),
    ],
    ids=["no-credentials", "no-region", "access-denied", "unknown-project"],
)
def test_an_error_that_cannot_heal_is_one_error_with_the_fix_at_once_and_no_check_left_open(
    tmp_path: Path,
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    unset: tuple[str, ...],
    start_build_error: str | None,
    fix: str,
) -> None:
    """Retrying would only delay the same answer (the old Action retried missing credentials for
    about four minutes): one `::error` with the fix, no traceback, every check run it made completed."""
    if start_build_error is not None:
        codebuild_double.fail("StartBuild", start_build_error, count=10)
    env = {name: value for name, value in push_env.items() if name not in unset}
    began = time.monotonic()
    run = run_action(env, tmp_path)
    seconds = time.monotonic() - began

    errors = [line for line in run.stdout.splitlines() if line.startswith("::error")]
    assert run.returncode != 0
    assert len(errors) == 1, run.stdout
    assert fix in unescape_command(errors[0]), errors
    assert "Fix:" in errors[0]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert len(codebuild_double.calls("StartBuild")) <= 1  # no retry loop
    assert seconds < 30, seconds  # a generous bound: about a second when nothing is retried
    checks = check_run_requests(github_api)
    assert not checks or checks[-1][1].get("conclusion") == "failure", checks  # none left in progress


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("env-vars", "API_KEY hunter2-is-not-printed", "env-vars"),
        ("image-repository", "Not A Registry", "image-repository"),
        ("timeout-minutes", "3", "timeout-minutes"),
        ("wait", "sometimes", "wait"),
        ("poll-interval-seconds", "0", "poll-interval-seconds"),
        ("project-name", "", "project-name"),
    ],
)
def test_a_bad_input_is_one_error_naming_it_and_starts_nothing(
    tmp_path: Path,
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    name: str,
    value: str,
    named: str,
) -> None:
    run = run_action({**push_env, f"INPUT_{name.upper()}": value}, tmp_path)

    assert run.returncode == 2
    errors = [line for line in run.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert named in errors[0]
    assert "hunter2" not in run.stdout + run.stderr
    assert codebuild_double.calls("StartBuild") == []


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("NPM_TOKEN=npm_0123456789abcdefghijklmnopqrstuvwxyzAB", "NPM_TOKEN"),
        ("NPM_TOKEN=hunter2-but-not-token-shaped", "NPM_TOKEN"),
        ("DB_PASSWORD=correct-horse-battery-staple", "DB_PASSWORD"),
        ("SIGNING_SECRET=s3cr3t", "SIGNING_SECRET"),
        ("STRIPE_API_KEY=hunter2", "STRIPE_API_KEY"),
        ("REGISTRY=ghp_0123456789abcdefghijklmnopqrstuvwxyz", "REGISTRY"),
        ("GL=glpat-abcdefghij0123456789", "GL"),
        ("UPLOAD=AKIAIOSFODNN7EXAMPLE", "UPLOAD"),
        ("SLACK=xoxb-1234-5678-abcdefgh", "SLACK"),
        ("BILLING=sk_live_0123456789abcdef", "BILLING"),
    ],
)
def test_a_literal_credential_in_env_vars_is_refused_before_anything_starts(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble, line: str, name: str
) -> None:
    value = line.partition("=")[2]
    env_vars = f"NODE_ENV=production\n{line}\nDB_URL=ssm:/ci/db-url"
    run = run_action({**push_env, "INPUT_ENV-VARS": env_vars}, tmp_path)

    assert run.returncode == 2, run.stdout + run.stderr
    errors = [unescape_command(line) for line in run.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert f"input 'env-vars': line 2: {name} looks like a credential but is a literal value" in errors[0]
    assert f"{name}=secretsmanager:" in errors[0]
    assert "ssm:" in errors[0]
    assert value not in run.stdout + run.stderr
    assert codebuild_double.requests == []


# --- cancellation: the runner's SIGINT/SIGTERM at each stage ----------------------------------------------
#
# Each test signals a real entrypoint.py at a point it knows the process has reached because a fake
# has the request in hand (a Hold) or has recorded it: never after a sleep. Timeouts are upper bounds.


class ActionProcess:
    """entrypoint.py running in the background, as the runner starts it; killed by PID if left over."""

    def __init__(self, env: Mapping[str, str], tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.process = subprocess.Popen(
            [sys.executable, str(ENTRYPOINT)],
            env=dict(env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def send(self, sig: signal.Signals) -> None:
        assert self.process.poll() is None, "the Action ended before it was signalled"
        self.process.send_signal(sig)

    def finish(self, timeout: float = PROCESS_TIMEOUT) -> ActionRun:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            stdout, stderr = self.process.communicate()
            pytest.fail(f"the Action did not finish in {timeout} s; its output:\n{stdout}\n{stderr}")
        return collect(self.tmp_path, self.process.returncode, stdout, stderr)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def start_action(tmp_path: Path) -> Iterator[Callable[[Mapping[str, str]], ActionProcess]]:
    started: list[ActionProcess] = []

    def start(env: Mapping[str, str]) -> ActionProcess:
        started.append(ActionProcess(env, tmp_path))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.kill()


def error_lines(run: ActionRun) -> list[str]:
    return [unescape_command(line) for line in run.stdout.splitlines() if line.startswith("::error")]


def assert_stopped_and_cancelled(
    run: ActionRun, codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> str:
    """Exit 130, the one build stopped, the check run completed as cancelled; returns the build id."""
    assert run.returncode == 130, run.stdout + run.stderr
    [stopped] = [call for call in codebuild_double.calls("StopBuild") if call.status == 200]
    build_id = str(stopped.params["id"])
    assert codebuild_double.build(build_id)["buildStatus"] == "STOPPED"
    [error] = error_lines(run)
    assert f"the workflow run was cancelled; build {build_id} was stopped" in error
    checks = check_run_requests(github_api)
    assert [method for method, _ in checks][:1] == ["POST"]
    method, last = checks[-1]
    assert (method, last["status"], last["conclusion"]) == ("PATCH", "completed", "cancelled")
    return build_id


def test_cancelling_the_workflow_stops_the_build_and_cancels_the_check(
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    start_action: Callable[[Mapping[str, str]], ActionProcess],
) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase={"BUILD": 100_000}, log_lines=build_lines()))
    action = start_action(push_env)
    codebuild_double.wait_for("BatchGetBuilds")
    action.send(signal.SIGTERM)
    run = action.finish()

    assert_stopped_and_cancelled(run, codebuild_double, github_api)


def test_sigterm_while_the_check_run_is_created_stops_the_build(
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    start_action: Callable[[Mapping[str, str]], ActionProcess],
) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase=1000))
    creating = github_api.hold("POST", "/repos/*/check-runs")
    action = start_action(push_env)
    creating.wait_arrived()
    action.send(signal.SIGTERM)
    creating.release()
    run = action.finish()

    assert_stopped_and_cancelled(run, codebuild_double, github_api)
    assert codebuild_double.calls("BatchGetBuilds") == []  # checked before the first poll


def test_sigterm_during_start_build_stops_the_build_once_it_exists(
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    start_action: Callable[[Mapping[str, str]], ActionProcess],
) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase=1000))
    starting = codebuild_double.hold("StartBuild")
    action = start_action(push_env)
    starting.wait_arrived()
    action.send(signal.SIGTERM)
    starting.release()
    run = action.finish()

    assert run.returncode == 130, run.stdout + run.stderr
    [started] = codebuild_double.calls("StartBuild")
    assert started.status == 200
    [stopped] = codebuild_double.calls("StopBuild")
    build_id = str(stopped.params["id"])
    assert codebuild_double.build(build_id)["buildStatus"] == "STOPPED"
    assert f"build {build_id} was stopped" in error_lines(run)[0]
    assert check_run_requests(github_api) == []  # no check run was left in progress: none was made


def test_a_second_signal_does_not_abandon_a_throttled_stop_build(
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
    start_action: Callable[[Mapping[str, str]], ActionProcess],
) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase={"BUILD": 100_000}))
    action = start_action(push_env)
    codebuild_double.wait_for("BatchGetBuilds")
    stopping = codebuild_double.hold("StopBuild")
    codebuild_double.throttle(2, "StopBuild")
    action.send(signal.SIGINT)  # the runner cancels with SIGINT, then SIGTERM
    stopping.wait_arrived()
    action.send(signal.SIGTERM)
    stopping.release()
    run = action.finish()

    assert_stopped_and_cancelled(run, codebuild_double, github_api)
    codes = [call.error_code for call in codebuild_double.calls("StopBuild")]
    assert codes == ["ThrottlingException", "ThrottlingException", None]


def test_an_error_while_following_the_build_stops_it_and_fails_the_check(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    codebuild_double.script_next(Scenario(polls_per_phase={"BUILD": 100_000}))
    codebuild_double.fail("BatchGetBuilds", "AccessDeniedException")
    run = run_action(push_env, tmp_path)

    assert run.returncode == 1, run.stdout + run.stderr
    [error] = error_lines(run)
    assert "BatchGetBuilds" in error
    assert "AccessDeniedException" in error
    [stopped] = codebuild_double.calls("StopBuild")
    build_id = str(stopped.params["id"])
    assert codebuild_double.build(build_id)["buildStatus"] == "STOPPED"
    assert any(
        line.startswith("::warning") and f"following build {build_id}: stopping the build" in line
        for line in run.stdout.splitlines()
    )
    method, last = check_run_requests(github_api)[-1]
    assert (method, last["status"], last["conclusion"]) == ("PATCH", "completed", "failure")
    assert last["output"]["title"].startswith("The Action failed, so the build was stopped")


def test_a_token_without_checks_permission_warns_and_the_build_still_runs(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    github_api.add_token(TOKEN, kind="actions", permissions={"metadata": "read"})
    run = run_action(push_env, tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    assert any(line.startswith("::warning") and "checks: write" in line for line in run.stdout.splitlines())
    assert run.outputs["build-status"] == "SUCCEEDED"
    assert [method for method, _ in check_run_requests(github_api)] == ["POST"]


def test_an_empty_check_name_reports_no_check(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    run = run_action({**push_env, "INPUT_CHECK-NAME": ""}, tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    assert github_api.requests == []


def test_the_digest_comes_from_ecr_when_the_build_did_not_export_it(
    tmp_path: Path,
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    boto_session: boto3.session.Session,
) -> None:
    sha = json.loads(Path(push_env["GITHUB_EVENT_PATH"]).read_text())["after"]
    ecr = boto_session.client("ecr")
    ecr.create_repository(repositoryName="web")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 2,
                "digest": DIGEST,
            },
            "layers": [],
        }
    )
    ecr.put_image(repositoryName="web", imageManifest=manifest, imageTag=sha)
    expected = ecr.describe_images(repositoryName="web", imageIds=[{"imageTag": sha}])["imageDetails"][0][
        "imageDigest"
    ]

    run = run_action(push_env, tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.outputs["image-digest"] == expected


def test_throttled_polls_are_absorbed_and_the_build_finishes(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.throttle(3, "BatchGetBuilds")
    run = run_action(push_env, tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.outputs["build-status"] == "SUCCEEDED"
    throttled = [c for c in codebuild_double.calls("BatchGetBuilds") if c.error_code == "ThrottlingException"]
    assert len(throttled) == 3


# --- source: workspace, registry credentials, batch builds ---------------------------------------------

BUCKET = "bridge-contexts"


def make_workspace(root: Path) -> Path:
    """A monorepo checkout with a generated file and things .dockerignore keeps out."""
    api = root / "services" / "api"
    (api / "generated").mkdir(parents=True)
    (api / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    (api / "app.py").write_text("print('hi')\n")
    (api / "generated" / "schema.json").write_text("{}\n")  # made by an earlier step, not in git
    (api / "node_modules" / "x").mkdir(parents=True)
    (api / "node_modules" / "x" / "index.js").write_text("junk\n")
    (api / ".env").write_text("SECRET=hunter2\n")
    (api / ".dockerignore").write_text("node_modules\n.env\n")
    (root / "README.md").write_text("outside the context\n")
    return root


@pytest.fixture
def workspace_env(push_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    workspace = make_workspace(tmp_path / "workspace")
    return {
        **push_env,
        "GITHUB_WORKSPACE": str(workspace),
        "INPUT_SOURCE": "workspace",
        "INPUT_CONTEXT-PATH": "services/api",
        "INPUT_CONTEXT-BUCKET": BUCKET,
        "INPUT_CONTEXT-PREFIX": "ctx/",
    }


def test_workspace_source_zips_the_context_uploads_it_once_and_builds_it_from_s3(
    tmp_path: Path, workspace_env: dict[str, str], codebuild_double: CodeBuildDouble
) -> None:
    run = run_action(workspace_env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

    [start] = codebuild_double.calls("StartBuild")
    params = start.params
    assert params["sourceTypeOverride"] == "S3"
    bucket, _, key = params["sourceLocationOverride"].partition("/")
    assert bucket == BUCKET
    assert key.startswith("ctx/")
    assert key.endswith(".zip")
    assert "sourceVersion" not in params  # not versioned: the key itself is content-addressed
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert key == f"ctx/{hashlib.sha256(body).hexdigest()}.zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(body)).namelist()) == [
        ".dockerignore",
        "Dockerfile",
        "app.py",
        "generated/",
        "generated/schema.json",
    ]
    assert "Build context services/api: 4 files" in run.stdout
    assert f"Uploaded the build context to s3://{BUCKET}/{key}" in run.stdout

    # Same tree again: found by its digest, not uploaded a second time.
    again = run_action({**workspace_env, "GITHUB_RUN_ATTEMPT": "2"}, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already at s3://{BUCKET}/{key}: not uploading it again" in again.stdout
    assert codebuild_double.calls("StartBuild")[-1].params["sourceLocationOverride"] == f"{BUCKET}/{key}"


CHECKOUT_TOKEN = "ghs_persistedByActionsCheckout0123456789"  # what actions/checkout leaves in .git/config


def checkout(root: Path, token: str = CHECKOUT_TOKEN) -> None:
    """The .git folder actions/checkout leaves behind, with its persisted credentials."""
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("0123456789abcdef0123456789abcdef01234567\n")
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    (git / "config").write_text(
        '[remote "origin"]\n\turl = https://github.com/Codertocat/Hello-World\n'
        f'[http "https://github.com/"]\n\textraheader = AUTHORIZATION: basic {basic}\n'
    )


@pytest.mark.parametrize("dockerignore", [None, "node_modules\n", "!.git\n"])
def test_workspace_source_never_uploads_the_git_folder_and_its_token(
    tmp_path: Path, workspace_env: dict[str, str], codebuild_double: CodeBuildDouble, dockerignore: str | None
) -> None:
    workspace = Path(workspace_env["GITHUB_WORKSPACE"])
    checkout(workspace)
    (workspace / "Dockerfile").write_text("FROM scratch\nCOPY . /src\n")
    if dockerignore is not None:
        (workspace / ".dockerignore").write_text(dockerignore)
    env = {**workspace_env, "INPUT_CONTEXT-PATH": "."}

    run = run_action(env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    key = codebuild_double.calls("StartBuild")[-1].params["sourceLocationOverride"].partition("/")[2]
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert "services/api/app.py" in names
    assert [name for name in names if ".git" in name.split("/")] == []
    archive = zipfile.ZipFile(io.BytesIO(body))
    contents = b"".join(archive.read(name) for name in names)
    basic = base64.b64encode(f"x-access-token:{CHECKOUT_TOKEN}".encode())
    assert basic not in contents
    assert CHECKOUT_TOKEN.encode() not in contents

    # The next run's checkout persists another token and moves refs: the tree, and so the key, is the same.
    checkout(workspace, token="ghs_theNextRunsToken0123456789abcdefgh")
    (workspace / ".git" / "FETCH_HEAD").write_text("fedcba9876543210fedcba9876543210fedcba98\n")
    again = run_action({**env, "GITHUB_RUN_ATTEMPT": "2"}, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already at s3://{BUCKET}/{key}: not uploading it again" in again.stdout


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"INPUT_CONTEXT-BUCKET": ""}, "context-bucket"),
        ({"INPUT_CONTEXT-BUCKET": "s3://bucket/path"}, "context-bucket"),
        ({"INPUT_CONTEXT-BUCKET": "no-such-bucket-here"}, "context-bucket"),
        ({"INPUT_CONTEXT-PATH": "../.."}, "context-path"),
        ({"INPUT_CONTEXT-PATH": "services/missing"}, "context-path"),
        ({"INPUT_SOURCE-VERSION": "main"}, "source-version"),
        ({"INPUT_SOURCE": "tarball"}, "source"),
        ({"INPUT_SOURCE": "repository"}, "context-path"),
        (
            {"INPUT_REGISTRY-PASSWORD": "hunter2", "INPUT_REGISTRY-USERNAME": "secretsmanager:r#u"},
            "registry-password",
        ),
        ({"INPUT_REGISTRY-USERNAME": "secretsmanager:r#u"}, "registry-password"),
        ({"INPUT_REGISTRY-CREDENTIALS": "hunter2"}, "registry-credentials"),
        ({"INPUT_REGISTRY-SERVER": "docker.io"}, "registry-server"),
        ({"INPUT_BATCH": "maybe"}, "batch"),
    ],
)
def test_bad_workspace_registry_or_batch_inputs_are_one_clear_error(
    tmp_path: Path,
    workspace_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    inputs: dict[str, str],
    named: str,
) -> None:
    run = run_action({**workspace_env, **inputs}, tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [line for line in run.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert f"'{named}'" in errors[0]
    assert "hunter2" not in run.stdout + run.stderr
    assert codebuild_double.requests == []


def test_registry_credentials_reach_the_build_as_secrets_manager_variables(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble
) -> None:
    env = {
        **push_env,
        "INPUT_IMAGE-REPOSITORY": "ghcr.io/codertocat/hello-world",
        "INPUT_REGISTRY-CREDENTIALS": "secretsmanager:ghcr-bot",
        "INPUT_REGISTRY-SERVER": "ghcr.io",
    }
    run = run_action(env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    [start] = codebuild_double.calls("StartBuild")
    variables = {v["name"]: (v["type"], v["value"]) for v in start.params["environmentVariablesOverride"]}
    assert variables["REGISTRY_USERNAME"] == ("SECRETS_MANAGER", "ghcr-bot:username")
    assert variables["REGISTRY_PASSWORD"] == ("SECRETS_MANAGER", "ghcr-bot:password")
    assert variables["REGISTRY_SERVER"] == ("PLAINTEXT", "ghcr.io")


BATCH_BUILDSPEC = """version: 0.2
batch:
  build-list:
    - identifier: amd64
    - identifier: arm64
phases:
  build:
    commands: [make]
"""


def test_batch_starts_a_batch_waits_for_every_build_and_reports_each(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble, github_api: FakeGitHub
) -> None:
    env = {
        **push_env,
        "INPUT_BATCH": "true",
        "INPUT_BUILDSPEC": BATCH_BUILDSPEC,
        "INPUT_TIMEOUT-MINUTES": "30",
    }
    run = run_action(env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

    [start] = codebuild_double.calls("StartBuildBatch")
    assert start.params["buildTimeoutInMinutesOverride"] == 30
    assert codebuild_double.calls("StartBuild") == []
    batch_id = run.outputs["batch-id"]
    assert batch_id.startswith(f"{PROJECT}:")
    assert run.outputs["build-id"] == batch_id
    assert run.outputs["build-status"] == "SUCCEEDED"
    assert run.outputs["build-number"] == "1"
    assert "/batch/" in run.outputs["build-url"]
    assert "batch build amd64: SUCCEEDED" in run.stdout
    assert "batch build arm64: SUCCEEDED" in run.stdout
    assert "| amd64 |" in run.summary
    assert "| arm64 |" in run.summary

    checks = check_run_requests(github_api)
    assert checks[-1][1]["conclusion"] == "success"
    assert "| arm64 |" in checks[-1][1]["output"]["summary"]


def test_a_failed_build_in_the_batch_fails_the_job(
    tmp_path: Path, push_env: dict[str, str], codebuild_double: CodeBuildDouble
) -> None:
    codebuild_double.script_next_batch(
        BatchScenario({"amd64": Scenario(), "arm64": Scenario(final_status="FAILED")})
    )
    run = run_action({**push_env, "INPUT_BATCH": "true", "INPUT_BUILDSPEC": BATCH_BUILDSPEC}, tmp_path)
    assert run.returncode == 1
    assert run.outputs["build-status"] == "FAILED"
    assert any(
        "1 of 2 builds did not succeed (arm64)" in line
        for line in run.stdout.splitlines()
        if line.startswith("::error")
    )


def test_cancelling_a_batch_stops_the_batch(
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    start_action: Callable[[Mapping[str, str]], ActionProcess],
) -> None:
    codebuild_double.script_next_batch(BatchScenario({"slow": Scenario(polls_per_phase=1000)}))
    action = start_action({**push_env, "INPUT_BATCH": "true", "INPUT_BUILDSPEC": BATCH_BUILDSPEC})
    codebuild_double.wait_for("BatchGetBuildBatches", 3)
    action.send(signal.SIGTERM)
    run = action.finish()

    assert run.returncode == 130, run.stdout + run.stderr
    [stop] = codebuild_double.calls("StopBuildBatch")
    assert codebuild_double.batch(stop.params["id"])["buildBatchStatus"] == "STOPPED"
    assert codebuild_double.calls("StopBuild") == []
