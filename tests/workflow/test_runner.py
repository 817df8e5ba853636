"""The README's test command, `python3 tests/run.py`: it installs what a fresh machine lacks,
stops with the exact command where it cannot, and then runs pytest in its own interpreter.

apt-get is replaced by a recording fake where the runner would install (the real one would
change this machine); everything else is real: the probes, pip's absence or presence, the
distribution's own Python, pytest started at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import needs
from tests.workflow.conftest import REPO, explain

RUNNER = REPO / "tests" / "run.py"


def runner(*args: str, python: str = sys.executable, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, str(RUNNER), *args], capture_output=True, text=True,
                          cwd="/", env=env if env is not None else dict(os.environ),
                          timeout=timeout)


def fake_apt(directory: Path) -> Path:
    """An apt-get that records its arguments and installs nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "apt.log"
    script = directory / "apt-get"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    script.chmod(0o755)
    return log


def path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH on which every command the suite probes is found except `hidden`."""
    d = tmp_path / "path"
    d.mkdir()
    for dirname in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(dirname):
            continue
        for name in os.listdir(dirname):
            target = Path(dirname) / name
            if name not in hidden and not (d / name).exists() and os.access(target, os.X_OK):
                (d / name).symlink_to(target)
    return str(d)


def missing_on(path: str) -> list[str]:
    """The packages tests/needs.py finds missing with PATH=path, in its order."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", path)
        return [p.name for p in needs.missing()]


def test_with_everything_present_it_runs_pytest_and_installs_nothing(
        tmp_path: Path, hermetic: dict[str, str]) -> None:
    absent = needs.missing()
    if absent:
        pytest.skip(f"this machine lacks {[p.name for p in absent]}: "
                    "the runner would install them")
    log = fake_apt(tmp_path / "bin")
    env = dict(hermetic, PATH=f"{tmp_path / 'bin'}{os.pathsep}{hermetic['PATH']}")
    r = runner("--co", "tests/engine/test_writer.py", env=env)
    assert r.returncode == 0, explain(r)
    assert "test_writer.py" in r.stdout, explain(r)  # pytest ran, from the repository's root
    assert not log.exists(), log.read_text()
    assert "installing" not in r.stderr, explain(r)
    assert f"cache: {needs.kernel_cache()}" in r.stderr or "KSPLICE_KERNEL_CACHE" in r.stderr


def test_a_missing_package_is_installed_with_apt_get(tmp_path: Path,
                                                     hermetic: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("as a user, the runner goes through sudo (not tested: it would ask)")
    path = path_without(tmp_path, "zsh", "apt-get")
    log = fake_apt(Path(path))
    absent = missing_on(path)  # zsh, and whatever else this machine lacks
    assert "zsh" in absent
    r = runner("--co", env=dict(hermetic, PATH=path))
    # The fake installs nothing, so the runner must notice that they are still missing.
    assert r.returncode == 1, explain(r)
    assert log.read_text().splitlines() == ["update -qq", f"install -y -qq {' '.join(absent)}"]
    assert f"still missing: {', '.join(absent)}" in r.stderr, explain(r)


def test_without_apt_get_it_stops_naming_the_packages(tmp_path: Path,
                                                      hermetic: dict[str, str]) -> None:
    path = path_without(tmp_path, "zsh", "ccache", "apt-get")
    absent = missing_on(path)
    r = runner("--co", env=dict(hermetic, PATH=path))
    assert r.returncode == 1, explain(r)
    assert f"missing: {', '.join(absent)}" in r.stderr and "--no-install" in r.stderr, \
        explain(r)


def test_no_install_runs_the_tests_that_can_run(tmp_path: Path,
                                                hermetic: dict[str, str]) -> None:
    path = path_without(tmp_path, "zsh", "apt-get")
    r = runner("--no-install", "-rs", "tests/workflow/test_completion.py::test_zsh_completes",
               env=dict(hermetic, PATH=path))
    assert r.returncode == 0, explain(r)
    assert "1 skipped" in r.stdout, explain(r)
    assert re.search(r"zsh not installed: (sudo )?apt-get install -y zsh", r.stdout), explain(r)


def test_a_required_tool_missing_stops_even_without_installing(
        tmp_path: Path, hermetic: dict[str, str]) -> None:
    path = path_without(tmp_path, "gcc", "apt-get")
    r = runner("--no-install", env=dict(hermetic, PATH=path))
    assert r.returncode == 1 and "no tier can run without gcc" in r.stderr, explain(r)


def _distribution_python() -> str | None:
    """A Python >= 3.11 that the distribution manages (PEP 668), without pytest."""
    for candidate in ("/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin/python3.12",
                      "/usr/bin/python3.13"):
        if not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, sysconfig, os, importlib.util as u; "
             "print(sys.version_info >= (3, 11) and sys.prefix == sys.base_prefix and "
             "os.path.exists(os.path.join(sysconfig.get_path('stdlib'), "
             "'EXTERNALLY-MANAGED')) and u.find_spec('pytest') is None)"],
            capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_the_distributions_python_is_told_to_use_a_venv(hermetic: dict[str, str]) -> None:
    python = _distribution_python()
    if python is None:
        pytest.skip("no distribution-managed Python >= 3.11 without pytest on this machine")
    r = runner(python=python, env=hermetic)
    assert r.returncode == 1, explain(r)
    assert "PEP 668" in r.stderr and "python3 -m venv" in r.stderr, explain(r)
    assert ". ~/.venvs/git-ksplice/bin/activate" in r.stderr, explain(r)


def test_an_old_python_is_named(hermetic: dict[str, str]) -> None:
    old = next((p for p in (shutil.which(f"python3.{minor}", path=hermetic["PATH"])
                            for minor in (10, 9, 8, 7)) if p), None)
    if old is None or subprocess.run([old, "-c", ""], capture_output=True).returncode:
        pytest.skip("no Python older than 3.11 on PATH")
    r = runner(python=old, env=hermetic)
    assert r.returncode == 1, explain(r)
    assert "Python 3.11 or later is needed" in r.stderr, explain(r)


def test_the_runner_reads_the_requirements_from_pyproject() -> None:
    sys.path.insert(0, str(RUNNER.parent))  # it imports tests/needs.py as `needs`
    try:
        spec = importlib.util.spec_from_file_location("ksplice_test_runner", RUNNER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RUNNER.parent))
    names = {module._distribution_name(r) for r in module.python_requirements()}
    assert {"pygit2", "rich", "click", "capstone", "pyelftools", "pytest", "ruff"} <= names
    assert module.missing_python_requirements(["no-such-distribution-xyz>=1", "pytest>=8"]) \
        == ["no-such-distribution-xyz>=1"]
