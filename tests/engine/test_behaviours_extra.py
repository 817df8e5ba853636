"""More behaviour tests for ``git_ksplice diff-object``, built from tiny C files at test time.

Like ``test_behaviours.py``, each test compiles an ORIG and a PATCHED version of a small,
self-contained C file (no ``#include``) with the kernel's code-generation flags
(``conftest.KERNEL_CFLAGS``), first checks that gcc produced the feature the test is about (a
section, a relocation type, a symbol), and only then runs the differ and checks its verdict,
its JSON document and the diff object it wrote.

The situations covered here: function pointers to a changed function, switch jump tables,
unknown special sections, alternatives whose replacement alone changed, ``--entry-size``, the
FILE/binding information of references, ``.cold`` parts jumping back into their parent,
calls into ``__init`` code, ``WARN_ONCE`` bookkeeping statics, changed read-only data, the
human-readable output, a new uncalled global function and a changed static notrace helper.

Several checks read the diff object with ``readelf -sW``/``readelf -rW`` rather than through
pyelftools, so that what binutils sees is what is asserted.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.conftest import (
    BUG_MACRO,
    EXIT_CHANGED,
    EXIT_ERROR,
    EXIT_REFUSED,
    EXIT_UNCHANGED,
    KERNEL_CFLAGS,
    REPO_ROOT,
    SOURCE_NAME,
    DiffRun,
    Workbench,
    c_source,
    calls_fentry,
    data_symbols,
    expect_changed,
    function_relocations,
    relocation_targets,
    section_bytes,
    section_sizes,
    text_symbols,
)


def expect_refused(run: DiffRun, *keywords: str) -> None:
    """Exit 65, no output object, and each of ``keywords`` named by the refusals."""
    assert run.returncode == EXIT_REFUSED, run.describe()
    assert run.data["output"] is None, run.describe()
    assert not run.out.exists(), "no output object may be written for a refused change"
    assert run.data["refusals"], run.describe()
    text = run.refusal_text()
    for word in keywords:
        assert word.lower() in text, f"refusal does not mention {word!r}\n{run.describe()}"


def changed_entry(run: DiffRun, name: str) -> dict:
    """The ``changed_functions`` entry for ``name``; fails the test when there is none."""
    entry = next((e for e in run.data["changed_functions"] if e["name"] == name), None)
    assert entry is not None, f"{name} is not in changed_functions\n{run.describe()}"
    return entry


# --------------------------------------------------------------------------------------------
# readelf views of an object


def _readelf(obj: Path, *flags: str) -> str:
    proc = subprocess.run(
        ["readelf", "-W", *flags, str(obj)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"readelf {flags} {obj} failed:\n{proc.stderr}"
    return proc.stdout


@dataclass(frozen=True)
class Sym:
    """One row of ``readelf -sW``."""

    num: int
    value: int
    size: int
    type: str
    bind: str
    ndx: str  # "UND", "ABS" or a section index
    name: str

    @property
    def defined(self) -> bool:
        return self.ndx != "UND"


@dataclass(frozen=True)
class Rel:
    """One row of ``readelf -rW``, with the symbol it refers to."""

    section: str  # the section the relocation applies to
    offset: int
    type: str
    sym: Sym
    addend: int

    @property
    def target(self) -> str:
        """The symbol's name, or the section's name for a section symbol."""
        return self.sym.name

    @property
    def lands_at(self) -> int:
        """Symbol value + addend: where in the target's section the reference points."""
        return self.sym.value + self.addend


_SYM_ROW = re.compile(r"^\s*(\d+):\s+([0-9a-f]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+\s+(\S+)\s*(.*?)\s*$")
_REL_HEADER = re.compile(r"^Relocation section '([^']+)'")
_REL_ROW = re.compile(r"^([0-9a-f]{8,16})\s+([0-9a-f]{8,16})\s+(\S+)")
_ADDEND = re.compile(r"\s([+-])\s([0-9a-f]+)\s*$")


