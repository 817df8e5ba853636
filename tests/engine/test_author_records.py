"""The patch author's records: what `ksplice-patch.h`'s macros leave in an object, and what
the differ makes of them.

Each source includes the header git-ksplice ships (`git_ksplice/include/ksplice-patch.h`,
found as a build finds it, through `-I`), with the few kernel declarations it needs from
the tiny kernel's `include/linux/` (`examples/tiny-kernel`); each test runs under gcc and
clang (the `bench` fixture).
kpatch's own unit objects that use its macros (callbacks in clang-lstr, an ignored function
in ignore-missing-ftracehook-issue-1091, an ignored section in oot-issue-928) were checked
against kpatch's verdicts by hand: they are not in the shared corpus.
"""

from __future__ import annotations

import pytest

from tests.engine.conftest import (
    EXIT_REFUSED,
    EXIT_UNCHANGED,
    REPO_ROOT,
    DiffRun,
    Workbench,
    c_source,
    expect_changed,
    section_sizes,
    text_symbols,
)

AUTHOR_FLAGS = ("-I", str(REPO_ROOT / "git_ksplice" / "include"),
                "-I", str(REPO_ROOT / "examples" / "tiny-kernel" / "include"))

HEADER = '#include "ksplice-patch.h"\n'


def build(bench: Workbench, orig: str, patched: str) -> DiffRun:
    bench.build(c_source(orig), c_source(patched), AUTHOR_FLAGS)
    return bench.diff()


def callbacks(run: DiffRun) -> list[tuple[str, str, str]]:
    return [(c["slot"], c["function"], c["macro"]) for c in run.data["callbacks"]]


def expect_no_records_in(run: DiffRun) -> None:
    """The records are read, never shipped: no author section reaches the output."""
    leaked = [n for n in section_sizes(run.out) if n.startswith((".kpatch.", ".ksplice"))]
    assert not leaked, leaked


FIX = "int fixed(int x) { return ext_work(x) + @K@; }\n"

KPATCH_CALLBACKS = HEADER + """
static int check_ready(struct klp_object *obj) { return ext_work(1) ? -16 : 0; }
static void fix_up(struct klp_object *obj) { ext_work(2); }
static void before_undo(struct klp_object *obj) { ext_work(3); }
static void after_undo(struct klp_object *obj) { ext_work(4); }
KPATCH_PRE_PATCH_CALLBACK(check_ready);
KPATCH_POST_PATCH_CALLBACK(fix_up);
KPATCH_PRE_UNPATCH_CALLBACK(before_undo);
KPATCH_POST_UNPATCH_CALLBACK(after_undo);
"""


def test_kpatch_callbacks_become_the_update_callbacks(bench: Workbench) -> None:
    """kpatch's four callback macros in a patched file: each becomes a callback of its slot,
    its function comes along (new, defined in the output), and the records stay behind."""
    run = build(bench, FIX.replace("@K@", "1"), FIX.replace("@K@", "2") + KPATCH_CALLBACKS)
    expect_changed(run)
    assert callbacks(run) == [
        ("pre_patch", "check_ready", "KPATCH_PRE_PATCH_CALLBACK"),
        ("post_patch", "fix_up", "KPATCH_POST_PATCH_CALLBACK"),
        ("pre_unpatch", "before_undo", "KPATCH_PRE_UNPATCH_CALLBACK"),
        ("post_unpatch", "after_undo", "KPATCH_POST_UNPATCH_CALLBACK"),
    ], run.describe()
    assert {c["signature"] for c in run.data["callbacks"]} == {"klp"}
    for name in ("check_ready", "fix_up", "before_undo", "after_undo"):
        entry = run.included(name)
        assert entry is not None and "callback" in entry["why"], run.describe()
    assert {"fixed", "check_ready", "fix_up", "before_undo", "after_undo"} <= \
        text_symbols(run.out)
    expect_no_records_in(run)


