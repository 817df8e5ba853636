"""The full-tree build mode: the pristine tree built whole and kept warm, the patched build,
what changed, and where.

One build tree (a `worktree.WorkTree`, under the common git dir or `ksplice.buildDir`)
serves both builds. The pristine build at `refs/ksplice/pre` is
made once; every build product is then copied to a cache with a manifest of sizes and mtimes.
A `create` checks the post commit out in the tree (only the changed files are rewritten),
runs an incremental make, finds the products that make rewrote, and compares the objects
with their cached pristine copies. Afterwards the tree is reverted: the pre commit checked
out again and every rewritten product restored from the cache. This is Ksplice's
copy-on-write revert, done eagerly.

The state file records the tree's phase before anything is touched; a run killed at any
point (even mid-make) leaves `phase: patched`, and the next run reverts before it does
anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.faults import checkpoint
from git_ksplice.files import replace_file, same_contents
from git_ksplice.origconfig import OrigConfig
from git_ksplice.repo import Repo
from git_ksplice.worktree import BuildSettings, WorkTree

# Objects kbuild makes that are not compiled translation units of a target.
_NOT_UNITS = re.compile(r"(^|/)(\.tmp_[^/]*|vmlinux\.o|[^/]*\.mod\.o|built-in\.a|"
                        r"[^/]*\.lds|\.vmlinux\.export\.o)$")


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


class BuildTree(WorkTree):
    """The full tree: our build worktree, built whole at pre, and its pristine cache."""

    def __init__(self, repo: Repo, root: Path) -> None:
        """`root`: the build directory (settings.build_dir)."""
        super().__init__(repo, root)
        self.cache = self.root / "pristine"
        self.manifest_file = self.root / "manifest.json"

    def forget_products(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        self.manifest_file.unlink(missing_ok=True)

    # -- the pristine tree ---------------------------------------------------------------

    def ensure_pristine(self, pre: str, orig: OrigConfig, settings: BuildSettings, *,
                        log: Path, rebuild: bool = True) -> bool:
        """Bring the tree to a built `pre`, repairing whatever an earlier run or someone
        else left (each repair is a note to the reporter). Returns True when make ran."""
        say = settings.reporter.note
        started = time.monotonic()
        self.timings = {}
        st = self.repair(pre, orig, say)
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
        made = self.begin_build(pre, "building-pristine", wanted, settings, log, started)
        self._make(settings, log, append=True)
        cached = time.monotonic()
        self.timings["make"] = cached - made
        self._snapshot()
        self.timings["cache"] = time.monotonic() - cached
        self._set_state(phase="pristine", **wanted)
        with open(log, "a") as f:
            f.write("# git-ksplice: " + self.describe_timings() + "\n")
        return True

    def _cache_complete(self, manifest: Manifest) -> bool:
        return all(os.path.lexists(self.cache / rel) for rel in manifest.files)

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
            if not cached.exists() or not same_contents(cached, self.path / rel):
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
