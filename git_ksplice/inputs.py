"""The four ways to say what changed, turned into one post commit.

`COMMIT` (or `--git=COMMIT`) is used as it is. `--patch=FILE` is applied with patch(1), as
ksplice-create did, to copies of the files it touches taken from `refs/ksplice/pre`, in a
scratch directory; `--diffext=EXT` takes every `X<EXT>` file of the user's working tree as the
new `X`. Either way the result is a commit on top of pre made with a fixed identity and date,
so the same input always gives the same commit; the user's files, index and HEAD are only
ever read.

Files are read as git would store them, and nothing from outside the repository gets in: a
symlink is committed as a symlink (its target, never what it points at), and refused when its
target leads out of the tree or into `.git`; FIFOs, devices and sockets are refused (a FIFO
would hang the read, /dev/zero would fill memory); reads are bounded; paths with `..` or a
`.git` component are refused. Patches apply exactly: no fuzz unless `--patch-opt` asks.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.errors import InputError, NoChangeError
from git_ksplice.files import open_fd, read_bounded
from git_ksplice.repo import Repo, Symlink

#: The largest file a change may hold. Linux's largest sources (generated register headers)
#: are a few tens of MB; a larger "source" is a mistake, and reading it whole would be too.
MAX_FILE_BYTES = 128 << 20
#: The largest patch file read.
MAX_PATCH_BYTES = 256 << 20

#: A file of the change: regular content, a symlink, or None (the change deletes it).
Entry = bytes | Symlink | None


@dataclass
class Change:
    post: str
    #: How the change was given, for the manifest: `commit`, `patch` or `diffext`.
    mode: str
    #: What the update's `patch` file holds.
    patch: str
    #: A one-line summary (the commit subject, or the patch file's name).
    summary: str
    #: True when `post` is a temporary commit made here (kept under refs/ksplice/tmp/).
    temporary: bool = False
    #: Files the change adds to pre, and what to tell the user about the input.
    added: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: For a temporary commit: writes its objects again (the same commit: its identity and
    #: date are fixed). Until a ref holds it, a `git gc --prune=now` may delete it.
    rewrite: Callable[[], str] | None = None


def from_commit(repo: Repo, rev: str, pre: str, *, new_pre: bool = False) -> Change:
    """`new_pre`: refs/ksplice/pre is being created from HEAD by this run (first use)."""
    post = repo.resolve_commit(rev)
    if post is None:
        raise InputError(f"unknown commit {rev!r}",
                         hint="give a commit (a hash, branch or tag) that git rev-parse knows")
    if post == pre:
        raise _commit_is_pre(repo, rev, pre, new_pre)
    if repo.is_ancestor(post, pre):
        # Not "not a descendant": with --series, pre moves past each update built, and a
        # commit an update already carries is in its history (two series runs racing).
        raise NoChangeError(f"{rev} ({post[:12]}) is already in refs/ksplice/pre "
                            f"({pre[:12]}): an update built since carries its change. No "
                            "changes detected.",
                            hint="git ksplice series lists the updates built")
    if not repo.is_ancestor(pre, post):
        raise InputError(
            f"{rev} ({post[:12]}) is not a descendant of refs/ksplice/pre ({pre[:12]}), "
            "the source of the running kernel",
            hint="build updates from commits on top of the running kernel's source; if the "
                 "running kernel changed, move refs/ksplice/pre (git ksplice create "
                 "--series --prebuild at the new source)")
    patch = repo.diff_patch(pre, post)
    message = repo.commit_message(post)
    parents = repo.pygit[post].parent_ids
    if len(parents) == 1 and str(parents[0]) == pre:
        patch = message.rstrip("\n") + "\n\n" + patch  # one commit: keep its log, like --git
    return Change(post, "commit", patch, repo.commit_subject(post))


def _commit_is_pre(repo: Repo, rev: str, pre: str, new_pre: bool) -> NoChangeError:
    """"No changes detected", with why: the three ways a user gets here want three answers.
    Edits left uncommitted (the commit is HEAD and the worktree differs from it) are the
    change the user meant; on first use pre was just taken from HEAD, so HEAD cannot also
    be the fix; otherwise the commit really is the running kernel's source."""
    head = repo.resolve_commit("HEAD")
    edits = repo.uncommitted_changes() if pre == head else []
    if edits:
        shown = ", ".join(edits[:3]) + (f" and {len(edits) - 3} more" if len(edits) > 3
                                        else "")
        where = (f"refs/ksplice/pre, just created from it ({pre[:12]})" if new_pre
                 else f"refs/ksplice/pre ({pre[:12]})")
        return NoChangeError(
            f"{rev} is {where}, and the edits to {shown} are not committed: No changes "
            "detected.",
            hint="commit them and run git ksplice create again; or build them as they are, "
                 "with --diffext=EXT (each file X<EXT> replaces X) or --patch=FILE (git diff "
                 "> fix.patch; git ksplice create --patch=fix.patch)")
    if new_pre:
        parent = " (HEAD~1 if the fix is the last commit)" if \
            repo.resolve_commit("HEAD~1") else ""
        return NoChangeError(
            f"refs/ksplice/pre did not exist and was just created from HEAD ({pre[:12]}), "
            "so the running kernel is taken to be HEAD, which is "
            f"{'' if rev == 'HEAD' else rev + ', '}the commit to build: No changes detected.",
            hint="if HEAD already holds the fix, point refs/ksplice/pre at the running "
                 "kernel's commit and run git ksplice create again: git update-ref "
                 f"refs/ksplice/pre <running kernel's commit>{parent}; if HEAD is the "
                 "running kernel's source, commit the fix on top of it")
    return NoChangeError(
        f"{rev} is refs/ksplice/pre itself ({pre[:12]}, the running kernel's source): No "
        "changes detected.",
        hint="commit the fix on top of it, or give it as --patch=FILE or --diffext=EXT; if "
             "refs/ksplice/pre is not the running kernel's source, point it there: git "
             "update-ref refs/ksplice/pre <running kernel's commit>")


