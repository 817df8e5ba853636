#!/usr/bin/env python3
"""The targeted build mode against the full build it avoids.

Reference kernel (the real-kernel tier's ORIG_CONFIG; run that tier once first): in a fresh
repository made from the source tarball,
- cold `git ksplice create` of a one-function fix (/proc/meminfo string): worktree checkout,
  make modules_prepare, reading the Makefiles, compiling the object at pre and post, the
  livepatch module;
- warm `create` of a second fix (/proc/cmdline), and of a header change that reaches seven
  objects (include/linux/sched/loadavg.h);
- with --full, the full-tree mode in the same repository (its pristine build included).

Debian's configuration (--debian ROOT, the unpacked linux-headers and linux-image packages;
see ../shared/kernel-lab/debian.md): the targeted steps through the library, up to the
comparison (Debian's System.map is a stub, so the module needs the running kernel's symbols,
which `import-kernel` will read), and the cost per object compiled, to extrapolate the full
build's 13,500 objects.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme import import_source, publish, seconds_table, timed  # noqa: E402

sys.path.insert(0, str(REPO))

from tests.kernel.conftest import CACHE, JOBS, SOURCE_TARBALL, _git_env, _key  # noqa: E402

FIXES = {
    "meminfo": ("fs/proc/meminfo.c", '"MemAvailable:   "', '"MemAvailable:!  "'),
    "cmdline": ("fs/proc/cmdline.c", "\tseq_putc(m, '\\n');",
                "\tseq_puts(m, \" ksplice\");\n\tseq_putc(m, '\\n');"),
    "loadavg": ("include/linux/sched/loadavg.h",
                "#define LOAD_FRAC(x) LOAD_INT(((x) & (FIXED_1-1)) * 100)",
                "#define LOAD_FRAC(x) (LOAD_INT(((x) & (FIXED_1-1)) * 100) + 42)"),
}


@contextlib.contextmanager
def scratch_repository(name: str) -> Iterator[tuple[Path, dict, float]]:
    """(the source tarball as a new repository of one commit, its git environment, the
    seconds the import took), in the kernel cache; removed afterwards."""
    base = CACHE / f"linux-6.1-{_key()}"
    env = _git_env(base / "home")
    scratch = base / f"bench-{name}-{uuid.uuid4().hex[:6]}"
    try:
        src, took = import_source(SOURCE_TARBALL, scratch, env)
        yield src, env, took
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)


def create(src: Path, env: dict, fix: str, *extra: str) -> tuple[float, list[tuple[str, float]]]:
    """Commit `fix` on a branch from pre and time `git ksplice create`."""
    path, old, new = FIXES[fix]
    timed(["git", "checkout", "-q", "-f", "-B", f"bench-{fix}", "refs/ksplice/pre"], src, env)
    p = src / path
    p.write_text(p.read_text().replace(old, new, 1))
    timed(["git", "commit", "-qam", f"bench: {fix}"], src, env)
    wall, out = timed([sys.executable, "-m", "git_ksplice", "create", "-j", JOBS, "--id",
                     f"bench_{uuid.uuid4().hex[:6]}", *extra], src, env)
    phases = [(m.group(1), float(m.group(2)))
              for m in re.finditer(r"^(.*?): done in ([\d.]+)s", out, re.M)]
    return wall, phases


def reference(full: bool) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    with scratch_repository("targeted") as (src, env, took):
        rows.append(("import the source into git (not part of create)", took))
        shutil.copytree(CACHE / f"linux-6.1-{_key()}" / "orig-config", src / "ksplice")
        timed(["git", "update-ref", "refs/ksplice/pre", "HEAD"], src, env)  # the running source
        for label, fix, extra in (("cold create, one-function fix", "meminfo", ()),
                                  ("warm create, a second fix", "cmdline", ()),
                                  ("warm create, a header used by 7 objects", "loadavg", ())):
            wall, phases = create(src, env, fix, *extra)
            rows += [(label, wall), *[(f"  {p}", t) for p, t in phases]]
        if full:
            wall, phases = create(src, env, "meminfo", "--build-mode=full")
            rows += [("full-tree mode, cold: the same fix", wall),
                     *[(f"  {p}", t) for p, t in phases]]
    return rows


def debian(root: Path) -> list[tuple[str, float]]:
    """The targeted steps for Debian's configuration, through the library."""
    from git_ksplice.origconfig import OrigConfig
    from git_ksplice.repo import Repo
    from git_ksplice.targeted import PreparedTree
    from git_ksplice.worktree import BuildSettings

    headers = next((root / "usr/src").glob("linux-headers-*-amd64"))
    rows: list[tuple[str, float]] = []
    with scratch_repository("debian") as (src, env, took):
        scratch = src.parent
        rows.append(("import the source into git (not part of create)", took))
        orig = scratch / "orig"
        orig.mkdir()
        shutil.copy2(headers / ".config", orig / ".config")
        shutil.copy2(headers / "Module.symvers", orig / "Module.symvers")
        (orig / "flags").write_text(f"KERNELRELEASE={headers.name.removeprefix('linux-headers-')}"
                                    " CC=gcc-12\n")
        os.environ.update({k: v for k, v in env.items() if k.startswith("GIT_")})
        repo = Repo.discover(str(src))
        pre = repo.resolve_commit("HEAD")
        tree = PreparedTree(repo, scratch / "build")
        settings = BuildSettings(int(JOBS), OrigConfig(orig).flags)
        log = scratch / "bench.log"
        start = time.perf_counter()
        tree.ensure_prepared(pre, OrigConfig(orig), settings, log=log)
        prepared = time.perf_counter() - start
        rows.append(("prepare: checkout, make modules_prepare, Makefiles and includes read",
                     prepared))
        rows += [(f"  {k}", v) for k, v in tree.timings.items()]
        targets = tree.configuration().targets
        rows.append((f"  objects this configuration builds: {len(targets)}", 0.0))
        for fix in ("meminfo", "cmdline", "loadavg"):
            rows += debian_fix(fix, repo, src, env, tree, settings, log)
    return rows


