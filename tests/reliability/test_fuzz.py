"""Fuzzing both webhook endpoints: never a 5xx, never a build without a valid signature.

Bodies are arbitrary bytes, arbitrary JSON, or real published payloads with fields replaced by
arbitrary JSON values (which is what reaches the parsers past the signature check). Headers mix
valid and invalid events, delivery ids, content types and signatures. After every request the
worker drains what was persisted, so "no build" is checked where it would happen: at CodeBuild.

CI runs BRIDGE_FUZZ_EXAMPLES (default 300) per endpoint; `python bench/fuzz_long.py` runs 10,000.
With BRIDGE_FUZZ_REPORT set to a file, each test appends what it saw there as one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.support import GITHUB_SECRET, GITLAB_WEBHOOK_TOKEN, github_payload, gitlab_payload
from tests.reliability.rig import Rig
from tests.signing import github_signature

EXAMPLES = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "300"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Weighted towards what passes the early checks, so most examples reach the parsers and routing.
CONTENT_TYPES = st.sampled_from(
    ["application/json"] * 4
    + ["application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", ""]
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _set(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        document = document[step]
    document[path[-1]] = value


def mutated(bases: list[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """A real payload with up to four fields (at any depth) replaced by arbitrary JSON."""

    @st.composite
    def build(draw: Callable[..., Any]) -> bytes:
        document = json.loads(json.dumps(draw(st.sampled_from(bases))))
        paths = _paths(document)
        for _ in range(draw(st.integers(0, 4))):
            path = draw(st.sampled_from(paths))
            with contextlib.suppress(KeyError, IndexError, TypeError):  # removed by an earlier replacement
                _set(document, path, draw(JSON_VALUES))
        return json.dumps(document).encode()

    return build()


GITHUB_BASES = [
    github_payload("push", None, 4),
    github_payload("pull_request", "opened", 1),
    github_payload("pull_request", "synchronize"),
    github_payload("check_suite", "rerequested"),
    github_payload("release", "published"),
]
GITLAB_BASES = [gitlab_payload(name) for name in ("push", "tag_push", "merge_request_open")]

BODIES = {
    "github": st.one_of(
        st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode()), mutated(GITHUB_BASES)
    ),
    "gitlab": st.one_of(
        st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode()), mutated(GITLAB_BASES)
    ),
}


def _report(name: str, seen: Counter[str]) -> None:
    target = os.environ.get("BRIDGE_FUZZ_REPORT")
    if target:
        with Path(target).open("a") as out:
            out.write(json.dumps({"test": name, "examples": EXAMPLES, **seen}) + "\n")


def test_fuzz_github_endpoint(rig: Rig) -> None:
    seen: Counter[str] = Counter()

    @FUZZ_SETTINGS
    @given(
        body=BODIES["github"],
        event=st.sampled_from(["push", "pull_request", "check_suite", "check_run", "release", "ping"] * 3)
        | HEADER_TEXT,
        delivery=st.uuids().map(str) | HEADER_TEXT,
        signature=st.sampled_from(["valid"] * 4 + ["missing", "wrong-secret", "other-body", "garbage"]),
        garbage=HEADER_TEXT,
        content_type=CONTENT_TYPES,
    )
    def check(
        body: bytes, event: str, delivery: str, signature: str, garbage: str, content_type: str
    ) -> None:
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": content_type}
        if signature == "valid":
            headers["X-Hub-Signature-256"] = github_signature(body, GITHUB_SECRET)
        elif signature == "wrong-secret":
            headers["X-Hub-Signature-256"] = github_signature(body, "not-the-secret")
        elif signature == "other-body":
            headers["X-Hub-Signature-256"] = github_signature(body + b" ", GITHUB_SECRET)
        elif signature == "garbage":
            headers["X-Hub-Signature-256"] = garbage
        before = rig.builds_started()

        response = rig.client.post("/webhooks/github", data=body, headers=headers)

        assert response.status_code < 500, response.get_data(as_text=True)
        built = rig.builds_started() - before
        if signature != "valid":
            assert response.status_code == 401
            assert built == 0
        assert built <= 1
        assert built == 0 or response.status_code == 202
        seen[f"status_{response.status_code}"] += 1
        seen["builds"] += built

    check()
    _report("github", seen)
    assert sum(count for key, count in seen.items() if key.startswith("status_")) >= min(EXAMPLES, 50)


def test_fuzz_gitlab_endpoint(rig: Rig) -> None:
    seen: Counter[str] = Counter()

    @FUZZ_SETTINGS
    @given(
        body=BODIES["gitlab"],
        event=st.sampled_from(["Push Hook", "Tag Push Hook", "Merge Request Hook", "Pipeline Hook"])
        | HEADER_TEXT,
        token=st.sampled_from(["valid"] * 3 + ["missing", "wrong"]),
        wrong=HEADER_TEXT,
        idempotency_key=st.none() | HEADER_TEXT,
        content_type=CONTENT_TYPES,
    )
    def check(
        body: bytes, event: str, token: str, wrong: str, idempotency_key: str | None, content_type: str
    ) -> None:
        headers = {"X-Gitlab-Event": event, "Content-Type": content_type}
        if token == "valid":
            headers["X-Gitlab-Token"] = GITLAB_WEBHOOK_TOKEN
        elif token == "wrong" and wrong != GITLAB_WEBHOOK_TOKEN:
            headers["X-Gitlab-Token"] = wrong
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        before = rig.builds_started()

        response = rig.client.post("/webhooks/gitlab", data=body, headers=headers)

        assert response.status_code < 500, response.get_data(as_text=True)
        built = rig.builds_started() - before
        if token != "valid":
            assert response.status_code == 401
            assert built == 0
        assert built <= 1
        assert built == 0 or response.status_code == 202
        seen[f"status_{response.status_code}"] += 1
        seen["builds"] += built

    check()
    _report("gitlab", seen)
    assert sum(count for key, count in seen.items() if key.startswith("status_")) >= min(EXAMPLES, 50)
