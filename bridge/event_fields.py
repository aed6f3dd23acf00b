"""Reading a webhook payload: every field through `Fields`, which turns a missing key or a wrong type
into a BadRequestError (HTTP 400) naming the key, never a KeyError or TypeError that would surface as
a 500 and make the provider retry forever; and the ref and SHA rules both providers share.
Used by bridge.events (GitHub, the Actions context) and bridge.gitlab_events."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import BadRequestError
from bridge.model import EventKind, Provider

__all__ = [
    "APPROVED_ACTION",
    "BRANCH_PREFIX",
    "COMMIT_SHA",
    "GITHUB_BUILD_ACTIONS",
    "GITLAB_BUILD_ACTIONS",
    "GITLAB_EVENT_HEADERS",
    "TAG_PREFIX",
    "ZERO_SHA",
    "Fields",
    "is_deleted_sha",
    "json_type",
    "provider_hint",
    "provider_label",
    "site_root",
    "split_ref",
]

# SHA-1 object ids, and SHA-256 ones for repositories created with --object-format=sha256.
COMMIT_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
ZERO_SHA = re.compile(r"0+")

BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"

GITHUB_BUILD_ACTIONS = frozenset({"opened", "synchronize", "reopened", "ready_for_review"})
GITLAB_BUILD_ACTIONS = frozenset({"open", "reopen"})

# GitLab names an event twice: X-Gitlab-Event ("Push Hook") and the body's object_kind ("push").
# Both are accepted wherever an event is named (the webhook header, `bridge plan --event`).
GITLAB_EVENT_HEADERS: dict[str, str] = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "note": "Note Hook",
    "issue": "Issue Hook",
    "pipeline": "Pipeline Hook",
    "build": "Job Hook",
    "job": "Job Hook",
    "deployment": "Deployment Hook",
    "release": "Release Hook",
    "wiki_page": "Wiki Page Hook",
}


# Not frozen, like the other two helpers here: a frozen dataclass sets each field through
# object.__setattr__, and a push delivery makes half a dozen of these, each read once.
@dataclass(slots=True)
class Fields:
    """A JSON object plus where it sits in the payload, so an error names the exact key."""

    data: Mapping[str, Any]
    path: str
    provider: Provider
    event: str

    @classmethod
    def root(cls, payload: object, provider: Provider, event: str) -> Fields:
        if not isinstance(payload, Mapping):
            raise BadRequestError(
                f"{provider_label(provider)} '{event}' payload must be a JSON object, "
                f"got {json_type(payload)}",
                hint=provider_hint(provider),
            )
        return cls(payload, "", provider, event)

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _bad(self, key: str, expected: str, value: object) -> BadRequestError:
        found = "nothing" if value is None and key not in self.data else json_type(value)
        return BadRequestError(
            f"{provider_label(self.provider)} '{self.event}' payload: '{self._where(key)}' "
            f"must be {expected}, got {found}",
            hint=provider_hint(self.provider),
        )

    def obj(self, key: str) -> Fields:
        value = self.data.get(key)
        if not isinstance(value, Mapping):
            raise self._bad(key, "an object", value)
        return Fields(value, self._where(key), self.provider, self.event)

    def maybe_obj(self, key: str) -> Fields | None:
        return None if self.data.get(key) is None else self.obj(key)

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not value:
            raise self._bad(key, "a non-empty string", value)
        return value

    def maybe_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        return self.text(key)

    def integer(self, key: str) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer", value)
        return value

    def flag(self, key: str) -> bool:
        """A boolean that is false when absent (GitHub and GitLab omit some on older versions)."""
        value = self.data.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def objects(self, key: str) -> list[Fields]:
        """A list of objects; absent counts as empty."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "a list", value)
        where = self._where(key)
        items: list[Fields] = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise BadRequestError(
                    f"{provider_label(self.provider)} '{self.event}' payload: '{where}[{index}]' "
                    f"must be an object, got {json_type(item)}",
                    hint=provider_hint(self.provider),
                )
            items.append(Fields(item, f"{where}[{index}]", self.provider, self.event))
        return items

    def sha(self, key: str) -> str:
        value = self.text(key)
        if not COMMIT_SHA.fullmatch(value):
            raise BadRequestError(
                f"{provider_label(self.provider)} '{self.event}' payload: '{self._where(key)}' must be a "
                "lowercase 40-hex-digit commit SHA",
                hint=provider_hint(self.provider),
            )
        return value


def provider_label(provider: Provider) -> str:
    return "GitHub" if provider == "github" else "GitLab"


def provider_hint(provider: Provider) -> str:
    if provider == "github":
        return (
            "deliver the body GitHub sent, unchanged, with content type application/json "
            "(repository Settings → Webhooks → Content type)"
        )
    return "deliver the body GitLab sent, unchanged; the field is part of every delivery of this event"


def json_type(value: object) -> str:
    """Names the JSON type found, never the value: payload text does not belong in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def is_deleted_sha(sha: str) -> bool:
    return bool(ZERO_SHA.fullmatch(sha))


def split_ref(ref: str) -> tuple[EventKind, str] | None:
    """refs/heads/x → ("push", "x"); refs/tags/v1 → ("tag", "v1"); anything else → None."""
    if ref.startswith(BRANCH_PREFIX) and len(ref) > len(BRANCH_PREFIX):
        return "push", ref.removeprefix(BRANCH_PREFIX)
    if ref.startswith(TAG_PREFIX) and len(ref) > len(TAG_PREFIX):
        return "tag", ref.removeprefix(TAG_PREFIX)
    return None


def site_root(web_url: str | None, path: str) -> str | None:
    """The instance URL: web_url minus the trailing project path, which keeps a relative URL root
    (https://host/gitlab) that scheme+host alone would lose."""
    if not web_url:
        return None
    parts = urlsplit(web_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    suffix = "/" + path.strip("/")
    trimmed = web_url.rstrip("/")
    if trimmed.lower().endswith(suffix.lower()):
        return trimmed[: -len(suffix)]
    return f"{parts.scheme}://{parts.netloc}"


APPROVED_ACTION = "approved"  # the action of a change event made from an approval
