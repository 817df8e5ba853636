"""What a user gets wrong, and what someone else breaks: a clear message, the right exit code,
no traceback, and nothing changed (the user's state by Kernel.ksplice, refs/ksplice/* here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.workflow.conftest import (
    PROC_FIX,
    Kernel,
    changed_functions,
    diff_objects,
    explain,
    manifest,
    read_update,
    unchanged,
    with_path_first,
)

BAD_PATCH = (  # made against a proc.c that counts writes: its context is not in ours
    "--- a/fs/proc.c\n"
    "+++ b/fs/proc.c\n"
    "@@ -5,6 +5,6 @@\n"
    " int proc_show(char *buf, unsigned long len)\n"
    " {\n"
    "-\twrites++;\n"
    "+\twrites += 2;\n"
    ' \treturn scnprintf(buf, len, "uptime: up\\n");\n'
    " }\n"
)


@dataclass
class Case:
    """How to get into the situation (returns the extra create arguments), what to expect."""

    setup: Callable[[Kernel, Path], list[str]]
    code: int
    message: str  # a regular expression stderr must match
    cwd: Callable[[Kernel, Path], Path] | None = None
    env: dict[str, str] = field(default_factory=dict)


def _patch_file(text: str) -> Callable[[Kernel, Path], list[str]]:
    def setup(k: Kernel, tmp: Path) -> list[str]:
        p = tmp / "change.patch"
        p.write_text(text)
        return [f"--patch={p}"]
    return setup


def _not_a_repo(k: Kernel, tmp: Path) -> Path:
    d = tmp / "elsewhere"
    d.mkdir()
    return d


def _side_commit(k: Kernel, tmp: Path) -> list[str]:
    # A commit on another line of history: an old release branch, not the running kernel's.
    side = k.git("commit-tree", "HEAD^{tree}", "-m", "another history").strip()
    k.git("branch", "other", side)
    return ["other"]


def _commit(message: str, edits: dict[str, tuple[str, str]]):
    def setup(k: Kernel, tmp: Path) -> list[str]:
        k.commit(message, edits)
        return []
    return setup


def _remove(rel: str):
    def setup(k: Kernel, tmp: Path) -> list[str]:
        p = k.path / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        return []
    return setup


def _existing_id(k: Kernel, tmp: Path) -> list[str]:
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "dup")
    return ["--id", "dup"]


def _diffext_file(k: Kernel, tmp: Path) -> list[str]:
    return ["--diffext=.new"]


def _two_modes(k: Kernel, tmp: Path) -> list[str]:
    p = tmp / "fix.patch"
    p.write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    return ["HEAD", f"--patch={p}"]


def _output_is_a_file(k: Kernel, tmp: Path) -> list[str]:
    k.commit("proc: say more", PROC_FIX)
    (tmp / "updates").write_text("not a directory\n")
    return ["-o", str(tmp / "updates")]


def _diffext_same(k: Kernel, tmp: Path) -> list[str]:
    shutil.copy2(k.path / "fs/proc.c", k.path / "fs/proc.c.new")
    return ["--diffext=.new"]


def _sign_key_only(k: Kernel, tmp: Path) -> list[str]:
    k.commit("proc: say more", PROC_FIX)
    (tmp / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    return ["--sign-key", str(tmp / "key.pem")]


def _sign_cert_missing(k: Kernel, tmp: Path) -> list[str]:
    k.commit("proc: say more", PROC_FIX)
    (tmp / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    k.git("config", "ksplice.signCert", str(tmp / "no-such.der"))
    return ["--sign-key", str(tmp / "key.pem")]


CASES = {
    "sign-key-without-certificate": Case(_sign_key_only, 1,
                                         r"a signing key was given without its certificate"),
    "sign-certificate-not-a-file": Case(_sign_cert_missing, 1,
                                        r"the signing certificate \S*no-such\.der is not a "
                                        r"file"),
    "not-a-git-repository": Case(lambda k, t: [], 1, r"not a git repository", cwd=_not_a_repo),
    "unknown-commit": Case(lambda k, t: ["no-such-branch"], 1,
                           r"unknown commit 'no-such-branch'"),
    "commit-not-descendant-of-pre": Case(_side_commit, 1,
                                         r"not a descendant of refs/ksplice/pre"),
    "commit-is-pre": Case(lambda k, t: ["HEAD"], 66, r"No changes detected\."),
    "patch-does-not-apply": Case(_patch_file(BAD_PATCH), 1,
                                 r"patch \S*change\.patch does not apply"),
    "empty-patch": Case(_patch_file(""), 1, r"patch \S*change\.patch is empty"),
    "not-a-patch": Case(_patch_file("Dear maintainer,\nplease fix uname.\n"), 1,
                        r"change\.patch is not a patch"),
    "missing-patch-file": Case(lambda k, t: [f"--patch={t / 'nowhere.patch'}"], 1,
                               r"cannot read patch \S*nowhere\.patch"),
    "diffext-without-files": Case(_diffext_file, 1, r"--diffext=\.new: no file ending in \.new"),
    "missing-orig-config": Case(_remove("ksplice"), 1,
                                r"ORIG_CONFIG directory \S*/ksplice does not exist"),
    "orig-config-without-system-map": Case(_remove("ksplice/System.map"), 1,
                                           r"Failed to find System\.map file in ORIG_CONFIG"),
    "orig-config-without-dot-config": Case(_remove("ksplice/.config"), 1,
                                           r"no \.config in ORIG_CONFIG"),
    "commit-and-patch": Case(_two_modes, 2, r"one change at a time: COMMIT/--git "
                                            r"and --patch"),
    "commit-and-git": Case(lambda k, t: ["HEAD", "--git=HEAD"], 2,
                           r"(?s)Usage:.*either as COMMIT or as --git"),
    "unknown-option": Case(lambda k, t: ["--frobnicate"], 2, r"No such option '--frobnicate'"),
    "comment-only-change": Case(_commit("proc: comment", {
        "fs/proc.c": ("/* A /proc-like", "/* A procfs-like")}), 66, r"No changes detected\."),
    "update-id-exists": Case(_existing_id, 1, r"update id dup already exists"),
    "invalid-id": Case(lambda k, t: ["--id", "Fix/1"], 1, r"--id='Fix/1'"),
    "bad-concurrency-level": Case(lambda k, t: [], 1, r"CONCURRENCY_LEVEL='many'",
                                  env={"CONCURRENCY_LEVEL": "many"}),
    "refused-init-code": Case(_commit("core: start at 2", {
        "kernel/core.c": ("ticks = 1;", "ticks = 2;")}), 65,
        r"core_init in \.init\.text: changed __init"),
    "refused-data-initialiser": Case(_commit("proc: count from 3", {
        "fs/proc.c": ("static unsigned long reads;", "static unsigned long reads = 3;")}),
        65, r"reads in \.data\.reads: changed initialiser"),
    "diffext-changes-nothing": Case(_diffext_same, 66, r"No changes detected\."),
    "output-is-a-file": Case(_output_is_a_file, 1, r"\S*/updates"),
    "bad-source-date-epoch": Case(_commit("proc: say more", PROC_FIX), 1,
                                  r"SOURCE_DATE_EPOCH='yesterday'",
                                  env={"SOURCE_DATE_EPOCH": "yesterday"}),
}


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, warm_kernel: Kernel, tmp_path: Path) -> None:
    """A user gives git ksplice create something it cannot use."""
    k, case = warm_kernel, CASES[name]
    args = case.setup(k, tmp_path)
    refs = k.ksplice_refs()
    updates = _listing(k.updates_dir)
    cwd = case.cwd(k, tmp_path) if case.cwd else None
    if "--id" not in args:
        args += ["--id", "bad"]
    r = k.create(*args, "--json", cwd=cwd, env=case.env, expect=case.code)
    assert re.search(case.message, r.stderr), r.stderr
    if case.code == 2:  # usage errors are click's: usage on stderr, nothing on stdout
        assert r.stdout == ""
    else:
        assert re.search(r"(^|\n)error: ", r.stderr), r.stderr
        doc = json.loads(r.stdout)  # --json: one document on stdout whatever happens
        assert doc["result"] == {66: "unchanged", 65: "refused"}.get(case.code, "error"), doc
        assert re.search(case.message, doc["message"]), doc
    assert k.ksplice_refs() == refs, "refs/ksplice/* changed"
    assert _listing(k.updates_dir) == updates, "a tarball was written"
    k.assert_tree_clean()


def test_build_failure_shows_compiler_error_and_log(warm_kernel: Kernel) -> None:
    """A fix that does not compile: the compiler's complaint and where the full log is."""
    k = warm_kernel
    k.commit("proc: typo", {"fs/proc.c": ("reads++;", "reads++")})
    refs = k.ksplice_refs()
    r = k.create("--id", "broken", expect=1)
    assert r.stdout == ""
    assert re.search(r"fs/proc\.c:\d+:\d+: error: ", r.stderr), r.stderr
    # make's own line, brackets and all (the console must not take them for markup)
    assert re.search(r"\*\*\* \[\S*Makefile:\d+: fs/proc\.o\] Error", r.stderr), r.stderr
    assert str(k.log("broken")) in r.stderr
    assert "error: expected" in k.log("broken").read_text()
    assert k.ksplice_refs() == refs
    k.assert_tree_clean()
    # The next good fix builds as if nothing had happened.
    k.edit("fs/proc.c", "reads++", "reads++;")
    k.commit("proc: fix the typo, say more", PROC_FIX)
    k.create("--id", "good")
    assert changed_functions(manifest(read_update(k.tarball("good")))) == {
        "fs/proc.o": ["proc_show"]}


