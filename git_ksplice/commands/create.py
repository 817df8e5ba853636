"""`git ksplice create`: from a change to an update tarball, with the state kept in git.

Order of work, chosen so that an interruption at any point is repaired by the next run:
1. under the repository lock, forget temporary commits of runs that died
   (`refs/ksplice/tmp/*`), create `refs/ksplice/pre` from HEAD on first use;
2. make sure the build tree is pristine and built at pre (reverting a tree left mid-build);
3. turn the input into a post commit (kept under `refs/ksplice/tmp/<ID>` while building);
4. build post incrementally, compare the rebuilt objects, revert the tree;
5. write the tarball, then move all refs in one transaction: `refs/ksplice/updates/<ID>`,
   the ledger `refs/ksplice/series`, `refs/ksplice/pre` with --series, the tmp ref deleted.
Nothing before step 5 is visible in refs; a tarball without refs (killed between the two) is
rewritten by the next run with that id.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import string
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from git_ksplice import __version__, inputs, ui
from git_ksplice.build import (
    BuildSettings,
    BuildTree,
    OrigConfig,
    PatchedBuild,
    is_linux_tree,
    shell_words,
    target_map,
)
from git_ksplice.elf.diff import DiffResult, Options, diff_objects
from git_ksplice.elf.model import empty_object, read_object
from git_ksplice.elf.writer import serialize
from git_ksplice.errors import (
    EXIT_OK,
    BuildError,
    ConcurrencyError,
    InputError,
    KspliceError,
    NoChangeError,
    RefusedError,
)
from git_ksplice.faults import checkpoint
from git_ksplice.livepatch.module import (
    ModuleBuild,
    PatchedObject,
    build_module,
    check_versions,
)
from git_ksplice.livepatch.symbols import running_vermagic
from git_ksplice.package import (
    API_VERSION,
    MANIFEST_FORMAT,
    UPDATE_ID,
    Update,
    timestamp,
    write_tarball,
)
from git_ksplice.repo import REF_PRE, REF_SERIES, REF_TMP, REF_UPDATES, Repo


@dataclass
class CreateOptions:
    commit: str | None = None
    patch: str | None = None
    diffext: str | None = None
    prebuild: bool = False
    #: None: from git config (ksplice.series, ksplice.buildModules, ksplice.wait), else off
    #: (wait: on); empty lists likewise (ksplice.onlyTargets, ksplice.extraMatch,
    #: ksplice.excludeMatch, ksplice.patchOpt, all multi-valued).
    series: bool | None = None
    id: str | None = None
    description: str | None = None
    jobs: int | None = None
    verbose: int = 0
    config: str | None = None
    build_modules: bool | None = None
    only_targets: list[str] = field(default_factory=list)
    extra_match: list[str] = field(default_factory=list)
    exclude_match: list[str] = field(default_factory=list)
    skip_prebuild: bool = False
    patch_opts: list[str] = field(default_factory=list)
    output: str | None = None
    as_json: bool = False
    wait: bool | None = None
    #: build even though a struct or union changes layout (see git_ksplice.layout)
    allow_layout_change: bool = False
    #: Where relative paths (--patch, --config, -o) are resolved: the user's directory.
    cwd: str = field(default_factory=os.getcwd)
    #: Where the repository is found (ksplice-create's KERNEL_SOURCE); default `cwd`.
    source: str | None = None


def _modes(opts: CreateOptions) -> list[str]:
    modes = []
    if opts.commit is not None:
        modes.append(f"COMMIT/--git ({opts.commit})")
    if opts.patch is not None:
        modes.append("--patch")
    if opts.diffext is not None:
        modes.append("--diffext")
    if opts.prebuild:
        modes.append("--prebuild")
    return modes


#: Options that are settings too: (field, git config key). Scalars apply when the option was
#: not given; lists when it was given no value.
SETTINGS_BOOL = (("series", "ksplice.series", False), ("build_modules", "ksplice.buildModules",
                                                       False), ("wait", "ksplice.wait", True))
SETTINGS_LIST = (("only_targets", "ksplice.onlyTargets"), ("extra_match", "ksplice.extraMatch"),
                 ("exclude_match", "ksplice.excludeMatch"), ("patch_opts", "ksplice.patchOpt"))


def _apply_settings(repo: Repo, opts: CreateOptions) -> None:
    for name, key, default in SETTINGS_BOOL:
        if getattr(opts, name) is None:
            value = repo.config(key, type="bool")
            setattr(opts, name, default if value is None else value == "true")
    for name, key in SETTINGS_LIST:
        given = getattr(opts, name)
        if given:  # an empty value (--only-targets=) clears the setting
            setattr(opts, name, [v for v in given if v])
        else:
            setattr(opts, name, repo.config_all(key))


def _jobs(repo: Repo, opts: CreateOptions) -> int:
    """-j N, else CONCURRENCY_LEVEL, else ksplice.jobs, else the number of CPUs. A value below
    1 is an error naming where it came from, never "every CPU": make itself refuses -j0, and
    a silent substitute hides the typo. (-j is checked by click, as a usage error; the other
    two are not on the command line, so they are ordinary errors, exit 1.)"""
    if opts.jobs is not None:
        if opts.jobs < 1:  # the CLI refuses it; library callers get the same answer
            raise InputError(f"-j {opts.jobs}: the number of make jobs must be 1 or more")
        return opts.jobs
    env = os.environ.get("CONCURRENCY_LEVEL")
    if env:
        if not re.fullmatch(r"[0-9]+", env) or int(env) < 1:
            raise InputError(f"CONCURRENCY_LEVEL={env!r} is not a positive number of make jobs",
                             hint="set it to 1 or more, or unset it (-j N overrides it)")
        return int(env)
    configured = repo.config("ksplice.jobs", type="int")
    if configured is not None:
        if int(configured) < 1:
            raise InputError(f"ksplice.jobs={configured} is not a positive number of make jobs",
                             hint="set it to 1 or more (git config ksplice.jobs N) or remove it "
                                  "(git config --unset ksplice.jobs); `git config "
                                  "--show-origin ksplice.jobs` shows where it is set")
        return int(configured)
    return os.cpu_count() or 1


def find_orig_config(repo: Repo, opts: CreateOptions) -> OrigConfig:
    """ORIG_CONFIG: --config, else ksplice.config, else ksplice/ at the top of the tree."""
    path = opts.config
    if path is not None:
        p = Path(path)
        p = p if p.is_absolute() else Path(opts.cwd) / p
    else:
        configured = repo.config("ksplice.config", type="path")
        if configured:
            p = Path(configured).expanduser()
            if not p.is_absolute() and repo.toplevel:
                p = repo.toplevel / p
        elif repo.toplevel is not None:
            p = repo.toplevel / "ksplice"
            main_tree = repo.common_dir.parent
            if not p.exists() and (main_tree / "ksplice").is_dir():
                p = main_tree / "ksplice"  # from a linked worktree: the main tree's
        else:
            raise InputError("no ORIG_CONFIG: this repository has no working tree",
                             hint="pass --config=DIR or set ksplice.config")
    orig = OrigConfig(p.resolve())
    orig.check()
    return orig


def _make_args(repo: Repo, orig: OrigConfig) -> list[str]:
    args = list(orig.flags)
    configured = repo.config("ksplice.makeArgs")
    if configured:
        args += shell_words(configured, "ksplice.makeArgs")
    return args


def _make_targets(repo: Repo, pre: str) -> tuple[list[str], list[str] | None]:
    """(pristine build targets, patched build targets). For Linux the pristine build makes
    vmlinux and modules (no bzImage: these builds are never booted; the module build needs
    Module.symvers), the patched one only compiles (`KBUILD_MODULES=1 .`)."""
    configured = repo.config("ksplice.makeTargets")
    if configured is not None:
        return shell_words(configured, "ksplice.makeTargets"), None
    if repo.read_blob(pre, "scripts/Makefile.modpost") is not None:
        return ["vmlinux", "modules"], ["KBUILD_MODULES=1", "."]
    return [], None


def _new_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _target_pattern(pattern: str) -> str:
    return pattern.replace("%", "*")  # make patterns, as ksplice-create took them


def run(opts: CreateOptions) -> int:
    try:
        return _run(opts)
    except KspliceError as e:
        if opts.as_json:
            # Scripts get one document whatever happens; the message still goes to stderr.
            result = {66: "unchanged", 65: "refused"}.get(e.exit_code, "error")
            ui.print_json({"schema": 1, "result": result, "message": e.message,
                           "hint": e.hint})
        raise


def _run(opts: CreateOptions) -> int:
    modes = _modes(opts)
    if len(modes) > 1:
        raise InputError("give one change at a time: " + " and ".join(modes) + " were given",
                         hint="use one of COMMIT, --git, --patch, --diffext or --prebuild")
    repo = Repo.discover(opts.source or opts.cwd)
    _apply_settings(repo, opts)
    update_id = opts.id if opts.id is not None else _new_id()
    if not UPDATE_ID.match(update_id):
        raise InputError(f"--id={update_id!r}: an update id is 1 to 32 characters of a-z, "
                         "0-9 and _, starting with a letter or digit")
    orig = find_orig_config(repo, opts)
    jobs = _jobs(repo, opts)
    out_dir = _output_dir(repo, opts)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output directory {out_dir} is a file",
                         hint="give -o a directory (it is created if missing)")
    _check_writable(out_dir)
    timestamp()  # a bad SOURCE_DATE_EPOCH is reported now, not after the build
    phases = ui.Phases(verbose=opts.verbose, quiet=opts.as_json and not opts.verbose)

    def waiting(holder: str) -> None:
        phases.note(f"waiting for another git ksplice create ({holder or 'running'})...")

    with repo.lock(wait=opts.wait, on_wait=waiting):
        checkpoint("locked")
        _forget_dead_runs(repo)
        if not opts.prebuild and repo.ref(REF_UPDATES + update_id) is not None:
            raise InputError(f"update id {update_id} already exists "
                             f"({REF_UPDATES}{update_id})",
                             hint="choose another --id, or leave it out for a random one")
        # Check the input before anything is built or recorded: a typo must not cost a
        # kernel build, nor leave refs/ksplice/pre behind.
        pre, pre_ref = _pre(repo, opts)
        try:
            change = None if opts.prebuild else _change(repo, opts, pre, new_pre=pre_ref is None)
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
                _move_pre(repo, pre, pre_ref, phases)
            raise
        if change is not None:
            _check_layouts(repo, opts, pre, change.post, phases)
        if pre_ref != pre:
            _move_pre(repo, pre, pre_ref, phases)
        for note in change.notes if change is not None else []:
            phases.note(note)
        checkpoint("pre-created")
        tree = BuildTree(repo)
        targets, patched_targets = _make_targets(repo, pre)
        settings = BuildSettings(jobs, _make_args(repo, orig), opts.verbose,
                                 on_line=phases.build_line, targets=targets,
                                 patched_targets=patched_targets)
        logs = repo.state_dir / "logs"
        if opts.skip_prebuild and tree.state().get("pre") != pre:
            raise InputError("--skip-prebuild: there is no pristine build of "
                             f"refs/ksplice/pre ({pre[:12]}) to use",
                             hint="run git ksplice create --prebuild first")
        gc = repo.gc_running()
        if gc is not None:
            phases.note(f"git gc (pid {gc}) is repacking this repository: the build shares "
                        "the CPUs with it until it finishes")
        phases.start(f"pristine build of {pre[:12]} (make -j{jobs})")
        built = tree.ensure_pristine(pre, orig, settings, log=logs / "prebuild.log",
                                     rebuild=not opts.skip_prebuild, on_repair=phases.note)
        phases.done(f"built: {tree.describe_timings()}" if built else "up to date")
        checkpoint("prebuilt")
        if opts.prebuild:
            if opts.as_json:
                ui.print_json({"schema": 1, "result": "prebuilt", "pre": pre,
                               "tree": str(tree.path)})
            return EXIT_OK
        assert change is not None
        tmp_ref = None
        if change.temporary:
            tmp_ref = REF_TMP + update_id
            _hold(repo, change, tmp_ref, update_id)
        checkpoint("post-created")
        try:
            return _build_and_package(repo, opts, update_id, orig, tree, settings, pre,
                                      change, tmp_ref, out_dir, phases, logs)
        except BaseException:
            if tmp_ref is not None and repo.ref(tmp_ref) == change.post:
                repo.delete_ref(tmp_ref, change.post, "ksplice create: failed")
            raise
        finally:
            phases.stop()


def _hold(repo: Repo, change: inputs.Change, ref: str, update_id: str) -> None:
    """Point `ref` at the temporary post commit. It was written before the pristine build and
    nothing held it since: a concurrent `git gc --prune=now` may have deleted it, so its
    objects are written again (the same commit) before the ref, and once more after it, when
    they are reachable and safe (gc could still have struck between the two)."""
    assert change.rewrite is not None
    for attempt in range(3):
        if change.rewrite() != change.post:
            raise AssertionError("a temporary commit came out different the second time")
        try:
            repo.update_ref(ref, change.post, None, f"ksplice create: building {update_id}")
            break
        except ConcurrencyError:
            if attempt == 2 or repo.ref(ref) is not None:
                raise
    change.rewrite()


def _check_writable(out_dir: Path) -> None:
    """The tarball's directory (or the one it will be made in) must be writable: found now,
    not after a kernel build. access() also says no for a read-only file system."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        why = ("is on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY
               else "is not writable")
        raise InputError(f"cannot write the tarball to {out_dir}: {existing} {why}",
                         hint="give -o a directory you can write to (or ksplice.outputDir)")


