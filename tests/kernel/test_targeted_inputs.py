"""What the targeted mode must know without a full build, checked against a full build's
own records: which objects the configuration builds and into which target (from the
Makefiles of a tree that is only configured and prepared, against `kbuild.target_map`), and
which files each unit may read (from its `#include` lines, against the dependencies kbuild
recorded in each object's `.cmd` file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from git_ksplice.includes import IncludeGraph, unit_sources
from git_ksplice.kbuild import recorded_dependencies, target_map
from git_ksplice.kbuild_objects import configured_targets
from tests.kernel.conftest import JOBS, KernelRepo, _extract, _sh

pytestmark = pytest.mark.kernel


def test_the_makefiles_name_every_object_of_a_full_build(kernel_repo: KernelRepo,
                                                         tmp_path: Path) -> None:
    running = kernel_repo.running
    tree = _extract(tmp_path)
    shutil.copy2(running.orig_config / ".config", tree / ".config")
    # Configured and prepared (generated headers, objtool): nothing of the kernel compiled.
    _sh("make", f"-j{JOBS}", "LOCALVERSION=", "olddefconfig", "prepare", cwd=tree)
    assert not (tree / "vmlinux.a").exists() and not (tree / "modules.order").exists()
    found = configured_targets(tree)
    full = target_map(running.tree)
    assert sorted(set(full) - set(found)) == []
    assert sorted(set(found) - set(full)) == []
    assert {o: (found[o], t) for o, t in full.items() if found[o] != t} == {}
    assert "vmlinux" in set(full.values()) and len(set(full.values())) > 1  # modules too
    # kbuild compiles a single object it is asked for even when the configuration does
    # not build it: the walk is what says so.
    assert "fs/btrfs/super.o" not in found and (tree / "fs/btrfs/super.c").exists()


#: Build products kbuild lists as dependencies; a change never touches them directly.
_GENERATED = ("include/generated/", "arch/x86/include/generated/", "include/config/")


def test_the_include_lines_name_every_file_kbuild_recorded(kernel_repo: KernelRepo) -> None:
    """For every C unit of the full build: each file its compilation read is in the closure
    of its #include lines (generated files aside). And for a header, the units the graph
    says it affects are a superset of those that read it, and not many more."""
    tree = kernel_repo.running.tree
    units = {o: s for o, s in unit_sources(tree, target_map(tree)).items() if s.endswith(".c")}
    assert len(units) > 500
    graph = IncludeGraph(tree)
    missed = {}
    readers: dict[str, set[str]] = {}
    for obj, source in units.items():
        closure = graph.closure(source)
        for dep in recorded_dependencies(tree, obj) or []:
            readers.setdefault(dep, set()).add(obj)
            if dep not in closure and not dep.startswith(_GENERATED) \
                    and dep != "init/utsversion-tmp.h":  # written by the vmlinux link
                missed.setdefault(dep, obj)
    assert missed == {}
    for header in ("include/linux/sched.h", "fs/proc/internal.h", "include/linux/reboot.h"):
        claimed = set(graph.affected([header], units))
        assert readers[header] <= claimed
        assert len(claimed) <= 2 * len(readers[header]), header