def _strip_level(opts: list[str]) -> int:
    for i, o in enumerate(opts):
        m = re.fullmatch(r"(?:-p|--strip=)(\d+)", o)
        if m:
            return int(m.group(1))
        if o in ("-p", "--strip") and i + 1 < len(opts) and opts[i + 1].isdigit():
            return int(opts[i + 1])
    return 0  # patch(1) without -p keeps only the file's base name; we take the path as is


def _patch_paths(text: str, strip: int) -> list[str]:
    paths = []
    for line in text.splitlines():
        if line.startswith(("--- ", "+++ ")):
            name = line[4:].split("\t")[0].strip()
            if name == "/dev/null":
                continue
            if name.startswith('"') and name.endswith('"'):
                name = name[1:-1]
            parts = name.split("/")
            if strip >= len(parts):
                continue
            rel = "/".join(parts[strip:])
            if rel not in paths:
                paths.append(rel)
    return paths


def from_patch(repo: Repo, patch_file: Path, pre: str, patch_opts: list[str]) -> Change:
    data = read_input_file(patch_file, MAX_PATCH_BYTES, "patch")
    text = data.decode("utf-8", "surrogateescape")
    if not text.strip():
        raise InputError(f"patch {patch_file} is empty", hint="No changes to build.")
    if re.search(r"^GIT binary patch$", text, re.M):
        raise InputError(f"{patch_file} holds a git binary patch, which patch(1) cannot apply",
                         hint="apply it with git (git am or git apply, then commit) and build "
                              "the commit: git ksplice create COMMIT")
    if not re.search(r"^@@ |^\*\*\* \d|^\d+(,\d+)?[acd]\d", text, re.M):
        raise InputError(f"{patch_file} is not a patch (no hunks found)",
                         hint="give a unified diff, as made by git diff or diff -u")
    paths = _patch_paths(text, _strip_level(patch_opts))
    for rel in paths:
        check_path(rel, f"patch {patch_file.name}")
    # Exact, as `git apply` is: a hunk that only fits with fuzz may land in the wrong place,
    # and an update built from it would ship code nobody reviewed. --patch-opt=--fuzz=N
    # allows it.
    fuzz = [] if any(o.startswith(("-F", "--fuzz")) for o in patch_opts) else ["--fuzz=0"]
    with tempfile.TemporaryDirectory(prefix="ksplice-patch-") as scratch:
        root = Path(scratch)
        for rel in paths:
            _materialise(root / rel, repo.read_entry(pre, rel))
        r = subprocess.run(["patch", "--batch", "--forward", "--no-backup-if-mismatch",
                            "-r", "-", *fuzz, *patch_opts, "-d", str(root), "-i",
                            str(patch_file.resolve())],
                           capture_output=True, text=True)
        if r.returncode != 0:
            detail = (r.stdout + r.stderr).strip().splitlines()
            raise InputError(f"patch {patch_file} does not apply to refs/ksplice/pre "
                             f"({pre[:12]}):\n  " + "\n  ".join(detail[-8:]),
                             hint="rebase the patch on the running kernel's source, or "
                                  "check --patch-opt (default -p1)")
        files: dict[str, Entry] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            # A symlink to a directory is listed with the directories (and not followed).
            for f in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                full = Path(dirpath) / f
                rel = full.relative_to(root).as_posix()
                if f.endswith((".orig", ".rej")) and rel not in paths:
                    continue
                files[rel] = read_tree_file(full, rel)
        for rel in paths:
            if rel not in files and repo.read_entry(pre, rel) is not None:
                files[rel] = None  # the patch deleted it
    return _temporary(repo, pre, files, "patch", patch_file.name, text)