def _output_dir(repo: Repo, opts: CreateOptions) -> Path:
    """-o DIR, else ksplice.outputDir, else the state directory: never, by default, the
    user's working tree (an untracked tarball there would change `git status`)."""
    if opts.output is not None:
        p = Path(opts.output).expanduser()
        return p if p.is_absolute() else Path(opts.cwd) / p
    configured = repo.config("ksplice.outputDir", type="path")
    if configured is None:
        return repo.state_dir / "updates"
    p = Path(configured).expanduser()  # relative to the top of the tree, like ksplice.config
    return p if p.is_absolute() else (repo.toplevel or repo.common_dir) / p


def _forget_dead_runs(repo: Repo) -> None:
    """Temporary commits exist only while a run holds the lock: any left are from a run
    that died."""
    for name, oid in repo.refs(REF_TMP).items():
        repo.delete_ref(name, oid, "ksplice create: forget an interrupted run")


def _move_pre(repo: Repo, pre: str, pre_ref: str | None, phases: ui.Phases) -> None:
    """Create refs/ksplice/pre at HEAD (first use), or reset it there (--series --prebuild)."""
    why = ("--series --prebuild at HEAD" if pre_ref else "start at HEAD")
    repo.update_ref(REF_PRE, pre, pre_ref, f"ksplice create: {why} ({pre[:12]})")
    phases.note(f"refs/ksplice/pre {'now' if pre_ref else 'created'} at HEAD "
                f"({pre[:12]}): the running kernel's source")


