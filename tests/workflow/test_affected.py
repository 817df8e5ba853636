"""The targeted mode's choice of objects (git_ksplice.affected), in process, on a small tree
laid out like the kernel's: every way a change reaches an object, and the changes only a
full build can follow. The real kernel's include lines and Makefiles are checked against a
full build's records in tests/kernel/test_targeted_inputs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from git_ksplice.affected import ChangeSet, affected_objects
from git_ksplice.includes import IncludeGraph, IncludeIndex, unit_sources

FILES = {
    "include/linux/compiler_types.h": "#define __ksplice\n",
    "include/linux/kconfig.h": "",
    "include/linux/compiler-version.h": "",
    "include/linux/list.h": "#include <linux/types.h>\n",
    "include/linux/types.h": "",
    "include/linux/sched.h": "#include <linux/list.h>\n#include <asm/current.h>\n",
    "arch/x86/include/asm/current.h": "",
    "include/asm-generic/current.h": "",
    "kernel/fork.c": "#include <linux/sched.h>\n",
    "kernel/sys.c": "#include <linux/types.h>\n#ifdef CONFIG_X\n#include \"sys_extra.h\"\n#endif\n",
    "kernel/sys_extra.h": "",
    "kernel/Makefile": "obj-y += fork.o sys.o\n",
    "lib/sort.c": "#include \"sort_impl.c\"\n",
    "lib/sort_impl.c": "",
    "lib/Makefile": "lib-y += sort.o\n",
    "drivers/demo/demo.c": "#include \"demo.h\"\n",
    "drivers/demo/demo.h": "",
    "drivers/demo/sub/part.c": "",
    "drivers/demo/Makefile": "obj-m += demo.o\n",
    "drivers/unbuilt/unbuilt.c": "#include \"unbuilt.h\"\n",
    "drivers/unbuilt/unbuilt.h": "",
    "arch/x86/entry/entry_64.S": "#include <linux/types.h>\n",
    "Documentation/process/howto.rst": "",
    "arch/arm64/kernel/setup.c": "",
}
TARGETS = {"kernel/fork.o": "vmlinux", "kernel/sys.o": "vmlinux", "lib/sort.o": "vmlinux",
           "drivers/demo/demo.o": "demo", "drivers/demo/sub/part.o": "demo",
           "arch/x86/entry/entry_64.o": "vmlinux"}


@pytest.fixture(params=["fresh", "indexed"])
def tree(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The tree at pre; "indexed": with pre's include graph saved beside it, as a prepared
    tree keeps it, so every selection below is also made from the index."""
    tree = tmp_path / "tree"
    for rel, text in FILES.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    if request.param == "indexed":
        units = unit_sources(tree, TARGETS).values()
        IncludeGraph(tree).index(units).save(tmp_path / "index.json")
    return tree


def _affected(tree: Path, changed: dict[str, bytes | None], *,
              post_targets: dict[str, str] | None = None,
              recorded: dict[str, list[str]] | None = None):
    """The selection for a change given as post contents (None: deleted), read from the tree
    at pre with the change overlaid, as the pipeline does."""
    full = {p: (tree / p).read_bytes() if data is ... else data for p, data in changed.items()}
    graph = IncludeGraph(tree, overlay=full, index=IncludeIndex.load(tree.parent / "index.json"))
    return affected_objects(graph, ChangeSet(full, TARGETS, post_targets or TARGETS,
                                             recorded or {}))


def test_a_source_file_selects_the_objects_built_from_it(tree: Path) -> None:
    found = _affected(tree, {"kernel/sys.c": b"int x;\n"})
    assert found.objects == {"kernel/sys.o": "kernel/sys.c"} and found.full_build is None


def test_a_header_selects_every_unit_that_can_include_it(tree: Path) -> None:
    found = _affected(tree, {"include/linux/types.h": b"typedef int x;\n"})
    assert set(found.objects) == {"kernel/fork.o", "kernel/sys.o", "arch/x86/entry/entry_64.o"}
    # through linux/sched.h and linux/list.h, for fork.o
    assert found.objects["kernel/fork.o"] == "include/linux/types.h"


