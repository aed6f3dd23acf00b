"""Registry authentication: what planning hands the build, and what the packaged buildspec does with it.

Planning is checked for the one property that matters (a credential only ever travels as a
SECRETS_MANAGER reference, never PLAINTEXT, whatever the input); the buildspecs are *run* with bash
against fake docker/aws (tests.test_plan.run_buildspec) for each registry case: same-account ECR,
another account's ECR, GHCR/Docker Hub/private registries with explicit credentials, and ECR push
plus a login to a second registry (REGISTRY_SERVER).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Route, parse_config
from bridge.core.trust import Policy, TrustFacts, granted
from bridge.errors import InputError
from bridge.model import BuildOptions, EnvVar, ForkPolicy, RegistryAuth
from bridge.plan import plan_build, registry_env, start_build_batch_kwargs
from bridge.routing import build_options
from tests.test_plan import (
    ECR_REPO,
    GH_FORK_PR,
    GH_PUSH,
    SEED,
    assert_valid_start_build,
    env_of,
    run_buildspec,
)

PASSWORD = "pw-" + "S3cr3t" * 4  # what a secret value looks like; it must never be accepted
BASE = BuildOptions(project_name="flex", image_repository="ghcr.io/octo/app")


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            RegistryAuth("secretsmanager:ghcr/bot#username", "secretsmanager:ghcr/bot#password"),
            {"REGISTRY_USERNAME": "ghcr/bot:username", "REGISTRY_PASSWORD": "ghcr/bot:password"},
        ),
        (
            RegistryAuth.from_json_secret("secretsmanager:dockerhub"),
            {"REGISTRY_USERNAME": "dockerhub:username", "REGISTRY_PASSWORD": "dockerhub:password"},
        ),
        (
            RegistryAuth.from_json_secret("secretsmanager:dockerhub#ignored-key"),
            {"REGISTRY_USERNAME": "dockerhub:username", "REGISTRY_PASSWORD": "dockerhub:password"},
        ),
        (
            RegistryAuth(
                "secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:reg-AbCdEf#user",
                "secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:reg-AbCdEf#token",
            ),
            {
                "REGISTRY_USERNAME": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:reg-AbCdEf:user",
                "REGISTRY_PASSWORD": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:reg-AbCdEf:token",
            },
        ),
        (
            RegistryAuth("secretsmanager:reg-user", "secretsmanager:reg:password:AWSCURRENT:"),
            {"REGISTRY_USERNAME": "reg-user", "REGISTRY_PASSWORD": "reg:password:AWSCURRENT:"},
        ),
    ],
)
def test_credentials_become_secrets_manager_variables(auth: RegistryAuth, expected: dict[str, str]) -> None:
    kwargs = plan_build(GH_PUSH, replace(BASE, registry=auth), idempotency_seed=SEED).start_build_kwargs
    assert_valid_start_build(kwargs)
    env = env_of(kwargs)
    for name, value in expected.items():
        assert env[name] == (value, "SECRETS_MANAGER")
    assert "REGISTRY_SERVER" not in env


def test_server_is_a_plain_variable_next_to_the_secret_ones() -> None:
    auth = RegistryAuth.from_json_secret("secretsmanager:dockerhub", server="docker.io")
    env = env_of(plan_build(GH_PUSH, replace(BASE, registry=auth), idempotency_seed=SEED).start_build_kwargs)
    assert env["REGISTRY_SERVER"] == ("docker.io", "PLAINTEXT")
    assert env["REGISTRY_PASSWORD"][1] == "SECRETS_MANAGER"


def test_no_registry_means_no_registry_variables() -> None:
    env = env_of(plan_build(GH_PUSH, BASE, idempotency_seed=SEED).start_build_kwargs)
    assert not [name for name in env if name.startswith("REGISTRY_")]


@pytest.mark.parametrize(
    ("auth", "input_name"),
    [
        (RegistryAuth("bot", "secretsmanager:s#password"), "registry-username"),
        (RegistryAuth("secretsmanager:s#username", PASSWORD), "registry-password"),
        (RegistryAuth("secretsmanager:s#username", f"env:{PASSWORD}"), "registry-password"),
        (RegistryAuth("secretsmanager:s#username", f"ssm:/{PASSWORD}"), "registry-password"),
        (RegistryAuth("secretsmanager:s#username", "secretsmanager:"), "registry-password"),
        (RegistryAuth("secretsmanager:s#username", f"secretsmanager:{PASSWORD} x"), "registry-password"),
        (
            RegistryAuth("secretsmanager:s#u", "secretsmanager:s#p", server="https://ghcr.io"),
            "registry-server",
        ),
        (RegistryAuth("secretsmanager:s#u", "secretsmanager:s#p", server="ghcr.io/owner"), "registry-server"),
    ],
)
def test_values_are_refused_and_never_echoed(auth: RegistryAuth, input_name: str) -> None:
    with pytest.raises(InputError) as raised:
        plan_build(GH_PUSH, replace(BASE, registry=auth), idempotency_seed=SEED)
    assert raised.value.name == input_name
    assert PASSWORD not in str(raised.value)
    assert raised.value.hint


def test_fork_builds_without_secrets_get_no_registry_credentials() -> None:
    auth = RegistryAuth.from_json_secret("secretsmanager:ghcr", server="ghcr.io")
    options = replace(BASE, registry=auth)
    policy = Policy.of_options("r", options, forks="without-secrets")
    grant = granted(GH_FORK_PR, policy, TrustFacts(fork=True))
    env = env_of(plan_build(GH_FORK_PR, options, grant=grant, idempotency_seed=SEED).start_build_kwargs)
    assert not [name for name in env if name.startswith("REGISTRY_")]


def test_credentials_set_both_ways_is_an_error() -> None:
    options = replace(
        BASE,
        registry=RegistryAuth.from_json_secret("secretsmanager:ghcr"),
        env_vars=(EnvVar("REGISTRY_PASSWORD", "other", "SECRETS_MANAGER"),),
    )
    with pytest.raises(InputError, match="REGISTRY_PASSWORD is set by bridge"):
        plan_build(GH_PUSH, options, idempotency_seed=SEED)


def test_batch_builds_carry_the_same_credentials() -> None:
    options = replace(BASE, registry=RegistryAuth.from_json_secret("secretsmanager:ghcr"), batch=True)
    request = plan_build(GH_PUSH, options, idempotency_seed=SEED)
    batch_env = {
        v["name"]: v["type"]
        for v in start_build_batch_kwargs(request.start_build_kwargs)["environmentVariablesOverride"]
    }
    assert batch_env["REGISTRY_USERNAME"] == batch_env["REGISTRY_PASSWORD"] == "SECRETS_MANAGER"


_references = st.one_of(
    st.text(min_size=0, max_size=40),
    st.builds(lambda body: "secretsmanager:" + body, st.text(max_size=40)),
)


@settings(max_examples=200, deadline=None)
@given(username=_references, password=_references, include_secrets=st.booleans())
def test_no_input_ever_puts_a_credential_in_plaintext(
    username: str, password: str, include_secrets: bool
) -> None:
    options = replace(BASE, registry=RegistryAuth(username, password))
    forks: ForkPolicy = "allow" if include_secrets else "without-secrets"
    grant = granted(GH_FORK_PR, Policy.of_options("r", options, forks=forks), TrustFacts(fork=True))
    try:
        request = plan_build(GH_FORK_PR, options, grant=grant, idempotency_seed=SEED)
    except InputError as error:
        message = str(error)
        request = None
    if request is None:
        for value in (username, password):
            if len(value) > len("secretsmanager:") + 3:
                assert value not in message
        return
    without = plan_build(GH_FORK_PR, replace(options, registry=None), grant=grant, idempotency_seed=SEED)
    plain = [
        v for v in request.start_build_kwargs["environmentVariablesOverride"] if v["type"] == "PLAINTEXT"
    ]
    plain_without = [
        v for v in without.start_build_kwargs["environmentVariablesOverride"] if v["type"] == "PLAINTEXT"
    ]
    assert plain == plain_without  # credentials add no PLAINTEXT variable, whatever they look like
    names = {v["name"]: v["type"] for v in request.start_build_kwargs["environmentVariablesOverride"]}
    expected = {"REGISTRY_USERNAME", "REGISTRY_PASSWORD"} if include_secrets else set()
    assert {name for name in names if name.startswith("REGISTRY_")} == expected
    assert all(names[name] == "SECRETS_MANAGER" for name in expected)
    assert_valid_start_build(request.start_build_kwargs)


def test_registry_env_lists_exactly_the_login_variables() -> None:
    env = registry_env(
        RegistryAuth("secretsmanager:a#u", "secretsmanager:a#p", server="registry.example.com:5000")
    )
    assert [(v.name, v.type) for v in env] == [
        ("REGISTRY_USERNAME", "SECRETS_MANAGER"),
        ("REGISTRY_PASSWORD", "SECRETS_MANAGER"),
        ("REGISTRY_SERVER", "PLAINTEXT"),
    ]


# --- the buildspec's login step, run under bash ------------------------------------------------------

OTHER_ACCOUNT_ECR = "210987654321.dkr.ecr.eu-central-1.amazonaws.com/shared/app"
BUILDSPECS = ["buildspec-image.yml", "buildspec-gitlab-clone.yml"]


def _logins(calls: list[dict[str, Any]]) -> list[tuple[list[str], str]]:
    return [(c["args"], c["stdin"]) for c in calls if c["tool"] == "docker" and c["args"][0] == "login"]


def _aws(calls: list[dict[str, Any]]) -> list[list[str]]:
    return [c["args"] for c in calls if c["tool"] == "aws"]


def _run(name: str, tmp_path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    if name == "buildspec-gitlab-clone.yml":
        env = {
            "BRIDGE_CLONE_URL": "https://gitlab.com/g/app.git",
            "BRIDGE_COMMIT_SHA": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "BRIDGE_CLONE_TOKEN": "t",
            **env,
        }
    calls, _ = run_buildspec(name, tmp_path, env)
    return calls


@pytest.mark.parametrize("name", BUILDSPECS)
def test_same_account_ecr_uses_the_service_role(name: str, tmp_path: Path) -> None:
    calls = _run(name, tmp_path, {"IMAGE_URI": f"{ECR_REPO}:v1"})
    assert _aws(calls) == [["ecr", "get-login-password", "--region", "us-east-1"]]
    host = ECR_REPO.split("/")[0]
    assert _logins(calls) == [(["login", "--username", "AWS", "--password-stdin", host], "ecr-password\n")]


@pytest.mark.parametrize("name", BUILDSPECS)
def test_another_accounts_ecr_logs_in_to_that_accounts_registry(name: str, tmp_path: Path) -> None:
    calls = _run(name, tmp_path, {"IMAGE_URI": f"{OTHER_ACCOUNT_ECR}:v1"})
    assert _aws(calls) == [["ecr", "get-login-password", "--region", "eu-central-1"]]
    host = "210987654321.dkr.ecr.eu-central-1.amazonaws.com"
    assert _logins(calls) == [(["login", "--username", "AWS", "--password-stdin", host], "ecr-password\n")]
    assert ["push", f"{OTHER_ACCOUNT_ECR}:v1"] in [c["args"] for c in calls]


@pytest.mark.parametrize("name", BUILDSPECS)
@pytest.mark.parametrize(
    ("image", "server", "login_host"),
    [
        ("ghcr.io/octo/app:main", None, "ghcr.io"),
        ("docker.io/octo/app:main", None, "docker.io"),
        ("registry.example.com:5000/team/app:1", None, "registry.example.com:5000"),
        ("ghcr.io/octo/app:main", "registry.example.com", "registry.example.com"),
    ],
)
def test_explicit_credentials_log_in_through_stdin(
    name: str, tmp_path: Path, image: str, server: str | None, login_host: str
) -> None:
    env = {"IMAGE_URI": image, "REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": PASSWORD}
    if server:
        env["REGISTRY_SERVER"] = server
    calls = _run(name, tmp_path, env)
    assert _aws(calls) == []
    assert _logins(calls) == [(["login", "--username", "bot", "--password-stdin", login_host], PASSWORD)]
    assert all(PASSWORD not in arg for call in calls for arg in call["args"])


@pytest.mark.parametrize("name", BUILDSPECS)
def test_ecr_push_plus_a_second_registry_logs_in_to_both(name: str, tmp_path: Path) -> None:
    env = {
        "IMAGE_URI": f"{ECR_REPO}:v1",
        "REGISTRY_USERNAME": "hub-user",
        "REGISTRY_PASSWORD": PASSWORD,
        "REGISTRY_SERVER": "docker.io",
    }
    calls = _run(name, tmp_path, env)
    host = ECR_REPO.split("/")[0]
    assert _logins(calls) == [
        (["login", "--username", "AWS", "--password-stdin", host], "ecr-password\n"),
        (["login", "--username", "hub-user", "--password-stdin", "docker.io"], PASSWORD),
    ]


@pytest.mark.parametrize("name", BUILDSPECS)
@pytest.mark.parametrize("only", ["REGISTRY_USERNAME", "REGISTRY_PASSWORD"])
def test_half_the_credentials_fails_the_build_before_it_runs(name: str, tmp_path: Path, only: str) -> None:
    with pytest.raises(AssertionError, match="set both, or neither"):
        _run(name, tmp_path, {"IMAGE_URI": "ghcr.io/octo/app:1", only: PASSWORD})


@pytest.mark.parametrize("name", BUILDSPECS)
def test_no_credentials_and_no_ecr_pushes_with_what_docker_has(name: str, tmp_path: Path) -> None:
    calls = _run(name, tmp_path, {"IMAGE_URI": "ghcr.io/octo/app:1"})
    assert _logins(calls) == []
    assert _aws(calls) == []
    assert ["push", "ghcr.io/octo/app:1"] in [c["args"] for c in calls]


# --- the route equivalent --------------------------------------------------------------------------------

ROUTE = """
[github]
token = "secretsmanager:bridge/github#token"
webhook_secrets = ["secretsmanager:bridge/github#webhook_secret"]

