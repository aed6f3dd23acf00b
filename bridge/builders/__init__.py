"""Build backends, by name. `base.Builder` is the interface; this module is the registry.

A route (or the Action) names its builder; `create` makes it from the loaded config and
`capabilities` tells the config loader, before anything runs, what that builder can honour. The
registry is a plain dict so a third builder is one `register(BuilderSpec(...))` away (see
docs/local-builder.md, "Adding a third builder"). Factories import their module lazily: naming
`local` must not import boto3, and naming `codebuild` must not look for buildah.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.builders.base import Builder, Capabilities
from bridge.errors import ConfigError

if TYPE_CHECKING:
    from bridge.config import Config

__all__ = [
    "BuilderSpec",
    "Capabilities",
    "capabilities",
    "create",
    "names",
    "register",
    "spec",
    "unregister",
]


@dataclass(frozen=True)
class BuilderSpec:
    name: str  # what `builder = "..."` names in a route
    capabilities: Capabilities
    factory: Callable[[Config], Builder]
    # Build ids this builder hands out start with this; the worker routes each tracked build to the
    # builder that owns it. None: ids of the form CodeBuild uses (the default builder's).
    id_prefix: str | None = None


def _codebuild(config: Config) -> Builder:
    from bridge.services import LazyCodeBuild

    return LazyCodeBuild(config.aws.region)


def _local(config: Config) -> Builder:
    from bridge.builders.local import LocalBuilder

    return LocalBuilder.from_settings(config.local_builder)


CODEBUILD_CAPABILITIES = Capabilities(
    runs_on_bridge_host=False,
    buildspec=True,
    secret_variables=True,
    pushes_images=True,
    stop=True,
    batch=True,
)
# bridge.builders.local uses these; kept here so naming a builder imports nothing heavy.
LOCAL_CAPABILITIES = Capabilities(
    runs_on_bridge_host=True,
    buildspec=False,
    secret_variables=False,
    pushes_images=True,
    stop=True,
    batch=False,
)

_REGISTRY: dict[str, BuilderSpec] = {
    "codebuild": BuilderSpec("codebuild", CODEBUILD_CAPABILITIES, _codebuild),
    "local": BuilderSpec("local", LOCAL_CAPABILITIES, _local, id_prefix="local:"),
}


def register(builder: BuilderSpec) -> None:
    """Add a builder (a plug-in calls this at import). Names are unique: replacing one is a bug."""
    if builder.name in _REGISTRY:
        raise ValueError(f"a builder named {builder.name!r} is already registered")
    _REGISTRY[builder.name] = builder


def unregister(name: str) -> None:
    """Remove a plug-in's builder (its tests clean up with this); the built-in ones stay."""
    if name in ("codebuild", "local"):
        raise ValueError(f"the built-in builder {name!r} cannot be removed")
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def spec(name: str) -> BuilderSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"no builder named {name!r}",
            key="builder",
            hint=f"builders: {', '.join(_REGISTRY)}",
        ) from None


def capabilities(name: str) -> Capabilities:
    return spec(name).capabilities


def create(name: str, config: Config) -> Builder:
    """The named builder, made from the config (a disabled or unusable one raises ConfigError)."""
    return spec(name).factory(config)
