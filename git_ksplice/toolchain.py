"""The build made the running kernel's: its release pinned, its compiler found and checked,
its configuration proven unchanged by this machine's Kconfig.

An update's objects must be compiled as the running kernel's were, or every one differs (and
the module's vermagic is refused at load). Three things decide it beyond the source:
- **The release string** (`uname -r`, the vermagic of every module). kbuild derives it from
  the tree: `6.1.192` from a tarball, `6.1.192+` from a git checkout (setlocalversion),
  `6.1.0-57-amd64` only with Debian's `.kernelvariables`. So it is read from ORIG_CONFIG (what
  `import-kernel` recorded, else the banner in `vmlinux` or `vmlinuz`) and given to make as
  `KERNELRELEASE=`, which kbuild writes into utsrelease.h: no `LOCALVERSION=` to know.
- **The compiler.** `CONFIG_CC_VERSION_TEXT` in the running kernel's `.config` is the first
  line of its compiler's `--version` (`gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`). Without a
  `CC=` of the user's, the command that text names (`gcc-12`) is used when it exists, else
  kbuild's default (`gcc`, or `clang` with `LLVM=1`); either way its `--version` must say
  the same, or the build is refused naming both.
- **The configuration.** `make olddefconfig` into a scratch file must change nothing: Kconfig
  asks the machine (`PAHOLE_VERSION`, the compiler's and linker's versions and features) and
  a missing pahole drops the BTF options, which changes every object. A drift is refused
  naming the options and the likely cause.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from git_ksplice.errors import InputError
from git_ksplice.kbuild import make_environment
from git_ksplice.kernel_image import banner, banner_in_file, unpack_bzimage
from git_ksplice.origconfig import KERNEL_JSON, OrigConfig, read_config
from git_ksplice.words import count

#: option prefix -> the likely cause of its drift, first match wins
_DRIFT_CAUSES = (
    ("CONFIG_PAHOLE", "pahole is missing or another version here (Debian: apt-get install "
                      "dwarves)"),
    ("CONFIG_DEBUG_INFO_BTF", "pahole is missing or another version here (Debian: apt-get "
                              "install dwarves)"),
    ("CONFIG_CC_", "the compiler here is not the running kernel's"),
    ("CONFIG_GCC_", "the compiler here is not the running kernel's"),
    ("CONFIG_CLANG_", "the compiler here is not the running kernel's"),
    ("CONFIG_LD_", "the linker (binutils) here is not the running kernel's"),
    ("CONFIG_AS_", "the assembler (binutils) here is not the running kernel's"),
    ("CONFIG_RUST", "the Rust toolchain here is not the running kernel's"),
)
#: Options that change no object by themselves: pahole's version and features are read only
#: by Kconfig and by the BTF steps, so whatever they change shows as the drift of the BTF
#: options (pahole 1.24 installed where the running kernel, BTF off, had none turns
#: PAHOLE_VERSION from 0 to 124 and nothing else).
_KCONFIG_ONLY = ("CONFIG_PAHOLE_",)


@dataclass(frozen=True)
class RunningKernel:
    """What ORIG_CONFIG says the running kernel is."""

    release: str | None
    #: where the release was read ("kernel.json", "vmlinux's banner", ...)
    release_from: str
    #: CONFIG_CC_VERSION_TEXT of its .config (None: a kernel older than 5.8)
    compiler: str | None


def running_kernel(orig: OrigConfig) -> RunningKernel:
    compiler = read_config(orig.dot_config).get("CONFIG_CC_VERSION_TEXT")
    compiler = compiler.strip('"') if compiler else None
    release = (orig.imported() or {}).get("release")
    if isinstance(release, str) and release:
        return RunningKernel(release, f"ORIG_CONFIG's {KERNEL_JSON}", compiler)
    if orig.vmlinux is not None:
        found = banner_in_file(orig.vmlinux)
        if found is not None:
            return RunningKernel(found.release, "the banner in ORIG_CONFIG's vmlinux",
                                 compiler)
    vmlinuz = orig.vmlinuz
    if vmlinuz is not None:
        try:
            found_banner = banner(unpack_bzimage(vmlinuz.read_bytes(), str(vmlinuz)))
        except (OSError, InputError):
            found_banner = None  # an image this cannot unpack: the release is not pinned
        if found_banner is not None:
            return RunningKernel(found_banner.release, "the banner in ORIG_CONFIG's vmlinuz",
                                 compiler)
    return RunningKernel(None, "", compiler)


def pinned_make_args(running: RunningKernel, make_args: list[str]) -> list[str]:
    """`make_args` with the running kernel's release and compiler, unless the user gave
    their own (`KERNELRELEASE=`, `CC=`)."""
    args = list(make_args)
    if running.release and not _given(args, "KERNELRELEASE"):
        args.append(f"KERNELRELEASE={running.release}")
    if running.compiler and not _given(args, "CC"):
        named = running.compiler.split()[0]
        if named != "gcc" and shutil.which(named):
            args.append(f"CC={named}")
    return args


def _given(args: list[str], name: str) -> bool:
    return _last_value(args, name) is not None


def _last_value(args: list[str], name: str) -> str | None:
    """The value of make's `NAME=...` among `args` (the last one: make takes it)."""
    return next((a.split("=", 1)[1] for a in reversed(args) if a.startswith(name + "=")),
                None)