def _pre(repo: Repo, opts: CreateOptions) -> tuple[str, str | None]:
    """(the running kernel's source, refs/ksplice/pre's current value). They differ when the
    ref is to be created from HEAD (first use) or reset to HEAD (--series --prebuild)."""
    pre = repo.ref(REF_PRE)
    if pre is not None and not (opts.series and opts.prebuild):
        return pre, pre
    head = repo.resolve_commit("HEAD")
    if head is None:
        raise InputError("this repository has no commit yet: HEAD cannot be taken as the "
                         "running kernel's source", hint="commit the running kernel's source "
                                                        "first")
    return head, pre


def _check_layouts(repo: Repo, opts: CreateOptions, pre: str, post: str,
                   phases: ui.Phases) -> None:
    """Refuse a change to the layout of a struct or union (see git_ksplice.layout), before
    anything is built, unless --allow-layout-change says no object of the type is live."""
    from git_ksplice.layout import changed_layouts

    names = repo.git("diff", "--name-only", "-z", "--no-renames", pre, post, "--", "*.c",
                     "*.h", isolated=True).stdout.split("\0")
    found = []
    for path in filter(None, names):
        before, after = repo.read_blob(pre, path), repo.read_blob(post, path)
        if before is None or after is None:
            continue
        found += changed_layouts(path, before.decode("utf-8", "replace"),
                                 after.decode("utf-8", "replace"))
    if not found:
        return
    listed = ", ".join(c.describe() for c in found)
    if opts.allow_layout_change:
        phases.note(f"warning: the change alters the layout of {listed}; allowed by "
                    "--allow-layout-change")
        return
    raise RefusedError(
        f"the change alters the layout of {listed}: objects the running kernel already "
        "allocated keep the old layout, and the new code would read and write them at the "
        "wrong offsets",
        hint="keep new members in a shadow variable (klp_shadow_alloc/klp_shadow_get) "
             "instead; if no object of the type can exist while the update is loaded, pass "
             "--allow-layout-change")


