"""The consoles and the rules for what is shown where; the only module that draws.

Human output goes to stderr through rich (`console`), plain when stderr is not a terminal;
listings meant for a pipe (`hook status`) go to stdout (`listing`); machine output (`--json`)
is one document on stdout, so `git ksplice ... --json | jq` always works. `Phases` is the
terminal's `progress.Reporter`.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from git_ksplice.words import count

console = Console(stderr=True, highlight=False, soft_wrap=True)
#: Listings a user pipes (`hook status | grep failed`), like `git status`: on stdout.
listing = Console(highlight=False, soft_wrap=True)

__all__ = ["Phases", "console", "count", "error", "print_json", "printable"]


#: Characters an update's text must not send to a terminal raw: C0 controls but tab, newline
#: and form feed (kernel sources have all three), DEL, C1 controls (U+009B is a CSI: escape
#: sequences without ESC), and the bidirectional overrides that make code read other than it
#: compiles ("Trojan Source"). A carriage return is escaped on a terminal only, where it can
#: overwrite what was printed; in a pipe it is kept, so a CRLF file's patch still applies.
_UNSAFE = "\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_UNSAFE_PIPE = re.compile(f"[{_UNSAFE}]")
_UNSAFE_TERMINAL = re.compile(f"[{_UNSAFE}\r]")


def printable(text: str, terminal: bool | None = None) -> str:
    """`text` from an update (a description, a patch) with what could drive the terminal
    escaped as \\xNN or \\uNNNN. `terminal`: whether stdout is one (default: ask)."""
    if terminal is None:
        terminal = sys.stdout.isatty()
    pattern = _UNSAFE_TERMINAL if terminal else _UNSAFE_PIPE
    return pattern.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    # The message is text, not markup: make's `[scripts/Makefile.build:255: x.o]` must print.
    # And it may quote input from anywhere (a manifest's field, a file name): escaped.
    console.print(f"[bold red]error:[/] {escape(printable(message, terminal=True))}",
                  markup=True, highlight=False)
    if hint:
        console.print(f"[dim]hint:[/] {escape(printable(hint, terminal=True))}", markup=True,
                      highlight=False)


class Phases:
    """Progress of a long command: one line per phase off a terminal, a live status line
    (phase, objects compiled, elapsed time) on one, or a progress bar (objects compiled of
    those expected) when the phase knows how many. `-v` also echoes the build's output."""

    def __init__(self, *, verbose: int = 0, quiet: bool = False) -> None:
        import time

        self._time = time
        self.verbose = verbose
        self.quiet = quiet
        self._status = None
        self._bar = None
        self._task = None
        self._phase = ""
        self._start = 0.0

    def start(self, phase: str) -> None:
        self.stop()
        self._phase = phase
        self._start = self._time.monotonic()
        if self.quiet:
            return
        if console.is_terminal and not self.verbose:
            self._status = console.status(f"{phase}...")
            self._status.start()
        else:
            console.print(f"{phase}...", markup=False)

    def expect(self, total: int) -> None:
        if self.quiet or self.verbose or not console.is_terminal or total <= 0:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bar is not None:
            self._bar.stop()
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                             transient=True)
        self._task = self._bar.add_task(escape(self._phase), total=total)
        self._bar.start()

    def build_line(self, line: str, compiled: int) -> None:
        if self.verbose:
            console.print(line, markup=False, highlight=False)
        elif self._bar is not None:
            self._bar.update(self._task, completed=compiled)
        elif self._status is not None:
            elapsed = self._time.monotonic() - self._start
            self._status.update(f"{self._phase}: {count(compiled, 'object')} compiled, "
                                f"{elapsed:.0f}s")

    def done(self, summary: str = "") -> None:
        elapsed = self._time.monotonic() - self._start
        self.stop()
        if not self.quiet:
            console.print(f"{self._phase}: done in {elapsed:.1f}s" + (f" ({summary})"
                                                                       if summary else ""),
                          markup=False)

    def note(self, message: str) -> None:
        message = printable(message, terminal=True)
        if self._bar is not None:
            self._bar.console.print(message, markup=False)
        elif self._status is not None:
            self._status.console.print(message, markup=False)
        elif not self.quiet:
            console.print(message, markup=False)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
