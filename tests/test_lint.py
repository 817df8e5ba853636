"""`ruff check` is part of the suite: CONTRIBUTING asks for a clean tree, and a rule that only
CI's script ran would be skipped by anyone running the README's test command."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_ruff_is_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "git_ksplice",
                        "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_test_modules_have_unique_basenames() -> None:
    """pytest's default import mode (rootdir-relative basenames) refuses to collect two test
    files of the same name in different tiers: the whole run stops at collection."""
    seen: dict[str, str] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        relative = str(path.relative_to(REPO))
        assert path.name not in seen, f"{relative} and {seen[path.name]} share a basename"
        seen[path.name] = relative
