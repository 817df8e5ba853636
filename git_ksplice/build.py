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
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.errors import BuildError, InputError
from git_ksplice.faults import checkpoint
from git_ksplice.files import replace_file
from git_ksplice.kbuild import make_environment, with_ksplice_kcflags
from git_ksplice.origconfig import OrigConfig
from git_ksplice.progress import Reporter, Silent
from git_ksplice.repo import Repo

# Objects kbuild makes that are not compiled translation units of a target.
_NOT_UNITS = re.compile(r"(^|/)(\.tmp_[^/]*|vmlinux\.o|[^/]*\.mod\.o|built-in\.a|"
                        r"[^/]*\.lds|\.vmlinux\.export\.o)$")
_PROGRESS = re.compile(r"^\s+(CC|AS|CC \[M\]|AS \[M\])\s+(\S+)")
_ERROR_LINE = re.compile(r"(error|Error \d+|undefined reference|fatal)", re.I)


@dataclass
class BuildSettings:
    jobs: int
    make_args: list[str]
    verbose: int = 0
    #: Told every line make prints (progress display), and the tree's repairs.
    reporter: Reporter = field(default_factory=Silent)
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
        return BuildSettings(self.jobs, self.make_args, self.verbose, self.reporter,
                             self.patched_targets, None)

    def command(self) -> list[str]:
        cmd = ["make", f"-j{self.jobs}", *with_ksplice_kcflags(self.make_args)]
        if self.verbose >= 2:
            cmd.append("V=1")
        return cmd + self.targets


@dataclass
class Manifest:
    """Build products of the pristine tree: path -> (size, mtime_ns)."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        replace_file(path, json.dumps(self.files, sort_keys=True))

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

    def __init__(self, repo: Repo, root: Path) -> None:
        """`root`: the build directory (settings.build_dir)."""
        self.timings = {}
        self.repo = repo
        self.orig: OrigConfig | None = None
        self.root = root
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
        replace_file(self.state_file, json.dumps(values, sort_keys=True))

    # -- the pristine tree ---------------------------------------------------------------

    def ensure_pristine(self, pre: str, orig: OrigConfig, settings: BuildSettings, *,
                        log: Path, rebuild: bool = True) -> bool:
        """Bring the tree to a built `pre`, repairing whatever an earlier run or someone
        else left (each repair is a note to the reporter). Returns True when make ran."""
        self.orig = orig
        say = settings.reporter.note
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
                replace_file(self.owner_file, ours + "\n")

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
        tracked = self.repo.tracked_files(self.path)
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
        env = make_environment()
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
                    settings.reporter.build_line(line, compiled)
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
