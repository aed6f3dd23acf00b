"""The one place bridge makes boto3 clients.

Every client gets the same retry policy (botocore's adaptive mode: exponential backoff on
throttling and 5xx plus a client-side rate limiter) and a user agent that names bridge, so AWS
support and CloudTrail can tell our calls apart. Endpoints are deliberately not handled here:
boto3 already honours AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>, which is how tests point
clients at moto and the CodeBuild double.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config

from bridge import __version__
from bridge.errors import BuilderError, ConfigError, CredentialsError

if TYPE_CHECKING:
    from mypy_boto3_codebuild import CodeBuildClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

DEFAULT_MAX_ATTEMPTS = 8

# What a front door should tell a user with no credentials; each front door knows its own fix.
ACTION_CREDENTIALS_HINT = "add aws-actions/configure-aws-credentials before this step"
DEFAULT_CREDENTIALS_HINT = (
    "provide AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance/task role"
)
DEFAULT_REGION_HINT = "set AWS_REGION (or AWS_DEFAULT_REGION), or pass the region explicitly"

_ECR_REGISTRY = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?$")


def resolve_region(configured: str | None = None) -> str | None:
    """The region: the one configured, then `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the profile's.

    botocore's own chain covers the last two; `AWS_REGION` is what configure-aws-credentials, ECS
    and Lambda set, and botocore does not read it. None when nothing names one.
    """
    if configured and configured.strip():
        return configured.strip()
    from_env = os.environ.get("AWS_REGION", "").strip()
    if from_env:
        return from_env
    try:
        region = botocore.session.Session().get_config_variable("region")
    except botocore.exceptions.ProfileNotFound:
        return None
    return str(region) if region else None


def session(*, region: str | None = None) -> boto3.session.Session:
    """A session on the standard credential chain; an empty region (an unset input) means "the default"."""
    return boto3.session.Session(region_name=resolve_region(region))


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS, *, timeout: float | None = None) -> Config:
    """The botocore config every bridge client shares.

    `max_attempts` counts every attempt, the first one included (botocore's `total_max_attempts`;
    its `max_attempts` key would count only the retries). `timeout` bounds each attempt's connect
    and read, for calls made while a webhook sender waits (botocore's default read timeout is 60 s).
    """
    config = Config(
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        user_agent_extra=f"bridge/{__version__}",
    )
    if timeout is not None:
        config = config.merge(Config(connect_timeout=timeout, read_timeout=timeout))
    return config


@overload
def client(
    service: Literal["codebuild"],
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
) -> CodeBuildClient: ...
@overload
def client(
    service: Literal["logs"],
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
) -> CloudWatchLogsClient: ...
@overload
def client(
    service: Literal["secretsmanager"],
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
    timeout: float | None = ...,
) -> SecretsManagerClient: ...
@overload
def client(
    service: Literal["ecr"],
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
) -> ECRClient: ...
@overload
def client(
    service: Literal["sqs"],
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
    timeout: float | None = ...,
) -> SQSClient: ...
@overload
def client(
    service: Literal["sns"],
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
) -> SNSClient: ...
@overload
def client(
    service: Literal["dynamodb"],
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
    timeout: float | None = ...,
) -> DynamoDBClient: ...
@overload
def client(
    service: str,
    *,
    region: str | None = ...,
    session: boto3.session.Session | None = ...,
    max_attempts: int = ...,
    timeout: float | None = ...,
) -> Any: ...
def client(
    service: str,
    *,
    region: str | None = None,
    session: boto3.session.Session | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
) -> Any:
    """A boto3 client with bridge's retry policy; the region defaults to the session's."""
    if session is None:
        session, region = boto3.session.Session(), resolve_region(region)
    else:  # a session made with a region (aws.session() resolves it) keeps it
        region = region or session.region_name or resolve_region()
    config = client_config(max_attempts, timeout=timeout)
    try:
        return session.client(service, region_name=region, config=config)  # type: ignore[call-overload]
    except botocore.exceptions.NoRegionError as exc:
        raise ConfigError(
            f"no AWS region configured for the {service} client", hint=DEFAULT_REGION_HINT
        ) from exc


def check_credentials(session: boto3.session.Session, *, hint: str = DEFAULT_CREDENTIALS_HINT) -> None:
    """Fail early, before any build starts, when boto3's credential chain finds nothing."""
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.ProfileNotFound as exc:
        raise CredentialsError(f"AWS profile '{session.profile_name}' does not exist", hint=hint) from exc
    if credentials is None or not credentials.get_frozen_credentials().access_key:
        raise CredentialsError("no AWS credentials found", hint=hint)


def region_of(session: boto3.session.Session, *, hint: str = DEFAULT_REGION_HINT) -> str:
    """The session's region; builds, log links and ARNs all need one, so none is an error."""
    region = session.region_name or resolve_region()
    if not region:
        raise ConfigError("no AWS region configured", hint=hint)
    return region


def ecr_image_digest(ecr: ECRClient, image_uri: str) -> str | None:
    """The pushed image's digest, read back from ECR (CodeBuild does not report it).

    None when the image is not in ECR (another registry, or not pushed); a digest already in
    the URI is returned as is. Any other failure is an error, so a missing ecr:DescribeImages
    permission is reported rather than silently dropping the output.
    """
    registry, _, path = image_uri.partition("/")
    if "@" in path:
        return path.split("@", 1)[1]
    match = _ECR_REGISTRY.match(registry)
    if match is None or not path:
        return None
    repository, _, tag = path.rpartition(":") if ":" in path else (path, "", "latest")
    try:
        images = ecr.describe_images(
            registryId=match["account"], repositoryName=repository, imageIds=[{"imageTag": tag}]
        )["imageDetails"]
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return None
        raise BuilderError(
            f"ECR DescribeImages for {repository}:{tag} failed ({code})",
            retryable=code in ("ThrottlingException", "ServerException"),
            hint=f"allow ecr:DescribeImages on repository '{repository}'",
        ) from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise BuilderError(
            f"ECR DescribeImages for {repository}:{tag} could not reach AWS: {type(exc).__name__}",
            retryable=True,
            hint="check the network path to the ECR endpoint",
        ) from exc
    return images[0].get("imageDigest") if images else None
