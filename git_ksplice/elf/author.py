"""The patch author's records: callbacks, ignore marks and consent to data changes.

A patch can say what compiled code cannot: run this function when the update loads or
unloads, leave this changed function or section out, this changed initialiser is intended.
The macros of git-ksplice's header (`git_ksplice/include/ksplice-patch.h`, which also gives
kpatch's and Ksplice's names) write one record per use into a section of its own
(`sections.AUTHOR_RECORDS`); this module reads the PATCHED object's records into
`AuthorRecords`, which the differ acts on. The records themselves never reach the update:
the callbacks become the module's `klp_callbacks` (livepatch/module.py).

Only records that are new or changed count for callbacks: the objects of a `--series`
update already hold the earlier updates' records, and their callbacks ran when those loaded.
Ignore marks and consent count wherever they are, since they describe this diff.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from git_ksplice.elf.compare import SAME
from git_ksplice.elf.sections import AUTHOR_RECORDS, Kind, RecordSpec
from git_ksplice.elf.units import ObjectIndex, Unit


@dataclass
class Callback:
    """A function the update's livepatch runs at one of its moments."""

    #: pre_patch, post_patch, pre_unpatch, post_unpatch (struct klp_callbacks' members),
    #: or fail_patch (Ksplice's fail_apply: run when a pre-patch callback fails).
    slot: str
    function: str
    #: klp, void or int (sections.RecordSpec.signature)
    signature: str
    macro: str

    def as_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "function": self.function, "signature": self.signature,
                "macro": self.macro}


@dataclass
class DataChange:
    """A changed initialiser of existing data that the author consented to."""

    name: str
    section: str
    size: int
    #: accept: the author's own callback applies it; apply: the update's post-patch
    #: callback writes `value` over the running kernel's copy and restores what was there
    #: when it unloads.
    mode: str
    value: bytes
    is_local: bool
    macro: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "section": self.section, "size": self.size,
                "mode": self.mode, "macro": self.macro}


@dataclass
class AuthorRecords:
    callbacks: list[tuple[Callback, Unit]] = field(default_factory=list)
    #: function units marked with KPATCH_IGNORE_FUNCTION, and the macro
    ignored_functions: list[tuple[Unit, str]] = field(default_factory=list)
    #: section names marked with KPATCH_IGNORE_SECTION
    ignored_sections: list[str] = field(default_factory=list)
    #: data unit -> (accept or apply, macro)
    consent: dict[Unit, tuple[str, str]] = field(default_factory=dict)
    #: (symbol, section, reason) of records that cannot be honoured
    problems: list[tuple[str | None, str, str]] = field(default_factory=list)


def read_records(p: ObjectIndex) -> AuthorRecords:
    """Every record of the PATCHED object `p` (its units' statuses already set), in the
    order they are to run: by kind in `AUTHOR_RECORDS`' order (Ksplice's pre-apply hooks
    before its check-apply ones, say), then as the source wrote them."""
    found = AuthorRecords()
    records = sorted((u for u in p.units if u.kind == Kind.AUTHOR), key=_running_order)
    for u in records:
        spec = AUTHOR_RECORDS[u.section.name]
        for offset in range(u.start, u.start + max(u.size, 1), spec.entry_size):
            _read_one(p, u, spec, offset, found)
    return found


_KINDS = {name: i for i, name in enumerate(AUTHOR_RECORDS)}
_COUNTER = re.compile(r"(\d+)$")


def _running_order(u: Unit) -> tuple[int, int, int]:
    """gcc emits a file's static variables in reverse, so the records' offsets are no
    guide to the source's order; the macros name each record `__UNIQUE_ID_<kind><n>`, and
    `n` (`__COUNTER__`) counts up through the file."""
    counter = _COUNTER.search(u.symbol.name) if u.symbol is not None else None
    return (_KINDS[u.section.name], int(counter[1]) if counter else -1, u.start)


def _read_one(p: ObjectIndex, record: Unit, spec: RecordSpec, offset: int,
              found: AuthorRecords) -> None:
    reloc = next((r for r in record.relocs if r.offset == offset), None)
    where = spec.macro or spec.name
    if spec.what == "unsupported":
        found.problems.append((record.label, spec.name, f"{where}: livepatch checks every "
                               "patched function's stack safety and cannot skip it for one "
                               "function; remove the macro (the kernel's consistency model "
                               "waits for each task to leave the old code instead)"))
        return
    if reloc is None:
        if offset < record.start + record.size:
            found.problems.append((record.label, spec.name,
                                   f"a {where} record at +{offset - record.start:#x} names "
                                   "nothing (a NULL pointer)"))
        return
    target = p.target(reloc, record)
    if spec.what == "ignore-section":
        sec = target.section
        if sec is None or sec.kind != Kind.STRINGS:
            found.problems.append((record.label, spec.name, f"{where} record does not point "
                                   "at a string (the section's name)"))
            return
        off = target.offset if target.symbol is None else target.symbol.value + target.offset
        found.ignored_sections.append(sec.string_at(off).decode("utf-8", "replace"))
        return
    unit = p.unit_of(target)
    named = target.symbol.name if target.symbol is not None else "?"
    if unit is None:
        found.problems.append((record.label, spec.name, f"{where}({named}): {named} is not "
                               "defined in this file; define it in the file that names it"))
        return
    if spec.what == "callback":
        if not unit.is_function:
            found.problems.append((record.label, spec.name, f"{where}({unit.label}): not a "
                                   "function"))
        elif record.status != SAME:
            assert unit.symbol is not None
            found.callbacks.append((Callback(spec.slot, unit.symbol.name, spec.signature,
                                             spec.macro), unit))
    elif spec.what == "ignore-function":
        if unit.is_function:
            found.ignored_functions.append((unit, spec.macro))
        else:
            found.problems.append((record.label, spec.name, f"{where}({unit.label}): not a "
                                   "function"))
    elif unit.kind == Kind.DATA and unit.symbol is not None:
        found.consent[unit] = (spec.what.removesuffix("-data"), spec.macro)
    else:
        found.problems.append((record.label, spec.name, f"{where}({unit.label}): not a "
                               "writable variable"))
