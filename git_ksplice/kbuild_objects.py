"""Which objects a configuration builds, and which target each links into, read from the
Makefiles without building anything.

After a full build kbuild's own records say it (`modules.order`, the `.mod` files, the
members of `vmlinux.a`: see `kbuild.target_map`). A targeted build has none of them: only a
configured tree (`include/config/auto.conf`). kbuild will compile any single object it is
asked for, configured or not (`make fs/btrfs/super.o` works with BTRFS off), so asking it to
build is no answer either.

Method: kbuild's own rules do the evaluation. For each directory, a small makefile of ours
includes what `scripts/Makefile.build` includes before it builds anything (the configuration,
`scripts/Kbuild.include`, the directory's `Kbuild` or `Makefile`, `scripts/Makefile.lib`) and
prints the lists kbuild computed: the built-in objects (`real-obj-y`, `lib-y`), the module
objects (`real-obj-m`), the composite modules and their members, and the subdirectories to
descend into. The walk starts at the top-level `Kbuild` (the directories of vmlinux) and
follows `obj-y` and `obj-m` directories, and the library directories the top Makefile and
arch/x86/Makefile add (`libs-y`: lib/, arch/x86/lib/; their `lib.a` links into vmlinux); an
object reached only through `obj-m` directories links into a module, never into vmlinux. The
variables arch/x86/Makefile sets for the directories' Makefiles (`BITS=64`) are given on the
command line. One make call per directory, about 10 ms, several at once.

Limits, stated: architecture objects outside the `Kbuild` tree that the top Makefile adds
itself (the boot image, `arch/x86/boot/`, the vDSO images) are not units of vmlinux here, as
they are not in `vmlinux.a`; host programs (`hostprogs`) and `extra-y` files are not kernel
objects. Those are the same objects `kbuild.target_map` leaves out.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from git_ksplice.errors import BuildError
from git_ksplice.kbuild import make_environment

#: Printed by our makefile, one list per line: `<name>: <words>`.
_QUERY = """\
src := $(obj)
srctree := .
include include/config/auto.conf
include $(srctree)/scripts/Kbuild.include
kbuild-dir := $(srctree)/$(src)
kbuild-file := $(if $(wildcard $(kbuild-dir)/Kbuild),$(kbuild-dir)/Kbuild,$(kbuild-dir)/Makefile)
include $(kbuild-file)
# As the Makefile wrote them, before scripts/Makefile.lib prefixes and rewrites the lists.
ksplice-dirs-y := $(patsubst %/,%,$(filter %/,$(obj-y)))
ksplice-dirs-m := $(patsubst %/,%,$(filter %/,$(obj-m)))
ksplice-composites := $(foreach m,$(filter %.o,$(obj-m)),$(if $(strip $($(m:.o=-objs)) \
    $($(m:.o=-y)) $($(m:.o=-m))),$(m)=$(subst $(space),+,$(strip $($(m:.o=-objs)) \
    $($(m:.o=-y)) $($(m:.o=-m))))))
include $(srctree)/scripts/Makefile.lib
.DEFAULT_GOAL := ksplice-query
PHONY += FORCE
FORCE:
ksplice-query: FORCE
\t@echo 'builtin: $(real-obj-y) $(lib-y)'
\t@echo 'module: $(real-obj-m)'
\t@echo 'composite: $(ksplice-composites)'
\t@echo 'dir-y: $(ksplice-dirs-y)'
\t@echo 'dir-m: $(ksplice-dirs-m)'
"""


#: `libs-y` of the top Makefile and arch/x86/Makefile: not in the Kbuild tree.
_LIBS = ("lib", "arch/x86/lib")
#: What arch/x86/Makefile sets for the directories' Makefiles (this tool builds x86_64).
_ARCH_VARIABLES = ("SRCARCH=x86", "ARCH=x86", "BITS=64")


@dataclass(frozen=True)
class _Directory:
    builtin: list[str]
    modules: list[str]  # single-object modules
    composites: dict[str, list[str]]  # module object -> its member objects
    dirs_y: list[str]
    dirs_m: list[str]


@dataclass(frozen=True)
class Configuration:
    """What a configured tree builds."""

    #: object -> `vmlinux` or its module's name (`-` made `_`, as the kernel names
    #: modules); a composite module's members in its Makefile's order, the order they are
    #: linked in
    targets: dict[str, str]
    #: module name -> its `.ko`, relative to the tree
    modules: dict[str, str]


def configured_targets(tree: Path) -> dict[str, str]:
    """Each object this configuration builds -> `vmlinux` or its module's name: what
    `kbuild.target_map` reads from a full build's records, from the Makefiles alone."""
    return read_configuration(tree).targets


