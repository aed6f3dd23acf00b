"""The CodeBuild double itself: it must refuse what CodeBuild refuses, or tests built on it prove nothing."""

from __future__ import annotations

import json
from typing import Any

import boto3
import botocore.session
import cbor2
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.parsers import JSONParser, RpcV2CBORParser

from tests.fakes.codebuild_double import CodeBuildDouble, Scenario, codebuild_client

MODEL = botocore.session.get_session().get_service_model("codebuild")


def call(
    double_url: str, protocol: str, operation: str, params: Any, *, sign: bool = True
) -> requests.Response:
    """One raw CodeBuild request, signed with SigV4 like an SDK would, bypassing botocore's own checks."""
    if protocol == "cbor":
        url = f"{double_url}/service/CodeBuild_20161006/operation/{operation}"
        headers = {
            "Content-Type": "application/cbor",
            "smithy-protocol": "rpc-v2-cbor",
            "Accept": "application/cbor",
        }
        body = cbor2.dumps(params)
    else:
        url = f"{double_url}/"
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"CodeBuild_20161006.{operation}",
        }
        body = json.dumps(params).encode()
    aws_request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    if sign:
        SigV4Auth(Credentials("testing", "testing"), "codebuild", "eu-west-1").add_auth(aws_request)
    return requests.post(url, data=body, headers=dict(aws_request.headers.items()), timeout=10)


def parse(protocol: str, operation: str, response: requests.Response) -> dict[str, Any]:
    """Read the answer with botocore's own parsers, as a real client would."""
    parser = RpcV2CBORParser() if protocol == "cbor" else JSONParser()
    shape = MODEL.operation_model(operation).output_shape
    assert shape is not None
    parsed: dict[str, Any] = parser.parse(
        {"body": response.content, "headers": dict(response.headers), "status_code": response.status_code},
        shape,
    )
    return parsed


PROTOCOLS = ["json", "cbor"]

INVALID = [
    ("StartBuild", {}, "projectName"),
    ("StartBuild", {"projectName": "app", "bogusOverride": 1}, "bogusOverride"),
    ("StartBuild", {"projectName": "app", "timeoutInMinutesOverride": "thirty"}, "timeoutInMinutesOverride"),
    (
        "StartBuild",
        {"projectName": "app", "computeTypeOverride": "BUILD_GENERAL1_HUGE"},
        "computeTypeOverride",
    ),
    ("StartBuild", {"projectName": "app", "sourceTypeOverride": "SVN"}, "sourceTypeOverride"),
    ("StartBuild", {"projectName": "app", "environmentVariablesOverride": [{"name": "X"}]}, "value"),
    (
        "StartBuild",
        {
            "projectName": "app",
            "environmentVariablesOverride": [{"name": "X", "value": "v", "type": "VAULT"}],
        },
        "type",
    ),
    ("StartBuild", {"projectName": "app", "privilegedModeOverride": "yes"}, "privilegedModeOverride"),
    ("BatchGetBuilds", {"ids": []}, "ids"),
    ("BatchGetBuilds", {"ids": [f"app:{i}" for i in range(101)]}, "at most 100"),
    ("BatchGetBuilds", {}, "ids"),
    ("StopBuild", {"id": 5}, "id"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("operation", "params", "named"), INVALID)
def test_invalid_requests_are_refused_and_recorded(
    protocol: str, operation: str, params: dict[str, Any], named: str, codebuild_double: CodeBuildDouble
) -> None:
    response = call(codebuild_double.url, protocol, operation, params)

    assert response.status_code == 400
    error = parse(protocol, operation, response)["Error"]
    assert error["Code"] == "InvalidInputException"
    assert named in error["Message"]
    [recorded] = codebuild_double.requests
    assert (recorded.operation, recorded.params, recorded.error_code, recorded.protocol) == (
        operation,
        params,
        "InvalidInputException",
        protocol,
    )
    if operation == "StartBuild":
        assert codebuild_double.calls("BatchGetBuilds") == []
        response = call(codebuild_double.url, protocol, "BatchGetBuilds", {"ids": ["app:none"]})
        assert parse(protocol, "BatchGetBuilds", response)["builds"] == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_valid_requests_get_model_shaped_answers_in_either_protocol(
    protocol: str, codebuild_double: CodeBuildDouble
) -> None:
    started = parse(
        protocol, "StartBuild", call(codebuild_double.url, protocol, "StartBuild", {"projectName": "app"})
    )
    build_id = started["build"]["id"]
    polled = parse(
        protocol,
        "BatchGetBuilds",
        call(codebuild_double.url, protocol, "BatchGetBuilds", {"ids": [build_id]}),
    )

    assert started["build"]["currentPhase"] == "SUBMITTED"
    assert polled["builds"][0]["currentPhase"] == "QUEUED"
    assert polled["builds"][0]["startTime"] == started["build"]["startTime"]  # a timestamp both ways
    assert started["build"]["startTime"].year >= 2024


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unsigned_requests_are_refused(protocol: str, codebuild_double: CodeBuildDouble) -> None:
    response = call(codebuild_double.url, protocol, "StartBuild", {"projectName": "app"}, sign=False)
    assert response.status_code == 403
    assert codebuild_double.requests[0].error_code == "MissingAuthenticationTokenException"


def test_unparseable_bodies_and_unknown_operations_are_refused(codebuild_double: CodeBuildDouble) -> None:
    garbage = requests.post(
        f"{codebuild_double.url}/",
        data=b"{not json",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "CodeBuild_20161006.StartBuild",
        },
        timeout=10,
    )
    unknown = call(codebuild_double.url, "json", "DeleteProject", {"name": "app"})
    assert garbage.status_code == 400
    assert garbage.json()["__type"] == "SerializationException"
    assert unknown.status_code == 400
    assert unknown.json()["__type"] == "UnknownOperationException"