def debian_fix(fix: str, repo, src: Path, env: dict, tree, settings,
               log: Path) -> list[tuple[str, float]]:
    """One fix for Debian's configuration, committed in the scratch repository: the
    targeted steps of a warm `create` up to the comparison (the livepatch module's build,
    about 2 s, needs the running kernel's symbols: import-kernel's)."""
    from git_ksplice.affected import ChangeSet, affected_objects
    from git_ksplice.includes import IncludeGraph

    path, old, new = FIXES[fix]
    pre = repo.resolve_commit("HEAD")
    text = (src / path).read_bytes()
    (src / path).write_bytes(text.replace(old.encode(), new.encode(), 1))
    subprocess.run(["git", "commit", "-qam", fix], cwd=src, env=env, check=True)
    post = repo.resolve_commit("HEAD")
    subprocess.run(["git", "reset", "-q", "--hard", pre], cwd=src, env=env, check=True)
    targets = tree.configuration().targets
    start = time.perf_counter()
    changed = {path: repo.read_blob(post, path)}
    graph = IncludeGraph(tree.path, overlay=changed, index=tree.include_index())
    found = affected_objects(graph, ChangeSet(changed, targets, targets, tree.recorded()))
    chosen = time.perf_counter() - start
    objects = sorted(found.objects)
    start = time.perf_counter()
    tree.compile_pre(objects, settings, log)
    at_pre = time.perf_counter() - start
    start = time.perf_counter()
    try:
        built = tree.build_patched(pre, post, objects, settings, log)
    finally:
        tree.revert(pre)
    at_post = time.perf_counter() - start
    assert built.changed_objects, f"{fix}: no object changed"
    return [(f"{fix}: warm steps before the module, {len(objects)} object(s)",
             chosen + at_pre + at_post),
            ("  finding the objects (the include index read)", chosen),
            ("  compiling at pre", at_pre),
            ("  checking out post, compiling, reverting", at_post),
            ("  per object compiled at pre, make's fixed cost included",
             at_pre / max(1, len(objects)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also measure the full-tree mode")
    ap.add_argument("--debian", type=Path, metavar="ROOT",
                    help="also measure Debian's configuration (unpacked packages)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    rows = reference(args.full)
    table = [f"Measured {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, make -j{JOBS}, "
             "Linux 6.1 reference configuration, fresh repository.", "", *seconds_table(rows)]
    if args.debian:
        table += ["", "Debian's configuration (linux-headers-6.1.0-57-amd64's .config), "
                  "through the library:", "", *seconds_table(debian(args.debian))]
    publish("targeted", "The targeted mode (`benchmarks/targeted.py`)", table,
            not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
