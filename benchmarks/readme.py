"""What the benchmarks share: timing a command, and writing a table into its own section of
benchmarks/README.md."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def update_section(name: str, title: str, table: str) -> None:
    """Replace what lies between `<!-- name:begin -->` and `<!-- name:end -->` (the section
    is added, under `title`, the first time)."""
    text = README.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{begin}\n{end}\n"
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end),
                  lambda _: f"{begin}\n{table.rstrip()}\n{end}", text, flags=re.S)
    README.write_text(text)


def seconds_table(rows: list[tuple[str, float]]) -> list[str]:
    """A two-column markdown table of steps and the seconds each took."""
    return ["| step | seconds |", "|---|---:|", *[f"| {n} | {t:.1f} |" for n, t in rows]]


def publish(name: str, title: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's result, and write it into its README section unless told not."""
    text = "\n".join(lines)
    print(text)
    if write:
        update_section(name, title, text)


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """(seconds, output) of a command that must succeed."""
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return time.perf_counter() - start, r.stdout + r.stderr


def import_source(tarball: Path, where: Path, env: dict) -> tuple[Path, float]:
    """The kernel source tarball as a new repository of one commit, in `where`: (its path,
    the seconds git took). The commit's automatic `git gc` runs in the foreground: detached,
    it would repack the fresh repository's 75,000 loose objects on the CPUs a timed build
    is using."""
    where.mkdir(parents=True, exist_ok=True)
    timed(["tar", "xf", str(tarball)], where)
    src = where / "linux-source-6.1"
    gi = src / ".gitignore"
    gi.write_text(gi.read_text().split("#\n# Debian packaging")[0])
    took = sum(timed(c, src, env)[0] for c in (
        ["git", "init", "-q"], ["git", "add", "-A"],
        ["git", "-c", "gc.autoDetach=false", "commit", "-qm", "base"]))
    return src, took
