"""The targeted tree's generated files across a post build (git_ksplice.targeted): what
kbuild's prepare steps rewrite at post is put back as pre had it, mtimes included, so no
later pre object is compiled against post's asm-offsets.h or release string. In process,
on files laid out as a prepared tree's; the real tree is built in tests/kernel."""

from __future__ import annotations

import os
from pathlib import Path

from git_ksplice.targeted import _restore_generated, _save_generated

PRE = {
    "include/generated/asm-offsets.h": "#define TASK_threadsp 3384\n",
    "include/generated/utsrelease.h": '#define UTS_RELEASE "6.1.0"\n',
    "include/config/auto.conf": "CONFIG_X=y\n",
    "arch/x86/kernel/asm-offsets.s": "pre\n",
    "kernel/sys.c": "tracked, not generated\n",
}


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for rel, text in PRE.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
        os.utime(tree / rel, ns=(10**18, 10**18))
    return tree


def test_what_a_post_build_regenerates_is_put_back(tmp_path: Path) -> None:
    tree, saved = _tree(tmp_path), tmp_path / "generated"
    _save_generated(tree, saved)
    (tree / "include/generated/asm-offsets.h").write_text("#define TASK_threadsp 3392\n")
    (tree / "include/generated/utsrelease.h").touch()  # same bytes, newer
    (tree / "include/generated/timeconst.h").write_text("new at post\n")
    (tree / "include/config/auto.conf").unlink()
    (tree / "arch/x86/kernel/asm-offsets.s").write_text("post\n")
    (tree / "kernel/bounds.s").write_text("made at post\n")
    _restore_generated(tree, saved)
    for rel, text in PRE.items():
        assert (tree / rel).read_text() == text, rel
        assert (tree / rel).stat().st_mtime_ns == 10**18, rel
    assert not (tree / "include/generated/timeconst.h").exists()
    assert not (tree / "kernel/bounds.s").exists()
    assert not saved.exists()


def test_nothing_saved_means_nothing_to_put_back(tmp_path: Path) -> None:
    """A revert after a run killed before its copy was whole (or a revert with no post
    build, as after reading post's Makefiles) leaves the tree alone."""
    tree = _tree(tmp_path)
    (tmp_path / "generated.tmp").mkdir()  # a copy killed midway
    _restore_generated(tree, tmp_path / "generated")
    assert all((tree / rel).read_text() == text for rel, text in PRE.items())
    _save_generated(tree, tmp_path / "generated")
    assert not (tmp_path / "generated.tmp").exists()