def test_an_include_under_a_condition_counts(tree: Path) -> None:
    assert set(_affected(tree, {"kernel/sys_extra.h": b"x"}).objects) == {"kernel/sys.o"}


def test_the_architecture_header_is_the_one_asm_names(tree: Path) -> None:
    assert set(_affected(tree, {"arch/x86/include/asm/current.h": b"x"}).objects) == {
        "kernel/fork.o"}
    generic = _affected(tree, {"include/asm-generic/current.h": b"x"})
    assert generic.objects == {} and generic.not_built == ["include/asm-generic/current.h"]


def test_a_c_file_included_by_another_selects_its_includer(tree: Path) -> None:
    assert set(_affected(tree, {"lib/sort_impl.c": b"x"}).objects) == {"lib/sort.o"}


def test_a_header_every_unit_is_given_selects_them_all(tree: Path) -> None:
    found = _affected(tree, {"include/linux/compiler_types.h": b"x"})
    assert set(found.objects) == set(TARGETS)


def test_a_header_added_and_included_by_a_changed_header(tree: Path) -> None:
    found = _affected(tree, {"include/linux/new.h": b"x",
                             "include/linux/list.h": b"#include <linux/new.h>\n"})
    assert set(found.objects) == {"kernel/fork.o"}


def test_a_makefile_selects_its_directory_and_below(tree: Path) -> None:
    found = _affected(tree, {"drivers/demo/Makefile": b"obj-m += demo.o\nccflags-y := -O1\n"})
    assert set(found.objects) == {"drivers/demo/demo.o", "drivers/demo/sub/part.o"}


def test_an_object_a_changed_makefile_adds_is_selected(tree: Path) -> None:
    post = {**TARGETS, "drivers/demo/extra.o": "demo"}
    found = _affected(tree, {"drivers/demo/Makefile": b"obj-m += demo.o extra.o\n",
                             "drivers/demo/extra.c": b"int y;\n"}, post_targets=post)
    assert "drivers/demo/extra.o" in found.objects


def test_kbuild_records_add_what_the_include_lines_cannot_see(tree: Path) -> None:
    # A macro-computed include (#include TRACE_INCLUDE(...)) names no file the graph sees.
    found = _affected(tree, {"drivers/demo/demo.h": b"x"},
                      recorded={"kernel/sys.o": ["kernel/sys.c", "drivers/demo/demo.h"]})
    assert set(found.objects) == {"drivers/demo/demo.o", "kernel/sys.o"}


@pytest.mark.parametrize(("path", "why"), [
    ("init/Kconfig", "Kconfig"), ("arch/x86/Kconfig", "Kconfig"), ("Makefile", "top-level"),
    ("arch/x86/Makefile", "arch/x86"), ("scripts/Makefile.lib", "scripts/"),
    ("tools/objtool/check.c", "objtool"), ("arch/x86/kernel/asm-offsets.c", "asm-offsets"),
    ("arch/x86/entry/syscalls/syscall_64.tbl", "syscall"),
    ("arch/x86/entry/vdso/vclock_gettime.c", "vDSO"),
    ("drivers/demo/firmware.bin", "not a source"),
])
def test_changes_only_a_full_build_can_follow(tree: Path, path: str, why: str) -> None:
    found = _affected(tree, {path: b"x", "kernel/sys.c": b"int x;\n"})
    assert found.full_build is not None and why in found.full_build and path in found.full_build
    assert found.objects == {}


def test_what_no_build_reads_is_set_aside(tree: Path) -> None:
    found = _affected(tree, {"Documentation/process/howto.rst": b"x",
                             "arch/arm64/kernel/setup.c": b"x", "tools/perf/builtin.c": b"x"})
    assert found.objects == {} and found.full_build is None
    assert sorted(found.inert) == ["Documentation/process/howto.rst",
                                   "arch/arm64/kernel/setup.c", "tools/perf/builtin.c"]