KSPLICE_HOOKS = HEADER + """
int hooks_ran;
static int may_apply(void) { return hooks_ran ? -1 : 0; }
static void applied(void) { hooks_ran = 1; }
static void apply_failed(void) { hooks_ran = -1; }
static void reversed(void) { hooks_ran = 0; }
static void reverse_failed(void) { hooks_ran = -2; }
ksplice_pre_apply(may_apply);
ksplice_apply(applied);
ksplice_fail_apply(apply_failed);
ksplice_reverse(reversed);
ksplice_fail_reverse(reverse_failed);
"""


def test_ksplice_hooks_alone_make_an_update(bench: Workbench) -> None:
    """Ksplice's hooks without any code change: an update of its hooks alone, each hook on
    livepatch's moment (apply after the switch, reverse after the undo), and a warning for
    the hook that cannot run (an undo never fails)."""
    run = build(bench, "int hooks_ran;\n", KSPLICE_HOOKS)
    expect_changed(run)
    assert run.changed_names == [], run.describe()
    assert callbacks(run) == [
        ("pre_patch", "may_apply", "ksplice_pre_apply"),
        ("post_patch", "applied", "ksplice_apply"),
        ("fail_patch", "apply_failed", "ksplice_fail_apply"),
        ("post_unpatch", "reversed", "ksplice_reverse"),
        ("", "reverse_failed", "ksplice_fail_reverse"),
    ], run.describe()
    assert {c["signature"] for c in run.data["callbacks"]} <= {"int", "void"}
    assert "reverse_failed) never runs" in run.warning_text(), run.describe()
    # The hooks use the running kernel's hooks_ran, not a copy of their own.
    assert run.included("hooks_ran") is None or run.included("hooks_ran")["kind"] != "object"
    expect_no_records_in(run)


def test_records_already_loaded_are_not_registered_again(bench: Workbench) -> None:
    """A `--series` update compares against objects that already hold an earlier update's
    callbacks: those ran when it loaded, so only the code change goes into this one."""
    orig = FIX.replace("@K@", "2") + KPATCH_CALLBACKS
    run = build(bench, orig, FIX.replace("@K@", "3") + KPATCH_CALLBACKS)
    expect_changed(run)
    assert run.changed_names == ["fixed"], run.describe()
    assert run.data["callbacks"] == [], run.describe()
    assert "fix_up" not in text_symbols(run.out)


IGNORED = """
int fixed(int x) { return ext_work(x) + @K@; }
int debug_only(int x) { return ext_work(x) * @K@; }
"""


def test_ignored_function_is_left_out_and_said(bench: Workbench) -> None:
    """KPATCH_IGNORE_FUNCTION: the marked function's change stays out of the update, and the
    result says so (the manifest and `view` show `left_out`)."""
    run = build(bench, IGNORED.replace("@K@", "1"),
                HEADER + IGNORED.replace("@K@", "2") + "KPATCH_IGNORE_FUNCTION(debug_only);\n")
    expect_changed(run)
    assert run.changed_names == ["fixed"], run.describe()
    assert "debug_only" not in text_symbols(run.out)
    left = [(e["symbol"], e["message"]) for e in run.data["left_out"]]
    assert [s for s, _ in left] == ["debug_only"], run.describe()
    assert "KPATCH_IGNORE_FUNCTION" in left[0][1]
    expect_no_records_in(run)


def test_only_ignored_changes_is_no_change(bench: Workbench) -> None:
    """When every change is marked ignored, nothing is left to ship: no change, with the
    left-out function still named."""
    run = build(bench, IGNORED.replace("@K@", "1"),
                HEADER + IGNORED.replace("@K@", "1").replace("* 1", "* 5")
                + "KPATCH_IGNORE_FUNCTION(debug_only);\n")
    assert run.returncode == EXIT_UNCHANGED, run.describe()
    assert [e["symbol"] for e in run.data["left_out"]] == ["debug_only"], run.describe()


IGNORED_SECTION = """
int knob __attribute__((section(".data.tuning"))) = @V@;
int fixed(int x) { return ext_work(x) + @K@; }
"""


