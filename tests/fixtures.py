"""Paths to the real published fixtures the tests read (installed by `npm ci --prefix tests`)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
NODE_MODULES = TESTS / "node_modules"
WEBHOOK_EXAMPLES = NODE_MODULES / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
GITHUB_OPENAPI = NODE_MODULES / "@octokit" / "openapi" / "generated" / "api.github.com.json"
GITLAB_PAYLOADS = TESTS / "payloads" / "gitlab"


@cache
def _examples_by_event() -> dict[str, list[dict[str, Any]]]:
    if not WEBHOOK_EXAMPLES.exists():
        raise RuntimeError(
            f"{WEBHOOK_EXAMPLES} is missing: run `npm ci --prefix tests` (scripts/test does it for you)"
        )
    entries = json.loads(WEBHOOK_EXAMPLES.read_text())
    return {entry["name"]: entry["examples"] for entry in entries}


def github_examples(event: str, action: str | None = None) -> list[dict[str, Any]]:
    """Every published example payload of one GitHub webhook event (optionally one action)."""
    examples = _examples_by_event()[event]
    if action is None:
        return list(examples)
    return [example for example in examples if example.get("action") == action]


def github_example(event: str, action: str | None = None, index: int = 0) -> dict[str, Any]:
    """One published example, deep-copied so a test may edit it."""
    return json.loads(json.dumps(github_examples(event, action)[index]))  # type: ignore[no-any-return]
