"""The tool the workflow tier starts runs in the same Python environment as pytest.

The tier runs `git ksplice` as a user does, through git's dispatch to `bin/git-ksplice`, whose
`#!/usr/bin/env python3` picks whatever `python3` is first on PATH. If that were not the
interpreter running pytest (a venv's packages lost, pyenv's shim resolving elsewhere), every
test would fail with `No module named 'rich'` in a venv, while CI, which installs into the
system Python, would never see it. `--version` reports the interpreter and its sys.prefix.
"""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

from tests.workflow.conftest import explain, hermetic_env, make_venv, run


def reported_environment(env: dict[str, str], cwd: Path, *cmd: str) -> tuple[str, str]:
    """(Python version, sys.prefix) that `cmd --version` says it runs under."""
    r = run([*cmd, "--version"], cwd=cwd, env=env)
    m = re.fullmatch(r"\S+ \S+ \(Python (\S+), (.+)\)\n", r.stdout)
    assert m, explain(r)
    return m.group(1), m.group(2)


def test_the_tool_runs_in_pytests_environment(tmp_path: Path,
                                              hermetic: dict[str, str]) -> None:
    here = (platform.python_version(), sys.prefix)
    assert reported_environment(hermetic, tmp_path, "git", "ksplice") == here
    assert reported_environment(hermetic, tmp_path, "git-ksplice") == here
    assert reported_environment(hermetic, tmp_path, "ksplice-create") == here


def test_a_venv_stays_the_venv(tmp_path: Path) -> None:
    """Pinned to a venv's interpreter, the tool runs in that venv, not in its base (what a
    symlink to the venv's python outside the venv does)."""
    venv = tmp_path / "venv"
    python = make_venv(venv)
    env = hermetic_env(tmp_path / "home", python=str(python))
    version, prefix = reported_environment(env, tmp_path, "git", "ksplice")
    assert Path(prefix) == venv, f"the tool ran under {prefix}, not in the venv {venv}"
    assert version == platform.python_version()
