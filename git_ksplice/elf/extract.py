"""Extraction: the diff object, holding what an update carries and nothing else.

Each included unit is copied into a section of the same name (several units of one section
are packed together, keeping the section's alignment); kept special-section entries likewise.
Relocations are rewritten:
- to something copied: to its copy (a symbol, or the copied section at the moved offset);
- to anything else: to an undefined symbol that keeps the original's name, binding, type and
  FILE block (an undefined LOCAL symbol, which `ld -r` keeps), for the module builder to
  resolve in the running kernel;
- the address of a replaced function taken as data (`mov $fn, ...`, a pointer in a struct)
  goes to the original function, which ftrace redirects while the update is loaded and which
  stays valid after it is removed; only calls and jumps go straight to the new copy.

Replaced functions become LOCAL copies named as in ORIG, so that they never clash with the
running originals they replace. `__mcount_loc` is rebuilt: one entry per copied function with
a `__fentry__` call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from git_ksplice.elf import names
from git_ksplice.elf.model import (
    BIND_NAMES,
    R_X86_64_64,
    SHF_ALLOC,
    SHF_GROUP,
    SHN_ABS,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    Reloc,
    Section,
    Symbol,
)
from git_ksplice.elf.units import ObjectIndex, Target, Unit

_TYPE_NAMES = {STT_NOTYPE: "notype", STT_OBJECT: "object", STT_FUNC: "function"}


@dataclass
class DiffObject:
    sections: list[Section]
    symbols: list[Symbol]
    #: The running kernel's symbols the new code uses: name, binding, type, FILE block.
    references: list[dict[str, str | None]]
    mcount_entries: int


@dataclass
class _Piece:
    start: int
    size: int
    out: int


class _Extractor:
    """Builds the diff object from PATCHED's included units and kept table entries.

    Each copied PATCHED section and symbol records its counterpart in the diff object
    (`Section.copy`, `Symbol.copy`); relocations are rewritten through those.
    """

    def __init__(self, p: ObjectIndex, included: Iterable[Unit], replaced: set[Unit]) -> None:
        self.p = p
        self.included = list(included)
        self.replaced = replaced
        #: The diff object's sections, in order.
        self.out: list[Section] = []
        #: Where the copied spans of each PATCHED section went in its copy.
        self.pieces: dict[Section, list[_Piece]] = defaultdict(list)
        self.local_syms: dict[str | None, list[Symbol]] = defaultdict(list)
        self.global_syms: list[Symbol] = []
        self.externs: dict[tuple[str, int, str | None], Symbol] = {}
        self.file_name = next((s.name for s in p.obj.symbols if s.type == STT_FILE), None)

    def run(self, modinfo: Section | None) -> DiffObject:
        self._copy_sections()
        self._define_symbols()
        for src in self.p.obj.sections:
            if src.copy is not None:
                self._copy_relocations(src, src.copy)
        mcount = self._mcount_loc()
        if modinfo is not None:
            self.out.append(modinfo)
        return DiffObject(list(self.out), self._symbol_table(), self._references(), mcount)

    # -- contents ------------------------------------------------------------------------

    def _copy_sections(self) -> None:
        by_section: dict[Section, list[Unit]] = defaultdict(list)
        for u in self.included:
            by_section[u.section].append(u)
        for src in self.p.obj.sections:  # keep the input's section order
            spans: list[tuple[int, int]]
            if src in by_section:
                spans = [(u.start, u.size) for u in by_section[src]]
                packed = True
            elif src.kept_entries:
                spans = src.kept_entries
                packed = False  # table entries are laid out back to back
            else:
                continue
            data = bytearray()
            align = max(src.addralign, 1)
            for start, size in _merge(spans):
                if packed:
                    data += b"\0" * (-len(data) % align)
                self.pieces[src].append(_Piece(start, size, len(data)))
                data += (b"\0" * size if src.type == SHT_NOBITS
                         else src.data[start:start + size])
            sec = Section(src.name, src.type, src.flags & ~SHF_GROUP,
                          b"" if src.type == SHT_NOBITS else bytes(data), len(data),
                          src.addralign, src.entsize)
            sec.rela_flags = src.rela_flags
            sec.section_symbol = Symbol(sec.name, 0, 0, STB_LOCAL, STT_SECTION, section=sec)
            src.copy = sec
            self.out.append(sec)

    def map_offset(self, src: Section, off: int) -> int | None:
        pieces = self.pieces.get(src, ())
        for p in pieces:
            if p.start <= off < p.start + p.size:
                return p.out + off - p.start
        for p in pieces:  # one past the end of a copied piece
            if off == p.start + p.size:
                return p.out + p.size
        return None

    # -- symbols -------------------------------------------------------------------------

    def _define_symbols(self) -> None:
        for u in self.included:
            sym = u.symbol
            if sym is None:
                continue
            value = self.map_offset(u.section, u.start)
            assert value is not None
            orig = sym.twin
            name = orig.name if orig is not None else sym.name
            bind = sym.bind
            if orig is not None or names.is_special_static(sym.name, u.section.name):
                bind = STB_LOCAL  # a copy must not clash with the running original
            assert u.section.copy is not None
            ns = Symbol(name, value, sym.size, bind, sym.type, sym.other,
                        section=u.section.copy,
                        file=self.file_name if bind == STB_LOCAL else None)
            sym.copy = ns
            if bind == STB_LOCAL:
                self.local_syms[self.file_name].append(ns)
            else:
                self.global_syms.append(ns)

    def extern(self, sym: Symbol) -> Symbol:
        """An undefined symbol standing for `sym` of the running kernel (ORIG's twin)."""
        src = sym.twin or sym
        key = (src.name, src.bind, src.file if src.is_local else None)
        ext = self.externs.get(key)
        if ext is None:
            typ = src.type if src.type in (STT_FUNC, STT_OBJECT) else STT_NOTYPE
            ext = Symbol(src.name, 0, 0, src.bind, typ, src.other,
                         file=src.file if src.is_local else None)
            self.externs[key] = ext
            if src.is_local:
                self.local_syms[src.file].append(ext)
            else:
                self.global_syms.append(ext)
        return ext

    def _symbol_table(self) -> list[Symbol]:
        used = {r.symbol for s in self.out for r in s.relocs}
        symbols: list[Symbol] = [s.section_symbol for s in self.out
                                 if s.section_symbol is not None]
        for fname, syms in self.local_syms.items():
            if fname is not None:
                symbols.append(Symbol(fname, 0, 0, STB_LOCAL, STT_FILE, special_shndx=SHN_ABS))
            symbols.extend(syms)
        symbols.extend(sorted(self.global_syms, key=lambda s: (s.section is None, s.name)))
        return [s for s in symbols if s.section is not None or s.type == STT_FILE
                or s in used]

    def _references(self) -> list[dict[str, str | None]]:
        return sorted(({"name": e.name, "binding": BIND_NAMES.get(e.bind, str(e.bind)),
                        "type": _TYPE_NAMES.get(e.type, str(e.type)), "file": e.file}
                       for e in self.externs.values()),
                      key=lambda d: (d["binding"] != "local", d["name"] or ""))

    # -- relocations ---------------------------------------------------------------------

    def _copy_relocations(self, src: Section, sec: Section) -> None:
        owners = sorted((u for u in self.included if u.section is src),
                        key=lambda u: u.start)
        for r in src.relocs:
            if not any(p.start <= r.offset < p.start + p.size for p in self.pieces[src]):
                continue
            owner = next((u for u in owners if u.start <= r.offset < u.start + max(u.size, 1)),
                         None)
            t = self.p.target(r, owner)
            sym, addend = self._rewrite(r, t, owner)
            new_off = self.map_offset(src, r.offset)
            assert new_off is not None
            sec.relocs.append(Reloc(new_off, r.type, sym, addend))

    def _rewrite(self, r: Reloc, t: Target, owner: Unit | None) -> tuple[Symbol, int]:
        sym = t.symbol
        if sym is not None and sym.copy is not None:
            tu = sym.unit
            if owner is not None and tu is not None and tu in self.replaced \
                    and t.offset == 0 and not self.p.is_branch(r, owner):
                # A function pointer: the original, redirected by ftrace while the update is
                # loaded, and still valid once it is removed.
                return self.extern(sym), t.addend
            return sym.copy, t.addend
        if t.section is not None and t.section.copy is not None and (
                sym is None or sym.type not in (STT_FUNC, STT_OBJECT)):
            # A place in a copied section (a string, a table, a label): relative to the copy.
            pos = t.offset if sym is None else sym.value + t.offset
            mapped = self.map_offset(t.section, pos)
            if mapped is not None:
                out = t.section.copy
                assert out.section_symbol is not None
                pc_delta = t.offset - t.addend
                return out.section_symbol, mapped - pc_delta
        if sym is None:
            raise AssertionError(f"unnamed target {t} survived the checks")
        return self.extern(sym), t.addend

    def _mcount_loc(self) -> int:
        src = self.p.obj.section("__mcount_loc")
        if src is None:
            return 0
        relocs = []
        for u in self.included:
            if u.is_function and u.fentry is not None and u.symbol is not None \
                    and u.symbol.copy is not None:
                relocs.append(Reloc(len(relocs) * 8, R_X86_64_64, u.symbol.copy, u.fentry))
        if relocs:
            sec = Section("__mcount_loc", SHT_PROGBITS, SHF_ALLOC, bytes(8 * len(relocs)),
                          8 * len(relocs), 8, 8)
            sec.relocs = relocs
            sec.rela_flags = src.rela_flags
            self.out.append(sec)
        return len(relocs)


def extract(p: ObjectIndex, included: Iterable[Unit], replaced: set[Unit],
            modinfo: Section | None) -> DiffObject:
    """The diff object holding `included` (units of PATCHED, in inclusion order) and the
    table entries the differ kept (`Section.kept_entries`). Functions in `replaced` are the
    ones ftrace redirects: their address taken as data goes to the running original."""
    return _Extractor(p, included, replaced).run(modinfo)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, size in sorted(spans):
        if out and start < out[-1][0] + out[-1][1]:
            s0, z0 = out[-1]
            out[-1] = (s0, max(s0 + z0, start + size) - s0)
        else:
            out.append((start, size))
    return out
