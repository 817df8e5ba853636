"""Workflow tier: `git ksplice create` on scratch repositories of examples/tiny-kernel.

Every test gets a hermetic git (HOME, XDG_CONFIG_HOME and the identity in its tmp dir, no
system config), a fresh repository made from a copy of the tiny kernel, and the running
kernel's `.config` and `System.map` in `<repo>/ksplice/` (ignored through .git/info/exclude).
The tool is run as a user runs it: `git ksplice ...` through git's dispatch with the
checkout's `bin/` first on PATH, `python -m git_ksplice`, or the `ksplice-create` script.

`Kernel.ksplice()` snapshots the user's state (HEAD, `git status`, the index file's bytes and
a hash of every file in the working tree) before each command and asserts it unchanged
afterwards, whatever the exit code: git-ksplice must never touch the user's checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import site
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "bin"
TINY = REPO / "examples" / "tiny-kernel"

#: What the tiny kernel's build leaves in its tree (never copied from examples/).
_BUILD_PRODUCTS = ("*.o", "*.a", "*.ko", "*.mod", ".*.cmd", "*.d", "vmlinux", "System.map",
                   "modules.order", "autoconf.h", "*.tmp")

#: Variables of the machine that would change what git, make or git-ksplice do.
_SCRUBBED_PREFIXES = ("GIT_", "CCACHE_")
_SCRUBBED = ("CONCURRENCY_LEVEL", "SOURCE_DATE_EPOCH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL",
             "CC", "CFLAGS", "KCFLAGS", "LD", "ARCH", "CROSS_COMPILE", "V", "O", "KBUILD_OUTPUT",
             "XDG_CONFIG_HOME", "PYTHONPATH", "EMAIL")

EPOCH = "1700000000"
AUTHOR = ("Tiny Kernel Developer", "dev@example.org")


def python_shim(directory: Path, python: str = sys.executable) -> Path:
    """A `python3` in `directory` that runs `python`, the interpreter running the tests.

    `bin/git-ksplice` starts `python3` through /usr/bin/env, and on PATH that may be another
    one: a pyenv shim (which looks under the fake HOME), or the base interpreter of the venv
    pytest runs in. A script that execs `python` by its own path, not a symlink to it: CPython
    finds a venv's pyvenv.cfg next to the path it was started as, so a symlink elsewhere runs
    as the base interpreter, without the venv's packages.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "python3"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(python)} \"$@\"\n")
    shim.chmod(0o755)
    return shim


