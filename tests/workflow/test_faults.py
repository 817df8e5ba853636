"""A run killed (SIGKILL: no cleanup at all) at each checkpoint, then run again: the next run
repairs everything by itself and builds the same update an uninterrupted run builds."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from git_ksplice.faults import CHECKPOINTS
from tests.workflow.conftest import (
    PROC_FIX,
    Kernel,
    diff_objects,
    hermetic_env,
    make_repo,
    manifest,
    read_update,
    use_env,
)

KILLED = 128 + signal.SIGKILL  # as git reports a subcommand killed by a signal


def _patch(k: Kernel, dest: Path) -> Path:
    """The fix as a patch file outside the repository; the checkout is left as it was."""
    for rel, (old, new) in PROC_FIX.items():
        k.edit(rel, old, new)
    dest.write_text(k.git("diff"))
    k.git("checkout", "--", *PROC_FIX)
    assert k.git("status", "--porcelain") == ""
    return dest


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, running_kernel: Path
                  ) -> dict[str, bytes]:
    """The diff objects of the same --patch run, never interrupted, in its own repository."""
    base = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as mp:
        use_env(mp, hermetic_env(base / "home"))
        k = make_repo(base / "linux", running_kernel)
        patch = _patch(k, base / "fix.patch")
        k.create(f"--patch={patch}", "--id", "ref")
        return diff_objects(read_update(k.tarball("ref")))


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_killed_run_is_repaired_by_the_next(checkpoint: str, kernel: Kernel, tmp_path: Path,
                                           uninterrupted: dict[str, bytes]) -> None:
    """The machine dies (or the user kill -9s) a first `create --patch` at one checkpoint;
    the user runs the same command again."""
    k = kernel
    patch = _patch(k, tmp_path / "fix.patch")
    assert sorted(uninterrupted) == ["debug/diff/fs/proc.o"]

    k.create(f"--patch={patch}", "--id", "fix", env={"GIT_KSPLICE_FAULT": checkpoint},
             expect=KILLED)
    refs = k.ksplice_refs()
    recorded = CHECKPOINTS.index(checkpoint) >= CHECKPOINTS.index("recorded")
    assert ("refs/ksplice/updates/fix" in refs) == recorded, refs
    in_flight = CHECKPOINTS.index("post-created") <= CHECKPOINTS.index(checkpoint) \
        < CHECKPOINTS.index("recorded")
    assert ("refs/ksplice/tmp/fix" in refs) == in_flight, refs

    if recorded:
        # It got as far as recording the update: that update is complete, and its id taken.
        assert diff_objects(read_update(k.tarball("fix"))) == uninterrupted
        r = k.create(f"--patch={patch}", "--id", "fix", expect=1)
        assert "update id fix already exists" in r.stderr, r.stderr
        again = "fix2"
    else:
        again = "fix"
    k.create(f"--patch={patch}", "--id", again)
    files = read_update(k.tarball(again))
    assert diff_objects(files) == uninterrupted
    assert manifest(files)["pre"] == k.rev("HEAD")

    k.assert_no_tmp_refs()
    k.assert_tree_clean()
    ids = sorted(r.removeprefix("refs/ksplice/updates/") for r in k.ksplice_refs()
                 if r.startswith("refs/ksplice/updates/"))
    assert ids == (["fix", "fix2"] if recorded else ["fix"])
    ledger = k.git("log", "--format=%s", "refs/ksplice/series").splitlines()
    assert len(ledger) == len(ids), ledger
    leftovers = [p.name for p in k.updates_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary files left in {k.updates_dir}: {leftovers}"


@pytest.mark.parametrize("checkpoint", ["patched-checkout", "compared"])
def test_killed_run_then_prebuild(checkpoint: str, warm_kernel: Kernel) -> None:
    """A run dies mid-build; the user's next command is a plain --prebuild, which must
    leave the tree pristine (not the half-built fix)."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "fix", env={"GIT_KSPLICE_FAULT": checkpoint}, expect=KILLED)
    r = k.create("--prebuild")
    assert "interrupted run" in r.stderr, r.stderr
    k.assert_tree_clean()
    assert "up and running" not in (k.tree / "fs/proc.c").read_text()
    k.create("--id", "fix")
    files = read_update(k.tarball("fix"))
    assert sorted(diff_objects(files)) == ["debug/diff/fs/proc.o"]
