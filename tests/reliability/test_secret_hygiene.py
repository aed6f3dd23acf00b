"""Secret values stay secret: masked wherever they are held, and absent from everything captured.

The leak scan (tests/reliability/secret_scan.py) also runs over every real-server fault test; here it
covers the Action: entrypoint.py as a subprocess, a failing build, and everything a user or another
workflow step can read afterwards.
"""

from __future__ import annotations

import pickle
import secrets
from pathlib import Path

import boto3
import pytest

from bridge.config import parse_config
from bridge.secret import Secret
from bridge.secrets import SecretStore
from tests.e2e.support import (
    GITHUB_SECRET,
    GITLAB_WEBHOOK_TOKEN,
    REGION,
    config_text,
    make_services,
    secret_env,
)
from tests.fakes.codebuild_double import CodeBuildDouble, Scenario
from tests.fakes.github_api import FakeGitHub
from tests.reliability.secret_scan import SecretScanner, scan
from tests.test_action import TOKEN, build_lines, run_action

VALUE = "s3cr3t-" + secrets.token_hex(12)


def test_a_secret_is_masked_in_every_rendering() -> None:
    held = Secret(VALUE)
    renderings = [repr(held), str(held), f"{held}", f"{held!r}", f"{held:>40}", "%s" % held, repr([held])]  # noqa: UP031
    assert scan({"value": VALUE}, (("rendering", text) for text in renderings)) == []
    assert held.reveal() == VALUE
    with pytest.raises(TypeError):
        pickle.dumps(held)


def test_config_services_and_the_secret_cache_show_no_value(tmp_path: Path, aws_env: dict[str, str]) -> None:
    admin = boto3.client("secretsmanager", region_name=REGION)
    admin.create_secret(Name="bridge/github-webhook", SecretString=VALUE)
    admin.create_secret(Name="bridge/gitlab-token", SecretString=VALUE + "-gl")
    config = parse_config(
        config_text(refs="secretsmanager", state_path=str(tmp_path / "s.sqlite3"), app_key=False),
        base_dir=tmp_path,
    )
    services = make_services(
        config,
        environ=secret_env(),
        secretsmanager=lambda: boto3.client("secretsmanager", region_name=REGION),
    )
    store = services.secrets
    read = [
        store.get("secretsmanager:bridge/github-webhook"),
        store.get("secretsmanager:bridge/gitlab-token"),
    ]
    read += store.get_all(["env:GITHUB_WEBHOOK_SECRET", "env:GITLAB_WEBHOOK_TOKEN"])
    assert [secret.reveal() for secret in read] == [VALUE, VALUE + "-gl", GITHUB_SECRET, GITLAB_WEBHOOK_TOKEN]

    cache = vars(store)["_cache"]
    assert cache  # the Secrets Manager answers are held, masked
    renderings = {
        "config": repr(config),
        "github settings": repr(config.github),
        "routes": repr(config.routes),
        "services": repr(services),
        "secret store": repr(store),
        "secret cache": repr(cache),
        "secrets read": repr(read),
    }
    found = scan(
        {"sm": VALUE, "sm-gl": VALUE + "-gl", "github": GITHUB_SECRET, "gitlab": GITLAB_WEBHOOK_TOKEN},
        renderings.items(),
    )
    assert found == []
    services.store.close()


def test_secret_store_without_aws_says_so_without_the_reference_value() -> None:
    store = SecretStore(None, environ={"TOKEN": VALUE})
    assert store.get("env:TOKEN").reveal() == VALUE
    assert VALUE not in repr(store)


def test_the_action_leaks_no_secret_into_anything_it_leaves_behind(
    tmp_path: Path,
    push_env: dict[str, str],
    codebuild_double: CodeBuildDouble,
    github_api: FakeGitHub,
) -> None:
    """A failing build (the log tail is shown everywhere) with the token and AWS keys in the env."""
    aws_secret = "aws-" + secrets.token_urlsafe(30)
    env = {
        **push_env,
        "AWS_SECRET_ACCESS_KEY": aws_secret,
        "AWS_SESSION_TOKEN": "session-" + secrets.token_hex(20),
    }
    codebuild_double.script_next(Scenario(final_status="FAILED", log_lines=build_lines()))

    run = run_action(env, tmp_path)

    assert run.returncode != 0
    scanner = SecretScanner()
    scanner.add_all(
        {
            "github token": TOKEN,
            "aws secret access key": aws_secret,
            "aws session token": env["AWS_SESSION_TOKEN"],
        }
    )
    # The runner consumes ::add-mask:: commands (that is how the token gets masked): they are not output.
    stdout = "\n".join(line for line in run.stdout.splitlines() if not line.startswith("::add-mask::"))
    scanner.text("Action stdout", stdout)
    scanner.text("Action stderr", run.stderr)
    scanner.value("Action outputs", run.outputs)
    scanner.text("step summary", run.summary)
    scanner.github(github_api)
    scanner.codebuild(codebuild_double)
    scanner.assert_clean()
    assert run.summary
    assert any("/check-runs" in request.path for request in github_api.requests)
