"""Signing the pushed digest with cosign and an AWS KMS key (bridge.core.signing, the image buildspec).

cosign is not installed here and there is no KMS: the buildspec's command line is checked with the
recording fake tools of tests/test_plan.py, from the variables plan_build really sets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.action import read_inputs
from bridge.errors import InputError
from bridge.model import BuildOptions, SourceEvent
from bridge.plan import plan_build
from bridge.routing import build_options
from tests.test_config import GITHUB, parse, route
from tests.test_plan import GH_FORK_PR, GH_PUSH
from tests.test_plan import run_buildspec as run_with_fake_tools

REPO = "ghcr.io/o/r"
KEY = "awskms:///alias/image-signing"


def planned_env(event: SourceEvent = GH_PUSH, key: str | None = KEY) -> dict[str, str]:
    options = BuildOptions("p", image_repository=REPO, sign_key=key, cache="none")
    kwargs = plan_build(event, options, idempotency_seed="s").start_build_kwargs
    return {v["name"]: v["value"] for v in kwargs["environmentVariablesOverride"] if v["type"] == "PLAINTEXT"}


def test_the_pushed_digest_is_signed_with_the_kms_key(tmp_path: Path) -> None:
    env = planned_env()
    assert env["BRIDGE_SIGN_KEY"] == KEY
    calls, digest = run_with_fake_tools("buildspec-image.yml", tmp_path, {**env, "IMAGE_URI": f"{REPO}:1"})
    cosign = [c["args"] for c in calls if c["tool"] == "cosign"]
    assert cosign == [["sign", "--yes", "--key", KEY, f"{REPO}@{digest}"]]
    assert digest.startswith("sha256:")


def test_a_fork_build_never_signs() -> None:
    assert "BRIDGE_SIGN_KEY" not in planned_env(GH_FORK_PR)


def test_without_cosign_a_signing_build_fails_and_says_why(tmp_path: Path) -> None:
    env = {**planned_env(), "IMAGE_URI": f"{REPO}:1"}
    with pytest.raises(AssertionError, match="cosign is not installed"):
        run_with_fake_tools("buildspec-image.yml", tmp_path, env, tools=("docker", "aws", "git"))


@pytest.mark.parametrize(
    "key",
    [
        "awskms:///alias/image-signing",
        "awskms:///1234abcd-12ab-34cd-56ef-1234567890ab",
        "awskms:///arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ],
)
def test_the_sign_input_and_route_key_take_cosigns_kms_uris(key: str) -> None:
    assert read_inputs({"INPUT_PROJECT-NAME": "proj", "INPUT_SIGN": key}).options.sign_key == key
    config = parse(GITHUB + route(sign=key, image_repository=REPO))
    assert build_options(config.routes[0], GH_PUSH).sign_key == key


@pytest.mark.parametrize("key", ["alias/x", "awskms://alias/x", "awskms:///alias/x;rm -rf /", "-----BEGIN"])
def test_anything_else_is_refused(key: str) -> None:
    with pytest.raises(InputError, match="must name an AWS KMS key"):
        read_inputs({"INPUT_PROJECT-NAME": "proj", "INPUT_SIGN": key})
    with pytest.raises(Exception, match="sign"):
        parse(GITHUB + route(sign=key))


def test_the_action_outputs_what_was_attached() -> None:
    from bridge.action import outputs_for
    from bridge.model import BuildRequest
    from bridge.status import build_status

    record = {
        "id": "p:1",
        "buildStatus": "SUCCEEDED",
        "exportedEnvironmentVariables": [
            {"name": "BRIDGE_ATTESTED", "value": "SLSA provenance (mode=max), SBOM"}
        ],
    }
    status = build_status(record, region="eu-west-1")
    request = BuildRequest(start_build_kwargs={"projectName": "p"})
    assert outputs_for(record, status, request)["attestations"] == "SLSA provenance (mode=max), SBOM"
    assert outputs_for({**record, "exportedEnvironmentVariables": []}, status, request)["attestations"] == ""
