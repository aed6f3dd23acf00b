"""Run a buildspec (version 0.2) on this machine the way a CodeBuild host runs it.

What it reproduces, because the packaged buildspecs depend on it:
- phases run in order install, pre_build, build, post_build; a failed install or pre_build ends the
  build (FINALIZING), a failed build still runs post_build with CODEBUILD_BUILD_SUCCEEDING=0;
- one shell per phase (`env.shell`, bash by default) in which every command is sourced, so variables
  and the working directory carry from one command to the next; what the shell has exported (and the
  working directory) carries into the next phase; a command that exits non-zero ends its phase;
- precedence of variables: the StartBuild request's over the buildspec's `env.variables`;
- `env.exported-variables`: their values at the end of the build;
- the log reads like CodeBuild's ("Entering phase BUILD", "Running command ..."), and secret values are
  NOT masked (CodeBuild masks them; here a leak must show, so the tests can prove there is none).

Anything else in a buildspec (artifacts, reports, cache paths, batch, on-failure, finally, secrets
sections) raises, so a test can never pass on a section this runner silently ignored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PHASES = ("install", "pre_build", "build", "post_build")
_ENDS_BUILD_ON_FAILURE = frozenset({"install", "pre_build"})
_SUPPORTED_TOP = frozenset({"version", "env", "phases"})
_SUPPORTED_ENV = frozenset({"shell", "variables", "exported-variables"})
_SUPPORTED_PHASE = frozenset({"commands", "runtime-versions"})


class UnsupportedBuildspecError(ValueError):
    """The buildspec uses a section this runner does not reproduce."""


@dataclass(frozen=True)
class PhaseResult:
    name: str  # CodeBuild's phase type: INSTALL, PRE_BUILD, BUILD, POST_BUILD
    status: str  # SUCCEEDED or FAILED
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    status: str  # SUCCEEDED or FAILED
    phases: tuple[PhaseResult, ...]
    exported: dict[str, str]
    log: str

    def phase(self, name: str) -> PhaseResult | None:
        return next((p for p in self.phases if p.name == name), None)


def env_from_request(kwargs: Mapping[str, Any], secrets: Mapping[str, str] = {}) -> dict[str, str]:
    """The variables a StartBuild request gives the build; SECRETS_MANAGER and PARAMETER_STORE values
    are looked up in `secrets` by their reference (a missing one fails, as CodeBuild's build would)."""
    env: dict[str, str] = {}
    for variable in kwargs.get("environmentVariablesOverride", []):
        kind = variable.get("type", "PLAINTEXT")
        value = variable["value"]
        if kind == "PLAINTEXT":
            env[variable["name"]] = value
        elif value in secrets:
            env[variable["name"]] = secrets[value]
        else:
            raise KeyError(
                f"{kind} reference {value!r} for {variable['name']} is not among the test's secrets"
            )
    return env


def _load(text: str, batch_entry: str | None = None) -> dict[str, Any]:
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict) or str(spec.get("version")) != "0.2":
        raise UnsupportedBuildspecError("only buildspec version 0.2 is supported")
    if batch_entry is not None:
        spec = _batch_build(spec, batch_entry)
    for where, keys, allowed in (
        ("", spec, _SUPPORTED_TOP),
        ("env.", spec.get("env") or {}, _SUPPORTED_ENV),
        *(
            (f"phases.{name}.", body or {}, _SUPPORTED_PHASE)
            for name, body in (spec.get("phases") or {}).items()
        ),
    ):
        extra = set(keys) - allowed
        if extra:
            raise UnsupportedBuildspecError(f"not reproduced by the test runner: {where}{sorted(extra)[0]}")
    unknown = set(spec.get("phases") or {}) - set(PHASES)
    if unknown:
        raise UnsupportedBuildspecError(f"unknown phase {sorted(unknown)[0]}")
    return dict(spec)


def _batch_build(spec: dict[str, Any], identifier: str) -> dict[str, Any]:
    """One build of a `batch: build-graph` as CodeBuild runs it: the same phases, with the entry's
    `env.variables` added (its type, image and compute choose the host, which is this machine here)."""
    graph = (spec.get("batch") or {}).get("build-graph") or []
    entry = next((e for e in graph if e.get("identifier") == identifier), None)
    if entry is None:
        raise UnsupportedBuildspecError(f"no build-graph entry {identifier!r}")
    unknown = set(entry) - {"identifier", "env", "depend-on"}
    if unknown or "buildspec" in (entry.get("env") or {}):
        raise UnsupportedBuildspecError(f"not reproduced by the test runner: build-graph {sorted(unknown)}")
    build = {key: value for key, value in spec.items() if key != "batch"}
    env = dict(build.get("env") or {})
    env["variables"] = {**(env.get("variables") or {}), **((entry.get("env") or {}).get("variables") or {})}
    build["env"] = env
    return build