def test_the_double_refuses_its_own_malformed_scenarios() -> None:
    with pytest.raises(ValueError, match="final_status"):
        Scenario(final_status="GREAT")
    with pytest.raises(ValueError, match="cannot write log lines"):
        Scenario(log_lines={"QUEUED": ["too early"]})


def test_idempotency_token_is_remembered_for_five_minutes(moto_url: str) -> None:
    now = [0.0]
    double = CodeBuildDouble(clock=lambda: now[0]).start()
    try:
        client = codebuild_client(double.url)
        first = client.start_build(projectName="app", sourceVersion="main", idempotencyToken="t1")["build"]
        now[0] = 299
        assert (
            client.start_build(projectName="app", sourceVersion="main", idempotencyToken="t1")["build"]["id"]
            == first["id"]
        )
        with pytest.raises(ClientError) as caught:
            client.start_build(projectName="app", sourceVersion="other", idempotencyToken="t1")
        assert caught.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
        now[0] = 301
        later = client.start_build(projectName="app", sourceVersion="other", idempotencyToken="t1")["build"]
        assert later["id"] != first["id"]
        assert later["buildNumber"] == 2
    finally:
        double.stop()


def test_log_stream_appears_after_provisioning_and_grows(
    codebuild_double: CodeBuildDouble, boto_session: boto3.session.Session
) -> None:
    codebuild_double.script_next(
        Scenario(log_lines={"BUILD": [f"l{i}" for i in range(6)]}, polls_per_phase={"BUILD": 3})
    )
    codebuild = boto_session.client("codebuild")
    logs = boto_session.client("logs")
    build = codebuild.start_build(projectName="app")["build"]
    counts: dict[str, int | None] = {}
    while not build["buildComplete"]:
        build = codebuild.batch_get_builds(ids=[build["id"]])["builds"][0]
        try:
            events = logs.get_log_events(
                logGroupName="/aws/codebuild/app", logStreamName=build["id"].split(":")[1], startFromHead=True
            )["events"]
            counts[build["currentPhase"]] = len(events)
        except logs.exceptions.ResourceNotFoundException:
            counts[build["currentPhase"]] = None
            assert "streamName" not in build.get("logs", {})
    assert counts["QUEUED"] is None
    assert counts["PROVISIONING"] is None
    assert counts["DOWNLOAD_SOURCE"] == 0
    assert counts["BUILD"] == 4  # 2 lines a poll; the poll writing the last 2 moves on to POST_BUILD
    assert counts["COMPLETED"] == 6


def test_control_endpoint_scripts_and_reports(
    codebuild_double: CodeBuildDouble, boto_session: boto3.session.Session
) -> None:
    base = f"{codebuild_double.url}/_double"
    scenario = {"project": "app", "final_status": "FAILED", "failing_phase": "PRE_BUILD"}
    assert requests.post(f"{base}/scenario", json=scenario, timeout=10).status_code == 204
    fault = {"operation": "StopBuild", "code": "ThrottlingException", "count": 1}
    assert requests.post(f"{base}/fault", json=fault, timeout=10).status_code == 204
    assert requests.post(f"{base}/scenario", json={"final_status": "NOPE"}, timeout=10).status_code == 400

    codebuild = boto_session.client("codebuild")
    build = codebuild.start_build(projectName="app", sourceVersion="v1.2.0")["build"]
    while not build["buildComplete"]:
        build = codebuild.batch_get_builds(ids=[build["id"]])["builds"][0]

    recorded = requests.get(f"{base}/requests", timeout=10).json()
    assert recorded[0]["operation"] == "StartBuild"
    assert recorded[0]["params"] == {"projectName": "app", "sourceVersion": "v1.2.0"}
    assert build["buildStatus"] == "FAILED"
    assert requests.get(f"{base}/builds/{build['id']}", timeout=10).json()["buildStatus"] == "FAILED"
    once = boto_session.client("codebuild", config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(ClientError) as caught:
        once.stop_build(id=build["id"])
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert once.stop_build(id=build["id"])["build"]["buildStatus"] == "FAILED"  # stopping a finished build
    assert requests.post(f"{base}/reset", timeout=10).status_code == 204
    assert requests.get(f"{base}/requests", timeout=10).json() == []
