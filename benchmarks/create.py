#!/usr/bin/env python3
"""A warm `git ksplice create` against `make` rebuilding the same objects by hand.

On the bundled tiny kernel: a scratch repository whose pristine tree is already built
(`create --prebuild`), then for each of a few one-file fixes the time of `git ksplice create`
(a fresh process, as a user runs it) and the time of the floor: in a built copy of the tree,
the fix applied and `make <changed objects>` run by hand. Target: create <= 1.5 x floor + 1 s.
Results go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme import update_section  # noqa: E402

EXAMPLE = REPO / "examples" / "tiny-kernel"
KCFLAGS = "KCFLAGS=-ffunction-sections -fdata-sections"

FIXES = {
    "fs/proc.c string": ("fs/proc.c", '"uptime: up\\n"', '"uptime: up and running\\n"'),
    "kernel/sys.c data": ("kernel/sys.c", '"Tiny"', '"Tiny Linux"'),
    "module function": ("drivers/demo/demo_util.c", "return level;", "return level + 1;"),
}


def sh(*cmd: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def setup(root: Path, env: dict) -> Path:
    src = root / "linux"
    shutil.copytree(EXAMPLE, src)
    sh("git", "init", "-q", cwd=src, env=env)
    sh("git", "add", "-A", cwd=src, env=env)
    sh("git", "commit", "-qm", "base", cwd=src, env=env)
    sh("make", "-s", cwd=src, env=env)
    (src / "ksplice").mkdir()
    for f in (".config", "System.map"):
        shutil.copy(src / f, src / "ksplice" / f)
    with open(src / ".git" / "info" / "exclude", "a") as f:
        f.write("ksplice/\n")
    sh("make", "-s", "clean", cwd=src, env=env)
    sh("git", "ksplice", "create", "--prebuild", "-j2", cwd=src, env=env)
    return src


def floor(root: Path, rel: str, old: str, new: str, objects: list[str], env: dict) -> float:
    """make rebuilding the changed objects by hand, in a built tree."""
    tree = root / "floor"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(EXAMPLE, tree)
    sh("make", "-s", "-j2", KCFLAGS, cwd=tree, env=env)
    f = tree / rel
    f.write_text(f.read_text().replace(old, new))
    start = time.perf_counter()
    sh("make", "-s", "-j2", KCFLAGS, *objects, cwd=tree, env=env)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ, PATH=f"{REPO / 'bin'}:{os.environ['PATH']}",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.org",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.org",
               PYTHONPATH=str(REPO))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = setup(root, env)
        base = sh("git", "rev-parse", "HEAD", cwd=src, env=env).stdout.strip()
        for n, (name, (rel, old, new)) in enumerate(FIXES.items()):
            sh("git", "checkout", "-q", base, cwd=src, env=env)
            f = src / rel
            f.write_text(f.read_text().replace(old, new))
            sh("git", "commit", "-qam", name, cwd=src, env=env)
            times = []
            objects: list[str] = []
            for i in range(args.runs):
                start = time.perf_counter()
                r = subprocess.run(["git", "ksplice", "create", "-j2", f"--id=b{n}r{i}",
                                    "--json", "-o", str(root / "out")], cwd=src, env=env,
                                   capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if r.returncode != 0:
                    print(r.stderr, file=sys.stderr)
                    return 1
                log = (src / ".git" / "ksplice" / "logs" / f"b{n}r{i}.log").read_text()
                objects = re.findall(r"^\s+CC(?: \[M\])?\s+(\S+)", log, re.M)
            fl = min(floor(root, rel, old, new, objects, env) for _ in range(args.runs))
            best = min(times)
            target = 1.5 * fl + 1.0
            rows.append((name, ", ".join(objects), best, fl, target))
            print(f"{name:20} create {best:.2f} s  floor {fl:.2f} s  target {target:.2f} s "
                  f"({'met' if best <= target else 'MISSED'})")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"best of {args.runs}. `create` is a fresh `git ksplice create -j2` process with the "
        "pristine tree warm; the floor is `make -j2 <those objects>` in a built copy after the "
        "same edit.",
        "",
        "| fix | objects compiled | warm create | floor (make by hand) "
        "| target 1.5 x floor + 1 s |",
        "|---|---|---:|---:|---:|",
        *[f"| {n} | {o} | {c:.2f} s | {f:.2f} s | {t:.2f} s ({'met' if c <= t else 'missed'}) |"
          for n, o, c, f, t in rows],
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("create", "Warm `create` on the tiny kernel (`benchmarks/create.py`)", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
