"""Units, the things the differ compares and copies, and where relocations point.

A unit is a FUNC or OBJECT symbol's byte range, or, in a section that has no such symbol, a
stretch of the section: the whole of it (switch tables, constant pools), or for code reached
only through tables (alternative replacements, exception fixups) the piece that starts where
a table entry points.

`ObjectIndex` holds one object's units and answers "where does this relocation land?" with
a `Target`: the symbol it names, or for a relocation through a section symbol the symbol
whose bytes contain the target address. For a PC-relative relocation in code the target is
counted from the end of the instruction, so the instruction is decoded when that matters
(an immediate after the displacement moves the target: `cmpl $1, x(%rip)`).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from dataclasses import dataclass

from git_ksplice.elf.model import (
    PC_RELATIVE,
    RELOC_SIZES,
    SHF_STRINGS,
    SHT_GROUP,
    SHT_NOBITS,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
)
from git_ksplice.elf.sections import Kind, classify
from git_ksplice.elf.x86 import FunctionCode
from git_ksplice.errors import InputError

FENTRY_NAMES = frozenset({"__fentry__", "mcount", "__mcount"})


class Unit:
    """One comparable, copyable stretch of a section (see the module docstring).

    Besides what it is, a unit carries what the phases of a diff find out about it; each
    `ObjectIndex` makes fresh units, so these never outlive one diff.
    """

    __slots__ = ("carried", "decoded", "entries", "fentry", "included", "init_users", "kind",
                 "reason", "referrers", "relocs", "section", "size", "start", "status",
                 "symbol")

    def __init__(self, section: Section, start: int, size: int, symbol: Symbol | None,
                 kind: Kind, relocs: list[Reloc]) -> None:
        self.section = section
        self.start = start
        self.size = size
        self.symbol = symbol
        self.kind = kind
        self.relocs = relocs
        #: Offset of the `call __fentry__` ftrace patches, for functions that have one.
        self.fentry: int | None = None
        if symbol is not None and symbol.type == STT_FUNC:
            for r in relocs:
                if r.symbol.name in FENTRY_NAMES and r.offset - start <= 16:
                    self.fentry = r.offset - 1 - start
                    break
        #: The decoded instructions, decoded on first use (`ObjectIndex.code`).
        self.decoded: FunctionCode | None = None
        #: Every relocation that lands in the unit: (owning unit or None, section,
        #: relocation). Filled for all units of the index by the first
        #: `ObjectIndex.referrers` call; None until then and for units nothing refers to.
        self.referrers: list[tuple[Unit | None, Section, Reloc]] | None = None
        #: For a function: the entries of the descriptive special sections whose first field
        #: points into it, as (table, entry start, entry size, relocations). Set on both
        #: sides' units by `Comparison` (compare.py); None when there are none.
        self.entries: list[tuple[Section, int, int, list[Reloc]]] | None = None
        #: For a PATCHED unit: NEW, SAME or CHANGED. Set by `Comparison`, which also spreads
        #: changes to users; the differ marks callers of untraceable functions CHANGED.
        self.status: str | None = None
        #: For a CHANGED PATCHED unit, what changed (for the report and refusals).
        self.reason = ""
        #: For changed read-only data: the __init code that uses it (`Comparison`).
        self.init_users: set[str] | None = None
        #: For a changed function ftrace cannot redirect, copied along with its callers:
        #: why it is carried (set by the differ's `_untraceable`, diff.py).
        self.carried: str | None = None
        #: Why the unit goes into the diff object; None while it is not included (diff.py).
        self.included: str | None = None

    @property
    def name(self) -> str:
        return self.symbol.name if self.symbol is not None else self.section.name

    @property
    def is_function(self) -> bool:
        return self.symbol is not None and self.symbol.type == STT_FUNC

    @property
    def label(self) -> str:
        """How to name the unit to a user."""
        if self.symbol is not None:
            return self.symbol.name
        if self.start or self.size != self.section.size:
            return f"{self.section.name}+{self.start:#x}"
        return self.section.name

    def data(self) -> bytes:
        if self.section.type == SHT_NOBITS:
            return b"\0" * self.size
        return self.section.data[self.start:self.start + self.size]

    def __repr__(self) -> str:
        return f"<Unit {self.label}>"


@dataclass(frozen=True)
class Target:
    """Where a relocation points."""

    #: The FUNC/OBJECT symbol (or the named symbol of the relocation); None for a place in
    #: a section that no symbol covers.
    symbol: Symbol | None
    section: Section | None
    #: Offset of the target address within `symbol`, or within `section` when anonymous.
    offset: int
    #: The addend a relocation against `symbol` itself (not a section symbol) would carry.
    addend: int


class ObjectIndex:
    """One object cut into units, with lookups from relocations to the units they land in.

    What it finds is recorded on the object's own sections, symbols and relocations
    (`Section.kind`, `Section.anon_units`, `Symbol.unit`, `Reloc.target`), which is why an
    object is indexed afresh (and its earlier state cleared) for every diff.
    """

    def __init__(self, obj: ElfObject) -> None:
        """Classify every section (`Section.kind`) and cut the object into units; each
        FUNC/OBJECT symbol gets its `Symbol.unit`, each section without one its
        `Section.anon_units`. Whatever an earlier diff left on the object is cleared first."""
        self.obj = obj
        obj.clear_diff_state()
        for s in obj.sections:
            s.kind = classify(s)
        self.units: list[Unit] = []
        self._referrers_built = False
        cuts = self._aux_cuts()
        for sec in obj.sections:
            kind = sec.kind
            if sec.type == SHT_GROUP or kind in (Kind.IGNORED, Kind.TABLE, Kind.MCOUNT):
                continue  # tables describe units; they are reduced, not compared
            offsets = [r.offset for r in sec.relocs]
            # clang names some string literals (`.L.str.1`, OBJECT symbols) and leaves the
            # rest of the section unnamed: a string section is one unit all the same, as
            # gcc's are, so that every literal in it can be found and carried.
            named = [] if kind == Kind.STRINGS else [
                s for s in sec.symbols if s.type in (STT_FUNC, STT_OBJECT)]
            # Aliases (the same bytes under two names: SYSCALL_DEFINE0 makes __x64_sys_foo
            # an alias of __do_sys_foo) are one unit, named by the global one: two would
            # mean two ftrace sites at one address, which breaks ftrace when loaded.
            same: dict[tuple[int, int, int], list] = defaultdict(list)
            for sym in named:
                same[(sym.value, sym.size, sym.type)].append(sym)
            for group in same.values():
                sym = min(group, key=lambda x: (x.is_local, group.index(x)))
                lo = bisect.bisect_left(offsets, sym.value)
                hi = bisect.bisect_left(offsets, sym.value + max(sym.size, 1))
                u = Unit(sec, sym.value, sym.size, sym, kind, sec.relocs[lo:hi])
                self.units.append(u)
                for alias in group:
                    alias.unit = u
            if named:
                continue
            bounds = [0, sec.size]
            if kind == Kind.AUX_TEXT:
                # Code reached only through tables is cut where entries point, so that an
                # update carries only the pieces of the functions it replaces.
                bounds = sorted({0, sec.size, *cuts.get(sec, ())})
            pieces = []
            for a, b in itertools.pairwise(bounds):
                lo = bisect.bisect_left(offsets, a)
                hi = bisect.bisect_left(offsets, b)
                pieces.append(Unit(sec, a, b - a, None, kind, sec.relocs[lo:hi]))
            if not pieces:
                pieces.append(Unit(sec, 0, 0, None, kind, []))
            self.units.extend(pieces)
            sec.anon_units = pieces

    def _aux_cuts(self) -> dict[Section, set[int]]:
        """Offsets into AUX_TEXT sections that relocations of non-code sections (the tables)
        point at: where the pieces of replacement and fixup code start."""
        cuts: dict[Section, set[int]] = defaultdict(set)
        for sec in self.obj.sections:
            if sec.is_text:
                continue
            for r in sec.relocs:
                t = r.symbol.section
                if r.symbol.type == STT_SECTION and t is not None and \
                        t.kind == Kind.AUX_TEXT and 0 < r.addend < t.size:
                    cuts[t].add(r.addend)
        return cuts

    def kind_of(self, sec: Section | None) -> Kind | None:
        return None if sec is None else sec.kind

    def code(self, unit: Unit) -> FunctionCode:
        c = unit.decoded
        if c is None:
            c = unit.decoded = FunctionCode(unit.section.data, unit.start,
                                            unit.start + unit.size)
        return c

    def anon_at(self, sec: Section, offset: int) -> Unit | None:
        pieces = sec.anon_units
        if not pieces:
            return None
        i = bisect.bisect_right([u.start for u in pieces], offset) - 1
        return pieces[max(i, 0)]

    def unit_of(self, t: Target) -> Unit | None:
        """The unit a target lands in (None for undefined symbols and ignored sections)."""
        sym = t.symbol
        if sym is None:
            return self.anon_at(t.section, t.offset) if t.section is not None else None
        u = sym.unit
        if u is None and sym.section is not None:
            # A label (NOTYPE) inside a section that has no FUNC/OBJECT symbols.
            u = self.anon_at(sym.section, sym.value + t.offset)
        return u

    # -- relocations ---------------------------------------------------------------------

    def target(self, reloc: Reloc, owner: Unit | None) -> Target:
        """Where `reloc` lands; resolved on first use and kept in `Reloc.target`."""
        t = reloc.target
        if t is None:
            t = reloc.target = self._resolve(reloc, owner)
        return t

    def instruction_end_delta(self, reloc: Reloc, owner: Unit | None) -> int:
        """How far past a PC-relative field its target is counted from.

        In data (tables, `.long sym - .`) the value is relative to the field itself. In code
        the CPU adds the displacement to the end of the instruction, and the assembler put
        the distance from the field to that end into the addend: decode to find it.
        """
        if reloc.type not in PC_RELATIVE or owner is None or not owner.section.is_text:
            return 0
        insn = self.code(owner).containing(reloc.offset)
        if insn is not None:
            return insn.offset + insn.size - reloc.offset
        return RELOC_SIZES.get(reloc.type, 4)

    def is_branch(self, reloc: Reloc, owner: Unit | None) -> bool:
        """Is the relocation the destination of a call or jump (not an address taken)?"""
        if reloc.type not in PC_RELATIVE or owner is None or not owner.section.is_text:
            return False
        insn = self.code(owner).containing(reloc.offset)
        return insn is not None and (insn.mnemonic in ("call", "jmp")
                                     or insn.mnemonic.startswith("j"))

    def _resolve(self, reloc: Reloc, owner: Unit | None) -> Target:
        sym = reloc.symbol
        sec = sym.section
        if sym.type != STT_SECTION:
            if reloc.type in PC_RELATIVE and owner is not None and owner.section.is_text:
                # Named targets are nearly always `call`/`jmp sym` (field last): decode only
                # when the cheap guess says the target is not the symbol's start.
                delta = RELOC_SIZES.get(reloc.type, 4)
                if reloc.addend + delta != 0:
                    delta = self.instruction_end_delta(reloc, owner)
                return Target(sym, sec, reloc.addend + delta, reloc.addend)
            return Target(sym, sec, reloc.addend, reloc.addend)
        assert sec is not None
        pos = reloc.addend + self.instruction_end_delta(reloc, owner)
        if sec.flags & SHF_STRINGS and not 0 <= pos < sec.size:
            # A string is in its section, always: the object is damaged.
            raise InputError(f"a relocation at {reloc.offset:#x} points {pos:#x} bytes into "
                             f"{sec.name}, which holds {sec.size}: the object is malformed")
        inner = sec.symbol_at(pos)
        if inner is None and pos == sec.size and sec.symbols:
            inner = max(sec.symbols, key=lambda s: s.value + s.size)  # one past the end
        if inner is not None and inner.type in (STT_FUNC, STT_OBJECT):
            return Target(inner, sec, pos - inner.value, reloc.addend - inner.value)
        return Target(None, sec, pos, reloc.addend)

    def referrers(self, unit: Unit) -> list[tuple[Unit | None, Section, Reloc]]:
        """Every relocation that lands in `unit`: (owning unit or None, section, relocation).

        Relocations of sections that are not units (special tables, ftrace call sites, build
        notes) have no owning unit.
        """
        if not self._referrers_built:
            owned: set[Reloc] = set()
            for u in self.units:
                for r in u.relocs:
                    owned.add(r)
                    self._add_referrer(self.unit_of(self.target(r, u)), (u, u.section, r))
            for sec in self.obj.sections:
                for r in sec.relocs:
                    if r not in owned:
                        self._add_referrer(self.unit_of(self.target(r, None)), (None, sec, r))
            self._referrers_built = True
        return unit.referrers or []

    @staticmethod
    def _add_referrer(tu: Unit | None, ref: tuple[Unit | None, Section, Reloc]) -> None:
        if tu is not None:
            if tu.referrers is None:
                tu.referrers = []
            tu.referrers.append(ref)
