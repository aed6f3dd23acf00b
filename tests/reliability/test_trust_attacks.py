"""Issue 19's attacks, sent as an attacker would: signed (or tokened) deliveries over HTTP to a real
`bridge serve` process (tests/reliability/served.py), builds counted by the CodeBuild double. Each
starts no build, or a build with nothing trusted in it. Every case failed before bridge.core.trust and
routing.unbound.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest

from tests.e2e.support import (
    Delivery,
    github_delivery,
    github_payload,
    gitlab_delivery,
    gitlab_payload,
)
from tests.reliability.served import ServedFactory
from tests.signing import new_standard_webhook_secret, standard_webhook_headers

pytestmark = pytest.mark.e2e

IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web"
SECRET_ENV = 'env = { NPM_TOKEN = "secretsmanager:ci/npm#token", MODE = "ci" }'


def _env(params: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {v["name"]: (v["value"], v["type"]) for v in params.get("environmentVariablesOverride", [])}


# -- item 1: a delivery builds only the repository it names, at its real URL ------------------------------


def test_a_gitlab_push_naming_a_routed_project_but_cloning_another_builds_nothing(
    served_factory: ServedFactory,
) -> None:
    rig = served_factory()
    payload = gitlab_payload("push")  # mike/diaspora, routed by routes[diaspora]
    payload["project"]["git_http_url"] = "http://example.com/mallory/other.git"
    payload["repository"]["git_http_url"] = "http://example.com/mallory/other.git"

    status, body = rig.send(gitlab_delivery(payload))

    assert status == 200  # a valid token: never a 4xx, or GitLab disables the hook
    assert "a delivery builds only the repository it names" in body["ignored"]
    assert rig.builds_started() == 0


def test_a_github_push_naming_a_routed_repository_but_cloning_another_builds_nothing(
    served_factory: ServedFactory,
) -> None:
    rig = served_factory()
    payload = github_payload("push", None, 4)  # Codertocat/Hello-World, routes[hello]
    payload["repository"]["clone_url"] = "https://github.com/mallory/other.git"

    status, _ = rig.send(github_delivery("push", payload))

    assert status == 200
    assert rig.builds_started() == 0


def test_a_same_project_merge_request_from_another_project_builds_nothing(
    served_factory: ServedFactory,
) -> None:
    """Not marked as a fork (same project ids), but its source is another project's path and URL."""
    rig = served_factory()
    payload = gitlab_payload("merge_request_open")
    source = payload["object_attributes"]["source"]
    source["path_with_namespace"] = "mallory/other"
    source["git_http_url"] = "http://example.com/mallory/other.git"

    status, body = rig.send(gitlab_delivery(payload))

    assert status == 200
    assert "not marked as a fork" in body["ignored"]
    assert rig.builds_started() == 0


def _scoped_gitlab(text: str) -> str:
    """The GitLab token verifies deliveries of group mike/ only."""
    return text.replace(
        'webhook_tokens = ["env:GITLAB_WEBHOOK_TOKEN"]',
        'webhook_tokens = [{ secret = "env:GITLAB_WEBHOOK_TOKEN", repositories = ["lowtrust/*"] }]',
    )


def test_a_token_scoped_to_other_projects_builds_nothing_and_is_answered_200(
    served_factory: ServedFactory,
) -> None:
    rig = served_factory(edit=_scoped_gitlab)

    status, body = rig.send(
        gitlab_delivery(gitlab_payload("push"))
    )  # mike/diaspora: out of the token's scope

    assert status == 200
    assert "scoped to other repositories" in body["ignored"]
    assert rig.builds_started() == 0


def test_a_token_scoped_to_the_project_still_builds_it(served_factory: ServedFactory) -> None:
    rig = served_factory(edit=lambda text: _scoped_gitlab(text).replace('["lowtrust/*"]', '["mike/*"]'))

    assert rig.send(gitlab_delivery(gitlab_payload("push")))[0] == 202
    assert rig.builds_started() == 1


# -- item 2: a fork never pushes to the trusted image repository --------------------------------------------


def test_a_fork_branch_named_like_the_base_cannot_overwrite_the_trusted_tag(
    served_factory: ServedFactory,
) -> None:
    route = f'forks = "without-secrets"\nimage_repository = "{IMAGE}"\nimage_tag = "{{branch}}"\n{SECRET_ENV}'
    rig = served_factory(github_route_extra=route)
    payload = github_payload("pull_request", "opened", 1)
    head = payload["pull_request"]["head"]
    head["ref"] = payload["pull_request"]["base"]["ref"]  # the fork's branch is called master too
    head["repo"].update(
        full_name="mallory/Hello-World", clone_url="https://github.com/mallory/Hello-World.git", fork=True
    )

    assert rig.send(github_delivery("pull_request", payload))[0] == 202

    (params,) = rig.start_build_params(1)
    env = _env(params)
    assert "IMAGE_URI" not in env
    assert env["BRIDGE_PUSH"] == ("false", "PLAINTEXT")
    assert IMAGE not in json.dumps(params)
    assert {name for name, (_, kind) in env.items() if kind != "PLAINTEXT"} == set()


DEPLOY_ROLE = "arn:aws:iam::123456789012:role/deploy"
TRUSTED_OVERRIDES = (
    f'overrides = {{ serviceRoleOverride = "{DEPLOY_ROLE}", '
    'cacheOverride = { type = "S3", location = "trusted-cache/web" }, '
    'artifactsOverride = { type = "S3", location = "releases", name = "web.zip" }, '
    "queuedTimeoutInMinutesOverride = 30 }"
)


