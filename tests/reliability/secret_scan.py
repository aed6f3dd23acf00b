"""A reusable leak checker: does any secret value used in a test run show up in what it captured?

Feed it every secret value the run used (webhook secrets, tokens, the App's private key, the
installation tokens the fake GitHub issued) and everything a user or an attacker could read: server
logs, Action stdout/stderr, outputs and step summaries, check-run and commit-status texts as the
fake APIs recorded them, and every StartBuild request (PLAINTEXT variables above all). A value is
also looked for in the encodings a careless log line would use: JSON-escaped, base64, URL-encoded,
and, for a PEM key, each line of its body. Findings name the secret and the place, never the value.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.fakes.codebuild_double import CodeBuildDouble
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

MIN_LENGTH = 8  # shorter values would match by chance ("ci", "token")


@dataclass(frozen=True)
class Finding:
    source: str
    secret: str  # the label of the secret, never its value
    form: str


def _forms(value: str) -> dict[str, str]:
    forms = {"raw": value, "json": json.dumps(value)[1:-1], "url": quote(value, safe="")}
    forms["base64"] = base64.b64encode(value.encode()).decode().rstrip("=")
    if "-----BEGIN" in value:
        for number, line in enumerate(value.splitlines()):
            if len(line) >= 40 and not line.startswith("-----"):
                forms[f"pem-line-{number}"] = line
    return {name: form for name, form in forms.items() if len(form) >= MIN_LENGTH}


@dataclass
class SecretScanner:
    secrets: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    scanned: list[str] = field(default_factory=list)  # the sources looked at, for the failure message

    def add(self, label: str, value: str) -> None:
        if len(value) >= MIN_LENGTH:
            self.secrets[label] = value

    def add_all(self, secrets: Mapping[str, str]) -> None:
        for label, value in secrets.items():
            self.add(label, value)

    # -- what is scanned -------------------------------------------------------------------------

    def text(self, source: str, text: str) -> None:
        self.scanned.append(source)
        for label, value in self.secrets.items():
            for form, needle in _forms(value).items():
                if needle in text:
                    self.findings.append(Finding(source, label, form))

    def value(self, source: str, value: Any) -> None:
        self.text(source, json.dumps(value, default=str, ensure_ascii=False))

    def file(self, path: Path) -> None:
        if path.exists():
            self.text(str(path.name), path.read_text(errors="replace"))

    def github(self, fake: FakeGitHub) -> None:
        """Every request the fake GitHub received: check-run and status texts, paths, headers."""
        for number, request in enumerate(fake.requests):
            self.value(
                f"github request {number} {request.method} {request.path}",
                {"path": request.path, "json": request.json, "headers": dict(request.headers)},
            )
        self.value("github check runs", fake.check_runs)
        self.value("github statuses", fake.statuses)

    def gitlab(self, fake: FakeGitLab) -> None:
        for number, request in enumerate(fake.requests):
            self.value(
                f"gitlab request {number} {request.method}", {"path": request.raw_path, "body": request.body}
            )

    def codebuild(self, double: CodeBuildDouble) -> None:
        """Every StartBuild request; PLAINTEXT variables are what the build's console shows anyone."""
        for number, call in enumerate(double.calls("StartBuild")):
            variables = call.params.get("environmentVariablesOverride", [])
            plaintext = {
                v["name"]: v["value"] for v in variables if v.get("type", "PLAINTEXT") == "PLAINTEXT"
            }
            self.value(f"StartBuild {number} PLAINTEXT variables", plaintext)
            self.value(f"StartBuild {number} request", call.params)

    # -- the verdict -----------------------------------------------------------------------------------

    def assert_clean(self) -> None:
        assert self.secrets, "no secrets to look for: the scan would prove nothing"
        assert self.scanned, "nothing was scanned"
        if self.findings:
            listing = "\n".join(f"  {f.secret} ({f.form}) in {f.source}" for f in self.findings)
            raise AssertionError(f"secret values leaked:\n{listing}")


def scan(secrets: Mapping[str, str], texts: Iterable[tuple[str, str]]) -> list[Finding]:
    """One-shot form: the findings for `texts` (source, text)."""
    scanner = SecretScanner()
    scanner.add_all(secrets)
    for source, text in texts:
        scanner.text(source, text)
    return scanner.findings
