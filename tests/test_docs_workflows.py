"""The workflow files the docs give users are whole, valid workflows, and every `uses:` of the Action in
the docs names a tag the release workflow makes, so a copied file runs as it is.

Each block of docs/workflows.md and README.md whose first line is `# .github/workflows/NAME.yml` is
written out and validated with check-jsonschema's `vendor.github-workflows` schema (the same check
scripts/lint-files runs on this repository's own workflows). The tag the release makes is read by
running the release workflow's own version step on this checkout, not restated here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_workflows import _run_release_check, _version

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WORKFLOW_DOCS = [ROOT / "docs" / "workflows.md", ROOT / "README.md"]
BIN = Path(sys.executable).parent
FILE_LINE = re.compile(r"^# (\.github/workflows/[\w.-]+\.ya?ml)\s*$")
ACTION_USES = re.compile(r"uses:\s*(codebuild-bridge/bridge)@([^\s#]+)")


def yaml_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```ya?ml\n(.*?)^```", doc.read_text(encoding="utf-8"), re.M | re.S)


def workflow_files(doc: Path) -> dict[str, str]:
    """The blocks that are workflow files, by the path their first line names."""
    files: dict[str, str] = {}
    for block in yaml_blocks(doc):
        match = FILE_LINE.match(block.splitlines()[0])
        if match:
            assert match[1] not in files, f"{doc.name} gives {match[1]} twice"
            files[match[1]] = block
    return files


DOC_WORKFLOWS = [(doc, name) for doc in WORKFLOW_DOCS for name in workflow_files(doc)]


def test_the_workflows_page_has_the_four_workflows() -> None:
    files = {
        name: yaml.safe_load(text) for name, text in workflow_files(ROOT / "docs" / "workflows.md").items()
    }
    triggers = {name: data[True] for name, data in files.items()}  # YAML 1.1 reads `on` as true
    assert any(on.get("push", {}).get("branches") == ["main"] for on in triggers.values())
    assert any("pull_request" in on for on in triggers.values())
    assert any(on.get("push", {}).get("tags") for on in triggers.values())
    assert any("multi" in name for name in files)


def test_every_complete_workflow_in_the_docs_is_marked_as_a_file() -> None:
    """A block with `jobs:` is a whole workflow: it must carry its path, so the schema check sees it."""
    for doc in WORKFLOW_DOCS:
        for block in yaml_blocks(doc):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "jobs" in data:
                assert FILE_LINE.match(block.splitlines()[0]), (
                    f"{doc.name}: a workflow without its path:\n{block}"
                )


@pytest.mark.parametrize(("doc", "name"), DOC_WORKFLOWS, ids=[f"{d.name}:{n}" for d, n in DOC_WORKFLOWS])
def test_a_docs_workflow_validates_against_githubs_workflow_schema(
    tmp_path: Path, doc: Path, name: str
) -> None:
    path = tmp_path / Path(name).name
    path.write_text(workflow_files(doc)[name], encoding="utf-8")
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    workflow: dict[Any, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert workflow["permissions"]["id-token"] == "write"  # the role is assumed with an OIDC token
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(str(step.get("uses", "")).startswith("codebuild-bridge/bridge@") for step in steps)
    assert any(
        str(step.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")
        and step["with"]["role-to-assume"] == "${{ vars.BRIDGE_ROLE_ARN }}"
        for step in steps
    )


def release_tags(tmp_path: Path) -> set[str]:
    """The git tags a release of this checkout's version makes: the exact one and the floating one."""
    version = _version()
    result = _run_release_check(tmp_path, f"v{version}", "codebuild-bridge/bridge")
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = dict(line.split("=", 1) for line in (tmp_path / "github_output").read_text().splitlines())
    return {f"v{version}", outputs["floating"]}


def test_every_uses_of_the_action_in_the_docs_names_a_tag_the_release_makes(tmp_path: Path) -> None:
    made = release_tags(tmp_path)
    found = [
        (doc.name, ref) for doc in DOCS for _, ref in ACTION_USES.findall(doc.read_text(encoding="utf-8"))
    ]
    assert found, "no `uses: codebuild-bridge/bridge@…` in the docs"
    wrong = [(name, ref) for name, ref in found if ref not in made]
    assert wrong == [], f"these refs are not tags the release workflow makes ({sorted(made)}): {wrong}"


def test_the_readme_action_snippet_is_a_whole_workflow() -> None:
    assert workflow_files(ROOT / "README.md"), "README's Action example is not a whole workflow file"