def test_a_fork_gets_none_of_the_routes_trusted_overrides(served_factory: ServedFactory) -> None:
    """The route's `overrides` pass StartBuild parameters as is: a fork's build must not run under the
    route's (deploy) role, write its S3 cache or its release artifacts through them."""
    rig = served_factory(github_route_extra=f'forks = "without-secrets"\n{TRUSTED_OVERRIDES}')
    payload = github_payload("pull_request", "opened", 1)
    payload["pull_request"]["head"]["repo"].update(
        full_name="mallory/Hello-World", clone_url="https://github.com/mallory/Hello-World.git", fork=True
    )

    assert rig.send(github_delivery("pull_request", payload))[0] == 202

    (params,) = rig.start_build_params(1)
    for name in ("serviceRoleOverride", "cacheOverride", "artifactsOverride"):
        assert name not in params
    assert DEPLOY_ROLE not in json.dumps(params)
    assert params["queuedTimeoutInMinutesOverride"] == 30  # what trusts nothing still passes


def test_the_repositorys_own_code_gets_the_routes_overrides(served_factory: ServedFactory) -> None:
    rig = served_factory(github_route_extra=TRUSTED_OVERRIDES)

    assert rig.send(github_delivery("push", github_payload("push", None, 4)))[0] == 202

    (params,) = rig.start_build_params(1)
    assert params["serviceRoleOverride"] == DEPLOY_ROLE
    assert params["cacheOverride"] == {"type": "S3", "location": "trusted-cache/web"}
    assert params["artifactsOverride"]["location"] == "releases"


# -- item 4: no clone token for an unapproved fork --------------------------------------------------------


def _gitlab_clone_forks(text: str) -> str:
    return text.replace(
        'forks = "never"\n',
        'forks = "without-secrets"\nsource_mode = "clone"\n'
        'clone_token = "secretsmanager:ci/gitlab-clone#token"\n'
        f'image_repository = "{IMAGE}"\n',
    )


def test_a_fork_merge_request_gets_no_clone_token(served_factory: ServedFactory) -> None:
    rig = served_factory(edit=_gitlab_clone_forks)

    assert rig.send(gitlab_delivery(gitlab_payload("merge_request_fork_open")))[0] == 202

    (params,) = rig.start_build_params(1)
    env = _env(params)
    assert "BRIDGE_CLONE_TOKEN" not in env
    assert env["BRIDGE_CLONE_URL"] == ("http://example.com/contributor/awesome_project.git", "PLAINTEXT")
    assert "IMAGE_URI" not in env


def test_a_private_fork_merge_request_says_why_it_cannot_build(served_factory: ServedFactory) -> None:
    rig = served_factory(edit=_gitlab_clone_forks)
    payload = gitlab_payload("merge_request_fork_open")
    payload["object_attributes"]["source"]["visibility_level"] = 0

    status, body = rig.send(gitlab_delivery(payload))

    assert status == 200
    assert "private repository" in body["ignored"]
    assert rig.builds_started() == 0


# -- item 6: replays ------------------------------------------------------------------------------------


def test_a_gitlab_delivery_cannot_make_a_github_delivery_a_duplicate(served_factory: ServedFactory) -> None:
    rig = served_factory()
    shared = str(uuid.uuid4())

    assert rig.send(gitlab_delivery(gitlab_payload("push"), idempotency_key=shared))[0] == 202
    github = rig.send(github_delivery("push", github_payload("push", None, 4), delivery_id=shared))

    assert github[0] == 202, github[1]
    assert rig.builds_started() == 2


def test_an_unsigned_idempotency_key_cannot_suppress_a_signed_delivery(served_factory: ServedFactory) -> None:
    """The attacker replays a captured signed body with the Idempotency-Key of the next delivery."""
    signing = new_standard_webhook_secret()
    rig = served_factory(signing_secret=signing)
    first = gitlab_payload("push")
    second = gitlab_payload("push")
    second["after"] = second["checkout_sha"] = "f" * 40
    key = str(uuid.uuid4())

    def signed(payload: dict[str, Any]) -> Delivery:
        delivery = gitlab_delivery(payload, idempotency_key=key)
        stamp = standard_webhook_headers(delivery.body, signing, f"msg_{uuid.uuid4().hex}", int(time.time()))
        return replace(delivery, headers={**delivery.headers, **stamp})

    assert rig.send(signed(first))[0] == 202
    assert rig.send(signed(second))[0] == 202
    assert rig.builds_started() == 2


# -- item 9: answers to unauthenticated callers name no secret ---------------------------------------------


MISSING = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/hooks-AbCdEf#github_key"


def test_an_unauthenticated_caller_learns_no_secret_name_from_a_503_or_readyz(
    served_factory: ServedFactory,
) -> None:
    """A webhook secret's ARN that Secrets Manager (moto) does not hold: deliveries get 503 until it does."""
    rig = served_factory(
        edit=lambda text: text.replace('"env:GITHUB_OLD_WEBHOOK_SECRET"', f'"secretsmanager:{MISSING}"'),
        ready_path="/healthz",  # its /readyz fails until the secret exists
    )
    forged = github_delivery("push", github_payload("push", None, 4), secret="not-the-secret")

    status, answer = rig.send(forged)
    ready, ready_body = rig.get("/readyz")

    assert status == 503
    assert ready == 503
    for body in (json.dumps(answer), ready_body):
        for leak in ("prod/hooks", "123456789012", "github_key", "arn:aws", "GITHUB_OLD_WEBHOOK_SECRET"):
            assert leak not in body
