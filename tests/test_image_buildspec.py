"""The packaged image buildspec, planned by bridge.plan and run as CodeBuild runs it, on a real dockerd
and real registries (tests/plugins/docker.py): what it pushes, the digest it exports, how it logs in.

Test images are `FROM scratch` plus busybox-static (nothing can be pulled here); builds use
`--network none` (DOCKER_NETWORK) because the test engine has no bridge network.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from bridge.model import BuildOptions, RegistryAuth, SourceEvent
from bridge.plan import plan_build
from tests.buildspec_runner import BuildResult, env_from_request, run_buildspec
from tests.docker_engine import Registry, busybox, empty_builder

SHA = "a" * 40


def push_event(sha: str = SHA, branch: str = "main") -> SourceEvent:
    return SourceEvent(
        provider="github",
        kind="push",
        event_name="push",
        action=None,
        repository="octo/app",
        clone_url="https://github.com/octo/app.git",
        sha=sha,
        ref=f"refs/heads/{branch}",
        server_url="https://github.com",
        branch=branch,
    )


def make_source(root: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox(), root / "busybox")
    (root / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    for name, text in (files or {}).items():
        (root / name).write_text(text, encoding="utf-8")
    return root


BUSYBOX_IMAGE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /usr/bin && /bin/busybox --install -s"]
COPY app.txt /app.txt
"""


def build(
    source: Path,
    env: dict[str, str],
    options: BuildOptions,
    event: SourceEvent | None = None,
    secrets: dict[str, str] | None = None,
) -> BuildResult:
    request = plan_build(event or push_event(), options, idempotency_seed="test")
    kwargs = request.start_build_kwargs
    build_env = {**env, **env_from_request(kwargs, secrets or {}), "DOCKER_NETWORK": "none"}
    return run_buildspec(kwargs["buildspecOverride"], env=build_env, source_dir=source)


def test_push_and_digest_export_are_real(
    docker_client_env: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    source = make_source(tmp_path / "src", BUSYBOX_IMAGE, {"app.txt": "v1\n"})
    options = BuildOptions(
        project_name="p", image_repository=f"{registry.address}/octo/app", image_tag="{sha}"
    )

    result = build(source, docker_client_env, options)

    assert result.status == "SUCCEEDED", result.log
    found = registry.manifest("octo/app", SHA)
    assert found is not None, result.log
    digest, _ = found
    assert result.exported["IMAGE_URI"] == f"{registry.address}/octo/app:{SHA}"
    assert result.exported["IMAGE_DIGEST"] == digest


def test_registry_credentials_log_in_without_the_password_in_the_log(
    docker_client_env: dict[str, str], auth_registry: Registry, tmp_path: Path
) -> None:
    assert auth_registry.get("/v2/_catalog", auth=False)[0] == 401  # the registry really asks for a login
    assert auth_registry.password is not None
    assert auth_registry.username is not None
    source = make_source(tmp_path / "src", BUSYBOX_IMAGE, {"app.txt": "v1\n"})
    options = BuildOptions(
        project_name="p",
        image_repository=f"{auth_registry.address}/octo/app",
        registry=RegistryAuth("secretsmanager:registry#username", "secretsmanager:registry#password"),
    )
    secrets = {"registry:username": auth_registry.username, "registry:password": auth_registry.password}

    result = build(source, docker_client_env, options, secrets=secrets)

    assert result.status == "SUCCEEDED", result.log
    assert auth_registry.password not in result.log
    assert "Login Succeeded" in result.log
    assert auth_registry.manifest("octo/app", SHA) is not None


def test_a_failing_dockerfile_pushes_nothing(
    docker_client_env: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    failing = BUSYBOX_IMAGE + 'RUN ["/bin/busybox", "false"]\n'
    source = make_source(tmp_path / "src", failing, {"app.txt": "v1\n"})
    options = BuildOptions(project_name="p", image_repository=f"{registry.address}/octo/app")

    result = build(source, docker_client_env, options)

    assert result.status == "FAILED"
    assert [(p.name, p.status) for p in result.phases] == [
        ("PRE_BUILD", "SUCCEEDED"),
        ("BUILD", "FAILED"),
        ("POST_BUILD", "SUCCEEDED"),
    ]
    assert "not pushing" in result.log
    assert "IMAGE_DIGEST" not in result.exported
    assert registry.repositories() == []


EXPENSIVE_IMAGE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox head -c 32 /dev/urandom > /expensive"]
COPY app.txt /app.txt
"""


def test_a_new_branch_on_a_fresh_host_reuses_the_default_branchs_cached_layers(
    docker_client_env: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    """The expensive step writes random bytes: the same layer digest twice means it came from the cache."""
    repository = f"{registry.address}/octo/app"
    options = BuildOptions(project_name="p", image_repository=repository)
    empty_builder(docker_client_env)  # nothing from earlier tests on this engine
    first = build(
        make_source(tmp_path / "one", EXPENSIVE_IMAGE, {"app.txt": "v1\n"}),
        docker_client_env,
        options,
        push_event("1" * 40, "main"),
    )
    assert first.status == "SUCCEEDED", first.log
    assert registry.manifest("octo/app", "buildcache-main") is not None  # the cache ref was written
    empty_builder(docker_client_env)  # the next build runs on a fresh host

    second = build(
        make_source(tmp_path / "two", EXPENSIVE_IMAGE, {"app.txt": "v2\n"}),
        docker_client_env,
        options,
        replace(push_event("2" * 40, "feature/x"), default_branch="main"),
    )

    assert second.status == "SUCCEEDED", second.log
    one, two = (registry.manifest("octo/app", sha) for sha in ("1" * 40, "2" * 40))
    assert one is not None
    assert two is not None
    layers_one = [layer["digest"] for layer in one[1]["layers"]]
    layers_two = [layer["digest"] for layer in two[1]["layers"]]
    assert layers_one[:2] == layers_two[:2]  # busybox and the expensive step: from the cache
    assert layers_one[2] != layers_two[2]  # the changed source
    assert registry.manifest("octo/app", "buildcache-feature-x") is not None
    # the build report the check run shows: measured from the real BuildKit output
    assert (first.exported["BRIDGE_CACHED_STEPS"], first.exported["BRIDGE_BUILD_STEPS"]) == ("0", "3")
    assert (second.exported["BRIDGE_CACHED_STEPS"], second.exported["BRIDGE_BUILD_STEPS"]) == ("2", "3")
    assert int(second.exported["IMAGE_SIZE"]) > 1_000_000  # busybox alone is over 1 MB


def test_cache_none_rebuilds_every_layer_on_a_fresh_host(
    docker_client_env: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    options = BuildOptions(project_name="p", image_repository=f"{registry.address}/octo/app", cache="none")
    source = make_source(tmp_path / "src", EXPENSIVE_IMAGE, {"app.txt": "v1\n"})
    for sha in ("1" * 40, "2" * 40):
        empty_builder(docker_client_env)
        assert build(source, docker_client_env, options, push_event(sha)).status == "SUCCEEDED"
    one, two = (registry.manifest("octo/app", sha) for sha in ("1" * 40, "2" * 40))
    assert one is not None
    assert two is not None
    assert one[1]["layers"][1]["digest"] != two[1]["layers"][1]["digest"]
    assert registry.manifest("octo/app", "buildcache-main") is None
