"""The Debian tier: the kernel Debian 12 ships, `linux-image-6.1.0-57-amd64`, livepatched.

Cached once under $KSPLICE_KERNEL_CACHE (beside the real-kernel tier's builds):
- Debian's packages, fetched with `apt-get download` (about 85 MB: the unsigned image with
  its modules, the headers, the kbuild tools) and unpacked with `dpkg-deb -x`, never
  installed; the 859 MB debug package is not fetched (the tier must pass without it);
- a git repository of the same source (linux-source-6.1, the tarball Debian built from),
  whose ORIG_CONFIG `git ksplice import-kernel --root` filled from the unpacked packages,
  with no `flags` file: the release and compiler are pinned from the kernel itself, and its
  pristine tree is prepared by `git ksplice create --prebuild`.
Each test commits its fix on a branch from refs/ksplice/pre, builds it with `create` and
proves it with `try`, booting Debian's own vmlinuz.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import needs
from tests.kernel.conftest import (
    CACHE,
    JOBS,
    KernelRepo,
    _sh,
    repository_place,
    source_repository,
)

RELEASE = "6.1.0-57-amd64"
PACKAGES = (f"linux-image-{RELEASE}-unsigned", f"linux-headers-{RELEASE}",
            "linux-headers-6.1.0-57-common", "linux-kbuild-6.1")


def _unpacked_packages(base: Path) -> Path:
    """Debian's packages, downloaded and unpacked under base/root (once)."""
    root, done = base / "root", base / "root.done"
    if done.exists():
        return root
    debs = base / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if len(list(debs.glob("*.deb"))) < len(PACKAGES):
        r = subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.fail(f"apt-get download {' '.join(PACKAGES)} failed (is the Debian "
                        f"security archive in the sources, and apt-get update run?):\n"
                        f"{r.stderr[-2000:]}")
    shutil.rmtree(root, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _sh("dpkg-deb", "-x", str(deb), str(root), cwd=base)
    done.write_text("ok\n")
    return root


class DebianRepo(KernelRepo):
    """The kernel tier's repository helpers, booting Debian's vmlinuz."""

    root: Path

    def kernel_image(self) -> Path:
        return self.path / "ksplice" / "vmlinuz"  # import-kernel's copy of Debian's


def _debian_repo(base: Path, root: Path) -> DebianRepo:
    done = base / "repo.done"
    path, env = repository_place(base)
    if not done.exists():
        path = source_repository(base / "repo", env)
        for args in (("import-kernel", "--root", str(root)),
                     ("create", "--prebuild", "-j", JOBS)):
            r = subprocess.run([sys.executable, "-m", "git_ksplice", *args], cwd=path,
                               env=env, capture_output=True, text=True)
            (base / f"{args[0]}.log").write_text(r.stdout + r.stderr)
            assert r.returncode == 0, r.stderr[-3000:]
        done.write_text("ok\n")
    out = base / "updates"
    out.mkdir(exist_ok=True)
    repo = DebianRepo(path, env, None, out)  # type: ignore[arg-type]
    repo.root = root
    return repo


@pytest.fixture(scope="session")
def debian_repo() -> DebianRepo:
    needs.require("qemu-system-x86", "busybox-static", "cpio", "linux-source-6.1", "xz-utils",
                  "flex", "bison", "bc", "libelf-dev", "libssl-dev", "dwarves", "openssl")
    base = CACHE / f"debian-{RELEASE}"
    base.mkdir(parents=True, exist_ok=True)
    return _debian_repo(base, _unpacked_packages(base))
