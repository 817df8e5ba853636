"""The single rich console (stderr) and the rules for what is shown where.

Human output goes to stderr through rich, plain when stderr is not a terminal; machine output
(`--json`) is one document on stdout, so `git ksplice ... --json | jq` always works.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)
stdout_console = Console(highlight=False, soft_wrap=True)


def print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    if hint:
        console.print(f"[dim]hint:[/] {hint}")
