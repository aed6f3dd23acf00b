"""The routing file loader: the shipped example, every kind of mistake, secrets never echoed, docs in sync."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import config as config_module
from bridge.config import (
    Config,
    InvalidConfigError,
    Route,
    config_schema,
    default_state_path,
    load_config,
    parse_config,
    render_docs,
)
from bridge.errors import ConfigError
from bridge.model import EnvVar
from bridge.secrets import SecretRef

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bridge.toml"
DOCS = ROOT / "docs" / "config.md"
PLANTED = "ghp_PLANTEDsecret0123456789abcdefXYZ"

GITHUB = """
[github]
app_id = 12345
private_key = "secretsmanager:bridge/github#private_key"
webhook_secrets = ["secretsmanager:bridge/github#webhook"]
"""
GITLAB = """
[gitlab]
token = "secretsmanager:bridge/gitlab#token"
webhook_tokens = ["env:GITLAB_WEBHOOK_TOKEN"]
"""


def toml_string(text: str) -> str:
    """A TOML basic string: JSON escapes, raw non-ASCII (TOML rejects surrogate escapes), DEL escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml(value: object) -> str:
    """Enough of a TOML writer for test values (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{ " + ", ".join(f"{toml_string(k)} = {toml(v)}" for k, v in value.items()) + " }"


def route(**keys: object) -> str:
    fields: dict[str, object] = {
        "name": "web",
        "provider": "github",
        "repositories": ["acme/*"],
        "project": "codebuild-flex",
    }
    fields.update(keys)
    body = "\n".join(f"{k} = {toml(v)}" for k, v in fields.items() if v is not None)
    return f"\n[[routes]]\n{body}\n"


def parse(text: str, base_dir: Path = Path("/srv/bridge")) -> Config:
    return parse_config(text, base_dir=base_dir)


def errors_of(text: str) -> InvalidConfigError:
    with pytest.raises(InvalidConfigError) as caught:
        parse(text)
    return caught.value


# --- the example and the happy paths ------------------------------------------------------------------


def test_the_example_file_loads_with_every_setting() -> None:
    config = load_config(EXAMPLE)
    assert config.server.state_path == Path.home() / ".local" / "state" / "bridge" / "bridge.sqlite3"
    assert config.server.public_url == "https://bridge.example.com"
    assert config.aws.region == "eu-west-1"
    assert config.github is not None
    assert config.github.app_id is not None
    assert config.github.private_key is not None
    assert config.github.webhook_secrets == (SecretRef("secretsmanager", "bridge/github", "webhook_secret"),)
    assert config.gitlab is not None
    assert config.gitlab.api_url == "https://gitlab.com/api/v4"
    assert config.sns.topic_arns == ("arn:aws:sns:eu-west-1:123456789012:codebuild-events",)
    assert [r.name for r in config.routes] == ["web-release", "web", "api"]
    web = config.routes[1]
    assert web.context == "codebuild/web"
    assert web.repositories == ("acme/*", "!acme/legacy-*")
    assert web.forks == "without-secrets"
    assert web.env == (
        EnvVar("NODE_ENV", "production"),
        EnvVar("NPM_TOKEN", "ci/npm:token", "SECRETS_MANAGER"),
        EnvVar("DB_URL", "/ci/db-url", "PARAMETER_STORE"),
    )
    assert dict(web.overrides) == {"queuedTimeoutInMinutesOverride": 30}
    api = config.routes[2]
    assert api.source_mode == "clone"
    assert api.clone_token == SecretRef("secretsmanager", "bridge/gitlab", "token")


def test_every_documented_key_is_shown_in_the_example() -> None:
    text = EXAMPLE.read_text()
    missing = [
        doc.path
        for doc in config_schema()
        if not re.search(rf"^{re.escape(doc.path.rsplit('.', 1)[1])}\s*=", text, re.MULTILINE)
    ]
    assert missing == []


def test_a_file_without_routes_is_valid_and_uses_defaults(tmp_path: Path) -> None:
    config = parse("", base_dir=tmp_path)
    assert config.routes == ()
    assert config.github is None
    assert config.gitlab is None
    assert config.server.state_path == default_state_path()
    assert not config.server.state_path.is_relative_to(tmp_path)  # never beside the config file
    assert config.server.poll_interval_seconds == 15
    assert config.server.max_body_bytes == 25 * 1024 * 1024
    assert config.sns.topic_arns == ()


def test_the_build_start_rate_is_read_and_defaults_to_ten() -> None:
    assert parse("").server.max_build_starts_per_second == 10
    assert parse("[server]\nmax_build_starts_per_second = 40\n").server.max_build_starts_per_second == 40


@pytest.mark.parametrize(
    ("xdg_state_home", "expected"),
    [
        ("/srv/state", Path("/srv/state/bridge/bridge.sqlite3")),
        ("", Path.home() / ".local/state/bridge/bridge.sqlite3"),
        ("relative/dir", Path.home() / ".local/state/bridge/bridge.sqlite3"),  # the spec: ignore it
    ],
)
def test_the_default_state_path_is_the_users_state_directory(
    monkeypatch: pytest.MonkeyPatch, xdg_state_home: str, expected: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", xdg_state_home)
    assert parse("").server.state_path == expected


def test_an_absolute_state_path_is_kept() -> None:
    config = parse('[server]\nstate_path = "/var/lib/bridge/state.db"\n')
    assert config.server.state_path == Path("/var/lib/bridge/state.db")


@pytest.mark.parametrize(
    ("provider", "section", "expected"),
    [
        ("github", GITHUB, ("push", "pull_request", "rerun")),
        ("gitlab", GITLAB, ("push", "merge_request")),
    ],
)
def test_default_events_depend_on_the_provider(
    provider: str, section: str, expected: tuple[str, ...]
) -> None:
    (only,) = parse(section + route(provider=provider)).routes
    assert only.events == expected
    assert only.branches == ("*",)
    assert only.tags == ("*",)
    assert only.forks == "never"
    assert only.drafts is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain value", EnvVar("X", "plain value")),
        ("", EnvVar("X", "")),
        ("secretsmanager:ci/npm", EnvVar("X", "ci/npm", "SECRETS_MANAGER")),
        ("secretsmanager:ci/npm#token", EnvVar("X", "ci/npm:token", "SECRETS_MANAGER")),
        (
            "secretsmanager:ci/npm:token:AWSCURRENT:",
            EnvVar("X", "ci/npm:token:AWSCURRENT:", "SECRETS_MANAGER"),
        ),
        (
            "secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:ci-AbCdEf#k",
            EnvVar(
                "X", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ci-AbCdEf:k", "SECRETS_MANAGER"
            ),
        ),
        ("ssm:/ci/db", EnvVar("X", "/ci/db", "PARAMETER_STORE")),
    ],
)
def test_env_values_take_the_action_env_vars_forms(value: str, expected: EnvVar) -> None:
    (only,) = parse(GITHUB + route(env={"X": value})).routes
    assert only.env == (expected,)


def test_urls_lose_their_trailing_slash_and_http_is_accepted_only_on_loopback() -> None:
    config = parse(
        GITHUB.replace("app_id", 'api_url = "http://127.0.0.1:8080/api/v3/"\napp_id')
        + GITLAB.replace("token =", 'url = "https://gitlab.example.com/"\ntoken =', 1)
    )
    assert config.github is not None
    assert config.github.api_url == "http://127.0.0.1:8080/api/v3"
    assert config.gitlab is not None
    assert config.gitlab.api_url == "https://gitlab.example.com/api/v4"


def test_a_token_alone_is_enough_for_github() -> None:
    config = parse('[github]\ntoken = "env:GITHUB_TOKEN"\nwebhook_secrets = ["env:HOOK_A", "env:HOOK_B"]\n')
    assert config.github is not None
    assert config.github.app_id is None
    assert config.github.token == SecretRef("env", "GITHUB_TOKEN")
    assert len(config.github.webhook_secrets) == 2


def test_routes_are_frozen() -> None:
    (only,) = parse(GITHUB + route(overrides={"queuedTimeoutInMinutesOverride": 30})).routes
    with pytest.raises(AttributeError):
        only.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        only.overrides["x"] = 1  # type: ignore[index]
    assert isinstance(only, Route)


def _codebuild_model() -> Any:
    return botocore.session.get_session().get_service_model("codebuild")


@pytest.mark.parametrize("compute_type", _codebuild_model().shape_for("ComputeType").enum)
def test_every_codebuild_compute_type_is_accepted(compute_type: str) -> None:
    (only,) = parse(GITHUB + route(compute_type=compute_type)).routes
    assert only.compute_type == compute_type


def test_the_start_build_parameter_list_matches_botocore() -> None:
    members = set(_codebuild_model().operation_model("StartBuild").input_shape.members)
    assert members == config_module._START_BUILD_PARAMETERS
    assert set(config_module._MANAGED_PARAMETERS) <= members


# --- mistakes: each names its key, none repeats a secret ----------------------------------------------

BAD_CONFIGS: list[tuple[str, str, str]] = [
    ("poll interval too short", "[server]\npoll_interval_seconds = 0\n", "server.poll_interval_seconds"),
    ("body limit not a number", '[server]\nmax_body_bytes = "big"\n', "server.max_body_bytes"),
    ("threads is a boolean", "[server]\nthreads = true\n", "server.threads"),
    (
        "no build starts at all",
        "[server]\nmax_build_starts_per_second = 0\n",
        "server.max_build_starts_per_second",
    ),
    (
        "fractional start rate",
        "[server]\nmax_build_starts_per_second = 2.5\n",
        "server.max_build_starts_per_second",
    ),
    ("public url over http", '[server]\npublic_url = "http://bridge.example.com"\n', "server.public_url"),
    (
        "url with credentials",
        f'[server]\npublic_url = "https://u:{PLANTED}@h.example"\n',
        "server.public_url",
    ),
    ("unknown server key", "[server]\ncolour = 1\n", "server.colour"),
    ("server is not a table", "server = 5\n", "server"),
    ("bad region", '[aws]\nregion = "Europe"\n', "aws.region"),
    ("unknown section", "[rout]\nname = 1\n", "rout"),
    ("routes as a single table", '[routes]\nname = "web"\n', "routes"),
    ("webhook secrets missing", '[github]\ntoken = "env:T"\n', "github.webhook_secrets"),
    ("webhook secrets empty", '[github]\ntoken = "env:T"\nwebhook_secrets = []\n', "github.webhook_secrets"),
    (
        "literal github token",
        f'[github]\ntoken = "{PLANTED}"\nwebhook_secrets = ["env:H"]\n',
        "github.token",
    ),
    (
        "literal private key",
        f'[github]\napp_id = 1\nprivate_key = "-----BEGIN {PLANTED}"\nwebhook_secrets = ["env:H"]\n',
        "github.private_key",
    ),
    (
        "literal second webhook secret",
        f'[github]\ntoken = "env:T"\nwebhook_secrets = ["env:H", "{PLANTED}"]\n',
        "github.webhook_secrets[1]",
    ),
    ("secret given as a number", '[github]\ntoken = 1234567\nwebhook_secrets = ["env:H"]\n', "github.token"),
    ("app id without key", '[github]\napp_id = 1\nwebhook_secrets = ["env:H"]\n', "github.private_key"),
    ("no github credentials", '[github]\nwebhook_secrets = ["env:H"]\n', "github"),
    (
        "secret under a misspelt key",
        f'[github]\ntoken = "env:T"\nwebhook_secrets = ["env:H"]\ntokn = "{PLANTED}"\n',
        "github.tokn",
    ),
    (
        "env reference with a bad name",
        f'[gitlab]\ntoken = "env:{PLANTED}-x"\nwebhook_tokens = ["env:W"]\n',
        "gitlab.token",
    ),
    (
        "secretsmanager reference with spaces",
        f'[gitlab]\ntoken = "secretsmanager:{PLANTED} x"\nwebhook_tokens = ["env:W"]\n',
        "gitlab.token",
    ),
    (
        "literal webhook token",
        f'[gitlab]\ntoken = "env:T"\nwebhook_tokens = ["{PLANTED}"]\n',
        "gitlab.webhook_tokens[0]",
    ),
    (
        "signing tokens as a string",
        f'[gitlab]\ntoken = "env:T"\nsigning_tokens = "whsec_{PLANTED}"\n',
        "gitlab.signing_tokens",
    ),
    ("gitlab cannot verify", '[gitlab]\ntoken = "env:T"\n', "gitlab"),
    ("gitlab token missing", '[gitlab]\nwebhook_tokens = ["env:W"]\n', "gitlab.token"),
    (
        "sqs arn as topic",
        '[sns]\ntopic_arns = ["arn:aws:sqs:eu-west-1:123456789012:q"]\n',
        "sns.topic_arns[0]",
    ),
    ("bad route name", GITHUB + route(name="Web_1"), "routes[0].name"),
    ("duplicate route name", GITHUB + route() + route(), "routes[1].name"),
    ("unknown provider", GITHUB + route(provider="bitbucket"), "routes[0].provider"),
    ("route without its provider section", GITLAB + route(), "routes[0].provider"),
    ("no repositories", GITHUB + route(repositories=[]), "routes[0].repositories"),
    ("only exclusions", GITHUB + route(repositories=["!acme/legacy"]), "routes[0].repositories"),
    ("bare exclusion", GITHUB + route(branches=["main", "!"]), "routes[0].branches[1]"),
    ("repository not a string", GITHUB + route(repositories=["acme/*", 7]), "routes[0].repositories[1]"),
    (
        "gitlab event on a github route",
        GITHUB + route(events=["push", "merge_request"]),
        "routes[0].events[1]",
    ),
    ("unknown event", GITHUB + route(events=["deploy"]), "routes[0].events[0]"),
    ("branches as a string", GITHUB + route(branches="main"), "routes[0].branches"),
    ("misspelt key", GITHUB + route(brnaches=["main"]), "routes[0].brnaches"),
    ("bad fork policy", GITHUB + route(forks="sometimes"), "routes[0].forks"),
    ("drafts not a boolean", GITHUB + route(drafts="yes"), "routes[0].drafts"),
    ("bad project name", GITHUB + route(project="-bad"), "routes[0].project"),
    ("missing project", GITHUB + route(project=None), "routes[0].project"),
    ("unknown builder", GITHUB + route(builder="jenkins"), "routes[0].builder"),
    (
        "clone mode on github",
        GITHUB + route(source_mode="clone", clone_token="secretsmanager:t"),
        "routes[0].source_mode",
    ),
    (
        "clone mode without token",
        GITLAB + route(provider="gitlab", source_mode="clone"),
        "routes[0].clone_token",
    ),
    (
        "clone token from the environment",
        GITLAB + route(provider="gitlab", source_mode="clone", clone_token="env:CLONE"),
        "routes[0].clone_token",
    ),
    (
        "literal clone token",
        GITLAB + route(provider="gitlab", source_mode="clone", clone_token=PLANTED),
        "routes[0].clone_token",
    ),
    (
        "clone token without clone mode",
        GITLAB + route(provider="gitlab", clone_token="secretsmanager:t"),
        "routes[0].clone_token",
    ),
    (
        "buildspec file in clone mode",
        GITLAB
        + route(provider="gitlab", source_mode="clone", clone_token="secretsmanager:t", buildspec="ci/b.yml"),
        "routes[0].buildspec",
    ),
    ("unknown tag placeholder", GITHUB + route(image_tag="{commit}"), "routes[0].image_tag"),
    ("unbalanced tag braces", GITHUB + route(image_tag="v{sha"), "routes[0].image_tag"),
    ("tag with a space", GITHUB + route(image_tag="v 1"), "routes[0].image_tag"),
    (
        "image repository with a tag",
        GITHUB + route(image_repository="https://ecr/web:latest"),
        "routes[0].image_repository",
    ),
    (
        "plain value under a secret name",
        GITHUB + route(env={"NPM_TOKEN": PLANTED}),
        "routes[0].env.NPM_TOKEN",
    ),
    ("token-shaped plain value", GITHUB + route(env={"HELLO": PLANTED}), "routes[0].env.HELLO"),
    ("env: reference in env", GITHUB + route(env={"A": "env:" + PLANTED}), "routes[0].env.A"),
    (
        "malformed secretsmanager env value",
        GITHUB + route(env={"A": "secretsmanager:#" + PLANTED}),
        "routes[0].env.A",
    ),
    ("bad variable name", GITHUB + route(env={"1BAD": "x"}), "routes[0].env.1BAD"),
    ("number as env value", GITHUB + route(env={"N": 5}), "routes[0].env.N"),
    ("reserved variable name", GITHUB + route(env={"CODEBUILD_X": "y"}), "routes[0].env.CODEBUILD_X"),
    ("multi-line env value", GITHUB + route(env={"A": "x\ny"}), "routes[0].env.A"),
    (
        "override of a managed parameter",
        GITHUB + route(overrides={"projectName": "x"}),
        "routes[0].overrides.projectName",
    ),
    (
        "misspelt override",
        GITHUB + route(overrides={"queuedTimeoutInMinutesOverid": 3}),
        "routes[0].overrides.queuedTimeoutInMinutesOverid",
    ),
    ("timeout too long", GITHUB + route(timeout_minutes=3000), "routes[0].timeout_minutes"),
    ("unknown compute type", GITHUB + route(compute_type="HUGE"), "routes[0].compute_type"),
    ("env not a table", GITHUB + route(env="A=1"), "routes[0].env"),
    ("invalid TOML", f'[github]\ntoken = "{PLANTED}\n', ""),
]


@pytest.mark.parametrize(("case", "text", "key"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_each_mistake_names_its_key_and_never_echoes_a_secret(case: str, text: str, key: str) -> None:
    error = errors_of(text)
    assert key in [e.key for e in error.errors], str(error)
    assert all(isinstance(e, ConfigError) and e.hint for e in error.errors)
    rendered = [str(error), repr(error), *(f"{e.message} {e.hint}" for e in error.errors)]
    assert not any(PLANTED in text for text in rendered)
    assert not any(PLANTED[4:24] in text for text in rendered)  # not even a part of it
    if key:
        assert f"{key}:" in str(error)


def test_the_table_plants_secrets_where_they_matter() -> None:
    planted = [case for case, text, _ in BAD_CONFIGS if PLANTED in text]
    assert len(planted) >= 12
    assert len(BAD_CONFIGS) >= 25


def test_unknown_keys_suggest_the_closest_name() -> None:
    error = errors_of(GITHUB + route(brnaches=["main"], forks="without-secret"))
    text = str(error)
    assert "did you mean 'branches'?" in text
    assert "did you mean 'without-secrets'?" in text


def test_all_errors_are_collected_in_one_raise() -> None:
    text = (
        "[server]\npoll_interval_seconds = 0\n"
        + '[github]\ntoken = "literal"\nwebhook_secrets = ["env:H"]\n'
        + route(forks="maybe", events=["push", "merge_request"])
        + route(name="api", project="x")
    )
    error = errors_of(text)
    assert sorted(e.key for e in error.errors) == sorted(
        [
            "server.poll_interval_seconds",
            "github.token",
            "routes[0].forks",
            "routes[0].events[1]",
            "routes[1].project",
        ]
    )
    assert str(error).startswith("config: 5 errors")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert "No such file" in str(caught.value)
    assert caught.value.exit_code == 2


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
def test_no_literal_in_a_secret_key_is_ever_echoed(noise: str) -> None:
    literal = "Zx9Q" + noise + "Qw7"
    text = f"[github]\ntoken = {toml_string(literal)}\nwebhook_secrets = [{toml_string(literal)}]\n"
    error = errors_of(text)
    assert {"github.token", "github.webhook_secrets[0]"} <= {e.key for e in error.errors}
    assert literal not in str(error)


# --- the generated reference --------------------------------------------------------------------------


def test_docs_config_md_matches_the_schema() -> None:
    current = DOCS.read_text(encoding="utf-8")
    expected = render_docs(current)
    if os.environ.get("BRIDGE_UPDATE_DOCS") == "1":
        DOCS.write_text(expected, encoding="utf-8")
        current = expected
    assert current == expected, (
        "docs/config.md is out of date: "
        "run BRIDGE_UPDATE_DOCS=1 .venv/bin/pytest tests/test_config.py -k docs"
    )


def test_the_schema_documents_every_key_and_nothing_else_is_accepted() -> None:
    """With the example test (every documented key is in the example, which loads), this pins
    documented == accepted."""
    paths = {doc.path for doc in config_schema()}
    assert {"server.state_path", "github.webhook_secrets", "routes[].forks", "routes[].overrides"} <= paths
    for doc in config_schema():
        assert doc.description
        assert doc.type
        assert doc.default or doc.required
    undocumented = errors_of(GITHUB + route(undocumented=1))
    assert [e.key for e in undocumented.errors] == ["routes[0].undocumented"]