def test_dirty_build_tree_is_repaired(warm_kernel: Kernel) -> None:
    """Someone edited a file inside git-ksplice's build tree: the next create discards the
    edit, and the update contains only the user's change."""
    k = warm_kernel
    (k.tree / "kernel/sys.c").write_text("/* meddled with */\n")
    (k.tree / "fs/proc.c").unlink()
    k.commit("proc: say more", PROC_FIX)
    r = k.create("--id", "fix")
    assert "kernel/sys.c" in r.stderr, r.stderr  # says what it discarded
    files = read_update(k.tarball("fix"))
    assert sorted(diff_objects(files)) == ["debug/diff/fs/proc.o"]
    assert changed_functions(manifest(files)) == {"fs/proc.o": ["proc_show"]}
    k.assert_tree_clean()


def test_missing_build_tree_is_recreated(warm_kernel: Kernel) -> None:
    """Someone removed git-ksplice's build tree (rm -rf): the next create rebuilds it."""
    k = warm_kernel
    shutil.rmtree(k.tree)
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "fix")
    assert changed_functions(manifest(read_update(k.tarball("fix")))) == {
        "fs/proc.o": ["proc_show"]}
    k.assert_tree_clean()
    worktrees = k.git("worktree", "list", "--porcelain")
    assert f"worktree {k.tree}\n" in worktrees


