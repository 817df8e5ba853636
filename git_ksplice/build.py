"""Kernel builds: the pristine tree kept warm, the patched build, what changed, and where.

One build tree (a worktree of ours, under the common git dir or `ksplice.buildDir`) serves
both builds, at its own path: a built kernel tree copied elsewhere rebuilds everything
(objtool's `.cmd` files hold absolute paths). The pristine build at `refs/ksplice/pre` is
made once; every build product is then copied to a cache with a manifest of sizes and mtimes.
A `create` checks the post commit out in the tree (only the changed files are rewritten),
runs an incremental make, finds the products that make rewrote, and compares the objects
with their cached pristine copies. Afterwards the tree is reverted: the pre commit checked
out again and every rewritten product restored from the cache. This is Ksplice's
copy-on-write revert, done eagerly.

A state file records the tree's phase before anything is touched; a run killed at any point
(even mid-make) leaves `phase: patched`, and the next run reverts before it does anything
else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.errors import BuildError, InputError
from git_ksplice.faults import checkpoint
from git_ksplice.repo import Repo

#: What git-ksplice adds to the kernel's compiler flags: one section per function and per
#: data object, so that the differ can compare and extract them one by one.
KSPLICE_KCFLAGS = "-ffunction-sections -fdata-sections"

# Objects kbuild makes that are not compiled translation units of a target.
_NOT_UNITS = re.compile(r"(^|/)(\.tmp_[^/]*|vmlinux\.o|[^/]*\.mod\.o|built-in\.a|"
                        r"[^/]*\.lds|\.vmlinux\.export\.o)$")
_PROGRESS = re.compile(r"^\s+(CC|AS|CC \[M\]|AS \[M\])\s+(\S+)")
_ERROR_LINE = re.compile(r"(error|Error \d+|undefined reference|fatal)", re.I)


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
_CONFIG_LINE = re.compile(r"CONFIG_[A-Za-z0-9_]+=.*")
_MAP_LINE = re.compile(r"[0-9a-fA-F]+ [A-Za-z?-] \S+(\s+\[\S+\])?")


def _check_dot_config(path: Path) -> None:
    """A kernel configuration, of x86_64: an empty or foreign .config would build a kernel
    with every option off (or the wrong one), and every object would differ."""
    lines = _text_lines(path, "ORIG_CONFIG's .config")
    settings = 0
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        if not _CONFIG_LINE.fullmatch(line):
            raise InputError(f"{path} is not a kernel configuration: line {n} is {line[:60]!r}",
                             hint="copy the running kernel's .config (from /boot/config-"
                                  "RELEASE or its headers package) there")
        settings += 1
        name = line.split("=", 1)[0]
        if name in _OTHER_ARCHES and line.endswith("=y"):
            raise InputError(f"{path} is for {_OTHER_ARCHES[name]} ({line}); git-ksplice "
                             "builds x86_64 kernels")
    if not settings:
        raise InputError(f"{path} holds no kernel configuration (no CONFIG_ lines)",
                         hint="copy the running kernel's .config there")


def _check_system_map(path: Path) -> None:
    """Lines of `ADDRESS TYPE NAME`, as `nm -n vmlinux` writes them (with a module's name in
    brackets in /proc/kallsyms copies). Whether its symbols agree with ORIG_CONFIG's
    vmlinux is checked where both are read (livepatch/symbols.py)."""
    lines = _text_lines(path, "ORIG_CONFIG's System.map")
    entries = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not _MAP_LINE.fullmatch(line.strip()):
            raise InputError(f"{path} is not a System.map: line {n} is {line[:60]!r}",
                             hint="copy the running kernel's System.map (from /boot) there")
        entries += 1
    if not entries:
        raise InputError(f"{path} is empty", hint="copy the running kernel's System.map there")


def _text_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise InputError(f"cannot read {what} ({path}): {e.strerror}") from None


@dataclass
class OrigConfig:
    """ORIG_CONFIG: what describes the running kernel."""

    path: Path

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
        if not self.system_map.is_file():
            raise InputError(f"Failed to find System.map file in ORIG_CONFIG directory "
                             f"{self.path}",
                             hint="copy the running kernel's System.map there")
        if not self.dot_config.is_file():
            raise InputError(f"no .config in ORIG_CONFIG directory {self.path}",
                             hint="copy the running kernel's .config there")
        _check_dot_config(self.dot_config)
        _check_system_map(self.system_map)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in (self.dot_config, self.path / "flags"):
            h.update(p.read_bytes() if p.exists() else b"-")
        return h.hexdigest()


@dataclass
class BuildSettings:
    jobs: int
    make_args: list[str]
    verbose: int = 0
    #: Called for every line make prints (progress display); gets (line, objects compiled).
    on_line: Callable[[str, int], None] | None = None
    #: make targets; empty for the tree's default. For Linux, `vmlinux modules`: the
    #: compressed image is never needed (these builds are compared, not booted).
    targets: list[str] = field(default_factory=list)
    #: make targets of the patched build, when only objects are needed (None: `targets`).
    #: For Linux, `KBUILD_MODULES=1 .` compiles built-in and module objects without linking
    #: vmlinux or running modpost: the module is built against the pristine tree anyway.
    patched_targets: list[str] | None = None

    def patched(self) -> BuildSettings:
        if self.patched_targets is None:
            return self
        return BuildSettings(self.jobs, self.make_args, self.verbose, self.on_line,
                             self.patched_targets, None)

    def command(self) -> list[str]:
        args = list(self.make_args)
        kcflags = KSPLICE_KCFLAGS
        for i, a in enumerate(args):
            if a.startswith("KCFLAGS="):
                kcflags = a.split("=", 1)[1] + " " + KSPLICE_KCFLAGS
                del args[i]
                break
        cmd = ["make", f"-j{self.jobs}", f"KCFLAGS={kcflags}", *args]
        if self.verbose >= 2:
            cmd.append("V=1")
        return cmd + self.targets


@dataclass
class Manifest:
    """Build products of the pristine tree: path -> (size, mtime_ns)."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.files, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        try:
            return cls({k: tuple(v) for k, v in json.loads(path.read_text()).items()})
        except (OSError, ValueError):
            return None


