"""Layout changes of structs and unions, from the source (git_ksplice.layout)."""

from __future__ import annotations

from git_ksplice.layout import changed_layouts, definitions

BEFORE = """
/* struct decoy { int in_a_comment; }; */
struct point {
\tint x;
\tint y;   /* the y */
#ifdef CONFIG_Z
\tint z;
#endif
} __randomize_layout;

typedef union value { long l; struct { int lo, hi; } half; } value_t;
static const char *s = "struct fake { int x; }";
struct point *make(void) { struct point p = { 1, 2 }; return 0; }
"""


def _changes(after: str) -> list[str]:
    return [c.describe() for c in changed_layouts("x.h", BEFORE, after)]


def test_definitions_are_found_and_decoys_are_not() -> None:
    defs = definitions(BEFORE)
    assert set(defs) == {("struct", "point"), ("union", "value")}
    assert defs[("struct", "point")][1] == 3


def test_comments_and_formatting_are_not_layout() -> None:
    after = BEFORE.replace("int y;   /* the y */", "int   y; // why not").replace(
        "struct decoy { int in_a_comment; }", "struct decoy { long changed; }")
    assert _changes(after) == []


def test_members_added_retyped_or_reordered_are() -> None:
    assert _changes(BEFORE.replace("\tint x;\n", "\tint w;\n\tint x;\n")) == [
        "struct point (x.h:3)"]
    assert _changes(BEFORE.replace("int lo, hi;", "short lo, hi;")) == ["union value (x.h:11)"]
    assert _changes(BEFORE.replace("\tint x;\n\tint y;", "\tint y;\n\tint x;")) == [
        "struct point (x.h:3)"]
    # under #ifdef: still a member in some configuration
    assert _changes(BEFORE.replace("\tint z;\n", "\tlong z;\n")) == ["struct point (x.h:3)"]


def test_new_and_moved_definitions_are_not() -> None:
    assert _changes(BEFORE + "\nstruct fresh { int a; };\n") == []
    assert changed_layouts("x.h", BEFORE, "") == []
    assert changed_layouts("new.h", None, BEFORE) == []
