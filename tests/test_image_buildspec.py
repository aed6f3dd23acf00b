"""The packaged image buildspec, planned by bridge.plan and run as CodeBuild runs it, on a real dockerd
and real registries (tests/plugins/docker.py): what it pushes, the digest it exports, how it logs in.

Test images are `FROM scratch` plus busybox-static (nothing can be pulled here); builds use
`--network none` (DOCKER_NETWORK) because the test engine has no bridge network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bridge.model import BuildOptions, RegistryAuth, SourceEvent
from bridge.plan import plan_build
from tests.buildspec_runner import BuildResult, env_from_request, run_buildspec
from tests.docker_engine import Registry, busybox

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
    assert result.exported == {"IMAGE_URI": f"{registry.address}/octo/app:{SHA}", "IMAGE_DIGEST": digest}


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
