"""What git-ksplice knows of kbuild: its flags, its records, and the make calls around a build.

Plain files and make, no git: both the workflow (`build`, `pipeline`) and the livepatch module
builder use it, so that facts about kbuild are written once:
- `KSPLICE_KCFLAGS`, what git-ksplice adds to the kernel's compiler flags, and the include
  directory of the patch author's headers (`install_author_headers`);
- which target (vmlinux or a module) each compiled unit links into, from kbuild's own records
  (`modules.order`, `.mod` files, `vmlinux.a`/`built-in.a`), and where a module's `.ko` is;
- the environment a make of ours runs in, and the small make calls: `kernelrelease`, an
  external module (`M=`), a tree's modules rebuilt without our flags.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from git_ksplice.errors import BuildError

#: What git-ksplice adds to the kernel's compiler flags: one section per function and per
#: data object, so that the differ can compare and extract them one by one.
KSPLICE_KCFLAGS = "-ffunction-sections -fdata-sections"

#: The headers a patch includes for the author's API (callbacks, ignore marks, data
#: changes; `ksplice-patch.h` and kpatch's names), shipped in the package.
AUTHOR_HEADERS = Path(__file__).resolve().parent / "include"

#: Variables of an outer make (a `make` that runs git-ksplice) that must not reach ours: its
#: jobserver and flags would take over our -j and our targets.
_OUTER_MAKE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def make_environment(*, without_kcflags: bool = False) -> dict[str, str]:
    """The environment of a make of ours: the user's, without an outer make's (and, for a
    module built like the running kernel's, without KCFLAGS)."""
    drop = _OUTER_MAKE + (("KCFLAGS",) if without_kcflags else ())
    return {k: v for k, v in os.environ.items() if k not in drop}


def install_author_headers(where: Path) -> Path:
    """The package's patch-author headers copied into `where`, which is returned: the
    directory both builds of a tree get with -I.

    Copied rather than pointed at: -I is part of every object's command line, so a path that
    moved with the tool (another venv, another checkout) would make kbuild rebuild the whole
    tree. A file is rewritten only when it differs, so that kbuild rebuilds what includes it
    only when it changed."""
    where.mkdir(parents=True, exist_ok=True)
    for header in sorted(AUTHOR_HEADERS.glob("*.h")):
        dst = where / header.name
        data = header.read_bytes()
        try:
            if dst.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(dst)
    return where


def with_ksplice_kcflags(make_args: list[str], include: Path | None = None) -> list[str]:
    """`KCFLAGS=...` for make with our flags (and `-I include`, the author's headers) added
    to any the user's arguments already give (the user's one removed from the list: make
    takes the last)."""
    args = list(make_args)
    kcflags = KSPLICE_KCFLAGS + (f" -I{include}" if include is not None else "")
    ours = kcflags
    for i, a in enumerate(args):
        if a.startswith("KCFLAGS="):
            kcflags = a.split("=", 1)[1] + " " + ours
            del args[i]
            break
    return [f"KCFLAGS={kcflags}", *args]


def _logged_make(cmd: list[str], log: Path, env: dict[str, str],
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a short make (its output is small), appending the command and its output to
    `log`."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + r.stdout + r.stderr)
    return r


def build_external_module(tree: Path, directory: Path, make_args: list[str], jobs: int,
                          log: Path, *, what: str) -> None:
    """`make -C tree M=directory modules`: a module built against the pristine tree, so that
    vermagic, `__versions` and modpost are the running kernel's. Without our KCFLAGS: the
    running kernel's modules were built with the user's flags alone (ORIG_CONFIG's `flags`,
    ksplice.makeArgs), which `make_args` holds."""
    cmd = ["make", f"-j{jobs}", "-C", str(tree), f"M={directory}", *make_args, "modules"]
    r = _logged_make(cmd, log, make_environment(without_kcflags=True))
    if r.returncode != 0:
        errors = [line for line in (r.stdout + r.stderr).splitlines()
                  if "error" in line.lower() or "undefined" in line]
        raise BuildError(f"building {what} failed:\n  " + "\n  ".join(errors[-15:]),
                         hint=f"full log: {log}")


def kernel_release(tree: Path, make_args: list[str]) -> str:
    """The release the build gives its modules: a `KERNELRELEASE=` given to make (kbuild's
    `kernelrelease` target ignores it), else `make kernelrelease` of the tree, or
    `unknown`."""
    given = [a.split("=", 1)[1] for a in make_args if a.startswith("KERNELRELEASE=")]
    if given:
        return given[-1]
    r = subprocess.run(["make", "-s", *make_args, "kernelrelease"], cwd=tree,
                       capture_output=True, text=True, env=make_environment())
    lines = r.stdout.strip().splitlines()
    return lines[-1] if r.returncode == 0 and lines else "unknown"


def compiler_version() -> str:
    """The first line of `gcc --version`, or `unknown`."""
    try:
        r = subprocess.run(["gcc", "--version"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else "unknown"


def module_ko_path(tree: Path, name: str) -> str | None:
    """The `.ko` of module `name` (as the kernel names it: `-` made `_`), relative to the
    tree, from `modules.order`; None when the tree builds no such module."""
    order = tree / "modules.order"
    if not order.exists():
        return None
    for ko in order.read_text().split():
        if Path(ko).stem.replace("-", "_") == name:
            return ko if ko.endswith(".ko") else ko[:-2] + ".ko"
    return None


def module_file(tree: Path, name: str) -> Path | None:
    """The built .ko of module `name`, when it exists."""
    rel = module_ko_path(tree, name)
    return tree / rel if rel is not None and (tree / rel).exists() else None


def is_linux_tree(tree: Path) -> bool:
    """A Linux kbuild tree (livepatch modules can be built against it)."""
    return (tree / "scripts" / "Makefile.modpost").exists() and \
        (tree / "include" / "linux" / "livepatch.h").exists()


def target_map(tree: Path) -> dict[str, str]:
    """Each compiled unit of the tree -> the target it links into: `vmlinux`, or a module
    name (`-` made `_`, as the kernel names modules), read from kbuild's own records:
    `modules.order` and each module's `.mod` file, and the members of `vmlinux.a` (or the
    `built-in.a` archives where there is no vmlinux.a)."""
    targets: dict[str, str] = {}
    order = tree / "modules.order"
    if order.exists():
        for ko in order.read_text().split():
            stem = ko.removesuffix(".ko") if ko.endswith(".ko") else ko.removesuffix(".o")
            name = Path(stem).name.replace("-", "_")
            mod = tree / (stem + ".mod")
            if mod.exists():
                for obj in mod.read_text().split():
                    targets[_normalise(obj)] = name
    # vmlinux.a is made when vmlinux links; the top-level built-in.a as soon as objects are
    # compiled (a patched build that does not link still lists a new file's object there).
    for archive in ("vmlinux.a", "built-in.a"):
        for obj in _archive_members(tree, archive):
            targets.setdefault(obj, "vmlinux")
    return targets


def recorded_dependencies(tree: Path, obj: str) -> list[str] | None:
    """The files kbuild recorded that `obj` was compiled from (`deps_<obj>` of its `.cmd`
    file), relative to the tree where they are in it; None when there is no record. The
    `$(wildcard include/config/...)` entries are kbuild's configuration stamps, not files."""
    try:
        text = (tree / cmd_file(obj)).read_text(errors="replace")
    except OSError:
        return None
    block = re.search(r"^deps_\S+ := \\\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    if block is None:
        return None
    words = (line.strip().rstrip("\\").strip() for line in block.group(1).splitlines())
    return [_normalise(w) for w in words if w and not w.startswith("$(wildcard")]


def cmd_file(obj: str) -> str:
    """Where kbuild records how `obj` was made: `dir/.name.o.cmd`."""
    return os.path.join(os.path.dirname(obj), f".{os.path.basename(obj)}.cmd")


def _archive_members(tree: Path, archive: str, depth: int = 0) -> Iterable[str]:
    path = tree / archive
    if not path.exists() or depth > 20:
        return []
    # Run from the tree with a relative name: ar prints a thin archive's members relative to
    # the current directory then (absolute paths for an absolute archive name).
    r = subprocess.run(["ar", "t", archive], cwd=tree, capture_output=True, text=True)
    if r.returncode != 0:
        return []
    out = []
    for member in r.stdout.split():
        rel = _normalise(os.path.relpath(tree / member, tree))
        if rel.endswith(".a"):
            out.extend(_archive_members(tree, rel, depth + 1))
        else:
            out.append(rel)
    return out


def _normalise(p: str) -> str:
    return os.path.normpath(p.removeprefix("./"))
