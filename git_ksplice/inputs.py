"""The four ways to say what changed, turned into one post commit.

`COMMIT` (or `--git=COMMIT`) is used as it is. `--patch=FILE` is applied with patch(1), as
ksplice-create did, to copies of the files it touches taken from `refs/ksplice/pre`, in a
scratch directory; `--diffext=EXT` takes every `X<EXT>` file of the user's working tree as the
new `X`. Either way the result is a commit on top of pre made with a fixed identity and date,
so the same input always gives the same commit; the user's files, index and HEAD are only
ever read.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.errors import InputError, NoChangeError
from git_ksplice.repo import Repo


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


def from_commit(repo: Repo, rev: str, pre: str, *, new_pre: bool = False) -> Change:
    """`new_pre`: refs/ksplice/pre is being created from HEAD by this run (first use)."""
    post = repo.resolve_commit(rev)
    if post is None:
        raise InputError(f"unknown commit {rev!r}",
                         hint="give a commit (a hash, branch or tag) that git rev-parse knows")
    if post == pre:
        raise _commit_is_pre(repo, rev, pre, new_pre)
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
    try:
        data = patch_file.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read patch {patch_file}: {e.strerror}") from None
    text = data.decode("utf-8", "surrogateescape")
    if not text.strip():
        raise InputError(f"patch {patch_file} is empty", hint="No changes to build.")
    if not re.search(r"^@@ |^\*\*\* \d|^\d+(,\d+)?[acd]\d", text, re.M):
        raise InputError(f"{patch_file} is not a patch (no hunks found)",
                         hint="give a unified diff, as made by git diff or diff -u")
    paths = _patch_paths(text, _strip_level(patch_opts))
    with tempfile.TemporaryDirectory(prefix="ksplice-patch-") as scratch:
        root = Path(scratch)
        for rel in paths:
            blob = repo.read_blob(pre, rel)
            if blob is not None:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(blob)
        r = subprocess.run(["patch", "--batch", "--forward", "--no-backup-if-mismatch",
                            "-r", "-", *patch_opts, "-d", str(root), "-i",
                            str(patch_file.resolve())],
                           capture_output=True, text=True)
        if r.returncode != 0:
            detail = (r.stdout + r.stderr).strip().splitlines()
            raise InputError(f"patch {patch_file} does not apply to refs/ksplice/pre "
                             f"({pre[:12]}):\n  " + "\n  ".join(detail[-8:]),
                             hint="rebase the patch on the running kernel's source, or "
                                  "check --patch-opt (default -p1)")
        files: dict[str, bytes | None] = {}
        for dirpath, _, filenames in os.walk(root):
            for f in filenames:
                full = Path(dirpath) / f
                rel = full.relative_to(root).as_posix()
                if f.endswith((".orig", ".rej")) and rel not in paths:
                    continue
                files[rel] = full.read_bytes()
        for rel in paths:
            if rel not in files and repo.read_blob(pre, rel) is not None:
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
    added = sorted(rel for rel in files if repo.read_blob(pre, rel) is None)
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


def _diffext_files(top: Path, ext: str) -> dict[str, bytes | None]:
    """Every X<EXT> of the working tree, as {X: its contents}."""
    files: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for f in filenames:
            if f.endswith(ext) and f != ext:
                full = Path(dirpath) / f
                files[full.relative_to(top).as_posix()[: -len(ext)]] = full.read_bytes()
    return files


def _temporary(repo: Repo, pre: str, files: dict[str, bytes | None], mode: str,
               summary: str, patch_text: str) -> Change:
    tree = repo.tree_with_files(pre, files)
    if tree == str(repo.pygit[pre].tree_id):
        raise NoChangeError(f"{summary} changes nothing in refs/ksplice/pre: "
                            "No changes detected.")
    post = repo.tool_commit(tree, pre, f"git-ksplice: {summary}\n")
    if not patch_text:
        patch_text = repo.diff_patch(pre, post)
    return Change(post, mode, patch_text, summary, temporary=True)