[[routes]]
name = "web"
provider = "github"
repositories = ["octo/*"]
project = "flex"
image_repository = "ghcr.io/octo/app"
forks = "without-secrets"
{extra}
"""


def _route_options(tmp_path: Path, extra: str, event: Any = GH_PUSH) -> BuildOptions:
    return build_options(_route(tmp_path, extra), event)


def _route(tmp_path: Path, extra: str) -> Route:
    return parse_config(ROUTE.format(extra=extra), base_dir=tmp_path).routes[0]


def test_route_registry_credentials_and_batch_reach_the_plan(tmp_path: Path) -> None:
    options = _route_options(
        tmp_path, 'registry_credentials = "secretsmanager:ci/ghcr"\nregistry_server = "ghcr.io"\nbatch = true'
    )
    assert options.batch
    request = plan_build(GH_PUSH, options, idempotency_seed=SEED)
    assert request.batch
    env = env_of(request.start_build_kwargs)
    assert env["REGISTRY_USERNAME"] == ("ci/ghcr:username", "SECRETS_MANAGER")
    assert env["REGISTRY_PASSWORD"] == ("ci/ghcr:password", "SECRETS_MANAGER")
    assert env["REGISTRY_SERVER"] == ("ghcr.io", "PLAINTEXT")


def test_route_defaults_are_no_batch_and_no_credentials(tmp_path: Path) -> None:
    options = _route_options(tmp_path, "")
    assert not options.batch
    assert options.registry is None


def test_a_fork_on_a_route_gets_no_registry_credentials(tmp_path: Path) -> None:
    route = _route(tmp_path, 'registry_credentials = "secretsmanager:ci/ghcr"')
    grant = granted(GH_FORK_PR, route, TrustFacts.of(GH_FORK_PR))
    options = build_options(route, GH_FORK_PR)
    env = env_of(plan_build(GH_FORK_PR, options, grant=grant, idempotency_seed=SEED).start_build_kwargs)
    assert "REGISTRY_PASSWORD" not in env


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (f'registry_credentials = "{PASSWORD}"', "registry_credentials"),
        ('registry_credentials = "env:REGISTRY_TOKEN"', "registry_credentials"),
        ('registry_server = "https://ghcr.io/x"', "registry_server"),
        ('batch = "yes"', "batch"),
    ],
)
def test_route_values_that_are_not_references_are_config_errors(tmp_path: Path, extra: str, key: str) -> None:
    from bridge.config import InvalidConfigError

    with pytest.raises(InvalidConfigError) as raised:
        _route_options(tmp_path, extra)
    assert f"routes[0].{key}" in str(raised.value)
    assert PASSWORD not in str(raised.value)
