"""Which CodeBuild hosts build which image platforms: natively, never under emulation.

One platform is one build on the matching compute: linux/arm64 runs on ARM_CONTAINER with an aarch64
curated image. Two platforms are a batch (the packaged buildspec-multiarch.yml): one native build per
platform, each pushing its image by digest (exported as IMAGE_DIGEST), then a merge build that reads
those digests from its sibling builds, makes the multi-platform index under the tag itself and exports
the index's digest.
"""

from __future__ import annotations

import re

from bridge.errors import InputError

SUPPORTED = ("linux/amd64", "linux/arm64")
ARM_IMAGE = "aws/codebuild/amazonlinux-aarch64-standard:3.0"
PLATFORMS_HINT = "linux/amd64, linux/arm64 or both (comma-separated); each is built natively"


def parse_platforms(
    value: str | list[str] | tuple[str, ...], *, input_name: str = "platforms"
) -> tuple[str, ...]:
    items = re.split(r"[,\s]+", value) if isinstance(value, str) else list(value)
    platforms: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item not in SUPPORTED:
            raise InputError(input_name, f"unsupported platform '{item}'", hint=PLATFORMS_HINT)
        if item not in platforms:
            platforms.append(item)
    return tuple(sorted(platforms))


def is_multi(platforms: tuple[str, ...]) -> bool:
    return len(platforms) > 1


def native_overrides(platforms: tuple[str, ...], build_image: str | None) -> dict[str, str]:
    """StartBuild overrides for a single-platform build on the platform's own hardware."""
    if platforms == ("linux/arm64",):
        return {"environmentTypeOverride": "ARM_CONTAINER", "imageOverride": build_image or ARM_IMAGE}
    return {}