def _change(repo: Repo, opts: CreateOptions, pre: str, *, new_pre: bool) -> inputs.Change:
    if opts.patch is not None:
        p = Path(opts.patch)
        p = p if p.is_absolute() else Path(opts.cwd) / p
        return inputs.from_patch(repo, p, pre, opts.patch_opts or ["-p1"])
    if opts.diffext is not None:
        return inputs.from_diffext(repo, opts.diffext, pre)
    return inputs.from_commit(repo, opts.commit or "HEAD", pre, new_pre=new_pre)


@dataclass
class _ObjectResult:
    path: str
    target: str
    result: DiffResult


def _build_and_package(repo: Repo, opts: CreateOptions, update_id: str, orig: OrigConfig,
                       tree: BuildTree, settings: BuildSettings, pre: str,
                       change: inputs.Change, tmp_ref: str | None, out_dir: Path,
                       phases: ui.Phases, logs: Path) -> int:
    log = logs / f"{update_id}.log"
    phases.start(f"incremental build of {change.post[:12]}")
    try:
        try:
            build = tree.build_patched(pre, change.post, settings, log,
                                       units=lambda: set(target_map(tree.path)))
        except KspliceError:
            phases.stop()
            raise
        targets = target_map(tree.path)
        phases.done(f"{ui.count(build.compiled, 'object')} compiled, "
                    f"{len(build.changed_objects)} changed")
        only = [_target_pattern(p) for p in opts.only_targets]
        results: list[_ObjectResult] = []
        update = Update(update_id)
        phases.start("comparing objects")
        for rel in build.changed_objects:
            target = targets.get(rel, "vmlinux")
            if only and not any(fnmatch.fnmatchcase(target, p) for p in only):
                continue
            pre_obj, post_obj = tree.pristine_file(rel), tree.path / rel
            if pre_obj.exists():
                before = read_object(pre_obj)
                update.add_file(f"debug/objects/pre/{rel}", pre_obj)
            else:
                before = empty_object(str(pre_obj))  # a new source file: all of it is new
            res = diff_objects(before, read_object(post_obj), Options(target=target))
            results.append(_ObjectResult(rel, target, res))
            update.add_file(f"debug/objects/post/{rel}", post_obj)
            if res.output is not None and not res.refusals:
                update.add(f"debug/diff/{rel}", serialize(res.output.sections,
                                                          res.output.symbols))
        extra = _extra_objects(targets, build.changed_objects, opts)
        for rel in extra:
            update.add_file(f"debug/objects/extra/{rel}", tree.pristine_file(rel))
        modules: dict[str, bytes] = {}
        if opts.build_modules:
            wanted = sorted({r.target for r in results
                             if r.target != "vmlinux" and r.result.result == "changed"})
            modules = _replacement_modules(tree, settings, wanted, log)
        phases.done(ui.count(len(results), "object"))
        checkpoint("compared")
    finally:
        tree.revert(pre)
    refused = [r for r in results if r.result.result == "refused"]
    if refused:
        lines = []
        for r in refused:
            for f in r.result.refusals:
                where = " in ".join(x for x in (f.symbol, f.section) if x)
                lines.append(f"{r.path}: {where}: {f.message}")
        raise RefusedError("the change cannot be applied to a running kernel:\n  "
                           + "\n  ".join(lines),
                           hint=f"objects compared: {', '.join(r.path for r in results)}")
    changed = [r for r in results if r.result.result == "changed"]
    if not changed:
        raise NoChangeError("No changes detected.", hint=_no_change_hint(build, change))
    description = opts.description or change.summary
    module = None
    if is_linux_tree(tree.path):
        phases.start("livepatch module")
        module = _livepatch_module(repo, update_id, orig, tree, settings, changed, log,
                                   description)
        phases.done(f"{module.name}.ko: {ui.count(len(module.funcs), 'function')}, "
                    f"{ui.count(module.klp_relocations, 'klp relocation')}")
    when = timestamp()
    manifest = _manifest(repo, update_id, opts, pre, change, changed, extra, when, tree)
    if module is not None:
        manifest["livepatch"] = {
            "module": module.name, "vermagic": module.vermagic,
            "functions": [{"target": f.target, "name": f.old_name, "sympos": f.sympos}
                          for f in module.funcs],
            "klp_relocations": module.klp_relocations,
            "warnings": _module_warnings(module)}
        for w in manifest["livepatch"]["warnings"]:
            phases.note(f"warning: {w}")
    update.add("manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    update.add("patch", change.patch)
    update.add("description", description.rstrip("\n") + "\n")
    update.add("api-version", API_VERSION + "\n")
    update.add("timestamp", f"{when}\n")
    update.add("utsname", _utsname(tree, settings))
    contents = []
    if module is not None:
        update.add_file(f"{module.name}.ko", module.ko)
        contents.append(f"livepatch {module.name} {module.name}.ko")
    contents += [f"target {t}" for t in sorted({r.target for r in changed})]
    for target, data in sorted(modules.items()):
        update.add(f"modules/{target}.ko", data)
        contents.append(f"module {target} modules/{target}.ko")
    update.add("contents", "\n".join(contents) + "\n")
    update.add_file("debug/build.log", log)
    tarball = write_tarball(update, out_dir, when)
    checkpoint("tarball-written")
    _record(repo, update_id, pre, change, tmp_ref, manifest, description, opts.series)
    checkpoint("recorded")
    _report(opts, update_id, tarball, pre, change, changed, manifest)
    return EXIT_OK


def _no_change_hint(build: PatchedBuild, change: inputs.Change) -> str:
    """What the build did, and (the likely reason) new files nothing built."""
    rebuilt, differ = len(build.rebuilt), len(build.changed_objects)
    hint = (f"{ui.count(rebuilt, 'build product')} {'was' if rebuilt == 1 else 'were'} "
            f"rebuilt, {ui.count(differ, 'object')} {'differs' if differ == 1 else 'differ'}, "
            "and no function changed")
    if change.added:
        hint += (f"; the change adds {', '.join(change.added)}: a new file is built only "
                 "if a Makefile names it")
    return hint


def _module_warnings(module: ModuleBuild) -> list[str]:
    """What the kernel will do with the module that users would not expect."""
    out = []
    release = re.match(r"(\d+)\.(\d+)", module.vermagic)
    reloaded = sorted(o for o in module.klp_objects if o != "vmlinux")
    if reloaded and release and (int(release.group(1)), int(release.group(2))) < (6, 3):
        # Without upstream 0c05e7bd2d01 ("livepatch,x86: Clear relocation targets on a
        # module removal", merged for 6.3) the x86 loader leaves a livepatch's relocations
        # in a module that is unloaded and refuses to apply them again when it comes back.
        out.append(f"while this update is loaded, {', '.join(reloaded)} cannot be unloaded "
                   "and loaded again: this kernel (before 6.3) refuses to re-apply the "
                   "update's klp relocations to it; disable and remove the update first")
    return out


def _replacement_modules(tree: BuildTree, settings: BuildSettings, names: list[str],
                         log: Path) -> dict[str, bytes]:
    """--build-modules: the patched modules as files to install for the next boot. In a
    Linux tree they are rebuilt here without git-ksplice's flags (the running kernel's
    modules were built normally), in the patched tree before it is reverted."""
    out: dict[str, bytes] = {}
    linux = is_linux_tree(tree.path)
    order = (tree.path / "modules.order").read_text().split() \
        if (tree.path / "modules.order").exists() else []
    for name in names:
        ko_rel = next((k for k in order if Path(k).stem.replace("-", "_") == name), None)
        if ko_rel is None:
            continue
        if linux:
            directory = tree.path / Path(ko_rel).parent
            cmd = ["make", f"-j{settings.jobs}", "-C", str(tree.path), f"M={directory}",
                   *settings.make_args, "KCFLAGS=", "modules"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            with open(log, "a") as f:
                f.write("$ " + " ".join(cmd) + "\n" + r.stdout + r.stderr)
            if r.returncode != 0:
                raise BuildError(f"rebuilding module {name} for --build-modules failed",
                                 hint=f"full log: {log}")
        ko = tree.path / ko_rel
        if ko.exists():
            out[name] = ko.read_bytes()
    return out


def _livepatch_module(repo: Repo, update_id: str, orig: OrigConfig, tree: BuildTree,
                      settings: BuildSettings, changed: list[_ObjectResult], log: Path,
                      description: str) -> ModuleBuild:
    """Build the update's livepatch module against the (reverted) pristine tree, then check
    it against the running kernel: vermagic and the CRCs of the symbols it uses."""
    objects = [PatchedObject(r.target, r.path, r.result, tree.pristine_file(r.path))
               for r in changed]
    module = build_module(update_id, objects, tree=tree.path, orig_dir=orig.path,
                          work=repo.state_dir / "modules" / update_id,
                          make_args=settings.make_args, jobs=settings.jobs, log=log,
                          description=description)
    running = running_vermagic(orig.path)
    if running is not None and running != module.vermagic:
        raise RefusedError(f"the module's vermagic {module.vermagic!r} differs from the "
                           f"running kernel's {running!r}: the kernel would refuse it",
                           hint="build from the running kernel's exact source and "
                                "configuration (ORIG_CONFIG/.config, and LOCALVERSION= in "
                                "ORIG_CONFIG/flags if its release has no '+')")
    bad = check_versions(module.ko, orig.path / "Module.symvers")
    if bad:
        raise RefusedError("symbol versions (CRCs) the module needs disagree with the "
                           "running kernel's Module.symvers: " + ", ".join(bad),
                           hint="the change alters an exported symbol's type (a header "
                                "change?); the kernel would refuse the module")
    return module


def _extra_objects(targets: dict[str, str], changed: list[str], opts: CreateOptions) -> list[str]:
    """Unchanged objects named by --extra-match (minus --exclude-match): their pristine
    builds ship in debug/ so the running kernel can be checked against them."""
    if not opts.extra_match:
        return []
    inc = [_target_pattern(p) for p in opts.extra_match]
    exc = [_target_pattern(p) for p in opts.exclude_match]
    return sorted(o for o in targets if o not in changed
                  and any(fnmatch.fnmatchcase(o, p) for p in inc)
                  and not any(fnmatch.fnmatchcase(o, p) for p in exc))


def _utsname(tree: BuildTree, settings: BuildSettings) -> str:
    r = subprocess.run(["make", "-s", *settings.make_args, "kernelrelease"], cwd=tree.path,
                       capture_output=True, text=True)
    release = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() \
        else "unknown"
    return f"Sysname: Linux\nMachine: x86_64\nRelease: {release}\n"


def _compiler() -> str:
    r = subprocess.run(["gcc", "--version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else "unknown"


def _manifest(repo: Repo, update_id: str, opts: CreateOptions, pre: str,
              change: inputs.Change, changed: list[_ObjectResult], extra: list[str],
              when: int, tree: BuildTree) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for r in changed:
        t = targets.setdefault(r.target, {"objects": {}})
        t["objects"][r.path] = {
            "changed_functions": [f.as_json() for f in r.result.changed],
            "new_functions": [f.as_json() for f in r.result.new],
            "warnings": [w.as_json() for w in r.result.warnings],
        }
    return {
        "format": MANIFEST_FORMAT,
        "id": update_id,
        "description": opts.description or change.summary,
        "mode": change.mode,
        # stacked: refs/ksplice/pre moved to this update's post commit (--series)
        "series": bool(opts.series),
        "pre": pre,
        "post": change.post,
        "targets": targets,
        "extra_objects": extra,
        "timestamp": when,
        "compiler": _compiler(),
        "tool": f"git-ksplice {__version__}",
        "kcflags": "-ffunction-sections -fdata-sections",
    }


def _record(repo: Repo, update_id: str, pre: str, change: inputs.Change, tmp_ref: str | None,
            manifest: dict[str, Any], description: str, series: bool) -> None:
    tip = repo.ref(REF_SERIES)
    tree = repo.write_tree_from_files({
        "manifest.json": (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        "patch": change.patch.encode(),
        "description": (description.rstrip("\n") + "\n").encode(),
    })
    first = description.splitlines()[0] if description.strip() else change.summary
    entry = repo.user_commit(tree, [tip] if tip else [],
                             f"ksplice {update_id}: {first}\n\npre: {pre}\npost: {change.post}\n")
    updates: list[tuple[str, str | None, str | None]] = [
        (REF_UPDATES + update_id, change.post, None),
        (REF_SERIES, entry, tip),
    ]
    # The update was built against pre: if someone moved pre meanwhile, say so rather than
    # record it against a source that is no longer the running kernel's.
    updates.append((REF_PRE, change.post if series else pre, pre))
    if tmp_ref is not None:
        updates.append((tmp_ref, None, change.post))
    repo.update_refs(updates, f"ksplice create: {update_id} pre={pre[:12]} "
                              f"post={change.post[:12]} ({change.mode})")


def _report(opts: CreateOptions, update_id: str, tarball: Path, pre: str,
            change: inputs.Change, changed: list[_ObjectResult], manifest: dict) -> None:
    if opts.as_json:
        ui.print_json({"schema": 1, "result": "created", "id": update_id,
                       "tarball": str(tarball), "pre": pre, "post": change.post,
                       "series": opts.series, "targets": manifest["targets"]})
        return
    c = ui.console
    for r in changed:
        for f in r.result.changed:
            c.print(f"changed  {r.target}: {f.name} ({r.path})")
        for f in r.result.new:
            c.print(f"new      {r.target}: {f.name} ({r.path})")
        for w in r.result.warnings:
            c.print("[yellow]warning[/]  " + escape(f"{r.path}: {w.symbol}: {w.message}"))
    c.print(f"Update {update_id}: {tarball}")
