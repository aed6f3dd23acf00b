"""The CloudFormation stack stays in step with the code it deploys."""

from __future__ import annotations

from importlib.resources import files

from tests import stack


def test_project_default_buildspec_is_the_packaged_image_buildspec() -> None:
    packaged = files("bridge").joinpath("data/buildspec-image.yml").read_text()
    project = stack.template()["Resources"]["Project"]["Properties"]
    assert project["Source"]["BuildSpec"] == packaged


def test_action_role_grants_exactly_what_the_action_calls() -> None:
    statements = stack.template()["Resources"]["ActionRole"]["Properties"]["Policies"][0]["PolicyDocument"][
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


def test_bridge_role_grants_only_what_the_server_calls() -> None:
    role = stack.template()["Resources"]["BridgeTaskRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    assert stack.actions(statements) == [
        "codebuild:BatchGetBuilds",
        "codebuild:ListBuildsForProject",
        "codebuild:StartBuild",
        "kms:Decrypt",  # only with SecretsKmsKeyArns
        "logs:GetLogEvents",
        "secretsmanager:GetSecretValue",
    ]


def test_project_role_reads_only_named_secrets_parameters_and_connection() -> None:
    role = stack.template()["Resources"]["ProjectServiceRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    conditional = {
        statement["If"][0]: statement["If"][1]["Resource"] for statement in statements if "If" in statement
    }
    assert conditional == {
        "HasBuildSecrets": {"Ref": "BuildSecretArns"},
        "HasBuildParameters": {"Ref": "BuildParameterArns"},
        "HasCodeConnection": {"Ref": "CodeConnectionArn"},
        "HasKmsKeys": {"Ref": "SecretsKmsKeyArns"},
        "HasSigningKeys": {"Ref": "SigningKeyArns"},
    }
    signing = next(st["If"][1] for st in statements if "If" in st and st["If"][0] == "HasSigningKeys")
    assert sorted(signing["Action"]) == ["kms:DescribeKey", "kms:GetPublicKey", "kms:Sign"]
