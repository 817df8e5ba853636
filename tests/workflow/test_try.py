"""`git ksplice try` without a kernel: the initramfs it boots, and the errors it gives.

Booting a real kernel is the real-kernel tier's job (tests/kernel)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

from git_ksplice import qemu
from tests.needs import require

REPO = Path(__file__).resolve().parents[2]


def test_initramfs_is_a_newc_archive_the_kernel_can_unpack(tmp_path: Path) -> None:
    require("busybox-static", "cpio")
    archive = qemu.make_initramfs({"ksplice/update.ko": b"\x7fELF-module",
                                   "ksplice/modules/a.ko": b"a"}, "#!/bin/busybox sh\n")
    listing = subprocess.run(["cpio", "-itv"], input=gzip.decompress(archive),
                             capture_output=True, check=True).stdout.decode()
    names = {line.split()[-1] for line in listing.splitlines()}
    assert {"init", "bin/busybox", "dev/console", "ksplice/update.ko",
            "ksplice/modules/a.ko"} <= names
    console = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert console.startswith("crw"), console
    # Unpacked as the kernel would, less the device node: only root may mknod.
    subprocess.run(["cpio", "-id", "--quiet", "-f", "dev/console"],
                   input=gzip.decompress(archive), cwd=tmp_path, check=True)
    assert (tmp_path / "ksplice" / "update.ko").read_bytes() == b"\x7fELF-module"
    assert (tmp_path / "init").stat().st_mode & 0o111


def _try(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "git_ksplice", "try", *args],
                          capture_output=True, text=True, cwd=REPO)


def test_update_without_a_livepatch_module_is_explained(tmp_path: Path) -> None:
    """A tarball built for a tree that is not Linux has no module to try."""
    import tarfile

    top = tmp_path / "ksplice-x"
    top.mkdir()
    (top / "contents").write_text("target vmlinux\n")
    tarball = tmp_path / "ksplice-x.tar.gz"
    with tarfile.open(tarball, "w:gz") as t:
        t.add(top, arcname="ksplice-x")
    r = _try(str(tarball), "--kernel", str(tmp_path / "bzImage"))
    assert r.returncode == 1
    assert "has no livepatch module" in r.stderr and "Traceback" not in r.stderr


def test_not_an_update(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not a tarball")
    r = _try(str(bogus), "--kernel", str(tmp_path / "bzImage"))
    assert r.returncode == 1
    assert "cannot read update" in r.stderr and "Traceback" not in r.stderr


def test_the_kernel_from_git_config(tmp_path: Path) -> None:
    """--kernel defaults to ksplice.kernel (through git, so `git -c` works)."""
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not a tarball")
    r = _try(str(bogus))
    assert r.returncode == 1 and "no --kernel was given" in r.stderr, r.stderr
    r = subprocess.run(["git", "-c", f"ksplice.kernel={tmp_path / 'bzImage'}", "ksplice",
                        "try", str(bogus)], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PATH": f"{REPO / 'bin'}:{os.environ['PATH']}"})
    assert r.returncode == 1 and "cannot read update" in r.stderr, r.stderr


def test_the_kernel_import_kernel_copied(tmp_path: Path) -> None:
    """Without --kernel or ksplice.kernel, the repository's ORIG_CONFIG/vmlinuz boots."""
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not a tarball")
    repo = tmp_path / "linux"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "ksplice").mkdir()
    r = subprocess.run([sys.executable, "-m", "git_ksplice", "try", str(bogus)],
                       capture_output=True, text=True, cwd=repo,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and "ORIG_CONFIG has no vmlinuz" in r.stderr, r.stderr
    assert "import-kernel" in r.stderr
    (repo / "ksplice" / "vmlinuz").write_bytes(b"image")
    r = subprocess.run([sys.executable, "-m", "git_ksplice", "try", str(bogus)],
                       capture_output=True, text=True, cwd=repo,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and "cannot read update" in r.stderr, r.stderr
