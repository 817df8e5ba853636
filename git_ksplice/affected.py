"""Which objects of this configuration a change can affect: the targeted mode's question,
answered without a build, over-approximating and never under-approximating.

Each changed path (added, modified or deleted between pre and post) is sorted by what reads
it, and the objects it selects are the union of:
- `.c` and `.S` files: the objects compiled from them (`foo.o` from `foo.c`), of pre's
  configuration and of post's (a new file a changed Makefile builds);
- any file some unit `#include`s, directly or through other files (headers, `.c` files
  included by other `.c` files, `.inc`, `.lds.h`...): every unit whose include closure holds
  it, from `includes.IncludeGraph` (every branch of every condition, the x86 search path,
  kbuild's forced `-include`s; see that module for macro-computed includes such as
  `#include TRACE_INCLUDE(...)` and for names only a directory's own `-I` finds), read at
  post (the graph sees post's files through an overlay of git blobs), united with the
  dependencies kbuild recorded in the `.cmd` file of every object compiled before (exact
  for pre, and the one record that follows macro-computed includes);
- a directory's `Makefile` or `Kbuild`: every object of that directory and below it, of
  pre's and of post's configuration (flags such as `ccflags-y` and `subdir-ccflags-y`
  change code without changing a source file).

Some changes only a full build can answer, and say why (`Affected.full_build`): a Kconfig
file (the configuration itself may change), the top-level and arch Makefiles and `scripts/`
(every object's rules), the tools kbuild runs on every object (objtool), the generators of
headers that every unit reads (`asm-offsets.c`, `bounds.c`, syscall tables) and the sources of
images linked into vmlinux as data (the vDSO, the real-mode blob, the boot code), and any
other input no unit includes (`*.tbl`, scripts, firmware): what it generates is not known
here. Generated headers (`include/generated/`, `include/config/`) are build products, never a
changed path: a change reaches them only through these generators.

Paths no build reads are dropped and listed (`inert`): documentation, licences, another
architecture's directory, `tools/` outside objtool, git's own files. A source file this
configuration does not build is listed too (`not_built`), so the user hears why its change
has no effect.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from git_ksplice.includes import IncludeGraph

#: Changes only a full build can follow: (pattern, why). First match wins.
_FULL_BUILD = (
    ("*include/*Kbuild", "an include directory's Kbuild makes the generated asm/ wrappers"),
    ("Kconfig*", "a Kconfig file can change the configuration itself"),
    ("*/Kconfig*", "a Kconfig file can change the configuration itself"),
    ("Makefile", "the top-level Makefile sets every object's flags"),
    ("arch/x86/Makefile*", "arch/x86's Makefile sets every object's flags"),
    ("scripts/*", "scripts/ holds the rules and tools of every object's build"),
    ("tools/objtool/*", "objtool runs on every object"),
    ("tools/lib/*", "objtool is built from tools/lib"),
    ("tools/include/*", "objtool is built from tools/include"),
    ("tools/arch/x86/*", "objtool is built from tools/arch"),
    ("tools/build/*", "objtool is built with tools/build"),
    ("kernel/bounds.c", "it generates include/generated/bounds.h, which every unit reads"),
    ("arch/x86/kernel/asm-offsets*.c", "it generates include/generated/asm-offsets.h"),
    ("arch/x86/entry/syscalls/*", "the syscall tables generate headers and tables"),
    ("arch/x86/entry/vdso/*", "the vDSO is an image linked into vmlinux as data"),
    ("lib/vdso/*", "the vDSO is an image linked into vmlinux as data"),
    ("arch/x86/realmode/rm/*", "the real-mode code is an image linked into vmlinux as data"),
    ("arch/x86/boot/*", "the boot code is not part of vmlinux's objects"),
    ("arch/x86/purgatory/*", "the purgatory is an image linked into vmlinux as data"),
    ("usr/*", "usr/ builds the initramfs image linked into vmlinux"),
)
#: Paths no object reads.
_INERT = ("Documentation/*", "LICENSES/*", "tools/*", "samples/*", "README", "MAINTAINERS",
          "CREDITS", "COPYING", ".mailmap", "*.rst", ".gitignore", "*/.gitignore",
          ".gitattributes", ".clang-format", ".cocciconfig", ".get_maintainer.ignore")
_MAKEFILES = ("Makefile", "Kbuild", "Makefile.*")
_SOURCES = (".c", ".S")
_HEADERS = (".h", ".inc")


@dataclass
class Affected:
    """The objects a change selects, and why each: object -> the changed path behind it."""

    objects: dict[str, str] = field(default_factory=dict)
    #: why only a full build can answer (None: the objects above are all there is)
    full_build: str | None = None
    #: changed paths no build reads
    inert: list[str] = field(default_factory=list)
    #: changed sources this configuration does not build
    not_built: list[str] = field(default_factory=list)

    def add(self, objects: Iterable[str], cause: str) -> None:
        for obj in objects:
            self.objects.setdefault(obj, cause)


@dataclass(frozen=True)
class ChangeSet:
    """The change as paths: what each of pre's and post's configurations builds, and the
    post contents of every changed path (None: deleted at post)."""

    changed: dict[str, bytes | None]
    #: object -> target, of pre's configuration and of post's (equal unless a Makefile
    #: changed)
    pre_targets: dict[str, str]
    post_targets: dict[str, str]
    #: object -> the files kbuild recorded it was compiled from, where it recorded them
    recorded: dict[str, list[str]] = field(default_factory=dict)


def affected_objects(graph: IncludeGraph, change: ChangeSet) -> Affected:
    """Every object of either configuration the change can affect (see the module doc).
    `graph` reads the tree at pre with post's changed files over it."""
    found = Affected()
    paths = sorted(change.changed)
    found.full_build = needs_full_build(paths)
    if found.full_build is not None:
        return found
    all_targets = {**change.pre_targets, **change.post_targets}
    sources = {o: s for o in all_targets if (s := graph.unit_source(o)) is not None}
    for obj, cause in sorted(graph.affected(paths, sources).items()):
        found.add([obj], cause)
    selecting = set(graph.selecting)
    for obj, deps in sorted(change.recorded.items()):
        read = set(deps)
        hits = [p for p in paths if p in read]
        if hits:
            found.objects.setdefault(obj, hits[0])
            selecting.update(hits)
    # Objects compiled from generated sources (defkeymap.c from its _shipped copy, the vDSO
    # image, capflags.c) have no source in a prepared tree to read includes from: any header
    # change selects them, a handful of objects.
    header = next((p for p in paths if p.endswith(_HEADERS)), None)
    if header is not None:
        found.add((o for o in all_targets if o not in sources), header)
    for path in paths:
        _select(path, found, all_targets, selecting)
    if found.full_build is not None:
        found.objects.clear()
    return found


