#!/usr/bin/env python3
"""What the git-ksplice hook costs the user's git commands.

The hook runs on every ref transaction of every git command, so its price is paid by every
commit, checkout, fetch and push. Measured: `git commit --allow-empty` in a scratch
repository without the hook; with it, on a branch nobody watches (the common case: the hook
compares the watched refs and returns); and on the watched branch (the hook starts the
queueing in the background and returns; the job it queues and the worker it starts, whose
build fails at once, there being no kernel here, are not timed). Results go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme import update_section  # noqa: E402

RUNS = 30


def git(*args: str, cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def commits(cwd: Path, env: dict[str, str], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        git("commit", "-q", "--allow-empty", "-m", f"c{i}", cwd=cwd, env=env)
        out.append(time.perf_counter() - start)
    return out


def wait_for_background(common: Path) -> None:
    """Until the hook's background queueing and the worker are done: each watched commit is
    timed on an otherwise idle machine, as a developer's next commit usually is."""
    sys.path.insert(0, str(REPO))
    from git_ksplice.hooks import Queue

    q = Queue(common)
    while q.notifying() or q.worker_running() is not None:
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(HOME=str(base), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="b",
                   GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b",
                   PYTHONPATH=str(REPO))
        repo = base / "repo"
        repo.mkdir()
        git("init", "-q", "-b", "main", cwd=repo, env=env)
        git("commit", "-q", "--allow-empty", "-m", "base", cwd=repo, env=env)
        rows = [("no hook", commits(repo, env, RUNS))]
        subprocess.run([sys.executable, "-m", "git_ksplice", "hook", "install", "--branch",
                        "main"], cwd=repo, env=env, check=True, capture_output=True)
        git("checkout", "-q", "-b", "other", cwd=repo, env=env)
        rows.append(("hook installed, unwatched branch", commits(repo, env, RUNS)))
        git("checkout", "-q", "main", cwd=repo, env=env)
        watched = []
        for _ in range(10):  # one at a time: the last one's background work is done first
            watched += commits(repo, env, 1)
            wait_for_background(repo / ".git")
        rows.append(("hook installed, watched branch (queues a job)", watched))
    version = subprocess.run(["git", "--version"], capture_output=True,
                             text=True).stdout.split()[-1]
    lines = [f"Measured {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, git {version}"
             f", Python {sys.version.split()[0]}; `git commit --allow-empty`, median of "
             f"{RUNS} (10 on the watched branch).", "",
             "| case | median | max |", "|---|---:|---:|"]
    lines += [f"| {name} | {statistics.median(t) * 1000:.0f} ms | {max(t) * 1000:.0f} ms |"
              for name, t in rows]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("hook", "What the hook costs a git command (`benchmarks/hook.py`)",
                       table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