def readelf_symbols(obj: Path) -> list[Sym]:
    """The ``.symtab`` rows of ``readelf -sW``, in table order."""
    syms = []
    for line in _readelf(obj, "-s").splitlines():
        m = _SYM_ROW.match(line)
        if m:
            num, value, size, typ, bind, ndx, name = m.groups()
            syms.append(Sym(int(num), int(value, 16), int(size, 0), typ, bind, ndx, name))
    return syms


def readelf_relocations(obj: Path) -> list[Rel]:
    """Every relocation of ``readelf -rW``; section symbols are named after their section."""
    syms = {s.num: s for s in readelf_symbols(obj)}
    sections = dict(re.findall(r"^\s*\[\s*(\d+)\]\s+(\S+)", _readelf(obj, "-S"), re.M))
    rels = []
    section = ""
    for line in _readelf(obj, "-r").splitlines():
        header = _REL_HEADER.match(line)
        if header:
            section = header.group(1).removeprefix(".rela").removeprefix(".rel")
            continue
        m = _REL_ROW.match(line)
        if not m:
            continue
        offset, info, typ = m.groups()
        sym = syms[int(info, 16) >> 32]
        a = _ADDEND.search(line)
        addend = 0 if a is None else int(a.group(2), 16) * (-1 if a.group(1) == "-" else 1)
        if sym.type == "SECTION":
            sym = Sym(
                sym.num,
                sym.value,
                sym.size,
                sym.type,
                sym.bind,
                sym.ndx,
                sections.get(sym.ndx, sym.name),
            )
        rels.append(Rel(section, int(offset, 16), typ, sym, addend))
    return rels


def function_rels(obj: Path, function: str) -> list[Rel]:
    """The relocations applied to the code of the defined function symbol ``function``."""
    syms = readelf_symbols(obj)
    funcs = [s for s in syms if s.name == function and s.type == "FUNC" and s.defined]
    assert funcs, f"{function} is not a function defined in {obj}"
    fn = funcs[0]
    sections = dict(re.findall(r"^\s*\[\s*(\d+)\]\s+(\S+)", _readelf(obj, "-S"), re.M))
    section = sections[fn.ndx]
    return [
        r
        for r in readelf_relocations(obj)
        if r.section == section and fn.value <= r.offset < fn.value + fn.size
    ]


# --------------------------------------------------------------------------------------------
# 1: function pointers


FUNC_POINTER = """
extern void register_cb(int (*fn)(int));
struct ops { int (*fn)(int); long pad; };
struct ops my_ops;
noinline int handler(int x) { return ext_work(x) + @K@; }
int setup(void)
{
    @STORE@;
    return handler(1) + @K@;
}
"""
# How setup() publishes handler's address: passed to a registration function (`mov $handler,
# %edi`) or stored into a global ops structure (`movq $handler, my_ops(%rip)`, where the
# immediate's relocation follows the displacement's).
STORES = {"register_cb": "register_cb(handler)", "ops-struct": "my_ops.fn = handler"}

CALL_TYPES = ("R_X86_64_PLT32", "R_X86_64_PC32")


@pytest.mark.parametrize("store", sorted(STORES))
def test_function_pointer_keeps_the_original(bench: Workbench, store: str) -> None:
    """A driver registers a callback that the same fix also changes: the call site uses the
    patched copy, but the stored address must stay the running kernel's `handler`, which
    ftrace redirects, so that function-pointer comparisons and unregistering keep working."""
    how = STORES[store]
    _, patched = bench.build(
        c_source(FUNC_POINTER, K=3, STORE=how), c_source(FUNC_POINTER, K=4, STORE=how)
    )
    before = [r for r in function_rels(patched, "setup") if r.target == "handler"]
    assert any(r.type in CALL_TYPES for r in before), before
    address = [r for r in before if r.type == "R_X86_64_32S"]
    assert len(address) == 1, f"gcc did not take handler's address with mov $handler: {before}"

    run = bench.diff()
    expect_changed(run)
    assert {"setup", "handler"} <= set(run.changed_names), run.describe()
    rels = [r for r in function_rels(run.out, "setup") if "handler" in r.target]
    calls = [r for r in rels if r.type in CALL_TYPES]
    addrs = [r for r in rels if r.type == "R_X86_64_32S"]
    assert calls, f"no call to handler left in OUT's setup: {rels}"
    assert addrs, f"no address of handler left in OUT's setup: {rels}"
    for r in calls:
        assert r.sym.defined, f"the call must go to OUT's copy of handler: {r}"
    for r in addrs:
        assert r.target == "handler" and not r.sym.defined, (
            f"the address taken must be the original (undefined) handler, got {r}"
        )
    syms = [s for s in readelf_symbols(run.out) if s.name == "handler"]
    assert any(s.defined and s.type == "FUNC" for s in syms), syms
    assert any(not s.defined and s.bind == "GLOBAL" for s in syms), syms


