"""The package as users install it: the wheel carries the scripts and the man page, and after
every supported install (`pip install .`, `pip install -e .`, a checkout with `bin/` on PATH)
`git help ksplice` and `git ksplice --help` show that page.

git turns `git ksplice --help` into `man git-ksplice`, and man finds pages next to the bin/
directories on PATH (`<dir>/../share/man`, `<dir>/../man`): nothing else tells it where an
install is, so the tests unset MANPATH and rely on that alone. Installs are made offline from
this checkout, into fresh venvs (the build backend is a test extra).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.needs import require
from tests.workflow.conftest import REPO, explain, make_venv, run

PAGE = REPO / "man" / "man1" / "git-ksplice.1"


def reader_env(hermetic: dict[str, str], bin_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in hermetic.items() if k not in ("MANPATH", "PYTHONPATH")}
    # Only this install's bin/ (and the system's), not the checkout's: the page must come
    # from the install being tested.
    system = [d for d in hermetic["PATH"].split(":") if d and Path(d) != REPO / "bin"]
    env.update(PATH=":".join([str(bin_dir), *system]), MANPAGER="cat", PAGER="cat",
               MANWIDTH="100", MAN_KEEP_FORMATTING="0", **extra)
    return env


def assert_git_help_shows_the_page(env: dict[str, str], cwd: Path) -> None:
    require("man-db", "groff-base")
    for cmd in (["git", "help", "ksplice"], ["git", "ksplice", "--help"]):
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, explain(r)
        text = re.sub(r".\x08", "", r.stdout)  # man's overstrike bold and underline
        assert "GIT-KSPLICE(1)" in text, text[:500]
        for word in ("create", "hook install", "ksplice.watch", "EXIT STATUS"):
            assert word in text, f"{word!r} not in `{' '.join(cmd)}`"


def installed_version(env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """(version, sys.prefix) of the git-ksplice that `git ksplice` runs."""
    r = run(["git", "ksplice", "--version"], cwd=cwd, env=env)
    m = re.fullmatch(r"git-ksplice (\S+) \(Python \S+, (.+)\)\n", r.stdout)
    assert m, explain(r)
    return m.group(1), m.group(2)


def pip_install(python: Path, *args: str, cwd: Path) -> None:
    """Offline, without dependencies, and --ignore-installed: the venv sees the outer
    environment's packages, which may hold a git-ksplice already (the README's first
    command installs one); pip must neither skip the install nor touch that one."""
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--no-build-isolation", "--ignore-installed", *args], cwd=cwd, timeout=300,
        env={**_pip_env(), "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def _pip_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)], cwd=tmp_path, timeout=300, env=_pip_env())
    (path,) = wheels.glob("git_ksplice-*.whl")
    return path


def test_the_wheel_carries_the_page(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        pages = [n for n in z.namelist() if n.endswith("share/man/man1/git-ksplice.1")]
        assert len(pages) == 1, z.namelist()
        assert z.read(pages[0]) == PAGE.read_bytes()
        scripts = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt")))
        assert b"git-ksplice = git_ksplice.cli:main" in scripts
        # The patch author's headers, which create copies next to the build tree.
        for header in ("ksplice-patch.h", "kpatch-macros.h", "kpatch-syscall.h"):
            assert z.read(f"git_ksplice/include/{header}") == \
                (REPO / "git_ksplice" / "include" / header).read_bytes()


def test_pip_install_answers_git_help(wheel: Path, tmp_path: Path,
                                      hermetic: dict[str, str]) -> None:
    venv = tmp_path / "venv"
    python = make_venv(venv)
    pip_install(python, str(wheel), cwd=tmp_path)
    assert (venv / "share/man/man1/git-ksplice.1").read_bytes() == PAGE.read_bytes()
    env = reader_env(hermetic, venv / "bin")
    assert_git_help_shows_the_page(env, tmp_path)
    version, prefix = installed_version(env, tmp_path)
    assert Path(prefix) == venv
    title = next(line for line in PAGE.read_text().splitlines() if line.startswith(".TH "))
    assert f'"git\\-ksplice {version}"' in title, title


def test_editable_install_answers_git_help(tmp_path: Path, hermetic: dict[str, str]) -> None:
    """`pip install -e .` (what CONTRIBUTING's developers do) installs the page too, and the
    program it installs is this checkout."""
    venv = tmp_path / "venv"
    python = make_venv(venv)
    pip_install(python, "-e", str(REPO), cwd=tmp_path)
    assert (venv / "share/man/man1/git-ksplice.1").exists()
    env = reader_env(hermetic, venv / "bin")
    assert_git_help_shows_the_page(env, tmp_path)
    r = run([str(venv / "bin" / "python"), "-c",
             "import git_ksplice; print(git_ksplice.__file__)"], cwd=tmp_path, env=env)
    assert Path(r.stdout.strip()).parent == REPO / "git_ksplice", r.stdout


def test_checkout_bin_on_path_answers_git_help(tmp_path: Path,
                                               hermetic: dict[str, str]) -> None:
    """No install at all: `bin/` of the checkout first on PATH; man finds `man/` beside it."""
    env = reader_env(hermetic, REPO / "bin")
    assert_git_help_shows_the_page(env, tmp_path)
