"""The README documents every Action input and output, and every CLI command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())


def _documented(name: str) -> bool:
    """A table row starts with the name, alone or among others: | `a`, `b` | ..."""
    return any(line.startswith("| ") and f"`{name}`" in line.split("|")[1] for line in README.splitlines())


@pytest.mark.parametrize("name", sorted(ACTION["inputs"]))
def test_every_action_input_is_in_the_readme(name: str) -> None:
    assert _documented(name), f"README has no row for input {name}"


@pytest.mark.parametrize("name", sorted(ACTION["outputs"]))
def test_every_action_output_is_in_the_readme(name: str) -> None:
    assert _documented(name), f"README has no row for output {name}"


@pytest.mark.parametrize("command", ["demo", "serve", "plan", "check-config", "status"])
def test_every_cli_command_is_in_the_readme(command: str) -> None:
    assert f"`bridge {command}" in README


def test_the_readme_starts_with_the_two_commands() -> None:
    blocks = README.split("```")
    assert (
        blocks[1].strip() == "sh\npython3 -m venv .venv && .venv/bin/pip install . && .venv/bin/bridge demo"
    )
    assert blocks[3].strip() == "sh\nscripts/test"
    assert README.index("```") > README.index("## Two commands")  # what it is comes first, then these


def test_the_first_command_is_a_command_of_the_cli() -> None:
    """`bridge demo` as the README runs it (here its --help: the demo itself runs until stopped)."""
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "bridge"), "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: bridge demo")