# --------------------------------------------------------------------------------------------
# 2: switch jump tables


SWITCH = """
int classify(int x)
{
    switch (x) {
    case 0: return ext_work(11);
    case 1: return ext_work(22) + 1;
    case 2: return ext_work(33) * 3;
    case 3: return ext_work(44) - 4;
    case 4: return ext_work(55) ^ 5;
    case 5: return ext_work(66) + 6;
    case 6: return ext_work(77) * 7;
    case 7: return ext_work(88) - 8;
    case 8: return ext_work(99) ^ 9;
    case 9: return ext_work(111) + @K@;
    default: return x;
    }
}
int bystander(int x) { return ext_work(x) + 3; }
"""


def test_switch_jump_table_follows_the_function(bench: Workbench) -> None:
    """A dense `switch` in a changed function compiles to a jump table in .rodata whose
    entries point into the function: the table must come along and point into OUT's copy,
    not into the running kernel's old code."""
    # Retpoline kernels build with -fno-jump-tables; the test flags do not, so gcc emits a
    # table (checked below rather than assumed).
    assert "-fno-jump-tables" not in KERNEL_CFLAGS
    _, patched = bench.build(c_source(SWITCH, K=10), c_source(SWITCH, K=12))
    tables = {
        r.section
        for r in readelf_relocations(patched)
        if r.section.startswith(".rodata") and r.target == ".text.classify"
    }
    assert tables, "gcc did not emit a jump table for classify"

    run = bench.diff()
    expect_changed(run)
    assert "classify" in run.changed_names, run.describe()
    assert "bystander" not in run.changed_names, run.describe()
    included_sections = {e["name"] for e in run.data["included"]} | {
        e["section"] for e in run.data["included"]
    }
    for table in tables:
        assert table in included_sections, f"{table} not in included\n{run.describe()}"
    out_rels = readelf_relocations(run.out)
    out_tables = {r.section for r in out_rels if r.section.startswith(".rodata")}
    assert tables <= out_tables, f"jump table not relocated in OUT: {out_rels}"
    for rel in out_rels:
        if rel.section in out_tables:
            assert rel.sym.defined, f"jump table entry points outside OUT: {rel}"
            assert "classify" in rel.target, f"jump table entry points elsewhere: {rel}"


LOOKUP_SWITCH = """
int pick(int x)
{
    switch (x) {
    case 0: return 11;
    case 1: return 27;
    case 2: return @V@;
    case 3: return 45;
    case 4: return 52;
    case 5: return 66;
    default: return ext_work(x);
    }
}
int bystander(int x) { return ext_work(x) + 3; }
"""


def test_switch_value_table_changes_with_its_function(bench: Workbench) -> None:
    """A `switch` that only returns constants becomes a lookup table of the values (gcc's
    CSWTCH.N object; clang's `.rodata..Lswitch.table.pick`, a section with no symbol in it,
    reached through its section symbol). A fix changes one value: the code is byte for
    byte the same, so the table's change must make its function changed and come along."""
    orig, patched = bench.build(c_source(LOOKUP_SWITCH, V=39), c_source(LOOKUP_SWITCH, V=40))
    assert section_bytes(orig, ".text.pick") == section_bytes(patched, ".text.pick")
    tables = {r.target for r in function_relocations(orig, "pick")} - {"__fentry__", "ext_work"}
    assert len(tables) == 1, tables

    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["pick"], run.describe()
    out_tables = {r.target for r in function_relocations(run.out, "pick")}
    assert any(t.startswith((".rodata", "CSWTCH")) for t in out_tables), out_tables
    assert 40 in struct.unpack("<6i", section_bytes(run.out, _only_rodata(run.out))), \
        "OUT's table does not hold the new value"


