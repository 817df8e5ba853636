"""Which translation units a change to a source file can affect, without compiling: every
file a `.c` file may include, found by reading `#include` lines. The targeted mode's way to
see a header's users (`affected.py`) for objects no build has left kbuild's dependency records
of yet.

Method: from a unit's source, follow every `#include` line, whether or not a preprocessor
condition around it holds (so the set is a superset of what the compiler reads), plus the
headers kbuild forces on every unit (`-include` of compiler-version.h, kconfig.h,
compiler_types.h). A name is resolved as the compiler would, and more:
- `"name"` relative to the including file's directory, and along the search path;
- `<name>` along the kernel's search path for x86 (`arch/x86/include`, `include`, their `uapi`
  and `generated` directories), so `asm/x.h` is the architecture's header, and a generated
  `asm/x.h` wrapper (present once the tree is prepared) leads on to `asm-generic/x.h`;
- a name found nowhere on those paths (a directory's own `-I` flags, which only the Makefile
  knows) is every file of the tree with that name: more than the compiler reads, never less.

Limits, stated:
- Macro-computed includes: a macro defined as a header's name (`#define
  GENL_MAGIC_INCLUDE_FILE <linux/drbd_genl.h>`, `#define REQUEST_FILE "../x.h"`) counts as
  an include of that header wherever it is defined; a name computed by token pasting
  (`#include TRACE_INCLUDE(TRACE_INCLUDE_FILE)`) is not followed. The trace-event ones
  re-include the trace header that included `define_trace.h`, which is already in the set,
  and kbuild's `.cmd` records (used beside this graph once an object was compiled) follow
  them exactly; measured on the reference kernel, no dependency kbuild recorded for any C
  unit is missed (tests/kernel).
- `-include FILE` flags: kbuild's own, given to every unit, are followed; a Makefile's own
  (`CFLAGS_version.o := -include ...` in init/, of generated files; no tracked header is
  forced that way on x86 in 6.1) are not read here, and kbuild's `.cmd` records hold them.
- Generated headers (`include/generated/`, `*/include/generated/`, `include/config/`) are
  followed where they exist but are never the changed file: a change to what generates them
  (a Kconfig file, a syscall table, a script) is beyond this method, and the caller must
  build the whole tree for it.
- Conditional includes make the set larger than needed (a header behind `#ifdef` that this
  configuration does not take): the objects whose code does not change are dropped later,
  by comparison.

Reading every file the units include costs 1 s for a small configuration and 28 s for a
distribution's (13,500 units). So pre's graph is kept (`IncludeIndex`, saved beside the
prepared tree) and a later update reads only its changed files over it: their post
`#include` lines are added to pre's edges (the union: more than post's graph, never less),
and whatever they newly reach is walked. A change that adds a file is read without the
index: a new file can shadow the one an unchanged file's `#include` found at pre, and only a
fresh resolution of every name sees that.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]', re.M)
#: A macro whose value is a header's name, for an `#include MACRO` elsewhere
#: (`#define GENL_MAGIC_INCLUDE_FILE <linux/drbd_genl.h>`): taken as an include of it.
_HEADER_MACRO = re.compile(rb'^[ \t]*#[ \t]*define[ \t]+\w+[ \t]+([<"])([^>"\n]+\.h)[>"]',
                           re.M)

#: The compiler's search path for kernel code on x86, in kbuild's order (LINUXINCLUDE).
KERNEL_SEARCH_PATH = ("arch/x86/include", "arch/x86/include/generated", "include",
                      "arch/x86/include/uapi", "arch/x86/include/generated/uapi",
                      "include/uapi", "include/generated/uapi")
#: What kbuild includes before every unit's first line (`-include`).
FORCED_HEADERS = ("include/linux/compiler-version.h", "include/linux/kconfig.h",
                  "include/linux/compiler_types.h")
#: Directories that hold no kernel code a unit includes (and would only slow the index).
_NOT_KERNEL = {".git", "Documentation", "tools"}


@dataclass
class IncludeIndex:
    """One tree's include graph walked backwards: file -> the files that include it, for
    every file reachable from the units walked. What a later update of the same prepared
    tree reuses instead of reading every file again."""

    includers: dict[str, set[str]]
    walked: set[str]

    def save(self, path: Path) -> None:
        """Written whole (through a temporary file), paths numbered to keep it small."""
        names = sorted(self.walked | self.includers.keys()
                       | {f for fs in self.includers.values() for f in fs})
        number = {n: i for i, n in enumerate(names)}
        data = {"files": names, "walked": sorted(number[f] for f in self.walked),
                "includers": {str(number[f]): sorted(number[i] for i in by)
                              for f, by in self.includers.items()}}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> IncludeIndex | None:
        """The saved index, or None when there is none or it cannot be read whole."""
        try:
            data = json.loads(path.read_text())
            names = data["files"]
            return cls({names[int(f)]: {names[i] for i in by}
                        for f, by in data["includers"].items()},
                       {names[i] for i in data["walked"]})
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None


class IncludeGraph:
    """The `#include` lines of one tree, read once per file as they are needed. `overlay`
    gives the files another commit has changed (None: deleted there), so the graph of that
    commit is read without checking it out. `index`: the tree's own graph walked before
    (without the overlay), reused instead of reading every file again."""

    def __init__(self, tree: Path, overlay: dict[str, bytes | None] | None = None,
                 index: IncludeIndex | None = None) -> None:
        self.tree = tree
        self.overlay = {os.path.normpath(p): data for p, data in (overlay or {}).items()}
        self._direct: dict[str, frozenset[str]] = {}
        self._by_name: dict[str, list[str]] | None = None
        #: file -> the files whose #include lines name it, for the files walked so far
        self._includers: dict[str, set[str]] = {}
        self._walked: set[str] = set()
        if index is not None and not adds_files(tree, self.overlay):
            self._includers = {f: set(by) for f, by in index.includers.items()}
            # A changed file is walked again: its post #include lines join its pre ones.
            self._walked = index.walked - self.overlay.keys()
        #: whether the index was used (a change adding files reads the tree afresh)
        self.indexed = bool(self._walked)
        #: after `affected`: the changed files some unit reads
        self.selecting: set[str] = set()
        self._listings: dict[str, frozenset[str]] = {}
        self._resolved: dict[tuple[str, str], list[str]] = {}

    def closure(self, source: str) -> set[str]:
        """Every file (relative to the tree) the unit compiled from `source` may read."""
        seen: set[str] = set()
        todo = [source, *FORCED_HEADERS]
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo.extend(self._includes(path) - seen)
        return seen

    def affected(self, changed: Iterable[str], units: dict[str, str]) -> dict[str, str]:
        """The units (object -> its source) whose closure holds a changed file, each with
        the changed file that selects it. The graph is walked backwards from the changed
        files, so its cost is one read of every file the units include, not one closure
        per unit (13,500 of them for a distribution's configuration)."""
        wanted = {os.path.normpath(p) for p in changed}
        # The changed files first: with an index, they are the only files read.
        for source in sorted(p for p, data in self.overlay.items() if data is not None):
            self._walk_from(source)
        for source in sorted({*units.values(), *FORCED_HEADERS}):
            self._walk_from(source)
        sources = set(units.values())
        reached: dict[str, str] = {}  # file -> the first changed file that leads to it
        self.selecting = set()
        for changed_path in sorted(wanted):
            todo, seen = [changed_path], {changed_path}
            while todo:
                path = todo.pop()
                reached.setdefault(path, changed_path)
                if path in sources or path in FORCED_HEADERS:
                    self.selecting.add(changed_path)
                fresh = self._includers.get(path, set()) - seen
                seen |= fresh
                todo.extend(fresh)
        forced = next((reached[h] for h in FORCED_HEADERS if h in reached), None)
        return {obj: reached.get(src, forced) for obj, src in units.items()  # type: ignore[misc]
                if src in reached or forced is not None}

    def index(self, units: Iterable[str]) -> IncludeIndex:
        """The graph walked from `units` (and kbuild's forced headers), to be saved."""
        for source in sorted({*units, *FORCED_HEADERS}):
            self._walk_from(source)
        return IncludeIndex(self._includers, self._walked)

    def unit_source(self, obj: str) -> str | None:
        """The `.c` or `.S` file `obj` is compiled from (kbuild's rule: the same stem), in
        this graph's view of the tree; None when neither exists."""
        stem = obj.removesuffix(".o")
        return next((stem + s for s in (".c", ".S") if self._exists(stem + s)), None)

    def _walk_from(self, source: str) -> None:
        """Record, for every file reachable from `source`, who includes it."""
        todo = [source]
        while todo:
            path = todo.pop()
            if path in self._walked:
                continue
            self._walked.add(path)
            for target in self._includes(path):
                self._includers.setdefault(target, set()).add(path)
                todo.append(target)

    def _read(self, path: str) -> bytes:
        if path in self.overlay:
            return self.overlay[path] or b""
        try:
            return (self.tree / path).read_bytes()
        except OSError:
            return b""  # a generated header not made yet, a dangling name

    def _exists(self, path: str) -> bool:
        # A file deleted at post still resolves, as it did at pre: a unit whose include
        # now finds another file of that name (a shadowing header deleted) is selected.
        if self.overlay.get(path) is not None:
            return True
        directory, name = os.path.split(path)
        return name in self._files_in(directory)

    def _files_in(self, directory: str) -> frozenset[str]:
        """The regular files of one directory of the tree, listed once: a unit's search
        path is tried name by name, a hundred thousand times for a kernel's units."""
        found = self._listings.get(directory)
        if found is None:
            try:
                with os.scandir(os.path.join(self.tree, directory)) as entries:
                    found = frozenset(e.name for e in entries if e.is_file())
            except OSError:
                found = frozenset()
            self._listings[directory] = found
        return found

    def _includes(self, path: str) -> frozenset[str]:
        found = self._direct.get(path)
        if found is None:
            data = self._read(path)
            named = _INCLUDE.findall(data) + _HEADER_MACRO.findall(data)
            found = frozenset(target for quote, name in named
                              for target in self._resolve(path, quote == b'"',
                                                          name.decode("utf-8", "replace")))
            self._direct[path] = found
        return found

    def _resolve(self, including: str, quoted: bool, name: str) -> list[str]:
        # `<name>` resolves the same from every file: resolved once.
        key = (os.path.dirname(including) if quoted else "<>", name)
        found = self._resolved.get(key)
        if found is None:
            candidates = [os.path.join(key[0], name)] if quoted else []
            candidates += [f"{d}/{name}" for d in KERNEL_SEARCH_PATH]
            found = [os.path.normpath(c) for c in candidates
                     if self._exists(os.path.normpath(c))] or self._named(os.path.normpath(name))
            self._resolved[key] = found
        return found

    def _named(self, name: str) -> list[str]:
        """Every file of the tree whose path ends with `name`."""
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.tree):
                if dirpath == str(self.tree):
                    dirnames[:] = [d for d in dirnames if d not in _NOT_KERNEL]
                rel = os.path.relpath(dirpath, self.tree)
                for f in filenames:
                    self._by_name.setdefault(f, []).append(f if rel == "." else f"{rel}/{f}")
            for path, data in self.overlay.items():
                if data is not None and not (self.tree / path).is_file():
                    self._by_name.setdefault(os.path.basename(path), []).append(path)
        return [p for p in self._by_name.get(os.path.basename(name), [])
                if self._exists(p) and (p == name or p.endswith("/" + name))]


def adds_files(tree: Path, overlay: dict[str, bytes | None]) -> bool:
    """Whether `overlay` adds a file `tree` does not have (then an index of `tree` is not
    used: see the module doc)."""
    return any(data is not None and not (tree / path).is_file()
               for path, data in overlay.items())


def unit_sources(tree: Path, objects: Iterable[str]) -> dict[str, str]:
    """object -> the C or assembly file it is compiled from (`foo.o` from `foo.c` or
    `foo.S`), for the objects that have one in the tree."""
    out = {}
    for obj in objects:
        stem = obj.removesuffix(".o")
        for suffix in (".c", ".S"):
            if (tree / (stem + suffix)).is_file():
                out[obj] = stem + suffix
                break
    return out


__all__ = ["FORCED_HEADERS", "KERNEL_SEARCH_PATH", "IncludeGraph", "IncludeIndex",
           "adds_files", "unit_sources"]
