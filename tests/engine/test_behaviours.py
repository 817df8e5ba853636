"""Behaviour tests for ``git_ksplice diff-object``, built from tiny C files at test time.

Each test models one situation a kernel livepatch build meets in practice (a changed function
body, a changed string, a compiler-renamed clone, an exception-table entry, a ``__LINE__`` that
moved, a change the kernel cannot live-patch, ...). The ORIG and PATCHED sources are compiled
with gcc and the kernel's code-generation flags (see ``conftest.KERNEL_CFLAGS``), so the
objects have the same shape as a real ``foo.o``: one section per function and data object,
``call __fentry__`` prologues and ``__mcount_loc``. Before asserting on the differ, each test
checks that gcc really produced the feature it relies on, so a compiler change shows up as a
skip or a precondition failure rather than as a bogus differ failure.

Exit codes and the JSON document are the differ's contract: 0 changed, 65 refused,
66 unchanged, 1 bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.conftest import (
    BUG_MACRO,
    EXIT_ERROR,
    EXIT_REFUSED,
    EXIT_UNCHANGED,
    DiffRun,
    Workbench,
    c_source,
    calls_fentry,
    compile_c,
    data_symbols,
    expect_changed,
    function_relocations,
    relocation_targets,
    run_differ,
    section_bytes,
    section_sizes,
    sections_containing,
    text_symbols,
)


def expect_no_output(run: DiffRun, code: int) -> None:
    """Exit ``code`` (65 or 66) and no output object left behind."""
    assert run.returncode == code, run.describe()
    assert run.data["output"] is None, run.describe()
    assert not run.out.exists(), "no output object may be written unless there is a change"


def expect_refused(run: DiffRun, *keywords: str) -> None:
    """Exit 65; each of ``keywords`` appears in the refusals (symbol, section or reason)."""
    expect_no_output(run, EXIT_REFUSED)
    assert run.data["refusals"], run.describe()
    text = run.refusal_text()
    for word in keywords:
        assert word.lower() in text, f"refusal does not mention {word!r}\n{run.describe()}"


def require_symbols(obj: Path, *names: str) -> None:
    """Skip when the compiler did not emit the clone symbols the test is about (clang makes
    no `.isra`, `.constprop`, `.part` or `.cold` functions)."""
    missing = [n for n in names if n not in text_symbols(obj)]
    if missing:
        pytest.skip(f"the compiler did not produce {missing} in {obj} "
                    f"(have {sorted(text_symbols(obj))})")


# --------------------------------------------------------------------------------------------
# 1-4: ordinary changes


BODY_CHANGE = """
int triple(int x) { return ext_work(x) * @K@; }
int keep_a(int x) { return ext_work(x) + 1; }
static noinline int keep_b(int x, int y) { return ext_work(x) - y; }
int use_b(int x) { return keep_b(x, ext_work(x)) * 2; }
"""


def test_body_change_replaces_only_that_function(bench: Workbench) -> None:
    """A fix edits the arithmetic of one function; only that function goes into the patch."""
    orig, _ = bench.build(c_source(BODY_CHANGE, K=3), c_source(BODY_CHANGE, K=4))
    unchanged = text_symbols(orig) - {"triple"}
    assert unchanged >= {"keep_a", "keep_b", "use_b"}
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["triple"], run.describe()
    assert run.new_names == [], run.describe()
    assert not unchanged & text_symbols(run.out), "unchanged functions were copied into OUT"


STRING_CHANGE = """
int greet(int x) { printk("@GREETING@ from greet %d\\n", x); return ext_work(x); }
int shout(int x) { printk("unrelated message %d\\n", x); return ext_work(x + 1); }
"""


def test_string_literal_change(bench: Workbench) -> None:
    """Only a printk format string changes; the code bytes and relocations stay identical
    (same length, same offset in gcc's .rodata.<fn>.str1.1 section), so the differ must
    compare the contents of the strings the function refers to."""
    orig, patched = bench.build(
        c_source(STRING_CHANGE, GREETING="hello"), c_source(STRING_CHANGE, GREETING="howdy")
    )
    assert sections_containing(orig, b"hello from greet")
    assert sections_containing(patched, b"howdy from greet")
    assert section_bytes(orig, ".text.greet") == section_bytes(patched, ".text.greet")
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["greet"], run.describe()
    assert "shout" not in text_symbols(run.out)
    assert sections_containing(run.out, b"howdy from greet %d\n"), "new string missing in OUT"


NEW_FUNCTION_ORIG = """
int frob(int x) { return ext_work(x) + 1; }
int other(int x) { return ext_work(x) * 7; }
"""
NEW_FUNCTION_PATCHED = """
static noinline int frob_extra(int x, int y) { return ext_work(x ^ y) + y; }
int frob(int x) { return ext_work(x) + frob_extra(x, ext_work(2)); }
int other(int x) { return ext_work(x) * 7; }
"""


def test_new_static_helper(bench: Workbench) -> None:
    """The fix factors code into a new static noinline helper called from an existing
    function: the helper is new, the caller changed."""
    _, patched = bench.build(c_source(NEW_FUNCTION_ORIG), c_source(NEW_FUNCTION_PATCHED))
    require_symbols(patched, "frob_extra")
    run = bench.diff()
    expect_changed(run)
    assert run.new_names == ["frob_extra"], run.describe()
    assert run.changed_names == ["frob"], run.describe()
    assert {"frob", "frob_extra"} <= text_symbols(run.out)
    assert "other" not in text_symbols(run.out)


NEW_DATA_ORIG = """
int bump(int x) { return ext_work(x) + 1; }
"""
NEW_DATA_PATCHED = """
static int newvar = 5;
int bump(int x) { newvar += x; return ext_work(newvar) + 1; }
"""


def test_new_static_data_object(bench: Workbench) -> None:
    """The fix adds a file-scope static variable used by a changed function; the new
    variable has no original to refer to, so it is defined in the patch."""
    _, patched = bench.build(c_source(NEW_DATA_ORIG), c_source(NEW_DATA_PATCHED))
    assert "newvar" in data_symbols(patched), "gcc folded `newvar` away"
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["bump"], run.describe()
    entry = run.included("newvar")
    assert entry is not None and entry["kind"] == "object", run.describe()
    assert "newvar" in data_symbols(run.out)


# --------------------------------------------------------------------------------------------
# 5-7: data


CHANGED_INIT = """
static int limit = @LIMIT@;
void set_limit(int v) { limit = v; }
int clamp(int x) { return x > limit ? limit : ext_work(x); }
"""


def test_changed_static_initialiser_is_refused(bench: Workbench) -> None:
    """Only the initial value of existing static data changes: a livepatch cannot rewrite
    data that is already live, so the change is refused naming the variable."""
    orig, patched = bench.build(c_source(CHANGED_INIT, LIMIT=10), c_source(CHANGED_INIT, LIMIT=20))
    assert "limit" in data_symbols(orig), "gcc folded `limit` away"
    for fn in ("set_limit", "clamp"):  # the code is the same; only .data.limit differs
        assert section_bytes(orig, f".text.{fn}") == section_bytes(patched, f".text.{fn}")
    expect_refused(bench.diff(), "limit")


RESIZED_GLOBAL = """
int table[@N@] = { 1, 2, 3, 4 };
int lookup(int i) { return table[i & 3] + ext_work(i); }
"""


def test_resized_global_is_refused(bench: Workbench) -> None:
    """A global array grows; code elsewhere in the kernel sized it by the old layout, so the
    change is refused naming the array."""
    orig, patched = bench.build(c_source(RESIZED_GLOBAL, N=4), c_source(RESIZED_GLOBAL, N=8))
    assert section_bytes(orig, ".text.lookup") == section_bytes(patched, ".text.lookup")
    expect_refused(bench.diff(), "table")


STATIC_LOCAL = """
int counted(int x) { static int calls; calls++; return ext_work(x) @OP@ calls; }
int bystander(int x) { return ext_work(x) + 3; }
"""
# A second function with its own `static int calls`, defined after `counted`: gcc 12 numbers
# static locals so that `counted`'s variable turns from calls.0 into calls.1.
STATIC_LOCAL_SIBLING = """
int newer(int x) { static int calls; calls += 3; return ext_work(x) + calls; }
"""


@pytest.mark.parametrize("renumbered", [False, True], ids=["same-name", "renumbered"])
def test_static_local_stays_a_reference(bench: Workbench, renumbered: bool) -> None:
    """A function with a `static int calls` counter is fixed elsewhere in its body: the
    patched code must keep using the live counter, not a fresh zeroed copy. In the
    "renumbered" case a new function with its own `calls` shifts gcc's numbering, so the
    variables must be matched by owner, not by the name calls.0/calls.1 (clang names them
    by owner, counted.calls and newer.calls: nothing to renumber, the same must hold)."""
    orig = c_source(STATIC_LOCAL, OP="+")
    patched = c_source(STATIC_LOCAL + (STATIC_LOCAL_SIBLING if renumbered else ""), OP="-")
    orig_obj, patched_obj = bench.build(orig, patched)
    assert {"gcc": "calls.0", "clang": "counted.calls"}[bench.compiler] in data_symbols(orig_obj)
    if renumbered and bench.compiler == "gcc":
        targets = {t for _, t in relocation_targets(patched_obj, ".text.counted")}
        if not any(t.endswith("calls.1") for t in targets):
            pytest.skip(f"gcc did not renumber the static local of counted: {targets}")
    run = bench.diff()
    expect_changed(run)
    assert "counted" in run.changed_names, run.describe()
    assert run.data["refusals"] == [], run.describe()
    # counted's accesses to its counter must all go to an undefined symbol (resolved against
    # the running kernel), never to storage defined in OUT.
    refs = [r for r in function_relocations(run.out, "counted") if "calls" in r.target]
    assert refs and not any(r.defined for r in refs), refs
    defined = {s for s in data_symbols(run.out) if "calls" in s}
    if renumbered:
        assert run.new_names == ["newer"], run.describe()
        # newer's counter is genuinely new, so it is defined in OUT; only that one is.
        assert len(defined) == 1, f"expected exactly newer's counter in OUT, got {defined}"
        refs = [r for r in function_relocations(run.out, "newer") if "calls" in r.target]
        assert refs and all(r.defined for r in refs), refs
    else:
        assert not defined, f"static local copied into OUT: {defined}"


# --------------------------------------------------------------------------------------------
# 8: compiler-renamed clones (.isra / .constprop / .part / .cold)

CLONE_ISRA = """
struct cfg { int a; int b; int c; int d; long pad[8]; };
static noinline int cfg_weight(struct cfg *c) { return ext_work(c->b) * @K@ + 3; }
int cfg_user(int x)
{
    struct cfg c = { .a = x, .b = x + 1, .c = x + 2 };
    return cfg_weight(&c) + ext_work(c.a);
}
int unrelated(int x) { return ext_work(x) * @U@; }
"""
CLONE_CONSTPROP = """
static noinline int scale(int v, int mul) { return ext_work(v) * mul + ext_work(mul + @K@); }
int scale_a(int x) { return scale(x, 13); }
int scale_b(int x) { return scale(x + 1, 13); }
int unrelated(int x) { return ext_work(x) * @U@; }
"""
CLONE_PART = """
static int slow_lookup(int x)
{
    if (likely(x == 0))
        return 0;
    x = ext_work(x); x = ext_work(x + 1); x = ext_work(x * 2);
    x = ext_work(x ^ 3); x = ext_work(x - 7); x = ext_work(x + 9);
    printk("slow lookup %d\\n", x);
    x = ext_work(x); x = ext_work(x + 1); x = ext_work(x * @K@);
    return x;
}
int part_a(int x) { return slow_lookup(x) + 1; }
int part_b(int x) { return slow_lookup(x * 2) + 2; }
int part_c(int x) { return slow_lookup(x * 3) + 3; }
int unrelated(int x) { return ext_work(x) * @U@; }
"""
CLONE_COLD = """
extern void report_bad(const char *msg, int v) __cold;
int cold_fn(int x)
{
    int r = ext_work(x);
    if (r < 0) {
        report_bad("bad value", r);
        printk("cold_fn failed %d\\n", r);
        return -@K@;
    }
    return r * 2 + ext_work(r);
}
int unrelated(int x) { return ext_work(x) * @U@; }
"""


@dataclass(frozen=True)
class Clone:
    """One kind of gcc clone and what a change inside its logic must produce."""

    source: str  # C body with @K@ (the clone's own logic) and @U@ (the unrelated function)
    symbol: str  # the clone gcc emits
    section: str  # the clone's text section
    k_values: tuple[int, int]  # @K@ in ORIG and PATCHED for the "logic change" case
    reported: str  # the name changed_functions must carry when the logic changes
    in_out: tuple[str, ...]  # text symbols OUT must then define


CLONES: dict[str, Clone] = {
    "isra": Clone(
        source=CLONE_ISRA,
        symbol="cfg_weight.isra.0",
        section=".text.cfg_weight.isra.0",
        k_values=(7, 9),
        reported="cfg_weight.isra.0",
        in_out=("cfg_weight.isra.0",),
    ),
    "constprop": Clone(
        source=CLONE_CONSTPROP,
        symbol="scale.constprop.0",
        section=".text.scale.constprop.0",
        k_values=(0, 1),
        reported="scale.constprop.0",
        in_out=("scale.constprop.0",),
    ),
    "part": Clone(
        source=CLONE_PART,
        symbol="slow_lookup.part.0",
        section=".text.slow_lookup.part.0",
        k_values=(2, 5),
        reported="slow_lookup.part.0",
        in_out=("slow_lookup.part.0",),
    ),
    # foo.cold has no __fentry__ of its own and is only entered by jumps from foo: the patch
    # replaces the parent and carries the child along.
    "cold": Clone(
        source=CLONE_COLD,
        symbol="cold_fn.cold",
        section=".text.unlikely.cold_fn",
        k_values=(22, 5),
        reported="cold_fn",
        in_out=("cold_fn", "cold_fn.cold"),
    ),
}


@pytest.mark.parametrize("kind", sorted(CLONES))
def test_clone_untouched_by_unrelated_change(bench: Workbench, kind: str) -> None:
    """A fix in an unrelated function must not drag in a gcc clone (foo.isra.N,
    foo.constprop.N, foo.part.N, foo.cold) whose code is the same in both builds."""
    clone = CLONES[kind]
    k = clone.k_values[0]
    orig, patched = bench.build(c_source(clone.source, K=k, U=3), c_source(clone.source, K=k, U=4))
    require_symbols(orig, clone.symbol)
    require_symbols(patched, clone.symbol)
    assert section_bytes(orig, clone.section) == section_bytes(patched, clone.section)
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["unrelated"], run.describe()
    assert run.new_names == [], run.describe()
    assert not set(clone.in_out) & text_symbols(run.out)


@pytest.mark.parametrize("kind", sorted(CLONES))
def test_clone_logic_change(bench: Workbench, kind: str) -> None:
    """The fix is inside the code gcc moved into a clone; the clone (or, for .cold, its
    parent) is changed and everything needed to run it is in the patch."""
    clone = CLONES[kind]
    k_orig, k_patched = clone.k_values
    orig, patched = bench.build(
        c_source(clone.source, K=k_orig, U=3), c_source(clone.source, K=k_patched, U=3)
    )
    require_symbols(orig, clone.symbol)
    require_symbols(patched, clone.symbol)
    assert section_bytes(orig, clone.section) != section_bytes(patched, clone.section)
    if kind == "cold":
        assert calls_fentry(patched, "cold_fn")
        assert not calls_fentry(patched, "cold_fn.cold")
    run = bench.diff()
    expect_changed(run)
    assert clone.reported in run.changed_names, run.describe()
    assert "unrelated" not in run.changed_names, run.describe()
    assert set(clone.in_out) <= text_symbols(run.out)
    if kind == "cold":
        assert "cold_fn.cold" in run.included_names, run.describe()


RENUMBERED_CONSTPROP = """
static noinline __attribute__((optimize("ipa-cp-clone"))) int sum_n(const int *buf, int n)
{
    int s = 0;
    for (int i = 0; i < n; i++)
        s += buf[i] * (i + 1);
    return s;
}
int sum_any(const int *b, int n) { return sum_n(b, n); }
int sum_four(const int *b) { return sum_n(b, 4); }
"""
RENUMBERED_CONSTPROP_EXTRA = """
int sum_eight(const int *b) { return sum_n(b, 8); }
"""


def test_renumbered_clone_matched_by_content(bench: Workbench) -> None:
    """A new caller (sum_eight, n=8) makes gcc create a second constprop clone of sum_n,
    and the existing n=4 clone used by sum_four is renumbered from sum_n.constprop.0 to
    sum_n.constprop.1 with byte-identical code. Matched by name, sum_four would look changed
    (its call target was renamed) and the new n=8 clone would look like a changed version of
    the live n=4 sum_n.constprop.0. Matched by content, only sum_eight and the n=8 clone
    are new and nothing that exists in the running kernel changes.

    At -O2 gcc 12 clones per constant only when every caller agrees (-fipa-cp-clone is an
    -O3 option), so `optimize("ipa-cp-clone")` on sum_n is used to get two clones of one
    function, which is what makes the per-function clone counter move.
    """
    orig = c_source(RENUMBERED_CONSTPROP)
    patched = c_source(RENUMBERED_CONSTPROP + RENUMBERED_CONSTPROP_EXTRA)
    orig_obj, patched_obj = bench.build(orig, patched)
    require_symbols(orig_obj, "sum_n.constprop.0")
    require_symbols(patched_obj, "sum_n.constprop.0", "sum_n.constprop.1")
    callee = {t for _, t in relocation_targets(patched_obj, ".text.sum_four")}
    if not any(t.endswith("sum_n.constprop.1") for t in callee):
        pytest.skip(f"gcc did not renumber sum_four's clone: {callee}")
    assert section_bytes(orig_obj, ".text.sum_n.constprop.0") == section_bytes(
        patched_obj, ".text.sum_n.constprop.1"
    )
    run = bench.diff()
    expect_changed(run)
    for name in ("sum_four", "sum_any", "sum_n", "sum_n.constprop.1", "sum_n.constprop.0"):
        assert name not in run.changed_names, run.describe()
    assert sorted(run.new_names) == ["sum_eight", "sum_n.constprop.0"], run.describe()


# --------------------------------------------------------------------------------------------
# 9: __LINE__ moves

LINE_USERS = {
    "warn_printk": """
int warn_fn(int x)
{
    if (unlikely(x < 0))
        __warn_printk("bad value at line %d\\n", __LINE__);
    return ext_work(x);
}
""",
    "might_sleep": """
int sleepy_fn(int x)
{
    __might_sleep(__FILE__, __LINE__);
    return ext_work(x) + 2;
}
""",
}


@pytest.mark.parametrize("user", sorted(LINE_USERS))
def test_line_number_only_change_is_unchanged(bench: Workbench, user: str) -> None:
    """A patch adds lines above a function that embeds __LINE__ (WARN, might_sleep): only
    the line-number immediate differs, which is not a change worth patching."""
    body = LINE_USERS[user]
    orig = c_source(body)
    patched = c_source("\n/*\n * A comment added by the fix, above the function.\n */\n" + body)
    orig_obj, patched_obj = bench.build(orig, patched)
    section = ".text.warn_fn" if user == "warn_printk" else ".text.sleepy_fn"
    before, after = section_bytes(orig_obj, section), section_bytes(patched_obj, section)
    assert len(before) == len(after) and before != after, "__LINE__ should move the immediate"
    run = bench.diff()
    expect_no_output(run, EXIT_UNCHANGED)
    assert run.changed_names == [] and run.new_names == [], run.describe()


# --------------------------------------------------------------------------------------------
# 10, 11, 13: special sections


BUG_TABLE = BUG_MACRO + r"""
int bug_one(int x)
{
    if (x < 0)
        MY_BUG();
    return ext_work(x) + @K@;
}
int bug_two(int x)
{
    if (x > 100)
        MY_BUG();
    return ext_work(x) * 2;
}
"""


def test_bug_table_entry_follows_changed_function(bench: Workbench) -> None:
    """Two functions contain BUG() (x86 _BUG_FLAGS: ud2 plus a 12-byte __bug_table entry);
    patching one carries exactly its own entry."""
    orig, patched = bench.build(c_source(BUG_TABLE, K=1), c_source(BUG_TABLE, K=2))
    for obj in (orig, patched):
        assert section_sizes(obj).get("__bug_table") == 24
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["bug_one"], run.describe()
    special = run.special("__bug_table")
    assert special is not None, run.describe()
    assert (special["entry_size"], special["entries"], special["kept"]) == (12, 2, 1)
    assert section_sizes(run.out).get("__bug_table") == 12
    targets = relocation_targets(run.out, "__bug_table")
    assert targets and "bug_one" in targets[0][1], targets
    assert not any("bug_two" in t for _, t in targets), targets


EX_TABLE = r"""
static inline int load_nofault(const int *p)
{
    int v;
    asm volatile("1: movl (%1), %0\n"
                 "2:\n"
                 ".pushsection __ex_table,\"a\"\n"
                 ".balign 4\n"
                 ".long 1b - .\n"
                 ".long 2b - .\n"
                 ".long 0\n"
                 ".popsection"
                 : "=r"(v) : "r"(p) : "memory");
    return v;
}
int ex_one(const int *p) { return load_nofault(p) + ext_work(@K@); }
int ex_two(const int *p) { return load_nofault(p + 1) * ext_work(2); }
"""


def test_exception_table_entry_follows_changed_function(bench: Workbench) -> None:
    """Two functions do a fault-tolerant user/kernel load with an __ex_table entry;
    patching one carries exactly its own 12-byte entry."""
    orig, patched = bench.build(c_source(EX_TABLE, K=1), c_source(EX_TABLE, K=3))
    for obj in (orig, patched):
        assert section_sizes(obj).get("__ex_table") == 24
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["ex_one"], run.describe()
    special = run.special("__ex_table")
    assert special is not None, run.describe()
    assert (special["entry_size"], special["entries"], special["kept"]) == (12, 2, 1)
    assert section_sizes(run.out).get("__ex_table") == 12
    targets = relocation_targets(run.out, "__ex_table")
    assert targets and all("ex_one" in t for _, t in targets), targets


JUMP_LABEL = r"""
struct static_key { int enabled; };
struct static_key feature_key;
static inline __attribute__((always_inline)) _Bool feature_on(void)
{
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"
             ".pushsection __jump_table, \"aw\"\n"
             ".balign 8\n"
             ".long 1b - .\n"
             ".long %l[l_yes] - .\n"
             ".quad %c0 - .\n"
             ".popsection"
             : : "i"(&feature_key) : : l_yes);
    return 0;
l_yes:
    return 1;
}
int jl_one(int x) { if (feature_on()) return ext_work(x) + @K@; return x; }
int jl_two(int x) { if (feature_on()) return ext_work(x) * 3; return x - 1; }
"""


@pytest.mark.parametrize("target", ["vmlinux", "module"])
def test_jump_label_in_changed_function(bench: Workbench, target: str) -> None:
    """A changed function contains a static branch (arch_static_branch's __jump_table
    entry). Against vmlinux the patch carries the one entry and refers to the live key;
    when the object belongs to a module that defines the key, the change is refused."""
    orig, patched = bench.build(c_source(JUMP_LABEL, K=1), c_source(JUMP_LABEL, K=2))
    for obj in (orig, patched):
        assert section_sizes(obj).get("__jump_table") == 32
        assert "feature_key" in data_symbols(obj)
    run = bench.diff(("--target", "mymod") if target == "module" else ())
    if target == "module":
        expect_no_output(run, EXIT_REFUSED)
        text = run.refusal_text()
        assert "jump label" in text or "static key" in text, run.describe()
        return
    expect_changed(run)
    assert run.changed_names == ["jl_one"], run.describe()
    special = run.special("__jump_table")
    assert special is not None, run.describe()
    assert (special["entry_size"], special["entries"], special["kept"]) == (16, 2, 1)
    assert section_sizes(run.out).get("__jump_table") == 16
    # The key is live kernel data: the entry must point at it, never at a copy.
    assert "feature_key" not in data_symbols(run.out)
    targets = [t for _, t in relocation_targets(run.out, "__jump_table")]
    assert "feature_key" in targets, targets
    assert not any("jl_two" in t for t in targets), targets


# --------------------------------------------------------------------------------------------
# 12, 14, 15: refusals and no-ops


INIT_CHANGE = """
__init int setup_thing(void)
{
    printk("setup %d\\n", ext_work(@K@));
    return 0;
}
int runtime_fn(int x) { return ext_work(x) + 1; }
"""


def test_init_function_change_is_refused(bench: Workbench) -> None:
    """An __init function (.init.text) changed: it already ran and was freed at boot, so a
    livepatch cannot apply the fix; refused naming the function and init."""
    orig, patched = bench.build(c_source(INIT_CHANGE, K=1), c_source(INIT_CHANGE, K=2))
    assert section_bytes(orig, ".init.text") != section_bytes(patched, ".init.text")
    expect_refused(bench.diff(), "setup_thing", "init")


IDENTICAL = """
static int state;
int touch(int x) { state += x; printk("state %d\\n", state); return ext_work(state); }
"""


def test_identical_objects_are_unchanged(bench: Workbench) -> None:
    """Rebuilding the same source (e.g. a patch touching only other files) yields no
    change and no output object."""
    orig, patched = bench.build(c_source(IDENTICAL), c_source(IDENTICAL))
    assert orig.read_bytes() == patched.read_bytes()
    run = bench.diff()
    expect_no_output(run, EXIT_UNCHANGED)
    assert run.changed_names == [] and run.new_names == [], run.describe()
    assert run.data["refusals"] == [], run.describe()


NOTRACE_GLOBAL = """
notrace noinline int raw_fn(int x) { return ext_work(x) * @K@; }
int traced(int x) { return raw_fn(x) + 1; }
"""


def test_changed_global_notrace_function_is_refused(bench: Workbench) -> None:
    """A global notrace function (no __fentry__ call, so ftrace cannot redirect it) changed;
    other objects may call it directly, so the change is refused."""
    orig, patched = bench.build(c_source(NOTRACE_GLOBAL, K=5), c_source(NOTRACE_GLOBAL, K=6))
    for obj in (orig, patched):
        assert not calls_fentry(obj, "raw_fn")
        assert calls_fentry(obj, "traced")
    assert section_bytes(orig, ".text.traced") == section_bytes(patched, ".text.traced")
    run = bench.diff()
    expect_refused(run, "raw_fn")
    text = run.refusal_text()
    assert "fentry" in text or "trace" in text, run.describe()


NOTRACE_STATIC = """
static notrace noinline int raw_helper(int x, int y) { return ext_work(x) * @K@ + y; }
int traced_caller(int x) { return raw_helper(x, ext_work(x)) + 1; }
int bystander(int x) { return ext_work(x) - 1; }
"""


def test_changed_static_notrace_helper_patches_its_caller(bench: Workbench) -> None:
    """A static notrace helper changed; its only caller is traceable, so the differ replaces
    the caller (which then calls a fresh copy of the helper) and says why."""
    orig, patched = bench.build(c_source(NOTRACE_STATIC, K=5), c_source(NOTRACE_STATIC, K=6))
    for obj in (orig, patched):
        require_symbols(obj, "raw_helper", "traced_caller")
        assert not calls_fentry(obj, "raw_helper")
        assert calls_fentry(obj, "traced_caller")
    assert section_bytes(orig, ".text.traced_caller") == section_bytes(
        patched, ".text.traced_caller"
    )
    run = bench.diff()
    expect_changed(run)
    assert "traced_caller" in run.changed_names, run.describe()
    # raw_helper cannot be redirected by ftrace, so it is not itself a "changed function".
    assert "raw_helper" not in run.changed_names, run.describe()
    assert "bystander" not in run.changed_names, run.describe()
    assert "raw_helper" in text_symbols(run.out)
    assert "raw_helper" in run.warning_text() or run.included("raw_helper") is not None, (
        run.describe()
    )


# --------------------------------------------------------------------------------------------
# 16: bad input


@pytest.mark.parametrize("problem", ["not-elf", "truncated-elf", "missing"])
def test_bad_input_is_a_one_line_error(tmp_path: Path, problem: str) -> None:
    """A build script hands the differ a wrong path or a damaged file: exit 1 with a
    one-line message, never a traceback."""
    good = compile_c(c_source("int ok(int x) { return ext_work(x); }\n"), tmp_path / "good")
    bad = tmp_path / "bad.o"
    if problem == "not-elf":
        bad.write_text("this is not an ELF object\n")
    elif problem == "truncated-elf":
        bad.write_bytes(good.read_bytes()[:100])
    out = tmp_path / "out.o"
    run = run_differ(bad, good, out)
    assert run.returncode == EXIT_ERROR, run.describe()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.describe()
    assert not out.exists()


INIT_REGISTERED_OPS = """
struct ops { int (*show)(int); int (*write)(int); };
void register_ops(const struct ops *o);
static int show_fn(int x) { return ext_work(x); }
@WRITE_FN@
static const struct ops my_ops = { .show = show_fn, @WRITE@ };
__init int setup_ops(void)
{
    register_ops(&my_ops);
    return 0;
}
"""


def test_changed_const_data_registered_by_init_code_is_refused(bench: Workbench) -> None:
    """A const ops table gains a method; only __init code uses it, to register it at boot.
    The running kernel keeps the old table, so nothing would change: refused (not "no
    change"), naming the table and the init function."""
    orig, _patched = bench.build(
        c_source(INIT_REGISTERED_OPS, WRITE_FN="", WRITE=""),
        c_source(INIT_REGISTERED_OPS,
                 WRITE_FN="static int write_fn(int x) { return ext_work(x) + 2; }",
                 WRITE=".write = write_fn"))
    assert "my_ops" in data_symbols(orig)
    expect_refused(bench.diff(), "my_ops", "setup_ops")


SYSCALL_ALIAS = """
static long __do_sys_thing(void)
{
    return ext_work(@K@);
}
long __x64_sys_thing(void) __attribute__((alias("__do_sys_thing")));
"""


def test_aliases_are_one_function(bench: Workbench) -> None:
    """SYSCALL_DEFINE0 makes __x64_sys_foo an alias of __do_sys_foo: one function under two
    names. It is replaced once, by its global name, with one ftrace site (two sites at one
    address make ftrace find a NOP where it expects a call, and turn itself off)."""
    orig, _ = bench.build(c_source(SYSCALL_ALIAS, K=1), c_source(SYSCALL_ALIAS, K=2))
    # clang keeps only the alias's name for a static function nothing else calls.
    names = {"gcc": {"__do_sys_thing", "__x64_sys_thing"}, "clang": {"__x64_sys_thing"}}
    assert names[bench.compiler] <= text_symbols(orig)
    run = bench.diff()
    expect_changed(run)
    assert run.changed_names == ["__x64_sys_thing"], run.describe()
    targets = [t for _, t in relocation_targets(run.out, "__mcount_loc")]
    assert len(targets) == 1, targets


NEW_INITCALL = """
int proc_thing(int x) { return ext_work(x) @OP@; }
@INIT@
"""
INITCALL = """
__init static int thing_setup(void) { return ext_work(7); }
static int (*__initcall_thing)(void) __attribute__((used, section(".initcall7.init"))) =
    thing_setup;
"""


@pytest.mark.parametrize("with_code_change", [False, True])
def test_new_initcall_is_refused(bench: Workbench, with_code_change: bool) -> None:
    """A fix that registers new boot-time setup (late_initcall): the update could not run
    it, so what depends on it would silently be missing. Refused, naming the initcall
    section, whether or not other code changes too (alone it used to be "no change")."""
    bench.build(c_source(NEW_INITCALL, OP="", INIT=""),
                c_source(NEW_INITCALL, OP="+ 1" if with_code_change else "", INIT=INITCALL))
    expect_refused(bench.diff(), "initcall", ".initcall7.init")


NEW_PERCPU = """
@DECL@
int count_event(int x) { @USE@ return ext_work(x); }
"""


def test_new_per_cpu_variable_is_a_warning(bench: Workbench) -> None:
    """A new DEFINE_PER_CPU counter lives in the update module, like a new static: say that
    it starts from zero when the update loads."""
    bench.build(c_source(NEW_PERCPU, DECL="", USE=""),
                c_source(NEW_PERCPU,
                         DECL='__attribute__((section(".data..percpu"))) int events;',
                         USE="events++;"))
    run = bench.diff()
    expect_changed(run)
    assert any("new per-CPU variable" in w["message"] and "events" in w["symbol"]
               for w in run.data["warnings"]), run.describe()