def _only_rodata(obj: Path) -> str:
    """The one read-only data section of ``obj``."""
    names = [n for n in section_sizes(obj) if n.startswith(".rodata")]
    assert len(names) == 1, names
    return names[0]


# --------------------------------------------------------------------------------------------
# 3: unknown special sections


MY_SITES = r"""
#define MY_SITE() asm volatile("1: nop\n .pushsection .my_sites,\"a\"\n .long 1b - .\n .popsection")
int site_one(int x) { MY_SITE(); return ext_work(x) + @K@; }
int site_two(int x) { MY_SITE(); return ext_work(x) * 2; }
"""


def test_unknown_special_section_fails_closed(bench: Workbench) -> None:
    """A new kernel adds a call-site table (.my_sites) that the differ has never heard of and
    a changed function has an entry in it: the differ cannot know which entries to carry, so
    it refuses naming the section instead of silently dropping them."""
    orig, patched = bench.build(c_source(MY_SITES, K=1), c_source(MY_SITES, K=2))
    for obj in (orig, patched):
        assert section_sizes(obj).get(".my_sites") == 8
        assert {t for _, t in relocation_targets(obj, ".my_sites")} == {
            ".text.site_one",
            ".text.site_two",
        }
    expect_refused(bench.diff(), ".my_sites")


# --------------------------------------------------------------------------------------------
# 4: alternatives


ALTERNATIVE = r"""
#define MY_ALT(repl)                                        \
    asm volatile("661: .byte 0x0f,0x1f,0x44,0x00,0x00\n"    \
                 "662:\n"                                   \
                 ".pushsection .altinstructions,\"a\"\n"    \
                 " .long 661b - .\n"                        \
                 " .long 6641f - .\n"                       \
                 " .word 123\n"                             \
                 " .byte 662b-661b\n"                       \
                 " .byte 6642f-6641f\n"                     \
                 ".popsection\n"                            \
                 ".pushsection .altinstr_replacement, \"ax\"\n" \
                 "6641: " repl "\n"                         \
                 "6642:\n"                                  \
                 ".popsection")
int alt_one(int x) { MY_ALT(@REPL@); return ext_work(x) + 1; }
int alt_two(int x) { MY_ALT(".byte 0x0f,0xae,0xe8"); return ext_work(x) * 2; }
"""
ALT_UD2 = '".byte 0x0f,0x0b"'
ALT_INT3 = '".byte 0xcc,0x90"'


def test_alternative_replacement_change(bench: Workbench) -> None:
    """The fix changes only the replacement instruction of an ALTERNATIVE() in one function:
    the function's own bytes are identical, yet it must be patched (apply_alternatives writes
    the replacement into it), carrying exactly its own .altinstructions entry and
    replacement bytes."""
    orig, patched = bench.build(
        c_source(ALTERNATIVE, REPL=ALT_UD2), c_source(ALTERNATIVE, REPL=ALT_INT3)
    )
    for obj in (orig, patched):
        assert section_sizes(obj).get(".altinstructions") == 24
        assert section_sizes(obj).get(".altinstr_replacement") == 5
    for fn in ("alt_one", "alt_two"):
        assert section_bytes(orig, f".text.{fn}") == section_bytes(patched, f".text.{fn}")
    assert section_bytes(orig, ".altinstr_replacement") != section_bytes(
        patched, ".altinstr_replacement"
    )

    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["alt_one"], run.describe()
    assert ".altinstructions" in changed_entry(run, "alt_one")["reason"], run.describe()
    assert "alt_two" not in text_symbols(run.out)
    assert section_sizes(run.out).get(".altinstructions") == 12
    assert section_bytes(run.out, ".altinstr_replacement") == b"\xcc\x90"


# --------------------------------------------------------------------------------------------
# 5: --entry-size


BUG_TABLE = BUG_MACRO + r"""
int bug_one(int x) { if (x < 0) MY_BUG(); return ext_work(x) + @K@; }
int bug_two(int x) { if (x > 100) MY_BUG(); return ext_work(x) * 2; }
"""


def test_entry_size_override(bench: Workbench) -> None:
    """A packager knows the kernel's struct bug_entry size and passes it with --entry-size;
    the differ uses and reports it, and rejects malformed values with a one-line error."""
    orig, patched = bench.build(c_source(BUG_TABLE, K=1), c_source(BUG_TABLE, K=2))
    for obj in (orig, patched):
        assert section_sizes(obj).get("__bug_table") == 24

    run = bench.diff(("--entry-size", "__bug_table=12"))
    expect_changed(run)
    assert run.changed_names == ["bug_one"], run.describe()
    special = run.special("__bug_table")
    assert special is not None, run.describe()
    assert special["entry_size"] == 12, run.describe()
    assert special["entry_size_source"] == "override", run.describe()
    assert special["kept"] == 1, run.describe()
    run.out.unlink()

    for bad in ("__bug_table=x", "nonsense"):
        run = bench.diff(("--entry-size", bad))
        assert run.returncode == EXIT_ERROR, f"--entry-size {bad}\n{run.describe()}"
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, f"--entry-size {bad}: not a one-line message\n{run.describe()}"
        assert "entry-size" in lines[0], run.describe()
        assert not run.out.exists()


# --------------------------------------------------------------------------------------------
# 6: references


REFERENCES = """
extern int ext(int);
static noinline int helper(int x) { return ext(x) * 3 + x; }
noinline int gfn(int x) { return ext(x + 1) - 2; }
int user(int x) { return helper(x) + gfn(x ^ 5) + ext(x) * @K@; }
"""


def test_references_keep_binding_and_file(bench: Workbench) -> None:
    """A changed function calls an unchanged static helper, an unchanged global and an
    extern: the module builder resolves the static one inside its FILE block (kallsyms
    sympos), so OUT and the JSON must keep binding and file for each reference."""
    _, patched = bench.build(c_source(REFERENCES, K=1), c_source(REFERENCES, K=2))
    targets = {r.target for r in function_relocations(patched, "user")}
    assert {".text.helper", "gfn", "ext"} <= targets, targets
    bind = {s.name: s.bind for s in readelf_symbols(patched)}
    assert (bind["helper"], bind["gfn"]) == ("LOCAL", "GLOBAL")

    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["user"], run.describe()
    refs = {r["name"]: r for r in run.data["references"]}
    for name in ("helper", "gfn", "ext"):
        assert name in refs, f"{name} missing from references\n{run.describe()}"
    assert refs["helper"]["binding"] == "local", refs["helper"]
    assert refs["helper"]["file"] == SOURCE_NAME, refs["helper"]
    assert refs["gfn"]["binding"] == "global", refs["gfn"]
    assert refs["ext"]["binding"] == "global", refs["ext"]

    syms = readelf_symbols(run.out)
    rows = [i for i, s in enumerate(syms) if s.name == "helper"]
    assert len(rows) == 1, syms
    helper = syms[rows[0]]
    assert (helper.ndx, helper.bind, helper.type) == ("UND", "LOCAL", "FUNC"), helper
    files = [s for s in syms[: rows[0]] if s.type == "FILE"]
    assert files and files[-1].name == SOURCE_NAME, f"helper is not in a {SOURCE_NAME} block"


# --------------------------------------------------------------------------------------------
# 7: .cold parts


COLD_RETURNS = """
extern void report_bad(int v) __cold;
int cold_parent(int x)
{
    int r = ext_work(x + @A@);
    if (unlikely(r < 0)) {
        report_bad(r);
        r = ext_work(-r);
    }
    return ext_work(r + @B@) * 2;
}
"""
# (A, B) in ORIG and PATCHED. "hot-tail" changes code after the point where the cold part
# rejoins its parent; "rejoin-moves" changes code before it (a longer immediate), so the cold
# part's bytes are the same but its jump back lands at another offset of the parent.
COLD_CHANGES = {
    "hot-tail": ({"A": 3, "B": 3}, {"A": 3, "B": 300}),
    "rejoin-moves": ({"A": 3, "B": 3}, {"A": 3000, "B": 3}),
}


