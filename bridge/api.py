"""A small Python API: build a local folder into an image on CodeBuild and get its digest back.

For tools that already decide *what* to build (ML pipelines, platform CLIs, ZenML/Union-style image
builders) and only need somewhere to build it. It is the same engine as the Action's
`source: workspace`: the folder is zipped honouring .dockerignore, uploaded content-addressed to
S3, planned into the exact StartBuild call (packaged buildspec, registry login, overrides) and run
by the CodeBuild builder, polled with back-off until it ends.

    from bridge.api import build, RegistryAuth

    digest = build(
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/trainer:v3",
        "./docker/trainer",
        {"compute_type": "BUILD_GENERAL1_LARGE"},
        project="codebuild-flex",
        bucket="my-build-contexts",
    )
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.context import DEFAULT_MAX_BYTES, upload_context, zip_context
from bridge.core.trust import Policy, TrustFacts, granted
from bridge.errors import BridgeError, BuilderError, InputError
from bridge.model import BuildOptions, BuildStatus, RegistryAuth, SourceEvent
from bridge.plan import plan_build
from bridge.poll import Backoff
from bridge.status import build_status, is_complete

if TYPE_CHECKING:
    import boto3

    from bridge.builders.base import Builder

__all__ = ["BuildFailedError", "BuildOptions", "RegistryAuth", "build"]

# Set by build() itself: the source is the uploaded zip and the image comes from `image`.
_DERIVED = frozenset(
    {"project_name", "source_location", "source_type", "source_version", "source_mode", "clone_token_ref"}
)
_DERIVED_FROM_IMAGE = frozenset({"image_repository", "image_tag"})
_OPTION_FIELDS = frozenset(field.name for field in dataclasses.fields(BuildOptions))


class BuildFailedError(BuilderError):
    """The build ran and did not succeed; `status` has the title, phases and console link."""

    def __init__(self, status: BuildStatus) -> None:
        super().__init__(
            f"{status.title} ({status.build_status})", hint=f"open the build: {status.console_url}"
        )
        self.status = status


def build(
    image: str,
    context: str | Path,
    options: BuildOptions | Mapping[str, Any] | None = None,
    registry: RegistryAuth | None = None,
    *,
    project: str,
    bucket: str,
    prefix: str = "bridge-contexts",
    session: boto3.session.Session | None = None,
    wait: bool = True,
    poll_interval: float = 10.0,
    timeout_seconds: float | None = None,
    on_status: Callable[[BuildStatus], None] | None = None,
    max_context_bytes: int = DEFAULT_MAX_BYTES,
    builder: Builder | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **option_kwargs: Any,
) -> str:
    """Build `context` (a folder with a Dockerfile) into `image` (REGISTRY/REPO[:TAG]) and push it.

    Returns the pushed image's digest (`sha256:...`), or with `wait=False` the id of the started
    build. Options come as BuildOptions, a mapping or keyword arguments with BuildOptions' field
    names (compute_type, env_vars, timeout_minutes, batch, ...). Raises BuildFailedError when the build
    does not succeed, and InputError/ConfigError/BuilderError (all BridgeError) for the rest.
    """
    from bridge import aws

    repository, tag = split_image(image)
    merged = _options(project, options, option_kwargs)
    merged = replace(merged, image_repository=repository, image_tag=tag, registry=registry or merged.registry)
    root = Path(context).expanduser().resolve()
    if not root.is_dir():
        raise InputError("context", f"'{context}' is not a folder", hint="the folder holding the Dockerfile")
    aws_session = session if session is not None else aws.session()
    region = aws.region_of(aws_session)

    dockerfile = next((v.value for v in merged.env_vars if v.name == "DOCKERFILE"), "Dockerfile")
    with tempfile.TemporaryDirectory(prefix="bridge-context-") as scratch:
        archive = zip_context(
            root, Path(scratch) / "context.zip", dockerfile=dockerfile, max_bytes=max_context_bytes
        )
        location = upload_context(
            aws.client("s3", session=aws_session), archive, bucket=bucket, prefix=prefix
        )
    merged = replace(
        merged, source_type="S3", source_location=location.source_location, source_version=location.version_id
    )
    event = SourceEvent(
        provider="github",
        kind="manual",
        event_name="api",
        action=None,
        repository=f"api/{root.name or 'context'}",
        clone_url="",
        sha=archive.sha256[:40],  # the context's own digest stands in for a commit
        ref=None,
        server_url="",
    )
    # One call, one build: botocore's retries of this call reuse the token, a second call does not.
    # The caller's own code and context: the routed repository itself, in the trust table's terms.
    grant = granted(event, Policy.of_options("api", merged, forks="never"), TrustFacts(fork=False))
    request = plan_build(event, merged, grant=grant, idempotency_seed=f"api/{uuid.uuid4()}")
    if builder is None:
        from bridge.builders.codebuild import CodeBuildBuilder

        builder = CodeBuildBuilder(
            aws.client("codebuild", session=aws_session), aws.client("logs", session=aws_session)
        )
    record = builder.start(request)
    build_id = str(record["id"])
    if not wait:
        return build_id

    backoff = Backoff(poll_interval)
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    last: tuple[str, str | None] | None = None
    while True:
        status = build_status(record, region=region)
        if on_status is not None and (status.build_status, status.current_phase) != last:
            last = (status.build_status, status.current_phase)
            on_status(status)
        if is_complete(record):
            break
        if deadline is not None and time.monotonic() > deadline:
            builder.stop(build_id)
            raise BuilderError(
                f"build {build_id} did not finish within {timeout_seconds:g} s; it was stopped",
                hint="raise timeout_seconds, or pass wait=False and track the build yourself",
            )
        try:
            sleep(backoff.success())
            record = builder.get_many([build_id])[build_id]
        except BridgeError as error:
            if not getattr(error, "retryable", False):
                raise
            sleep(backoff.failure())
        except KeyError:
            raise BuilderError(f"build {build_id} is no longer known to CodeBuild") from None

    if status.build_status != "SUCCEEDED":
        raise BuildFailedError(status)
    digest = status.image_digest
    if not digest and request.image_uri:
        digest = aws.ecr_image_digest(aws.client("ecr", session=aws_session), request.image_uri)
    if not digest:
        raise BuilderError(
            f"build {build_id} succeeded but its image digest is unknown",
            hint="the packaged buildspec exports IMAGE_DIGEST; a custom buildspec must export it too "
            "(env: exported-variables)",
        )
    return digest


def split_image(image: str) -> tuple[str, str]:
    """REGISTRY/REPO[:TAG] -> (repository, tag); the tag defaults to `latest`, as with docker push."""
    image = image.strip()
    if "@" in image:
        raise InputError("image", "cannot push to a digest", hint="REGISTRY/REPOSITORY[:TAG]")
    head, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return head, tag
    return image, "latest"


def _options(
    project: str, options: BuildOptions | Mapping[str, Any] | None, extra: Mapping[str, Any]
) -> BuildOptions:
    if isinstance(options, BuildOptions):
        values = {f.name: getattr(options, f.name) for f in dataclasses.fields(BuildOptions)}
        given = {name for name, value in values.items() if value != _default(name)}
    else:
        values = dict(options or {})
        given = set(values)
    values.update(extra)
    given |= set(extra)
    unknown = sorted(set(values) - _OPTION_FIELDS)
    if unknown:
        raise InputError(
            unknown[0],
            "is not a build option",
            hint="use BuildOptions field names: " + ", ".join(sorted(_OPTION_FIELDS)),
        )
    fixed = sorted((given & (_DERIVED | _DERIVED_FROM_IMAGE)) - {"project_name"})
    if fixed:
        hint = (
            "the image and tag come from `image`" if set(fixed) & _DERIVED_FROM_IMAGE else "build() sets it"
        )
        raise InputError(fixed[0], "is set by build() itself", hint=hint)
    if isinstance(values.get("env_vars"), Mapping):
        from bridge.plan import parse_env_vars

        text = "\n".join(f"{name}={value}" for name, value in values["env_vars"].items())
        values["env_vars"] = parse_env_vars(text, input_name="env_vars")
    values["project_name"] = project
    return BuildOptions(**values)


def _default(name: str) -> Any:
    field = BuildOptions.__dataclass_fields__[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default
