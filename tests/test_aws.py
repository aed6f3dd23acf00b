"""bridge.aws: client policy, credential and region checks, ECR digest look-up (against moto)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from bridge import aws
from bridge.errors import BuilderError, ConfigError, CredentialsError
from tests.fakes.codebuild_double import CodeBuildDouble


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An environment where boto3's credential chain and region lookup find nothing."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_client_uses_the_endpoint_env_and_bridge_policy(
    boto_session: boto3.session.Session, codebuild_double: CodeBuildDouble
) -> None:
    codebuild = aws.client("codebuild", session=boto_session, max_attempts=5)
    assert codebuild.meta.endpoint_url == codebuild_double.url
    assert codebuild.meta.region_name == "eu-west-1"
    assert codebuild.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 5}  # type: ignore[attr-defined]
    codebuild.batch_get_builds(ids=["app:1"])
    [call] = codebuild_double.calls("BatchGetBuilds")
    assert call.user_agent.endswith("bridge/0.1.0")
    assert "cfg/retry-mode#adaptive" in call.user_agent


def test_explicit_region_wins(boto_session: boto3.session.Session) -> None:
    assert aws.client("logs", session=boto_session, region="us-east-2").meta.region_name == "us-east-2"


def test_session_treats_an_empty_region_as_unset(aws_env: dict[str, str]) -> None:
    assert aws.session(region="").region_name == "eu-west-1"
    assert aws.session(region="ap-south-1").region_name == "ap-south-1"


@pytest.mark.usefixtures("bare_env")
def test_missing_credentials_carry_the_callers_hint() -> None:
    session = aws.session(region="eu-west-1")
    with pytest.raises(CredentialsError) as caught:
        aws.check_credentials(session, hint=aws.ACTION_CREDENTIALS_HINT)
    assert caught.value.hint == "add aws-actions/configure-aws-credentials before this step"
    assert caught.value.exit_code == 3
    with pytest.raises(CredentialsError) as default:
        aws.check_credentials(session)
    assert default.value.hint == aws.DEFAULT_CREDENTIALS_HINT


def test_present_credentials_pass(boto_session: boto3.session.Session) -> None:
    aws.check_credentials(boto_session)


@pytest.mark.usefixtures("bare_env")
def test_missing_region_is_a_config_error() -> None:
    session = aws.session()
    with pytest.raises(ConfigError) as caught:
        aws.region_of(session, hint="set the aws-region input")
    assert caught.value.hint == "set the aws-region input"
    with pytest.raises(ConfigError, match="codebuild"):
        aws.client("codebuild", session=session)


def test_region_of(boto_session: boto3.session.Session) -> None:
    assert aws.region_of(boto_session) == "eu-west-1"


def test_ecr_image_digest(boto_session: boto3.session.Session) -> None:
    ecr = aws.client("ecr", session=boto_session)
    ecr.create_repository(repositoryName="team/app")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 7023,
                "digest": "sha256:" + "a" * 64,
            },
            "layers": [],
        }
    )
    pushed = ecr.put_image(repositoryName="team/app", imageManifest=manifest, imageTag="abc123")["image"][
        "imageId"
    ]
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"

    assert aws.ecr_image_digest(ecr, f"{registry}/team/app:abc123") == pushed["imageDigest"]
    assert aws.ecr_image_digest(ecr, f"{registry}/team/app:never-pushed") is None
    assert aws.ecr_image_digest(ecr, f"{registry}/team/other:abc123") is None
    assert aws.ecr_image_digest(ecr, "ghcr.io/team/app:abc123") is None
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert aws.ecr_image_digest(ecr, f"ghcr.io/team/app@{digest}") == digest


@pytest.fixture
def ecr_denying_everything() -> Iterator[str]:
    """A local ECR endpoint that answers every call with AccessDeniedException, as for a missing IAM grant."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = json.dumps(
            {"__type": "AccessDeniedException", "message": "not authorized: ecr:DescribeImages"}
        )
        return Response(body, status=400, content_type="application/x-amz-json-1.1")(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_ecr_failures_other_than_not_found_are_reported(
    aws_env: dict[str, str], ecr_denying_everything: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", ecr_denying_everything)
    ecr = aws.client("ecr", session=aws.session(), max_attempts=1)
    with pytest.raises(BuilderError) as caught:
        aws.ecr_image_digest(ecr, "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:abc")
    assert "AccessDeniedException" in caught.value.message
    assert caught.value.hint == "allow ecr:DescribeImages on repository 'team/app'"
    assert not caught.value.retryable


def test_ecr_unreachable_is_retryable(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", f"http://127.0.0.1:{port}")
    ecr = aws.client("ecr", session=aws.session(), max_attempts=1)
    with pytest.raises(BuilderError) as caught:
        aws.ecr_image_digest(ecr, "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:abc")
    assert caught.value.retryable


@pytest.mark.usefixtures("bare_env")
def test_the_region_comes_from_the_config_then_aws_region_then_aws_default_region_then_the_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = ap-southeast-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert aws.resolve_region() == "ap-southeast-2"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    assert aws.resolve_region() == "eu-north-1"
    monkeypatch.setenv("AWS_REGION", "ca-central-1")
    assert aws.resolve_region() == "ca-central-1"
    assert aws.session().region_name == "ca-central-1"
    assert aws.client("logs").meta.region_name == "ca-central-1"
    assert aws.resolve_region("us-west-2") == "us-west-2"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert aws.resolve_region() is None
