"""Two `git ksplice create` on one repository at once: the second queues behind the first
(default), or with --no-wait gives up at once; neither corrupts the other's work."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.workflow.conftest import (
    PROC_FIX,
    Kernel,
    diff_objects,
    read_update,
    unchanged,
    with_path_first,
)

SLOW = 3  # seconds the first run's patched build takes


def _start(k: Kernel, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(["git", "ksplice", "create", *args], cwd=k.path,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"first run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the first run never reached make"
        time.sleep(0.05)


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
def test_two_creates_at_once(wait: bool, warm_kernel: Kernel, fake_make,
                             tmp_path: Path) -> None:
    """A developer starts a second create in another terminal while the first is building."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    building = tmp_path / "building"
    slow = fake_make("slow", f"if [ ! -e {building} ]; then touch {building}; "
                             f"sleep {SLOW}; fi")
    with unchanged(k.path):
        first = _start(k, "--id", "first", env=with_path_first(slow))
        try:
            _wait_for(building, first)  # the first holds the lock and is in make
            second = subprocess.run(
                ["git", "ksplice", "create", "--id", "second",
                 *([] if wait else ["--no-wait"])],
                cwd=k.path, capture_output=True, text=True, timeout=120)
            first_still_running = first.poll() is None
            _, err1 = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert first.returncode == 0, err1
    assert "Traceback" not in err1 + second.stderr
    if wait:
        assert second.returncode == 0, second.stderr
        assert "waiting for another git ksplice create" in second.stderr, second.stderr
        ledger = k.git("log", "--format=%s", "refs/ksplice/series").splitlines()
        assert ledger == ["ksplice second: proc: say more", "ksplice first: proc: say more"]
        a, b = (read_update(k.tarball(i)) for i in ("first", "second"))
        assert diff_objects(a) == diff_objects(b)
        assert sorted(diff_objects(a)) == ["debug/diff/fs/proc.o"]
    else:
        assert second.returncode == 1, second.stderr
        assert first_still_running, "--no-wait waited for the first run"
        assert "another git ksplice create is running" in second.stderr, second.stderr
        assert re.search(r"\(pid \d+ since", second.stderr), "names the lock holder"
        assert "refs/ksplice/updates/second" not in k.ksplice_refs()
        assert not k.tarball("second").exists()
    assert "refs/ksplice/updates/first" in k.ksplice_refs()
    k.assert_tree_clean()
    k.assert_no_tmp_refs()


def test_a_concurrent_gc_prune_cannot_take_the_temporary_commit(kernel: Kernel, tmp_path: Path,
                                                                 fake_make) -> None:
    """`git gc --prune=now` run while the pristine tree builds (a make wrapper runs it first,
    every time) deletes whatever no ref holds: the --patch run's temporary commit, written
    before the build, must survive it."""
    k = kernel
    k.edit("fs/proc.c", "uptime: up\\n", "uptime: up and on\\n")
    patch = tmp_path / "fix.patch"
    patch.write_text(k.git("diff"))
    k.git("checkout", "--", "fs/proc.c")
    gc = fake_make("gc", f"git -C {k.path} gc --prune=now --quiet >/dev/null 2>&1")
    k.create(f"--patch={patch}", "--id", "pruned", env=with_path_first(gc))
    post = k.rev("refs/ksplice/updates/pruned")
    assert k.git("cat-file", "-t", post).strip() == "commit"
    k.assert_no_tmp_refs()
