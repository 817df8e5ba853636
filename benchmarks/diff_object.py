#!/usr/bin/env python3
"""Wall time and peak memory of `git ksplice diff-object` on every corpus pair.

Each pair runs in a fresh process (as a user runs it), three times; the table in
benchmarks/README.md gets the best wall time and the peak resident set size (getrusage of the
child). Target: under 1 s and 200 MB for any pair under 1 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme import update_section  # noqa: E402

CORPUS = Path(os.environ.get("KSPLICE_CORPUS",
                             REPO.parent / "shared" / "corpus" / "kpatch-unit-x86_64"))


def measure(orig: Path, patched: Path, out: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one diff-object run."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "git_ksplice", "diff-object", str(orig), str(patched),
           "-o", str(out), "--json"]
    start = time.perf_counter()
    pid = os.fork()  # wait4 gives the child's own peak RSS, not the benchmark's
    if pid == 0:  # child: exec the command with output discarded
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execvpe(cmd[0], cmd, env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print, do not update the README")
    args = ap.parse_args()
    spec = json.loads((CORPUS / "expectations.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, e in sorted(spec.items()):
            orig, patched = CORPUS / e["orig"], CORPUS / e["patched"]
            runs = [measure(orig, patched, Path(tmp) / "out.o") for _ in range(args.runs)]
            wall = min(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            size = max(orig.stat().st_size, patched.stat().st_size)
            rows.append((case, size, wall, rss, runs[0][2]))
            print(f"{case:45} {size / 1024:7.0f} KB {wall:6.2f} s {rss:6.0f} MB exit {runs[0][2]}")
    worst_wall = max(r[2] for r in rows)
    worst_rss = max(r[3] for r in rows)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; best of {args.runs} runs, "
        "fresh process each (interpreter start-up included, about 0.1 s).",
        "",
        "| case | larger object | wall time | peak RSS | exit |",
        "|---|---:|---:|---:|---:|",
        *[f"| {c} | {s / 1024:.0f} KB | {w:.2f} s | {m:.0f} MB | {x} |"
          for c, s, w, m, x in rows],
        "",
        f"Worst: {worst_wall:.2f} s, {worst_rss:.0f} MB (target: under 1 s and 200 MB for any "
        "pair under 1 MB).",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("diff_object",
                       "`diff-object` on the kpatch corpus (`benchmarks/diff_object.py`)", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
