"""ORIG_CONFIG: the directory that describes the running kernel, and its checks.

Ksplice's ORIG_CONFIG holds the running kernel's `.config` and `System.map`, and optionally
`flags` (extra kbuild arguments it was built with), `vmlinux` (its unstripped image) and
`Module.symvers` (the CRCs of its exports). Everything that reads them takes an `OrigConfig`:
the build (its configuration), the livepatch module (symbols, vermagic, CRCs). Plain files,
no git: the engine side may use it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from git_ksplice.errors import InputError

#: What `git ksplice import-kernel` records about the kernel it read (git_ksplice.
#: installed_kernel): release, banner, compiler, vermagic, where each part came from.
KERNEL_JSON = "kernel.json"
#: Present while import-kernel writes ORIG_CONFIG: an interrupted import is never used.
INCOMPLETE = "import-incomplete"


def shell_words(text: str, where: str) -> list[str]:
    """Words of a shell-quoted setting (ORIG_CONFIG's flags, ksplice.makeArgs), or an error
    naming the setting: an unbalanced quote is the user's typo, not a crash."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise InputError(f"cannot read {where}: {e} in {text.strip()!r}",
                         hint="quote the words as a shell would (CC=\"ccache gcc\")") from None


#: What marks a .config as another architecture's (git-ksplice builds x86_64 kernels).
_OTHER_ARCHES = {"CONFIG_X86_32": "32-bit x86", "CONFIG_ARM64": "arm64", "CONFIG_ARM": "arm",
                 "CONFIG_RISCV": "riscv", "CONFIG_PPC": "powerpc", "CONFIG_S390": "s390",
                 "CONFIG_MIPS": "mips", "CONFIG_LOONGARCH": "loongarch"}


@dataclass(frozen=True)
class _TextFormat:
    """What each line of one of ORIG_CONFIG's text files must look like."""

    what: str  # "a kernel configuration"
    line: re.Pattern[str]
    comments: bool  # `#` lines allowed
    hint: str  # where the right file is found
    empty: str  # what is said of a file without such lines


#: A kernel configuration: an empty or foreign .config would build a kernel with every option
#: off (or the wrong one), and every object would differ.
_DOT_CONFIG = _TextFormat("a kernel configuration", re.compile(r"CONFIG_[A-Za-z0-9_]+=.*"),
                          True, "copy the running kernel's .config (from /boot/config-RELEASE "
                                "or its headers package) there",
                          "holds no kernel configuration (no CONFIG_ lines)")
#: `ADDRESS TYPE NAME`, as `nm -n vmlinux` writes them (with a module's name in brackets in
#: /proc/kallsyms copies). Whether its symbols agree with ORIG_CONFIG's vmlinux is checked
#: where both are read (livepatch/symbols.py).
_SYSTEM_MAP = _TextFormat("a System.map", re.compile(r"[0-9a-fA-F]+ [A-Za-z?-] \S+(\s+\[\S+\])?"),
                          False, "copy the running kernel's System.map (from /boot) there",
                          "is empty")


def _check_lines(path: Path, fmt: _TextFormat) -> list[str]:
    """The file's meaningful lines, each of the format; an error naming the first that is
    not, or the file when it has none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read ORIG_CONFIG's {path.name} ({path}): {e.strerror}") \
            from None
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (fmt.comments and line.startswith("#")):
            continue
        if not fmt.line.fullmatch(line.strip()):
            raise InputError(f"{path} is not {fmt.what}: line {n} is {line[:60]!r}",
                             hint=fmt.hint)
        lines.append(line.strip())
    if not lines:
        raise InputError(f"{path} {fmt.empty}", hint=fmt.hint)
    return lines


def _check_architecture(path: Path, settings: list[str]) -> None:
    for line in settings:
        name = line.split("=", 1)[0]
        if name in _OTHER_ARCHES and line.endswith("=y"):
            raise InputError(f"{path} is for {_OTHER_ARCHES[name]} ({line}); git-ksplice "
                             "builds x86_64 kernels")


_SETTING = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


def read_config(path: Path) -> dict[str, str]:
    """A .config's settings: name -> value, `n` for `# CONFIG_X is not set`."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _SETTING.match(line.strip())
        if m:
            if m.group(3):
                out[m.group(3)] = "n"
            else:
                out[m.group(1)] = m.group(2)
    return out


@dataclass(frozen=True)
class OrigConfig:
    """ORIG_CONFIG: what describes the running kernel."""

    path: Path

    @property
    def vmlinux(self) -> Path | None:
        """The running kernel's unstripped image, when ORIG_CONFIG has it."""
        p = self.path / "vmlinux"
        return p if p.exists() else None

    @property
    def vmlinuz(self) -> Path | None:
        """The running kernel's boot image (import-kernel copies it), when there."""
        p = self.path / "vmlinuz"
        return p if p.is_file() else None

    @property
    def modules(self) -> Path | None:
        """The running kernel's shipped modules (`lib/modules/RELEASE/`), when imported."""
        p = self.path / "modules"
        return p if p.is_dir() else None

    def imported(self) -> dict | None:
        """What import-kernel recorded (kernel.json), or None: no import, or a broken one."""
        try:
            info = json.loads((self.path / KERNEL_JSON).read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    @property
    def module_symvers(self) -> Path:
        return self.path / "Module.symvers"

    @property
    def dot_config(self) -> Path:
        return self.path / ".config"

    @property
    def system_map(self) -> Path:
        return self.path / "System.map"

    @property
    def flags(self) -> list[str]:
        """Extra kbuild arguments the running kernel was built with (Ksplice's `flags`)."""
        f = self.path / "flags"
        return shell_words(f.read_text(), f"ORIG_CONFIG's flags ({f})") if f.exists() else []

    def check(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            # Most often the running kernel's .config or System.map itself, given for the
            # directory that holds them.
            way_out = (f"pass the directory that holds it: --config={self.path.parent}"
                       if self.path.name in (".config", "System.map") else "pass --config=DIR")
            raise InputError(f"ORIG_CONFIG {self.path} is a file, not a directory",
                             hint="ORIG_CONFIG is a directory holding the running kernel's "
                                  ".config and System.map (and optionally flags, vmlinux, "
                                  f"Module.symvers): {way_out}")
        if not self.path.is_dir():
            raise InputError(f"ORIG_CONFIG directory {self.path} does not exist",
                             hint="it describes the running kernel: put its .config and "
                                  "System.map there, or pass --config=DIR")
        if (self.path / INCOMPLETE).exists():
            raise InputError(f"ORIG_CONFIG {self.path} is half written: git ksplice "
                             "import-kernel did not finish there",
                             hint="run git ksplice import-kernel again")
        if not self.system_map.is_file():
            raise InputError(f"Failed to find System.map file in ORIG_CONFIG directory "
                             f"{self.path}",
                             hint="copy the running kernel's System.map there")
        if not self.dot_config.is_file():
            raise InputError(f"no .config in ORIG_CONFIG directory {self.path}",
                             hint="copy the running kernel's .config there")
        _check_architecture(self.dot_config, _check_lines(self.dot_config, _DOT_CONFIG))
        _check_lines(self.system_map, _SYSTEM_MAP)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in (self.dot_config, self.path / "flags"):
            h.update(p.read_bytes() if p.exists() else b"-")
        return h.hexdigest()
