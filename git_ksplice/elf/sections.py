"""What each kind of kernel section is, and how the differ treats it.

The table is the engine's knowledge of the kernel's object format; anything not in it is
`UNKNOWN` and makes the differ fail closed when it matters (a kernel adding a section the
table does not know about must not silently produce a broken update: the lesson of
Ksplice's `__mcount_loc` crash and kpatch's "changed section not selected" dead ends).

Special sections are tables of fixed-size entries, each describing one site in a function
(a BUG, an exception fixup, a jump label...). The differ keeps exactly the entries of the
functions it copies. Entry sizes differ between kernel versions and configurations, so they
are read from the object itself: `sh_entsize` when the assembler recorded it, otherwise the
spacing of the relocations (every entry of a table has the same relocation layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from git_ksplice.elf.model import SHF_EXECINSTR, SHF_STRINGS, SHF_WRITE, Reloc, Section


class Kind(StrEnum):
    TEXT = "text"
    INIT = "init"  # freed after boot: __init/__exit code and data, initcall tables
    DATA = "data"  # writable data
    RODATA = "rodata"
    STRINGS = "strings"
    AUX_TEXT = "aux-text"  # code reached only through a table (alternatives, fixups)
    TABLE = "table"  # special section: one entry per site in a function
    MCOUNT = "mcount"  # ftrace call sites, regenerated for the copied functions
    EXPORT = "export"  # EXPORT_SYMBOL tables
    METADATA = "metadata"  # registrations (params, trace events...): compared, never copied
    MODINFO = "modinfo"
    PERCPU = "percpu"
    IGNORED = "ignored"  # build notes, objtool annotations, debug info
    AUTHOR = "author"  # the patch author's records: callbacks, ignore marks (elf/author.py)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TableSpec:
    name: str
    #: Entry size when the object gives no clue (x86_64 Linux 6.1 values).
    default_size: int
    #: The entry's relocations point at a static key (jump labels, static calls); the key
    #: is the last relocation of the entry.
    keyed: bool = False
    #: Entries carry no relocations and run in lockstep with the entries of this table.
    lockstep_with: str | None = None
    what: str = ""


TABLES = {
    spec.name: spec
    for spec in (
        TableSpec("__bug_table", 12, what="BUG/WARN sites"),
        TableSpec("__ex_table", 12, what="exception fixups"),
        TableSpec("__jump_table", 16, keyed=True, what="jump labels"),
        TableSpec(".altinstructions", 12, what="alternatives"),
        TableSpec(".parainstructions", 16, what="paravirt patch sites"),
        TableSpec(".smp_locks", 4, what="LOCK prefixes"),
        TableSpec(".static_call_sites", 8, keyed=True, what="static calls"),
        TableSpec(".retpoline_sites", 4, what="retpoline thunk calls"),
        TableSpec(".return_sites", 4, what="return thunk sites"),
        TableSpec(".call_sites", 4, what="call depth tracking sites"),
        TableSpec(".ibt_endbr_seal", 4, what="ENDBR seal sites"),
        TableSpec(".orc_unwind_ip", 4, what="ORC unwind addresses"),
        TableSpec(".orc_unwind", 6, lockstep_with=".orc_unwind_ip", what="ORC unwind data"),
        TableSpec(".printk_index", 8, what="printk format index"),
        TableSpec("_error_injection_whitelist", 16, what="error injection points"),
        TableSpec("_kprobe_blacklist", 8, what="kprobe blacklist"),
    )
}

_TEXT_NAMES = {
    ".text", ".sched.text", ".spinlock.text", ".cpuidle.text", ".noinstr.text", ".entry.text",
    ".kprobes.text", ".irqentry.text", ".softirqentry.text", ".lock.text", ".ref.text",
}
_AUX_TEXT = {".altinstr_replacement", ".altinstr_aux", ".fixup", ".static_call.text",
             ".text..refcount"}
_INIT_PREFIXES = (
    ".init.", ".exit.", ".head.text", ".meminit.", ".memexit.", ".cpuinit.", ".cpuexit.",
    ".devinit.", ".devexit.", ".initcall", ".con_initcall", ".x86_cpu_dev.init",
    ".security_initcall", ".init_array", ".ctors",
)
_EXPORT_PREFIXES = ("__ksymtab", "___ksymtab", "__kcrctab", "___kcrctab")
_METADATA = {
    "__param", "__modver", "_ftrace_events", "_ftrace_eval_map", "__tracepoints_ptrs",
    "__bpf_raw_tp_map", "__syscalls_metadata", "__ex_table_end", ".static_call_tramp_key",
    "__tracepoint_str", "__dyndbg_classes", "__kunit_suites", "__bug_table_end",
    ".kprobes_blacklist",
}
_IGNORED_PREFIXES = (
    ".comment", ".note", ".discard", ".llvm", ".debug", ".BTF", ".eh_frame", ".gnu.", ".GCC",
    ".stab", ".gcc_except_table",
)


@dataclass(frozen=True)
class RecordSpec:
    """A section the macros of the patch author's header write (git_ksplice/include), with
    kpatch's and Ksplice's names: one record per macro use, read by elf/author.py and never
    copied into the update."""

    name: str
    #: Bytes per record; the first field is the address of what the record names.
    entry_size: int
    #: callback, ignore-function, ignore-section, accept-data, apply-data or unsupported.
    what: str
    #: The livepatch callback slot a callback runs in (struct klp_callbacks' member), or
    #: fail_patch: run by the pre-patch slot when a pre-patch callback fails.
    slot: str = ""
    #: klp: fn(struct klp_object *), as klp_callbacks takes; void: void fn(void); int: int
    #: fn(void), Ksplice's hooks that may fail.
    signature: str = "klp"
    macro: str = ""


def _ksplice_hook(name: str, slot: str, signature: str) -> RecordSpec:
    return RecordSpec(f".ksplice_call_{name}", 8, "callback", slot, signature,
                      f"ksplice_{name}")


AUTHOR_RECORDS = {
    spec.name: spec
    for spec in (
        RecordSpec(".kpatch.callbacks.pre_patch", 16, "callback", "pre_patch", "klp",
                   "KPATCH_PRE_PATCH_CALLBACK"),
        RecordSpec(".kpatch.callbacks.post_patch", 16, "callback", "post_patch", "klp",
                   "KPATCH_POST_PATCH_CALLBACK"),
        RecordSpec(".kpatch.callbacks.pre_unpatch", 16, "callback", "pre_unpatch", "klp",
                   "KPATCH_PRE_UNPATCH_CALLBACK"),
        RecordSpec(".kpatch.callbacks.post_unpatch", 16, "callback", "post_unpatch", "klp",
                   "KPATCH_POST_UNPATCH_CALLBACK"),
        # kpatch's older load and unload hooks: void fn(void).
        RecordSpec(".kpatch.hooks.load", 16, "callback", "post_patch", "void",
                   "KPATCH_LOAD_HOOK"),
        RecordSpec(".kpatch.hooks.unload", 16, "callback", "pre_unpatch", "void",
                   "KPATCH_UNLOAD_HOOK"),
        # Ksplice's hooks, in the order Ksplice ran them within a slot. Ksplice's "check"
        # and "apply" hooks ran inside stop_machine around the switch; livepatch has no
        # such moment, so they run just before and just after it.
        _ksplice_hook("pre_apply", "pre_patch", "int"),
        _ksplice_hook("check_apply", "pre_patch", "int"),
        _ksplice_hook("apply", "post_patch", "void"),
        _ksplice_hook("post_apply", "post_patch", "void"),
        _ksplice_hook("fail_apply", "fail_patch", "void"),
        _ksplice_hook("pre_reverse", "pre_unpatch", "int"),
        _ksplice_hook("check_reverse", "pre_unpatch", "int"),
        _ksplice_hook("reverse", "post_unpatch", "void"),
        _ksplice_hook("post_reverse", "post_unpatch", "void"),
        _ksplice_hook("fail_reverse", "", "void"),
        RecordSpec(".kpatch.ignore.functions", 8, "ignore-function",
                   macro="KPATCH_IGNORE_FUNCTION"),
        RecordSpec(".kpatch.ignore.sections", 8, "ignore-section",
                   macro="KPATCH_IGNORE_SECTION"),
        RecordSpec(".kpatch.force", 8, "unsupported", macro="KPATCH_FORCE_UNSAFE"),
        RecordSpec(".ksplice.data_change.accept", 8, "accept-data",
                   macro="KSPLICE_ACCEPT_DATA_CHANGE"),
        RecordSpec(".ksplice.data_change.apply", 8, "apply-data",
                   macro="KSPLICE_APPLY_DATA_CHANGE"),
    )
}
_DATA_NAMES = {"__tracepoints", "__verbose", "__dyndbg", ".ref.data"}


def classify(sec: Section) -> Kind:
    name = sec.name
    if name in AUTHOR_RECORDS:
        return Kind.AUTHOR
    if name in TABLES:
        return Kind.TABLE
    if name in ("__mcount_loc", "__patchable_function_entries"):
        return Kind.MCOUNT
    if name.startswith(_IGNORED_PREFIXES):
        return Kind.IGNORED
    if name.startswith(_INIT_PREFIXES):
        return Kind.INIT
    if name in _AUX_TEXT:
        return Kind.AUX_TEXT
    if name in _TEXT_NAMES or (name.startswith(".text.") and not name.startswith(".text..")):
        return Kind.TEXT
    if name.startswith(_EXPORT_PREFIXES):
        return Kind.EXPORT
    if name == ".modinfo":
        return Kind.MODINFO
    if name in _METADATA:
        return Kind.METADATA
    if name.startswith(".data..percpu"):
        return Kind.PERCPU
    if sec.flags & SHF_STRINGS or name.startswith(".rodata.str") or name == "__tracepoints_strings":
        return Kind.STRINGS
    if name.startswith((".rodata", ".data.rel.ro")):
        return Kind.RODATA
    if name in _DATA_NAMES or name.startswith((".data", ".bss", ".tbss", ".tdata")):
        return Kind.DATA
    if sec.flags & SHF_EXECINSTR:
        return Kind.UNKNOWN
    if not sec.flags & SHF_WRITE and name.startswith("__") and not sec.relocs and sec.size == 0:
        return Kind.IGNORED
    return Kind.UNKNOWN


#: No special-section entry of any kernel is larger than this.
_MAX_ENTRY_SIZE = 64


@dataclass(frozen=True)
class EntrySize:
    size: int
    source: str  # "override", "sh_entsize", "relocations", "lockstep", "default"


def infer_entry_size(sec: Section, spec: TableSpec, *, override: int | None = None,
                     lockstep_entries: int | None = None) -> EntrySize:
    """The size of one entry of special section `sec`, read from the object itself."""
    if override:
        return EntrySize(override, "override")
    if sec.entsize:
        return EntrySize(sec.entsize, "sh_entsize")
    if spec.lockstep_with:
        if lockstep_entries:
            if sec.size % lockstep_entries:
                raise ValueError(f"{sec.name} ({sec.size} bytes) does not split into "
                                 f"{lockstep_entries} entries like {spec.lockstep_with}")
            return EntrySize(sec.size // lockstep_entries, "lockstep")
        return EntrySize(spec.default_size, "default")
    # The first field of every entry is a relocated address of the same kind (code, for all
    # tables but the printk index); later fields may be NULL or point elsewhere. The entry
    # size is the smallest stride at which every entry starts with a relocation of the first
    # one's kind. Kinds, not just offsets, keep an array of three pointers (old 24-byte jump
    # entries: code, target, key) from passing for three 8-byte entries.
    by_offset = {r.offset: _target_class(r) for r in sec.relocs}
    if 0 in by_offset:
        lead = by_offset[0]
        for stride in range(1, sec.size + 1):
            if all(by_offset.get(start) == lead for start in range(0, sec.size, stride)):
                break
        # One entry filling the whole table is plausible only for a small table.
        if stride < sec.size or sec.size <= _MAX_ENTRY_SIZE:
            return EntrySize(stride, "relocations")
    size_ = spec.default_size
    starts = {r.offset for r in sec.relocs}
    if sec.size % size_ == 0 and all(o in starts for o in range(0, sec.size, size_)):
        return EntrySize(size_, "default, checked against relocations")
    raise ValueError(f"cannot tell the entry size of {sec.name} from the object; give it "
                     f"with --entry-size {sec.name}=N")


def _target_class(reloc: Reloc) -> str:
    target = reloc.symbol.section
    if target is None:
        return "undefined"
    return "code" if target.is_text else str(classify(target))
