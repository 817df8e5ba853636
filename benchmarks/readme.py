"""Writes a benchmark's table into its own section of benchmarks/README.md."""

from __future__ import annotations

import re
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
