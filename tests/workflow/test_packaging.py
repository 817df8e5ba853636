"""The package as users install it: the wheel carries the scripts and the man page, and once
installed `git help ksplice` and `git ksplice --help` show that page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.workflow.conftest import REPO, run


def test_installed_package_answers_git_help(tmp_path: Path) -> None:
    assert shutil.which("man"), "man (man-db) is needed: `git help` runs it"
    wheels = tmp_path / "wheels"
    # Offline, from this checkout: setuptools and wheel are already installed (test extras).
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)], cwd=tmp_path, timeout=300)
    (wheel,) = wheels.glob("git_ksplice-*.whl")
    with zipfile.ZipFile(wheel) as z:
        pages = [n for n in z.namelist() if n.endswith("share/man/man1/git-ksplice.1")]
        assert len(pages) == 1, z.namelist()
        assert z.read(pages[0]) == (REPO / "man/man1/git-ksplice.1").read_bytes()

    prefix = tmp_path / "prefix"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--ignore-installed", "--prefix", str(prefix), str(wheel)], cwd=tmp_path, timeout=300)
    page = prefix / "share/man/man1/git-ksplice.1"
    assert page.exists()
    # man finds pages next to the bin/ directories on PATH (<prefix>/share/man): nothing
    # else tells it where this prefix is.
    env = {k: v for k, v in os.environ.items() if k not in ("MANPATH", "PYTHONPATH")}
    env.update(PATH=f"{prefix / 'bin'}{os.pathsep}{env['PATH']}", MANPAGER="cat",
               PAGER="cat", MANWIDTH="100", MAN_KEEP_FORMATTING="0")
    site = next(prefix.glob("lib/python3*/site-packages"))
    env["PYTHONPATH"] = str(site)
    for cmd in (["git", "help", "ksplice"], ["git", "ksplice", "--help"]):
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        text = re.sub(r".\x08", "", r.stdout)  # man's overstrike bold and underline
        assert "GIT-KSPLICE(1)" in text, text[:500]
        for word in ("create", "hook install", "ksplice.watch", "EXIT STATUS"):
            assert word in text, f"{word!r} not in `{' '.join(cmd)}`"
    # The installed script is the program, with this page's version.
    r = run([str(prefix / "bin/git-ksplice"), "--version"], cwd=tmp_path, env=env)
    assert r.stdout.split()[1] in page.read_text()
