"""Where an image build's layer cache lives, and who may write it.

Every CodeBuild build starts on a fresh host, so a cache that should outlive the host lives in the
registry, next to the image: one cache ref per branch (`<repository>:buildcache-<branch slug>`), read
together with the default branch's (or a pull request's base branch's), so the first build of a new
branch starts warm. A fork's build reads the cache but never writes it: its Dockerfile is untrusted
code, and a layer it wrote would be reused by the trusted builds of the default branch.

The packaged buildspecs read the plan from environment variables (BRIDGE_CACHE, BRIDGE_CACHE_REF,
BRIDGE_CACHE_FALLBACK_REF, BRIDGE_CACHE_WRITE), so no value is ever spliced into buildspec text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, get_args

from bridge.errors import InputError
from bridge.model import CacheMode, EnvVar, SourceEvent

CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
CACHE_TAG_PREFIX = "buildcache-"
_UNSAFE = re.compile(r"[^a-z0-9]+")
_SLUG_LENGTH = 63
# CodeBuild's own cache: the docker daemon's layers kept on the build host for a while (best effort).
LOCAL_CACHE_OVERRIDE: dict[str, Any] = {"type": "LOCAL", "modes": ["LOCAL_DOCKER_LAYER_CACHE"]}


@dataclass(frozen=True)
class CachePlan:
    mode: CacheMode
    ref: str | None = None  # this branch's cache ref (read, and written when `write`)
    fallback_ref: str | None = None  # the default (or base) branch's cache ref, read only
    write: bool = False

    def env(self) -> list[EnvVar]:
        env = [EnvVar("BRIDGE_CACHE", self.mode)]
        if self.ref:
            env.append(EnvVar("BRIDGE_CACHE_REF", self.ref))
        if self.fallback_ref:
            env.append(EnvVar("BRIDGE_CACHE_FALLBACK_REF", self.fallback_ref))
        env.append(EnvVar("BRIDGE_CACHE_WRITE", "1" if self.write else "0"))
        return env

    def overrides(self) -> dict[str, Any]:
        """StartBuild parameters this cache needs (CodeBuild's local cache is a project setting)."""
        return {"cacheOverride": dict(LOCAL_CACHE_OVERRIDE)} if self.mode == "local" else {}


def parse_cache_mode(value: str, *, input_name: str = "cache") -> CacheMode:
    mode = value.strip().lower()
    if mode not in CACHE_MODES:
        raise InputError(
            input_name,
            f"unknown cache mode '{value.strip()}'",
            hint="registry (the default), inline, local or none",
        )
    return mode  # type: ignore[return-value]


def _slug(name: str) -> str:
    return _UNSAFE.sub("-", name.lower())[:_SLUG_LENGTH].strip("-")


def cache_tag(branch: str) -> str:
    """`buildcache-<slug>`: a valid tag for any branch name (lowercase, [a-z0-9-], bounded length)."""
    return CACHE_TAG_PREFIX + (_slug(branch) or "default")


def plan_cache(event: SourceEvent, repository: str, mode: CacheMode, *, write: bool) -> CachePlan:
    """The cache refs of one build. `write` is what the route or the trust decision grants; a fork
    never writes, whatever it says."""
    if mode in ("none", "local"):
        return CachePlan(mode)
    own_branch = event.branch if event.kind not in ("tag", "release") else None
    fallback_branch = event.base_branch or event.default_branch
    ref = f"{repository}:{cache_tag(own_branch)}" if own_branch else None
    fallback = f"{repository}:{cache_tag(fallback_branch)}" if fallback_branch else None
    if fallback == ref:
        fallback = None
    may_write = write and not event.is_fork and ref is not None
    return CachePlan(mode, ref=ref, fallback_ref=fallback, write=may_write)
