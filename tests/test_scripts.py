"""scripts/lib/debian.sh, the one way scripts/test installs a Debian package a test needs: it says what
and why, and shows apt's progress instead of minutes of silence. apt-get is a recording stand-in on PATH
(a real install needs the network); dpkg-query is the machine's own."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "scripts" / "lib" / "debian.sh"


@pytest.fixture
def fake_apt(tmp_path: Path) -> tuple[Path, Path]:
    """A directory with an `apt-get` that records its arguments and prints a progress line like apt's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "apt-calls"
    script = bin_dir / "apt-get"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{record}"\necho "Get:1 http://deb.example fake 1.0"\n')
    script.chmod(0o755)
    return bin_dir, record


def run_helper(bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    quoted = " ".join(f"'{a}'" for a in args)
    return subprocess.run(
        ["bash", "-c", f". {HELPER}; need_debian_packages {quoted}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        check=True,
    )


def test_a_missing_package_is_installed_saying_what_and_why_with_progress(
    fake_apt: tuple[Path, Path],
) -> None:
    if os.getuid() != 0:
        pytest.fail("this test runs the helper's root path: run it as root, as scripts/test does in CI")
    bin_dir, record = fake_apt
    result = run_helper(bin_dir, "the demo needs a frobnicator", "bridge-no-such-package-xyz")
    assert "apt-get install bridge-no-such-package-xyz: the demo needs a frobnicator" in result.stdout
    assert "Get:1 http://deb.example fake 1.0" in result.stdout  # apt's own lines are not swallowed
    calls = record.read_text().splitlines()
    assert calls[0].startswith("update")
    assert re.fullmatch(r"install -y -q bridge-no-such-package-xyz", calls[1])


def test_installed_packages_are_left_alone_silently(fake_apt: tuple[Path, Path]) -> None:
    bin_dir, record = fake_apt
    result = run_helper(bin_dir, "bash runs the scripts", "bash", "coreutils")
    assert result.stdout == ""
    assert result.stderr == ""
    assert not record.exists()


def test_opting_out_prints_the_command_instead(fake_apt: tuple[Path, Path]) -> None:
    bin_dir, record = fake_apt
    result = run_helper(
        bin_dir, "the demo needs a frobnicator", "bridge-no-such-package-xyz", BRIDGE_TEST_INSTALL="no"
    )
    assert "apt-get install -y bridge-no-such-package-xyz" in result.stderr
    assert "the demo needs a frobnicator" in result.stderr
    assert not record.exists()


def test_scripts_test_installs_buildah_through_the_helper_with_a_reason() -> None:
    calls = re.findall(
        r'^need_debian_packages "([^"]+)" (.+)$', (ROOT / "scripts" / "test").read_text(), re.M
    )
    assert any("buildah" in packages.split() and reason for reason, packages in calls)
    assert "apt-get" not in (ROOT / "scripts" / "test").read_text()