def check_compiler(running: RunningKernel, make_args: list[str]) -> None:
    """The compiler make will use says what the running kernel's said (its first line of
    `--version`), or the build is refused naming both."""
    if running.compiler is None:
        return
    llvm = _last_value(make_args, "LLVM") or ""
    default = "clang" if llvm == "1" else f"clang{llvm}" if llvm.startswith("-") else "gcc"
    cc = _last_value(make_args, "CC") or default
    try:
        words = shlex.split(cc) or [default]
    except ValueError as e:
        raise InputError(f"cannot read CC={cc}: {e}", hint="quote it as a shell would") \
            from None
    way_out = ("install that compiler, or name it: CC=COMMAND in ORIG_CONFIG's flags or "
               "git config ksplice.makeArgs 'CC=COMMAND'")
    try:
        r = subprocess.run([*words, "--version"], capture_output=True, text=True,
                           env=make_environment(), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InputError(f"cannot run the compiler CC={cc}: {e}", hint=way_out) from None
    said = (r.stdout.splitlines() or [""])[0].strip()
    if said != running.compiler:
        raise InputError(f"the running kernel was built with '{running.compiler}' (its "
                         f".config's CONFIG_CC_VERSION_TEXT), but CC={cc} here is "
                         f"'{said or r.stderr.strip()[:100]}': every object would differ "
                         "from the running kernel's", hint=way_out)


def config_drift(orig_config: Path, synced: Path) -> list[tuple[str, str | None, str | None]]:
    """(option, running kernel's value, this machine's) for every option `olddefconfig`
    changed; an option absent from a file is off. Nothing when only options no object reads
    changed (`_KCONFIG_ONLY`)."""
    a, b = read_config(orig_config), read_config(synced)
    drift = [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
             if a.get(k, "n") != b.get(k, "n")]
    if all(k.startswith(_KCONFIG_ONLY) for k, _, _ in drift):
        return []
    return drift


def refuse_drift(drift: list[tuple[str, str | None, str | None]]) -> None:
    if not drift:
        return
    shown = "; ".join(f"{k}: {old or 'unset'} -> {new or 'unset'}" for k, old, new in drift[:8])
    causes = sorted({cause for k, _, _ in drift for prefix, cause in _DRIFT_CAUSES
                     if k.startswith(prefix)})
    cause = "; ".join(causes) or ("the source is not the running kernel's, or the .config is "
                                  "not its build configuration (Debian's is the headers "
                                  "package's, not /boot's)")
    raise InputError(f"this machine's Kconfig changes the running kernel's configuration: "
                     f"{count(len(drift), 'option')} changed "
                     f"({shown}{'; ...' if len(drift) > 8 else ''})"
                     ": every object would differ from the running kernel's",
                     hint=f"likely cause: {cause}")


__all__ = ["RunningKernel", "check_compiler", "config_drift",
           "pinned_make_args", "refuse_drift", "running_kernel"]
