"""The README's promises: its two opening commands are the demo and the test command, the
demo works, and CI runs exactly that test command."""

from __future__ import annotations

import os
import re

from tests.workflow.conftest import BIN, REPO, run


def _opening_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "the README opens with no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_opens_with_the_demo_and_the_test_command() -> None:
    install, tests = _opening_commands()
    assert install == "pip install . && examples/demo.sh"
    assert tests == "python3 tests/run.py"
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line.strip()]
    assert ci[-1] == tests, "the README's test command and .ci/run's must be the same"


def test_the_demo_runs(tmp_path) -> None:
    """The second half of the first command (the install is what CI does first)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               TMPDIR=str(tmp_path))
    r = run([str(REPO / "examples/demo.sh")], cwd=tmp_path, env=env, timeout=300)
    out = r.stdout + r.stderr
    assert "== git ksplice series" in out and "uname: report the system name" in out, out
    # It ends with what to do next, and why `try` is not for the tiny kernel's tarball.
    assert "has no livepatch module" in out and "try is for real kernels" in out, out
    assert "git ksplice create --prebuild" in out.split("Scratch repository:")[1], out
