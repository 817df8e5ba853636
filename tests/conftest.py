"""Shared test plumbing: where the repository and the reference corpus are, ELF checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import needs

REPO = Path(__file__).resolve().parents[1]
CORPUS = needs.corpus_dir()


def run_ksplice(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `git-ksplice` as a user does: a new process, the real entry point."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "git_ksplice", *args], capture_output=True,
                          text=True, env=env, check=check, cwd=REPO)


def assert_valid_object(path: Path, tmp_path: Path) -> None:
    """What we write must be readable by binutils without complaint and link with ld -r."""
    r = subprocess.run(["readelf", "-a", "--wide", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), f"readelf complains: {r.stderr}"
    linked = tmp_path / (path.stem + ".ld-r.o")
    r = subprocess.run(["ld", "-r", str(path), "-o", str(linked)], capture_output=True,
                       text=True)
    assert r.returncode == 0, f"ld -r failed: {r.stderr}"


#: Why the corpus tests are skipped, and how to get them run.
CORPUS_MISSING = (
    f"kpatch's unit-test object pairs are not at {CORPUS} (no expectations.json): set "
    "KSPLICE_CORPUS=DIR to a copy of the corpus (in the project's workspace it is "
    "shared/corpus/kpatch-unit-x86_64, beside the checkout)")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "expectations.json").exists():
        pytest.skip(CORPUS_MISSING)
    return CORPUS
