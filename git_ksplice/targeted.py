"""The targeted build mode: a prepared tree, and only the objects a change touches compiled.

A full pristine build costs minutes for a small configuration and hours for a
distribution's; an update needs only the objects its change alters. After `make
modules_prepare` (the configuration synced, generated headers, scripts, modpost, objtool:
28 s here for the reference kernel, 28 s for Debian's, on 2 cores), kbuild compiles any single
object with that object's own flags (`make fs/proc/meminfo.o`), module objects with their
`KBUILD_MODNAME` included, byte for byte as a full build would.

So the tree here (a `worktree.WorkTree` of its own, `<build dir>/targeted/tree`) is only
prepared at pre, and what the configuration builds is read from its Makefiles
(`kbuild_objects.read_configuration`). For an update, `affected.affected_objects` names the
objects the change can affect; they are compiled at pre (each kept in `objects/` with its
`.cmd` record, reused by every later update from the same pre) and at post, and the pairs
go to the differ. Afterwards the tree is reverted: pre checked out again and every object
the post build wrote replaced by its pre copy (or removed), so the next build sees the
tree as kbuild left it at pre. `make X.o` at post also runs kbuild's prepare steps, which
regenerate what post's sources change (asm-offsets.h from a structure's header, the release
string from git's state, auto.conf): those generated files are copied aside before post is
checked out and put back by the revert, so no later pre object is compiled against post's.

The state file says `patched`, with the objects the post build may write, before the
checkout of post: a run killed at any point is reverted by the next.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from git_ksplice.errors import BuildError
from git_ksplice.faults import checkpoint
from git_ksplice.files import replace_file, same_contents
from git_ksplice.includes import IncludeGraph, IncludeIndex, unit_sources
from git_ksplice.kbuild import cmd_file, make_environment, recorded_dependencies
from git_ksplice.kbuild_objects import Configuration, read_configuration
from git_ksplice.origconfig import OrigConfig
from git_ksplice.repo import Repo
from git_ksplice.worktree import BuildSettings, WorkTree

#: What `prepare` makes: everything a single object's compilation and an external module's
#: build need, and nothing of the kernel itself.
PREPARE_TARGETS = ("modules_prepare",)
#: What kbuild's prepare steps write that a post build may rewrite: copied aside before
#: the post checkout, put back by the revert (directories whole, files with their records).
GENERATED = ("include/generated", "arch/x86/include/generated", "include/config",
             "arch/x86/kernel/asm-offsets.s", "arch/x86/kernel/.asm-offsets.s.cmd",
             "kernel/bounds.s", "kernel/.bounds.s.cmd",
             "scripts/mod/devicetable-offsets.s", "scripts/mod/.devicetable-offsets.s.cmd",
             "scripts/mod/devicetable-offsets.h")


@dataclass
class TargetedBuild:
    """What the build at post produced: the objects compiled there, and those whose bytes
    differ from their pre copies."""

    rebuilt: list[str]
    changed_objects: list[str]
    compiled: int
    log: Path


class PreparedTree(WorkTree):
    """The targeted mode's tree: prepared at pre, with a cache of pre objects."""

    def __init__(self, repo: Repo, build_dir: Path) -> None:
        super().__init__(repo, build_dir / "targeted", build_dir)
        self.objects = self.root / "objects"  # pre objects and their .cmd records
        self.targets_file = self.root / "targets.json"
        self.includes_file = self.root / "includes.json"  # pre's includes.IncludeIndex
        self.modules = self.root / "modules"  # pre images of module targets (symbols)
        self.generated = self.root / "generated"  # pre's GENERATED while post is built

    def forget_products(self) -> None:
        for d in (self.objects, self.modules):
            shutil.rmtree(d, ignore_errors=True)
        self.targets_file.unlink(missing_ok=True)
        self.includes_file.unlink(missing_ok=True)

    # -- the prepared tree ---------------------------------------------------------------

    def ensure_prepared(self, pre: str, orig: OrigConfig, settings: BuildSettings, *,
                        log: Path, rebuild: bool = True) -> bool:
        """Bring the tree to a prepared `pre`, repairing whatever an earlier run left.
        Returns True when make ran. Objects compiled at another pre, configuration or
        command are forgotten: they are not this pre's."""
        started = time.monotonic()
        self.timings = {}
        st = self.repair(pre, orig, settings.reporter.note)
        prepare = settings.with_targets(list(PREPARE_TARGETS))
        # -jN and V=1 do not change what is made
        wanted = {"pre": pre, "config": orig.fingerprint(),
                  "command": [a for a in prepare.command()[2:] if a != "V=1"]}
        ready = st.get("phase") == "prepared" and self.targets_file.exists()
        if ready and ({k: st.get(k) for k in wanted} == wanted
                      or (not rebuild and st.get("pre") == pre)):
            self._install_symvers()  # ORIG_CONFIG's may have been replaced since
            return False
        self.forget_products()
        made = self.begin_build(pre, "preparing", wanted, settings, log, started)
        self._make(prepare, log, append=True)
        read = time.monotonic()
        self.timings["make prepare"] = read - made
        self._save_configuration(read_configuration(self.path))
        self._install_symvers()
        walk = time.monotonic()
        self.timings["reading the Makefiles"] = walk - read
        self.include_index()
        self.timings["reading the includes"] = time.monotonic() - walk
        self._set_state(phase="prepared", **wanted)
        return True

    def configuration(self) -> Configuration:
        """What pre's configuration builds (read when the tree was prepared)."""
        try:
            data = json.loads(self.targets_file.read_text())
            return Configuration(dict(data["targets"]), dict(data["modules"]))
        except (OSError, ValueError, KeyError, TypeError):
            found = read_configuration(self.path)
            self._save_configuration(found)
            return found

    def include_index(self) -> IncludeIndex:
        """pre's include graph, read once per prepared tree: every update from this pre
        then reads only its own changed files (see includes.IncludeIndex)."""
        index = IncludeIndex.load(self.includes_file)
        if index is None:
            units = unit_sources(self.path, self.configuration().targets).values()
            index = IncludeGraph(self.path).index(units)
            index.save(self.includes_file)
        return index

    def configured_count(self) -> int:
        """How many objects pre's configuration builds, as last read (0: not read yet); a
        progress bar's end, never a reason to read the tree."""
        try:
            return len(json.loads(self.targets_file.read_text())["targets"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save_configuration(self, found: Configuration) -> None:
        replace_file(self.targets_file, json.dumps({"targets": found.targets,
                                                    "modules": found.modules}))

    def _install_symvers(self) -> None:
        """The running kernel's exports and their CRCs, where kbuild looks for them
        (`Module.symvers` at the top of the tree): modpost checks the livepatch module's
        imports against them, and no vmlinux is linked here to make one."""
        assert self.orig is not None
        src, dst = self.orig.module_symvers, self.path / "Module.symvers"
        if src.exists() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
            shutil.copy2(src, dst)

    def configuration_at(self, post: str) -> Configuration:
        """What post's configuration builds (its Makefiles differ from pre's): read with
        post checked out, the tree marked patched meanwhile and reverted after."""
        self._set_state(**{**self.state(), "phase": "patched", "post": post, "written": []})
        pre = self.state()["pre"]
        try:
            self.repo.checkout(self.path, post)
            return read_configuration(self.path)
        finally:
            self.revert(pre)

    def recorded(self) -> dict[str, list[str]]:
        """object -> the files kbuild recorded it read, for every pre object kept."""
        out = {}
        for obj in self.kept():
            deps = recorded_dependencies(self.objects, obj)
            if deps is not None:
                out[obj] = deps
        return out

    def kept(self) -> list[str]:
        if not self.objects.exists():
            return []
        return sorted(os.path.relpath(os.path.join(d, f), self.objects)
                      for d, _, files in os.walk(self.objects)
                      for f in files if f.endswith(".o"))

    # -- compiling -----------------------------------------------------------------------

    def compile_pre(self, objects: list[str], settings: BuildSettings, log: Path) -> int:
        """Compile at pre the objects not kept yet and keep them. Returns how many make
        compiled."""
        missing = [o for o in objects if not (self.objects / o).exists()]
        if not missing:
            return 0
        compiled = self._make(settings.with_targets(sorted(missing)), log, append=True)
        for obj in missing:
            for rel in (cmd_file(obj), obj):  # the object last: it is what marks it kept
                if (self.path / rel).exists():
                    _keep(self.path / rel, self.objects / rel)
        return compiled

    def pristine_file(self, obj: str) -> Path:
        return self.objects / obj

    def pre_object(self, obj: str) -> Path | None:
        path = self.objects / obj
        return path if path.exists() else None

    def build_patched(self, pre: str, post: str, objects: list[str],
                      settings: BuildSettings, log: Path) -> TargetedBuild:
        """Compile `objects` at post (the tree is reverted by `revert`, by the caller)."""
        _save_generated(self.path, self.generated)
        self._set_state(**{**self.state(), "phase": "patched", "post": post,
                           "written": objects})
        self.repo.checkout(self.path, post)
        self._install_config()
        checkpoint("patched-checkout")
        before = {o: _stamp(self.path / o) for o in objects}
        compiled = (self._make(settings.with_targets(sorted(objects)), log, append=True)
                    if objects else 0)
        checkpoint("patched-built")
        rebuilt = [o for o in objects if _stamp(self.path / o) != before[o]]
        changed = [o for o in rebuilt if (self.path / o).exists() and not (
            (kept := self.pre_object(o)) is not None and same_contents(kept, self.path / o))]
        return TargetedBuild(rebuilt, changed, compiled, log)

    def revert(self, pre: str) -> None:
        """pre checked out again; each object the post build may have written replaced by
        its kept pre copy (and .cmd record), or removed, so kbuild rebuilds it when asked."""
        self.repo.checkout(self.path, pre)
        if self.orig is not None:
            self._install_config()
        st = self.state()
        stamp = time.time_ns()
        for obj in st.get("written", []):
            for rel in (obj, cmd_file(obj)):
                target = self.path / rel
                target.unlink(missing_ok=True)
                if (self.objects / rel).exists():
                    shutil.copy2(self.objects / rel, target)
                    # Newer than the sources checked out again: kbuild keeps it.
                    os.utime(target, ns=(stamp, stamp))
        _restore_generated(self.path, self.generated)
        for key in ("post", "written", "make_pgid"):
            st.pop(key, None)
        phase = "prepared" if st.get("phase") == "patched" else st.get("phase", "stale")
        self._set_state(**{**st, "phase": phase, "pre": pre})

    # -- module images -------------------------------------------------------------------

    def module_image(self, name: str, settings: BuildSettings, log: Path) -> Path | None:
        """Module `name` at pre as one relocatable object, its members linked in kbuild's
        order: what its `.ko`'s symbol table is made from, for the sympos of its locals.
        None when this configuration builds no such module."""
        members = [o for o, t in self.configuration().targets.items() if t == name]
        if not members:
            return None
        image = self.modules / f"{name}.o"
        if image.exists():
            return image
        self.compile_pre(members, settings, log)
        image.parent.mkdir(parents=True, exist_ok=True)
        linking = image.with_suffix(".tmp")
        r = subprocess.run(["ld", "-r", "-o", str(linking), *(str(self.objects / m)
                                                            for m in members)],
                           capture_output=True, text=True, env=make_environment())
        if r.returncode != 0:
            raise BuildError(f"linking the pre objects of module {name} failed: "
                             + r.stderr.strip()[-500:])
        os.replace(linking, image)  # whole or not at all: a killed run leaves no half image
        return image


def _keep(src: Path, dst: Path) -> None:
    """Copy a build product into the cache whole: a run killed mid-copy leaves no
    truncated file there to be trusted later."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _save_generated(tree: Path, saved: Path) -> None:
    """Copy GENERATED aside (with their mtimes), whole before it counts: `saved` appears by
    a rename once every file is there."""
    copying = saved.with_name(saved.name + ".tmp")
    shutil.rmtree(copying, ignore_errors=True)
    shutil.rmtree(saved, ignore_errors=True)
    copying.mkdir(parents=True)
    for rel in GENERATED:
        src = tree / rel
        if src.is_dir():
            shutil.copytree(src, copying / rel, symlinks=True)
        elif src.exists():
            (copying / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copying / rel, follow_symlinks=False)
    os.replace(copying, saved)


def _restore_generated(tree: Path, saved: Path) -> None:
    """Put GENERATED back as `_save_generated` found it: each file that differs copied
    back, each one the post build added removed. Nothing saved: nothing to do."""
    if not saved.is_dir():
        return
    for rel in GENERATED:
        kept, there = saved / rel, tree / rel
        if kept.is_dir() or there.is_dir():
            for path in _files_under(there) - _files_under(kept):
                (there / path).unlink()
            for path in _files_under(kept):
                _put_back(kept / path, there / path)
        elif kept.exists():
            _put_back(kept, there)
        elif there.exists():
            there.unlink()
    shutil.rmtree(saved)


def _files_under(directory: Path) -> set[str]:
    if not directory.is_dir():
        return set()
    return {os.path.relpath(os.path.join(d, f), directory)
            for d, _, files in os.walk(directory) for f in files}


def _put_back(kept: Path, there: Path) -> None:
    """`there` as `kept` is, mtime included: a newer one, even of the same bytes, would
    have make rebuild what depends on it."""
    if _stamp(there) == _stamp(kept):
        return
    there.parent.mkdir(parents=True, exist_ok=True)
    there.unlink(missing_ok=True)
    shutil.copy2(kept, there, follow_symlinks=False)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns
