#!/usr/bin/env python3
"""Every message bridge can show a user, read from the source, so docs/troubleshooting.md cannot fall behind.

The source is read with `ast`, never imported: the catalogue is the same whatever is installed, and a
new `raise SomeError("...")` anywhere in bridge/ shows up here the moment it is written. Collected:

- every construction of a BridgeError subclass (raised or returned by a helper), with the text the
  user sees: `ConfigError(msg, key=K)` reads "K: msg", `InputError(N, msg)` reads "input 'N': msg";
- every `error(where, msg, hint)` of the config reader (it collects ConfigErrors instead of raising);
- the Action's own `::error::`/`::warning::` lines, the server's warning/error log lines, the HTTP
  answers' "error" texts, /readyz reasons and every `Ignored(reason)` (the 200 "ignored" answers).

Variable parts become `…`. A message with no static text of its own is keyed by its hint instead.

    python scripts/errors_catalogue.py                       # the catalogue, one message a line
    python scripts/errors_catalogue.py --missing docs/troubleshooting.md   # exit 1 and list gaps
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "…"
# How much of a message must appear in the doc (its first characters, each `…` standing for `…` or a
# short example): enough to be that message, short enough that rewording its tail does not fail the test.
MATCH_CHARS = 40
# A message with fewer letters than this outside its placeholders is keyed by its hint.
MIN_STATIC_LETTERS = 8
LOG_METHODS = frozenset({"warning", "error", "exception", "critical"})
COMMAND_METHODS = frozenset({"error", "warning"})


@dataclass(frozen=True)
class Entry:
    """One place in the source that can put a message in front of a user."""

    module: str
    line: int
    kind: str  # the error class, or: config, log, action, http, readyz, ignored
    message: str  # static text, PLACEHOLDER for each variable part
    hint: str | None  # static text of the hint, None when computed

    @property
    def key(self) -> str | None:
        """The normalised text the doc must contain, or None for a message with no static text."""
        for text in (self.message, self.hint or ""):
            if len(re.findall(r"[A-Za-z]", text.replace(PLACEHOLDER, ""))) >= MIN_STATIC_LETTERS:
                return normalise(text)[:MATCH_CHARS].rstrip()
        return None


def pattern(key: str) -> re.Pattern[str]:
    """The key as a search: each placeholder matches `…` or a short concrete example in the doc."""
    # A leading or trailing placeholder adds nothing to a search, and a leading one makes it slow.
    fragments = [re.escape(fragment) for fragment in key.strip(PLACEHOLDER).split(PLACEHOLDER)]
    return re.compile(r".{0,80}?".join(fragments))  # "." stops at the end of a doc entry (a newline)


def normalise(text: str) -> str:
    """Whitespace (newlines too) collapsed, backticks and markdown escapes dropped, placeholders merged."""
    text = text.replace("`", "").replace("\\|", "|").replace("\\_", "_").replace("\\*", "*")
    text = re.sub(r"\.\.\.|<[a-z][a-z -]*>", PLACEHOLDER, text)  # "..." and "<name>" read as a placeholder
    text = re.sub(rf"{PLACEHOLDER}(\s*{PLACEHOLDER})+", PLACEHOLDER, text)
    return " ".join(text.split())


# -- static text of an expression ------------------------------------------------------------------


def static_text(node: ast.expr | None, names: dict[str, ast.expr] | None = None, depth: int = 0) -> str:
    """The literal parts of a string expression, PLACEHOLDER for the rest.

    A local name assigned once from a string expression (`message = f"..."`) is followed, so the
    common "build the message, then raise" shape is read through.
    """
    names = names or {}
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_part_text(part, names, depth) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return static_text(node.left, names, depth) + static_text(node.right, names, depth)
    if isinstance(node, ast.Name) and node.id in names and depth < 3:
        return static_text(names[node.id], names, depth + 1)
    return PLACEHOLDER


def _part_text(part: ast.expr, names: dict[str, ast.expr], depth: int) -> str:
    if isinstance(part, ast.Constant) and isinstance(part.value, str):
        return part.value
    if isinstance(part, ast.FormattedValue) and part.format_spec is None and part.conversion == -1:
        return static_text(part.value, names, depth)  # `{subject}` where subject = f"CodeBuild ..."
    return PLACEHOLDER


def _literal_or_none(node: ast.expr | None, names: dict[str, ast.expr]) -> str | None:
    if node is None:
        return None
    text = static_text(node, names)
    return None if text.strip() == PLACEHOLDER else text


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _arg(call: ast.Call, index: int, name: str) -> ast.expr | None:
    return call.args[index] if len(call.args) > index else _keyword(call, name)


def _callee(call: ast.Call) -> tuple[str, str]:
    """(receiver, name): `log.warning` -> ("log", "warning"); `Foo` -> ("", "Foo")."""
    func = call.func
    if isinstance(func, ast.Name):
        return "", func.id
    if isinstance(func, ast.Attribute):
        receiver = func.value
        if isinstance(receiver, ast.Attribute):
            return receiver.attr, func.attr
        return (receiver.id if isinstance(receiver, ast.Name) else ""), func.attr
    return "", ""


# -- the error classes -----------------------------------------------------------------------------


def source_files(root: Path = ROOT) -> list[Path]:
    entrypoint = root / "entrypoint.py"
    return [*sorted((root / "bridge").rglob("*.py")), *([entrypoint] if entrypoint.is_file() else [])]


def error_classes(trees: Iterable[ast.Module]) -> set[str]:
    """BridgeError and every class that subclasses it (directly or not) anywhere in bridge/."""
    bases: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                bases.setdefault(node.name, set()).update(names)
    found = {"BridgeError"}
    changed = True
    while changed:
        changed = False
        for name, parents in bases.items():
            if name not in found and parents & found:
                found.add(name)
                changed = True
    return found


# -- walking one module ----------------------------------------------------------------------------


def _functions(tree: ast.Module) -> Iterator[tuple[ast.AST, dict[str, ast.expr]]]:
    """Each function (and the module itself) with its names assigned exactly once."""
    scopes: list[ast.AST] = [tree]
    scopes += [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in scopes:
        assigned: dict[str, list[ast.expr]] = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
        yield scope, {name: values[0] for name, values in assigned.items() if len(values) == 1}


def _scope_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Nodes of this scope, not of the functions nested inside it (they are scopes of their own)."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _error_entry(call: ast.Call, kind: str, names: dict[str, ast.expr], module: str) -> Entry:
    hint = _literal_or_none(_keyword(call, "hint"), names)
    if kind == "InputError":
        name = static_text(_arg(call, 0, "name"), names)
        message = f"input '{name}': " + static_text(_arg(call, 1, "message"), names)
    else:
        message = static_text(_arg(call, 0, "message"), names)
        key = _keyword(call, "key")
        if key is not None and not (isinstance(key, ast.Constant) and key.value == ""):
            message = f"{static_text(key, names)}: {message}"
    return Entry(module, call.lineno, kind, message, hint)


def _call_entry(call: ast.Call, classes: set[str], names: dict[str, ast.expr], module: str) -> Entry | None:
    receiver, name = _callee(call)
    if not call.args and not call.keywords:
        return None
    if name in classes and receiver in ("", "errors"):
        if module == "bridge/errors.py":
            return None
        entry = _error_entry(call, name, names, module)
        return None if _is_pass_through(entry, module) else entry
    first = static_text(call.args[0], names) if call.args else ""
    if module == "bridge/config.py" and receiver in ("self", "reader") and name == "error":
        where = static_text(_arg(call, 0, "key"), names)
        message = static_text(_arg(call, 1, "message"), names)
        hint = _literal_or_none(_arg(call, 2, "hint"), names)
        return Entry(module, call.lineno, "ConfigError", f"{where}: {message}", hint)
    if receiver == "log" and name in LOG_METHODS:
        return Entry(module, call.lineno, f"log.{name}", first, None)
    if receiver == "commands" and name in COMMAND_METHODS:
        return Entry(module, call.lineno, f"::{name}::", first, None)
    if name == "Ignored" and receiver == "":
        return Entry(module, call.lineno, "ignored", first, None)
    if receiver == "reasons" and name == "append":
        return Entry(module, call.lineno, "readyz", first, None)
    return None


def _entries(module: str, classes: set[str], tree: ast.Module) -> Iterator[Entry]:
    for scope, names in _functions(tree):
        for node in _scope_nodes(scope):
            if isinstance(node, ast.Call):
                entry = _call_entry(node, classes, names, module)
                if entry is not None:
                    yield entry
            elif (
                module == "bridge/routing.py"
                and isinstance(node, ast.Return)
                and isinstance(node.value, ast.Tuple)
            ):
                reason = static_text(node.value.elts[-1], names)  # `return _REF, f"branch ... not in ..."`
                if reason.strip() not in ("", PLACEHOLDER):
                    yield Entry(module, node.lineno, "ignored", reason, None)
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value in ("error", "ignored") and v is not None:
                        text = static_text(v, names)
                        if text.strip() != PLACEHOLDER:
                            yield Entry(module, node.lineno, "http", text, None)


def _is_pass_through(entry: Entry, module: str) -> bool:
    """`ConfigError(message, key=key, hint=hint)` inside the reader re-wraps a message made elsewhere."""
    return entry.key is None and entry.hint is None and module == "bridge/config.py"


def catalogue(root: Path = ROOT) -> list[Entry]:
    files = source_files(root)
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in files}
    classes = error_classes(trees.values())
    entries = [
        entry
        for path, tree in trees.items()
        for entry in _entries(path.relative_to(root).as_posix(), classes, tree)
    ]
    return sorted(set(entries), key=lambda e: (e.module, e.line, e.message))


def doc_blocks(text: str) -> list[str]:
    """The doc's list items, table rows, headings and paragraphs, each normalised on its own line.

    A message must be explained within one of them: matching never runs from one entry into the next.
    """
    blocks: list[str] = []
    for line in text.splitlines():
        if re.match(r"\s{0,3}(- |\d+\. |\||#)", line) or not blocks or not line.strip():
            blocks.append(line)
        else:
            blocks[-1] += "\n" + line
    return [normalise(block) for block in blocks if block.strip()]


def missing(entries: Iterable[Entry], doc_text: str) -> list[Entry]:
    """The entries whose key text is not in the doc (entries with no static text cannot be checked)."""
    blocks = "\n".join(doc_blocks(doc_text))
    return [entry for entry in entries if entry.key is not None and not pattern(entry.key).search(blocks)]


def _describe(entry: Entry) -> str:
    hint = f"  (hint: {entry.hint})" if entry.hint else ""
    return f"{entry.module}:{entry.line} [{entry.kind}] {entry.message}{hint}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--missing", metavar="DOC", type=Path, help="list catalogued messages DOC lacks")
    parser.add_argument("--unchecked", action="store_true", help="list messages with no static text")
    args = parser.parse_args(argv)
    entries = catalogue()
    if args.missing is not None:
        gaps = missing(entries, args.missing.read_text(encoding="utf-8"))
        for entry in gaps:
            print(f"{_describe(entry)}\n    expected in the doc: {entry.key}")
        print(f"{len(gaps)} of {len(entries)} messages are not in {args.missing}", file=sys.stderr)
        return 1 if gaps else 0
    shown = [e for e in entries if e.key is None] if args.unchecked else entries
    for entry in shown:
        print(_describe(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
