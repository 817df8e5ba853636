"""The README's test command: make this machine able to run the suite, then run it.

    python3 tests/run.py [--no-install] [PYTEST ARGS...]

A fresh clone on a fresh machine needs three things before pytest can pass: the project's
Python dependencies and test extras in the interpreter that runs the tests, the system tools
the tiers drive (gcc, make, qemu, Debian's kernel source, ...; `tests/needs.py`), and pytest
itself. This script installs what is missing, through pip into *this* interpreter (so a venv
gets them, not the system's Python) and through apt-get (as root, or through sudo), then
replaces itself with `python3 -m pytest -q` from the repository's root. Where it cannot
install, it stops with the exact command to run instead. When nothing is missing it asks
neither pip nor apt anything, so a second run starts the tests at once.

The project itself is not installed: the tests run the checkout (`pythonpath = ["."]`), and an
editable install the developer made stays as it is. `--no-install` installs nothing; tests
whose optional tools are missing are then skipped with the install line.

Standard library only, and no syntax newer than Python 3.7: an old `python3` must get a clear
message, not a SyntaxError.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import needs  # tests/needs.py: this script's directory is first on sys.path

REPO = Path(__file__).resolve().parents[1]

MIN_PYTHON = (3, 11)


class Stop(Exception):
    """The machine cannot run the suite as it is; the message says what to do."""


def main(argv: list[str]) -> int:
    install = "--no-install" not in argv
    pytest_args = [a for a in argv if a != "--no-install"]
    try:
        check_python()
        if install:
            install_python_requirements()
            install_system_packages()
        check_required_tools()
    except Stop as e:
        print(f"tests/run.py: {e}", file=sys.stderr)
        return 1
    describe_tiers()
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(REPO)
    os.execv(sys.executable, [sys.executable, "-m", "pytest", "-q", *pytest_args])
    return 0  # not reached


# -- Python ----------------------------------------------------------------------------------


def check_python() -> None:
    if sys.version_info < MIN_PYTHON:
        raise Stop(f"Python {'.'.join(map(str, MIN_PYTHON))} or later is needed, this is "
                   f"{sys.version.split()[0]} ({sys.executable}): run it with a newer "
                   "python3, or make a venv from one")


def python_requirements() -> list[str]:
    """The project's dependencies and its `test` extra, from pyproject.toml."""
    import tomllib  # (3.11+, checked above)

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def _distribution_name(requirement: str) -> str:
    for i, c in enumerate(requirement):
        if not (c.isalnum() or c in "-_."):
            return requirement[:i]
    return requirement


def missing_python_requirements(requirements: list[str]) -> list[str]:
    """Requirements this interpreter does not have installed at all. (Versions are left to
    pip: when everything is there, pip is not started, and a too-old version that is there
    shows up as the test failure it causes.)"""
    from importlib import metadata

    absent = []
    for req in requirements:
        try:
            metadata.version(_distribution_name(req))
        except metadata.PackageNotFoundError:
            absent.append(req)
    return absent


def in_venv() -> bool:
    return sys.prefix != sys.base_prefix


def externally_managed() -> bool:
    """PEP 668: a distribution's own Python (Debian's /usr/bin/python3) refuses pip installs
    outside a venv; pip's own message would not say what to do for this project."""
    return not in_venv() and (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()


def _venv_lines() -> str:
    venv = "~/.venvs/git-ksplice"
    return (f"  python3 -m venv {venv}\n  . {venv}/bin/activate\n  python3 tests/run.py")


def install_python_requirements() -> None:
    absent = missing_python_requirements(python_requirements())
    if not absent:
        return
    if externally_managed():
        raise Stop(f"{sys.executable} is the distribution's own Python, which does not take "
                   f"pip installs (PEP 668), and it lacks {', '.join(absent)}; run the tests "
                   f"from a venv:\n{_venv_lines()}")
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
        raise Stop(f"{sys.executable} has no pip (Debian: apt-get install python3-pip), or "
                   f"make a venv, which has its own:\n{_venv_lines()}")
    print(f"tests/run.py: installing {', '.join(absent)} into {sys.prefix}", file=sys.stderr)
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run([*pip, "install", "-q", *python_requirements()], env=env)
    if r.returncode != 0:
        raise Stop(f"pip could not install the test requirements (exit {r.returncode}, its "
                   f"message is above); the same command by hand:\n  {sys.executable} -m pip "
                   f"install '.[test]'")


# -- system packages -------------------------------------------------------------------------


def install_system_packages() -> None:
    absent = [p.name for p in needs.missing()]
    if not absent:
        return
    line = needs.install_line(absent)
    if shutil.which("apt-get") is None:
        raise Stop(f"missing: {', '.join(absent)} (Debian's names); this machine has no "
                   "apt-get: install the same tools with its package manager, or run "
                   "`python3 tests/run.py --no-install` to skip the tests that need them")
    as_root = _root_command()
    if as_root is None:
        raise Stop(f"missing system packages: {', '.join(absent)}; install them with\n"
                   f"  {line}\nthen run this again (or `python3 tests/run.py --no-install`: "
                   "the tests that need them are skipped)")
    print(f"tests/run.py: installing {', '.join(absent)} with apt-get", file=sys.stderr)
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *absent]):
        r = subprocess.run([*as_root, "DEBIAN_FRONTEND=noninteractive", *cmd],
                           stdout=subprocess.DEVNULL)
        if r.returncode != 0:
            raise Stop(f"`{' '.join(cmd)}` failed (exit {r.returncode}); install the "
                       f"packages by hand:\n  {line}")
    still = [p.name for p in needs.missing()]
    if still:
        raise Stop(f"installed, yet still missing: {', '.join(still)}: is something "
                   "shadowing them on PATH?")


def _root_command() -> list[str] | None:
    """How to run a command as root: `env` when we are root, sudo when it can be used (it
    may ask for a password on a terminal), None otherwise."""
    if os.geteuid() == 0:
        return ["env"]
    if shutil.which("sudo") is None:
        return None
    if sys.stdin.isatty():
        return ["sudo", "env"]
    if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", "env"]
    return None


def check_required_tools() -> None:
    absent = [p.name for p in needs.missing() if p.required]
    if absent:
        raise Stop(f"no tier can run without {', '.join(absent)}: "
                   f"{needs.install_line(absent)}")


# -- what will run ---------------------------------------------------------------------------


def describe_tiers() -> None:
    """Two lines before a run that may take a long time: what the slow tier will cost, and
    what is skipped because something is absent."""
    cache = needs.kernel_cache()
    warm = any(cache.glob("linux-6.1-*/repo.done")) if cache.is_dir() else False
    state = ("warm" if warm else
             "empty: the first run builds Linux 6.1 twice, about 12 minutes on 2 cores and "
             "5 GB")
    print(f"tests/run.py: real-kernel tier's cache: {cache} ({state}; "
          "KSPLICE_KERNEL_CACHE=DIR moves it)", file=sys.stderr)
    corpus = needs.corpus_dir()
    if not (corpus / "expectations.json").exists():
        print(f"tests/run.py: no kpatch corpus at {corpus}: its tests are skipped "
              "(KSPLICE_CORPUS=DIR names another copy)", file=sys.stderr)
    skipped = needs.missing()
    if skipped:
        print("tests/run.py: skipped for want of "
              + "; ".join(f"{p.name} ({p.needed_by})" for p in skipped), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