@dataclass
class PatchedBuild:
    """What the build at the post commit produced."""

    rebuilt: list[str]  # build products make rewrote or created
    changed_objects: list[str]  # compiled units whose bytes differ from the pristine ones
    compiled: int  # objects make compiled
    log: Path


class BuildTree:
    """Our build worktree and its pristine cache."""

    #: seconds per step of the last ensure_pristine that built: checkout (and repairs),
    #: make, cache
    timings: dict[str, float]

    def __init__(self, repo: Repo) -> None:
        self.timings = {}
        self.repo = repo
        self.orig: OrigConfig | None = None
        configured = repo.config("ksplice.buildDir", type="path")
        self.root = Path(configured).expanduser() if configured else repo.state_dir / "build"
        if not self.root.is_absolute():
            self.root = (repo.toplevel or repo.common_dir) / self.root
        self.path = self.root / "tree"
        self.cache = self.root / "pristine"
        self.state_file = self.root / "state.json"
        self.manifest_file = self.root / "manifest.json"

    # -- state ---------------------------------------------------------------------------

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _set_state(self, **values) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(values, sort_keys=True))
        os.replace(tmp, self.state_file)

    # -- the pristine tree ---------------------------------------------------------------

    def ensure_pristine(self, pre: str, orig: OrigConfig, settings: BuildSettings, *,
                        log: Path, rebuild: bool = True, on_repair=None) -> bool:
        """Bring the tree to a built `pre`, repairing whatever an earlier run or someone
        else left. Returns True when make ran."""
        self.orig = orig
        say = on_repair or (lambda _msg: None)
        self.claim(say)
        started = time.monotonic()
        self.timings = {}
        st = self.state()
        self._stop_orphaned_make(st, say)
        if not self._worktree_ok():
            if self.path.exists() or st:
                say(f"the build tree {self.path} is missing or no longer a worktree of this "
                    "repository: recreating it")
            self.repo.remove_worktree(self.path)
            shutil.rmtree(self.cache, ignore_errors=True)
            self.manifest_file.unlink(missing_ok=True)
            self.repo.add_worktree(self.path, pre)
            st = {}
        elif st.get("phase") == "patched" or self.repo.worktree_head(self.path) != st.get("pre"):
            say("the build tree was left mid-build by an interrupted run: restoring its "
                "pristine state")
            self.revert(st.get("pre") or pre)
            st = self.state()
        dirty = [f for f in self.repo.worktree_dirty(self.path) if f != ".config"]
        if dirty:
            say(f"the build tree has modified files ({', '.join(dirty[:3])}"
                f"{'...' if len(dirty) > 3 else ''}): discarding them")
            self.repo.checkout(self.path, st.get("pre") or pre)
        self._install_config()
        wanted = {"pre": pre, "config": orig.fingerprint(),
                  "command": settings.command()[2:]}  # -jN does not change the result
        manifest = Manifest.load(self.manifest_file)
        cache_ok = manifest is not None and self._cache_complete(manifest)
        if manifest is not None and not cache_ok:
            say("the pristine cache is incomplete: taking it again")
        current = {k: st.get(k) for k in wanted}
        if current == wanted and cache_ok and st.get("phase") == "pristine":
            return False
        if not rebuild and cache_ok and st.get("pre") == pre and st.get("phase") == "pristine":
            return False
        if self.repo.worktree_head(self.path) != pre:
            self.repo.checkout(self.path, pre)
            self._install_config()
        self._set_state(phase="building-pristine", **wanted)
        checkpoint("prebuild-started")
        made = time.monotonic()
        self.timings["checkout"] = made - started
        self._make(settings, log)
        cached = time.monotonic()
        self.timings["make"] = cached - made
        self._snapshot()
        self.timings["cache"] = time.monotonic() - cached
        self._set_state(phase="pristine", **wanted)
        with open(log, "a") as f:
            f.write("# git-ksplice: " + self.describe_timings() + "\n")
        return True

    # -- whose tree ----------------------------------------------------------------------

    @property
    def owner_file(self) -> Path:
        return self.root / "owner"

    def claim(self, say) -> None:  # type: ignore[no-untyped-def]
        """The build directory belongs to one repository: the lock is per repository, so a
        second one sharing ksplice.buildDir would remove the first one's worktree and cache,
        and stop its make. It is refused, naming the owner; a directory whose owner is gone
        is taken over. The claim is made under a lock of the directory itself, which every
        repository given it takes: two first runs cannot both get it."""
        ours = str(self.repo.common_dir.resolve())
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "claim.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            owner = self._owner()
            if owner is not None and owner != ours and (Path(owner) / "HEAD").exists():
                raise InputError(f"the build directory {self.root} belongs to the repository "
                                 f"{owner}, not to this one ({ours})",
                                 hint="give each repository its own: git config "
                                      "ksplice.buildDir DIR (a build directory holds one "
                                      "kernel tree, and a run would remove the other "
                                      "repository's)")
            if owner is not None and owner != ours:
                say(f"the build directory {self.root} belonged to {owner}, which is gone: "
                    "taking it over")
            if owner != ours or not self.owner_file.exists():
                tmp = self.owner_file.with_suffix(".tmp")
                tmp.write_text(ours + "\n")
                os.replace(tmp, self.owner_file)

    def _owner(self) -> str | None:
        """The common git dir the build directory belongs to: its owner file, or for one made
        before owner files, the repository its worktree's .git file points into."""
        try:
            return self.owner_file.read_text().strip() or None
        except FileNotFoundError:
            pass
        try:
            gitdir = (self.path / ".git").read_text().removeprefix("gitdir:").strip()
        except OSError:
            return None
        # <common dir>/worktrees/<name>
        return str(Path(gitdir).resolve().parent.parent)

    def describe_timings(self) -> str:
        """Where the last pristine build's time went: `checkout 7.1s, make 190.2s, ...`."""
        return ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())

    def _worktree_ok(self) -> bool:
        if not (self.path / ".git").exists():
            return False
        registered = {p.resolve() for p in self.repo.worktree_paths()}
        return self.path.resolve() in registered

    def _install_config(self) -> None:
        """The running kernel's .config, whatever the commit has: kernel trees do not track
        it, but if one does, a checkout must not swap the configuration under the build.
        Copied with its own mtime, so that make sees the same file as at the prebuild."""
        src, dst = self.orig.dot_config, self.path / ".config"
        try:
            same = dst.read_bytes() == src.read_bytes() and \
                dst.stat().st_mtime_ns == src.stat().st_mtime_ns
        except FileNotFoundError:
            same = False
        if not same:
            dst.unlink(missing_ok=True)
            shutil.copy2(src, dst)

    def _cache_complete(self, manifest: Manifest) -> bool:
        return all(os.path.lexists(self.cache / rel) for rel in manifest.files)

    def _stop_orphaned_make(self, st: dict, say) -> None:
        """A run killed with -9 leaves its make running in the tree: stop it first."""
        pgid = st.get("make_pgid")
        if not pgid:
            return
        try:
            cwd = os.readlink(f"/proc/{pgid}/cwd")
        except OSError:
            return
        if Path(cwd).resolve() != self.path.resolve():
            return
        say(f"stopping the make (process group {pgid}) left running by an interrupted run")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            for _ in range(50):
                if not os.path.exists(f"/proc/{pgid}"):
                    return
                time.sleep(0.1)

    def _outputs(self) -> dict[str, tuple[int, int]]:
        """Every file in the tree that git does not track: the build products."""
        tracked = set(self.repo.git("ls-files", "-z", cwd=self.path, isolated=True)
                      .stdout.split("\0"))
        out: dict[str, tuple[int, int]] = {}
        root = str(self.path)
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath == root:
                dirnames[:] = [d for d in dirnames if d != ".git"]
                filenames = [f for f in filenames if f != ".git"]
            rel = os.path.relpath(dirpath, root)
            for f in filenames:
                p = f if rel == "." else f"{rel}/{f}"
                if p in tracked:
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, f))
                except FileNotFoundError:
                    continue
                out[p] = (st.st_size, st.st_mtime_ns)
        return out

    def _snapshot(self) -> None:
        """Copy every build product of the pristine tree into the cache."""
        outputs = self._outputs()
        old = Manifest.load(self.manifest_file)
        for rel, meta in outputs.items():
            if old is not None and old.files.get(rel) == meta and (self.cache / rel).exists():
                continue
            dst = self.cache / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)  # replace symlinks whole, never write through them
            shutil.copy2(self.path / rel, dst, follow_symlinks=False)
        if old is not None:
            for rel in set(old.files) - set(outputs):
                (self.cache / rel).unlink(missing_ok=True)
        Manifest(outputs).save(self.manifest_file)

    # -- the patched build ---------------------------------------------------------------

    def build_patched(self, pre: str, post: str, settings: BuildSettings, log: Path,
                      units: Callable[[], set[str]]) -> PatchedBuild:
        st = self.state()
        self._set_state(**{**st, "phase": "patched", "post": post})
        self.repo.checkout(self.path, post)
        self._install_config()
        checkpoint("patched-checkout")
        compiled = self._make(settings.patched(), log)
        checkpoint("patched-built")
        manifest = Manifest.load(self.manifest_file) or Manifest()
        now = self._outputs()
        rebuilt = sorted(p for p, meta in now.items() if manifest.files.get(p) != meta)
        members = units()
        changed = []
        for rel in rebuilt:
            if not rel.endswith(".o") or _NOT_UNITS.search(rel) or rel not in members:
                continue
            cached = self.cache / rel
            if not cached.exists() or not _same_file(cached, self.path / rel):
                changed.append(rel)
        return PatchedBuild(rebuilt, changed, compiled, log)

    def revert(self, pre: str) -> None:
        """Back to the pristine state: `pre` checked out, every product as it was. A product
        whose pristine copy is missing is deleted instead, and the tree marked stale so the
        next run rebuilds it."""
        self.repo.checkout(self.path, pre)
        if self.orig is not None:
            self._install_config()
        manifest = Manifest.load(self.manifest_file)
        if manifest is None:
            self._set_state(**{**self.state(), "phase": "stale", "pre": pre})
            return
        now = self._outputs()
        stamp = time.time_ns()
        stale = False
        for rel, meta in now.items():
            want = manifest.files.get(rel)
            if want == meta:
                continue
            target = self.path / rel
            target.unlink(missing_ok=True)  # a symlink or a file written since, replaced whole
            if want is None:
                continue
            if not os.path.lexists(self.cache / rel):
                del manifest.files[rel]
                stale = True
                continue
            shutil.copy2(self.cache / rel, target, follow_symlinks=False)
            # Newer than the sources just checked out again, so make will not rebuild it.
            os.utime(target, ns=(stamp, stamp), follow_symlinks=False)
            manifest.files[rel] = (want[0], stamp)
            shutil.copystat(target, self.cache / rel, follow_symlinks=False)
        for rel in set(manifest.files) - set(now):
            if os.path.lexists(self.cache / rel):
                (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.cache / rel, self.path / rel, follow_symlinks=False)
                os.utime(self.path / rel, ns=(stamp, stamp), follow_symlinks=False)
                manifest.files[rel] = (manifest.files[rel][0], stamp)
            else:
                del manifest.files[rel]
                stale = True
        manifest.save(self.manifest_file)
        st = self.state()
        st.pop("post", None)
        st.pop("make_pgid", None)
        self._set_state(**{**st, "phase": "stale" if stale else "pristine", "pre": pre})

    def pristine_file(self, rel: str) -> Path:
        return self.cache / rel

    # -- make ----------------------------------------------------------------------------

    def _make(self, settings: BuildSettings, log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = settings.command()
        compiled = 0
        tail: list[str] = []
        env = dict(os.environ)
        for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
            env.pop(k, None)
        with open(log, "w", buffering=1) as logf:  # line-buffered: tail -f works
            logf.write("$ " + shlex.join(cmd) + "\n")
            logf.flush()
            # Its own process group, recorded, so that a later run can stop a make this
            # process leaves behind when it is killed.
            proc = subprocess.Popen(cmd, cwd=self.path, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    env=env, start_new_session=True)
            self._set_state(**{**self.state(), "make_pgid": proc.pid})
            assert proc.stdout is not None
            orphans = 0
            try:
                for line in proc.stdout:
                    if line.startswith(_ORPHAN_WARNING):
                        # One per function and data section, three links over (48,000 lines
                        # for Linux): expected with -ffunction-sections, counted not logged.
                        orphans += 1
                        continue
                    logf.write(line)
                    line = line.rstrip("\n")
                    if _PROGRESS.match(line):
                        compiled += 1
                    tail.append(line)
                    if len(tail) > 400:
                        del tail[:200]
                    if settings.on_line:
                        settings.on_line(line, compiled)
                rc = proc.wait()
                if orphans:
                    logf.write(f"# git-ksplice: {orphans} 'ld: warning: orphan section' lines "
                               "not logged (expected with -ffunction-sections)\n")
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                raise
            st = self.state()
            st.pop("make_pgid", None)
            self._set_state(**st)
        if rc != 0:
            errors = [line for line in tail if _ERROR_LINE.search(line)]
            shown = errors[-15:] or tail[-15:]
            raise BuildError("the kernel build failed:\n  " + "\n  ".join(shown),
                             hint=f"full log: {log}")
        return compiled


_ORPHAN_WARNING = "ld: warning: orphan section "


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def is_linux_tree(tree: Path) -> bool:
    """A Linux kbuild tree (livepatch modules can be built against it)."""
    return (tree / "scripts" / "Makefile.modpost").exists() and \
        (tree / "include" / "linux" / "livepatch.h").exists()


# -- targets -----------------------------------------------------------------------------


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


def module_file(tree: Path, name: str) -> Path | None:
    """The built .ko of module `name` (as the kernel names it: `-` made `_`)."""
    order = tree / "modules.order"
    if not order.exists():
        return None
    for ko in order.read_text().split():
        if Path(ko).stem.replace("-", "_") == name:
            p = tree / (ko if ko.endswith(".ko") else ko[:-2] + ".ko")
            return p if p.exists() else None
    return None


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
