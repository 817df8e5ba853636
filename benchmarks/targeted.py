#!/usr/bin/env python3
"""The targeted build mode against the full build it avoids.

Reference kernel (the real-kernel tier's ORIG_CONFIG; run that tier once first): in a fresh
repository made from the source tarball,
- cold `git ksplice create` of a one-function fix (/proc/meminfo string): worktree checkout,
  make modules_prepare, reading the Makefiles, compiling the object at pre and post, the
  livepatch module;
- warm `create` of a second fix (/proc/cmdline), and of a header change
  (include/linux/sched/loadavg.h: the seven units that read it, and the four objects built
  from generated sources, which any header change selects);
- with --full, the full-tree mode in the same repository (its pristine build included).

Debian's shipped kernel (--debian ROOT, its packages unpacked there; see
../shared/kernel-lab/debian.md): in a fresh repository, `git ksplice import-kernel --root
ROOT`, then the same cold and warm creates, and the cost per object compiled, to extrapolate
the full build's 13,500 objects (about two hours here, which the targeted mode avoids).
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


#: (what is measured, the fix): a fresh repository's first create, then two warm ones.
CASES = (("cold create, one-function fix", "meminfo"),
         ("warm create, a second fix", "cmdline"),
         ("warm create, a header change (include/linux/sched/loadavg.h; the objects of the "
          "units that read it, and those built from generated sources, which any header "
          "change selects)", "loadavg"))


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
        for label, fix in CASES:
            wall, phases = create(src, env, fix)
            rows += [(label, wall), *[(f"  {p}", t) for p, t in phases]]
        if full:
            wall, phases = create(src, env, "meminfo", "--build-mode=full")
            rows += [("full-tree mode, cold: the same fix", wall),
                     *[(f"  {p}", t) for p, t in phases]]
    return rows


def debian(root: Path) -> list[tuple[str, float]]:
    """Debian's shipped kernel end to end, through the command line, in a fresh repository:
    import-kernel from the unpacked packages, then the cold and warm creates."""
    rows: list[tuple[str, float]] = []
    with scratch_repository("debian") as (src, env, took):
        rows.append(("import the source into git (not part of create)", took))
        wall, _ = timed([sys.executable, "-m", "git_ksplice", "import-kernel", "--root",
                         str(root)], src, env)
        rows.append(("import-kernel: ORIG_CONFIG from the unpacked packages", wall))
        timed(["git", "update-ref", "refs/ksplice/pre", "HEAD"], src, env)  # Debian's source
        per_object = None
        for label, fix in CASES:
            wall, phases = create(src, env, fix)
            rows += [(label, wall), *[(f"  {p}", t) for p, t in phases]]
            for phase, t in phases:
                m = re.match(r"compiling (\d+) objects at pre", phase)
                if m and int(m.group(1)) > 1:
                    per_object = t / int(m.group(1))
        if per_object is not None:
            rows.append(("per object compiled at pre (make's fixed cost shared)", per_object))
            # 13,500 C objects at the measured cost, on JOBS cores, linking not counted
            rows.append((f"a full build's 13,500 objects at that cost on {JOBS} cores "
                         "(extrapolated; about 2 hours with linking, kernel-lab/debian.md)",
                         13500 * per_object))
    return rows


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
        table += ["", "Debian's kernel (linux-image-6.1.0-57-amd64), fresh repository, "
                  "ORIG_CONFIG from import-kernel:", "", *seconds_table(debian(args.debian))]
    publish("targeted", "The targeted mode (`benchmarks/targeted.py`)", table,
            not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
