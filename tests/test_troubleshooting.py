"""docs/troubleshooting.md explains every message bridge can print; this keeps it so.

The catalogue (scripts/errors_catalogue.py) is read from the source with `ast`, so a new error added
anywhere in bridge/ without a line in the doc fails here, with the list of what is missing and the
command that prints it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "errors_catalogue.py"
DOC = ROOT / "docs" / "troubleshooting.md"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("errors_catalogue", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["errors_catalogue"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


catalogue_script: Any = _load()
ENTRIES: list[Any] = catalogue_script.catalogue()
DOC_TEXT = DOC.read_text(encoding="utf-8")


def _without_entry_of(message: str) -> str:
    """The doc with every list item / row / paragraph that explains `message` deleted."""
    entry = next(e for e in ENTRIES if e.message == message)
    search = catalogue_script.pattern(entry.key)
    return "\n".join(b for b in catalogue_script.doc_blocks(DOC_TEXT) if not search.search(b))


def test_every_message_is_documented() -> None:
    gaps = catalogue_script.missing(ENTRIES, DOC_TEXT)
    listing = "\n".join(f"  {e.module}:{e.line} [{e.kind}] {e.message}" for e in gaps)
    assert not gaps, (
        f"{len(gaps)} messages are not explained in docs/troubleshooting.md (what it means, the fix):\n"
        f"{listing}\nrun: python scripts/errors_catalogue.py --missing docs/troubleshooting.md"
    )


@pytest.mark.parametrize(
    "kind",
    [
        "InputError",
        "ConfigError",
        "BadRequestError",
        "SignatureError",
        "PayloadTooLargeError",
        "CredentialsError",
        "SecretError",
        "BuilderError",
        "ReporterError",
        "StoreError",
        "log.warning",
        "log.exception",
        "::error::",
        "::warning::",
        "http",
        "ignored",
        "readyz",
    ],
)
def test_the_catalogue_finds_every_kind_of_message(kind: str) -> None:
    checked = [entry for entry in ENTRIES if entry.kind == kind and entry.key is not None]
    assert checked, f"no {kind} message catalogued: the catalogue stopped reading part of the source"


@pytest.mark.parametrize(
    ("module", "kind", "message", "hint"),
    [
        # InputError: the input's name is part of what the user sees.
        ("bridge/action.py", "InputError", "input 'project-name': is required", "project-name"),
        # ConfigError from the config reader: the key path comes first.
        ("bridge/config.py", "ConfigError", "…: must use https: tokens would travel in clear text", "https"),
        # An f-string: variable parts become placeholders.
        ("bridge/app.py", "PayloadTooLargeError", "request body is larger than … bytes", "max_body_bytes"),
        # A message built in a variable first, then raised by a helper.
        ("bridge/builders/codebuild.py", "BuilderError", "CodeBuild …", None),
        # The Action's own workflow command.
        ("bridge/action.py", "::error::", "the workflow run was cancelled; …", None),
        # A reason returned from a routing helper, not passed to Ignored() directly.
        ("bridge/routing.py", "ignored", "branch … not in routes[…].branches", None),
    ],
)
def test_the_catalogue_reads_messages_as_users_see_them(
    module: str, kind: str, message: str, hint: str | None
) -> None:
    found = [e for e in ENTRIES if e.module == module and e.kind == kind and e.message.startswith(message)]
    assert found, f"{message!r} not catalogued from {module}"
    if hint is not None:
        assert any(hint in (e.hint or "") for e in found)


@pytest.mark.parametrize("message", sorted({e.message for e in ENTRIES if e.key is not None}))
def test_deleting_a_messages_entry_from_the_doc_is_reported(message: str) -> None:
    entry = next(e for e in ENTRIES if e.message == message)
    assert catalogue_script.missing([entry], DOC_TEXT) == []
    assert catalogue_script.missing([entry], _without_entry_of(message)) == [entry]


def test_a_new_error_without_documentation_is_reported(tmp_path: Path) -> None:
    """A fresh source tree: a new raise of a BridgeError subclass (defined in another module) shows up."""
    (tmp_path / "bridge").mkdir()
    (tmp_path / "bridge" / "errors.py").write_text(
        "class BridgeError(Exception):\n    pass\n\nclass ConfigError(BridgeError):\n    pass\n",
        encoding="utf-8",
    )
    (tmp_path / "bridge" / "store2.py").write_text(
        "from bridge.errors import ConfigError\n\n"
        "class LedgerError(ConfigError):\n    pass\n\n"
        "def load(path: str) -> None:\n"
        "    message = f'the ledger {path} is locked by another replica'\n"
        "    raise LedgerError(message, hint='stop the other replica')\n",
        encoding="utf-8",
    )
    entries = catalogue_script.catalogue(tmp_path)
    assert [(e.module, e.kind, e.message, e.hint) for e in entries] == [
        (
            "bridge/store2.py",
            "LedgerError",
            "the ledger … is locked by another replica",
            "stop the other replica",
        )
    ]
    assert catalogue_script.missing(entries, DOC_TEXT) == entries
    documented = DOC_TEXT + "\n- `the ledger … is locked by another replica` — stop the other one.\n"
    assert catalogue_script.missing(entries, documented) == []
    example = DOC_TEXT + "\n- `the ledger /var/lib/ledger is locked by another replica` — stop it.\n"
    assert catalogue_script.missing(entries, example) == []


def test_the_script_lists_what_is_missing(tmp_path: Path) -> None:
    message = "input 'source': unknown source '…'"
    doc = tmp_path / "troubleshooting.md"
    doc.write_text(_without_entry_of(message), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--missing", str(doc)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert message in result.stdout
    assert result.stderr.startswith("1 of ")
    clean = subprocess.run(
        [sys.executable, str(SCRIPT), "--missing", str(DOC)], capture_output=True, text=True, check=False
    )
    assert clean.returncode == 0, clean.stdout
