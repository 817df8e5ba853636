"""The update pipeline: from a change to an update tarball, with the state kept in git.

`create()` is the whole of `git ksplice create` below the command line, as a linear sequence
of named phases (`_Run.run`), each a method:

    input -> post commit -> builds -> compare -> module -> package -> record

Order of work, chosen so that an interruption at any point is repaired by the next run:
1. under the repository lock, forget temporary commits of runs that died
   (`refs/ksplice/tmp/*`), check the input, create `refs/ksplice/pre` from HEAD on first use;
2. make sure the build tree is pristine and built at pre (reverting a tree left mid-build);
3. hold the post commit (`refs/ksplice/tmp/<ID>` while building, for a temporary one);
4. build post incrementally, compare the rebuilt objects, revert the tree;
5. build the livepatch module against the pristine tree and check it against the running
   kernel;
6. write the tarball, then move all refs in one transaction (`ledger.record`).
Nothing before step 6 is visible in refs; a tarball without refs (killed between the two) is
rewritten by the next run with that id. Progress goes to a `progress.Reporter`; the result is
returned, and printing it is the command's business.
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from git_ksplice import __version__, inputs, ledger
from git_ksplice.affected import (
    Affected,
    ChangeSet,
    affected_objects,
    is_makefile,
    needs_full_build,
)
from git_ksplice.build import BuildSettings, BuildTree, PatchedBuild
from git_ksplice.elf.diff import Options, diff_objects
from git_ksplice.elf.model import empty_object, read_object
from git_ksplice.elf.writer import serialize
from git_ksplice.errors import ConcurrencyError, InputError, NoChangeError, RefusedError
from git_ksplice.faults import checkpoint
from git_ksplice.includes import IncludeGraph, adds_files
from git_ksplice.kbuild import (
    KSPLICE_KCFLAGS,
    build_external_module,
    compiler_version,
    is_linux_tree,
    kernel_release,
    module_file,
    module_ko_path,
    target_map,
)
from git_ksplice.kbuild_objects import Configuration
from git_ksplice.layout import changed_layouts
from git_ksplice.livepatch.module import (
    ModuleBuild,
    ModuleRequest,
    PatchedObject,
    build_module,
    check_against_running,
)
from git_ksplice.livepatch.runpre import check_run_pre, shipped_module
from git_ksplice.livepatch.signing import sign_module
from git_ksplice.package import (
    ChangedObject,
    Provenance,
    Update,
    compose_manifest,
    timestamp,
    write_tarball,
)
from git_ksplice.progress import Reporter
from git_ksplice.repo import REF_PRE, REF_TMP, REF_UPDATES, Repo
from git_ksplice.settings import Settings
from git_ksplice.targeted import PreparedTree, TargetedBuild
from git_ksplice.toolchain import check_compiler, pinned_make_args, running_kernel
from git_ksplice.words import count

#: Above this share of the configuration's objects, compiling the affected ones twice costs
#: about what the full build does, and the full build is kept for the next update.
_TARGETED_SHARE = 0.5


@dataclass
class Request:
    """The change to build (exactly one of commit, patch, diffext, prebuild) and how."""

    commit: str | None = None
    patch: Path | None = None
    diffext: str | None = None
    prebuild: bool = False
    description: str | None = None
    #: use the pristine build as it is (it must exist)
    skip_prebuild: bool = False
    #: build even though a struct or union changes layout (see git_ksplice.layout)
    allow_layout_change: bool = False


@dataclass
class Prebuilt:
    """What `create --prebuild` did: the pristine tree of pre is built."""

    pre: str
    tree: Path


@dataclass
class Created:
    """The update that was written and recorded."""

    id: str
    tarball: Path
    pre: str
    post: str
    series: bool
    changed: list[ChangedObject]
    manifest: dict

    @property
    def targets(self) -> dict:
        """The manifest's record of each target: its objects and their functions."""
        return self.manifest["targets"]