def test_a_source_the_configuration_does_not_build_is_named(tree: Path) -> None:
    found = _affected(tree, {"drivers/unbuilt/unbuilt.c": b"x", "drivers/unbuilt/unbuilt.h": b"x"})
    assert found.objects == {}
    assert sorted(found.not_built) == ["drivers/unbuilt/unbuilt.c", "drivers/unbuilt/unbuilt.h"]


def test_a_deleted_header_selects_the_units_that_included_it(tree: Path) -> None:
    found = _affected(tree, {"kernel/sys_extra.h": None, "kernel/sys.c": b"int x;\n"})
    assert set(found.objects) == {"kernel/sys.o"}


def test_a_deleted_header_that_shadowed_another_selects_its_includers(tree: Path) -> None:
    (tree / "include/sys_extra.h").parent.mkdir(parents=True, exist_ok=True)
    (tree / "include/sys_extra.h").write_text("")
    # kernel/sys.c's "sys_extra.h" now finds include/sys_extra.h: sys.o must be rebuilt.
    assert set(_affected(tree, {"kernel/sys_extra.h": None}).objects) == {"kernel/sys.o"}


def test_objects_without_a_source_in_the_tree_are_selected_by_any_header(tree: Path) -> None:
    generated = {**TARGETS, "drivers/tty/vt/defkeymap.o": "vmlinux"}  # from a _shipped file
    graph = IncludeGraph(tree, overlay={"drivers/demo/demo.h": b"x"})
    found = affected_objects(graph, ChangeSet({"drivers/demo/demo.h": b"x"}, generated,
                                              generated, {}))
    assert set(found.objects) == {"drivers/demo/demo.o", "drivers/tty/vt/defkeymap.o"}


def test_a_source_that_is_not_an_object_in_a_building_directory_needs_the_full_build(
        tree: Path) -> None:
    found = _affected(tree, {"kernel/gen_table.c": b"int main(void) { return 0; }\n"})
    assert found.full_build is not None and "kernel/gen_table.c" in found.full_build


def test_an_include_directorys_kbuild_needs_the_full_build(tree: Path) -> None:
    found = _affected(tree, {"arch/x86/include/asm/Kbuild": b"generic-y += current.h\n"})
    assert found.full_build is not None and "asm/ wrappers" in found.full_build


def test_a_header_added_in_front_of_one_an_unchanged_file_finds(tree: Path) -> None:
    """The new file comes first on the search path for <linux/types.h>: every unit that
    included the old one may read it now (so the index is not used for this change)."""
    found = _affected(tree, {"arch/x86/include/linux/types.h": b"typedef long x;\n"})
    assert set(found.objects) == {"kernel/fork.o", "kernel/sys.o", "arch/x86/entry/entry_64.o"}


def test_a_changed_header_that_now_includes_another(tree: Path) -> None:
    """demo.h's post lines include sys_extra.h: a unit reaching demo.h reaches it too, and
    the index (pre's lines) must not hide that edge."""
    found = _affected(tree, {"drivers/demo/demo.h": b'#include "../../kernel/sys_extra.h"\n',
                             "kernel/sys_extra.h": b"int y;\n"})
    assert set(found.objects) == {"drivers/demo/demo.o", "kernel/sys.o"}


def test_the_index_is_read_back_whole_or_not_at_all(tmp_path: Path) -> None:
    index = IncludeIndex({"a.h": {"b.c", "c.c"}, "b.c": set()}, {"a.h", "b.c", "c.c"})
    index.save(tmp_path / "index.json")
    assert IncludeIndex.load(tmp_path / "index.json") == index
    (tmp_path / "index.json").write_text('{"files": ["a.h"], "walked": [3]')
    assert IncludeIndex.load(tmp_path / "index.json") is None
    assert IncludeIndex.load(tmp_path / "missing.json") is None


def test_a_header_and_the_source_that_includes_it(tree: Path) -> None:
    """Both select demo.o: neither is reported as something no unit reads."""
    found = _affected(tree, {"drivers/demo/demo.c": b'#include "demo.h"\nint z;\n',
                             "drivers/demo/demo.h": b"int y;\n"})
    assert set(found.objects) == {"drivers/demo/demo.o"}
    assert found.not_built == [] and found.full_build is None
