"""The build made the running kernel's (git_ksplice.toolchain): the release and compiler
pinned from ORIG_CONFIG, a compiler that is not the running kernel's refused naming both,
a Kconfig drift refused naming the options and the likely cause. The real compiler is run;
the real Kconfig drift (pahole) is provoked on the Debian tier."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from git_ksplice.errors import InputError
from git_ksplice.origconfig import KERNEL_JSON, OrigConfig
from git_ksplice.toolchain import (
    RunningKernel,
    check_compiler,
    config_drift,
    pinned_make_args,
    refuse_drift,
    running_kernel,
)

GCC = subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                     check=True).stdout.splitlines()[0]


def _orig(tmp_path: Path, compiler: str, release: str | None = None) -> OrigConfig:
    (tmp_path / ".config").write_text(f'CONFIG_CC_VERSION_TEXT="{compiler}"\nCONFIG_X=y\n')
    if release is not None:
        (tmp_path / KERNEL_JSON).write_text(f'{{"release": "{release}"}}')
    return OrigConfig(tmp_path)


def test_the_release_and_compiler_come_from_orig_config(tmp_path: Path) -> None:
    running = running_kernel(_orig(tmp_path, GCC, "6.1.0-57-amd64"))
    assert running.release == "6.1.0-57-amd64" and running.compiler == GCC
    assert pinned_make_args(running, ["V=0"]) == ["V=0", "KERNELRELEASE=6.1.0-57-amd64"]
    # The user's own wins.
    assert pinned_make_args(running, ["KERNELRELEASE=x"]) == ["KERNELRELEASE=x"]


def test_a_compiler_named_by_the_configuration_is_used_when_it_exists(tmp_path: Path) -> None:
    named = GCC.replace("gcc", "gcc-12", 1) if GCC.startswith("gcc ") else GCC
    running = RunningKernel(None, "", named)
    args = pinned_make_args(running, [])
    import shutil
    assert args == (["CC=gcc-12"] if shutil.which("gcc-12") else [])
    assert pinned_make_args(RunningKernel(None, "", "cc-that-is-not-here 1.0"), []) == []


def test_the_running_kernels_compiler_passes(tmp_path: Path) -> None:
    check_compiler(running_kernel(_orig(tmp_path, GCC)), [])
    check_compiler(RunningKernel(None, "", None), ["CC=nothing-at-all"])  # nothing to check


def test_another_compiler_is_refused_naming_both(tmp_path: Path) -> None:
    running = running_kernel(_orig(tmp_path, "gcc-99 (Imaginary 99.1) 99.1"))
    with pytest.raises(InputError) as e:
        check_compiler(running, [])
    assert "'gcc-99 (Imaginary 99.1) 99.1'" in e.value.message and GCC in e.value.message
    assert "CC=COMMAND" in (e.value.hint or "")
    with pytest.raises(InputError, match="cannot run the compiler CC=no-such-cc"):
        check_compiler(running, ["CC=no-such-cc"])


def test_a_drift_names_the_options_and_the_cause(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("CONFIG_PAHOLE_VERSION=124\nCONFIG_DEBUG_INFO_BTF=y\n"
                                "# CONFIG_Y is not set\nCONFIG_Z=y\n")
    (tmp_path / "b").write_text("CONFIG_PAHOLE_VERSION=0\nCONFIG_Z=y\n")
    drift = config_drift(tmp_path / "a", tmp_path / "b")
    assert drift == [("CONFIG_DEBUG_INFO_BTF", "y", None),
                     ("CONFIG_PAHOLE_VERSION", "124", "0")]
    with pytest.raises(InputError) as e:
        refuse_drift(drift)
    assert "2 options changed" in e.value.message
    assert "CONFIG_PAHOLE_VERSION: 124 -> 0" in e.value.message
    assert "apt-get install dwarves" in (e.value.hint or "")
    refuse_drift([])  # nothing changed: nothing said


def test_a_drift_only_kconfig_reads_is_none(tmp_path: Path) -> None:
    """pahole installed where the running kernel (BTF off) had none: only PAHOLE_VERSION
    moves, which no object reads."""
    (tmp_path / "a").write_text("CONFIG_PAHOLE_VERSION=0\nCONFIG_Z=y\n")
    (tmp_path / "b").write_text("CONFIG_PAHOLE_VERSION=124\nCONFIG_Z=y\n")
    assert config_drift(tmp_path / "a", tmp_path / "b") == []
