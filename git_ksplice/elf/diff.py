"""The object differ: which functions of PATCHED differ from ORIG, and what an update needs.

1. correlate the symbols of the two objects (`correlate.py`);
2. compare every unit by symbol, not offset (`compare.py`), and act on the patch author's
   records: callbacks, ignore marks, consent to data changes (`author.py`, `_author`);
3. decide what cannot be redirected by ftrace and what its callers must carry instead
   (`_untraceable`), and refuse what a running kernel cannot take (`_refuse`), each refusal
   naming the symbol, the section and the reason;
4. include changed and new functions and, transitively, what they use that the running
   kernel lacks; keep the special-section entries of included functions (`_include`,
   `_reduce_tables`);
5. extract the diff object (`extract.py`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from git_ksplice.elf import names
from git_ksplice.elf.author import AuthorRecords, Callback, DataChange, read_records
from git_ksplice.elf.compare import CHANGED, NEW, SAME, Comparison
from git_ksplice.elf.correlate import Correlation
from git_ksplice.elf.extract import DiffObject, extract
from git_ksplice.elf.model import (
    BIND_NAMES,
    RELOC_NAMES,
    RELOC_SIZES,
    SHF_ALLOC,
    SHF_WRITE,
    SHT_GROUP,
    SHT_PROGBITS,
    ElfObject,
    Reloc,
    Section,
)
from git_ksplice.elf.sections import TABLES, Kind, infer_entry_size
from git_ksplice.elf.units import ObjectIndex, Unit

SCHEMA_VERSION = 1
_PREFIXES = ("__pfx_", "__cfi_")
#: Sections whose entries make code run at boot (initcall levels, console and security
#: initcalls).
_INITCALL_SECTIONS = (".initcall", ".con_initcall", ".security_initcall")


@dataclass
class Options:
    #: `vmlinux`, or the name of the module the object links into (jump labels and static
    #: calls keyed in a module cannot be carried by a livepatch module).
    target: str = "vmlinux"
    #: Entry sizes of special sections, overriding what is read from the object.
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
    #: For a changed function: its name in ORIG, the running kernel.
    original: str | None = None

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "section": self.section, "size": self.size,
                             "binding": self.binding}
        if self.original is not None:
            d["reason"] = self.reason
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
    #: Changes the author's KPATCH_IGNORE_FUNCTION/SECTION marks left out (author.py).
    left_out: list[Finding] = field(default_factory=list)
    #: The functions the update's livepatch runs when it loads and unloads (author.py).
    callbacks: list[Callback] = field(default_factory=list)
    #: Changed initialisers of existing data the author consented to (author.py).
    data_changes: list[DataChange] = field(default_factory=list)
    #: The diff object; None when there is no change or the change is refused.
    output: DiffObject | None = None

    @property
    def result(self) -> str:
        if self.refusals:
            return "refused"
        if self.output is not None:
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
            "references": self.output.references if self.output else [],
            "special_sections": self.special_sections,
            "warnings": [w.as_json() for w in self.warnings],
            "refusals": [r.as_json("reason") for r in self.refusals],
            "ignored_changes": [i.as_json() for i in self.ignored],
            "left_out": [i.as_json() for i in self.left_out],
            "callbacks": [c.as_json() for c in self.callbacks],
            "data_changes": [d.as_json() for d in self.data_changes],
            "output": output_path,
        }


def diff_objects(orig: ElfObject, patched: ElfObject, options: Options | None = None
                 ) -> DiffResult:
    """Diff two objects read with `read_object`.

    What each phase finds is recorded on the objects' symbols and sections (`Symbol.twin`,
    `Section.kind`, ...), so both sides must be separate objects: one object passed as both
    is diffed against a duplicate of itself.
    """
    if patched is orig:
        patched = orig.duplicate()
    return _Differ(orig, patched, options or Options()).run()


class _Differ:
    def __init__(self, orig: ElfObject, patched: ElfObject, options: Options) -> None:
        self.o = ObjectIndex(orig)
        self.p = ObjectIndex(patched)
        self.options = options
        self.res = DiffResult(orig.path, patched.path)
        self.corr = Correlation(self.o, self.p)
        self.cmp = Comparison(self.corr, options.entry_sizes)
        self.res.warnings.extend(Finding(*w) for w in self.corr.warnings)
        self.res.ignored.extend(Finding(*i) for i in self.cmp.ignored)
        #: Included units in order of inclusion; each one's `Unit.included` says why.
        self.included: list[Unit] = []
        self.author = AuthorRecords()

    def run(self) -> DiffResult:
        self._author()
        self._untraceable()
        self._refuse()
        if not self.res.refusals:
            self._include()
        if self.included and not self.res.refusals:
            self._reduce_tables()
            self._check_included()
        if self.res.refusals or not (self.included or self.res.data_changes):
            return self.res
        self._report()
        replaced = {u for u in self.included
                    if u.is_function and u.status == CHANGED
                    and u.carried is None and u.fentry is not None}
        self.res.output = extract(self.p, self.included, replaced, self._import_namespaces())
        if self.res.output.mcount_entries:
            src = self.p.obj.section("__mcount_loc")
            self.res.special_sections.append({
                "name": "__mcount_loc", "entry_size": 8, "entry_size_source": "regenerated",
                "entries": src.size // 8 if src else 0,
                "kept": self.res.output.mcount_entries})
        return self.res

    def _refusal(self, unit: Unit | None, section: str | None, reason: str) -> None:
        self.res.refusals.append(Finding(unit.label if unit else None,
                                         section or (unit.section.name if unit else None),
                                         reason))

    # -- the patch author's records -------------------------------------------------------

    def _author(self) -> None:
        """Honour what the patch says about itself (author.py) before anything is judged:
        ignored functions and sections count as unchanged, and say so; callbacks and
        consented data changes are taken up by `_include` and `_refuse_data`."""
        rec = self.author = read_records(self.p)
        self.res.refusals.extend(Finding(*problem) for problem in rec.problems)
        for u, macro in rec.ignored_functions:
            if u.status != SAME:
                self._leave_out(u, f"marked with {macro}")
        ignored = set(rec.ignored_sections)
        for u in self.p.units:
            if u.section.name in ignored and u.status != SAME:
                self._leave_out(u, f"its section {u.section.name} is marked with "
                                "KPATCH_IGNORE_SECTION")
        self.res.callbacks = [cb for cb, _ in rec.callbacks]
        for cb, u in rec.callbacks:
            if not cb.slot:
                self.res.warnings.append(Finding(u.label, u.section.name, (
                    f"{cb.macro}({cb.function}) never runs: livepatch cannot fail an undo")))

    def _leave_out(self, u: Unit, why: str) -> None:
        self.res.left_out.append(Finding(u.label, u.section.name,
                                         f"{u.status} but left out of the update: {why}"))
        u.status = SAME

    # -- what ftrace cannot redirect -----------------------------------------------------

    def _untraceable(self) -> None:
        """A changed function without a `__fentry__` call (notrace, a syscall body, a `.cold`
        part) cannot be redirected by ftrace. If it is static and only called, its callers
        are replaced instead, each calling a copy of it; otherwise the change is refused."""
        work = [u for u in self.p.units if u.is_function and u.kind == Kind.TEXT
                and u.status == CHANGED]
        seen: set[Unit] = set()
        while work:
            u = work.pop()
            if u in seen:
                continue
            seen.add(u)
            ou = self.cmp.twin(u)
            if ou is None or ou.fentry is not None:
                continue
            assert u.symbol is not None
            if not u.symbol.is_local:
                self._refusal(u, None,
                              "changed function has no __fentry__ call (notrace), so ftrace "
                              "cannot redirect it, and it is global: its callers in other "
                              "objects cannot be replaced instead")
                continue
            callers, stored_in = self._callers(u)
            if stored_in is not None:
                self._refusal(u, None,
                              f"changed function has no __fentry__ call and its address is "
                              f"stored in {stored_in}, so calls through it cannot be "
                              "redirected")
                continue
            if not callers:
                self._refusal(u, None,
                              "changed function has no __fentry__ call and nothing in this "
                              "object calls it")
                continue
            u.carried = ("no __fentry__ call: copied for its callers ("
                         + ", ".join(sorted({c.label for c in callers})) + ")")
            for c in callers:
                if c.status == SAME:
                    c.status = CHANGED
                    c.reason = f"calls {u.label}, which changed and has no __fentry__ call"
                work.append(c)

    def _callers(self, unit: Unit) -> tuple[list[Unit], str | None]:
        callers = []
        for u, sec, _ in self.p.referrers(unit):
            if u is None:
                kind = sec.kind
                if kind in (Kind.TABLE, Kind.MCOUNT, Kind.IGNORED, Kind.AUTHOR):
                    continue  # tables describing the code, not calls
                return [], sec.name
            if u is unit:
                continue
            if u.is_function or u.kind in (Kind.TEXT, Kind.AUX_TEXT, Kind.INIT):
                callers.append(u)
            else:
                return [], u.label
        return callers, None

    # -- refusals ------------------------------------------------------------------------

    def _refuse(self) -> None:
        """Refuse (or warn about) each difference a running kernel cannot take.

        Code can be replaced, because ftrace sends calls to the new copy; other things are
        read or run where they are, or were used once at boot, so a different copy in the
        update would change nothing or break something. Each check is for one kind of
        section, since what a difference means depends on what the section holds.
        """
        for u in self.p.units:
            if u.status == SAME:
                continue
            if u.kind == Kind.INIT:
                self._refuse_boot_time(u)
            elif u.kind in (Kind.DATA, Kind.RODATA, Kind.PERCPU):
                self._refuse_data(u)
            else:
                self._refuse_registration(u)
        for sec in self.p.obj.sections:
            if sec.type == SHT_GROUP and any(u.status != SAME
                                             for m in sec.group_members
                                             for u in self.p.units if u.section is m):
                self._refusal(None, sec.name, "changed section group (COMDAT): not supported")

    def _refuse_boot_time(self, u: Unit) -> None:
        """__init/__exit code and data, and initcall registrations: they ran at boot (or run
        at unload) and are freed, so an update has nothing to run them again with."""
        st = u.status
        if u.section.name.startswith(_INITCALL_SECTIONS):
            # A new (or different) registration of boot-time code: the update could not
            # run it, and without it the rest of the change may be incomplete.
            self._refusal(u, None, f"{'adds' if st == NEW else 'changes'} an initcall "
                          f"({u.section.name}): initcalls run only at boot, so a live "
                          "update cannot run it; do the setup in a livepatch callback, "
                          "or in code the update replaces")
        elif st == CHANGED:
            what = "code" if u.is_function else "data"
            self._refusal(u, None, f"changed __init/__exit {what} ({u.reason}): it runs "
                          "only at boot or unload and is discarded, so a live update "
                          "cannot apply it")

    def _refuse_data(self, u: Unit) -> None:
        """Data the running kernel already holds keeps its state and its address: a changed
        initialiser never takes effect there, and a size change cannot. New variables are
        fine, but start from their initial value, which the user is warned about."""
        st, reason = u.status, u.reason
        bookkeeping = names.is_special_static(u.name, u.section.name)
        if u.kind == Kind.DATA and st == CHANGED and not bookkeeping:
            o = self.cmp.twin(u)
            if o is not None and o.size != u.size:
                self._refusal(u, None, f"existing data resized ({o.size} -> {u.size} "
                              "bytes): the running kernel's object cannot grow or shrink")
            elif u in self.author.consent:
                self._consented(u)
            else:
                self._refusal(u, None, f"changed initialiser of existing data ({reason}): "
                              "the running kernel's copy holds live state and is not "
                              "re-initialised; if the new value must reach it, say so with "
                              "KSPLICE_APPLY_DATA_CHANGE() or KSPLICE_ACCEPT_DATA_CHANGE() "
                              "and a post-patch callback (ksplice-patch.h)")
        elif u.kind == Kind.RODATA and st == CHANGED and u.init_users:
            users = ", ".join(sorted(u.init_users))
            self._refusal(u, None, f"changed read-only data ({reason}) used by __init code "
                          f"({users}), which ran at boot and may have kept its address "
                          "(a registered ops table, say): the running kernel would go on "
                          "using the old copy; make the change in code the running kernel "
                          "calls")
        elif u.kind == Kind.PERCPU and st == CHANGED:
            self._refusal(u, None, "changed per-CPU data")
        elif u.kind == Kind.PERCPU and st == NEW and u.symbol is not None:
            self.res.warnings.append(Finding(
                u.label, u.section.name,
                "new per-CPU variable: every CPU's copy starts from its initial value when "
                "the update loads, and its state is lost if a later update replaces this "
                "one"))
        elif u.kind in (Kind.DATA, Kind.RODATA) and st == NEW and u.symbol is not None \
                and not bookkeeping and u.section.flags & SHF_WRITE:
            self.res.warnings.append(Finding(
                u.label, u.section.name,
                "new writable variable: it starts from its initial value when the update "
                "loads, and its state is lost if a later update replaces this one"))

    def _consented(self, u: Unit) -> None:
        """A changed initialiser the author acknowledged (author.py): with `apply`, the
        update's own post-patch callback writes the new value, so it must be plain bytes."""
        mode, macro = self.author.consent[u]
        assert u.symbol is not None
        if mode == "apply" and u.relocs:
            self._refusal(u, None, f"{macro}({u.label}): the new initialiser holds addresses "
                          "(relocations), which the update cannot write as bytes; use "
                          "KSPLICE_ACCEPT_DATA_CHANGE() and set it in a post-patch callback")
            return
        self.res.data_changes.append(DataChange(u.label, u.section.name, u.size, mode,
                                                u.data(), u.symbol.is_local, macro))
        self.res.warnings.append(Finding(u.label, u.section.name, (
            f"changed initialiser ({u.reason}) accepted with {macro}: the update's "
            "post-patch callback writes the new value over the running kernel's copy and "
            "puts the old one back before the update unloads") if mode == "apply" else (
            f"changed initialiser ({u.reason}) accepted with {macro}: the running kernel's "
            "copy keeps its value until the patch's own callback sets it")))
        if mode == "accept" and not any(cb.slot == "post_patch"
                                        for cb, _ in self.author.callbacks):
            self.res.warnings.append(Finding(u.label, u.section.name, (
                f"{macro}({u.label}) but this file registers no post-patch callback: unless "
                "another file of the update sets it, the new value never reaches the "
                "running kernel")))

    def _refuse_registration(self, u: Unit) -> None:
        """Tables the kernel reads once, when it boots or loads a module (exports, module
        parameters, trace events...), static call trampolines, and sections of unknown
        purpose: a difference there cannot be applied by replacing functions."""
        st, reason = u.status, u.reason
        kind = u.kind
        if kind == Kind.EXPORT and u.section.name != "__ksymtab_strings":
            self._refusal(u, None, "adds an exported symbol: a livepatch module cannot "
                          "add exports to the kernel it patches" if st == NEW else
                          f"changes an exported symbol's entry ({reason})")
        elif kind == Kind.METADATA and not names.is_special_static(u.name, u.section.name):
            self._refusal(u, None, f"{'adds' if st == NEW else 'changes'} an entry of "
                          f"{u.section.name}, which the kernel reads only at boot or "
                          "module load")
        elif kind == Kind.AUX_TEXT and u.section.name == ".static_call.text":
            self._refusal(u, None, "changes a static call trampoline")
        elif kind == Kind.UNKNOWN:
            self._refusal(u, None, f"section {u.section.name} differs and git-ksplice "
                          "does not know what it holds: refusing rather than guessing")

    # -- inclusion -----------------------------------------------------------------------

    def _include_unit(self, u: Unit, why: str, work: list[Unit]) -> None:
        if u.included is not None:
            return
        u.included = why
        self.included.append(u)
        work.append(u)
        if u.is_function and u.start >= 16:
            # Padding gcc puts before a function for call-depth tracking and CFI
            # (`__pfx_foo`, `__cfi_foo`) goes with it.
            for prefix in _PREFIXES:
                pfx = next((s for s in u.section.symbols if s.name == prefix + u.name), None)
                pu = pfx.unit if pfx is not None else None
                if pu is not None and pu.included is None:
                    pu.included = f"prefix of {u.label}"
                    self.included.append(pu)

    def _include(self) -> None:
        work: list[Unit] = []
        for u in self.p.units:
            st = u.status
            if u.kind != Kind.TEXT or not u.is_function or u.name.startswith(_PREFIXES):
                continue
            if st == CHANGED:
                self._include_unit(u, u.carried if u.carried is not None else "changed", work)
            elif st == NEW and u.symbol is not None and not u.symbol.is_local:
                self._include_unit(u, "new", work)
        for cb, u in self.author.callbacks:
            self._include_unit(u, f"{cb.slot} callback ({cb.macro})", work)
        for u in self.p.units:
            if u.status == NEW and u.symbol is not None and not u.symbol.is_local \
                    and u.kind in (Kind.DATA, Kind.RODATA):
                self._include_unit(u, "new", work)
        self._close(work)

    def _close(self, work: list[Unit]) -> None:
        """Include what included units use that the running kernel lacks."""
        while work:
            u = work.pop()
            for r in u.relocs:
                tu = self.p.unit_of(self.p.target(r, u))
                if tu is not None and tu is not u and tu.included is None:
                    why = self._why_include(u.label, tu)
                    if why:
                        self._include_unit(tu, why, work)

    def _why_include(self, user: str, tu: Unit) -> str | None:
        st = tu.status
        kind = tu.kind
        if kind in (Kind.INIT, Kind.IGNORED, Kind.TABLE, Kind.MCOUNT):
            return None  # refused in _check_included where it matters
        if names.is_special_static(tu.name, tu.section.name):
            return f"fresh copy for {user}"
        if kind == Kind.STRINGS:
            return f"string literals used by {user}"
        if st == NEW:
            return f"new, used by {user}"
        if st == CHANGED and kind == Kind.RODATA:
            return f"changed read-only data used by {user}"
        if st == CHANGED and tu.carried is not None:
            return tu.carried
        if tu.symbol is None and kind in (Kind.RODATA, Kind.AUX_TEXT):
            # Unnamed contents (switch tables, constant pools, replacement code) cannot be
            # found in the running kernel by name: carry a copy.
            return f"unnamed {tu.section.name} contents used by {user}"
        return None

    def _reduce_tables(self) -> None:
        """Keep exactly the special-section entries that describe included functions."""
        tables = [s for s in self.p.obj.sections if s.kind == Kind.TABLE]
        tables.sort(key=lambda s: TABLES[s.name].lockstep_with is not None)  # ORC data last
        kept_by_name: dict[str, list[int]] = {}
        for sec in tables:
            spec = TABLES[sec.name]
            lockstep = self.p.obj.section(spec.lockstep_with) if spec.lockstep_with else None
            lock_n = None
            if lockstep is not None:
                lock_n = lockstep.size // infer_entry_size(lockstep, TABLES[lockstep.name]).size
            try:
                es = infer_entry_size(sec, spec, override=self.options.entry_sizes.get(sec.name),
                                      lockstep_entries=lock_n)
            except ValueError as e:
                self._refusal(None, sec.name, str(e))
                continue
            n = -(-sec.size // es.size)
            if spec.lockstep_with:
                kept = kept_by_name.get(spec.lockstep_with, [])
            else:
                by_entry: dict[int, list[Reloc]] = defaultdict(list)
                for r in sec.relocs:
                    by_entry[r.offset // es.size].append(r)
                kept = [i for i in range(n) if self._keep_entry(sec, spec.keyed,
                                                                by_entry.get(i, []))]
            kept_by_name[sec.name] = kept
            spans = [(i * es.size, min(es.size, sec.size - i * es.size)) for i in kept]
            sec.kept_entries = spans
            self.res.special_sections.append({
                "name": sec.name, "entry_size": es.size, "entry_size_source": es.source,
                "entries": n, "kept": len(kept)})
            # What kept entries point at comes along: bug-table file names, replacement
            # code, exception fixup code, dynamic-debug descriptors used as keys.
            work: list[Unit] = []
            for start, size in spans:
                for r in sec.relocs:
                    if start <= r.offset < start + size:
                        tu = self.p.unit_of(self.p.target(r, None))
                        if tu is not None and tu.included is None:
                            why = self._why_include(f"{sec.name} entries", tu)
                            if why:
                                self._include_unit(tu, why, work)
            self._close(work)

    def _keep_entry(self, sec: Section, keyed: bool, relocs: list[Reloc]) -> bool:
        owner = None
        for r in relocs:
            tu = self.p.unit_of(self.p.target(r, None))
            if tu is not None and tu.is_function and tu.included is not None:
                owner = tu
                break
            if tu is not None and sec.name == ".printk_index" \
                    and self._printk_entry_of_included(tu):
                return True
        if owner is None:
            return False
        if not keyed or self.options.target == "vmlinux":
            return True
        key_reloc = max(relocs, key=lambda r: r.offset)
        key = self.p.target(key_reloc, None).symbol
        if key is None or not key.defined:
            return True  # defined elsewhere: vmlinux or another module, resolved at load
        if names.is_special_static(key.name, key.section.name if key.section else None):
            return True  # a dynamic-debug descriptor copied into the update itself
        what = "jump label" if sec.name == "__jump_table" else "static call"
        if key.name.startswith(("__tracepoint_", "__SCK__tp_func_")):
            self.res.warnings.append(Finding(
                owner.label, sec.name,
                f"tracepoint {key.name} is defined in module {self.options.target}: its "
                f"{what} site in the patched code is left disabled"))
            return False
        self._refusal(owner, sec.name,
                      f"{what} keyed on {key.name} (static key), which is defined in module "
                      f"{self.options.target}: a livepatch module can only use keys of "
                      "vmlinux; test it with static_key_enabled() in the patched code")
        return False

    def _printk_entry_of_included(self, entry: Unit) -> bool:
        """A printk index entry (`_entry.N`) names its function only through `__func__`."""
        functions = {u.name.split(".")[0] for u in self.included if u.is_function}
        for r in entry.relocs:
            tu = self.p.unit_of(self.p.target(r, entry))
            if tu is not None and tu.name.startswith("__func__."):
                return tu.data().rstrip(b"\0").decode("utf-8", "replace") in functions
        return False

    def _check_included(self) -> None:
        supported = set(RELOC_SIZES)
        for u in list(self.included):
            for r in u.relocs:
                if r.type not in supported:
                    self._refusal(u, None, f"relocation {RELOC_NAMES.get(r.type, r.type)} at "
                                  f"+{r.offset - u.start:#x} is not supported by the kernel's "
                                  "module loader")
                t = self.p.target(r, u)
                if u.symbol is not None and self.p.kind_of(t.section) == Kind.INIT \
                        and u.kind != Kind.INIT:
                    self._refusal(u, None, f"uses {t.symbol.name if t.symbol else '?'} in "
                                  f"{t.section.name if t.section else '?'}, which is freed "
                                  "after boot")
                if t.symbol is None and t.section is not None:
                    tu = self.p.unit_of(t)
                    if tu is None or tu.included is None:
                        self._refusal(u, None, f"refers to an unnamed place "
                                      f"{t.section.name}+{t.offset:#x} that cannot be found "
                                      "in the running kernel")
        for sec in self.p.obj.sections:
            spans = sec.kept_entries
            if not spans:
                continue
            for r in sec.relocs:
                if any(a <= r.offset < a + n for a, n in spans):
                    t = self.p.target(r, None)
                    if t.symbol is None and t.section is not None:
                        tu = self.p.unit_of(t)
                        if tu is None or tu.included is None:
                            self._refusal(None, sec.name, f"a kept entry refers to an unnamed "
                                          f"place {t.section.name}+{t.offset:#x} that is not "
                                          "carried")
        # Fail closed: a section we do not understand that describes included code would be
        # silently lost.
        for sec in self.p.obj.sections:
            if sec.kind != Kind.UNKNOWN:
                continue
            for r in sec.relocs:
                tu = self.p.unit_of(self.p.target(r, None))
                if tu is not None and tu.included is not None and tu.is_function:
                    self._refusal(tu, sec.name, f"{sec.name} has entries for this function and "
                                  "git-ksplice does not know this section's format (add it to "
                                  "git_ksplice/elf/sections.py)")
                    break

    # -- report --------------------------------------------------------------------------

    def _report(self) -> None:
        for u in self.included:
            why = u.included
            assert why is not None
            sym = u.symbol
            kind = "function" if u.is_function else ("object" if sym is not None else "section")
            self.res.included.append({"name": u.label, "kind": kind, "section": u.section.name,
                                      "why": why})
            if not u.is_function or sym is None or why.startswith("prefix of") \
                    or u.carried is not None:
                continue
            rep = FunctionReport(u.label, u.section.name, u.size, BIND_NAMES.get(sym.bind, "?"))
            st = u.status
            if st == NEW:
                self.res.new.append(rep)
            elif st == CHANGED and u.kind == Kind.TEXT and why == "changed":
                o = sym.twin
                rep.reason = u.reason
                rep.original = o.name if o is not None else sym.name
                self.res.changed.append(rep)
        self.res.included.sort(key=lambda d: (d["kind"] != "function", d["name"]))
        self.res.changed.sort(key=lambda f: f.name)
        self.res.new.sort(key=lambda f: f.name)

    def _import_namespaces(self) -> Section | None:
        mi = self.p.obj.section(".modinfo")
        if mi is None:
            return None
        # Built-in code records `<module>.import_ns=NS`; the update is a module of its own.
        found = [s.split(b"import_ns=", 1)[1] for s in mi.data.split(b"\0")
                 if s.startswith(b"import_ns=") or b".import_ns=" in s]
        if not found:
            return None
        data = b"".join(b"import_ns=" + ns + b"\0" for ns in found)
        self.res.included.append({"name": ".modinfo", "kind": "section", "section": ".modinfo",
                                  "why": f"{len(found)} import_ns= namespace imports"})
        return Section(".modinfo", SHT_PROGBITS, SHF_ALLOC, data, len(data), 1, 0)
