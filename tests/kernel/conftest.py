"""The real-kernel tier: Linux 6.1 from Debian's linux-source-6.1, booted under qemu.

Two builds are made once and cached (keyed by the source tarball, the configuration
fragment and the compiler), under $KSPLICE_KERNEL_CACHE (default ~/.cache/git-ksplice):
- the running kernel, built normally: its .config, System.map, vmlinux and Module.symvers
  become ORIG_CONFIG (no `flags`: the build pins the release from the vmlinux banner), its
  bzImage is what `git ksplice try` boots, its modules are loaded there;
- a git repository of the same source whose pristine tree `git ksplice create --prebuild`
  has built (in the repository's own .git/ksplice, as a user's would be).
Each test commits its patch on a branch from refs/ksplice/pre, runs `git ksplice create`,
then `git ksplice try` with a check script that fails without the fix and passes with it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import needs

REPO = Path(__file__).resolve().parents[2]
SOURCE_TARBALL = needs.LINUX_SOURCE
FRAGMENT = REPO / "tests" / "kernel" / "reference.config-fragment"
CACHE = needs.kernel_cache()
JOBS = str(os.cpu_count() or 2)


def _sh(*cmd: str, cwd: Path, env: dict | None = None, log: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{r.stdout[-3000:]}"
                           f"{r.stderr[-3000:]}")
    return r.stdout


def _key() -> str:
    h = hashlib.sha256()
    st = SOURCE_TARBALL.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(FRAGMENT.read_bytes())
    h.update(subprocess.run(["gcc", "--version"], capture_output=True).stdout)
    return h.hexdigest()[:16]


def _extract(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _sh("tar", "xf", str(SOURCE_TARBALL), cwd=dest)
    return dest / "linux-source-6.1"


def _configure(src: Path, log: Path) -> None:
    _sh("make", "-s", "tinyconfig", cwd=src, log=log)
    _sh("scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT), cwd=src, log=log)
    _sh("make", "-s", "olddefconfig", cwd=src, log=log)
    config = (src / ".config").read_text().splitlines()
    for line in FRAGMENT.read_text().splitlines():
        if line.startswith("CONFIG_"):
            assert line in config, f"{line} did not survive olddefconfig"


@dataclass
class RunningKernel:
    tree: Path
    orig_config: Path

    @property
    def bzimage(self) -> Path:
        return self.tree / "arch" / "x86" / "boot" / "bzImage"

    def module(self, rel: str) -> Path:
        return self.tree / rel


def _running_kernel(base: Path) -> RunningKernel:
    done = base / "running.done"
    tree = base / "running" / "linux-source-6.1"
    orig = base / "orig-config"
    if not done.exists():
        shutil.rmtree(base / "running", ignore_errors=True)
        log = base / "running.log"
        tree = _extract(base / "running")
        _configure(tree, log)
        _sh("make", f"-j{JOBS}", "bzImage", "modules", cwd=tree, log=log)
        orig.mkdir(parents=True, exist_ok=True)
        for f in (".config", "System.map", "vmlinux", "Module.symvers"):
            shutil.copy2(tree / f, orig / f)
        done.write_text("ok\n")
    # No `flags` file: the release (6.1.192, where a git checkout would say 6.1.192+) is
    # pinned from the vmlinux banner. Caches of earlier versions of this tier had one.
    (orig / "flags").unlink(missing_ok=True)
    return RunningKernel(tree, orig)


def _git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="Kernel Tester",
               GIT_AUTHOR_EMAIL="tester@example.org", GIT_COMMITTER_NAME="Kernel Tester",
               GIT_COMMITTER_EMAIL="tester@example.org",
               PATH=f"{REPO / 'bin'}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(REPO))
    return env


@dataclass
class KernelRepo:
    path: Path
    env: dict[str, str]
    running: RunningKernel
    out: Path

    def git(self, *args: str) -> str:
        return _sh("git", *args, cwd=self.path, env=self.env)

    def ksplice(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "git_ksplice", *args], cwd=self.path,
                           env=self.env, capture_output=True, text=True)
        if expect is not None:
            assert r.returncode == expect, (f"git ksplice {' '.join(args)}: exit "
                                            f"{r.returncode}\n{r.stdout}\n{r.stderr}")
        assert "Traceback" not in r.stderr, r.stderr
        return r

    def commit_patch(self, name: str, edits: dict[str, list[tuple[str, str]]],
                     base: str = "refs/ksplice/pre") -> str:
        """Commit `edits` (file -> [(old, new)]) on a new branch from `base`."""
        branch = f"t/{name}-{uuid.uuid4().hex[:6]}"
        self.git("checkout", "-q", "-f", "-b", branch, base)
        for rel, pairs in edits.items():
            p = self.path / rel
            text = p.read_text()
            for old, new in pairs:
                assert old in text, f"{old!r} not in {rel}"
                text = text.replace(old, new, 1)
            p.write_text(text)
        self.git("commit", "-qam", name)
        return branch

    def create(self, name: str, *args: str, expect: int = 0) -> tuple[str, Path,
                                                                       subprocess.CompletedProcess]:
        uid = f"{name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
        r = self.ksplice("create", "-j", JOBS, "--id", uid, "-o", str(self.out), *args,
                         expect=expect)
        return uid, self.out / f"ksplice-{uid}.tar.gz", r

    def kernel_image(self) -> Path:
        """What `try` boots: the running kernel's image."""
        return self.running.bzimage

    def try_update(self, tarball: Path, check: str, modules: tuple[Path, ...] = (), *,
                   refused: bool = False) -> subprocess.CompletedProcess:
        script = self.out / f"{tarball.stem}.check.sh"
        script.write_text("#!/bin/sh\n" + check + "\n")
        args = ["try", str(tarball), "--kernel", str(self.kernel_image()), "--check",
                str(script), *(["--expect-load-failure"] if refused else [])]
        for m in modules:
            args += ["--modules", str(m)]
        return self.ksplice(*args, expect=None)