def read_configuration(tree: Path) -> Configuration:
    """What the configuration of `tree` builds, read from its Makefiles. The tree must be
    configured (`auto.conf`)."""
    if not (tree / "include" / "config" / "auto.conf").exists():
        raise BuildError(f"{tree} is not configured (no include/config/auto.conf)",
                         hint="run make olddefconfig prepare in it first")
    targets: dict[str, str] = {}
    modules: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ksplice-kbuild-") as tmp:
        query = Path(tmp) / "query.mk"
        query.write_text(_QUERY)
        for obj, target, ko in _walk(tree, query):
            targets[obj] = target
            if ko is not None:
                modules.setdefault(target, ko)
    return Configuration(targets, modules)


def _walk(tree: Path, query: Path) -> Iterator[tuple[str, str, str | None]]:
    """The objects of every directory, breadth first: the directories of one level are read
    in parallel."""
    # (directory, linked into vmlinux): the top-level Kbuild, and the library directories
    # the top Makefile and arch/x86/Makefile add as `libs-y` (their lib.a links into vmlinux)
    level: list[tuple[str, bool]] = [(".", True), *((d, True) for d in _LIBS)]
    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        while level:
            read = list(pool.map(lambda d: _read(tree, query, d[0]), level))
            following: list[tuple[str, bool]] = []
            for (directory, builtin), listing in zip(level, read, strict=True):
                yield from _objects(directory, listing, builtin)
                for sub, sub_builtin in ([(s, builtin) for s in listing.dirs_y]
                                         + [(s, False) for s in listing.dirs_m]):
                    path = _normalise(f"{directory}/{sub}")
                    if path not in seen and (tree / path).is_dir():
                        seen.add(path)
                        following.append((path, sub_builtin))
            level = following


def _objects(directory: str, listing: _Directory,
             builtin: bool) -> Iterator[tuple[str, str, str | None]]:
    """(object, target, the module's .ko or None). `real-obj-m` holds single-object modules
    and the members of composite ones: a member belongs to its composite's module (listed
    in the composite's order), any other object is a module of its own."""
    if builtin:
        for obj in listing.builtin:
            yield _normalise(obj), "vmlinux", None
    members = set()
    configured = {_normalise(o) for o in listing.modules}
    for module, objs in listing.composites.items():
        ko = _normalise(f"{directory}/{module}").removesuffix(".o") + ".ko"
        for m in objs:
            rel = _normalise(f"{directory}/{m}")
            if rel in configured and rel not in members:
                members.add(rel)
                yield rel, _module_name(module), ko
    for obj in listing.modules:
        rel = _normalise(obj)
        if rel not in members:
            yield rel, _module_name(obj), rel.removesuffix(".o") + ".ko"


def _read(tree: Path, query: Path, directory: str) -> _Directory:
    r = subprocess.run(["make", "--no-print-directory", "-s", "-f", str(query),
                        f"obj={directory}", *_ARCH_VARIABLES],
                       cwd=tree, capture_output=True, text=True, env=make_environment())
    if r.returncode != 0:
        raise BuildError(f"kbuild could not read {directory}'s Makefile: "
                         + (r.stderr.strip().splitlines() or ["make failed"])[-1])
    lists = {}
    for line in r.stdout.splitlines():
        name, _, words = line.partition(":")
        lists[name] = words.split()
    composites = {}
    for entry in lists.get("composite", []):
        module, _, members = entry.partition("=")
        composites[module] = [m for m in members.split("+") if m.endswith(".o")]
    return _Directory(
        builtin=[o for o in lists.get("builtin", []) if o.endswith(".o")],
        modules=[o for o in lists.get("module", []) if o.endswith(".o")],
        composites=composites, dirs_y=lists.get("dir-y", []), dirs_m=lists.get("dir-m", []))


def _module_name(obj: str) -> str:
    return Path(obj).stem.replace("-", "_")


def _normalise(p: str) -> str:
    return os.path.normpath(p.removeprefix("./"))
