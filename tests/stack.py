"""deploy/bridge.yaml as data: the CloudFormation template and the actions its roles allow.

Tests that hold the code to the stack (tests/test_deploy.py) and tests that run the code under the
stack's policy (the CodeBuild double's IAM gate) read the template the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "bridge.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form intrinsics (!Ref, !Sub, ...) as plain values."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    assert isinstance(node, yaml.MappingNode)
    return {suffix: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def template() -> dict[str, Any]:
    loaded = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(loaded, dict)
    return loaded


def actions(statements: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for entry in statements:
        # A conditional statement reads as {"If": [condition, statement, AWS::NoValue]}.
        statement = entry["If"][1] if "If" in entry else entry
        action = statement["Action"]
        found.extend(action if isinstance(action, list) else [action])
    return sorted(found)


def role_actions(role: str) -> list[str]:
    """Every action the role's inline policies allow (conditional statements included)."""
    properties = template()["Resources"][role]["Properties"]
    return sorted(
        action
        for policy in properties["Policies"]
        for action in actions(policy["PolicyDocument"]["Statement"])
    )


def bridge_codebuild_actions() -> list[str]:
    """What the webhook bridge's task role may call on CodeBuild."""
    return [action for action in role_actions("BridgeTaskRole") if action.startswith("codebuild:")]