def from_diffext(repo: Repo, ext: str, pre: str) -> Change:
    if repo.toplevel is None:
        raise InputError("--diffext needs a working tree (this repository is bare)")
    if not ext or "/" in ext:
        raise InputError(f"--diffext={ext!r}: give a file name suffix such as .new")
    # Refused rather than taken as `.new`: a suffix without its dot cuts names in the middle
    # (`printk.c.new` ends in `new`, which made it the new file `printk.c.`), and guessing
    # that a dot was meant would change what an explicit suffix like `_new` means. Ksplice
    # documents the option with the dot (--diffext=.new), so the hint costs one retry.
    if not ext.startswith("."):
        raise InputError(f"--diffext={ext}: EXT is a file name extension with its dot "
                         f"(X.{ext} replaces X)", hint=f"did you mean --diffext=.{ext}?")
    files = _diffext_files(repo.toplevel, ext)
    if not files:
        raise InputError(f"--diffext={ext}: no file ending in {ext} in {repo.toplevel}",
                         hint=f"put the new version of X next to it as X{ext}")
    added = sorted(rel for rel in files if repo.read_entry(pre, rel) is None)
    if len(added) == len(files):
        # Nothing replaced, only new files: no Makefile builds them, so the build would find
        # no change. More likely EXT matched the wrong files (--diffext=.c): say so now.
        shown = ", ".join(f"{rel}{ext}" for rel in added[:3]) + (
            f" and {len(added) - 3} more" if len(added) > 3 else "")
        raise InputError(f"--diffext={ext}: none of the files ending in {ext} ({shown}) is "
                         "the new version of a file of refs/ksplice/pre",
                         hint=f"X{ext} replaces X, a file of the running kernel's source "
                              f"(is {ext} the extension you meant?); a new file also needs the "
                              f"change to the Makefile that builds it (as Makefile{ext})")
    change = _temporary(repo, pre, files, "diffext", f"--diffext={ext}", "")
    change.added = added
    change.notes = [f"--diffext={ext}: {rel} is a new file (refs/ksplice/pre has no {rel})"
                    for rel in added]
    return change


def _diffext_files(top: Path, ext: str) -> dict[str, Entry]:
    """Every X<EXT> of the working tree, as {X: its contents as git would store them}."""
    files: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        for f in filenames + links:
            if f.endswith(ext) and f != ext:
                full = Path(dirpath) / f
                rel = full.relative_to(top).as_posix()
                files[rel[: -len(ext)]] = read_tree_file(full, rel)
    return files


# -- reading files as git would store them ------------------------------------------------


