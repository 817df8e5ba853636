"""Which objects the configuration builds, and into which target, from the Makefiles of a
tree that is only configured and prepared: it must agree, object for object, with the
records of a full build of the same configuration (`kbuild.target_map`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from git_ksplice.kbuild import target_map
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