def hermetic_env(home: Path, python: str = sys.executable) -> dict[str, str]:
    """The machine's environment with everything git/make/ksplice-specific replaced, and
    `python3` pinned to `python` (see python_shim)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED}
    shims = home / ".test-bin"
    python_shim(shims, python)
    (home / ".config").mkdir(exist_ok=True)
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": AUTHOR[0], "GIT_AUTHOR_EMAIL": AUTHOR[1],
        "GIT_COMMITTER_NAME": AUTHOR[0], "GIT_COMMITTER_EMAIL": AUTHOR[1],
        "GIT_AUTHOR_DATE": f"{EPOCH} +0000", "GIT_COMMITTER_DATE": f"{EPOCH} +0000",
        "GIT_TERMINAL_PROMPT": "0",
        "PATH": os.pathsep.join([str(BIN), str(shims), os.environ.get("PATH", "")]),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "TERM": "dumb",
        "COLUMNS": "200",
    })
    return env


def make_venv(path: Path) -> Path:
    """A fresh venv at `path` that also sees this interpreter's packages (through a .pth
    file, so that nothing needs the network): pip, the build backend and the project's
    dependencies. Its own installs go into the venv. Returns its python."""
    r = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, explain(r)
    python = path / "bin" / "python"
    r = subprocess.run([str(python), "-c",
                        "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       capture_output=True, text=True)
    assert r.returncode == 0, explain(r)
    ours = [p for p in (*site.getsitepackages(), site.getusersitepackages())
            if Path(p).is_dir()]
    (Path(r.stdout.strip()) / "outer-packages.pth").write_text("".join(p + "\n" for p in ours))
    return python


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Nothing from the machine's git configuration or environment leaks into a test."""
    home = tmp_path / "home"
    home.mkdir()
    return use_env(monkeypatch, hermetic_env(home))


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, str]:
    """Make `env` the whole of os.environ until monkeypatch undoes it."""
    for k in list(os.environ):
        if k not in env:
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def run(cmd: list[str], *, cwd: Path | str, env: dict[str, str] | None = None,
        check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, cwd=cwd, env=env if env is not None else dict(os.environ),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(explain(r))
    return r


def explain(r: subprocess.CompletedProcess[str]) -> str:
    args = r.args if isinstance(r.args, str) else " ".join(map(str, r.args))
    return (f"$ {args}\nexit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")


# -- the running kernel ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def running_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ORIG_CONFIG of the "running kernel": the tiny kernel built once with plain `make`.
    Every repository is the same source, so one build serves the session (it is cheap, and
    nothing of it is shared but two read-only files copied into each repository)."""
    base = tmp_path_factory.mktemp("running")
    env = hermetic_env(base / "home")
    src = base / "src"
    shutil.copytree(TINY, src, ignore=shutil.ignore_patterns(*_BUILD_PRODUCTS))
    run(["make", "-s"], cwd=src, env=env)
    orig = base / "ksplice"
    orig.mkdir()
    for name in (".config", "System.map"):
        shutil.copy2(src / name, orig / name)
    return orig


# -- the user's state ------------------------------------------------------------------------


@dataclass(frozen=True)
class UserState:
    """What a user of the repository can see; git-ksplice must leave all of it alone."""

    head: str
    branch: str
    status: str
    index: bytes
    files: tuple[tuple[str, str], ...]
    refs: str  # branches, tags, stash...: everything outside refs/ksplice/
    config: bytes  # the repository's own configuration file

    @classmethod
    def of(cls, worktree: Path) -> UserState:
        def git(*args: str) -> str:
            # --no-optional-locks: `git status` must not refresh the index it is checking.
            return run(["git", "--no-optional-locks", *args], cwd=worktree, check=False).stdout

        def read(path: str) -> bytes:
            p = Path(path.strip())
            return p.read_bytes() if p.is_file() else b""

        refs = "".join(line + "\n" for line in git(
            "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
            if not line.startswith("refs/ksplice/"))
        return cls(head=git("rev-parse", "--verify", "-q", "HEAD").strip(),
                   branch=git("symbolic-ref", "-q", "HEAD").strip(),
                   status=git("status", "--porcelain=v1", "--ignored", "--untracked-files=all"),
                   index=read(git("rev-parse", "--path-format=absolute", "--git-path", "index")),
                   files=tuple(sorted(_file_hashes(worktree).items())),
                   refs=refs,
                   config=read(git("rev-parse", "--path-format=absolute", "--git-common-dir")
                               .strip() + "/config"))

    def assert_same(self, after: UserState, what: str) -> None:
        diffs = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(after, f.name)
            if a == b:
                continue
            if f.name == "files":
                da, db = dict(a), dict(b)
                changed = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
                diffs.append(f"files changed: {changed}")
            elif f.name in ("index", "config"):
                diffs.append(f"{f.name} file changed ({len(a)} -> {len(b)} bytes)")
            else:
                diffs.append(f"{f.name}: {a!r} -> {b!r}")
        assert not diffs, f"{what} changed the user's state:\n  " + "\n  ".join(diffs)


def _file_hashes(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != ".git"]
            filenames = [f for f in filenames if f != ".git"]
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif not stat.S_ISREG(st.st_mode):  # a FIFO a test made: reading it would hang
                out[rel] = f"special:{stat.S_IFMT(st.st_mode):o}"
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = f"{oct(st.st_mode & 0o777)}:{digest}"
        for d in dirnames:  # empty directories are state too
            if not any((Path(dirpath) / d).iterdir()):
                out[(Path(dirpath) / d).relative_to(root).as_posix() + "/"] = "dir"
    return out


# -- a scratch kernel repository -------------------------------------------------------------


class Kernel:
    """A scratch git repository of the tiny kernel, with ORIG_CONFIG in `ksplice/`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # paths of git-ksplice's state (under the common git dir)
    @property
    def state_dir(self) -> Path:
        return self.path / ".git" / "ksplice"

    @property
    def tree(self) -> Path:
        return self.state_dir / "build" / "tree"

    @property
    def updates_dir(self) -> Path:
        return self.state_dir / "updates"

    def tarball(self, update_id: str, out: Path | None = None) -> Path:
        return (out or self.updates_dir) / f"ksplice-{update_id}.tar.gz"

    def log(self, update_id: str) -> Path:
        return self.state_dir / "logs" / f"{update_id}.log"

    # git
    def git(self, *args: str, cwd: Path | None = None, check: bool = True,
            input: str | None = None) -> str:
        r = subprocess.run(["git", *args], cwd=cwd or self.path, capture_output=True,
                           text=True, input=input)
        if check and r.returncode != 0:
            raise AssertionError(explain(r))
        return r.stdout

    def rev(self, rev: str) -> str:
        return self.git("rev-parse", "--verify", rev).strip()

    def ksplice_refs(self) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", "refs/ksplice/")
        return dict(line.split(" ", 1) for line in out.splitlines())

    def edit(self, rel: str, old: str, new: str, *, root: Path | None = None) -> None:
        p = (root or self.path) / rel
        text = p.read_text()
        assert old in text, f"{old!r} not in {rel}"
        p.write_text(text.replace(old, new, 1))

    def commit(self, message: str, edits: dict[str, tuple[str, str]], *,
               root: Path | None = None) -> str:
        """Edit files (path -> (old text, new text)) and commit them, as a developer does."""
        root = root or self.path
        for rel, (old, new) in edits.items():
            self.edit(rel, old, new, root=root)
        self.git("add", "--", *edits, cwd=root)
        self.git("commit", "-q", "-m", message, cwd=root)
        return self.rev("HEAD") if root == self.path else self.git(
            "rev-parse", "HEAD", cwd=root).strip()

    def diff(self, old: str = "HEAD~1", new: str = "HEAD") -> str:
        return self.git("diff", old, new)

    # running git-ksplice
    def ksplice(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                expect: int | None = 0, via: str = "git", git_args: tuple[str, ...] = (),
                check_state: tuple[Path, ...] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run git-ksplice as a user does and check what every run must respect: the exit
        code, no Python traceback, and the user's state untouched. `via`: `git` (git's
        dispatch, with `git_args` before `ksplice`), `python` (python -m git_ksplice) or
        `script` (ksplice-create)."""
        cmd = {"git": ["git", *git_args, "ksplice"],
               "python": [sys.executable, "-m", "git_ksplice"],
               "script": ["ksplice-create"]}[via] + list(args)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        worktrees = check_state if check_state is not None else (self.path,)
        before = [UserState.of(w) for w in worktrees]
        r = subprocess.run(cmd, cwd=cwd or self.path, env=full_env, capture_output=True,
                           text=True, timeout=timeout)
        for w, b in zip(worktrees, before, strict=True):
            b.assert_same(UserState.of(w), " ".join(cmd))
        assert "Traceback" not in r.stderr, explain(r)
        if expect is not None:
            assert r.returncode == expect, explain(r)
        return r

    def create(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return self.ksplice("create", *args, **kw)

    def prebuild(self) -> None:
        self.create("--prebuild")

    def assert_tree_clean(self) -> None:
        """No run left the build tree mid-build: it holds the commit its pristine build is
        of, unmodified. (After --series that is the old pre until the next run needs the
        new one.)"""
        dirty = self.git("status", "--porcelain", "--untracked-files=no", cwd=self.tree)
        # A tracked .config is replaced by the running kernel's (ORIG_CONFIG) on purpose.
        dirty = "".join(line + "\n" for line in dirty.splitlines() if line != " M .config")
        assert dirty == "", f"build tree dirty:\n{dirty}"
        state = json.loads((self.tree.parent / "state.json").read_text())
        assert state.get("phase") == "pristine", state
        head = self.git("rev-parse", "HEAD", cwd=self.tree).strip()
        assert head == state["pre"], (head, state)
        self.git("merge-base", "--is-ancestor", head, "refs/ksplice/pre")

    def assert_no_tmp_refs(self) -> None:
        left = [r for r in self.ksplice_refs() if r.startswith("refs/ksplice/tmp/")]
        assert left == [], f"temporary refs left: {left}"


def make_repo(path: Path, orig_config: Path) -> Kernel:
    shutil.copytree(TINY, path, ignore=shutil.ignore_patterns(*_BUILD_PRODUCTS))
    k = Kernel(path)
    k.git("init", "-q", "-b", "main")
    k.git("add", "-A")
    k.git("commit", "-q", "-m", "tiny kernel " + (path / "RELEASE").read_text().strip())
    (path / "ksplice").mkdir()
    for name in (".config", "System.map"):
        shutil.copy2(orig_config / name, path / "ksplice" / name)
    with open(path / ".git" / "info" / "exclude", "a") as f:
        f.write("ksplice/\n")
    assert k.git("status", "--porcelain") == ""
    return k


@pytest.fixture
def new_kernel(tmp_path: Path, running_kernel: Path, hermetic: dict[str, str]):
    """Factory: `new_kernel("name")` makes another fresh repository in this test's tmp dir."""
    def make(name: str = "linux") -> Kernel:
        return make_repo(tmp_path / name, running_kernel)
    return make


@pytest.fixture
def kernel(new_kernel) -> Kernel:
    """A fresh repository; refs/ksplice/pre does not exist yet and nothing is built."""
    return new_kernel("linux")


@pytest.fixture
def warm_kernel(kernel: Kernel) -> Kernel:
    """A repository after `git ksplice create --prebuild`: pre at HEAD, the tree built."""
    kernel.prebuild()
    return kernel


# -- changes the tests make ------------------------------------------------------------------

#: fs/proc.c's proc_show says more (its string literal changes).
PROC_FIX = {"fs/proc.c": ("uptime: up\\n", "uptime: up and running\\n")}
#: kernel/sys.c's sys_uname reports a longer name.
SYS_FIX = {"kernel/sys.c": ('"Tiny"', '"Tiny Linux"')}
#: the demo module's demo_value returns one more.
DEMO_FIX = {"drivers/demo/demo_util.c": ("return level;", "return level + 1;")}


# -- fake make ----------------------------------------------------------------------------


@pytest.fixture
def fake_make(tmp_path: Path):
    """Factory for a `make` wrapper put first on PATH: runs a shell snippet, then the real
    make. Only for injecting timing and failures."""
    real = shutil.which("make")
    assert real, "make is not installed"
    real = str(Path(real).resolve())

    def make(name: str, body: str) -> Path:
        d = tmp_path / f"fake-make-{name}"
        d.mkdir()
        script = d / "make"
        script.write_text(f"#!/bin/sh\n{body}\nexec {real} \"$@\"\n")
        script.chmod(0o755)
        return d
    return make


def with_path_first(directory: Path) -> dict[str, str]:
    return {"PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


# -- reading updates -------------------------------------------------------------------------


def read_update(path: Path) -> dict[str, bytes]:
    """The files of an update tarball, by path inside its one top directory."""
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        tops = {n.split("/", 1)[0] for n in names}
        assert tops == {path.name.removesuffix(".tar.gz")}, tops
        out = {}
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name.split("/", 1)[1]] = f.read()
    return out


def diff_objects(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.startswith("debug/diff/")}


def manifest(files: dict[str, bytes]) -> dict:
    return json.loads(files["manifest.json"])


def changed_functions(m: dict) -> dict[str, list[str]]:
    """object -> names of the changed and new functions, from a manifest."""
    out = {}
    for t in m["targets"].values():
        for obj, o in t["objects"].items():
            out[obj] = sorted(f["name"] for f in o["changed_functions"] + o["new_functions"])
    return out


def symbols(obj: bytes, tmp: Path) -> str:
    p = tmp / "obj.o"
    p.write_bytes(obj)
    return run(["nm", str(p)], cwd=tmp).stdout


@contextlib.contextmanager
def unchanged(*worktrees: Path) -> Iterator[None]:
    """For commands not run through Kernel.ksplice (background processes)."""
    before = [UserState.of(w) for w in worktrees]
    yield
    for w, b in zip(worktrees, before, strict=True):
        b.assert_same(UserState.of(w), "the commands")

