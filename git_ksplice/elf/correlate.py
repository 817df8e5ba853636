"""Which symbol of PATCHED is which symbol of ORIG.

Rules, in order:
- globals, defined or not, by exact name;
- locals within their FILE block (blocks paired by name in order), by name with gcc's
  numbering ignored; several candidates (clones renumbered by a new clone) are told apart by
  identical contents, then by exact name;
- a symbol whose binding changed (a function made static) by exact name, with a warning;
- function-scope statics (`count.3`) through the functions that use them, since their
  numbers change whenever another static appears; a leftover unique by name on both sides is
  the same variable (it moved with inlining);
- never: compiler bookkeeping statics (fresh copies), assembler labels, FILE/SECTION symbols;
- sections through the symbol they carry, else by name with numbering ignored.
"""

from __future__ import annotations

from collections import defaultdict

from git_ksplice.elf import names
from git_ksplice.elf.model import (
    BIND_NAMES,
    SHT_NOBITS,
    STT_FILE,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    Section,
    Symbol,
)
from git_ksplice.elf.sections import Kind
from git_ksplice.elf.units import ObjectIndex


class Correlation:
    def __init__(self, orig: ObjectIndex, patched: ObjectIndex) -> None:
        self.o = orig
        self.p = patched
        self._twin_p: dict[int, Symbol] = {}
        self._twin_o: dict[int, Symbol] = {}
        self._sec_twin_p: dict[int, Section] = {}
        #: (symbol, section, message) notes for the report.
        self.warnings: list[tuple[str, str | None, str]] = []
        self._run()

    def orig_of(self, sym: Symbol) -> Symbol | None:
        """The ORIG twin of a PATCHED symbol."""
        return self._twin_p.get(id(sym))

    def patched_of(self, sym: Symbol) -> Symbol | None:
        return self._twin_o.get(id(sym))

    def orig_section(self, sec: Section) -> Section | None:
        return self._sec_twin_p.get(id(sec))

    def _pair(self, o: Symbol, p: Symbol) -> None:
        self._twin_p[id(p)] = o
        self._twin_o[id(o)] = p

    def _candidates(self, index: ObjectIndex) -> list[Symbol]:
        out = []
        for s in index.obj.symbols[1:]:
            if s.type in (STT_FILE, STT_SECTION):
                continue
            if s.section is not None and index.kind[id(s.section)] == Kind.IGNORED:
                continue  # objtool annotations, .discard.addressable ...
            out.append(s)
        return out

    def _run(self) -> None:
        osyms, psyms = self._candidates(self.o), self._candidates(self.p)

        oglob = {s.name: s for s in osyms if not s.is_local}
        for p in psyms:
            if not p.is_local and p.name in oglob:
                self._pair(oglob[p.name], p)

        oblocks, pblocks = _file_blocks(osyms), _file_blocks(psyms)
        statics_o: list[Symbol] = []
        statics_p: list[Symbol] = []
        for key, plist in pblocks.items():
            obyname = _by_demangled_name(oblocks.get(key, []), statics_o)
            pbyname = _by_demangled_name(plist, statics_p)
            for k, ps in pbyname.items():
                self._pair_group(obyname.get(k, []), ps)

        ounpaired = {s.name: s for s in osyms if id(s) not in self._twin_o and s.defined
                     and _correlatable(s)}
        for p in psyms:
            if id(p) in self._twin_p or not p.defined or p.name not in ounpaired:
                continue
            o = ounpaired.pop(p.name)
            if o.type == p.type and o.is_local != p.is_local:
                self._pair(o, p)
                self.warnings.append((p.name, _secname(p),
                                      f"binding changed from {BIND_NAMES[o.bind]} to "
                                      f"{BIND_NAMES[p.bind]}"))

        self._correlate_statics(statics_o, statics_p)
        self._correlate_sections()

    def _pair_group(self, os_: list[Symbol], ps: list[Symbol]) -> None:
        """Pair same-named (numbering aside) locals of one FILE block.

        gcc numbers clones per function in creation order, so a new `foo.constprop` clone can
        take the number of an existing one. Identical contents identify a clone; then the
        exact name; then, for equal counts, the order of appearance.
        """
        if len(os_) == 1 and len(ps) == 1:
            self._pair(os_[0], ps[0])
            return
        left_o, left_p = list(os_), list(ps)
        for o in os_:
            same = [p for p in left_p if _same_contents(o, p)]
            if same:
                p = next((x for x in same if x.name == o.name), same[0])
                self._pair(o, p)
                left_o.remove(o)
                left_p.remove(p)
        for o in list(left_o):
            p = next((x for x in left_p if x.name == o.name), None)
            if p is not None and len(left_o) == len(left_p):
                self._pair(o, p)
                left_o.remove(o)
                left_p.remove(p)
        if len(left_o) == len(left_p):
            for o, p in zip(left_o, left_p, strict=True):
                self._pair(o, p)

    def _users(self, index: ObjectIndex, sym: Symbol) -> set[int]:
        """ids of the functions whose code refers to `sym`."""
        unit = index.unit_of_symbol.get(id(sym))
        if unit is None:
            return set()
        return {id(u.symbol) for u, _, _ in index.referrers(unit)
                if u is not None and u.is_function}

    def _correlate_statics(self, statics_o: list[Symbol], statics_p: list[Symbol]) -> None:
        if not statics_p:
            return
        users_o = {id(s): self._users(self.o, s) for s in statics_o}
        scored = []
        for p in statics_p:
            up = set()
            for u in self._users(self.p, p):
                o = self._twin_p.get(u)
                if o is not None:
                    up.add(id(o))
            key = names.demangle(p.name)
            for o in statics_o:
                if o.type != p.type or names.demangle(o.name) != key:
                    continue
                score = len(users_o[id(o)] & up)
                if score:
                    scored.append((-score, o.index, p.index, o, p))
        scored.sort(key=lambda t: t[:3])
        for _, _, _, o, p in scored:
            if id(o) not in self._twin_o and id(p) not in self._twin_p:
                self._pair(o, p)
        left_o: dict[str, list[Symbol]] = defaultdict(list)
        left_p: dict[str, list[Symbol]] = defaultdict(list)
        count_o: dict[str, int] = defaultdict(int)
        for o in statics_o:
            count_o[names.demangle(o.name)] += 1
            if id(o) not in self._twin_o:
                left_o[names.demangle(o.name)].append(o)
        for p in statics_p:
            if id(p) not in self._twin_p:
                left_p[names.demangle(p.name)].append(p)
        for key, ps in left_p.items():
            os_ = left_o.get(key, [])
            if len(ps) == 1 and len(os_) == 1 and count_o[key] == 1:
                self._pair(os_[0], ps[0])
                continue
            # No function tells them apart (statics only tables refer to): the same name,
            # numbering included, is the best evidence left.
            by_name = {o.name: o for o in os_}
            for p in list(ps):
                o = by_name.pop(p.name, None)
                if o is not None and o.size == p.size:
                    self._pair(o, p)
                    ps.remove(p)
                    os_.remove(o)
            if ps and os_:
                for p in ps:
                    self.warnings.append((p.name, _secname(p),
                                          "static variable could not be matched with one of "
                                          "the original object's ("
                                          + ", ".join(o.name for o in os_)
                                          + "): it is treated as new and starts from its "
                                          "initial value"))

    def _correlate_sections(self) -> None:
        for p in self.p.obj.sections:
            for sym in p.symbols:
                o = self._twin_p.get(id(sym))
                if o is not None and o.section is not None and o.value == sym.value:
                    self._sec_twin_p[id(p)] = o.section
                    break
        by_name: dict[str, list[Section]] = defaultdict(list)
        for s in self.o.obj.sections:
            by_name[names.demangle(s.name)].append(s)
        for p in self.p.obj.sections:
            if id(p) not in self._sec_twin_p:
                cands = by_name.get(names.demangle(p.name), [])
                if len(cands) == 1:
                    self._sec_twin_p[id(p)] = cands[0]


