"""The builder registry and how a route picks its builder: config checks (the local builder's
explicit switch, settings a builder would ignore), the services' routing of routes and build ids
to builders, and a third builder added the way docs/local-builder.md shows.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import pytest

from bridge import builders
from bridge.builders import BuilderSpec, Capabilities
from bridge.builders.base import LogTail
from bridge.builders.local import LocalBuilder
from bridge.config import Config, InvalidConfigError, LocalBuilderSettings, parse_config
from bridge.errors import ConfigError
from bridge.model import BuildRecord, BuildRequest
from bridge.services import LazyCodeBuild, route_builders
from tests.e2e.support import make_config, make_services, secret_env

GITHUB = """
[github]
app_id = 12345
private_key = "secretsmanager:bridge/github#private_key"
webhook_secrets = ["secretsmanager:bridge/github#webhook"]
"""
LOCAL_ON = '\n[builders.local]\nenabled = true\ntool = "buildah"\n'


def route(**keys: str | bool | dict[str, object]) -> str:
    fields: dict[str, object] = {
        "name": "web",
        "provider": "github",
        "repositories": '["acme/*"]',
        "project": '"demo"',
    }
    for key, value in keys.items():
        if isinstance(value, bool):
            fields[key] = "true" if value else "false"
        elif isinstance(value, dict):
            fields[key] = "{ " + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + " }"
        else:
            fields[key] = f'"{value}"'
    fields["name"] = '"web"'
    fields["provider"] = '"github"'
    return "\n[[routes]]\n" + "\n".join(f"{k} = {v}" for k, v in fields.items()) + "\n"


def parse(text: str, base_dir: Path = Path("/srv/bridge")) -> Config:
    return parse_config(text, base_dir=base_dir)


def error_keys(text: str) -> dict[str, str]:
    with pytest.raises(InvalidConfigError) as caught:
        parse(text)
    return {error.key: str(error) for error in caught.value.errors}


# -- the registry -----------------------------------------------------------------------------------------


def test_the_builtin_builders_and_what_they_can_do() -> None:
    assert builders.names()[:2] == ("codebuild", "local")
    codebuild, local = builders.capabilities("codebuild"), builders.capabilities("local")
    assert (codebuild.runs_on_bridge_host, local.runs_on_bridge_host) == (False, True)
    assert (codebuild.buildspec, local.buildspec) == (True, False)
    assert (codebuild.secret_variables, local.secret_variables) == (True, False)
    assert local.stop
    assert local.pushes_images
    assert LocalBuilder.capabilities is local
    assert LazyCodeBuild.capabilities is codebuild


def test_an_unknown_builder_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        builders.spec("kaniko")
    assert caught.value.key == "builder"
    assert "codebuild, local" in str(caught.value)


def test_names_are_unique_and_builtins_stay() -> None:
    with pytest.raises(ValueError, match="already registered"):
        builders.register(BuilderSpec("local", builders.LOCAL_CAPABILITIES, builders.spec("local").factory))
    with pytest.raises(ValueError, match="cannot be removed"):
        builders.unregister("codebuild")


def test_codebuild_is_made_without_touching_aws(tmp_path: Path) -> None:
    made = builders.create("codebuild", parse(GITHUB + route(), tmp_path))
    assert isinstance(made, LazyCodeBuild)
    assert made.name == "codebuild"


# -- config: choosing a builder per route --------------------------------------------------------------


def test_a_local_route_needs_the_explicit_switch() -> None:
    for text in (
        GITHUB + route(builder="local"),
        GITHUB + "\n[builders.local]\nenabled = false\n" + route(builder="local"),
    ):
        errors = error_keys(text)
        assert list(errors) == ["routes[0].builder"]
        assert "builders.local.enabled is not true" in errors["routes[0].builder"]
        assert "enabled = true" in errors["routes[0].builder"]  # the hint says how


def test_a_local_route_with_the_switch_on(tmp_path: Path) -> None:
    config = parse(
        GITHUB + LOCAL_ON + route(builder="local", image_repository="localhost:5000/demo"), tmp_path
    )
    (web,) = config.routes
    assert web.builder == "local"
    assert config.local_builder == LocalBuilderSettings(
        enabled=True, tool="buildah", work_dir=tmp_path / "bridge-builds"
    )


def test_builders_local_settings_are_read_relative_to_the_file(tmp_path: Path) -> None:
    text = GITHUB + (
        '\n[builders.local]\nenabled = true\ntool = "podman"\nwork_dir = "builds"\n'
        'max_concurrent_builds = 4\nisolation = "chroot"\nstorage_driver = "vfs"\n'
        'storage_root = "/var/tmp/storage"\ntls_verify = false\n'
    )
    assert parse(text, tmp_path).local_builder == LocalBuilderSettings(
        enabled=True,
        tool="podman",
        work_dir=tmp_path / "builds",
        max_concurrent_builds=4,
        isolation="chroot",
        storage_driver="vfs",
        storage_root=Path("/var/tmp/storage"),
        tls_verify=False,
    )


def test_the_local_builder_is_off_by_default(tmp_path: Path) -> None:
    assert parse(GITHUB + route(), tmp_path).local_builder.enabled is False


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (route(builder="kaniko"), "routes[0].builder", "is not a builder"),
        (route(builder="locl"), "routes[0].builder", "did you mean 'local'"),
        (
            LOCAL_ON + route(builder="local", buildspec="ci/buildspec.yml"),
            "routes[0].buildspec",
            "would ignore",
        ),
        (
            LOCAL_ON + route(builder="local", compute_type="BUILD_GENERAL1_SMALL"),
            "routes[0].compute_type",
            "CodeBuild setting",
        ),
        (
            LOCAL_ON + route(builder="local", build_image="aws/codebuild/standard:7.0"),
            "routes[0].build_image",
            "CodeBuild",
        ),
        (LOCAL_ON + route(builder="local", privileged_mode=True), "routes[0].privileged_mode", "CodeBuild"),
        (
            LOCAL_ON + route(builder="local", env={"NPM_TOKEN": "secretsmanager:ci/npm#token"}),
            "routes[0].env.NPM_TOKEN",
            "does not resolve secrets",
        ),
        (
            LOCAL_ON + route(builder="local", env={"DB": "ssm:/ci/db"}),
            "routes[0].env.DB",
            "does not resolve secrets",
        ),
        (
            LOCAL_ON + route(builder="local", source_mode="clone", clone_token="secretsmanager:gl#token"),
            "routes[0].clone_token",
            "CodeBuild setting",
        ),
        ("\n[builders.kaniko]\nenabled = true\n", "builders.kaniko", "unknown builder section"),
        ('\n[builders.local]\ntool = "nerdctl"\n', "builders.local.tool", "not allowed"),
        (
            "\n[builders.local]\nmax_concurrent_builds = 0\n",
            "builders.local.max_concurrent_builds",
            "out of range",
        ),
        ('\n[builders.local]\nisolation = "none"\n', "builders.local.isolation", "not allowed"),
        ("\n[builders.local]\nenable = true\n", "builders.local.enable", "did you mean 'enabled'"),
        ('\n[builders]\nlocal = "yes"\n', "builders.local", "must be a table"),
    ],
)
def test_builder_mistakes_name_their_key(text: str, key: str, words: str) -> None:
    errors = error_keys(GITHUB + text)
    assert key in errors, errors
    assert words in errors[key]


def test_codebuild_routes_keep_their_codebuild_settings(tmp_path: Path) -> None:
    config = parse(
        GITHUB + route(buildspec="ci/buildspec.yml", env={"NPM_TOKEN": "secretsmanager:ci/npm#token"}),
        tmp_path,
    )
    assert config.routes[0].builder == "codebuild"


# -- services: a route's builder, a build's builder ---------------------------------------------------


@pytest.fixture
def services_config(tmp_path: Path) -> Config:
    return make_config(tmp_path, state_path=str(tmp_path / "state.sqlite3"))


def test_routes_and_build_ids_go_to_their_builder(tmp_path: Path, services_config: Config) -> None:
    local = RecordingBuilder("local")
    services = make_services(services_config, environ=secret_env())
    services = dataclasses.replace(services, builders={"local": local})
    (github_route, *_) = services_config.routes
    local_route = dataclasses.replace(github_route, builder="local")

    assert services.builder_for(github_route) is services.builder
    assert services.builder_for(local_route) is local
    assert services.builder_for_build("local:0f8fad5b-d9cb-469f-a165-70867728950e") is local
    for codebuild_id in ("hello-build:0f8fad5b", "localstack:0f8fad5b", "local-dev:0f8fad5b"):
        assert services.builder_for_build(codebuild_id) is services.builder
    with pytest.raises(ConfigError, match="did not set up"):
        services.builder_for(dataclasses.replace(github_route, builder="kaniko"))
    services.store.close()


def test_the_server_makes_each_route_builder_at_start_up(
    tmp_path: Path, buildah: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert route_builders(parse(GITHUB + route(), tmp_path)) == {}
    config = parse(GITHUB + LOCAL_ON + route(builder="local"), tmp_path)

    made = route_builders(config)

    assert list(made) == ["local"]
    assert isinstance(made["local"], LocalBuilder)
    assert (tmp_path / "bridge-builds" / "builds").is_dir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # a host without the tool: `bridge serve` stops
    with pytest.raises(ConfigError) as caught:
        route_builders(config)
    assert caught.value.key == "builders.local.tool"


@pytest.fixture
def buildah() -> str:
    path = shutil.which("buildah")
    if path is None:
        pytest.fail("buildah is not installed: run scripts/test as root, or apt-get install -y buildah")
    return path


# -- a third builder, as the guide in docs/local-builder.md adds one -----------------------------------


class RecordingBuilder:
    """The smallest builder: every build succeeds at once. What a plug-in has to provide."""

    capabilities = Capabilities(
        runs_on_bridge_host=False,
        buildspec=False,
        secret_variables=False,
        pushes_images=False,
        stop=True,
        batch=False,
    )

    def __init__(self, name: str = "echo") -> None:
        self.name = name
        self.started: list[BuildRequest] = []
        self.records: dict[str, BuildRecord] = {}

    def start(self, request: BuildRequest) -> BuildRecord:
        self.started.append(request)
        build_id = f"{self.name}:{uuid.uuid4()}"
        self.records[build_id] = {
            "id": build_id,
            "buildNumber": len(self.started),
            "buildStatus": "SUCCEEDED",
            "buildComplete": True,
            "currentPhase": "COMPLETED",
        }
        return self.records[build_id]

    def get_many(
        self, build_ids: Sequence[str], *, batch_ids: Collection[str] = frozenset()
    ) -> dict[str, BuildRecord]:
        return {b: self.records[b] for b in build_ids if b in self.records}

    def find_started(self, request: BuildRequest, delivery_id: str, *, since: float) -> BuildRecord | None:
        return None

    def stop(self, build_id: str) -> BuildRecord:
        return self.records[build_id]

    def log_tail(self, build: BuildRecord) -> LogTail:
        return NoLog()

    def close(self) -> None:
        """Nothing runs here that could outlive the process."""


class NoLog:
    def poll(self, build: BuildRecord) -> list[str]:
        return []

    def drain(self, build: BuildRecord) -> Iterator[str]:
        return iter(())


@pytest.fixture
def echo_builder() -> Iterator[RecordingBuilder]:
    made = RecordingBuilder()
    builders.register(BuilderSpec("echo", made.capabilities, lambda config: made, id_prefix="echo:"))
    yield made
    builders.unregister("echo")


def test_a_registered_third_builder_is_a_route_choice_and_builds(
    tmp_path: Path, echo_builder: RecordingBuilder
) -> None:
    assert echo_builder.capabilities.stop

    config = parse(GITHUB + route(builder="echo"), tmp_path)
    made = route_builders(config)
    assert made == {"echo": echo_builder}
    assert "routes[0].buildspec" in error_keys(GITHUB + route(builder="echo", buildspec="x.yml"))

    services = dataclasses.replace(
        make_services(make_config(tmp_path, state_path=str(tmp_path / "s.sqlite3")), environ=secret_env()),
        builders=made,
    )
    record = services.builder_for(config.routes[0]).start(BuildRequest({"projectName": "demo"}))
    assert services.builder_for_build(record["id"]) is echo_builder
    assert echo_builder.started[0].project_name == "demo"
    services.store.close()


def test_shutdown_closes_the_builders_that_run_builds_themselves(tmp_path: Path) -> None:
    """gunicorn's exit hook stops the worker, then closes builders such as `local`."""
    import dataclasses

    from bridge.worker import Worker
    from tests.e2e.support import make_config, make_services, secret_env

    class ClosingBuilder:
        name = "local"
        closed = 0

        def close(self) -> None:
            self.closed += 1

    config = make_config(tmp_path, state_path=str(tmp_path / "state.sqlite3"))
    services = make_services(config, environ=secret_env())
    closing = ClosingBuilder()
    services = dataclasses.replace(services, builders={"local": closing})  # type: ignore[dict-item]
    worker = Worker(services)
    worker.stop()
    worker.close_builders()
    assert closing.closed == 1
    services.store.close()
