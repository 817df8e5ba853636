"""How a long job says what it is doing: the one small interface between the library and a
screen.

The pipeline, the build and the livepatch module builder report through a `Reporter` and
know nothing of terminals: `ui.Phases` draws one (a live status line, or a line per phase
off a terminal), `Silent` swallows everything (tests, library callers), and `Recorder` keeps
what was said (tests of the phases' order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Reporter(Protocol):
    def start(self, phase: str) -> None:
        """A phase begins (the previous one, if any, ends unsummarised)."""

    def done(self, summary: str = "") -> None:
        """The current phase ended; `summary` says what it found."""

    def note(self, message: str) -> None:
        """Something the user should know (a repair, a warning), at once."""

    def build_line(self, line: str, compiled: int) -> None:
        """A line make printed, and how many objects it has compiled so far."""

    def expect(self, total: int) -> None:
        """The current phase will compile about `total` objects (a progress bar's end)."""

    def stop(self) -> None:
        """The job ends, however it ends: anything live on the screen goes."""


class Silent:
    """A reporter that says nothing."""

    def start(self, phase: str) -> None:
        pass

    def done(self, summary: str = "") -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def build_line(self, line: str, compiled: int) -> None:
        pass

    def expect(self, total: int) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class Recorder:
    """A reporter that keeps what it was told: (`start`|`done`|`note`, text) in order."""

    events: list[tuple[str, str]] = field(default_factory=list)
    lines: int = 0

    def start(self, phase: str) -> None:
        self.events.append(("start", phase))

    def done(self, summary: str = "") -> None:
        self.events.append(("done", summary))

    def note(self, message: str) -> None:
        self.events.append(("note", message))

    def build_line(self, line: str, compiled: int) -> None:
        self.lines += 1

    def expect(self, total: int) -> None:
        self.events.append(("expect", str(total)))

    def stop(self) -> None:
        pass

    def phases(self) -> list[str]:
        return [text for kind, text in self.events if kind == "start"]