def _correlatable(s: Symbol) -> bool:
    if s.type == STT_NOTYPE and s.is_local:
        return False  # assembler labels (.LC0, local asm labels)
    return not names.is_special_static(s.name, _secname(s))


def _file_blocks(syms: list[Symbol]) -> dict[tuple[str | None, int], list[Symbol]]:
    """Locals grouped by FILE block; the n-th block of a file name is keyed (name, n)."""
    seen: dict[str | None, int] = defaultdict(int)
    out: dict[tuple[str | None, int], list[Symbol]] = defaultdict(list)
    last: object = object()
    n = 0
    for s in syms:
        if not s.is_local:
            continue
        if s.file != last:
            last = s.file
            n = seen[s.file]
            seen[s.file] += 1
        out[(s.file, n)].append(s)
    return out


def _by_demangled_name(syms: list[Symbol], statics: list[Symbol]
                       ) -> dict[tuple[int, str], list[Symbol]]:
    """Group correlatable symbols by (type, name without numbering); numbered statics go to
    `statics` instead, to be matched through their users."""
    out: dict[tuple[int, str], list[Symbol]] = defaultdict(list)
    for s in syms:
        if not _correlatable(s):
            continue
        if s.type == STT_OBJECT and names.is_numbered_static(s.name):
            statics.append(s)
        else:
            out[(s.type, names.demangle(s.name))].append(s)
    return out


def _same_contents(a: Symbol, b: Symbol) -> bool:
    if a.section is None or b.section is None or a.size != b.size:
        return False
    if a.section.type == SHT_NOBITS or b.section.type == SHT_NOBITS:
        return a.section.type == b.section.type
    da = a.section.data[a.value:a.value + a.size]
    return len(da) == a.size and da == b.section.data[b.value:b.value + b.size]


def _secname(s: Symbol) -> str | None:
    return s.section.name if s.section is not None else None
