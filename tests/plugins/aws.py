"""AWS for tests: a moto server over HTTP and the scripted CodeBuild double, wired through env vars.

boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_CODEBUILD, so code under test builds its clients
exactly as in production and still lands on these local servers; nothing is patched.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.fakes.codebuild_double import CodeBuildDouble

REGION = "eu-west-1"

# Variables from the developer's or CI's environment that would make boto3 look elsewhere.
_FOREIGN_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Base URL of one moto server for the whole session (state is reset per test by moto_url)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_url(moto_server: str) -> str:
    """The moto server, emptied of what earlier tests created."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    return moto_server


@pytest.fixture
def codebuild_double(moto_url: str) -> Iterator[CodeBuildDouble]:
    """A fresh CodeBuild double on a free port whose build logs go to the moto server."""
    logs = boto3.client(
        "logs",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    double = CodeBuildDouble(logs=logs, region=REGION).start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def aws_env(
    moto_url: str, codebuild_double: CodeBuildDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """Env vars pointing boto3 at moto (and CodeBuild at the double), set for this process too.

    Pass the returned dict to a subprocess (merged over os.environ) to give it the same AWS.
    """
    for name in _FOREIGN_AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL_"):
            monkeypatch.delenv(name)
    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_CODEBUILD": codebuild_double.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        # Keep a developer's ~/.aws out of the tests.
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials-absent"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def boto_session(aws_env: dict[str, str]) -> boto3.session.Session:
    """A session resolved from aws_env, as production code would build it."""
    return boto3.session.Session()
