"""Changes to the layout of C structures, found in the source before anything is built.

Why at the source: a livepatch replaces functions, not the objects the running kernel has
already allocated. A patch that adds, removes, retypes or reorders a member of a struct makes
the new code read every existing object of that type at the wrong offsets; in the object
files this is only a different displacement in each function that touches the type, which
looks like any other code change. (Tried on Linux 6.1: a member added at the head of
`struct proc_maps_private` built an update that oopsed the first reader of /proc/PID/maps.)
The source says it plainly, so `create` compares the definitions of every struct and union
in the files the change touches, and refuses a change to one unless the user says that no
object of that type can exist while the update is loaded.

The parser is deliberately small: comments, strings and character literals are blanked,
then each `struct NAME {` / `union NAME {` body is taken by counting braces. Bodies are
compared with whitespace collapsed, so comment and formatting changes are not layout changes.
A body that changes only inside a nested anonymous definition still counts (it is part of the
layout). Preprocessor lines stay: a member under `#ifdef` is still a member in some
configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"""/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""", re.S)
_HEAD = re.compile(r"\b(struct|union)\s+([A-Za-z_]\w*)\s*(?:__\w+(?:\([^)]*\))?\s*)*\{")


@dataclass(frozen=True)
class LayoutChange:
    path: str
    kind: str  # struct or union
    name: str
    line: int  # of the definition, in the post version

    def describe(self) -> str:
        return f"{self.kind} {self.name} ({self.path}:{self.line})"


def _blank(text: str) -> str:
    """Comments, strings and character literals replaced by spaces (newlines kept, so that
    offsets and line numbers still match the original text)."""
    return _TOKEN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def definitions(text: str) -> dict[tuple[str, str], tuple[str, int]]:
    """(kind, name) -> (normalised body, line) for every struct/union defined in `text`."""
    clean = _blank(text)
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for m in _HEAD.finditer(clean):
        depth, i = 1, m.end()
        while i < len(clean) and depth:
            c = clean[i]
            depth += (c == "{") - (c == "}")
            i += 1
        if depth:
            continue  # unbalanced (a macro trick): not ours to judge
        body = " ".join(clean[m.end():i - 1].split())
        line = clean.count("\n", 0, m.start()) + 1
        out.setdefault((m.group(1), m.group(2)), (body, line))
    return out


def changed_layouts(path: str, before: str | None, after: str | None) -> list[LayoutChange]:
    """The structs and unions defined in both versions of `path` whose definitions differ.
    A new definition is not a change of layout, nor is one that left the file (a move to
    another header; code still using it would not compile)."""
    old = definitions(before or "")
    new = definitions(after or "")
    return [LayoutChange(path, kind, name, new[(kind, name)][1])
            for (kind, name), (body, _) in sorted(old.items())
            if (kind, name) in new and new[(kind, name)][0] != body]
