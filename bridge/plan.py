"""Turn a SourceEvent and BuildOptions into the exact StartBuild call.

Pure on purpose: no AWS client here, so every shape the planner can produce is a table-driven test,
and the tests prove each one against botocore's own CodeBuild model. Values never get spliced into
buildspec text: the packaged buildspecs read everything from environment variables, always quoted,
so a branch called `$(rm -rf /)` stays a string.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from bridge.core.cache import LOCAL_CACHE_OVERRIDE, plan_cache
from bridge.core.platforms import is_multi, native_overrides
from bridge.core.trust import Grant, Policy, TrustFacts, granted
from bridge.env_vars import SECRETS_PREFIX, looks_like_credential, parse_env_vars, secrets_manager_value
from bridge.errors import ConfigError, InputError
from bridge.image_names import REGISTRY_HOST, compose_image_uri, render_image_tag
from bridge.model import BuildOptions, BuildRequest, EnvVar, RegistryAuth, SourceEvent

# Re-exported: planning's inputs, parsed where they are named.
__all__ = [
    "DELIVERY_ID_VARIABLE",
    "compose_image_uri",
    "looks_like_credential",
    "packaged_buildspec",
    "parse_bool",
    "parse_env_vars",
    "plan_build",
    "registry_env",
    "render_image_tag",
    "secrets_manager_value",
    "start_build_batch_kwargs",
]


def parse_bool(value: str, *, input_name: str) -> bool:
    """Action inputs arrive as strings; accept the spellings people actually write."""
    lowered = value.strip().lower()
    if lowered in {"true", "yes", "1"}:
        return True
    if lowered in {"false", "no", "0"}:
        return False
    raise InputError(input_name, "expected a boolean", hint="true or false")


# --- the StartBuild request ------------------------------------------------------------------------

_MIN_TIMEOUT, _MAX_TIMEOUT = 5, 2160  # CodeBuild's BuildTimeOut bounds
DELIVERY_ID_VARIABLE = "BRIDGE_DELIVERY_ID"
_PROTECTED_KWARGS = frozenset({"projectName", "idempotencyToken"})


def packaged_buildspec(name: str) -> str:
    """The text of a buildspec shipped in bridge/data (read from the installed package, not a path)."""
    return resources.files("bridge").joinpath("data").joinpath(name).read_text(encoding="utf-8")


def source_type_for(event: SourceEvent) -> str:
    host = (urlsplit(event.server_url).hostname or "").lower()
    if event.provider == "github":
        return "GITHUB" if host == "github.com" else "GITHUB_ENTERPRISE"
    return "GITLAB" if host == "gitlab.com" else "GITLAB_SELF_MANAGED"


def plan_build(
    event: SourceEvent,
    options: BuildOptions,
    *,
    grant: Grant | None = None,
    idempotency_seed: str,
    context_env: Mapping[str, str] = {},
    delivery_id: str | None = None,
) -> BuildRequest:
    """Build the StartBuild kwargs for what `grant` (core.trust.decide) allows, and nothing more.

    `options` are the route's (or the Action's) settings; the grant says which of them this build
    gets: secret variables, the clone token, where it pushes. Without a grant, the options' own
    decision applies: everything for the repository's own code, nothing trusted for a fork's
    (forks = without-secrets). The same seed and request always give the same token, so a retried
    call does not start a second build, while a different request never reuses one.

    `delivery_id` (the webhook server's) goes into the build's BRIDGE_DELIVERY_ID variable: once
    CodeBuild has forgotten the token (5 minutes), that is how a retry finds a build an earlier
    attempt started."""
    if grant is None:
        policy = Policy.of_options(options.project_name, options, forks="without-secrets")
        grant = granted(event, policy, TrustFacts.of(event))
    clone_mode = options.source_mode == "clone"
    if clone_mode and event.provider != "gitlab":
        raise ConfigError(
            "clone mode is for GitLab sources only", key="source_mode", hint="use source_mode = 'native'"
        )

    kwargs: dict[str, Any] = {"projectName": options.project_name}
    image_uri: str | None = None
    # The event's own values win over a context variable of the same name: one entry per name.
    context = [EnvVar(name, value) for name, value in context_env.items()]
    bridge_env = list({v.name: v for v in [*context, *_event_env(event)]}.values())
    if delivery_id is not None:
        bridge_env.append(EnvVar(DELIVERY_ID_VARIABLE, delivery_id))

    if grant.push and grant.image_repository:
        tag = render_image_tag(grant.image_tag, event)
        image_uri = compose_image_uri(grant.image_repository, tag)
        bridge_env += [
            EnvVar("IMAGE_REPOSITORY", grant.image_repository.strip()),
            EnvVar("IMAGE_TAG", tag),
            EnvVar("IMAGE_URI", image_uri),
        ]
    elif grant.builds_image:
        # The packaged buildspecs build the image and skip the login and the push.
        bridge_env.append(EnvVar("BRIDGE_PUSH", "false"))
    builds_image = image_uri is not None or grant.builds_image
    if image_uri is not None and options.image_repository and grant.cache_read:
        # Read from the route's cache; written only by builds the grant trusts to (never a fork's).
        write = options.cache_write and grant.cache_write
        cache = plan_cache(event, options.image_repository.strip(), options.cache, write=write)
        bridge_env += cache.env()
    if image_uri is not None and options.sign_key and grant.source == "repository":
        # Only the repository's own code is signed with the project's key: never a fork's, approved or not.
        bridge_env.append(EnvVar("BRIDGE_SIGN_KEY", options.sign_key))

    buildspec = options.buildspec or None
    multi = is_multi(options.platforms)
    if multi:
        _check_multi_platform(options, image_uri, clone_mode=clone_mode)
        buildspec = packaged_buildspec("buildspec-multiarch.yml")
    if clone_mode:
        bridge_env += _clone_env(event, options, grant)
        kwargs["sourceTypeOverride"] = "NO_SOURCE"
        if buildspec is None:
            if not builds_image:
                raise ConfigError(
                    "clone mode without a buildspec needs an image repository to build",
                    key="image_repository",
                    hint="set image_repository, or a buildspec that uses BRIDGE_CLONE_URL/BRIDGE_COMMIT_SHA",
                )
            buildspec = packaged_buildspec("buildspec-gitlab-clone.yml")
    elif options.source_type == "S3":
        _add_s3_source(kwargs, options)
        if buildspec is None and builds_image:
            buildspec = packaged_buildspec("buildspec-image.yml")
    else:
        kwargs["sourceVersion"] = options.source_version or grant.sha
        kwargs["sourceLocationOverride"] = (
            options.source_location
            or grant.fetch_url
            or f"{event.server_url.rstrip('/')}/{event.repository}.git"
        )
        kwargs["sourceTypeOverride"] = options.source_type or source_type_for(event)
        if buildspec is None and builds_image:
            buildspec = packaged_buildspec("buildspec-image.yml")
    if options.registry is not None and grant.secrets:
        bridge_env += registry_env(options.registry)

    env = _merge_env(bridge_env, options.env_vars, secrets=grant.secrets)
    if env:
        kwargs["environmentVariablesOverride"] = [
            {"name": v.name, "value": v.value, "type": v.type} for v in env
        ]
    if buildspec is not None:
        kwargs["buildspecOverride"] = buildspec
    _add_environment_overrides(kwargs, options, builds_image=builds_image)
    if options.cache == "local" and grant.cache_write:
        kwargs["cacheOverride"] = dict(LOCAL_CACHE_OVERRIDE)
    for key, value in options.extra_overrides.items():
        if key in grant.withheld_overrides:
            continue  # core.trust withholds it from this build (a fork's), and says so in grant.dropped
        if key in _PROTECTED_KWARGS:
            raise InputError("overrides", f"cannot override {key}", hint="set it through its own option")
        kwargs[key] = value
    for key, value in native_overrides(options.platforms, options.build_image).items():
        kwargs[key] = value
    batch = options.batch or multi
    if batch:
        start_build_batch_kwargs(kwargs)  # fail now, not after a context upload, on a build-only parameter
        idempotency_seed += "\nbatch"  # a batch and a single build of one request are two different starts
    kwargs["idempotencyToken"] = idempotency_token(idempotency_seed, kwargs)
    return BuildRequest(start_build_kwargs=kwargs, image_uri=image_uri, batch=batch)


def _check_multi_platform(options: BuildOptions, image_uri: str | None, *, clone_mode: bool) -> None:
    """Several platforms are built by the packaged multi-platform batch: it needs an image to push and
    owns the buildspec."""
    if image_uri is None:
        raise InputError("platforms", "several platforms need an image to build", hint="set image-repository")
    if options.buildspec or clone_mode:
        raise InputError(
            "platforms",
            "several platforms are built by the packaged multi-platform buildspec, not "
            + ("GitLab clone mode" if clone_mode else "a buildspec of your own"),
            hint="remove buildspec (or use a batch section of your own with batch: true)",
        )


def _add_s3_source(kwargs: dict[str, Any], options: BuildOptions) -> None:
    """An uploaded zip (the Action's `source: workspace`, or the Python API) as the build's source.

    For S3, sourceVersion is the object's *version id*, not a commit: it is sent only when known
    (a versioned bucket), otherwise CodeBuild takes the latest object at that key.
    """
    location = (options.source_location or "").strip()
    bucket, _, key = location.partition("/")
    if not bucket or not key or "://" in location:
        raise InputError(
            "source-location",
            "an S3 source needs the object's location as BUCKET/KEY",
            hint="e.g. my-bucket/contexts/abc123.zip (no s3:// prefix)",
        )
    kwargs["sourceTypeOverride"] = "S3"
    kwargs["sourceLocationOverride"] = location
    if options.source_version:
        kwargs["sourceVersion"] = options.source_version


# --- registry credentials --------------------------------------------------------------------------

_REGISTRY_FORM = "secretsmanager:SECRET_NAME_OR_ARN[#json-key]"


def registry_env(auth: RegistryAuth) -> list[EnvVar]:
    """REGISTRY_USERNAME/REGISTRY_PASSWORD as SECRETS_MANAGER variables (REGISTRY_SERVER plain).

    Only references are accepted, so neither value can ever travel as PLAINTEXT, which anyone with
    codebuild:BatchGetBuilds could read back from the build record.
    """
    env: list[EnvVar] = []
    for name, input_name, raw in (
        ("REGISTRY_USERNAME", "registry-username", auth.username_ref),
        ("REGISTRY_PASSWORD", "registry-password", auth.password_ref),
    ):
        reference = raw.strip()
        if not reference.startswith(SECRETS_PREFIX):
            raise InputError(
                input_name,
                "must be a Secrets Manager reference, not a value (CodeBuild would show a value in "
                "PLAINTEXT)",
                hint=_REGISTRY_FORM,
            )
        value = secrets_manager_value(reference[len(SECRETS_PREFIX) :], input_name=input_name)
        env.append(EnvVar(name, value, "SECRETS_MANAGER"))
    if auth.server:
        server = auth.server.strip()
        if (
            not server
            or "/" in server
            or any(c.isspace() for c in server)
            or not REGISTRY_HOST.fullmatch(server)
        ):
            raise InputError(
                "registry-server",
                "must be a registry host name (with an optional :port)",
                hint="e.g. ghcr.io, docker.io, registry.example.com:5000",
            )
        env.append(EnvVar("REGISTRY_SERVER", server))
    return env


# --- batch builds ----------------------------------------------------------------------------------

# StartBuild parameters that StartBuildBatch names differently (botocore's codebuild model).
_BATCH_RENAMES: dict[str, str] = {
    "timeoutInMinutesOverride": "buildTimeoutInMinutesOverride",
    "reportBuildStatusOverride": "reportBuildBatchStatusOverride",
}
# StartBuild parameters with no StartBuildBatch counterpart.
_BUILD_ONLY = frozenset(
    {"buildStatusConfigOverride", "fleetOverride", "autoRetryLimitOverride", "hostKernelOverride"}
)


def start_build_batch_kwargs(start_build_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The StartBuildBatch call that carries the same overrides as a StartBuild call."""
    unsupported = sorted(set(start_build_kwargs) & _BUILD_ONLY)
    if unsupported:
        raise InputError(
            "batch",
            f"StartBuildBatch has no {', '.join(unsupported)} parameter",
            hint="remove it from the overrides, or build without batch",
        )
    return {_BATCH_RENAMES.get(key, key): value for key, value in start_build_kwargs.items()}


def _event_env(event: SourceEvent) -> list[EnvVar]:
    env = [EnvVar("BRIDGE_REPOSITORY", event.repository), EnvVar("BRIDGE_SHA", event.sha)]
    if event.ref:
        env.append(EnvVar("BRIDGE_REF", event.ref))
    env.append(EnvVar("BRIDGE_EVENT", event.kind))
    if event.pr_number is not None:
        env.append(EnvVar("BRIDGE_PR_NUMBER", str(event.pr_number)))
    return env


def _clone_env(event: SourceEvent, options: BuildOptions, grant: Grant) -> list[EnvVar]:
    """The clone URL and commit, and the clone token when the grant allows it (the packaged buildspec
    unsets it before any of the repository's code runs); without it a public project is cloned
    anonymously."""
    if options.source_type not in (None, "NO_SOURCE"):
        raise ConfigError(
            f"clone mode builds with NO_SOURCE; source type {options.source_type} contradicts it",
            key="source_type",
            hint="remove source_type, or use source_mode = 'native'",
        )
    ref = (options.clone_token_ref or "").strip()
    if not ref:
        raise ConfigError(
            "clone mode needs a clone token held in Secrets Manager",
            key="clone_token",
            hint="clone_token = 'secretsmanager:NAME_OR_ARN[#json-key]'",
        )
    if ref.startswith("env:"):
        raise ConfigError(
            "the clone token must be a Secrets Manager reference: CodeBuild would show an env: value in "
            "PLAINTEXT",
            key="clone_token",
            hint="clone_token = 'secretsmanager:NAME_OR_ARN[#json-key]'",
        )
    body = ref.removeprefix(SECRETS_PREFIX)
    token = secrets_manager_value(body, input_name="clone_token")
    env = [
        EnvVar("BRIDGE_CLONE_URL", options.source_location or grant.fetch_url),
        EnvVar("BRIDGE_COMMIT_SHA", options.source_version or grant.sha),
    ]
    if grant.clone_token:
        env.append(EnvVar("BRIDGE_CLONE_TOKEN", token, "SECRETS_MANAGER"))
    return env


def _merge_env(bridge: Iterable[EnvVar], user: Iterable[EnvVar], *, secrets: bool) -> list[EnvVar]:
    """The bridge's variables, then the user's; secret and parameter-store ones only when granted."""
    merged = list(bridge)
    owned = {v.name for v in merged}
    for var in user:
        if var.name in owned:
            raise InputError(
                "env-vars",
                f"{var.name} is set by bridge and cannot be overridden",
                hint="rename the variable",
            )
        if secrets or var.type == "PLAINTEXT":
            merged.append(var)
    return merged


def _add_environment_overrides(kwargs: dict[str, Any], options: BuildOptions, *, builds_image: bool) -> None:
    if options.build_image:
        kwargs["imageOverride"] = options.build_image
    if options.compute_type:
        kwargs["computeTypeOverride"] = options.compute_type
    if options.privileged_mode is not None:
        kwargs["privilegedModeOverride"] = options.privileged_mode
    elif builds_image:
        kwargs["privilegedModeOverride"] = True  # the Docker daemon in CodeBuild needs it
    if options.timeout_minutes is not None:
        minutes = options.timeout_minutes
        if isinstance(minutes, bool) or not _MIN_TIMEOUT <= minutes <= _MAX_TIMEOUT:
            raise InputError(
                "timeout-minutes",
                f"must be between {_MIN_TIMEOUT} and {_MAX_TIMEOUT}",
                hint="CodeBuild accepts 5 to 2160 minutes (36 hours)",
            )
        kwargs["timeoutInMinutesOverride"] = minutes


def idempotency_token(seed: str, kwargs: Mapping[str, Any]) -> str:
    """A UUID-shaped digest of the seed and every other kwarg.

    CodeBuild rejects a reused token with other parameters, so the request itself goes into the hash:
    two builds planned from one delivery (or one Action job) get different tokens, and a retry of the
    same request gets the same one. UUID-shaped because that is what the AWS SDKs send, so the length
    and alphabet are known to be accepted (botocore's model gives no bound).
    """
    body = {key: value for key, value in kwargs.items() if key != "idempotencyToken"}
    try:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise InputError(
            "overrides", "every override must be JSON-compatible", hint="use strings, numbers, lists and maps"
        ) from None
    digest = hashlib.sha256(f"{seed}\n{canonical}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))