def test_ignored_section_leaves_its_changes_out(bench: Workbench) -> None:
    """KPATCH_IGNORE_SECTION(".data.tuning"): a changed initialiser there (refused without
    the mark) is left out, the code change ships."""
    orig = c_source(IGNORED_SECTION, V=1, K=1)
    unmarked = c_source(IGNORED_SECTION, V=2, K=2)
    bench.build(orig, unmarked, AUTHOR_FLAGS)
    refused = bench.diff()
    assert refused.returncode == EXIT_REFUSED and "knob" in refused.refusal_text()
    run = build(bench, IGNORED_SECTION.replace("@V@", "1").replace("@K@", "1"),
                HEADER + IGNORED_SECTION.replace("@V@", "2").replace("@K@", "2")
                + 'KPATCH_IGNORE_SECTION(".data.tuning");\n')
    expect_changed(run)
    assert run.changed_names == ["fixed"], run.describe()
    assert [(e["symbol"], e["section"]) for e in run.data["left_out"]] == \
        [("knob", ".data.tuning")], run.describe()


DATA = """
int limit = @V@;
int check(int x) { return x > limit ? ext_work(x) : 0; }
"""


def test_changed_initialiser_needs_consent(bench: Workbench) -> None:
    """A changed initialiser of existing data is refused, and the refusal names the macros
    that would let it ship."""
    bench.build(c_source(DATA, V=10), c_source(DATA, V=20), AUTHOR_FLAGS)
    run = bench.diff()
    assert run.returncode == EXIT_REFUSED, run.describe()
    text = run.refusal_text()
    assert "limit" in text and "ksplice_apply_data_change" in text, run.describe()


@pytest.mark.parametrize("macro,mode", [("KSPLICE_APPLY_DATA_CHANGE", "apply"),
                                        ("KSPLICE_ACCEPT_DATA_CHANGE", "accept")])
def test_consented_data_change_ships(bench: Workbench, macro: str, mode: str) -> None:
    """With the author's consent the change ships: `apply` has the update write the new
    value after the switch (and restore the old one), `accept` leaves it to the patch's own
    post-patch callback. Either way a warning says what happens to the running copy."""
    setter = "static void set_limit(struct klp_object *o) { limit = 20; }\n" \
             "KPATCH_POST_PATCH_CALLBACK(set_limit);\n" if mode == "accept" else ""
    run = build(bench, DATA.replace("@V@", "10"),
                HEADER + DATA.replace("@V@", "20") + f"{macro}(limit);\n" + setter)
    expect_changed(run)
    assert [(d["name"], d["mode"], d["size"], d["macro"]) for d in run.data["data_changes"]] \
        == [("limit", mode, 4, macro)], run.describe()
    assert f"accepted with {macro.lower()}" in run.warning_text(), run.describe()
    assert "registers no post-patch callback" not in run.warning_text(), run.describe()
    expect_no_records_in(run)


def test_accepted_data_change_without_a_setter_is_warned(bench: Workbench) -> None:
    """KSPLICE_ACCEPT_DATA_CHANGE promises that the patch sets the value itself: with no
    post-patch callback in the file the promise looks broken, and the author is told."""
    run = build(bench, DATA.replace("@V@", "10"),
                HEADER + DATA.replace("@V@", "20") + "KSPLICE_ACCEPT_DATA_CHANGE(limit);\n")
    expect_changed(run)
    assert "registers no post-patch callback" in run.warning_text(), run.describe()


POINTER_DATA = """
static int a, b;
int *current_pool = &@P@;
int pool_get(void) { return *current_pool + ext_work(0); }
"""


def test_applied_data_change_must_be_plain_bytes(bench: Workbench) -> None:
    """KSPLICE_APPLY_DATA_CHANGE on a pointer's initialiser: the update cannot write an
    address as bytes, so it is refused with the way out (accept it and set it in code)."""
    run = build(bench, POINTER_DATA.replace("@P@", "a"),
                HEADER + POINTER_DATA.replace("@P@", "b")
                + "KSPLICE_APPLY_DATA_CHANGE(current_pool);\n")
    assert run.returncode == EXIT_REFUSED, run.describe()
    text = run.refusal_text()
    assert "current_pool" in text and "ksplice_accept_data_change" in text, run.describe()


def test_force_unsafe_is_refused(bench: Workbench) -> None:
    """KPATCH_FORCE_UNSAFE asks kpatch to skip a function's stack check: livepatch has no
    such switch, so the update is refused rather than shipped less safe than asked."""
    run = build(bench, FIX.replace("@K@", "1"),
                HEADER + FIX.replace("@K@", "2") + "KPATCH_FORCE_UNSAFE(fixed);\n")
    assert run.returncode == EXIT_REFUSED, run.describe()
    assert "kpatch_force_unsafe" in run.refusal_text(), run.describe()


def test_record_naming_an_outside_function_is_refused(bench: Workbench) -> None:
    """A callback defined in another file cannot be registered from this one: refused,
    naming the function and where to define it."""
    run = build(bench, FIX.replace("@K@", "1"),
                HEADER + FIX.replace("@K@", "2")
                + "extern void elsewhere(struct klp_object *);\n"
                "KPATCH_POST_PATCH_CALLBACK(elsewhere);\n")
    assert run.returncode == EXIT_REFUSED, run.describe()
    text = run.refusal_text()
    assert "elsewhere" in text and "not defined in this file" in text, run.describe()


SHADOW = HEADER + """
#define SHADOW_HITS 1
struct conn { int id; };
int conn_touch(struct conn *c)
{
    int *hits = klp_shadow_get_or_alloc(c, SHADOW_HITS, sizeof(*hits), 0, 0, 0);
    if (hits)
        (*hits)++;
    return ext_work(c->id) + (hits ? *hits : 0);
}
static void free_hits(struct klp_object *obj) { klp_shadow_free_all(SHADOW_HITS, 0); }
KPATCH_POST_UNPATCH_CALLBACK(free_hits);
"""


def test_shadow_variable_calls_are_the_running_kernels(bench: Workbench) -> None:
    """A patch keeping new per-object state in a shadow variable: the changed function and
    the post-unpatch callback call the running kernel's klp_shadow_* functions."""
    run = build(bench, "struct conn { int id; };\n"
                "int conn_touch(struct conn *c) { return ext_work(c->id); }\n", SHADOW)
    expect_changed(run)
    assert run.changed_names == ["conn_touch"], run.describe()
    assert callbacks(run) == [("post_unpatch", "free_hits", "KPATCH_POST_UNPATCH_CALLBACK")]
    references = {r["name"] for r in run.data["references"]}
    assert {"klp_shadow_get_or_alloc", "klp_shadow_free_all"} <= references, run.describe()


ORDERED_HOOKS = HEADER + """
static int checked(void) { return ext_work(1); }
static int prepared(void) { return ext_work(2); }
static void first(void) { ext_work(3); }
static void second(void) { ext_work(4); }
static void third(void) { ext_work(5); }
ksplice_check_apply(checked);
ksplice_apply(first);
ksplice_pre_apply(prepared);
ksplice_apply(second);
ksplice_post_apply(third);
"""


def test_hooks_run_in_ksplice_order_then_as_written(bench: Workbench) -> None:
    """Ksplice ran pre-apply hooks before check-apply ones and apply before post-apply,
    whatever the file's order; hooks of one kind run as written (gcc lays the records out
    in reverse: the order comes from their names)."""
    run = build(bench, FIX.replace("@K@", "1"), FIX.replace("@K@", "2") + ORDERED_HOOKS)
    expect_changed(run)
    assert [(slot, fn) for slot, fn, _ in callbacks(run)] == [
        ("pre_patch", "prepared"), ("pre_patch", "checked"),
        ("post_patch", "first"), ("post_patch", "second"), ("post_patch", "third"),
    ], run.describe()
