"""Every git interaction: discovery, configuration, refs, commits, worktrees, the lock.

git itself answers the questions that depend on the user's environment (`rev-parse` honours
`GIT_DIR`, `GIT_WORK_TREE`, `-C` and `safe.directory`; `git config` sees `git -c`, which
libgit2 does not). Refs move only through `git update-ref` with the expected old value: a
compare-and-swap that also writes the reflog (`--create-reflog`: git does not log
`refs/ksplice/*` by default). Objects (blobs, trees, commits) are written with pygit2,
which needs no index or working tree, so the user's HEAD, index and files are never touched.

Build worktrees are our own (`git worktree add --detach`), and every git command run inside
them gets a scrubbed environment and no hooks: the user's hooks are for the user's trees.

This module is the only one that runs git or calls pygit2. pygit2 is imported when an object
is first read or written, not with the module: the hook's background queueing only lists
refs and reads settings, and starts faster without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from git_ksplice.errors import ConcurrencyError, InputError, KspliceError

if TYPE_CHECKING:
    import pygit2

ZERO_OID = "0" * 40
REF_PRE = "refs/ksplice/pre"
REF_SERIES = "refs/ksplice/series"
REF_UPDATES = "refs/ksplice/updates/"
REF_TMP = "refs/ksplice/tmp/"

#: The identity of commits git-ksplice makes for its own bookkeeping (temporary commits from
#: --patch/--diffext): fixed, so the same input on the same base is the same commit.
TOOL_NAME = "git-ksplice"
TOOL_EMAIL = "git-ksplice@localhost"

#: Variables that tie a git process to one repository, worktree or running git command.
#: Commands run in our build worktrees must not inherit the user's (a hook's relative
#: GIT_INDEX_FILE, GIT_DIR...), nor must the hook's background worker (it serves the
#: repository, not the command that queued the build).
LOCAL_ENV = ("GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_OBJECT_DIRECTORY",
             "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
             "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE",
             "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
             "GIT_QUARANTINE_PATH", "GIT_REFLOG_ACTION", "GIT_EXEC_PATH_ORIG",
             "GIT_NAMESPACE")
#: The settings one git command was given (`git -c`, GIT_CONFIG_COUNT...): a build in our
#: own worktree keeps them (the user ran it), the hook's worker does not (`git -c
#: ksplice.series=true commit` is not a setting of the background builds).
COMMAND_SETTINGS_ENV = ("GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT")
COMMAND_SETTINGS_PREFIXES = ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_", "GIT_PUSH_OPTION")


def clean_environment(env: dict[str, str] | None = None, *,
                      drop_settings: bool = False) -> dict[str, str]:
    """`env` (default: this process's) without what ties a process to a repository or to
    the git command that started it; with `drop_settings`, without that command's `-c`
    settings too."""
    source = os.environ if env is None else env
    out = {k: v for k, v in source.items() if k not in LOCAL_ENV}
    if drop_settings:
        out = {k: v for k, v in out.items() if k not in COMMAND_SETTINGS_ENV
               and not k.startswith(COMMAND_SETTINGS_PREFIXES)}
    return out


def user_config(key: str, *, type: str | None = None) -> str | None:
    """A setting read outside any repository (the user's and the system's configuration,
    and `git -c`): for commands that need no repository (`try`)."""
    args = ["git", "config", *([f"--type={type}"] if type else []), "--get", key]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode == 1:
        return None
    if r.returncode != 0:
        raise _bad_setting(key, r.stderr)
    return r.stdout.rstrip("\n")


class GitError(KspliceError):
    pass


def _bad_setting(key: str, stderr: str) -> InputError:
    """git's complaint about a setting, and how to find and fix it (it may come from any
    configuration file, or from `git -c`)."""
    detail = stderr.strip().splitlines()[-1:] or ["git config failed"]
    return InputError(f"bad value for {key}: {detail[0].removeprefix('fatal: ')}",
                      hint=f"set it again (git config {key} VALUE) or remove it (git config "
                           f"--unset {key}); `git config --show-origin {key}` shows where it "
                           "is set")


@dataclass(frozen=True)
class Symlink:
    """A symbolic link as git stores it (mode 120000): its target, not what it points at."""

    target: bytes


class Repo:
    """A repository as git sees it from the user's environment."""

    def __init__(self, git_dir: Path, common_dir: Path, toplevel: Path | None) -> None:
        self.git_dir = git_dir
        self.common_dir = common_dir
        self.toplevel = toplevel
        self._pygit: pygit2.Repository | None = None

    @classmethod
    def discover(cls, cwd: str | Path | None = None) -> Repo:
        cwd = Path(cwd or os.getcwd())
        if not cwd.is_dir():
            raise InputError(f"{cwd} is not a directory",
                             hint="give the kernel source repository's directory")
        r = subprocess.run(["git", "rev-parse", "--absolute-git-dir", "--git-common-dir",
                            "--is-bare-repository", "--show-toplevel"],
                           cwd=cwd, capture_output=True, text=True)
        lines = r.stdout.splitlines()
        if r.returncode != 0 and not (len(lines) >= 3 and lines[2] == "true"):
            msg = (r.stderr.strip().splitlines() or ["not a git repository"])[-1]
            raise InputError(f"{msg.removeprefix('fatal: ')} ({cwd})",
                             hint="run git ksplice inside the kernel source repository, or "
                                  "use git -C DIR ksplice")
        git_dir = Path(lines[0])
        common = Path(lines[1])
        if not common.is_absolute():
            common = (cwd / common).resolve()
        toplevel = Path(lines[3]) if len(lines) > 3 and lines[2] != "true" else None
        return cls(git_dir, common.resolve(), toplevel)

    # -- running git ---------------------------------------------------------------------

    def git(self, *args: str, cwd: Path | None = None, input: str | bytes | None = None,
            env: dict[str, str] | None = None, check: bool = True, text: bool = True,
            isolated: bool = False) -> subprocess.CompletedProcess:
        """Run git on this repository. `isolated` runs it for one of our own worktrees (or
        on the object store alone): scrubbed environment, no hooks."""
        full_env = clean_environment() if isolated else dict(os.environ)
        if isolated:
            cmd = ["git", "-c", "core.hooksPath=/dev/null"]
            if cwd is None:
                cmd += [f"--git-dir={self.common_dir}"]
        else:
            cmd = ["git"]
            if cwd is None:
                cmd += [f"--git-dir={self.git_dir}"]
        if env:
            full_env.update(env)
        if isinstance(input, str) and not text:
            input = input.encode()
        r = subprocess.run(cmd + list(args), cwd=cwd, input=input, capture_output=True,
                           text=text, env=full_env)
        if check and r.returncode != 0:
            err = r.stderr if text else r.stderr.decode(errors="replace")
            raise GitError(f"git {' '.join(args)} failed: {err.strip()}")
        return r

    @classmethod
    def at_common_dir(cls, common_dir: Path) -> Repo:
        """The repository whose common git dir is `common_dir`, without asking git: for the
        hook's worker, which knows it and runs from no worktree. Refs, objects and
        settings; no working tree."""
        return cls(common_dir, common_dir, None)

    def git_here(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run git as the user would in this repository (from its top, or its git dir when
        bare): for what git resolves relative to where it runs (`core.hooksPath`,
        `rev-parse --git-path`), and for settings written where the user's are."""
        return self.git(*args, cwd=self.toplevel or self.git_dir, check=check)

    @property
    def pygit(self) -> pygit2.Repository:
        if self._pygit is None:
            import pygit2

            try:
                self._pygit = pygit2.Repository(str(self.common_dir))
            except pygit2.GitError as e:
                raise GitError(f"cannot open the repository's objects with libgit2: {e}",
                               hint="git-ksplice needs a repository libgit2 can read (not "
                                    "reftable)") from None
        return self._pygit

    def exclude(self, path: Path) -> str | None:
        """Make git ignore `path`, a directory of ours in the working tree that must never be
        committed (ORIG_CONFIG with the kernel's modules): a line in info/exclude, which
        is local to this repository and touches neither the index nor a tracked file.
        Returns the pattern added; None when `path` is outside the tree or already ignored."""
        if self.toplevel is None:
            return None
        try:
            rel = path.resolve().relative_to(self.toplevel.resolve())
        except ValueError:
            return None
        if not rel.parts or self.git_here("check-ignore", "-q", f"{rel}/",
                                           check=False).returncode == 0:
            return None
        # gitignore's special characters taken literally
        pattern = "/" + re.sub(r"([\\*?\[\]!# ])", r"\\\1", rel.as_posix()) + "/"
        exclude = self.common_dir / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        text = exclude.read_text() if exclude.exists() else ""
        with open(exclude, "a") as f:
            f.write(("" if not text or text.endswith("\n") else "\n") + pattern + "\n")
        ignored = self.git_here("check-ignore", "-q", f"{rel}/", check=False).returncode == 0
        return pattern if ignored else None

    # -- configuration -------------------------------------------------------------------

    def config(self, key: str, *, type: str | None = None) -> str | None:
        """A setting as git sees it, `git -c` included."""
        args = ["config", "--get"]
        if type:
            args.append(f"--type={type}")
        r = self.git(*args, key, check=False)
        if r.returncode == 1:
            return None
        if r.returncode != 0:
            raise _bad_setting(key, r.stderr)
        return r.stdout.rstrip("\n")

    def set_config(self, key: str, values: list[str]) -> None:
        """Replace every value of `key` with `values` (none: remove it), in the repository's
        own configuration."""
        self.git_here("config", "--unset-all", key, check=False)
        for v in values:
            self.git_here("config", "--add", key, v)

    def config_origin(self, key: str) -> str | None:
        """The file (or `command line`) a setting comes from, as `--show-origin` names it."""
        r = self.git_here("config", "--show-origin", "--get", key, check=False)
        if r.returncode != 0 or not r.stdout.strip():
            return None
        return r.stdout.split("\t", 1)[0].removeprefix("file:")

    def git_path(self, name: str) -> Path:
        """Where git keeps `name` for this repository (`hooks/X` honours core.hooksPath)."""
        out = self.git_here("rev-parse", "--path-format=absolute", "--git-path", name).stdout
        return Path(out.strip())

    def git_version(self) -> tuple[int, int] | None:
        """git's version (major, minor), or None when it says something unexpected."""
        words = self.git("version").stdout.split()
        try:
            major, minor = (int(x) for x in words[2].split(".")[:2])
        except (IndexError, ValueError):
            return None
        return major, minor

    def gc_running(self) -> int | None:
        """The pid of a `git gc` working on this repository (from its gc.pid), or None. A
        repository just made from a kernel tarball repacks 75,000 loose objects in the
        background for a minute or more, on the CPUs a build would use."""
        import socket

        try:
            pid_text, host = (self.common_dir / "gc.pid").read_text().split(maxsplit=1)
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if host.strip() != socket.gethostname() or not Path(f"/proc/{pid}").exists():
            return None
        return pid

    def config_all(self, key: str) -> list[str]:
        """Every value of a multi-valued setting, in git's order."""
        r = self.git("config", "--get-all", key, check=False)
        if r.returncode not in (0, 1):
            raise _bad_setting(key, r.stderr)
        return r.stdout.splitlines()

    # -- objects -------------------------------------------------------------------------

    def resolve_commit(self, rev: str) -> str | None:
        r = self.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}",
                     check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        r = self.git("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        return r.returncode == 0

    def commit_subject(self, oid: str) -> str:
        return self.pygit[oid].message.splitlines()[0] if self.pygit[oid].message else ""

    def commit_message(self, oid: str) -> str:
        return self.pygit[oid].message

    def first_parent(self, oid: str) -> str | None:
        """The commit's first parent, or None for a root commit; its only parent is the
        one that matters for whether a commit sits directly on another."""
        parents = self.pygit[oid].parent_ids
        return str(parents[0]) if parents else None

    def parent_count(self, oid: str) -> int:
        return len(self.pygit[oid].parent_ids)

    def tree_of(self, commit: str) -> str:
        return str(self.pygit[commit].tree_id)

    def first_parent_commits(self, new: str, exclude: list[str]) -> list[str]:
        """The commits as they landed on a branch up to `new`, oldest first, none reachable
        from `exclude`: a merge is one commit, its side branch's own commits are not."""
        args = ["rev-list", "--first-parent", "--reverse", new]
        if exclude:
            args += ["--not", *exclude]
        return self.git(*args).stdout.split()

    def changed_paths(self, old: str, new: str, patterns: tuple[str, ...]) -> list[str]:
        """Paths matching `patterns` that differ between two commits (renames as a delete
        and an add)."""
        out = self.git("diff", "--name-only", "-z", "--no-renames", old, new, "--", *patterns,
                       isolated=True).stdout
        return [p for p in out.split("\0") if p]

    def diff_patch(self, old: str, new: str) -> str:
        return self.git("diff", "--no-color", "--no-ext-diff", "--binary", old, new,
                        isolated=True).stdout

    def tree_with_files(self, base: str, files: dict[str, bytes | Symlink | None]) -> str:
        """The tree of commit `base` with `files` replaced (None: removed), in memory: no
        index file or working tree is involved. A Symlink is stored as git stores one (mode
        120000, its target as the blob); bytes are a regular file, executable if it was."""
        import pygit2

        repo = self.pygit
        index = pygit2.Index()
        index.read_tree(repo[base].peel(pygit2.Tree))
        for path, data in sorted(files.items()):
            if data is None:
                if path in index:
                    index.remove(path)
                continue
            if isinstance(data, Symlink):
                blob, mode = repo.create_blob(data.target), pygit2.enums.FileMode.LINK
            else:
                # Regular content replaces a symlink with a regular file: it never becomes
                # the link's new target.
                executable = path in index and \
                    index[path].mode == pygit2.enums.FileMode.BLOB_EXECUTABLE
                blob = repo.create_blob(data)
                mode = (pygit2.enums.FileMode.BLOB_EXECUTABLE if executable
                        else pygit2.enums.FileMode.BLOB)
            index.add(pygit2.IndexEntry(path, blob, mode))
        return str(index.write_tree(repo))

    def tool_commit(self, tree: str, parent: str, message: str) -> str:
        """A commit made by git-ksplice itself: fixed author and date (the parent's), so the
        same change on the same base always gives the same commit."""
        import pygit2

        parent_commit = self.pygit[parent]
        sig = pygit2.Signature(TOOL_NAME, TOOL_EMAIL, parent_commit.commit_time, 0)
        oid = self.pygit.create_commit(None, sig, sig, message, pygit2.Oid(hex=tree),
                                       [pygit2.Oid(hex=parent)])
        return str(oid)

    def user_commit(self, tree: str, parents: list[str], message: str) -> str:
        """A commit the user keeps (the series ledger), with the user's identity when git has
        one (GIT_AUTHOR_* / user.name), else the tool's."""
        r = self.git("var", "GIT_COMMITTER_IDENT", check=False)
        env = {}
        if r.returncode != 0:
            env = {"GIT_AUTHOR_NAME": TOOL_NAME, "GIT_AUTHOR_EMAIL": TOOL_EMAIL,
                   "GIT_COMMITTER_NAME": TOOL_NAME, "GIT_COMMITTER_EMAIL": TOOL_EMAIL}
        args = ["commit-tree", tree]
        for p in parents:
            args += ["-p", p]
        return self.git(*args, input=message, env=env).stdout.strip()

    def write_tree_from_files(self, files: dict[str, bytes]) -> str:
        import pygit2

        index = pygit2.Index()
        repo = self.pygit
        for path, data in sorted(files.items()):
            index.add(pygit2.IndexEntry(path, repo.create_blob(data),
                                        pygit2.enums.FileMode.BLOB))
        return str(index.write_tree(repo))

    def read_bounded_blob(self, commit: str, path: str, limit: int,
                          what: str = "a file") -> bytes | None:
        """A file of `commit`, read only when it is a blob of at most `limit` bytes (its
        type and size come from the object's header, before its bytes): for trees that
        arrive with `git fetch` from anyone. None when there is no such file; InputError
        when it is a directory or too large."""
        import pygit2

        entry = self._tree_entry(commit, path)
        if entry is None:
            return None
        kind, size = self.pygit.odb.read_header(entry.id)
        if kind != pygit2.enums.ObjectType.BLOB:
            raise InputError(f"{path} is not a file")
        if size > limit:
            raise InputError(f"{path} is {size >> 20} MiB, more than {what} can be")
        return entry.data  # type: ignore[union-attr]

    def first_parent_chain(self, tip: str | None) -> Iterator[str]:
        """`tip` and its first parents, newest first (a ledger's entries)."""
        oid = tip
        while oid:
            yield oid
            oid = self.first_parent(oid)

    def _tree_entry(self, commit: str, path: str) -> pygit2.Object | None:
        import pygit2

        try:
            return self.pygit[commit].peel(pygit2.Tree)[path]
        except KeyError:
            return None

    def read_entry(self, commit: str, path: str) -> bytes | Symlink | None:
        """A file of `commit` as git stores it: a regular file's bytes, a symlink's target
        (never what it points at), None for no such file (or a directory, a submodule)."""
        import pygit2

        entry = self._tree_entry(commit, path)
        if not isinstance(entry, pygit2.Blob):
            return None
        if entry.filemode == pygit2.enums.FileMode.LINK:
            return Symlink(entry.data)
        return entry.data

    def is_directory(self, commit: str, path: str) -> bool:
        import pygit2

        return isinstance(self._tree_entry(commit, path), pygit2.Tree)

    def read_blob(self, commit: str, path: str) -> bytes | None:
        import pygit2

        obj = self._tree_entry(commit, path)
        return obj.data if isinstance(obj, pygit2.Blob) else None

    def uncommitted_changes(self) -> list[str]:
        """Tracked files of the user's worktree that differ from HEAD, staged or not (empty
        for a bare repository). `--no-optional-locks`: a plain `git status` refreshes the
        index and writes it back, and the user's index is never written here. Untracked
        files do not count: build products and editor files would drown the edits."""
        if self.toplevel is None:
            return []
        r = self.git(f"--work-tree={self.toplevel}", "--no-optional-locks", "status",
                     "--porcelain=v1", "-z", "--untracked-files=no", "--ignore-submodules",
                     check=False)
        if r.returncode != 0:
            return []  # only ever used to explain "no change": not worth failing for
        fields = r.stdout.split("\0")
        out = []
        i = 0
        while i < len(fields):
            entry = fields[i]
            i += 1
            if len(entry) < 4:
                continue
            out.append(entry[3:])
            if {"R", "C"} & set(entry[:2]):  # a rename or copy: its source path follows
                i += 1
        return out

    def tracked_files(self, worktree: Path) -> set[str]:
        """The files git tracks in one of our worktrees (what is not a build product)."""
        out = self.git("ls-files", "-z", cwd=worktree, isolated=True).stdout
        return set(out.split("\0")) - {""}

    # -- refs ----------------------------------------------------------------------------

    def ref_tips(self, patterns: list[str]) -> dict[str, str]:
        """ref -> object of every ref matching one of the for-each-ref `patterns` (none
        given: none listed, never every ref)."""
        if not patterns:
            return {}
        out = self.git("for-each-ref", "--format=%(objectname) %(refname)", *patterns).stdout
        return {ref: oid for oid, ref in (line.split(" ", 1) for line in out.splitlines())}

    def current_branch(self) -> str | None:
        """The branch HEAD is on (short name), or None when detached or unborn."""
        r = self.git_here("symbolic-ref", "-q", "--short", "HEAD", check=False)
        return r.stdout.strip() or None


    def ref(self, name: str) -> str | None:
        r = self.git("rev-parse", "--verify", "--quiet", name, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def refs(self, prefix: str) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", prefix).stdout
        return dict(line.split(" ", 1) for line in out.splitlines())

    def update_refs(self, updates: list[tuple[str, str | None, str | None]],
                    message: str) -> None:
        """Move several refs at once, all or none: (name, new or None to delete, expected
        old value or None for "must not exist"); new == old only checks the ref."""
        lines = ["start"]
        for name, new, old in updates:
            if new is not None and new == old:
                lines.append(f"verify {name} {old}")
            elif new is None:
                lines.append(f"delete {name} {old or ''}".rstrip())
            else:
                lines.append(f"update {name} {new} {old or ZERO_OID}")
        lines += ["prepare", "commit"]
        r = self.git("update-ref", "--create-reflog", "-m", message, "--stdin",
                     input="\n".join(lines) + "\n", check=False)
        if r.returncode != 0:
            raise ConcurrencyError(
                "refs under refs/ksplice/ moved while git ksplice was working: "
                + r.stderr.strip().removeprefix("fatal: "),
                hint="another git ksplice or a user changed them; check `git reflog "
                     "refs/ksplice/...` and run the command again")

    def update_ref(self, name: str, new: str, old: str | None, message: str) -> None:
        """Move `name` from `old` (None: it must not exist) to `new`, or fail: nobody else's
        move is ever overwritten."""
        r = self.git("update-ref", "--create-reflog", "-m", message, name, new,
                     old or ZERO_OID, check=False)
        if r.returncode != 0:
            now = self.ref(name)
            raise ConcurrencyError(
                f"{name} moved while git ksplice was working (expected "
                f"{(old or 'no ref')[:12]}, found {(now or 'no ref')[:12]})",
                hint="another git ksplice or a user changed it; check `git reflog " + name +
                     "` and run the command again")

    def delete_ref(self, name: str, old: str, message: str) -> None:
        r = self.git("update-ref", "-m", message, "-d", name, old, check=False)
        if r.returncode != 0 and self.ref(name) is not None:
            raise ConcurrencyError(f"{name} moved while git ksplice was working; not deleted")

    # -- worktrees -----------------------------------------------------------------------

    def worktree_paths(self) -> list[Path]:
        out = self.git("worktree", "list", "--porcelain", isolated=True).stdout
        return [Path(line[9:]) for line in out.splitlines() if line.startswith("worktree ")]

    def add_worktree(self, path: Path, commit: str) -> None:
        """A detached worktree of ours at `commit`. Registered without a checkout, then
        checked out: while `worktree add` runs, the new worktree's HEAD is a placeholder, and
        a user's `git fetch` at that moment fails its connectivity check on it; without the
        checkout (seconds for a kernel tree) that moment is a few milliseconds."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.git("worktree", "add", "--detach", "--no-checkout", "--quiet", str(path), commit,
                 isolated=True)
        self.checkout(path, commit)
        self.git("worktree", "lock", "--reason", "git-ksplice build tree", str(path),
                 isolated=True, check=False)

    def remove_worktree(self, path: Path) -> None:
        self.git("worktree", "unlock", str(path), isolated=True, check=False)
        self.git("worktree", "remove", "--force", "--force", str(path), isolated=True,
                 check=False)
        if path.exists():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        self.git("worktree", "prune", isolated=True, check=False)

    def worktree_head(self, path: Path) -> str | None:
        r = self.git("rev-parse", "--verify", "--quiet", "HEAD", cwd=path, isolated=True,
                     check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def worktree_dirty(self, path: Path) -> list[str]:
        """Tracked files that differ from HEAD in one of our worktrees (build products are
        ignored or untracked and do not count)."""
        out = self.git("status", "--porcelain=v1", "-z", "--untracked-files=no",
                       "--ignore-submodules", cwd=path, isolated=True).stdout
        return [entry[3:] for entry in out.split("\0") if entry]

    def checkout(self, path: Path, commit: str) -> None:
        """Switch one of our worktrees to `commit`. Only files that differ are rewritten, so
        the build sees exactly the change."""
        self.git("checkout", "--detach", "--force", "--quiet", commit, cwd=path, isolated=True)

    # -- the lock ------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, wait: bool, on_wait=None) -> Iterator[None]:
        """Serialise `create` runs on this repository (flock: released by the kernel when a
        run dies, so a killed run never leaves a stale lock)."""
        path = self.state_dir / "lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                if not wait:
                    raise ConcurrencyError(
                        f"another git ksplice create is running on this repository "
                        f"({holder or 'unknown process'})",
                        hint="wait for it, or run without --no-wait to queue behind it"
                    ) from None
                if on_wait:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    @property
    def state_dir(self) -> Path:
        """Where git-ksplice keeps its state: build trees, caches, logs."""
        return self.common_dir / "ksplice"