@pytest.mark.parametrize("change", sorted(COLD_CHANGES))
def test_cold_part_jumping_back_into_changed_parent(bench: Workbench, change: str) -> None:
    """An error path split by gcc into `foo.cold` calls a cold reporting function and then
    jumps back into `foo`; the fix touches only the hot path, so `foo.cold` is not a changed
    function of its own but must come along, jumping back into OUT's copy of `foo`."""
    before, after = COLD_CHANGES[change]
    orig, patched = bench.build(c_source(COLD_RETURNS, **before), c_source(COLD_RETURNS, **after))
    if bench.compiler == "clang":
        assert "cold_parent.cold" not in text_symbols(orig)
        pytest.skip("clang does not split cold paths into functions of their own")
    rejoin = []
    for obj in (orig, patched):
        assert "cold_parent.cold" in text_symbols(obj), text_symbols(obj)
        rels = function_rels(obj, "cold_parent.cold")
        back = [r for r in rels if r.target == ".text.cold_parent"]
        assert len(back) == 1, "gcc's cold part does not jump back into its parent"
        rejoin.append(back[0].lands_at)
    assert (rejoin[0] == rejoin[1]) == (change == "hot-tail"), rejoin
    cold_section = ".text.unlikely.cold_parent"
    assert section_bytes(orig, cold_section) == section_bytes(patched, cold_section)
    assert section_bytes(orig, ".text.cold_parent") != section_bytes(patched, ".text.cold_parent")

    run = bench.diff()
    expect_changed(run)
    assert "cold_parent" in run.changed_names, run.describe()
    assert "cold_parent.cold" not in run.changed_names, run.describe()
    assert "cold_parent.cold" in run.included_names, run.describe()
    assert {"cold_parent", "cold_parent.cold"} <= text_symbols(run.out)
    back = [r for r in function_rels(run.out, "cold_parent.cold") if "cold_parent" in r.target]
    assert back and all(r.sym.defined for r in back), f"cold part jumps to the old parent: {back}"
    assert all(r.lands_at == rejoin[1] for r in back), (back, rejoin)


# --------------------------------------------------------------------------------------------
# 8: calls into __init code


INIT_CALL = """
__init noinline int early(void) { return ext_work(42); }
int boot_setup(void) { return early(); }
int runtime(int x) { return ext_work(x) + @CALL@; }
"""


def test_call_into_init_code_is_refused(bench: Workbench) -> None:
    """The fix makes a runtime function call an __init function, whose .init.text was freed
    after boot: calling it from a livepatch would jump into freed memory, so it is refused."""
    orig, patched = bench.build(c_source(INIT_CALL, CALL=1), c_source(INIT_CALL, CALL="early()"))
    assert section_bytes(orig, ".init.text") == section_bytes(patched, ".init.text")
    assert "early" in {r.target for r in function_relocations(patched, "runtime")}
    assert "early" not in {r.target for r in function_relocations(orig, "runtime")}
    expect_refused(bench.diff(), "early", "boot")


# --------------------------------------------------------------------------------------------
# 9: WARN_ONCE bookkeeping


ONCE = """
int warner(int x)
{
    static _Bool __already_done __attribute__((section(".data.once")));
    if (!__already_done) {
        __already_done = 1;
        printk("x");
    }
    return ext_work(x) + @K@;
}
"""


