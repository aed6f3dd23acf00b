"""`bridge status <sha|delivery-id>`: what the operator page shows, on the command line, from the
store a config names (deliveries recorded through the store's own API, as the server records them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.core.activity import status_record
from bridge.model import BuildStatus, PhaseRow, SourceEvent
from bridge.store import Store
from tests.e2e.support import config_text

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
EVENT = SourceEvent(
    provider="github",
    kind="push",
    event_name="push",
    action=None,
    repository="Codertocat/Hello-World",
    clone_url="https://github.com/Codertocat/Hello-World.git",
    sha=SHA,
    ref="refs/heads/master",
    server_url="https://github.com",
    branch="master",
)
REQUEST = {
    "projectName": "hello-build",
    "sourceVersion": SHA,
    "environmentVariablesOverride": [
        {"name": "SERVICE_TOKEN", "value": "plain-in-an-old-config", "type": "PLAINTEXT"},
        {"name": "NPM_TOKEN", "value": "ci/npm", "type": "SECRETS_MANAGER"},
    ],
}

GRANT = {
    "describe": [
        "secret and parameter-store variables: passed",
        "push: no",
        "dropped: the route's cache (a fork)",
    ],
    "secrets": True,
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    state = tmp_path / "state.sqlite3"
    store = Store(state)
    store.add_delivery("d-push", "github", "push", "hello", EVENT)
    store.mark_started(
        "d-push", "hello-build:b-1", request_json=json.dumps(REQUEST), grant_json=json.dumps(GRANT)
    )
    status = BuildStatus(
        build_id="hello-build:b-1",
        build_number=7,
        build_status="SUCCEEDED",
        state="completed",
        conclusion="success",
        title="Build #7 succeeded in 42s",
        summary="",
        phases=(PhaseRow("BUILD", "SUCCEEDED", 40), PhaseRow("POST_BUILD", "SUCCEEDED", 2)),
        current_phase="COMPLETED",
        console_url="https://console.aws.amazon.com/codesuite/codebuild/projects/hello-build/build/b-1",
    )
    store.update_build(
        "hello-build:b-1", last_build_status="SUCCEEDED", status_json=status_record(status), done=True
    )
    store.add_ignored(
        "d-label",
        "github",
        "pull_request",
        "pull_request action 'labeled' does not change the code to build",
        repository="Codertocat/Hello-World",
        sha=SHA,
    )
    store.add_ignored(
        "d-issue",
        "github",
        "issues",
        "GitHub event 'issues' does not trigger builds",
        repository="Codertocat/Hello-World",
    )
    store.close()
    path = tmp_path / "bridge.toml"
    path.write_text(config_text(state_path=str(state)))
    return path


def test_status_of_a_commit_lists_its_deliveries_builds_and_the_status_it_got(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(config_file), SHA[:7]]) == 0
    out = capsys.readouterr().out
    assert "delivery d-push  github push  Codertocat/Hello-World  " + SHA in out
    assert "build     hello-build:b-1  SUCCEEDED (COMPLETED)  42s" in out
    assert "commit    success: Build #7 succeeded in 42s" in out
    assert "reason    pull_request action 'labeled' does not change the code to build" in out
    assert "d-issue" not in out  # it named no commit
    assert "SERVICE_TOKEN" not in out  # a commit's listing has no requests; a delivery's detail does


def test_status_of_a_delivery_shows_its_request_with_credentials_masked(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(config_file), "d-push"]) == 0
    out = capsys.readouterr().out
    assert "outcome   started" in out
    assert '"projectName": "hello-build"' in out
    assert "plain-in-an-old-config" not in out
    assert '"value": "***"' in out
    assert '"value": "ci/npm"' in out  # a reference is a name, shown as is
    assert "  grant\n    secret and parameter-store variables: passed\n    push: no\n    dropped: " in out

    assert main(["status", "--config", str(config_file), "--json", "d-issue"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["deliveries"][0]["outcome"] == "ignored"
    assert answer["deliveries"][0]["reason"] == "GitHub event 'issues' does not trigger builds"
    assert answer["start_build_request"] is None


def test_status_of_something_unknown_exits_1_and_a_missing_store_exits_2(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(config_file), "deadbeef"]) == 1
    assert "nothing is recorded under 'deadbeef'" in capsys.readouterr().err
    assert main(["status", "--config", str(config_file), "no-such-delivery"]) == 1

    elsewhere = tmp_path / "other.toml"
    elsewhere.write_text(config_text(state_path=str(tmp_path / "never-written.sqlite3")))
    assert main(["status", "--config", str(elsewhere), SHA]) == 2
    assert "no state file at" in capsys.readouterr().err
    assert not (tmp_path / "never-written.sqlite3").exists()  # looking did not create it