def check_path(rel: str, where: str) -> None:
    """A path a change may write: inside the tree, and not into `.git` (where a file would be
    a hook or a config, not source)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"{where}: {rel!r} is not a path inside the tree",
                         hint="a change may only touch files of the kernel's source tree")
    if any(p.casefold() == ".git" for p in parts):
        raise InputError(f"{where}: {rel} is inside .git, which is no part of the source",
                         hint="a change may only touch files of the kernel's source tree")


def read_tree_file(full: Path, rel: str) -> bytes | Symlink:
    """A file of a tree that becomes part of the change: a symlink's target (the link is not
    followed), or a regular file's bytes. Opened with O_NOFOLLOW, so a link swapped in after
    the walk is not followed either."""
    try:
        fd = open_fd(full, rel, follow=False)
    except OSError:  # ELOOP: a symlink
        return Symlink(os.readlink(os.fsencode(full)))
    return read_bounded(fd, MAX_FILE_BYTES, rel,
                        "a change holds regular files and symlinks only: remove it")


def read_input_file(path: Path, limit: int, what: str) -> bytes:
    """A file the user names on the command line (a patch): symlinks followed, as any
    command does, but only a regular file is read, and at most `limit` bytes."""
    return read_bounded(open_fd(path, f"{what} {path}"), limit, f"{what} {path}",
                        f"give the {what} as a file")


def _materialise(path: Path, entry: bytes | Symlink | None) -> None:
    """Put pre's version of a file into patch(1)'s scratch tree as git would check it out: a
    symlink as a symlink, so a plain diff against it fails instead of rewriting its target."""
    if entry is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(entry, Symlink):
        os.symlink(entry.target, os.fsencode(path))
    else:
        path.write_bytes(entry)


def _check_entries(repo: Repo, pre: str, files: dict[str, Entry], where: str) -> None:
    """Every file the change writes, and every symlink it makes or changes: inside the tree.
    (Links pre already has are the source's own, and left alone.)"""
    post = _PostTree(repo, pre, files)
    for rel, entry in files.items():
        check_path(rel, where)
        if entry is not None and repo.is_directory(pre, rel):
            raise InputError(f"{where}: {rel} is a directory in refs/ksplice/pre; a file "
                             "cannot replace it", hint="change the files inside it instead")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if isinstance(post.entry("/".join(parts[:i])), Symlink):
                raise InputError(f"{where}: {rel} is beyond a symbolic link "
                                 f"({'/'.join(parts[:i])})",
                                 hint="a change may only touch files of the source tree")
        if isinstance(entry, Symlink) and entry != repo.read_entry(pre, rel):
            _check_link_target(post, rel, entry, where)


class _PostTree:
    """Paths as the post commit will have them (pre with the change's files): what a
    checkout of it will follow."""

    def __init__(self, repo: Repo, pre: str, files: dict[str, Entry]) -> None:
        self.repo, self.pre, self.files = repo, pre, files

    def entry(self, path: str) -> Entry:
        return self.files[path] if path in self.files else self.repo.read_entry(self.pre, path)

    def resolve(self, directory: list[str], target: str, hops: int = 40) -> list[str] | None:
        """Where `target`, read in `directory`, leads once every symlink on the way is
        followed as the file system will follow it (a `..` after a link climbs from where
        the link points): the path's components, or None when it leaves the tree."""
        if target.startswith("/") or hops == 0:
            return None
        current = list(directory)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    return None
                current.pop()
                continue
            current.append(part)
            entry = self.entry("/".join(current))
            if isinstance(entry, Symlink):
                followed = self.resolve(current[:-1], os.fsdecode(entry.target), hops - 1)
                if followed is None:
                    return None
                current = followed
        return current


def _check_link_target(post: _PostTree, rel: str, link: Symlink, where: str) -> None:
    """Text alone cannot tell where a link leads (`r/../../etc/passwd`, with r a link to the
    tree's root, reads as inside): it is resolved through the post tree's links."""
    target = os.fsdecode(link.target)
    resolved = post.resolve(rel.split("/")[:-1], target)
    if resolved is None:
        raise InputError(f"{where}: {rel} is a symlink to {target}, which leads outside the "
                         "source tree",
                         hint="a change may not bring in files from outside the repository: "
                              "copy what it needs into the tree as a regular file")
    if any(p.casefold() == ".git" for p in resolved):
        raise InputError(f"{where}: {rel} is a symlink to {target}, which leads into .git",
                         hint="a change may only use files of the source tree")


def _temporary(repo: Repo, pre: str, files: dict[str, Entry], mode: str,
               summary: str, patch_text: str) -> Change:
    _check_entries(repo, pre, files, summary)
    tree = repo.tree_with_files(pre, files)
    if tree == str(repo.pygit[pre].tree_id):
        raise NoChangeError(f"{summary} changes nothing in refs/ksplice/pre: "
                            "No changes detected.")

    message = f"git-ksplice: {summary}\n"
    post = repo.tool_commit(tree, pre, message)

    def write() -> str:  # the same commit again, its objects with it
        return repo.tool_commit(repo.tree_with_files(pre, files), pre, message)

    if not patch_text:
        patch_text = repo.diff_patch(pre, post)
    return Change(post, mode, patch_text, summary, temporary=True, rewrite=write)
