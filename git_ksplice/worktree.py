"""The build worktree: a worktree of ours in which kbuild runs, whoever left it how.

Both build modes keep one (`build.BuildTree`, the full tree; `targeted.PreparedTree`, the
prepared tree of the targeted mode), each at its own path under the build directory: a built
kernel tree copied elsewhere rebuilds everything (objtool's `.cmd` files hold absolute
paths). What they share is here: the state file that records the tree's phase before
anything is touched (a run killed at any point, even mid-make, leaves it saying so, and the
next run repairs the tree first), the claim that gives the build directory to one
repository, the running kernel's `.config` installed whatever the commit holds, and make run
in its own process group so that a later run can stop one a killed run left behind.
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
from git_ksplice.kbuild import (
    install_author_headers,
    is_linux_tree,
    make_environment,
    with_ksplice_kcflags,
)
from git_ksplice.origconfig import OrigConfig
from git_ksplice.progress import Reporter, Silent
from git_ksplice.repo import Repo
from git_ksplice.toolchain import config_drift, refuse_drift

_PROGRESS = re.compile(r"^\s+(CC|AS|CC \[M\]|AS \[M\])\s+(\S+)")
_ERROR_LINE = re.compile(r"(error|Error \d+|undefined reference|fatal)", re.I)
_ORPHAN_WARNING = "ld: warning: orphan section "


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
        return self.with_targets(self.patched_targets)

    def with_targets(self, targets: list[str]) -> BuildSettings:
        """The same make, for other targets."""
        return BuildSettings(self.jobs, self.make_args, self.verbose, self.reporter,
                             list(targets), None)

    def command(self, include: Path | None = None) -> list[str]:
        """The make command; `include`: the directory of the author's headers."""
        cmd = ["make", f"-j{self.jobs}", *with_ksplice_kcflags(self.make_args, include)]
        if self.verbose >= 2:
            cmd.append("V=1")
        return cmd + self.targets


class WorkTree:
    """A worktree of ours under `root`, with its state file and its owner."""

    def __init__(self, repo: Repo, root: Path, build_dir: Path | None = None) -> None:
        """`root`: this tree's directory; `build_dir`: the build directory it is in (the
        one a repository claims), when that is not `root` itself."""
        self.repo = repo
        self.orig: OrigConfig | None = None
        self.root = root
        self.build_dir = build_dir or root
        self.path = self.root / "tree"
        self.state_file = self.root / "state.json"
        #: seconds per step of the last time the tree was made (checkout and repairs,
        #: make, ...), for `describe_timings`
        self.timings: dict[str, float] = {}

    # -- state ---------------------------------------------------------------------------

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _set_state(self, **values) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        replace_file(self.state_file, json.dumps(values, sort_keys=True))

    # -- repairs -------------------------------------------------------------------------

    def repair(self, pre: str, orig: OrigConfig, say: Callable[[str], None]) -> dict:
        """Claim the directory, then bring the tree back to a clean checkout of (the
        state's, else) `pre`, whatever an earlier run or someone else left; each repair is
        said. Returns the state as it is then."""
        self.orig = orig
        self.claim(say)
        st = self.state()
        self._stop_orphaned_make(st, say)
        if not self._worktree_ok():
            if self.path.exists() or st:
                say(f"the build tree {self.path} is missing or no longer a worktree of this "
                    "repository: recreating it")
            self.repo.remove_worktree(self.path)
            self.forget_products()
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
        return st

    def describe_timings(self) -> str:
        """Where the last making of the tree went: `checkout 7.1s, make 190.2s, ...`."""
        return ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())

    def forget_products(self) -> None:
        """The tree is being made again: drop what was kept of its builds."""

    def revert(self, pre: str) -> None:
        """Back to the pristine state of `pre`, whatever a patched build left."""
        raise NotImplementedError

    # -- whose tree ----------------------------------------------------------------------

    @property
    def owner_file(self) -> Path:
        # One owner per build directory, whichever mode's tree claims it.
        return self.build_dir / "owner"

    def claim(self, say) -> None:  # type: ignore[no-untyped-def]
        """The build directory belongs to one repository: the lock is per repository, so a
        second one sharing ksplice.buildDir would remove the first one's worktree and cache,
        and stop its make. It is refused, naming the owner; a directory whose owner is gone
        is taken over. The claim is made under a lock of the directory itself, which every
        repository given it takes: two first runs cannot both get it."""
        ours = str(self.repo.common_dir.resolve())
        self.build_dir.mkdir(parents=True, exist_ok=True)
        with open(self.build_dir / "claim.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            owner = self._owner()
            if owner is not None and owner != ours and (Path(owner) / "HEAD").exists():
                raise InputError(f"the build directory {self.build_dir} belongs to the "
                                 f"repository {owner}, not to this one ({ours})",
                                 hint="give each repository its own: git config "
                                      "ksplice.buildDir DIR (a build directory holds one "
                                      "kernel tree, and a run would remove the other "
                                      "repository's)")
            if owner is not None and owner != ours:
                say(f"the build directory {self.build_dir} belonged to {owner}, which is "
                    "gone: taking it over")
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

    def begin_build(self, pre: str, phase: str, wanted: dict, settings: BuildSettings,
                    log: Path, started: float) -> float:
        """What both modes do before their make: the tree checked out at `pre` with the
        running kernel's .config, the phase recorded (so a killed run is repaired), the
        configuration proven unchanged by this machine's Kconfig. Returns when it ended;
        the timings of checkout and olddefconfig are kept."""
        if self.repo.worktree_head(self.path) != pre:
            self.repo.checkout(self.path, pre)
            self._install_config()
        self._set_state(phase=phase, **wanted)
        checkpoint("prebuild-started")
        checked = time.monotonic()
        self.timings["checkout"] = checked - started
        self.check_configuration(settings, log)
        made = time.monotonic()
        self.timings["olddefconfig"] = made - checked
        return made

    def check_configuration(self, settings: BuildSettings, log: Path) -> None:
        """`make olddefconfig` of the running kernel's .config, into a scratch copy, must
        change nothing (git_ksplice.toolchain): run before the tree is made, it starts the
        build's log. Only Linux has Kconfig's targets."""
        assert self.orig is not None
        if not is_linux_tree(self.path):
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("")
            return
        synced = self.root / "olddefconfig.config"
        shutil.copy2(self.orig.dot_config, synced)
        self._make(settings.with_targets([f"KCONFIG_CONFIG={synced}", "olddefconfig"]), log)
        refuse_drift(config_drift(self.orig.dot_config, synced))

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

    # -- make ----------------------------------------------------------------------------

    def _make(self, settings: BuildSettings, log: Path, *, append: bool = False) -> int:
        """Run make in the tree, its output to `log` (after what is there, with `append`).
        Returns how many objects it compiled."""
        log.parent.mkdir(parents=True, exist_ok=True)
        # Relative to the tree, where make and kbuild's compilers run: the command, logged
        # and shipped in the tarball's build.log, must not name the checkout's path (an
        # update rebuilt elsewhere is byte for byte the same).
        include = install_author_headers(self.build_dir / "patch-include")
        cmd = settings.command(Path(os.path.relpath(include, self.path)))
        compiled = 0
        tail: list[str] = []
        env = make_environment()
        with open(log, "a" if append else "w", buffering=1) as logf:  # tail -f works
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


