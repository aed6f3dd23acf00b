"""Image references: a repository and a tag template (`{sha}`, `{branch}`, `{pr}`...) → a checked
`host/path:tag`, so a bad name fails at planning with the form it should have, not in the build."""

from __future__ import annotations

import re
import string

from bridge.errors import InputError
from bridge.model import SourceEvent

__all__ = ["REGISTRY_HOST", "compose_image_uri", "render_image_tag"]

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
REGISTRY_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::\d{{1,5}})?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ECR_HOST = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(?:\.cn)?"
)
_MAX_NAME_LENGTH = 255  # the distribution spec's practical limit on host + path
_REPOSITORY_FORM = (
    "REGISTRY_HOST/path, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/my-app, ghcr.io/owner/app "
    "or registry.example.com:5000/team/app (lowercase path, no tag: use image-tag for that)"
)
_TAG_FORM = "1-128 characters of A-Z a-z 0-9 _ . - not starting with . or -"


def compose_image_uri(repository: str, tag: str, *, input_name: str = "image-repository") -> str:
    """Validate a repository and a tag and join them, so a typo fails before a build is paid for."""
    repository = repository.strip()
    if "://" in repository:
        raise InputError(input_name, "must not include a URL scheme", hint=_REPOSITORY_FORM)
    if "@" in repository:
        raise InputError(
            input_name,
            "already contains a digest: give the repository only",
            hint="use image-tag for the tag",
        )
    host, sep, path = repository.partition("/")
    if ":" in path:
        raise InputError(
            input_name, "already contains a tag: give the repository only", hint="use image-tag for the tag"
        )
    if (
        not sep
        or not REGISTRY_HOST.fullmatch(host)
        or ("." not in host and ":" not in host and host != "localhost")
    ):
        raise InputError(input_name, "must start with a registry host", hint=_REPOSITORY_FORM)
    lowered = host.lower()
    looks_like_ecr = lowered.endswith((".amazonaws.com", ".amazonaws.com.cn")) and ".dkr.ecr" in lowered
    if looks_like_ecr and not _ECR_HOST.fullmatch(host):
        raise InputError(
            input_name,
            "is not a valid ECR registry host",
            hint="ACCOUNT_ID(12 digits).dkr.ecr.REGION.amazonaws.com/repository",
        )
    if not all(_PATH_COMPONENT.fullmatch(component) for component in path.split("/")):
        raise InputError(
            input_name,
            "has an invalid repository path: lowercase letters, digits and single . _ __ - separators "
            "between /-separated components",
            hint=_REPOSITORY_FORM,
        )
    if len(repository) > _MAX_NAME_LENGTH:
        raise InputError(input_name, f"is longer than {_MAX_NAME_LENGTH} characters", hint=_REPOSITORY_FORM)
    if not _TAG.fullmatch(tag):
        raise InputError("image-tag", "is not a valid image tag", hint=_TAG_FORM)
    return f"{repository}:{tag}"


_TAG_PLACEHOLDERS = ("sha", "short_sha", "branch", "tag", "pr", "ref_slug")
_UNSAFE_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_UNSAFE_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
_SLUG_LENGTH = 63


def render_image_tag(template: str | None, event: SourceEvent) -> str:
    """Fill an image-tag template from the event. Values are sanitized so any ref name fits a tag."""
    if not template:
        return event.sha
    hint = "placeholders: " + " ".join(f"{{{name}}}" for name in _TAG_PLACEHOLDERS)
    values = _placeholder_values(event)
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        raise InputError("image-tag", "has unbalanced braces", hint=hint) from None
    for literal, field, spec, conversion in parsed:
        out.append(literal)
        if field is None:
            continue
        if field not in values or spec or conversion:
            raise InputError("image-tag", f"unknown placeholder {{{field}}}", hint=hint)
        value = values[field]
        if value is None:
            raise InputError(
                "image-tag",
                f"placeholder {{{field}}} has no value for a {event.kind} event",
                hint="use {ref_slug} or {short_sha}, which always have a value",
            )
        out.append(value)
    rendered = "".join(out)
    if not _TAG.fullmatch(rendered):
        raise InputError("image-tag", "does not render to a valid image tag", hint=_TAG_FORM)
    return rendered


def _placeholder_values(event: SourceEvent) -> dict[str, str | None]:
    def sanitize(value: str | None) -> str | None:
        return _UNSAFE_TAG_CHARS.sub("-", value) if value else None

    return {
        "sha": event.sha,
        "short_sha": event.short_sha,
        "branch": sanitize(event.branch),
        "tag": sanitize(event.tag),
        "pr": str(event.pr_number) if event.pr_number is not None else None,
        "ref_slug": _ref_slug(event),
    }


def _ref_slug(event: SourceEvent) -> str:
    """Like GitLab's CI_COMMIT_REF_SLUG: lowercase, [a-z0-9-], at most 63 characters, never empty."""
    name = event.tag or event.branch or (event.ref.rsplit("/", 1)[-1] if event.ref else "") or event.sha
    slug = _UNSAFE_SLUG_CHARS.sub("-", name.lower())[:_SLUG_LENGTH].strip("-")
    return slug or event.short_sha