def test_missing_build_directory_is_recreated(warm_kernel: Kernel) -> None:
    """Someone removed all of git-ksplice's build state (tree, cache, state file)."""
    k = warm_kernel
    shutil.rmtree(k.tree.parent)
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "fix")
    k.assert_tree_clean()


def test_ref_moved_during_the_build(warm_kernel: Kernel, fake_make, tmp_path: Path) -> None:
    """Someone moves refs/ksplice/pre while an update is being built: the run says so and
    records nothing."""
    k = warm_kernel
    other = k.git("commit-tree", "HEAD^{tree}", "-m", "someone else's pre").strip()
    post = k.commit("proc: say more", PROC_FIX)
    done = tmp_path / "moved"
    wrapper = fake_make("mover", f'if [ ! -e {done} ]; then touch {done}; '
                                 f'git -C {k.path} update-ref refs/ksplice/pre {other}; fi')
    refs = k.ksplice_refs()
    r = k.create("--id", "raced", env=with_path_first(wrapper), expect=1)
    assert done.exists(), "the wrapper did not run"
    assert re.search(r"refs/ksplice/\S* ?moved", r.stderr), r.stderr
    now = k.ksplice_refs()
    assert now == {**refs, "refs/ksplice/pre": other}, "something was half-recorded"
    assert "refs/ksplice/updates/raced" not in now and "refs/ksplice/series" not in now
    k.assert_no_tmp_refs()
    # Put pre back: the same update then builds.
    k.git("update-ref", "refs/ksplice/pre", refs["refs/ksplice/pre"], other)
    k.create("--id", "raced")
    assert k.rev("refs/ksplice/updates/raced") == post


def test_ref_moved_during_a_patch_build(warm_kernel: Kernel, fake_make, tmp_path: Path) -> None:
    """As above with --patch: the temporary commit is forgotten too."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    patch = tmp_path / "fix.patch"
    patch.write_text(k.diff())
    k.git("reset", "-q", "--hard", "HEAD~1")
    other = k.git("commit-tree", "HEAD^{tree}", "-m", "someone else's pre").strip()
    done = tmp_path / "moved"
    wrapper = fake_make("mover", f'if [ ! -e {done} ]; then touch {done}; '
                                 f'git -C {k.path} update-ref refs/ksplice/pre {other}; fi')
    refs = k.ksplice_refs()
    r = k.create(f"--patch={patch}", "--id", "raced", env=with_path_first(wrapper), expect=1)
    assert "moved" in r.stderr, r.stderr
    assert k.ksplice_refs() == {**refs, "refs/ksplice/pre": other}
    k.assert_no_tmp_refs()


@pytest.mark.parametrize("update_id", ["", "Fix", "-x", "a" * 33, "a b", "../x", "é"])
def test_invalid_update_id(update_id: str, warm_kernel: Kernel) -> None:
    """An id that cannot name a ref and a file (also an empty one, as `--id "$ID"` with ID
    unset gives) is refused before anything is built."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    refs = k.ksplice_refs()
    r = k.create(f"--id={update_id}", expect=1)
    assert "--id=" in r.stderr and "update id" in r.stderr, r.stderr
    assert "incremental build" not in r.stderr
    assert k.ksplice_refs() == refs