def is_makefile(path: str) -> bool:
    """A directory's kbuild rules (`Makefile`, `Kbuild`, `Makefile.*`)."""
    return any(fnmatch.fnmatchcase(os.path.basename(path), m) for m in _MAKEFILES)


def _select(path: str, found: Affected, all_targets: dict[str, str],
            selecting: set[str]) -> None:
    """What one changed path selects beyond what includes it (`selecting`: the paths that
    selected objects already, through the include graph or kbuild's records; a unit's own
    source is in its include closure), or why nothing reads it."""
    if is_makefile(path):
        directory = os.path.dirname(path)
        found.add((o for o in all_targets if _under(o, directory)), path)
        return
    if path in selecting:
        return
    if _inert(path):
        found.inert.append(path)
    elif path.endswith(_SOURCES) and any(_under(o, os.path.dirname(path))
                                         for o in all_targets):
        # Not an object, in a directory that builds some: a host program generating their
        # code (lib/gen_crc32table.c) or a file only the Makefile names.
        found.full_build = (f"{path}: not an object of this configuration, in a directory "
                            "that builds some: it may generate their code")
    elif path.endswith(_HEADERS + _SOURCES):
        found.not_built.append(path)  # no unit of this configuration is or includes it
    else:
        found.full_build = (f"{path}: no unit includes it and it is not a source, so what "
                            "it generates is not known here")


def needs_full_build(paths: Iterable[str]) -> str | None:
    """Why only a full build can follow a change to `paths` (the first such path), or
    None."""
    for path in paths:
        for pattern, why in _FULL_BUILD:
            if fnmatch.fnmatchcase(path, pattern):
                return f"{path}: {why}"
    return None


def _inert(path: str) -> bool:
    top = path.split("/", 1)[0]
    if top == "arch" and not path.startswith("arch/x86/"):
        return True  # another architecture's code
    return any(fnmatch.fnmatchcase(path, p) for p in _INERT)


def _under(obj: str, directory: str) -> bool:
    return directory in ("", ".") or obj.startswith(directory.rstrip("/") + "/")
