"""Talking to the GitHub Actions runner: workflow commands, the outputs file, the step summary.

Build logs are untrusted text: a line such as `::add-mask::` or `::set-env` printed by the build
would otherwise be executed by the runner. Log lines are therefore echoed inside a
`::stop-commands::<token>` window, and our own commands (groups) are issued outside it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from bridge.secret import Secret


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


class WorkflowCommands:
    """Writes workflow commands to the job log (stdout of the action's container)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._group_open = False

    def _command(self, name: str, message: str, **properties: str) -> None:
        props = ",".join(f"{key}={_escape_property(val)}" for key, val in properties.items() if val)
        head = f"::{name} {props}" if props else f"::{name}"
        self._out.write(f"{head}::{_escape_data(message)}\n")
        self._out.flush()

    def mask(self, secret: Secret) -> None:
        if secret.reveal():
            for line in secret.reveal().splitlines():
                if line.strip():
                    self._command("add-mask", line)

    def error(self, message: str, *, title: str = "") -> None:
        self._command("error", message, title=title)

    def warning(self, message: str, *, title: str = "") -> None:
        self._command("warning", message, title=title)

    def notice(self, message: str, *, title: str = "") -> None:
        self._command("notice", message, title=title)

    def info(self, message: str) -> None:
        self._out.write(message + "\n")
        self._out.flush()

    def group(self, title: str) -> None:
        self.end_group()
        self._command("group", title)
        self._group_open = True

    def end_group(self) -> None:
        if self._group_open:
            self._out.write("::endgroup::\n")
            self._group_open = False

    def untrusted_lines(self, lines: Iterable[str]) -> None:
        """Echo text we did not write (build logs) with command processing switched off."""
        batch = list(lines)
        if not batch:
            return
        token = secrets.token_hex(16)
        self._out.write(f"::stop-commands::{token}\n")
        for line in batch:
            self._out.write(line + "\n")
        self._out.write(f"::{token}::\n")
        self._out.flush()


def write_outputs(path: str | None, outputs: Mapping[str, str]) -> None:
    """Append outputs to $GITHUB_OUTPUT in the delimiter form, which is safe for any value."""
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as handle:
        for name, value in outputs.items():
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            handle.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def append_summary(path: str | None, markdown: str) -> None:
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(markdown.rstrip("\n") + "\n")
