"""Relocation-aware comparison: which units of PATCHED are new, the same, or changed.

Two units are the same when their bytes are equal and their relocations, in order, have the
same offsets and types and land on the same things: the correlated twin symbol at the same
offset, the same string contents, the same constant, the same undefined symbol. Offsets into
sections never matter, so code that moved inside an object is still the same code.

A function also differs when the special-section entries that describe it differ (its
alternatives' replacement code, its exception fixups, its jump labels' keys and targets): that
part of a function lives outside its bytes. The line number in a `__bug_table` entry is not
compared, nor is a `__LINE__` immediate passed to a WARN/printk/might_sleep-style call:
moving code down a file is not a change.

Then changes spread: a unit that uses changed read-only data, or refers into the middle of a
changed function (a switch table, a `.cold` part jumping back into its parent), sees new
contents through an unchanged reference, so it changed too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from git_ksplice.elf import names
from git_ksplice.elf.correlate import Correlation
from git_ksplice.elf.model import RELOC_SIZES, SHF_STRINGS, STT_NOTYPE, Reloc
from git_ksplice.elf.sections import TABLES, Kind, infer_entry_size
from git_ksplice.elf.units import ObjectIndex, Target, Unit
from git_ksplice.elf.x86 import LINE_CONSUMERS, is_line_argument_load

NEW, SAME, CHANGED = "new", "same", "changed"

#: Tables whose entries say more about a function than its code does.
_DESCRIPTIVE_TABLES = ("__bug_table", "__ex_table", "__jump_table", ".altinstructions",
                       ".parainstructions", ".static_call_sites", "_error_injection_whitelist")


class Comparison:
    """Compares every PATCHED unit with its ORIG twin, on creation.

    The verdicts are recorded on the PATCHED units: `Unit.status` (NEW, SAME, CHANGED),
    `Unit.reason` for what changed, `Unit.init_users` for changed read-only data that __init
    code uses. Both sides' functions get their special-section entries (`Unit.entries`).
    """

    def __init__(self, corr: Correlation, entry_sizes: dict[str, int]) -> None:
        self.corr = corr
        self.o, self.p = corr.o, corr.p
        self.entry_sizes = entry_sizes
        #: (unit label, section, message) differences that were recognised as no change.
        self.ignored: list[tuple[str, str, str]] = []
        self._entries_by_function(self.o)
        self._entries_by_function(self.p)
        for u in self.p.units:
            self._compare(u)
        self._propagate()

    # -- pairing -------------------------------------------------------------------------

    def twin(self, u: Unit) -> Unit | None:
        """The ORIG unit of a PATCHED unit."""
        if u.symbol is not None:
            o = u.symbol.twin
            return o.unit if o is not None else None
        osec = u.section.twin
        if osec is None:
            return None
        pieces_o = osec.anon_units or []
        pieces_p = u.section.anon_units or []
        if len(pieces_o) != len(pieces_p):
            return None
        return pieces_o[pieces_p.index(u)]

    # -- keys ----------------------------------------------------------------------------

    def target_key(self, index: ObjectIndex, t: Target, patched: bool,
                   this: Unit | None = None) -> tuple[Any, ...]:
        """What a relocation target is, comparably across the two objects."""
        sec, sym = t.section, t.symbol
        if this is not None and sym is not None and sym is this.symbol:
            return ("self", t.offset)
        if sym is not None and names.is_special_static(sym.name, sec.name if sec else None):
            if names.is_constant_static(sym.name) and sym.unit is not None:
                return ("constant", names.demangle(sym.name), t.addend,
                        *self._constant_key(index, sym.unit, patched))
            return ("bookkeeping", names.demangle(sym.name), t.addend)
        if sec is not None and (sec.kind == Kind.STRINGS or sec.flags & SHF_STRINGS):
            off = t.offset if sym is None else sym.value + t.offset
            return ("string", sec.string_at(off))
        if sym is not None and sym.type == STT_NOTYPE and sym.is_local:
            return ("label", sym.name, t.addend)  # assembler labels are never correlated
        if sym is not None:
            ident = sym
            if patched:
                o = sym.twin
                if o is None:
                    return ("new", sym.name, t.addend)
                ident = o
            if not ident.defined:
                return ("undefined", ident.name, t.addend)
            return ("symbol", ident, t.addend)  # the ORIG symbol itself: equal by identity
        assert sec is not None
        if sec.name == ".altinstr_aux":
            return ("altinstr_aux",)
        if sec.name.startswith(".rodata.cst") and sec.entsize:
            return ("constant", sec.data[t.offset:t.offset + sec.entsize])
        if sec.kind == Kind.AUX_TEXT:
            piece = index.anon_at(sec, t.offset)
            if piece is not None:
                return ("code", t.offset - piece.start, *self._piece_key(index, piece, patched))
        osec = sec.twin if patched else sec
        if osec is None:
            return ("new section", sec.name, t.addend)
        return ("section", osec, t.addend)

    def _piece_key(self, index: ObjectIndex, piece: Unit, patched: bool) -> tuple[Any, ...]:
        keys = []
        for r in piece.relocs:
            t = index.target(r, piece)
            if t.symbol is not None and t.section is not None and t.section.kind == Kind.TEXT:
                keys.append((r.offset - piece.start, r.type, "into", t.offset))
            elif t.section is not None and t.section.kind == Kind.AUX_TEXT:
                keys.append((r.offset - piece.start, r.type, "aux", t.offset))
            else:
                keys.append((r.offset - piece.start, r.type,
                             *self.target_key(index, t, patched)))
        return (piece.data(), tuple(keys))

    def _constant_key(self, index: ObjectIndex, unit: Unit, patched: bool
                      ) -> tuple[Any, ...]:
        """A per-use-site constant (a CSWTCH table) by its contents: its bytes and what its
        relocations point to, constants among them by name only (no recursion)."""
        keys = []
        for r in unit.relocs:
            t = index.target(r, unit)
            inner = t.symbol
            if inner is not None and names.is_special_static(
                    inner.name, t.section.name if t.section else None):
                keys.append((r.offset - unit.start, r.type, names.demangle(inner.name)))
            else:
                keys.append((r.offset - unit.start, r.type,
                             *self.target_key(index, t, patched, unit)))
        return (unit.data(), tuple(keys))

    def reloc_keys(self, index: ObjectIndex, unit: Unit, patched: bool) -> list[tuple[Any, ...]]:
        return [(r.offset - unit.start, r.type,
                 *self.target_key(index, index.target(r, unit), patched, unit))
                for r in unit.relocs]

    # -- special-section entries ---------------------------------------------------------

    def _entries_by_function(self, index: ObjectIndex) -> None:
        """Entries of the descriptive tables, grouped by the function their first field
        points into: each such function's `Unit.entries`, [(table, entry start, entry size,
        relocations)] in table order."""
        for sec in index.obj.sections:
            if sec.name not in _DESCRIPTIVE_TABLES or not sec.relocs:
                continue
            try:
                size = infer_entry_size(sec, TABLES[sec.name],
                                        override=self.entry_sizes.get(sec.name)).size
            except ValueError:
                continue  # reported when the table is reduced
            entries: dict[int, list[Reloc]] = {}
            for r in sec.relocs:
                entries.setdefault(r.offset // size * size, []).append(r)
            for start, relocs in entries.items():
                site = index.unit_of(index.target(relocs[0], None))
                if site is not None and site.is_function:
                    if site.entries is None:
                        site.entries = []
                    site.entries.append((sec, start, size, relocs))

    def entry_keys(self, index: ObjectIndex, unit: Unit, patched: bool
                   ) -> Counter[tuple[Any, ...]]:
        """What the special-section entries of `unit` say, comparably across the objects.

        The order of a function's entries is no part of what they say, so the keys are
        counted, not listed: two functions' entries are the same when the counts are."""
        keys: Counter[tuple[Any, ...]] = Counter()
        for sec, start, size, relocs in unit.entries or []:
            covered: set[int] = set()
            for r in relocs:
                first = r.offset - start
                covered.update(range(first, first + RELOC_SIZES.get(r.type, 4)))
            if sec.name == "__bug_table" and covered:
                line = max(covered) + 1  # the line number follows the last pointer field
                covered.update((line, line + 1))
            data = sec.data[start:start + size]
            fixed = bytes(b for i, b in enumerate(data) if i not in covered)
            targets = tuple(self.target_key(index, index.target(r, None), patched, unit)
                            for r in relocs)
            keys[(sec.name, fixed, targets)] += 1
        return keys

    # -- comparison ----------------------------------------------------------------------

    def _compare(self, u: Unit) -> None:
        o = self.twin(u)
        if o is None:
            u.status = NEW
            return
        if u.kind == Kind.STRINGS or u.section.name == ".altinstr_aux":
            # References compare string contents; .altinstr_aux is only reached through
            # alternatives, which are compared with the function they belong to.
            u.status = SAME
            return
        why = self._difference(o, u)
        u.status = CHANGED if why else SAME
        if why:
            u.reason = why

    def _difference(self, o: Unit, p: Unit) -> str:
        if o.size != p.size:
            return f"size {o.size} -> {p.size} bytes"
        okeys = self.reloc_keys(self.o, o, False)
        pkeys = self.reloc_keys(self.p, p, True)
        if okeys != pkeys:
            return self._describe_reloc_difference(p, okeys, pkeys)
        if p.is_function:
            oe = self.entry_keys(self.o, o, False)
            pe = self.entry_keys(self.p, p, True)
            if oe != pe:
                tables = sorted({k[0] for k in oe if k not in pe}
                                | {k[0] for k in pe if k not in oe})
                return "its " + ", ".join(tables) + " entries differ"
        ob, pb = o.data(), p.data()
        if ob == pb:
            return ""
        if o.is_function and self._only_line_numbers(o, p):
            self.ignored.append((p.label, p.section.name,
                                 "only __LINE__ values passed to WARN/printk-style calls "
                                 "differ"))
            return ""
        first = next(i for i in range(len(ob)) if ob[i] != pb[i])
        if p.is_function:
            insn = self.p.code(p).containing(p.start + first)
            if insn is not None:
                return (f"code differs at +{insn.offset - p.start:#x}: "
                        f"{insn.mnemonic} {insn.operands}".rstrip())
        return f"contents differ at +{first:#x}"

    def _describe_reloc_difference(self, p: Unit, okeys: list, pkeys: list) -> str:
        for i, (a, b) in enumerate(zip(okeys, pkeys, strict=False)):
            if a != b:
                r = p.relocs[i]
                t = self.p.target(r, p)
                if b[2] == "string":
                    what = "the string " + repr(b[3].decode("utf-8", "replace"))
                elif t.symbol is not None:
                    what = t.symbol.name + (f"+{t.offset:#x}" if t.offset else "")
                else:
                    what = f"{t.section.name if t.section else '?'}+{t.offset:#x}"
                return f"reference at +{r.offset - p.start:#x} now to {what}"
        return f"{len(okeys)} -> {len(pkeys)} relocations"

    def _only_line_numbers(self, o: Unit, p: Unit) -> bool:
        """Every differing instruction loads an immediate into an argument register for a
        following call to a function that takes a line number."""
        oc, pc = self.o.code(o).insns, self.p.code(p).insns
        if len(oc) != len(pc):
            return False
        callees = {r.offset: self.p.target(r, p).symbol for r in p.relocs}
        for i, (a, b) in enumerate(zip(oc, pc, strict=True)):
            if a.size != b.size or a.offset - o.start != b.offset - p.start:
                return False
            if (a.mnemonic, a.operands) == (b.mnemonic, b.operands):
                continue
            if not (is_line_argument_load(a) and is_line_argument_load(b)
                    and a.operands.split(",")[0] == b.operands.split(",")[0]):
                return False
            for nxt in pc[i + 1:]:
                if nxt.mnemonic == "call":
                    callee = callees.get(nxt.offset + 1)
                    if callee is None or callee.name not in LINE_CONSUMERS:
                        return False
                    break
                if nxt.mnemonic in ("ret", "jmp", "ud2", "int3"):
                    return False
            else:
                return False
        return True

    def _propagate(self) -> None:
        changed = [u for u in self.p.units if u.status == CHANGED]
        while changed:
            tu = changed.pop()
            if tu.kind not in (Kind.RODATA, Kind.TEXT, Kind.AUX_TEXT) and not tu.is_function:
                continue
            for u, _, r in self.p.referrers(tu):
                if u is None or u is tu or u.status != SAME:
                    continue
                if u.kind in (Kind.INIT, Kind.IGNORED):
                    # __init code already ran and is gone: nothing to re-link. But what it did
                    # with the data (registered an ops table, say) still points at the old
                    # copy, so the change cannot take effect: the differ refuses it.
                    if u.kind == Kind.INIT and tu.kind == Kind.RODATA:
                        if tu.init_users is None:
                            tu.init_users = set()
                        tu.init_users.add(u.label)
                    continue
                t = self.p.target(r, u)
                if tu.kind == Kind.RODATA:
                    why = f"uses {tu.label}, which changed"
                elif tu.is_function and t.offset != 0:
                    why = f"refers into the changed function {tu.label} (+{t.offset:#x})"
                else:
                    continue
                u.status = CHANGED
                u.reason = why
                changed.append(u)