def repository_place(base: Path) -> tuple[Path, dict[str, str]]:
    """Where a tier's cached repository of the source lives under `base`, and the git
    environment it is used with."""
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    return base / "repo" / "linux-source-6.1", _git_env(home)


def source_repository(where: Path, env: dict[str, str]) -> Path:
    """The source tarball as a git repository of one commit in `where` (emptied first), its
    ORIG_CONFIG directory `ksplice/` excluded from git."""
    shutil.rmtree(where, ignore_errors=True)
    path = _extract(where)
    gitignore = path / ".gitignore"
    # Debian's packaging block ignores everything at the top level (/*).
    gitignore.write_text(gitignore.read_text().split("#\n# Debian packaging")[0])
    _sh("git", "init", "-q", cwd=path, env=env)
    _sh("git", "add", "-A", cwd=path, env=env)
    _sh("git", "commit", "-qm", "Linux 6.1 (Debian linux-source-6.1)", cwd=path, env=env)
    with open(path / ".git" / "info" / "exclude", "a") as f:
        f.write("ksplice/\n")
    return path


def _kernel_repo(base: Path, running: RunningKernel) -> KernelRepo:
    done = base / "repo.done"
    path, env = repository_place(base)
    if not done.exists():
        path = source_repository(base / "repo", env)
        shutil.copytree(running.orig_config, path / "ksplice")
        r = subprocess.run([sys.executable, "-m", "git_ksplice", "create", "--prebuild", "-j",
                            JOBS], cwd=path, env=env, capture_output=True, text=True)
        (base / "prebuild.log").write_text(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr[-3000:]
        done.write_text("ok\n")
    (path / "ksplice" / "flags").unlink(missing_ok=True)  # see _running_kernel
    out = base / "updates"
    out.mkdir(exist_ok=True)
    return KernelRepo(path, env, running, out)


#: Set once the tier has used its cache in this session, for the closing summary.
_used_cache: list[Path] = []


@pytest.fixture(scope="session")
def kernel_repo() -> KernelRepo:
    needs.require("qemu-system-x86", "busybox-static", "cpio", "linux-source-6.1", "xz-utils",
                  "flex", "bison", "bc", "libelf-dev")
    base = CACHE / f"linux-6.1-{_key()}"
    base.mkdir(parents=True, exist_ok=True)
    _used_cache.append(base)
    running = _running_kernel(base)
    return _kernel_repo(base, running)


def _disk_use(path: Path) -> str:
    r = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True)
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout else "?"


def pytest_terminal_summary(terminalreporter) -> None:
    """Say where the gigabytes went: the builds stay for the next run, and nothing else
    would tell a newcomer that their home directory just grew by 5 GB."""
    if not _used_cache:
        return
    current = _used_cache[0]
    lines = [f"real-kernel tier: Linux builds cached in {CACHE} ({_disk_use(CACHE)}), kept "
             "for the next run; KSPLICE_KERNEL_CACHE=DIR puts them elsewhere, "
             f"`rm -rf {CACHE}` frees the space"]
    for stale in sorted(CACHE.glob("linux-6.1-*")):
        if stale != current:
            lines.append(f"  {stale.name} ({_disk_use(stale)}) was built for another "
                         "configuration fragment, source or compiler: remove it if no other "
                         "checkout uses it")
    terminalreporter.write_sep("-", "kernel cache")
    for line in lines:
        terminalreporter.write_line(line)