@dataclass(frozen=True)
class PristineTree:
    """Where the pristine tree of a build directory stands, for `hook status`."""

    mode: str  # "targeted" or "full"
    pre: str | None  # the commit it is prepared or built at; None: neither yet
    ready: bool  # prepared (targeted) or built (full) at `pre`
    kept: int  # pre objects compiled and kept (targeted)

    def describe(self) -> str:
        if self.pre is None or not self.ready:
            return ("not prepared yet (the first update prepares it)" if self.mode == "targeted"
                    else "not built yet (the first update builds the whole tree)")
        if self.mode == "targeted":
            return (f"prepared at {self.pre[:12]} (targeted mode; "
                    f"{count(self.kept, 'pre object')} compiled and kept)")
        return f"built whole at {self.pre[:12]} (full-tree mode)"


def pristine_tree(repo: Repo, build_dir: Path, mode: str, pre: str | None) -> PristineTree:
    """The state of the tree that `mode` builds `pre` in, read without touching it (the
    targeted mode is kbuild's: another tree is built whole)."""
    if mode == "targeted" and (pre is None or _is_kbuild(repo, pre)):
        prepared = PreparedTree(repo, build_dir)
        st = prepared.state()
        return PristineTree(mode, st.get("pre"), st.get("phase") == "prepared",
                            len(prepared.kept()))
    st = BuildTree(repo, build_dir).state()
    return PristineTree(mode, st.get("pre"), st.get("phase") == "pristine", 0)


def create(repo: Repo, settings: Settings, request: Request,
           reporter: Reporter) -> Created | Prebuilt:
    """Build the update `request` asks for (or only the pristine tree) and record it."""
    return _Run(repo, settings, request, reporter).run()