def test_repository_without_commits(tmp_path: Path, running_kernel: Path) -> None:
    """git init, then git ksplice create at once: there is no source to call the running
    kernel's yet."""
    k = Kernel(tmp_path / "empty")
    k.path.mkdir()
    k.git("init", "-q")
    shutil.copytree(running_kernel, k.path / "ksplice")
    for args in (("--prebuild",), ()):
        r = k.create(*args, expect=1)
        assert "no commit yet" in r.stderr, r.stderr
    assert k.ksplice_refs() == {}


def test_skip_prebuild_without_a_prebuild(kernel: Kernel) -> None:
    """--skip-prebuild when there is no pristine build to use."""
    k = kernel
    k.commit("proc: say more", PROC_FIX)
    k.git("update-ref", "refs/ksplice/pre", "HEAD~1")
    r = k.create("--skip-prebuild", "--id", "skip", expect=1)
    assert "--skip-prebuild: there is no pristine build" in r.stderr, r.stderr
    k.prebuild()
    k.create("--skip-prebuild", "--id", "skip")


@pytest.mark.parametrize("args", [["no-such-branch"], ["--patch=/nonexistent.patch"],
                                  ["--diffext=.new"]],
                         ids=["unknown-commit", "missing-patch", "diffext-without-files"])
def test_bad_input_on_first_use(args: list[str], kernel: Kernel) -> None:
    """The very first create of a repository has a typo in it: the error comes before the
    (on a real kernel, long) pristine build, and refs/ksplice/pre is not pinned by a command
    that failed."""
    k = kernel
    r = k.create(*args, "--id", "first", expect=1)
    assert "pristine build" not in r.stderr, "built the kernel before checking the input"
    assert k.ksplice_refs() == {}, "a failed first run left refs/ksplice/*"


def test_pristine_cache_removed(warm_kernel: Kernel) -> None:
    """Someone cleaned .git/ksplice/build/pristine to save space: the next create rebuilds
    what it needs instead of failing for ever after."""
    k = warm_kernel
    shutil.rmtree(k.tree.parent / "pristine")
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "fix", expect=None)
    k.create("--id", "fix2")
    assert changed_functions(manifest(read_update(k.tarball("fix2")))) == {
        "fs/proc.o": ["proc_show"]}
    k.assert_tree_clean()


def test_state_files_corrupted(warm_kernel: Kernel) -> None:
    """The build state files were truncated (a full disk, an editor): rebuild, don't crash."""
    k = warm_kernel
    for name in ("state.json", "manifest.json"):
        (k.tree.parent / name).write_text("{not json")
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "fix")
    assert changed_functions(manifest(read_update(k.tarball("fix")))) == {
        "fs/proc.o": ["proc_show"]}
    k.assert_tree_clean()


def test_interrupted_with_ctrl_c(warm_kernel: Kernel, fake_make, tmp_path: Path) -> None:
    """The user presses Ctrl-C during the patched build (SIGINT to the foreground process
    group, which git-ksplice is in; make runs in a group of its own so that a later run can
    stop it if git-ksplice dies, and git-ksplice stops it on Ctrl-C): exit 130, the tree is
    put back, nothing is recorded."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    patch = tmp_path / "fix.patch"
    patch.write_text(k.diff())
    done = tmp_path / "interrupted"
    wrapper = fake_make("ctrl-c", f"if [ ! -e {done} ]; then touch {done}; "
                                  "kill -INT $PPID; "
                                  "sleep 5; fi")
    refs = k.ksplice_refs()
    env = {**os.environ, **with_path_first(wrapper)}
    with unchanged(k.path):
        proc = subprocess.run([sys.executable, "-m", "git_ksplice", "create",
                               f"--patch={patch}", "--id", "int"], cwd=k.path, env=env,
                              capture_output=True, text=True, timeout=60,
                              start_new_session=True,  # its own group, as a shell's job
                              # as from an interactive shell, whatever this runner ignores
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.exists()
    assert proc.returncode == 130, explain(proc)
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert k.ksplice_refs() == refs
    k.assert_tree_clean()
    k.create("--id", "int")


def test_error_text_is_printed_as_text() -> None:
    """Kernel make prints `[scripts/Makefile.build:255: x.o]`, which rich would take for a
    style tag and drop (seen in hook logs on Linux 6.1)."""
    from git_ksplice import ui

    with ui.console.capture() as cap:
        ui.error("make[3]: *** [scripts/Makefile.build:255: fs/proc/version.o] Error 1",
                 "full log: [logs/x.log]")
    out = cap.get()
    assert "[scripts/Makefile.build:255: fs/proc/version.o] Error 1" in out, out
    assert "[logs/x.log]" in out, out
