"""What the docs say about the program's own output stays what the program prints: the log lines' field
names, the key paths `check-config` prints, the health check the image runs. Each test reads the claim
from the doc itself and compares it with the real thing, so editing either side alone fails here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.support import github_delivery, github_payload
from tests.test_cli_conventions import _log_reader, serving, wait_for_line

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
DEPLOY = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")


def _section(doc: str, heading: str) -> str:
    start = doc.index(f"\n## {heading}")
    end = doc.find("\n## ", start + 1)
    return doc[start : end if end != -1 else len(doc)]


def test_the_documented_log_fields_are_the_fields_of_a_real_log_line(tmp_path: Path) -> None:
    """troubleshooting.md's "How errors look" names the JSON fields of a server log line; a refused
    delivery's line from a real `bridge serve` has them."""
    (row,) = [line for line in TROUBLESHOOTING.splitlines() if line.startswith("| server log |")]
    documented = set(re.findall(r'`"(\w+)"`', row))
    assert documented >= {"msg", "error"}
    with serving(tmp_path, "--log-format", "json") as (port, log):
        delivery = github_delivery(
            "push", github_payload("push", None, 4), secret="forged", delivery_id="drift-1"
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{delivery.path}", data=delivery.body, headers=delivery.headers
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        text = wait_for_line(_log_reader(log), '"drift-1"')
    (line,) = [json.loads(raw) for raw in text.splitlines() if '"drift-1"' in raw]
    assert documented <= set(line), (
        f"the doc names {sorted(documented - set(line))}, the line has {sorted(line)}"
    )


def test_the_fields_the_log_section_names_are_fields_the_server_writes() -> None:
    """`retry_in_seconds`, `exit_code`, `pid`…: each snake_case field the log section names in backticks
    is a key some log call in bridge/ writes."""
    section = _section(TROUBLESHOOTING, "The server's log lines and /readyz")
    named = set(re.findall(r"`([a-z]+_[a-z_]+|pid|error)`", section))
    assert {"retry_in_seconds", "exit_code", "pid", "error"} <= named
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "bridge").rglob("*.py"))
    missing = sorted(name for name in named if f'"{name}":' not in source)
    assert missing == [], f"the doc names log fields no code writes: {missing}"


def test_the_documented_key_paths_are_the_ones_check_config_prints(tmp_path: Path) -> None:
    """troubleshooting.md shows key paths by example (`routes[0].branches`, `github.webhook_secrets[0]`);
    a config broken at exactly those keys makes check-config print them."""
    paragraph = TROUBLESHOOTING[TROUBLESHOOTING.index("the dotted path of the bad key") :].split("\n\n")[0]
    examples = re.findall(r"`([a-z_]+(?:\[\d+\])?\.[a-z_]+(?:\[\d+\])?)`", paragraph)
    assert set(examples) == {"routes[0].branches", "github.webhook_secrets[0]"}
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[github]\ntoken = "env:GITHUB_TOKEN"\nwebhook_secrets = ["a-literal-secret"]\n\n'
        '[[routes]]\nname = "web"\nprovider = "github"\nrepositories = ["acme/*"]\nproject = "flex"\n'
        'branches = "main"\n'
    )
    result = subprocess.run(
        [str(BIN / "bridge"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    printed = re.findall(r"^error: (\S+):", result.stderr, re.M)
    assert sorted(printed) == sorted(examples)


def test_the_health_check_deploy_md_shows_is_the_images_own() -> None:
    image_check = re.search(r"^HEALTHCHECK .*?(/\w+)' %", (ROOT / "Dockerfile").read_text(), re.M | re.S)
    assert image_check is not None
    compose = DEPLOY[DEPLOY.index("healthcheck:   # the image's own check") :].split("\n")[1]
    assert re.search(r"127\.0\.0\.1:8080(/\w+)'", compose)[1] == image_check[1]  # type: ignore[index]
    assert f"requests `http://127.0.0.1:<--port>{image_check[1]}`" in DEPLOY
