"""The object differ: which functions of PATCHED differ from ORIG, and what an update needs.

Steps, each a method of `_Differ`:

1. correlate the symbols of the two objects (`_correlate*`): globals by name, locals within
   their FILE block by name with gcc's numbering ignored, function-scope statics through the
   functions that use them, compiler bookkeeping statics never;
2. compare every correlated function and object by symbol, not by offset (`_compare*`): bytes,
   then relocations with each target resolved to the symbol it lands in, string literals by
   content; read-only data that changed makes its users change; a difference that is only a
   `__LINE__` immediate is no difference;
3. decide what the update must contain (`_include*`): changed and new functions, what they use
   that the running kernel does not have, the entries of special sections that describe them;
   refuse what cannot be applied to a running kernel, with the symbol, section and reason;
4. extract it into a new relocatable object (`_build_output`), where everything else the new
   code uses stays a reference to the original symbol: its name, binding and FILE block.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from git_ksplice.elf import names
from git_ksplice.elf.model import (
    BIND_NAMES,
    PC_RELATIVE,
    R_X86_64_64,
    R_X86_64_NONE,
    RELOC_SIZES,
    SHF_ALLOC,
    SHF_GROUP,
    SHF_STRINGS,
    SHF_WRITE,
    SHN_ABS,
    SHN_UNDEF,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
)
from git_ksplice.elf.sections import TABLES, Kind, classify, infer_entry_size
from git_ksplice.elf.x86 import LINE_CONSUMERS, FunctionCode, is_line_argument_load

SCHEMA_VERSION = 1
_PREFIXES = ("__pfx_", "__cfi_")


@dataclass
class Options:
    #: `vmlinux`, or the name of the module the object links into (jump labels and static
    #: calls keyed in a module cannot be carried by a livepatch module).
    target: str = "vmlinux"
    #: Entry sizes of special sections, overriding what is inferred from the object.
    entry_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class Finding:
    symbol: str | None
    section: str | None
    message: str

    def as_json(self, key: str = "message") -> dict[str, Any]:
        return {"symbol": self.symbol, "section": self.section, key: self.message}


@dataclass
class FunctionReport:
    name: str
    section: str
    size: int
    binding: str
    reason: str = ""
    #: The name of the function in the running kernel (ORIG), for changed functions.
    original: str | None = None

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "section": self.section, "size": self.size,
                             "binding": self.binding}
        if self.reason:
            d["reason"] = self.reason
        if self.original is not None:
            d["original"] = self.original
        return d


@dataclass
class DiffResult:
    orig: str
    patched: str
    changed: list[FunctionReport] = field(default_factory=list)
    new: list[FunctionReport] = field(default_factory=list)
    included: list[dict[str, str]] = field(default_factory=list)
    special_sections: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    refusals: list[Finding] = field(default_factory=list)
    ignored: list[Finding] = field(default_factory=list)
    #: The diff object, as sections and symbols ready for the writer (None when there is no
    #: change or the change is refused).
    output_sections: list[Section] | None = None
    output_symbols: list[Symbol] | None = None

    @property
    def result(self) -> str:
        if self.refusals:
            return "refused"
        if self.changed or self.new or self.output_sections:
            return "changed"
        return "unchanged"

    def as_json(self, output_path: str | None) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "orig": self.orig,
            "patched": self.patched,
            "result": self.result,
            "changed_functions": [f.as_json() for f in self.changed],
            "new_functions": [f.as_json() for f in self.new],
            "included": self.included,
            "special_sections": self.special_sections,
            "warnings": [w.as_json() for w in self.warnings],
            "refusals": [r.as_json("reason") for r in self.refusals],
            "ignored_changes": [i.as_json() for i in self.ignored],
            "output": output_path,
        }


def diff_objects(orig: ElfObject, patched: ElfObject, options: Options | None = None
                 ) -> DiffResult:
    return _Differ(orig, patched, options or Options()).run()


# ---------------------------------------------------------------------------------------
# Units: the things that are compared and copied. A unit is a FUNC or OBJECT symbol's byte
# range, or a whole section that carries no such symbol (switch tables, constant pools,
# alternative replacement code).


class Unit:
    __slots__ = ("fentry", "kind", "relocs", "section", "size", "start", "symbol")

    def __init__(self, section: Section, start: int, size: int, symbol: Symbol | None,
                 kind: Kind) -> None:
        self.section, self.start, self.size, self.symbol, self.kind = (
            section, start, size, symbol, kind)
        lo, hi = start, start + max(size, 1)
        self.relocs = [r for r in section.relocs if lo <= r.offset < hi] if (
            symbol is not None) else list(section.relocs)
        self.fentry: int | None = None

    @property
    def name(self) -> str:
        return self.symbol.name if self.symbol is not None else self.section.name

    @property
    def is_function(self) -> bool:
        return self.symbol is not None and self.symbol.type == STT_FUNC

    def data(self) -> bytes:
        if self.section.type == SHT_NOBITS:
            return b"\0" * self.size
        return self.section.data[self.start:self.start + self.size]

    def __repr__(self) -> str:
        return f"<Unit {self.name} in {self.section.name}>"


@dataclass(frozen=True)
class Target:
    """Where a relocation points: a unit and an offset inside it, or a symbol elsewhere."""

    symbol: Symbol | None  # the named symbol (None for anonymous places)
    section: Section | None
    offset: int  # offset within the symbol (or the section, when anonymous)
    #: The addend a relocation against `symbol` itself would carry.
    addend: int


_NEW, _SAME, _CHANGED = "new", "same", "changed"


class _Side:
    """Per-object indexes: units, section kinds, decoded code, resolved relocations."""

    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.kind: dict[int, Kind] = {id(s): classify(s) for s in obj.sections}
        self.units: list[Unit] = []
        self.unit_of_symbol: dict[int, Unit] = {}
        #: Units of sections without named symbols, by section id, sorted by offset.
        self.anon_units: dict[int, list[Unit]] = {}
        self._code: dict[int, FunctionCode] = {}
        self._targets: dict[int, Target] = {}
        cuts = self._aux_cuts(obj)
        for sec in obj.sections:
            kind = self.kind[id(sec)]
            if sec.type == SHT_GROUP:
                continue
            named = [s for s in sec.symbols if s.type in (STT_FUNC, STT_OBJECT)]
            for sym in named:
                u = Unit(sec, sym.value, sym.size, sym, kind)
                self.units.append(u)
                self.unit_of_symbol[id(sym)] = u
            if named or kind == Kind.IGNORED:
                continue
            # Code reached only through tables (alternative replacements, exception fixups)
            # is cut where entries point, so an update carries only the pieces it needs.
            bounds = sorted({0, *cuts.get(id(sec), ())} | {sec.size}) if kind == Kind.AUX_TEXT \
                else [0, sec.size]
            pieces = []
            for a, b in zip(bounds, bounds[1:], strict=False):
                u = Unit(sec, a, b - a, None, kind)
                pieces.append(u)
                self.units.append(u)
            if not pieces:
                pieces.append(Unit(sec, 0, 0, None, kind))
                self.units.append(pieces[0])
            self.anon_units[id(sec)] = pieces
        for u in self.units:
            if u.is_function:
                u.fentry = _fentry_offset(u)

    def _aux_cuts(self, obj: ElfObject) -> dict[int, set[int]]:
        cuts: dict[int, set[int]] = defaultdict(set)
        for sec in obj.sections:
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

    def unit_at(self, sec: Section, offset: int) -> Unit | None:
        sym = sec.symbol_at(offset)
        if sym is not None and id(sym) in self.unit_of_symbol:
            return self.unit_of_symbol[id(sym)]
        return self.anon_at(sec, offset)

    def anon_at(self, sec: Section, offset: int) -> Unit | None:
        pieces = self.anon_units.get(id(sec))
        if not pieces:
            return None
        for u in pieces:
            if u.start <= offset < u.start + u.size:
                return u
        return pieces[-1] if offset >= pieces[-1].start else pieces[0]

    def target(self, reloc: Reloc, owner: Unit | None) -> Target:
        t = self._targets.get(id(reloc))
        if t is None:
            t = self._resolve(reloc, owner)
            self._targets[id(reloc)] = t
        return t

    def pc_delta(self, reloc: Reloc, owner: Unit | None) -> int:
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

    def _resolve(self, reloc: Reloc, owner: Unit | None) -> Target:
        sym = reloc.symbol
        # Position inside the target. A PC-relative field is followed by the rest of its
        # instruction; the CPU adds the displacement to the instruction's end.
        pos = reloc.addend + self.pc_delta(reloc, owner)
        if sym.type != STT_SECTION:
            return Target(sym, sym.section, pos, reloc.addend)
        sec = sym.section
        assert sec is not None
        inner = sec.symbol_at(pos)
        if inner is None and pos == sec.size and sec.symbols:
            inner = max(sec.symbols, key=lambda s: s.value)  # one past the end of an object
        if inner is not None and inner.type in (STT_FUNC, STT_OBJECT):
            return Target(inner, sec, pos - inner.value, reloc.addend - inner.value)
        return Target(None, sec, pos, reloc.addend)


def _fentry_offset(unit: Unit) -> int | None:
    for r in unit.relocs:
        if r.symbol.name in ("__fentry__", "mcount", "__mcount") and r.offset - unit.start <= 16:
            return r.offset - 1 - unit.start
    return None


# ---------------------------------------------------------------------------------------


class _Differ:
    def __init__(self, orig: ElfObject, patched: ElfObject, options: Options) -> None:
        self.o = _Side(orig)
        self.p = _Side(patched)
        self.options = options
        self.res = DiffResult(orig.path, patched.path)
        # Correlation: patched symbol id -> orig symbol, and back.
        self.twin_p: dict[int, Symbol] = {}
        self.twin_o: dict[int, Symbol] = {}
        self.sec_twin_p: dict[int, Section] = {}
        self.status: dict[int, str] = {}  # patched unit id -> new/same/changed
        self.reason: dict[int, str] = {}
        self.included: dict[int, tuple[Unit, str]] = {}
        self.unit_by_id: dict[int, Unit] = {id(u): u for u in self.p.units}

    def run(self) -> DiffResult:
        self._correlate()
        self._compare()
        self._propagate()
        self._untraceable()
        self._check_refusals()
        if not self.res.refusals:
            self._include()
            self._special_sections()
            self._check_included()
        if not self.res.refusals and self.included:
            self._report()
            self._build_output()
        elif not self.res.refusals:
            self._report()
        return self.res

    # -- correlation ---------------------------------------------------------------------

    def _pair(self, o: Symbol, p: Symbol) -> None:
        self.twin_p[id(p)] = o
        self.twin_o[id(o)] = p

    def _correlate(self) -> None:
        osyms = [s for s in self.o.obj.symbols[1:] if s.type not in (STT_FILE, STT_SECTION)]
        psyms = [s for s in self.p.obj.symbols[1:] if s.type not in (STT_FILE, STT_SECTION)]

        def correlatable(s: Symbol) -> bool:
            if s.type == STT_NOTYPE and s.is_local:
                return False  # assembler labels (.LC0, local asm labels)
            sec = s.section.name if s.section else None
            return not names.is_special_static(s.name, sec)

        # Globals (defined or not) by exact name.
        oglob = {s.name: s for s in osyms if not s.is_local}
        for p in psyms:
            if not p.is_local and p.name in oglob:
                self._pair(oglob[p.name], p)

        # Locals per FILE block, FILE blocks paired by name in order of appearance.
        def blocks(syms: list[Symbol]) -> dict[tuple[str | None, int], list[Symbol]]:
            seen: dict[str | None, int] = defaultdict(int)
            out: dict[tuple[str | None, int], list[Symbol]] = defaultdict(list)
            last: str | None = None
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

        oblocks, pblocks = blocks(osyms), blocks(psyms)
        statics_o: list[Symbol] = []
        statics_p: list[Symbol] = []
        for key, plist in pblocks.items():
            olist = oblocks.get(key, [])
            obyname: dict[tuple[int, str], list[Symbol]] = defaultdict(list)
            pbyname: dict[tuple[int, str], list[Symbol]] = defaultdict(list)
            for s in olist:
                if correlatable(s):
                    if s.type == STT_OBJECT and names.is_numbered_static(s.name):
                        statics_o.append(s)
                    else:
                        obyname[(s.type, names.demangle(s.name))].append(s)
            for s in plist:
                if correlatable(s):
                    if s.type == STT_OBJECT and names.is_numbered_static(s.name):
                        statics_p.append(s)
                    else:
                        pbyname[(s.type, names.demangle(s.name))].append(s)
            for k, ps in pbyname.items():
                self._pair_group(obyname.get(k, []), ps)

        # A symbol that changed binding (a function made static, or exported) keeps its name.
        ounpaired = {s.name: s for s in osyms if id(s) not in self.twin_o and s.defined
                     and correlatable(s) and s.type in (STT_FUNC, STT_OBJECT)}
        for p in psyms:
            if id(p) not in self.twin_p and p.defined and p.name in ounpaired:
                o = ounpaired.pop(p.name)
                if o.type == p.type and o.is_local != p.is_local:
                    self._pair(o, p)
                    self.res.warnings.append(Finding(
                        p.name, _secname(p),
                        f"binding changed from {BIND_NAMES[o.bind]} to {BIND_NAMES[p.bind]}"))

        self._correlate_statics(statics_o, statics_p)

        # Sections: through the symbols they carry, else by name.
        for p in self.p.obj.sections:
            for sym in p.symbols:
                o = self.twin_p.get(id(sym))
                if o is not None and o.section is not None and o.value == sym.value \
                        and len(o.section.symbols) == 1 == len(p.symbols):
                    self.sec_twin_p[id(p)] = o.section
                    break
        oname: dict[str, list[Section]] = defaultdict(list)
        for s in self.o.obj.sections:
            oname[names.demangle(s.name)].append(s)
        for p in self.p.obj.sections:
            if id(p) not in self.sec_twin_p:
                cands = oname.get(names.demangle(p.name), [])
                if len(cands) == 1:
                    self.sec_twin_p[id(p)] = cands[0]

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

    def _users(self, side: _Side, sym: Symbol) -> set[int]:
        """ids of the functions of `side` whose code refers to `sym`."""
        out: set[int] = set()
        for u in side.units:
            if not u.is_function:
                continue
            for r in u.relocs:
                if r.symbol is sym or (r.symbol.type == STT_SECTION
                                       and r.symbol.section is sym.section
                                       and side.target(r, u).symbol is sym):
                    assert u.symbol is not None
                    out.add(id(u.symbol))
                    break
        return out

    def _correlate_statics(self, statics_o: list[Symbol], statics_p: list[Symbol]) -> None:
        """Function-scope statics (`count.3`) keep their state across an update only if they
        are recognised: match them through the functions that use them."""
        if not statics_p:
            return
        users_o = {id(s): self._users(self.o, s) for s in statics_o}
        scored = []
        for p in statics_p:
            up = {id(self.twin_p[u]) for u in self._users_ids(p) if u in self.twin_p}
            for o in statics_o:
                if o.type != p.type or names.demangle(o.name) != names.demangle(p.name):
                    continue
                score = len(users_o[id(o)] & up)
                if score:
                    scored.append((-score, o.index, p.index, o, p))
        scored.sort(key=lambda t: t[:3])
        for _, _, _, o, p in scored:
            if id(o) not in self.twin_o and id(p) not in self.twin_p:
                self._pair(o, p)
        # Left over: a static whose users all changed beyond recognition, or that moved into
        # another function (inlining changes). Unique by name on both sides: the same one.
        left_o: dict[str, list[Symbol]] = defaultdict(list)
        left_p: dict[str, list[Symbol]] = defaultdict(list)
        for o in statics_o:
            if id(o) not in self.twin_o:
                left_o[names.demangle(o.name)].append(o)
        for p in statics_p:
            if id(p) not in self.twin_p:
                left_p[names.demangle(p.name)].append(p)
        all_o = defaultdict(int)
        for o in statics_o:
            all_o[names.demangle(o.name)] += 1
        for key, ps in left_p.items():
            os_ = left_o.get(key, [])
            if len(ps) == 1 and len(os_) == 1 and all_o[key] == 1:
                self._pair(os_[0], ps[0])
            else:
                for p in ps:
                    self.res.warnings.append(Finding(
                        p.name, _secname(p),
                        "static variable not found in the original object: it is treated as "
                        "new and starts from its initial value"))

    def _users_ids(self, sym: Symbol) -> set[int]:
        return self._users(self.p, sym)

    # -- comparison ----------------------------------------------------------------------

    def _target_key(self, side: _Side, t: Target, patched: bool) -> tuple[Any, ...]:
        sec = t.section
        kind = side.kind_of(sec)
        sym = t.symbol
        if sym is not None and names.is_special_static(sym.name, sec.name if sec else None):
            return ("special", names.demangle(sym.name), t.addend)
        if sec is not None and (kind == Kind.STRINGS or sec.flags & SHF_STRINGS):
            off = t.offset if sym is None else sym.value + t.offset
            return ("string", sec.string_at(off), 0)
        if sym is not None and sym.type == STT_NOTYPE and sym.is_local:
            return ("label", sym.name, t.addend)  # assembler labels are never correlated
        if sym is not None:
            ident = sym
            if patched:
                o = self.twin_p.get(id(sym))
                if o is None:
                    return ("new", id(sym), t.addend)
                ident = o
            if not ident.defined:
                return ("extern", ident.name, t.addend)
            return ("sym", id(ident), t.addend)
        assert sec is not None
        if sec.name == ".altinstr_aux":
            return ("aux",)
        if sec.name.startswith(".rodata.cst") and sec.entsize:
            return ("const", sec.data[t.offset:t.offset + sec.entsize], 0)
        osec = self.sec_twin_p.get(id(sec)) if patched else sec
        if osec is None:
            return ("new-section", id(sec), t.addend)
        return ("section", id(osec), t.addend)

    def _reloc_keys(self, side: _Side, unit: Unit, patched: bool) -> list[tuple[Any, ...]]:
        return [(r.offset - unit.start, r.type,
                 *self._target_key(side, side.target(r, unit), patched))
                for r in unit.relocs]

    def _compare(self) -> None:
        for u in self.p.units:
            o = self._twin_unit(u)
            if o is None:
                self.status[id(u)] = _NEW
                continue
            if u.kind == Kind.STRINGS or u.section.name == ".altinstr_aux":
                # References compare string contents, and .altinstr_aux is only reached
                # through alternatives that are compared themselves.
                self.status[id(u)] = _SAME
                continue
            why = self._difference(o, u)
            self.status[id(u)] = _CHANGED if why else _SAME
            if why:
                self.reason[id(u)] = why

    def _twin_unit(self, u: Unit) -> Unit | None:
        if u.symbol is not None:
            o = self.twin_p.get(id(u.symbol))
            return self.o.unit_of_symbol.get(id(o)) if o is not None else None
        osec = self.sec_twin_p.get(id(u.section))
        if osec is None:
            return None
        pieces_o = self.o.anon_units.get(id(osec), [])
        pieces_p = self.p.anon_units.get(id(u.section), [])
        if len(pieces_o) != len(pieces_p):
            return None
        return pieces_o[pieces_p.index(u)]

    def _difference(self, o: Unit, p: Unit) -> str:
        if o.size != p.size:
            return f"size {o.size} -> {p.size}"
        ob, pb = o.data(), p.data()
        okeys = self._reloc_keys(self.o, o, False)
        pkeys = self._reloc_keys(self.p, p, True)
        if okeys != pkeys:
            return self._describe_reloc_difference(o, p, okeys, pkeys)
        if ob == pb:
            return ""
        if o.is_function and self._only_line_numbers(o, p):
            self.res.ignored.append(Finding(
                p.name, p.section.name,
                "only __LINE__ immediates passed to WARN/printk-style calls differ"))
            return ""
        first = next(i for i in range(len(ob)) if ob[i] != pb[i])
        if p.is_function:
            insn = self.p.code(p).containing(p.start + first)
            if insn is not None:
                return (f"code differs at +{insn.offset - p.start:#x}: "
                        f"{insn.mnemonic} {insn.operands}".rstrip())
        return f"bytes differ at +{first:#x}"

    def _describe_reloc_difference(self, o: Unit, p: Unit, okeys: list, pkeys: list) -> str:
        for i, (a, b) in enumerate(zip(okeys, pkeys, strict=False)):
            if a != b:
                r = p.relocs[i]
                t = self.p.target(r, p)
                what = t.symbol.name if t.symbol else (t.section.name if t.section else "?")
                return f"reference at +{r.offset - p.start:#x} differs (now {what})"
        return f"{len(okeys)} -> {len(pkeys)} references"

    def _only_line_numbers(self, o: Unit, p: Unit) -> bool:
        """True when every differing instruction loads an immediate into an argument register
        of a following call to a function that takes a line number."""
        oc, pc = self.o.code(o).insns, self.p.code(p).insns
        if len(oc) != len(pc):
            return False
        calls = {}
        for r in p.relocs:
            calls[r.offset] = self.p.target(r, p).symbol
        for i, (a, b) in enumerate(zip(oc, pc, strict=True)):
            if a.size != b.size or a.offset != b.offset:
                return False
            if (a.mnemonic, a.operands) == (b.mnemonic, b.operands):
                continue
            if not (is_line_argument_load(a) and is_line_argument_load(b)
                    and a.operands.split(",")[0] == b.operands.split(",")[0]):
                return False
            for nxt in pc[i + 1:]:
                if nxt.mnemonic == "call":
                    callee = calls.get(nxt.offset + 1)
                    if callee is None or callee.name not in LINE_CONSUMERS:
                        return False
                    break
                if nxt.mnemonic in ("ret", "jmp", "ud2"):
                    return False
            else:
                return False
        return True

    def _propagate(self) -> None:
        """A unit that refers to changed read-only data, or into the middle of a changed
        function, sees different contents through an unchanged reference: it changed too."""
        changed_any = True
        while changed_any:
            changed_any = False
            for u in self.p.units:
                if self.status[id(u)] != _SAME or u.kind in (Kind.INIT, Kind.IGNORED):
                    continue  # __init code already ran: what it would now see is moot
                for r in u.relocs:
                    t = self.p.target(r, u)
                    tu = self._unit_of_target(t)
                    if tu is None or tu is u or self.status.get(id(tu)) != _CHANGED:
                        continue
                    if tu.kind in (Kind.RODATA, Kind.STRINGS) or (
                        tu.is_function and t.offset != 0 and r.type not in (R_X86_64_NONE,)
                        and not _is_entry_reference(r, t)
                    ):
                        self.status[id(u)] = _CHANGED
                        self.reason[id(u)] = (f"uses {tu.name}, which changed"
                                              if not tu.is_function else
                                              f"refers into the changed function {tu.name}")
                        changed_any = True
                        break

    def _unit_of_target(self, t: Target) -> Unit | None:
        if t.symbol is not None:
            return self.p.unit_of_symbol.get(id(t.symbol))
        if t.section is not None:
            return self.p.anon_at(t.section, t.offset)
        return None

    # -- what cannot be traced -----------------------------------------------------------

    def _untraceable(self) -> None:
        """A changed function without a `__fentry__` call (notrace, a syscall body, a `.cold`
        part) cannot be redirected by ftrace. If it is static and only called, its callers
        are replaced instead, each with a copy of it; otherwise the change is refused."""
        self.carried: dict[int, str] = {}  # patched unit id -> why it is copied
        work = [u for u in self.p.units if u.is_function and self.status[id(u)] == _CHANGED
                and u.kind == Kind.TEXT]
        seen: set[int] = set()
        while work:
            u = work.pop()
            if id(u) in seen:
                continue
            seen.add(id(u))
            ou = self._twin_unit(u)
            if ou is not None and ou.fentry is not None:
                continue
            assert u.symbol is not None
            if not u.symbol.is_local:
                self.res.refusals.append(Finding(
                    u.name, u.section.name,
                    "changed function has no __fentry__ call (notrace or not instrumented), "
                    "so ftrace cannot redirect it, and it is global: callers in other objects "
                    "cannot be replaced instead"))
                continue
            callers, taken = self._referrers(u)
            if taken:
                self.res.refusals.append(Finding(
                    u.name, u.section.name,
                    f"changed function has no __fentry__ call and its address is stored in "
                    f"{taken}: it cannot be redirected"))
                continue
            if not callers:
                self.res.refusals.append(Finding(
                    u.name, u.section.name,
                    "changed function has no __fentry__ call and no caller in this object"))
                continue
            self.carried[id(u)] = "copied with its callers (" + ", ".join(
                sorted(c.name for c in callers)) + "): it has no __fentry__ call"
            for c in callers:
                if self.status[id(c)] == _SAME:
                    self.status[id(c)] = _CHANGED
                    self.reason[id(c)] = f"calls {u.name}, which changed and cannot be traced"
                work.append(c)

    def _referrers(self, unit: Unit) -> tuple[list[Unit], str | None]:
        callers: list[Unit] = []
        for u in self.p.units:
            if u is unit:
                continue
            for r in u.relocs:
                t = self.p.target(r, u)
                if t.symbol is unit.symbol:
                    if u.is_function and u.kind in (Kind.TEXT, Kind.INIT):
                        callers.append(u)
                        break
                    if u.kind in (Kind.DATA, Kind.RODATA, Kind.METADATA, Kind.EXPORT):
                        return [], u.name
        return callers, None

    # -- refusals ------------------------------------------------------------------------

    def _check_refusals(self) -> None:
        refuse = self.res.refusals
        for u in self.p.units:
            st = self.status[id(u)]
            kind = u.kind
            if st == _SAME:
                continue
            special = names.is_special_static(u.name, u.section.name)
            if kind == Kind.INIT and st == _CHANGED:
                what = "function" if u.is_function else "data"
                refuse.append(Finding(u.name, u.section.name,
                                      f"changed __init/__exit {what}: it ran at boot (or is "
                                      "discarded), so a live update cannot apply it; "
                                      f"{self.reason.get(id(u), '')}".rstrip("; ")))
            elif kind == Kind.DATA and st == _CHANGED and not special:
                o = self._twin_unit(u)
                if o is not None and o.size != u.size:
                    refuse.append(Finding(u.name, u.section.name,
                                          f"existing data object resized ({o.size} -> {u.size} "
                                          "bytes): the running kernel's object cannot grow"))
                else:
                    refuse.append(Finding(u.name, u.section.name,
                                          "changed initialiser of existing data: the running "
                                          "kernel's copy holds live state and is not "
                                          "re-initialised; change it in code (a callback or "
                                          "a shadow variable) instead"))
            elif kind == Kind.PERCPU and st == _CHANGED:
                refuse.append(Finding(u.name, u.section.name, "changed per-CPU data"))
            elif kind == Kind.EXPORT and st == _NEW and u.section.name != "__ksymtab_strings":
                refuse.append(Finding(u.name, u.section.name,
                                      "adds an exported symbol (EXPORT_SYMBOL): a livepatch "
                                      "module cannot add exports to the kernel it patches"))
            elif kind == Kind.EXPORT and st == _CHANGED and u.section.name != "__ksymtab_strings":
                refuse.append(Finding(u.name, u.section.name, "changes the exported symbols"))
            elif kind == Kind.METADATA:
                refuse.append(Finding(u.name, u.section.name,
                                      f"{'adds' if st == _NEW else 'changes'} a registration "
                                      f"table entry ({u.section.name}) that is only read at "
                                      "boot or module load"))
            elif kind == Kind.AUX_TEXT and u.section.name == ".static_call.text":
                refuse.append(Finding(u.name, u.section.name, "changes a static call trampoline"))
            elif kind == Kind.UNKNOWN:
                refuse.append(Finding(u.name, u.section.name,
                                      f"section {u.section.name} differs and git-ksplice does "
                                      "not know what it holds; refusing rather than guessing"))
            elif kind == Kind.DATA and st == _NEW and not special and u.symbol is not None \
                    and u.section.flags & SHF_WRITE:
                self.res.warnings.append(Finding(
                    u.name, u.section.name,
                    "new writable variable: it starts from its initial value when the update "
                    "loads, and its state is lost if a later update replaces this one"))
        # Group (COMDAT) sections are not used by the x86 kernel; a changed one is refused.
        for sec in self.p.obj.sections:
            if sec.type == SHT_GROUP:
                osec = self.sec_twin_p.get(id(sec))
                if osec is None or osec.data != sec.data:
                    members = [m for m in sec.group_members
                               if any(self.status.get(id(u)) != _SAME for u in self.p.units
                                      if u.section is m)]
                    if members:
                        refuse.append(Finding(None, sec.name,
                                              "changed section group (COMDAT) is not supported"))

    # -- inclusion -----------------------------------------------------------------------

    def _include_unit(self, u: Unit, why: str) -> bool:
        if id(u) in self.included:
            return False
        self.included[id(u)] = (u, why)
        if u.is_function and u.start >= 16:
            # The padding gcc puts before a function for call-depth tracking and CFI/IBT
            # (`__pfx_foo`, `__cfi_foo`) belongs with it.
            for prefix in _PREFIXES:
                pfx = next((s for s in u.section.symbols if s.name == prefix + u.name), None)
                if pfx is not None and id(pfx) in self.p.unit_of_symbol:
                    pu = self.p.unit_of_symbol[id(pfx)]
                    self.included.setdefault(id(pu), (pu, f"prefix of {u.name}"))
        return True

    def _include(self) -> None:
        work: list[Unit] = []
        for u in self.p.units:
            st = self.status[id(u)]
            if not u.is_function or u.kind != Kind.TEXT or u.name.startswith(_PREFIXES):
                continue
            if st == _CHANGED:
                why = self.carried.get(id(u), "changed")
                self._include_unit(u, why)
                work.append(u)
            elif st == _NEW and (not u.symbol.is_local or self._has_users(u)):  # type: ignore
                self._include_unit(u, "new")
                work.append(u)
        for u in self.p.units:
            if self.status[id(u)] == _NEW and u.symbol is not None and not u.symbol.is_local \
                    and u.kind in (Kind.DATA, Kind.RODATA):
                if self._include_unit(u, "new"):
                    work.append(u)
        self._close(work)

    def _has_users(self, unit: Unit) -> bool:
        return True

    def _close(self, work: list[Unit]) -> None:
        """Include what included units use that the running kernel lacks."""
        while work:
            u = work.pop()
            for r in u.relocs:
                t = self.p.target(r, u)
                tu = self._unit_of_target(t)
                if tu is None or tu is u:
                    if t.symbol is not None and t.symbol.defined and tu is None \
                            and self.p.kind_of(t.section) not in (Kind.IGNORED,):
                        pass
                    continue
                why = self._why_include(u, tu, t)
                if why and self._include_unit(tu, why):
                    work.append(tu)

    def _why_include(self, user: Unit, tu: Unit, t: Target) -> str | None:
        st = self.status[id(tu)]
        kind = tu.kind
        sym = tu.symbol
        if names.is_special_static(tu.name, tu.section.name):
            return f"fresh copy for {user.name}"
        if kind == Kind.STRINGS:
            return f"string literals used by {user.name}"
        if kind == Kind.INIT:
            return None  # refused in _check_included
        if st == _NEW:
            return f"new, used by {user.name}"
        if st == _CHANGED and kind in (Kind.RODATA, Kind.AUX_TEXT):
            return f"changed read-only data used by {user.name}"
        if st == _CHANGED and tu.is_function and id(tu) in self.carried:
            return self.carried[id(tu)]
        if sym is None and kind in (Kind.RODATA, Kind.AUX_TEXT, Kind.DATA):
            # An unnamed part of a section (switch tables, constant pools, replacement code)
            # cannot be found in the running kernel by name: carry a copy.
            if kind == Kind.DATA and tu.section.flags & SHF_WRITE and tu.section.size:
                return None
            return f"unnamed {tu.section.name} contents used by {user.name}"
        return None

    def _special_sections(self) -> None:
        self.kept_entries: dict[int, list[tuple[int, int]]] = {}  # section id -> (start, size)
        tables = [s for s in self.p.obj.sections if self.p.kind[id(s)] == Kind.TABLE]
        ip = self.p.obj.section(".orc_unwind_ip")
        ip_kept: list[int] | None = None
        # Tables first, ORC data last (it follows .orc_unwind_ip entry for entry).
        tables.sort(key=lambda s: TABLES[s.name].lockstep_with is not None)
        for sec in tables:
            spec = TABLES[sec.name]
            lock_n = ip.size // 4 if (spec.lockstep_with and ip is not None) else None
            try:
                es = infer_entry_size(sec, spec, override=self.options.entry_sizes.get(sec.name),
                                      lockstep_entries=lock_n)
            except ValueError as e:
                self.res.refusals.append(Finding(None, sec.name, str(e)))
                continue
            n = -(-sec.size // es.size) if es.size else 0
            kept: list[int] = []
            if spec.lockstep_with:
                kept = list(ip_kept or [])
            else:
                by_entry: dict[int, list[Reloc]] = defaultdict(list)
                for r in sec.relocs:
                    by_entry[r.offset // es.size].append(r)
                for i in range(n):
                    relocs = by_entry.get(i, [])
                    if any(self._targets_included_function(r) for r in relocs):
                        if spec.keyed and not self._key_allowed(sec, relocs):
                            continue
                        kept.append(i)
            if sec.name == ".orc_unwind_ip":
                ip_kept = kept
            spans = [(i * es.size, min(es.size, sec.size - i * es.size)) for i in kept]
            self.kept_entries[id(sec)] = spans
            self.res.special_sections.append({
                "name": sec.name, "entry_size": es.size, "entry_size_source": es.source,
                "entries": n, "kept": len(kept)})
            # What kept entries point at must be carried too (bug table file names,
            # alternative replacement code, exception fixup code, dynamic debug keys).
            work = []
            for start, size in spans:
                for r in sec.relocs:
                    if start <= r.offset < start + size:
                        t = self.p.target(r, None)
                        tu = self._unit_of_target(t)
                        if tu is None:
                            continue
                        why = self._why_include_from_table(sec, tu)
                        if why and self._include_unit(tu, why):
                            work.append(tu)
            self._close(work)

    def _why_include_from_table(self, sec: Section, tu: Unit) -> str | None:
        if id(tu) in self.included:
            return None
        sym = tu.symbol
        if sym is not None and names.is_special_static(sym.name, tu.section.name):
            return f"fresh copy for a {sec.name} entry"
        if tu.kind == Kind.STRINGS:
            return f"strings used by {sec.name} entries"
        if tu.kind == Kind.AUX_TEXT and tu.symbol is None:
            return f"code used by {sec.name} entries"
        if self.status[id(tu)] == _NEW and not tu.is_function:
            return f"new, used by {sec.name} entries"
        return None

    def _targets_included_function(self, r: Reloc) -> bool:
        t = self.p.target(r, None)
        tu = self._unit_of_target(t)
        return tu is not None and tu.is_function and id(tu) in self.included

    def _key_allowed(self, sec: Section, relocs: list[Reloc]) -> bool:
        key_reloc = max(relocs, key=lambda r: r.offset)
        t = self.p.target(key_reloc, None)
        key = t.symbol
        if key is None or not key.defined or self.options.target == "vmlinux":
            return True
        if names.is_special_static(key.name, key.section.name if key.section else None):
            return True  # a dynamic debug key copied into the update module itself
        what = "jump label" if sec.name == "__jump_table" else "static call"
        owner = next((u.name for u in self.included.values() for u in [u[0]]
                      if u.section is not None and any(
                          self._targets_included_function(r) and
                          self.p.target(r, None).symbol is u.symbol for r in relocs)), None)
        if key.name.startswith(("__tracepoint_", "__SCK__tp_func_")):
            self.res.warnings.append(Finding(
                owner, sec.name,
                f"tracepoint {key.name} of module {self.options.target} is disabled in the "
                "patched code (its static key lives in the module)"))
            return False
        self.res.refusals.append(Finding(
            owner, sec.name,
            f"{what} keyed on {key.name}, which is defined in module "
            f"{self.options.target}: a livepatch module can only use static keys of vmlinux "
            "(use static_key_enabled() in the patched code)"))
        return False

    def _check_included(self) -> None:
        for u, _ in list(self.included.values()):
            for r in u.relocs:
                t = self.p.target(r, u)
                if self.p.kind_of(t.section) == Kind.INIT and t.symbol is not None \
                        and u.kind != Kind.INIT and u.symbol is not None:
                    self.res.refusals.append(Finding(
                        u.name, u.section.name,
                        f"refers to {t.symbol.name} in {t.section.name} (__init), which is "
                        "freed after boot"))
                if t.symbol is None and t.section is not None and self.p.kind_of(
                        t.section) not in (Kind.STRINGS,):
                    tu = self._unit_of_target(t)
                    if (tu is None or id(tu) not in self.included) and \
                            t.section.name != ".altinstr_aux":
                        self.res.refusals.append(Finding(
                            u.name, u.section.name,
                            f"refers to an unnamed location {t.section.name}+{t.offset:#x} "
                            "that cannot be found in the running kernel"))

    # -- report --------------------------------------------------------------------------

    def _report(self) -> None:
        for u, why in self.included.values():
            sym = u.symbol
            kind = "function" if u.is_function else ("object" if sym is not None else "section")
            self.res.included.append({"name": u.name, "kind": kind, "section": u.section.name,
                                      "why": why})
            if not u.is_function or sym is None or why.startswith("prefix of"):
                continue
            rep = FunctionReport(u.name, u.section.name, u.size, BIND_NAMES.get(sym.bind, "?"))
            st = self.status[id(u)]
            if st == _NEW:
                self.res.new.append(rep)
            elif st == _CHANGED and id(u) not in self.carried and u.kind == Kind.TEXT \
                    and not why.startswith(("fresh", "copied")):
                o = self.twin_p.get(id(sym))
                rep.reason = self.reason.get(id(u), "")
                rep.original = o.name if o is not None else None
                self.res.changed.append(rep)
        self.res.included.sort(key=lambda d: (d["kind"] != "function", d["name"]))
        self.res.changed.sort(key=lambda f: f.name)
        self.res.new.sort(key=lambda f: f.name)

    # -- output --------------------------------------------------------------------------

    def _build_output(self) -> None:
        out_secs: dict[int, Section] = {}
        # Input section -> list of (in_start, size, out_offset).
        pieces: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        by_section: dict[int, list[Unit]] = defaultdict(list)
        order: list[Section] = []
        for u, _ in self.included.values():
            if id(u.section) not in by_section:
                order.append(u.section)
            by_section[id(u.section)].append(u)
        tables = [s for s in self.p.obj.sections if id(s) in getattr(self, "kept_entries", {})
                  and self.kept_entries[id(s)]]
        pos_in = {id(s): i for i, s in enumerate(self.p.obj.sections)}
        order.sort(key=lambda s: pos_in[id(s)])

        def new_section(src: Section, data: bytes, size: int) -> Section:
            flags = src.flags & ~SHF_GROUP
            sec = Section(src.name, src.type, flags, data, size, src.addralign, src.entsize)
            sec.rela_flags = src.rela_flags
            return sec

        for src in order + tables:
            if id(src) in out_secs:
                continue
            if id(src) in by_section:
                units = sorted(by_section[id(src)], key=lambda u: u.start)
                spans = [(u.start, u.size) for u in units]
                whole = any(u.symbol is None for u in units)
                if whole:
                    spans = [(0, src.size)]
            else:
                spans = self.kept_entries[id(src)]
            data = bytearray()
            align = max(src.addralign, 1)
            for start, size in _merge_spans(spans):
                if id(src) not in self.kept_entries:
                    data += b"\0" * (-len(data) % align)
                pieces[id(src)].append((start, size, len(data)))
                if src.type == SHT_NOBITS:
                    data += b"\0" * size
                else:
                    data += src.data[start:start + size]
            size = len(data)
            sec = new_section(src, b"" if src.type == SHT_NOBITS else bytes(data), size)
            out_secs[id(src)] = sec

        def map_offset(src: Section, off: int) -> int | None:
            for start, size, out in pieces.get(id(src), ()):
                if start <= off < start + size or (off == start + size and size == 0):
                    return out + off - start
            for start, size, out in pieces.get(id(src), ()):
                if off == start + size:
                    return out + off - start
            return None

        # Symbols.
        files: dict[str | None, list[Symbol]] = defaultdict(list)
        globals_: list[Symbol] = []
        sec_syms: list[Symbol] = []
        defined: dict[int, Symbol] = {}
        for src_id, sec in out_secs.items():
            ss = Symbol(sec.name, 0, 0, STB_LOCAL, STT_SECTION, section=sec)
            sec.section_symbol = ss
            sec_syms.append(ss)
        file_name = next((s.name for s in self.p.obj.symbols if s.type == STT_FILE), None)
        for u, _ in self.included.values():
            sym = u.symbol
            if sym is None:
                continue
            sec = out_secs[id(u.section)]
            value = map_offset(u.section, u.start)
            assert value is not None
            o = self.twin_p.get(id(sym))
            name = o.name if o is not None else sym.name
            bind = sym.bind
            if o is not None or names.is_special_static(sym.name, u.section.name):
                bind = STB_LOCAL  # a replacement must not clash with the running original
            ns = Symbol(name, value, sym.size, bind, sym.type, sym.other, section=sec,
                        file=file_name if bind == STB_LOCAL else None)
            defined[id(sym)] = ns
            (files[file_name] if bind == STB_LOCAL else globals_).append(ns)

        externs: dict[tuple[Any, ...], Symbol] = {}

        def extern(sym: Symbol) -> Symbol:
            o = self.twin_p.get(id(sym)) if sym.defined or sym.is_local else None
            src = o if o is not None else sym
            key = (src.name, src.bind, src.file if src.is_local else None)
            ext = externs.get(key)
            if ext is None:
                typ = src.type if src.type in (STT_FUNC, STT_OBJECT, STT_NOTYPE) else STT_NOTYPE
                ext = Symbol(src.name, 0, 0, src.bind, typ, src.other, section=None,
                             special_shndx=SHN_UNDEF,
                             file=src.file if src.is_local else None)
                externs[key] = ext
                if src.is_local:
                    files[src.file].append(ext)
                else:
                    globals_.append(ext)
            return ext

        for src_id, sec in out_secs.items():
            src = next(s for s in self.p.obj.sections if id(s) == src_id)
            owner_units = by_section.get(src_id, [])
            for r in src.relocs:
                new_off = map_offset(src, r.offset)
                if new_off is None or not any(
                        start <= r.offset < start + size for start, size, _ in pieces[src_id]):
                    continue
                owner = next((u for u in owner_units if u.symbol is not None
                              and u.start <= r.offset < u.start + u.size), None)
                t = self.p.target(r, owner)
                target_sym, addend = self._rewrite_target(r, t, defined, out_secs, map_offset,
                                                          extern)
                sec.relocs.append(Reloc(new_off, r.type, target_sym, addend))

        # ftrace call sites, one per copied function that has an __fentry__ call.
        mcount_src = self.p.obj.section("__mcount_loc")
        if mcount_src is not None:
            entries = []
            for u, _ in self.included.values():
                if u.is_function and u.fentry is not None and id(u.symbol) in defined:
                    entries.append(Reloc(len(entries) * 8, R_X86_64_64, defined[id(u.symbol)],
                                         u.fentry))
            if entries:
                ms = Section("__mcount_loc", SHT_PROGBITS, SHF_ALLOC, b"\0" * 8 * len(entries),
                             8 * len(entries), 8, 8)
                ms.relocs = entries
                ms.rela_flags = mcount_src.rela_flags
                out_secs[id(ms)] = ms
                self.res.special_sections.append({
                    "name": "__mcount_loc", "entry_size": 8, "entry_size_source": "regenerated",
                    "entries": mcount_src.size // 8, "kept": len(entries)})

        modinfo = self._import_namespaces()
        if modinfo:
            out_secs[id(modinfo)] = modinfo

        symbols: list[Symbol] = []
        if file_name is not None or files:
            for fname, syms in files.items():
                if fname is not None:
                    symbols.append(Symbol(fname, 0, 0, STB_LOCAL, STT_FILE,
                                          special_shndx=SHN_ABS))
                symbols.extend(syms)
        symbols[0:0] = sec_syms
        symbols.extend(sorted(globals_, key=lambda s: (s.section is None, s.name)))
        used = {id(r.symbol) for s in out_secs.values() for r in s.relocs}
        symbols = [s for s in symbols if s.section is not None or s.special_shndx == SHN_ABS
                   or id(s) in used]
        self.res.output_sections = list(out_secs.values())
        self.res.output_symbols = symbols

    def _rewrite_target(self, r: Reloc, t: Target, defined: dict[int, Symbol],
                        out_secs: dict[int, Section], map_offset, extern) -> tuple[Symbol, int]:
        sym = t.symbol
        if sym is not None and id(sym) in defined:
            return defined[id(sym)], t.addend
        if t.section is not None and id(t.section) in out_secs:
            mapped = map_offset(t.section, t.offset)
            if sym is None and mapped is not None:
                delta = mapped - t.offset
                return out_secs[id(t.section)].section_symbol, r.addend + delta  # type: ignore
        if sym is None:
            # Unnamed and not carried: only reachable for relocations the caller refused or
            # for tables whose other fields point at code we do not carry.
            assert t.section is not None
            sec_sym = t.section.section_symbol
            assert sec_sym is not None
            return extern(Symbol(t.section.name, 0, 0, STB_LOCAL, STT_NOTYPE,
                                 file=None)), r.addend
        return extern(sym), t.addend

    def _import_namespaces(self) -> Section | None:
        mi = self.p.obj.section(".modinfo")
        if mi is None:
            return None
        # Built-in code records `<module>.import_ns=NS`; the update is a module of its own.
        strings = [b"import_ns=" + s.split(b"import_ns=", 1)[1]
                   for s in mi.data.split(b"\0") if s.split(b".")[-1].startswith(b"import_ns=")
                   or s.startswith(b"import_ns=")]
        if not strings:
            return None
        data = b"".join(s + b"\0" for s in strings)
        sec = Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, data, len(data), 1, 0)
        self.res.included.append({"name": ".modinfo", "kind": "section", "section": ".modinfo",
                                  "why": f"{len(strings)} import_ns= namespace imports"})
        return sec


def _is_entry_reference(r: Reloc, t: Target) -> bool:
    # A call or jump to a function's start resolves to the function itself (its new copy, or
    # the original redirected by ftrace); only references into the middle see stale code.
    return t.offset == 0


def _same_contents(a: Symbol, b: Symbol) -> bool:
    if a.section is None or b.section is None or a.size != b.size:
        return False
    if a.section.type == SHT_NOBITS or b.section.type == SHT_NOBITS:
        return a.section.type == b.section.type
    da = a.section.data[a.value:a.value + a.size]
    return da == b.section.data[b.value:b.value + b.size] and len(da) == a.size


def _merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, size in sorted(spans):
        if out and start < out[-1][0] + out[-1][1]:
            s0, z0 = out[-1]
            out[-1] = (s0, max(s0 + z0, start + size) - s0)
        else:
            out.append((start, size))
    return out


def _secname(s: Symbol) -> str | None:
    return s.section.name if s.section is not None else None


_ = (STB_GLOBAL, STB_WEAK, re)
