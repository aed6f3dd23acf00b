"""A real Docker engine and registries for tests (tests/docker_engine.py), started and stopped by PID.

One dockerd serves the whole session (starting it costs seconds on vfs); each test gets its own
client config (registry logins), its own registries and, where it matters, an emptied builder.
When a package is missing the tests fail with the command that installs it: they never skip.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker_engine import (
    Dockerd,
    EngineMissingError,
    Registry,
    busybox,
    client_bin_dir,
    docker_env,
    remove_tree,
    short_tempdir,
)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    try:
        busybox()
        root = short_tempdir("dk")
    except EngineMissingError as error:
        pytest.fail(str(error))
    engine = Dockerd(root)
    try:
        engine.start()
    except EngineMissingError as error:
        remove_tree(root)
        pytest.fail(str(error))
    try:
        yield engine
    finally:
        engine.stop()
        remove_tree(root)


@pytest.fixture
def docker_client_env(dockerd: Dockerd, tmp_path: Path) -> dict[str, str]:
    """Environment for Debian's docker client on the session engine, with a per-test DOCKER_CONFIG."""
    try:
        bin_dir = client_bin_dir(tmp_path / "tools")
    except EngineMissingError as error:
        pytest.fail(str(error))
    return docker_env(dockerd, tmp_path / "docker-config", bin_dir)


def _registry(username: str | None = None, password: str | None = None) -> Iterator[Registry]:
    root = short_tempdir("rg")
    registry = Registry(root, username=username, password=password)
    try:
        registry.start()
    except EngineMissingError as error:
        remove_tree(root)
        pytest.fail(str(error))
    try:
        yield registry
    finally:
        registry.stop()
        remove_tree(root)


@pytest.fixture
def registry() -> Iterator[Registry]:
    """An empty registry on 127.0.0.1 without auth."""
    yield from _registry()


@pytest.fixture
def auth_registry() -> Iterator[Registry]:
    """An empty registry on 127.0.0.1 that takes one user with a random password (htpasswd, bcrypt)."""
    yield from _registry("builder", "pw-" + secrets.token_hex(12))
