"""The CloudFormation stack stays in step with the code it deploys."""

from __future__ import annotations

from importlib.resources import files
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


def _template() -> dict[str, Any]:
    loaded = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(loaded, dict)
    return loaded


def test_project_default_buildspec_is_the_packaged_image_buildspec() -> None:
    packaged = files("bridge").joinpath("data/buildspec-image.yml").read_text()
    project = _template()["Resources"]["Project"]["Properties"]
    assert project["Source"]["BuildSpec"] == packaged


def test_action_role_grants_exactly_what_the_action_calls() -> None:
    statements = _template()["Resources"]["ActionRole"]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"
    ]
    actions = sorted(
        action
        for statement in statements
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    )
    assert actions == [
        "codebuild:BatchGetBuilds",
        "codebuild:StartBuild",
        "codebuild:StopBuild",
        "ecr:DescribeImages",
        "logs:GetLogEvents",
    ]
    assert all(statement["Resource"] != "*" for statement in statements)


def _actions(statements: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for entry in statements:
        # A conditional statement reads as {"If": [condition, statement, AWS::NoValue]}.
        statement = entry["If"][1] if "If" in entry else entry
        action = statement["Action"]
        found.extend(action if isinstance(action, list) else [action])
    return sorted(found)


def test_bridge_role_grants_only_what_the_server_calls() -> None:
    role = _template()["Resources"]["BridgeTaskRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    assert _actions(statements) == [
        "codebuild:BatchGetBuilds",
        "codebuild:StartBuild",
        "kms:Decrypt",  # only with SecretsKmsKeyArns
        "logs:GetLogEvents",
        "secretsmanager:GetSecretValue",
    ]


def test_project_role_reads_only_named_secrets_parameters_and_connection() -> None:
    role = _template()["Resources"]["ProjectServiceRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    conditional = {
        statement["If"][0]: statement["If"][1]["Resource"] for statement in statements if "If" in statement
    }
    assert conditional == {
        "HasBuildSecrets": {"Ref": "BuildSecretArns"},
        "HasBuildParameters": {"Ref": "BuildParameterArns"},
        "HasCodeConnection": {"Ref": "CodeConnectionArn"},
        "HasKmsKeys": {"Ref": "SecretsKmsKeyArns"},
    }
