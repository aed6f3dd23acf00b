"""`bridge plan | check-config | serve` as a user runs them: exit codes, stdout JSON, stderr hints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from tests.e2e.support import GITHUB_PROJECT, GITLAB_PROJECT, config_text, github_payload, gitlab_payload

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "bridge.toml"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(config_text())
    return path


def write_payload(tmp_path: Path, payload: Any) -> Path:
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(payload))
    return path


def run_plan(config: Path, payload: Path, provider: str, event: str, *extra: str) -> int:
    return main(
        [
            "plan",
            "--config",
            str(config),
            "--provider",
            provider,
            "--event",
            event,
            "--payload",
            str(payload),
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "case",
    [
        (
            "github",
            "push",
            github_payload("push", None, 4),
            GITHUB_PROJECT,
            "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        ),
        (
            "github",
            "pull_request",
            github_payload("pull_request", "opened", 1),
            GITHUB_PROJECT,
            "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        ),
        (
            "gitlab",
            "Push Hook",
            gitlab_payload("push"),
            GITLAB_PROJECT,
            "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        ),
        (
            "gitlab",
            "Merge Request Hook",
            gitlab_payload("merge_request_open"),
            GITLAB_PROJECT,
            "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        ),
    ],
)
def test_plan_prints_the_start_build_request(
    tmp_path: Path,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str, Any, str, str],
) -> None:
    provider, event, payload, project, source_version = case
    assert (
        run_plan(config_file, write_payload(tmp_path, payload), provider, event, "--delivery-id", "d-1") == 0
    )
    out, err = capsys.readouterr()
    kwargs = json.loads(out)
    assert kwargs["projectName"] == project
    assert kwargs["sourceVersion"] == source_version
    assert len(kwargs["idempotencyToken"]) == 36
    assert "route: " in err


def test_plan_token_follows_the_delivery_id(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = write_payload(tmp_path, github_payload("push", None, 4))
    tokens = []
    for delivery in ("a", "a", "b"):
        run_plan(config_file, payload, "github", "push", "--delivery-id", delivery)
        tokens.append(json.loads(capsys.readouterr().out)["idempotencyToken"])
    assert tokens[0] == tokens[1] != tokens[2]


@pytest.mark.parametrize(
    "case",
    [
        ("github", "pull_request", github_payload("pull_request", "closed"), "closed"),
        ("github", "issues", github_payload("issues", "opened"), "issues"),
        ("gitlab", "Tag Push Hook", gitlab_payload("tag_push"), "jsmith/example"),
        ("gitlab", "Push Hook", gitlab_payload("push_branch_deleted"), "deleted"),
    ],
)
def test_plan_prints_why_nothing_is_built(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str], case: tuple[str, str, Any, str]
) -> None:
    provider, event, payload, reason = case
    assert run_plan(config_file, write_payload(tmp_path, payload), provider, event) == 3  # ignored
    answer = json.loads(capsys.readouterr().out)
    assert list(answer) == ["ignored"]
    assert reason in answer["ignored"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ("[1]", "JSON object"),
    ],
)
def test_plan_bad_payload_file_is_exit_2(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "payload.json"
    if content is not None:
        path.write_text(content)
    assert run_plan(config_file, path, "github", "push") == 2
    err = capsys.readouterr().err
    assert "--payload" in err
    assert message in err
    assert "hint:" in err


def test_plan_malformed_payload_names_the_key(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_plan(config_file, write_payload(tmp_path, {"ref": "refs/heads/master"}), "github", "push") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: input '--payload': GitHub 'push' payload: '")
    assert "hint:" in err


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.strip() == "ok: 3 routes"


def test_check_config_lists_every_error_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = config_text().replace("poll_interval_seconds = 5", "poll_interval_seconds = 0")
    broken = broken.replace('project = "gl-build"', 'project = "no spaces allowed"')
    broken = broken.replace('events = ["push", "merge_request"]', 'events = ["push", "pull_request"]')
    path = tmp_path / "broken.toml"
    path.write_text(broken)

    assert main(["check-config", str(path)]) == 2

    err = capsys.readouterr().err
    assert "3 errors" in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert any("server.poll_interval_seconds" in line for line in errors)
    assert any("routes[1].project" in line for line in errors)
    assert any("routes[1].events[1]" in line for line in errors)
    assert err.count("  hint: ") == 3


@pytest.mark.parametrize("text", ["this is [not toml", ""])
def test_check_config_syntax_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "bridge.toml"
    if text:
        path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    assert "error: " in capsys.readouterr().err


def test_serve_without_a_config_file_is_exit_2_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.delenv("BRIDGE_CONFIG_TOML", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "bridge.toml not found" in err
    assert "examples/bridge.toml" in err


def test_serve_rejects_a_zero_poll_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--poll-interval", "0"])
    assert exit_info.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_python_dash_m_bridge(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 3 routes"


def test_serve_reads_the_config_text_from_the_environment(tmp_path: Path) -> None:
    """Where no file can be mounted, $BRIDGE_CONFIG_TOML carries the whole routing file."""
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.e2e.test_server import free_port

    port = free_port()
    config = f'[server]\nstate_path = "{tmp_path / "state.sqlite3"}"\n'
    config += '[github]\ntoken = "env:GITHUB_TOKEN"\nwebhook_secrets = ["env:GITHUB_WEBHOOK_SECRET"]\n'
    config += '[[routes]]\nname = "web"\nprovider = "github"\nrepositories = ["acme/*"]\nproject = "flex"\n'
    env = dict(os.environ)
    env["BRIDGE_CONFIG"] = "/etc/bridge/bridge.toml"  # as the image sets it: the text still wins
    env["BRIDGE_CONFIG_TOML"] = config
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        assert body == {"ready": True, "routes": 1}
    finally:
        process.kill()
        process.wait(timeout=10)


def test_invalid_config_text_in_the_environment_is_exit_2_naming_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("BRIDGE_CONFIG_TOML", "[server]\npoll_interval_seconds = 0\n")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "server.poll_interval_seconds" in err


def test_serve_with_an_unusable_metrics_directory_is_exit_2_with_a_hint(
    tmp_path: Path, config_file: Path
) -> None:
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--config", str(config_file)],
        cwd=tmp_path,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(not_a_directory)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"$PROMETHEUS_MULTIPROC_DIR {not_a_directory} cannot be used" in result.stderr
    assert "hint: point it at a writable directory" in result.stderr
