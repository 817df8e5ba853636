"""What the test suite needs from the machine, in one table: the runner and the tests share it.

`tests/run.py` (the README's test command) installs what is missing from this table before it
starts pytest; a test that needs an optional tool calls `require()`, which skips it with the
install line when the tool is absent. Keeping both on one table means the skip message and
the runner can never disagree about a package's name.

Tools are probed by what the tests actually run (a command on PATH, a file), not by asking a
package manager: the same probes work on any distribution, and the package names are
Debian's because Debian's are what the runner can install (`apt-get`).

Standard library only: the runner imports this before pytest or the project's dependencies
are installed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: The kernel source the real-kernel tier builds (Debian's linux-source-6.1 package).
LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")


def _commands(*names: str) -> Callable[[], bool]:
    return lambda: all(shutil.which(n) is not None for n in names)


def _file(path: str) -> Callable[[], bool]:
    return lambda: os.path.exists(path)


def _static_busybox() -> bool:
    """The initramfs `try` boots needs a busybox that runs without a dynamic loader."""
    path = shutil.which("busybox")
    if path is None:
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"ld-linux" not in head


@dataclass(frozen=True)
class Package:
    """A Debian package, the probe that says its part is present, and who needs it."""

    name: str
    present: Callable[[], bool]
    needed_by: str
    required: bool = False  # without it no tier runs at all


PACKAGES: tuple[Package, ...] = (
    Package("gcc", _commands("gcc"), "every tier", required=True),
    Package("binutils", _commands("as", "ld", "readelf", "nm", "objcopy", "ar"), "every tier",
            required=True),
    Package("make", _commands("make"), "every tier", required=True),
    Package("git", _commands("git"), "every tier", required=True),
    Package("patch", _commands("patch"), "the workflow tier (--patch)", required=True),
    Package("clang", _commands("clang"),
            "the engine tier's behaviour tests built as a clang-built kernel builds them"),
    Package("ccache", _commands("ccache"), "the workflow tier's ccache test"),
    Package("man-db", _commands("man"), "the man page tests (git help runs man)"),
    Package("groff-base", _commands("nroff"), "the man page tests (man renders with groff)"),
    Package("bash-completion", _file("/usr/share/bash-completion/bash_completion"),
            "the bash completion tests"),
    Package("zsh", _commands("zsh"), "the zsh completion tests"),
    Package("busybox-static", _static_busybox, "git ksplice try and the real-kernel tier"),
    Package("cpio", _commands("cpio"), "git ksplice try's initramfs test"),
    Package("qemu-system-x86", _commands("qemu-system-x86_64"), "the real-kernel tier"),
    Package("linux-source-6.1", _file(str(LINUX_SOURCE)), "the real-kernel tier"),
    Package("xz-utils", _commands("xz"), "the real-kernel tier (unpacks linux-source)"),
    Package("flex", _commands("flex"), "the real-kernel tier (kbuild)"),
    Package("bison", _commands("bison"), "the real-kernel tier (kbuild)"),
    Package("bc", _commands("bc"), "the real-kernel tier (kbuild)"),
    Package("libelf-dev", _file("/usr/include/gelf.h"), "the real-kernel tier (objtool)"),
    Package("libssl-dev", _file("/usr/include/openssl/evp.h"),
            "the Debian tier (its configuration builds scripts/sign-file and certs)"),
    Package("dwarves", _commands("pahole"),
            "the Debian tier (its configuration's BTF options need pahole)"),
    Package("openssl", _commands("openssl"), "the Debian tier (a module signing key)"),
)

_BY_NAME = {p.name: p for p in PACKAGES}


def corpus_dir() -> Path:
    """kpatch's unit-test object pairs with their expected verdicts (the engine tier's
    corpus tests): beside the checkout in the project's workspace, or KSPLICE_CORPUS."""
    default = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "kpatch-unit-x86_64"
    return Path(os.environ.get("KSPLICE_CORPUS", default))


def kernel_cache() -> Path:
    """Where the real-kernel tier keeps its two Linux builds (about 5 GB)."""
    return Path(os.environ.get("KSPLICE_KERNEL_CACHE",
                               Path.home() / ".cache" / "git-ksplice"))


def missing() -> list[Package]:
    return [p for p in PACKAGES if not p.present()]


def install_line(names: list[str]) -> str:
    """The command a user runs to install `names` (as root, or through sudo otherwise)."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install -y {' '.join(names)}"


def require(*names: str) -> None:
    """Skip the calling test unless these packages' parts are present, naming the install
    line: an optional tool's absence is the machine's state, not the tool's failure."""
    import pytest

    absent = [n for n in names if not _BY_NAME[n].present()]
    if absent:
        pytest.skip(f"{', '.join(absent)} not installed: {install_line(absent)} "
                    "(python3 tests/run.py installs everything the suite needs)")
