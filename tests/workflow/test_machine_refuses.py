"""When the machine says no: a full disk, a read-only file system. A message naming it, no
traceback, nothing half-written, and the same command works once the machine says yes.

The file systems are real: a tiny tmpfs (full after a few KiB) or a read-only one, mounted
in a private mount namespace (`unshare -rm`, so no root is needed and nothing outside the
test sees them), with git-ksplice started inside it.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from tests.workflow.conftest import PROC_FIX, Kernel, explain


def _namespaces_work() -> bool:
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                       capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(),
                                reason="no user and mount namespaces here (unshare -rm)")


def ksplice_with_mount(k: Kernel, mount: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`git ksplice ARGS` with `mount` (shell words) done first, in a private namespace."""
    cmd = " ".join(shlex.quote(a) for a in ("git", "ksplice", *args))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && exec {cmd}"], cwd=k.path,
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, explain(r)
    return r


def test_a_full_disk_leaves_nothing_half_written(warm_kernel: Kernel, tmp_path: Path) -> None:
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    full = tmp_path / "full"
    full.mkdir()
    # A tmpfs of two pages, filled to the last byte but for a few hundred.
    r = ksplice_with_mount(k, f"mount -t tmpfs -o size=8k tmpfs {full} && "
                              f"(head -c 7900 /dev/zero > {full}/filler; true)",
                           "create", "--id", "fix", "-o", str(full))
    assert r.returncode == 1, explain(r)
    assert "No space left on device" in r.stderr and "nothing was recorded" in r.stderr, \
        explain(r)
    assert "refs/ksplice/updates/fix" not in k.ksplice_refs()
    assert not any(n.startswith("refs/ksplice/tmp/") for n in k.ksplice_refs())
    # Once there is room, the same command builds the update.
    k.create("--id", "fix", "-o", str(full))
    assert (full / "ksplice-fix.tar.gz").exists()
    assert [p.name for p in full.iterdir()] == ["ksplice-fix.tar.gz"]


def test_a_read_only_output_directory_is_refused_before_the_build(warm_kernel: Kernel,
                                                                  tmp_path: Path) -> None:
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = ksplice_with_mount(k, f"mount -t tmpfs -o ro tmpfs {ro}",
                           "create", "--id", "fix", "-o", str(ro / "updates"))
    assert r.returncode == 1, explain(r)
    assert f"cannot write the tarball to {ro / 'updates'}: {ro} is on a read-only file " \
           "system" in r.stderr, explain(r)
    assert "patched build" not in r.stderr, "refused only after building"


def test_a_read_only_repository_is_named(warm_kernel: Kernel) -> None:
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    git_dir = k.path / ".git"
    r = ksplice_with_mount(k, f"mount --bind {git_dir} {git_dir} && "
                              f"mount -o remount,bind,ro {git_dir}", "create", "--id", "fix")
    assert r.returncode == 1, explain(r)
    assert "read-only file system" in r.stderr.lower(), explain(r)
    assert "internal error" not in r.stderr, explain(r)
    k.create("--id", "fix")  # and nothing needs repairing by hand