def run_buildspec(
    text: str,
    *,
    env: Mapping[str, str],
    source_dir: Path,
    batch_entry: str | None = None,
    build_id: str = "bridge-test:00000000-0000-0000-0000-000000000000",
    phase_timeout: float = 600,
) -> BuildResult:
    """Run `text` in `source_dir` with `env` (the StartBuild variables over this process's PATH/HOME);
    `batch_entry` runs one build of the buildspec's build graph."""
    spec = _load(text, batch_entry)
    spec_env = spec.get("env") or {}
    shell = str(spec_env.get("shell") or "bash")
    state: dict[str, str] = {key: str(value) for key, value in (spec_env.get("variables") or {}).items()}
    state.update(env)
    state.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    state.setdefault("HOME", os.environ.get("HOME", "/root"))
    state.update(
        CODEBUILD_SRC_DIR=str(source_dir),
        CODEBUILD_BUILD_ID=build_id,
        CODEBUILD_BUILD_SUCCEEDING="1",
    )
    cwd = source_dir
    log: list[str] = []
    results: list[PhaseResult] = []
    status = "SUCCEEDED"
    phases = spec.get("phases") or {}
    with tempfile.TemporaryDirectory(prefix="buildspec-") as scratch:
        work = Path(scratch)
        for name in PHASES:
            if (
                name == "post_build"
                and status == "FAILED"
                and any(r.status == "FAILED" and r.name.lower() in _ENDS_BUILD_ON_FAILURE for r in results)
            ):
                break
            commands = [str(c) for c in ((phases.get(name) or {}).get("commands") or [])]
            if name not in phases:
                continue
            log.append(f"[Container] Entering phase {name.upper()}\n")
            started = time.monotonic()
            ok, state, cwd, output = _run_phase(work, name, commands, shell, state, cwd, phase_timeout)
            log.append(output)
            results.append(
                PhaseResult(name.upper(), "SUCCEEDED" if ok else "FAILED", time.monotonic() - started)
            )
            log.append(f"[Container] Phase complete: {name.upper()} State: {results[-1].status}\n")
            if not ok:
                status = "FAILED"
                state["CODEBUILD_BUILD_SUCCEEDING"] = "0"
                if name in _ENDS_BUILD_ON_FAILURE:
                    break
    exported = {name: state[name] for name in spec_env.get("exported-variables") or [] if name in state}
    return BuildResult(status, tuple(results), exported, "".join(log))


def _run_phase(
    work: Path,
    phase: str,
    commands: list[str],
    shell: str,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
) -> tuple[bool, dict[str, str], Path, str]:
    """One shell for the phase, each command sourced into it; env and cwd are saved however it exits."""
    env_file, cwd_file = work / f"{phase}.env", work / f"{phase}.cwd"
    lines = [
        "__bridge_exit() {",
        "  __bridge_status=$?",
        f'  env -0 > "{env_file}"; pwd > "{cwd_file}"',
        '  if [ "$__bridge_status" -ne 0 ]; then',
        "    printf '[Container] Command did not exit successfully %s exit status %s\\n'"
        ' "$__bridge_command" "$__bridge_status"',
        "  fi",
        "}",
        "trap __bridge_exit EXIT",
    ]
    for number, command in enumerate(commands):
        path = work / f"{phase}.{number}.sh"
        path.write_text(command + "\n", encoding="utf-8")
        first = command.strip().splitlines()[0] if command.strip() else ""
        lines += [
            f"__bridge_command={_quote(first)}",
            "printf '[Container] Running command %s\\n' \"$__bridge_command\"",
            f'. "{path}" || exit "$?"',
        ]
    script = work / f"{phase}.sh"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    process = subprocess.Popen(
        [shell, "--noprofile", "--norc", str(script)] if shell == "bash" else [shell, str(script)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        return (
            False,
            env,
            cwd,
            out.decode(errors="replace") + f"[Container] Phase timed out after {timeout} s\n",
        )
    new_env = env
    if env_file.exists():
        pairs = (
            item.partition("=") for item in env_file.read_bytes().decode(errors="replace").split("\0") if item
        )
        new_env = {key: value for key, _, value in pairs if key not in ("PWD", "OLDPWD", "SHLVL", "_")}
    new_cwd = Path(cwd_file.read_text(encoding="utf-8").strip()) if cwd_file.exists() else cwd
    return process.returncode == 0, new_env, new_cwd, out.decode(errors="replace")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
