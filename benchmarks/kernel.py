#!/usr/bin/env python3
"""git-ksplice on the real kernel: where the time of an update goes.

Uses the real-kernel tier's cached builds (tests/kernel/conftest.py; run that tier once
first). Measures, for a one-function patch (a /proc/meminfo string):
- a warm `git ksplice create` (default, targeted mode: pristine tree prepared), phase by phase;
- the floor: the bare incremental `make` after applying the same patch to the normally built
  running kernel's tree (then the patch is reverted and the tree rebuilt);
- with --cold, a cold create in the full-tree mode: a fresh repository, `create --prebuild
  --build-mode=full` included (a full kernel build), against a full `make` of the running
  kernel's tree (from `make clean`). The targeted mode's cold create: benchmarks/targeted.py.
Targets: warm create <= 1.5 x the incremental make; cold create <= 1.1 x a full build.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme import import_source, publish, seconds_table, timed  # noqa: E402

sys.path.insert(0, str(REPO))

from tests.kernel.conftest import (  # noqa: E402
    CACHE,
    JOBS,
    SOURCE_TARBALL,
    _git_env,
    _kernel_repo,
    _key,
    _running_kernel,
)

OLD, NEW = '"MemAvailable:   "', '"MemAvailable:!  "'
FILE = "fs/proc/meminfo.c"


def warm(base: Path) -> list[tuple[str, float]]:
    running = _running_kernel(base)
    k = _kernel_repo(base, running)
    branch = f"bench-{uuid.uuid4().hex[:6]}"
    k.git("checkout", "-q", "-f", "-b", branch, "refs/ksplice/pre")
    p = k.path / FILE
    p.write_text(p.read_text().replace(OLD, NEW, 1))
    k.git("commit", "-qam", "bench: meminfo")
    # A first create warms the tree (the previous user may have left pre elsewhere); the
    # second one is measured.
    for _ in range(2):
        uid = f"bench_{uuid.uuid4().hex[:6]}"
        wall, out = timed([sys.executable, "-m", "git_ksplice", "create", "-j", JOBS, "--id",
                           uid, "-o", str(k.out)], k.path, k.env)
    phases = [(m.group(1), float(m.group(2)))
              for m in re.finditer(r"^(.*?): done in ([\d.]+)s", out, re.M)]
    # The floor: the same edit, bare incremental make, in the running kernel's own tree.
    tree = running.tree
    src = tree / FILE
    text = src.read_text()
    timed(["make", f"-j{JOBS}", "bzImage", "modules"], tree)  # up to date first
    src.write_text(text.replace(OLD, NEW, 1))
    try:
        floor, _ = timed(["make", f"-j{JOBS}", "bzImage", "modules"], tree)
    finally:
        src.write_text(text)
        timed(["make", f"-j{JOBS}", "bzImage", "modules"], tree)
    return [("warm create (total)", wall), *[(f"  {p}", t) for p, t in phases],
            ("incremental make after the patch (floor)", floor),
            ("target: 1.5 x floor", 1.5 * floor)]


def cold(base: Path) -> list[tuple[str, float]]:
    running = _running_kernel(base)
    scratch = base / f"cold-{uuid.uuid4().hex[:6]}"
    env = _git_env(base / "home")
    src, t_import = import_source(SOURCE_TARBALL, scratch, env)
    subprocess.run(["cp", "-r", str(base / "orig-config"), str(src / "ksplice")], check=True)
    t_pre, out = timed([sys.executable, "-m", "git_ksplice", "create", "--prebuild",
                        "--build-mode=full", "-j", JOBS], src, env)
    steps = re.search(r"^pristine build .*: done in ([\d.]+)s \(built: checkout ([\d.]+)s, "
                      r"make ([\d.]+)s, cache ([\d.]+)s\)", out, re.M)
    full, _ = timed(["sh", "-c", f"make -s clean && make -j{JOBS} bzImage modules"],
                    running.tree)
    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    return [("import the source into git (with its automatic gc)", t_import),
            ("cold create: --prebuild (pristine build + cache)", t_pre),
            *[(f"  {what}", float(steps.group(i)) if steps else float("nan"))
              for i, what in ((2, "worktree checkout"), (3, "make (function sections)"),
                              (4, "copying the products to the cache"))],
            ("full make of the running kernel's tree", full),
            ("target: 1.1 x full build", 1.1 * full)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cold", action="store_true", help="also measure a cold create")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    base = CACHE / f"linux-6.1-{_key()}"
    rows = warm(base)
    if args.cold:
        rows += cold(base)
    lines = [f"Measured {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, make -j{JOBS}, "
             "Linux 6.1 reference configuration, one-function patch (/proc/meminfo string).",
             "", *seconds_table(rows)]
    publish("kernel", "The real kernel (`benchmarks/kernel.py`)", lines, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