def test_warn_once_flag_gets_a_fresh_copy(bench: Workbench) -> None:
    """A function containing WARN_ONCE/DO_ONCE_LITE (a `__already_done` flag in .data.once)
    changes: the flag is per-call-site bookkeeping, so the patch gets its own fresh copy."""
    orig, patched = bench.build(c_source(ONCE, K=1), c_source(ONCE, K=2))
    for obj in (orig, patched):
        # gcc names the flag __already_done.N, clang warner.__already_done.
        flags = [
            s
            for s in readelf_symbols(obj)
            if "__already_done" in s.name and s.type == "OBJECT"
        ]
        assert len(flags) == 1, flags
        assert section_sizes(obj).get(".data.once") == 1

    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["warner"], run.describe()
    entries = [e for e in run.data["included"] if "__already_done" in e["name"]]
    assert entries, f"__already_done not in included\n{run.describe()}"
    assert entries[0]["why"].startswith("fresh copy"), run.describe()


SITE_STATICS = """
struct ratelimit_state { int interval; int burst; int printed; };
struct lock_class_key { char dummy; };
extern int ___ratelimit(struct ratelimit_state *rs, const char *func);
extern void lockdep_init(void *lock, struct lock_class_key *key);
int noisy(void *lock, int x)
{
    static struct ratelimit_state _rs = { 5 * 100, 10, 0 };
    static struct lock_class_key __key;
    lockdep_init(lock, &__key);
    if (___ratelimit(&_rs, __func__))
        printk("noisy");
    return ext_work(x) + @K@;
}
"""


def test_per_site_statics_get_fresh_copies(bench: Workbench) -> None:
    """printk_ratelimited's `_rs` and spin_lock_init's lockdep `__key` are per-call-site
    statics (gcc names them _rs.N and __key.N, clang noisy._rs and noisy.__key): a changed
    function gets fresh ones, under either compiler's naming."""
    bench.build(c_source(SITE_STATICS, K=1), c_source(SITE_STATICS, K=2))
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["noisy"], run.describe()
    for static in ("_rs", "__key"):
        entries = [e for e in run.data["included"]
                   if e["name"].split(".")[0 if bench.compiler == "gcc" else -1] == static]
        assert entries, f"{static} not in included\n{run.describe()}"
        assert entries[0]["why"].startswith("fresh copy"), run.describe()
    refs = [r for r in function_relocations(run.out, "noisy") if r.target.endswith(
        ("_rs", "__key")) or "_rs." in r.target or "__key." in r.target]
    assert refs and all(r.defined for r in refs), refs


# --------------------------------------------------------------------------------------------
# 10: changed read-only data


RODATA = """
static const int table[4] = { 1, 2, @T2@, 4 };
int lookup(int i) { return table[i & 3] + ext_work(i); }
int bystander(int x) { return ext_work(x) + 3; }
"""


def test_changed_rodata_spreads_to_its_users(bench: Workbench) -> None:
    """A fix corrects one entry of a `static const` table: the code of its user is byte
    for byte the same, but it must be patched to read a new copy of the table."""
    orig, patched = bench.build(c_source(RODATA, T2=3), c_source(RODATA, T2=30))
    assert "table" in data_symbols(orig), "the compiler folded `table` away"
    # gcc gives the table a section of its own; clang puts it in a mergeable constant
    # section (.rodata.cst16), named only by its section symbol in lookup's relocation.
    table = {"gcc": ".rodata.table", "clang": ".rodata.cst16"}[bench.compiler]
    assert table in {r.target for r in function_relocations(orig, "lookup")}
    assert section_bytes(orig, ".text.lookup") == section_bytes(patched, ".text.lookup")
    assert section_bytes(orig, table) != section_bytes(patched, table)

    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["lookup"], run.describe()
    assert "table" in changed_entry(run, "lookup")["reason"], run.describe()
    entry = run.included("table")
    assert entry is not None and entry["kind"] == "object", run.describe()
    assert "table" in data_symbols(run.out)


# --------------------------------------------------------------------------------------------
# 11: human output


HUMAN = """
int shown(int x) { return ext_work(x) * @K@; }
"""


