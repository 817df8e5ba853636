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
    __slots__ = ("fentry", "kind", "relocs", "section", "size", "start", "symbol")

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
    """One object's units, section kinds, decoded code and resolved relocations."""

    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.kind: dict[int, Kind] = {id(s): classify(s) for s in obj.sections}
        self.units: list[Unit] = []
        self.unit_of_symbol: dict[int, Unit] = {}
        #: Units of sections without named symbols, by section id, sorted by offset.
        self.anon_units: dict[int, list[Unit]] = {}
        self._code: dict[int, FunctionCode] = {}
        self._targets: dict[int, Target] = {}
        self._referrers: dict[int, list[tuple[Unit | None, Section, Reloc]]] | None = None
        cuts = self._aux_cuts()
        for sec in obj.sections:
            kind = self.kind[id(sec)]
            if sec.type == SHT_GROUP or kind in (Kind.IGNORED, Kind.TABLE, Kind.MCOUNT):
                continue  # tables describe units; they are reduced, not compared
            offsets = [r.offset for r in sec.relocs]
            named = [s for s in sec.symbols if s.type in (STT_FUNC, STT_OBJECT)]
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
                    self.unit_of_symbol[id(alias)] = u
            if named:
                continue
            bounds = [0, sec.size]
            if kind == Kind.AUX_TEXT:
                # Code reached only through tables is cut where entries point, so that an
                # update carries only the pieces of the functions it replaces.
                bounds = sorted({0, sec.size, *cuts.get(id(sec), ())})
            pieces = []
            for a, b in itertools.pairwise(bounds):
                lo = bisect.bisect_left(offsets, a)
                hi = bisect.bisect_left(offsets, b)
                pieces.append(Unit(sec, a, b - a, None, kind, sec.relocs[lo:hi]))
            if not pieces:
                pieces.append(Unit(sec, 0, 0, None, kind, []))
            self.units.extend(pieces)
            self.anon_units[id(sec)] = pieces

    def _aux_cuts(self) -> dict[int, set[int]]:
        cuts: dict[int, set[int]] = defaultdict(set)
        for sec in self.obj.sections:
            if sec.is_text:
                continue
            for r in sec.relocs:
                t = r.symbol.section
                if r.symbol.type == STT_SECTION and t is not None and \
                        self.kind[id(t)] == Kind.AUX_TEXT and 0 < r.addend < t.size:
                    cuts[id(t)].add(r.addend)
        return cuts

    def kind_of(self, sec: Section | None) -> Kind | None:
        return None if sec is None else self.kind[id(sec)]

    def code(self, unit: Unit) -> FunctionCode:
        c = self._code.get(id(unit))
        if c is None:
            c = FunctionCode(unit.section.data, unit.start, unit.start + unit.size)
            self._code[id(unit)] = c
        return c

    def anon_at(self, sec: Section, offset: int) -> Unit | None:
        pieces = self.anon_units.get(id(sec))
        if not pieces:
            return None
        i = bisect.bisect_right([u.start for u in pieces], offset) - 1
        return pieces[max(i, 0)]

    def unit_of(self, t: Target) -> Unit | None:
        """The unit a target lands in (None for undefined symbols and ignored sections)."""
        sym = t.symbol
        if sym is None:
            return self.anon_at(t.section, t.offset) if t.section is not None else None
        u = self.unit_of_symbol.get(id(sym))
        if u is None and sym.section is not None:
            # A label (NOTYPE) inside a section that has no FUNC/OBJECT symbols.
            u = self.anon_at(sym.section, sym.value + t.offset)
        return u

    # -- relocations ---------------------------------------------------------------------

    def target(self, reloc: Reloc, owner: Unit | None) -> Target:
        t = self._targets.get(id(reloc))
        if t is None:
            t = self._resolve(reloc, owner)
            self._targets[id(reloc)] = t
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
        if self._referrers is None:
            index: dict[int, list[tuple[Unit | None, Section, Reloc]]] = defaultdict(list)
            owned: set[int] = set()
            for u in self.units:
                for r in u.relocs:
                    owned.add(id(r))
                    tu = self.unit_of(self.target(r, u))
                    if tu is not None:
                        index[id(tu)].append((u, u.section, r))
            for sec in self.obj.sections:
                for r in sec.relocs:
                    if id(r) not in owned:
                        tu = self.unit_of(self.target(r, None))
                        if tu is not None:
                            index[id(tu)].append((None, sec, r))
            self._referrers = index
        return self._referrers.get(id(unit), [])
