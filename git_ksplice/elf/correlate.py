"""Which symbol of PATCHED is which symbol of ORIG, and which section is which.

Everything the differ says afterwards rests on this pairing: a PATCHED function with an ORIG
twin is compared with it (and replaces it), one without is new; a relocation to a PATCHED
symbol counts as unchanged only if it goes to the twin of what the ORIG relocation went to.
A pairing that is too eager makes two different things look the same (an update that keeps
running old code); one that is too shy turns renamed-but-identical code and data into new
copies (an update that is larger than needed, and statics that lose their state). The result
is recorded on the objects: `Symbol.twin` on both symbols of a pair, `Section.twin` on the
PATCHED section.

The levels are tried in order, each only on what the earlier ones left unpaired:

1. Global symbols, defined or undefined, by exact name. A global's name is what the linker
   and the running kernel know it by (`vfs_read` is `vfs_read` in both objects), and undefined
   ones (`printk`, `__fentry__`) must pair for references to them to compare equal.
2. Local symbols within their FILE block, by type and by name with gcc's numbering removed
   (`names.demangle`). FILE blocks keep apart two `static int init(void)` of different source
   files in one combined object (`ld -r` of several .c files). The numbers must go because
   gcc hands them out per translation unit in creation order: in the corpus case
   gcc-constprop (kernel/time/timekeeping.c), one new constant-propagated clone renumbers
   every later one, `timekeeping_forward_now.constprop.5` becoming `.constprop.6` and
   `tk_xtime_add.constprop.8` becoming `.constprop.9`, all of them unchanged code. When
   several symbols share a numberless name (two `foo.constprop` clones), `_pair_group`
   tells them apart. The `.constprop`/`.isra`/`.part` marker itself is kept, so a clone or a
   split-off part never pairs with the function it came from: it is other code, with its
   own calling convention.
3. A symbol whose binding changed, by exact name, with a warning. A patch that only adds
   `static` to a function (the kernel's many "make foo static" fixes for sparse's "symbol
   was not declared" warning) leaves a global in ORIG and a local in PATCHED, which neither
   level above pairs. They are the same function; unpaired, it would look new, and so would
   every caller's call to it.
4. Function-scope statics (`static DEFINE_SPINLOCK(lock)` inside a function), through the
   functions that use them (`_correlate_statics`). gcc gives each a number (its internal
   declaration counter in older versions, a smaller counter in newer ones), so a declaration
   or another static added higher up the file renumbers the rest: in the corpus case
   gcc-static-local-var-3 (kernel/reboot.c), `cad_work.45124` becomes `cad_work.45127`.
   And a name alone is ambiguous: in the corpus case
   static-local-moved-subfunction-issue-1054 (kernel/audit.c), ORIG has
   `lock.65414` (used by audit_log_start and audit_log_end) and `lock.65427` (used by
   audit_log_lost), and PATCHED has `lock.65417` and `lock.65433`. What identifies a static
   is the function it is declared in, and that function is (in almost every case) the one
   whose code refers to it.
5. The statics no user tells apart: one left unpaired of that numberless name on both sides
   (and only one in ORIG) is the same variable, whose users all changed name; gcc moves a
   static's uses into a new clone when it splits a function (in the same audit.c case,
   PATCHED's `lock.65417` is used by the new `audit_log_end.part.17` rather than by
   audit_log_end; there audit_log_start still shares it, so level 4 is enough, but a static
   used by one split function has no other witness). Failing that: the same name, number
   included, and the same size. What stays unpaired is treated as new, with a warning: it
   starts from its initial value.

Never correlated: statics that kernel macros create for their own bookkeeping (lockdep's
`__key.N`, WARN_ONCE's flags, dynamic-debug descriptors: `names.is_special_static`), for
which the update gets fresh copies; assembler labels (local NOTYPE: `.LC0`); FILE and
SECTION symbols; symbols of ignored sections (objtool annotations, `.discard.*`).

Sections follow their symbols: a PATCHED section is the ORIG section holding the twin of a
symbol it holds, at the same offset (`.text.foo` follows `foo`, also when the symbol was
renumbered). A section without such a symbol (string literals, `.altinstr_replacement`) is
paired by name with the numbering removed, when exactly one ORIG section has that name:
`.rodata.__timekeeping_inject_sleeptime.constprop.4.str1.8` then still finds its ORIG
counterpart after the clone became `.constprop.5`.
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
    """Pairs the symbols and sections of two indexed objects (the levels above), on creation.

    The pairs are recorded on the objects themselves (`Symbol.twin`, `Section.twin`); what
    remains here is the report's warnings.
    """

    def __init__(self, orig: ObjectIndex, patched: ObjectIndex) -> None:
        self.o = orig
        self.p = patched
        #: (symbol, section, message) notes for the report.
        self.warnings: list[tuple[str, str | None, str]] = []
        self._run()

    def _pair(self, o: Symbol, p: Symbol) -> None:
        p.twin = o
        o.twin = p

    def _candidates(self, index: ObjectIndex) -> list[Symbol]:
        out = []
        for s in index.obj.symbols[1:]:
            if s.type in (STT_FILE, STT_SECTION):
                continue
            if s.section is not None and s.section.kind == Kind.IGNORED:
                continue  # objtool annotations, .discard.addressable ...
            out.append(s)
        return out

    def _run(self) -> None:
        osyms, psyms = self._candidates(self.o), self._candidates(self.p)
        self._correlate_globals(osyms, psyms)
        statics_o, statics_p = self._correlate_locals(osyms, psyms)
        self._correlate_rebound(osyms, psyms)
        self._correlate_statics(statics_o, statics_p)
        self._correlate_sections()

    def _correlate_globals(self, osyms: list[Symbol], psyms: list[Symbol]) -> None:
        """Level 1: globals by exact name."""
        oglob = {s.name: s for s in osyms if not s.is_local}
        for p in psyms:
            if not p.is_local and p.name in oglob:
                self._pair(oglob[p.name], p)

    def _correlate_locals(self, osyms: list[Symbol], psyms: list[Symbol]
                          ) -> tuple[list[Symbol], list[Symbol]]:
        """Level 2: locals of matching FILE blocks by type and numberless name. Returns the
        numbered function-scope statics of both sides, which levels 4 and 5 pair."""
        oblocks, pblocks = _file_blocks(osyms), _file_blocks(psyms)
        statics_o: list[Symbol] = []
        statics_p: list[Symbol] = []
        for key, plist in pblocks.items():
            obyname = _by_demangled_name(oblocks.get(key, []), statics_o)
            pbyname = _by_demangled_name(plist, statics_p)
            for k, ps in pbyname.items():
                self._pair_group(obyname.get(k, []), ps)
        return statics_o, statics_p

    def _correlate_rebound(self, osyms: list[Symbol], psyms: list[Symbol]) -> None:
        """Level 3: a defined symbol left unpaired whose exact name and type match one of
        ORIG's but whose binding changed (global made static, or static made global)."""
        ounpaired = {s.name: s for s in osyms if s.twin is None and s.defined
                     and _correlatable(s)}
        for p in psyms:
            if p.twin is not None or not p.defined or p.name not in ounpaired:
                continue
            o = ounpaired.pop(p.name)
            if o.type == p.type and o.is_local != p.is_local:
                self._pair(o, p)
                self.warnings.append((p.name, _secname(p),
                                      f"binding changed from {BIND_NAMES[o.bind]} to "
                                      f"{BIND_NAMES[p.bind]}"))

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

    def _users(self, index: ObjectIndex, sym: Symbol) -> set[Symbol]:
        """The functions (their symbols) whose code refers to `sym`."""
        unit = sym.unit
        if unit is None:
            return set()
        return {u.symbol for u, _, _ in index.referrers(unit)
                if u is not None and u.is_function and u.symbol is not None}

    def _correlate_statics(self, statics_o: list[Symbol], statics_p: list[Symbol]) -> None:
        """Levels 4 and 5: numbered function-scope statics, through their users.

        Functions are paired by now (levels 1 to 3), so "used by the same functions" can be
        asked across the objects: a PATCHED static's users are mapped to their ORIG twins
        and compared with each ORIG candidate's users. Candidates must have the same type
        and numberless name (`lock.65417` can only be some `lock.N`).
        """
        if not statics_p:
            return
        self._pair_statics_by_users(statics_o, statics_p)
        self._pair_leftover_statics(statics_o, statics_p)

    def _pair_statics_by_users(self, statics_o: list[Symbol], statics_p: list[Symbol]
                               ) -> None:
        """Level 4. Every (ORIG, PATCHED) candidate pair that shares at least one user is
        scored by how many users it shares; pairs are then taken best score first, each
        symbol at most once. Ties go to the pair earliest in the symbol tables (ORIG's order
        first), which keeps the result independent of dict and set order. A static used by
        several functions (audit.c's `lock.65414`, used by audit_log_start and audit_log_end)
        thus goes with the candidate that shares most of them, even when one of its users
        changed or was split into a new clone in PATCHED."""
        users_o = [(o, self._users(self.o, o)) for o in statics_o]
        scored = []
        for p in statics_p:
            # p's users, as ORIG symbols; users with no twin (new functions) tell nothing.
            up = {u.twin for u in self._users(self.p, p) if u.twin is not None}
            key = names.demangle(p.name)
            for o, o_users in users_o:
                if o.type != p.type or names.demangle(o.name) != key:
                    continue
                score = len(o_users & up)
                if score:
                    scored.append((-score, o.index, p.index, o, p))
        scored.sort(key=lambda t: t[:3])
        for _, _, _, o, p in scored:
            if o.twin is None and p.twin is None:
                self._pair(o, p)

    def _pair_leftover_statics(self, statics_o: list[Symbol], statics_p: list[Symbol]
                               ) -> None:
        """Level 5, for the statics level 4 left, grouped by numberless name.

        - One left on each side, and ORIG never had another of that name: the same variable,
          whose users all changed or moved (inlined into a new `.part` clone, say).
        - Otherwise the exact name, number included, with the same size: the numbers did not
          move (no declaration was added before them), which is the best evidence left for
          statics that only tables refer to.
        - Whatever still has candidates on both sides is reported: it becomes a new variable,
          which starts from its initial value instead of the running kernel's state.
        """
        left_o: dict[str, list[Symbol]] = defaultdict(list)
        left_p: dict[str, list[Symbol]] = defaultdict(list)
        count_o: dict[str, int] = defaultdict(int)
        for o in statics_o:
            count_o[names.demangle(o.name)] += 1
            if o.twin is None:
                left_o[names.demangle(o.name)].append(o)
        for p in statics_p:
            if p.twin is None:
                left_p[names.demangle(p.name)].append(p)
        for key, ps in left_p.items():
            os_ = left_o.get(key, [])
            if len(ps) == 1 and len(os_) == 1 and count_o[key] == 1:
                self._pair(os_[0], ps[0])
                continue
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
        """Sections: through a symbol whose twin sits at the same offset, else by numberless
        name when that name is unique in ORIG (see the module docstring)."""
        for p in self.p.obj.sections:
            for sym in p.symbols:
                o = sym.twin
                if o is not None and o.section is not None and o.value == sym.value:
                    p.twin = o.section
                    break
        by_name: dict[str, list[Section]] = defaultdict(list)
        for s in self.o.obj.sections:
            by_name[names.demangle(s.name)].append(s)
        for p in self.p.obj.sections:
            if p.twin is None:
                cands = by_name.get(names.demangle(p.name), [])
                if len(cands) == 1:
                    p.twin = cands[0]


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