def run_human(orig: Path, patched: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Run the differ without --json, as a person at a terminal would."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "git_ksplice", "diff-object", str(orig), str(patched)]
    return subprocess.run(
        [*cmd, "-o", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_human_output_without_json(tmp_path: Path) -> None:
    """A developer runs `git ksplice diff-object` by hand: the verdict goes to stderr and
    stdout stays empty, both for an identical pair and for a changed one."""
    same = Workbench(tmp_path / "same")
    orig, patched = same.build(c_source(HUMAN, K=3), c_source(HUMAN, K=3))
    assert orig.read_bytes() == patched.read_bytes()
    proc = run_human(same.orig, same.patched, same.out)
    what = f"exit={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == EXIT_UNCHANGED, what
    assert "No changes detected." in proc.stderr, what
    assert proc.stdout == "", what
    assert "Traceback" not in proc.stderr, what

    changed = Workbench(tmp_path / "changed")
    changed.build(c_source(HUMAN, K=3), c_source(HUMAN, K=5))
    proc = run_human(changed.orig, changed.patched, changed.out)
    what = f"exit={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == EXIT_CHANGED, what
    assert "shown" in proc.stderr and "Wrote" in proc.stderr, what
    assert proc.stdout == "", what
    assert changed.out.is_file(), what


# --------------------------------------------------------------------------------------------
# 12: new uncalled global function


NEW_GLOBAL_ORIG = """
int existing(int x) { return ext_work(x) + 1; }
"""
NEW_GLOBAL_PATCHED = (
    NEW_GLOBAL_ORIG
    + """
int brand_new_helper(int x) { return ext_work(x) * 5 - 1; }
"""
)


def test_new_uncalled_global_function(bench: Workbench) -> None:
    """The fix adds a new non-static helper that other objects will call later; nobody in
    this object calls it, yet it is new code that the patch must define globally."""
    orig, patched = bench.build(c_source(NEW_GLOBAL_ORIG), c_source(NEW_GLOBAL_PATCHED))
    assert "brand_new_helper" not in text_symbols(orig)
    assert "brand_new_helper" in text_symbols(patched)

    run = bench.diff()
    expect_changed(run)
    assert run.new_names == ["brand_new_helper"], run.describe()
    assert run.changed_names == [], run.describe()
    rows = [s for s in readelf_symbols(run.out) if s.name == "brand_new_helper"]
    assert any(s.defined and s.bind == "GLOBAL" and s.type == "FUNC" for s in rows), rows


# --------------------------------------------------------------------------------------------
# 13: changed static notrace helper with two callers


NOTRACE_TWO_CALLERS = """
static notrace noinline int raw_calc(int x, int y) { return ext_work(x) * @K@ + y; }
int caller_a(int x) { return raw_calc(x, ext_work(x)) + 1; }
int caller_b(int x) { return raw_calc(x + 7, x) - ext_work(2); }
int bystander(int x) { return ext_work(x) - 1; }
"""


def test_changed_notrace_helper_patches_both_callers(bench: Workbench) -> None:
    """A static noinline notrace helper (no __fentry__, so ftrace cannot redirect it)
    changes and has two traceable callers: both callers are replaced and carry a fresh copy
    of the helper, and the differ says it was included for lack of __fentry__."""
    orig, patched = bench.build(
        c_source(NOTRACE_TWO_CALLERS, K=5), c_source(NOTRACE_TWO_CALLERS, K=6)
    )
    for obj in (orig, patched):
        assert "raw_calc" in text_symbols(obj), text_symbols(obj)
        assert not calls_fentry(obj, "raw_calc")
        for caller in ("caller_a", "caller_b"):
            assert calls_fentry(obj, caller)
            assert ".text.raw_calc" in {r.target for r in function_relocations(obj, caller)}
    for caller in ("caller_a", "caller_b"):
        assert section_bytes(orig, f".text.{caller}") == section_bytes(patched, f".text.{caller}")

    run = bench.diff()
    expect_changed(run)
    assert {"caller_a", "caller_b"} <= set(run.changed_names), run.describe()
    assert "bystander" not in run.changed_names, run.describe()
    assert "raw_calc" not in run.changed_names, run.describe()
    entry = run.included("raw_calc")
    assert entry is not None, run.describe()
    assert "__fentry__" in entry["why"], run.describe()
    assert "raw_calc" in text_symbols(run.out)