class _Run:
    """One run of the pipeline: its inputs, and what each phase leaves for the next."""

    def __init__(self, repo: Repo, settings: Settings, request: Request,
                 reporter: Reporter) -> None:
        self.repo, self.settings, self.request, self.say = repo, settings, request, reporter
        self.id = settings.update_id
        self.logs = repo.state_dir / "logs"
        self.log = self.logs / f"{self.id}.log"
        self.full = BuildTree(repo, settings.build_dir)
        self.prepared = PreparedTree(repo, settings.build_dir)
        #: the tree in use: the prepared one (targeted mode) or the full one
        self.tree: BuildTree | PreparedTree = self.full
        self.pre = ""
        self.change: inputs.Change | None = None
        self.tmp_ref: str | None = None
        self.build: BuildSettings | None = None
        self.targeted = False
        #: what pre's and post's configurations build (targeted mode; the same unless a
        #: Makefile changed)
        self.pre_config: Configuration | None = None
        self.post_config: Configuration | None = None
        #: changed sources this configuration does not build (targeted mode)
        self.not_built: list[str] = []
        self.inert: list[str] = []  # changed paths no build reads
        self.update = Update(self.id)  # filled as the phases go

    def run(self) -> Created | Prebuilt:
        try:
            return self._phases()
        finally:
            self.say.stop()  # however it ends, nothing stays live on the screen

    def _phases(self) -> Created | Prebuilt:
        self._check_output_dir()
        timestamp()  # a bad SOURCE_DATE_EPOCH is reported now, not after the build
        with self.repo.lock(wait=self.settings.wait, on_wait=self._waiting):
            checkpoint("locked")
            self._forget_dead_runs()
            self._input()
            checkpoint("pre-created")
            self._pristine_build()
            checkpoint("prebuilt")
            if self.request.prebuild:
                return Prebuilt(self.pre, self.tree.path)
            self._hold_post()
            checkpoint("post-created")
            try:
                changed, extra, modules = self._build_and_compare()
                module = self._module(changed)
                tarball, manifest = self._package(changed, extra, modules, module)
                checkpoint("tarball-written")
                self._record(manifest)
                checkpoint("recorded")
            except BaseException:
                self._release_post()
                raise
        assert self.change is not None
        return Created(self.id, tarball, self.pre, self.change.post, self.settings.series,
                       changed, manifest)

    def _waiting(self, holder: str) -> None:
        self.say.note(f"waiting for another git ksplice create ({holder or 'running'})...")

    # -- input ---------------------------------------------------------------------------

    def _check_output_dir(self) -> None:
        """The tarball's directory (or the one it will be made in) must be writable: found
        now, not after a kernel build. access() also says no for a read-only file system."""
        out_dir = self.settings.output_dir
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"output directory {out_dir} is a file",
                             hint="give -o a directory (it is created if missing)")
        existing = out_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not os.access(existing, os.W_OK | os.X_OK):
            why = ("is on a read-only file system"
                   if os.statvfs(existing).f_flag & os.ST_RDONLY else "is not writable")
            raise InputError(f"cannot write the tarball to {out_dir}: {existing} {why}",
                             hint="give -o a directory you can write to (or ksplice.outputDir)")

    def _forget_dead_runs(self) -> None:
        """Temporary commits exist only while a run holds the lock: any left are from a run
        that died."""
        for name, oid in self.repo.refs(REF_TMP).items():
            self.repo.delete_ref(name, oid, "ksplice create: forget an interrupted run")

    def _input(self) -> None:
        """Check the input before anything is built or recorded: a typo must not cost a
        kernel build, nor leave refs/ksplice/pre behind. Then pre is recorded."""
        if not self.request.prebuild and self.repo.ref(REF_UPDATES + self.id) is not None:
            raise InputError(f"update id {self.id} already exists ({REF_UPDATES}{self.id})",
                             hint="choose another --id, or leave it out for a random one")
        self.pre, pre_ref = self._pre()
        try:
            self.change = None if self.request.prebuild else \
                self._change(new_pre=pre_ref is None)
        except NoChangeError:
            # A first run that finds nothing to do still records pre at HEAD, and says so.
            # "No change" answers a valid input; it is not a failed command (a typo records
            # nothing, above). Recording pre is what first use does anyway (`create
            # --prebuild`, the usual first step, does it too), and the same run would have
            # recorded it had the build found no change. Not recording it would be worse:
            # a user with uncommitted edits commits them, and the next first run would take
            # that commit, the fix itself, as the running kernel. The message names pre and
            # how to point it elsewhere (git update-ref) when HEAD is not the running kernel.
            if pre_ref is None:
                self._move_pre(pre_ref)
            raise
        if self.change is not None:
            self._check_layouts(self.change.post)
        if pre_ref != self.pre:
            self._move_pre(pre_ref)
        for note in self.change.notes if self.change is not None else []:
            self.say.note(note)

    def _pre(self) -> tuple[str, str | None]:
        """(the running kernel's source, refs/ksplice/pre's current value). They differ when
        the ref is to be created from HEAD (first use) or reset to HEAD (--series
        --prebuild)."""
        pre = self.repo.ref(REF_PRE)
        if pre is not None and not (self.settings.series and self.request.prebuild):
            return pre, pre
        head = self.repo.resolve_commit("HEAD")
        if head is None:
            raise InputError("this repository has no commit yet: HEAD cannot be taken as the "
                             "running kernel's source",
                             hint="commit the running kernel's source first")
        return head, pre

    def _move_pre(self, pre_ref: str | None) -> None:
        """Create refs/ksplice/pre at HEAD (first use), or reset it there (--series
        --prebuild)."""
        why = "--series --prebuild at HEAD" if pre_ref else "start at HEAD"
        self.repo.update_ref(REF_PRE, self.pre, pre_ref,
                             f"ksplice create: {why} ({self.pre[:12]})")
        self.say.note(f"refs/ksplice/pre {'now' if pre_ref else 'created'} at HEAD "
                      f"({self.pre[:12]}): the running kernel's source")

    def _change(self, *, new_pre: bool) -> inputs.Change:
        r = self.request
        if r.patch is not None:
            return inputs.from_patch(self.repo, r.patch, self.pre,
                                     self.settings.patch_opts or ["-p1"])
        if r.diffext is not None:
            return inputs.from_diffext(self.repo, r.diffext, self.pre)
        return inputs.from_commit(self.repo, r.commit or "HEAD", self.pre, new_pre=new_pre)

    def _check_layouts(self, post: str) -> None:
        """Refuse a change to the layout of a struct or union (see git_ksplice.layout),
        before anything is built, unless --allow-layout-change says no object of the type
        is live."""
        found = []
        for path in self.repo.changed_paths(self.pre, post, ("*.c", "*.h")):
            before, after = self.repo.read_blob(self.pre, path), self.repo.read_blob(post, path)
            if before is None or after is None:
                continue
            found += changed_layouts(path, before.decode("utf-8", "replace"),
                                     after.decode("utf-8", "replace"))
        if not found:
            return
        listed = ", ".join(c.describe() for c in found)
        if self.request.allow_layout_change:
            self.say.note(f"warning: the change alters the layout of {listed}; allowed by "
                          "--allow-layout-change")
            return
        raise RefusedError(
            f"the change alters the layout of {listed}: objects the running kernel already "
            "allocated keep the old layout, and the new code would read and write them at "
            "the wrong offsets",
            hint="keep new members in a shadow variable instead, attached to each object "
                 "with klp_shadow_get_or_alloc() and freed in a post-unpatch callback (see "
                 "\"Shadow variables\" in ksplice-patch.h, which the patch can #include, "
                 "and in the README); if no object of the type can exist while the update "
                 "is loaded, pass --allow-layout-change")

    # -- builds --------------------------------------------------------------------------

    def _make_targets(self) -> tuple[list[str], list[str] | None]:
        """(pristine build targets, patched build targets). For Linux the pristine build
        makes vmlinux and modules (no bzImage: these builds are never booted; the module
        build needs Module.symvers), the patched one only compiles (`KBUILD_MODULES=1 .`)."""
        if self.settings.make_targets is not None:
            return self.settings.make_targets, None
        if _is_kbuild(self.repo, self.pre):
            return ["vmlinux", "modules"], ["KBUILD_MODULES=1", "."]
        return [], None

    def _pristine_build(self) -> None:
        """The pristine tree at pre: prepared (targeted mode) or built whole (full)."""
        s = self.settings
        targets, patched_targets = self._make_targets()
        self.build = BuildSettings(s.jobs, self._make_args(), s.verbose, reporter=self.say,
                                   targets=targets, patched_targets=patched_targets)
        self.targeted = self._targeted_mode()
        if (s.build_mode == "targeted" and s.make_targets is not None
                and _is_kbuild(self.repo, self.pre)):
            self.say.note("ksplice.makeTargets is set: building the whole tree with those "
                          "targets (the targeted mode compiles single objects with kbuild's "
                          "own; unset it to use that mode)")
        if self.targeted:
            self.tree = self.prepared
            self._require_symvers()
        if self.request.skip_prebuild and self.tree.state().get("pre") != self.pre:
            raise InputError("--skip-prebuild: there is no pristine build of "
                             f"refs/ksplice/pre ({self.pre[:12]}) to use",
                             hint="run git ksplice create --prebuild first")
        gc = self.repo.gc_running()
        if gc is not None:
            self.say.note(f"git gc (pid {gc}) is repacking this repository: the build shares "
                          "the CPUs with it until it finishes")
        if self.targeted:
            self._prepare()
        else:
            self._full_pristine_build()

    def _make_args(self) -> list[str]:
        """The user's make arguments with the running kernel's release and compiler pinned
        (see git_ksplice.toolchain), the compiler checked."""
        running = running_kernel(self.settings.orig)
        args = pinned_make_args(running, self.settings.make_args)
        check_compiler(running, args)
        return args

    def _targeted_mode(self) -> bool:
        """The targeted mode is kbuild's: a Linux tree, built with its own targets."""
        return (self.settings.build_mode == "targeted" and self.settings.make_targets is None
                and _is_kbuild(self.repo, self.pre))

    def _require_symvers(self) -> None:
        if not self.settings.orig.module_symvers.exists():
            raise InputError(
                f"ORIG_CONFIG ({self.settings.orig.path}) has no Module.symvers: the targeted "
                "build links no vmlinux, so the running kernel's exports and their CRCs must "
                "come from there",
                hint="copy the running kernel's Module.symvers (its build tree, or "
                     "/usr/src/linux-headers-RELEASE/) into ORIG_CONFIG, or build the whole "
                     "tree: --build-mode=full")

    def _prepare(self) -> None:
        assert self.build is not None
        self.say.start(f"preparing the pristine tree of {self.pre[:12]} (make "
                       "modules_prepare)")
        made = self.prepared.ensure_prepared(self.pre, self.settings.orig, self.build,
                                             log=self.logs / "prepare.log",
                                             rebuild=not self.request.skip_prebuild)
        self.say.done(f"prepared: {self.prepared.describe_timings()}" if made
                      else "up to date")

    def _full_pristine_build(self) -> None:
        assert self.build is not None
        self.tree = self.full
        self.say.start(f"pristine build of {self.pre[:12]} (make -j{self.settings.jobs})")
        if self.full.state().get("pre") != self.pre:
            self.say.expect(self.prepared.configured_count())
        built = self.full.ensure_pristine(self.pre, self.settings.orig, self.build,
                                          log=self.logs / "prebuild.log",
                                          rebuild=not self.request.skip_prebuild)
        self.say.done(f"built: {self.full.describe_timings()}" if built else "up to date")

    # -- post commit ---------------------------------------------------------------------

    def _hold_post(self) -> None:
        """Point refs/ksplice/tmp/<ID> at a temporary post commit. It was written before the
        pristine build and nothing held it since: a concurrent `git gc --prune=now` may have
        deleted it, so its objects are written again (the same commit) before the ref, and
        once more after it, when they are reachable and safe (gc could still have struck
        between the two)."""
        change = self.change
        assert change is not None
        if not change.temporary:
            return
        assert change.rewrite is not None
        self.tmp_ref = REF_TMP + self.id
        for attempt in range(3):
            if change.rewrite() != change.post:
                raise AssertionError("a temporary commit came out different the second time")
            try:
                self.repo.update_ref(self.tmp_ref, change.post, None,
                                     f"ksplice create: building {self.id}")
                break
            except ConcurrencyError:
                if attempt == 2 or self.repo.ref(self.tmp_ref) is not None:
                    raise
        change.rewrite()

    def _release_post(self) -> None:
        """A failed run lets its temporary commit go (the next run would anyway)."""
        assert self.change is not None
        if self.tmp_ref is not None and self.repo.ref(self.tmp_ref) == self.change.post:
            self.repo.delete_ref(self.tmp_ref, self.change.post, "ksplice create: failed")

    # -- compare -------------------------------------------------------------------------

    def _build_and_compare(self) -> tuple[list[ChangedObject], list[str], dict[str, bytes]]:
        """The objects the change rebuilds compared with their pristine builds, and the
        --build-modules modules; the tree is reverted whatever happens. In the targeted
        mode, a change that only a full build can follow (or that reaches most of the
        objects) falls back to the full build, saying why."""
        if self.targeted:
            found = self._select_objects()
            if found is not None:
                return self._targeted_build_and_compare(found)
            self.targeted = False
            if self.request.skip_prebuild and self.full.state().get("pre") != self.pre:
                raise InputError("--skip-prebuild: this change needs the full build, and "
                                 "there is no full pristine build of refs/ksplice/pre "
                                 f"({self.pre[:12]}) to use",
                                 hint="run git ksplice create --prebuild --build-mode=full "
                                      "first, or drop --skip-prebuild")
            self._full_pristine_build()
        return self._full_build_and_compare()

    def _full_build_and_compare(self) -> tuple[list[ChangedObject], list[str],
                                               dict[str, bytes]]:
        assert self.change is not None and self.build is not None
        self.say.start(f"incremental build of {self.change.post[:12]}")
        try:
            patched = self.full.build_patched(self.pre, self.change.post, self.build,
                                              self.log,
                                              units=lambda: set(target_map(self.full.path)))
            targets = target_map(self.full.path)
            self.say.done(f"{count(patched.compiled, 'object')} compiled, "
                          f"{len(patched.changed_objects)} changed")
            return self._compare_all(patched, targets, targets)
        finally:
            self.full.revert(self.pre)

    def _compare_all(self, patched: PatchedBuild | TargetedBuild, targets: dict[str, str],
                     pre_targets: dict[str, str]) -> tuple[list[ChangedObject], list[str],
                                                           dict[str, bytes]]:
        """Compare, pick the --extra-match objects, build the --build-modules ones: all in
        the patched tree, before it is reverted."""
        self.say.start("comparing objects")
        results = self._compare(patched.changed_objects, targets)
        extra = self._extra_objects(pre_targets, patched.changed_objects)
        for rel in extra:
            self.update.add_extra(rel, self.tree.pristine_file(rel))
        modules = self._replacement_modules(results) if self.settings.build_modules else {}
        self.say.done(count(len(results), "object"))
        checkpoint("compared")
        return self._verdict(results, patched), extra, modules

    # -- the targeted mode ---------------------------------------------------------------

    def _select_objects(self) -> Affected | None:
        """The objects the change can affect (see git_ksplice.affected), or None when only
        the full build can answer, said with the reason."""
        assert self.change is not None
        post = self.change.post
        self.say.start("finding the objects the change can affect")
        changed = {p: self.repo.read_blob(post, p)
                   for p in self.repo.changed_paths(self.pre, post, ())}
        self.pre_config = pre_config = self.prepared.configuration()
        self.post_config = pre_config
        if any(is_makefile(p) for p in changed) and needs_full_build(changed) is None:
            self.post_config = self.prepared.configuration_at(post)
        index = (None if adds_files(self.prepared.path, changed)
                 else self.prepared.include_index())
        graph = IncludeGraph(self.prepared.path, overlay=changed, index=index)
        found = affected_objects(graph, ChangeSet(changed, pre_config.targets,
                                                  self.post_config.targets,
                                                  self.prepared.recorded()))
        total = len(pre_config.targets)
        if found.full_build is None and len(found.objects) > _TARGETED_SHARE * total:
            cause = Counter(found.objects.values()).most_common(1)[0][0]
            found.full_build = (f"the change ({cause}) can affect "
                                f"{len(found.objects)} of the configuration's {total} "
                                "objects: compiling them twice costs about what the full "
                                "build does, and the full build is kept for the next update")
        if found.full_build is not None:
            self.say.done("only a full build can follow this change")
            self.say.note(f"building the whole tree: {found.full_build} (--build-mode=full "
                          "goes there directly)")
            return None
        for path in found.not_built:
            self.say.note(f"{path}: not built by this configuration")
        if found.inert:
            shown = ", ".join(found.inert[:5]) + (", ..." if len(found.inert) > 5 else "")
            self.say.note(f"no build reads {count(len(found.inert), 'changed path')}: "
                          f"{shown}")
        self.say.done(f"{count(len(found.objects), 'object')} of {total}")
        self.not_built, self.inert = found.not_built, found.inert
        return found

    def _targeted_build_and_compare(self, found: Affected) -> tuple[
            list[ChangedObject], list[str], dict[str, bytes]]:
        assert self.change is not None and self.build is not None
        assert self.pre_config is not None and self.post_config is not None
        pre_targets, post_targets = self.pre_config.targets, self.post_config.targets
        extra = self._extra_objects(pre_targets, [])
        at_pre = sorted({o for o in found.objects if o in pre_targets} | set(extra))
        missing = [o for o in at_pre if self.prepared.pre_object(o) is None]
        self.say.start(f"compiling {count(len(missing), 'object')} at pre "
                       f"({self.pre[:12]})" + (f", {len(at_pre) - len(missing)} kept"
                                               if len(missing) < len(at_pre) else ""))
        self.say.expect(len(missing))
        self.prepared.compile_pre(at_pre, self.build, self.log)
        self.say.done()
        at_post = sorted(o for o in found.objects if o in post_targets)
        for gone in sorted(o for o in found.objects if o not in post_targets):
            self.say.note(f"{gone}: no longer built at post; its code stays as it runs")
        self.say.start(f"compiling {count(len(at_post), 'object')} at "
                       f"{self.change.post[:12]}")
        self.say.expect(len(at_post))
        try:
            patched = self.prepared.build_patched(self.pre, self.change.post, at_post,
                                                  self.build, self.log)
            self.say.done(f"{len(patched.changed_objects)} changed")
            return self._compare_all(patched, post_targets, pre_targets)
        finally:
            self.prepared.revert(self.pre)

    def _compare(self, rebuilt: list[str], targets: dict[str, str]) -> list[ChangedObject]:
        only = [_target_pattern(p) for p in self.settings.only_targets]
        results = []
        for rel in rebuilt:
            target = targets.get(rel, "vmlinux")
            if only and not any(fnmatch.fnmatchcase(target, p) for p in only):
                continue
            pre_obj, post_obj = self.tree.pristine_file(rel), self.tree.path / rel
            exists = pre_obj.exists()
            # A new source file: all of it is new.
            before = read_object(pre_obj) if exists else empty_object(str(pre_obj))
            res = diff_objects(before, read_object(post_obj), Options(target=target))
            results.append(ChangedObject(rel, target, res))
            self.update.add_compared(rel, pre_obj if exists else None, post_obj)
            if res.output is not None and not res.refusals:
                self.update.add_diff(rel, serialize(res.output.sections, res.output.symbols))
        return results

    def _verdict(self, results: list[ChangedObject],
                 patched: PatchedBuild) -> list[ChangedObject]:
        """The changed objects; a refusal of any object refuses the update."""
        assert self.change is not None
        refused = [r for r in results if r.result.result == "refused"]
        if refused:
            lines = [f"{r.path}: {' in '.join(x for x in (f.symbol, f.section) if x)}: "
                     f"{f.message}" for r in refused for f in r.result.refusals]
            raise RefusedError("the change cannot be applied to a running kernel:\n  "
                               + "\n  ".join(lines),
                               hint=f"objects compared: {', '.join(r.path for r in results)}")
        changed = [r for r in results if r.result.result == "changed"]
        if not changed:
            raise NoChangeError("No changes detected.",
                                hint=_no_change_hint(patched, self.change, self.not_built,
                                                     self.inert))
        return changed

    def _extra_objects(self, targets: dict[str, str], changed: list[str]) -> list[str]:
        """Unchanged objects named by --extra-match (minus --exclude-match): their pristine
        builds ship in debug/ so the running kernel can be checked against them."""
        if not self.settings.extra_match:
            return []
        inc = [_target_pattern(p) for p in self.settings.extra_match]
        exc = [_target_pattern(p) for p in self.settings.exclude_match]
        return sorted(o for o in targets if o not in changed
                      and any(fnmatch.fnmatchcase(o, p) for p in inc)
                      and not any(fnmatch.fnmatchcase(o, p) for p in exc))

    def _replacement_modules(self, results: list[ChangedObject]) -> dict[str, bytes]:
        """--build-modules: the patched modules as files to install for the next boot. In a
        Linux tree they are rebuilt here without git-ksplice's flags (the running kernel's
        modules were built normally), in the patched tree before it is reverted."""
        assert self.build is not None
        names = sorted({r.target for r in results
                        if r.target != "vmlinux" and r.result.result == "changed"})
        out: dict[str, bytes] = {}
        linux = is_linux_tree(self.tree.path)
        for name in names:
            ko_rel = (self.post_config.modules.get(name) if self.targeted and self.post_config
                      else module_ko_path(self.tree.path, name))
            if ko_rel is None:
                continue
            if linux:
                build_external_module(self.tree.path, self.tree.path / Path(ko_rel).parent,
                                      self.build.make_args, self.build.jobs, self.log,
                                      what=f"module {name} for --build-modules")
            ko = self.tree.path / ko_rel
            if ko.exists():
                out[name] = ko.read_bytes()
        return out

    # -- module, package, record ---------------------------------------------------------

    @property
    def description(self) -> str:
        assert self.change is not None
        return self.request.description or self.change.summary

    def _module(self, changed: list[ChangedObject]) -> ModuleBuild | None:
        """The livepatch module, built against the (reverted) pristine tree and checked
        against the running kernel; None for a tree that is not Linux."""
        if not is_linux_tree(self.tree.path):
            return None
        assert self.build is not None
        objects = [PatchedObject(c.target, c.path, c.result, self.tree.pristine_file(c.path))
                   for c in changed]
        resolved = self._run_pre(objects)
        self.say.start("livepatch module")
        module = build_module(ModuleRequest(
            self.id, objects, tree=self.tree.path, orig=self.settings.orig,
            work=self.repo.state_dir / "modules" / self.id, make_args=self.build.make_args,
            jobs=self.build.jobs, log=self.log, description=self.description,
            module_image=self._module_image, running_addresses=resolved))
        check_against_running(module, self.settings.orig)
        if self.settings.signing is not None:
            key, cert = self.settings.signing
            module.signed = sign_module(module.ko, self.tree.path,
                                        self.settings.orig.dot_config, key, cert,
                                        self.repo.state_dir / "modules" / self.id)
        self.say.done(f"{module.name}.ko: {count(len(module.funcs), 'function')}, "
                      f"{count(module.klp_relocations, 'klp relocation')}, "
                      + (f"signed ({module.signed})" if module.signed else "unsigned"))
        return module

    def _run_pre(self, objects: list[PatchedObject]
                 ) -> dict[str, dict[tuple[str | None, str], int]]:
        """The pristine code the update replaces must be the running kernel's
        (livepatch/runpre.py): refused otherwise, before the module is built. Returns the
        namesakes the matching told apart, for sympos."""
        self.say.start("run-pre check")
        report = check_run_pre(
            [(o.target, o.path, o.pristine, [f.original or f.name for f in o.result.changed])
             for o in objects], self.settings.orig, self.repo.state_dir / "running")
        for why in report.skipped:
            self.say.note(f"run-pre check skipped for {why}")
        self.say.done(f"{count(len(report.checked), 'function')} as the running kernel has "
                      "them")
        return report.resolved

    def _module_image(self, name: str) -> Path | None:
        """Module `name` as the running kernel has it, for its symbols: the shipped .ko
        (ORIG_CONFIG's modules/, from import-kernel), else the pristine build's, or in the
        targeted mode its pre objects linked in order."""
        shipped = shipped_module(self.settings.orig, name)
        if shipped is not None:
            return shipped
        if self.targeted:
            assert self.build is not None
            return self.prepared.module_image(name, self.build, self.log)
        return module_file(self.full.path, name)

    def _package(self, changed: list[ChangedObject], extra: list[str],
                 modules: dict[str, bytes], module: ModuleBuild | None) -> tuple[Path, dict]:
        assert self.change is not None and self.build is not None
        when = timestamp()
        origin = Provenance(self.id, self.description, self.change.mode, self.settings.series,
                            self.pre, self.change.post, when, compiler_version(),
                            f"git-ksplice {__version__}", KSPLICE_KCFLAGS)
        manifest = compose_manifest(origin, changed, extra, module)
        self.update.finish(
            manifest=manifest, patch=self.change.patch, description=self.description,
            when=when, release=kernel_release(self.tree.path, self.build.make_args),
            targets=sorted({c.target for c in changed}),
            livepatch=(module.name, module.ko) if module is not None else None,
            modules=modules, build_log=self.log)
        return write_tarball(self.update, self.settings.output_dir, when), manifest

    def _record(self, manifest: dict) -> None:
        assert self.change is not None
        ledger.record(self.repo, ledger.Record(
            self.id, self.pre, self.change.post, manifest, self.description, self.change.patch,
            self.change.mode, self.change.summary, self.settings.series, self.tmp_ref))


def _is_kbuild(repo: Repo, commit: str) -> bool:
    """A Linux tree at `commit` (kbuild's modpost rules are there)."""
    return repo.read_blob(commit, "scripts/Makefile.modpost") is not None


def _target_pattern(pattern: str) -> str:
    return pattern.replace("%", "*")  # make patterns, as ksplice-create took them


def _no_change_hint(build: PatchedBuild | TargetedBuild, change: inputs.Change,
                    not_built: list[str], inert: list[str]) -> str:
    """What the build did, and (the likely reasons) files this configuration does not
    build, files no build reads, new files nothing built."""
    rebuilt, differ = len(build.rebuilt), len(build.changed_objects)
    hint = (f"{count(rebuilt, 'build product')} {'was' if rebuilt == 1 else 'were'} "
            f"rebuilt, {count(differ, 'object')} {'differs' if differ == 1 else 'differ'}, "
            "and no function changed")
    if not_built:
        hint += f"; not built by this configuration: {', '.join(not_built)}"
    if inert:
        hint += f"; read by no build: {', '.join(inert[:5])}{', ...' if len(inert) > 5 else ''}"
    if change.added:
        hint += (f"; the change adds {', '.join(change.added)}: a new file is built only "
                 "if a Makefile names it")
    return hint
