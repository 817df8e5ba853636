"""The first hour with git ksplice: the mistakes a new user makes, and what the tool says.

Each test gets into the situation the way a user does (a fix committed before the first
create, edits left uncommitted, an id given to `view` as if it were a file, `--diffext new`,
a file given as ORIG_CONFIG, `-j 0`, a mistyped option), checks the message names the
problem and the way out, then takes that way out and checks it works. Kernel.ksplice checks
every run for a traceback and for changes to the user's HEAD, index and files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.workflow.conftest import (
    PROC_FIX,
    SYS_FIX,
    Kernel,
    changed_functions,
    manifest,
    read_update,
)


def _edit(k: Kernel, edits: dict[str, tuple[str, str]]) -> None:
    for rel, (old, new) in edits.items():
        k.edit(rel, old, new)


def _one_line(text: str) -> str:
    """Text as one line: click wraps usage lines at 80 columns."""
    return " ".join(text.split())


# -- 1. the fix committed before the first create -------------------------------------------


def test_fix_committed_before_the_first_create(kernel: Kernel) -> None:
    """The developer commits the fix, then runs git ksplice create for the first time: pre is
    created from HEAD, which already holds the fix. The message says so and how to point pre
    at the running kernel; doing that builds the update."""
    k = kernel
    running = k.rev("HEAD")
    fix = k.commit("proc: say more", PROC_FIX)
    r = k.create("--id", "fix", expect=66)
    assert "refs/ksplice/pre did not exist and was just created from HEAD " \
           f"({fix[:12]})" in r.stderr, r.stderr
    assert "the running kernel is taken to be HEAD" in r.stderr, r.stderr
    assert "No changes detected." in r.stderr, r.stderr
    assert "git update-ref refs/ksplice/pre <running kernel's commit>" in r.stderr, r.stderr
    assert "is refs/ksplice/pre itself" not in r.stderr, "the old, puzzling message"
    # pre stays where the message says it is (first use records it, as --prebuild would),
    # and nothing else was recorded or built.
    assert k.ksplice_refs() == {"refs/ksplice/pre": fix}
    assert "pristine build" not in r.stderr
    # Run again without reading the hint: pre is HEAD now, and the way to move it is still
    # named.
    r = k.create("--id", "fix", expect=66)
    assert f"HEAD is refs/ksplice/pre itself ({fix[:12]}" in r.stderr, r.stderr
    assert "git update-ref refs/ksplice/pre <running kernel's commit>" in r.stderr, r.stderr
    # The same first run, for a script: one JSON document saying the same.
    k.git("update-ref", "-d", "refs/ksplice/pre")
    r = k.create("--id", "fix", "--json", expect=66)
    doc = json.loads(r.stdout)
    assert doc["result"] == "unchanged", doc
    assert doc["message"].startswith("refs/ksplice/pre did not exist and was just created"), doc
    assert "git update-ref refs/ksplice/pre" in doc["hint"], doc
    assert k.ksplice_refs() == {"refs/ksplice/pre": fix}
    # The way out the message gives.
    k.git("update-ref", "refs/ksplice/pre", running)
    k.create("--id", "fix")
    assert changed_functions(manifest(read_update(k.tarball("fix")))) == {
        "fs/proc.o": ["proc_show"]}


def test_head_is_pre_with_nothing_to_commit(warm_kernel: Kernel) -> None:
    """pre exists and HEAD is pre, with a clean tree: genuinely nothing to build (66)."""
    k = warm_kernel
    r = k.create("--id", "none", expect=66)
    assert f"HEAD is refs/ksplice/pre itself ({k.rev('HEAD')[:12]}" in r.stderr, r.stderr
    assert "not committed" not in r.stderr
    assert "commit the fix on top of it" in r.stderr, r.stderr


# -- 2. edits left uncommitted ----------------------------------------------------------------


def _leave_edits(k: Kernel, *, staged: bool) -> None:
    _edit(k, PROC_FIX)
    if staged:
        k.git("add", "fs/proc.c")
    # An unchanged file with a new mtime: a `git status` that may take the index lock
    # refreshes its entry and rewrites the index, which Kernel.ksplice would catch.
    sys_c = k.path / "kernel/sys.c"
    st = sys_c.stat()
    os.utime(sys_c, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


@pytest.mark.parametrize("first_use", [True, False], ids=["first-use", "pre-exists"])
@pytest.mark.parametrize("staged", [False, True], ids=["unstaged", "staged"])
def test_uncommitted_edits(first_use: bool, staged: bool, kernel: Kernel) -> None:
    """The developer edits fs/proc.c and runs create without committing: the message says
    the edits are not committed and names the three ways to build them."""
    k = kernel
    if not first_use:
        k.prebuild()
    head = k.rev("HEAD")
    _leave_edits(k, staged=staged)
    r = k.create("--id", "fix", expect=66)
    assert "the edits to fs/proc.c are not committed: No changes detected." in r.stderr, \
        r.stderr
    assert "kernel/sys.c" not in r.stderr, "an untouched file is no edit"
    for way in ("commit them", "--diffext=EXT", "--patch=FILE",
                "git diff > fix.patch; git ksplice create --patch=fix.patch"):
        assert way in r.stderr, (way, r.stderr)
    assert ("just created from it" in r.stderr) == first_use, r.stderr
    # On first use pre is recorded at HEAD, the source the edits were made against: so
    # committing them now (the first way out) builds them, rather than taking the commit
    # of the fix as the running kernel.
    assert k.ksplice_refs()["refs/ksplice/pre"] == head


def test_uncommitted_edits_ways_out(kernel: Kernel, tmp_path: Path) -> None:
    """Each way out the message names builds the same update."""
    k = kernel
    _leave_edits(k, staged=False)
    k.create("--id", "first", expect=66)
    patch = tmp_path / "fix.patch"
    patch.write_text(k.git("diff"))
    k.create(f"--patch={patch}", "--id", "patched")
    (k.path / "fs/proc.c.new").write_text((k.path / "fs/proc.c").read_text())
    k.create("--diffext=.new", "--id", "diffext")
    (k.path / "fs/proc.c.new").unlink()
    k.git("commit", "-q", "-am", "proc: say more")
    k.create("--id", "committed")
    for update_id in ("patched", "diffext", "committed"):
        assert changed_functions(manifest(read_update(k.tarball(update_id)))) == {
            "fs/proc.o": ["proc_show"]}, update_id


# -- 3. view ID --------------------------------------------------------------------------------


def test_view_takes_an_update_id(warm_kernel: Kernel, tmp_path: Path) -> None:
    """`git ksplice view diffext1`, with an id `git ksplice series` listed: shown as
    `view --id diffext1` shows it."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "diffext1")
    assert "diffext1" in k.ksplice("series").stdout
    by_id = k.ksplice("view", "--id", "diffext1").stdout
    assert by_id.startswith("Update diffext1: proc: say more\n"), by_id
    assert k.ksplice("view", "diffext1").stdout == by_id
    assert json.loads(k.ksplice("view", "--json", "diffext1").stdout) == \
        json.loads(k.ksplice("view", "--json", "--id", "diffext1").stdout)
    # From a subdirectory too (the id is looked up in the repository, not the directory).
    assert k.ksplice("view", "diffext1", cwd=k.path / "fs").stdout == by_id


def test_view_neither_file_nor_id(warm_kernel: Kernel, tmp_path: Path) -> None:
    """Neither a file nor an update built here: say both, and how to find the ids."""
    k = warm_kernel
    r = k.ksplice("view", "diffext2", expect=1)
    assert "cannot read update diffext2: there is no such file, nor an update with that id " \
           "here" in r.stderr, r.stderr
    assert "--id ID" in r.stderr and "git ksplice series" in r.stderr, r.stderr
    assert "Errno" not in r.stderr
    # Outside a repository there are no ids: only the missing file is the problem.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = k.ksplice("view", "diffext2", cwd=elsewhere, expect=1)
    assert "cannot read update diffext2: there is no such file" in r.stderr, r.stderr
    assert "not a git repository" not in r.stderr, r.stderr


def test_view_prefers_a_file_to_an_id(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A file named like an update id is what the user pointed at: it is read as a tarball."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "one")
    (tmp_path / "one").write_text("not a tarball\n")
    r = k.ksplice("view", "one", cwd=tmp_path, expect=1)
    assert "cannot read update one:" in r.stderr and "no such file" not in r.stderr, r.stderr
    # Without that file, from the repository, the id is found.
    assert k.ksplice("view", "one").stdout.startswith("Update one: ")


# -- 4. --diffext without its dot ----------------------------------------------------------


def test_diffext_without_the_dot(warm_kernel: Kernel) -> None:
    """`--diffext new` once made the new file `kernel/printk.c.` and said "No changes
    detected": it is refused with the spelling meant, before anything is built."""
    k = warm_kernel
    (k.path / "kernel/printk.c.new").write_text(
        (k.path / "kernel/printk.c").read_text().replace("return 0;", "return 1;"))
    refs = k.ksplice_refs()
    r = k.create("--diffext", "new", "--id", "nodot", expect=1)
    assert "--diffext=new: EXT is a file name extension with its dot" in r.stderr, r.stderr
    assert "did you mean --diffext=.new?" in r.stderr, r.stderr
    assert "incremental build" not in r.stderr
    assert k.ksplice_refs() == refs
    k.assert_no_tmp_refs()
    k.create("--diffext=.new", "--id", "dot")
    assert changed_functions(manifest(read_update(k.tarball("dot")))) == {
        "kernel/printk.o": ["printk"]}


def test_diffext_new_files(warm_kernel: Kernel) -> None:
    """X<EXT> whose X is not in pre: alone (nothing replaced, so the suffix matched the
    wrong files or the Makefile is missing) it is refused before a build; with the Makefile
    that builds it, it is a new file, said as such, and its function is new in the update."""
    k = warm_kernel
    (k.path / "kernel/extra.c.new").write_text(
        '#include <tiny.h>\n\nint extra_fn(void)\n{\n\treturn 1;\n}\n')
    r = k.create("--diffext=.new", "--id", "extra", expect=1)
    assert "--diffext=.new: none of the files ending in .new (kernel/extra.c.new) is the " \
           "new version of a file of refs/ksplice/pre" in r.stderr, r.stderr
    assert "Makefile.new" in r.stderr, r.stderr
    assert "incremental build" not in r.stderr
    # A suffix that matches every source file: the same refusal, the files counted.
    r = k.create("--diffext=.c", "--id", "extra", expect=1)
    assert re.search(r"none of the files ending in \.c \(.* and \d+ more\)", r.stderr), \
        r.stderr
    makefile = (k.path / "Makefile").read_text()
    (k.path / "Makefile.new").write_text(makefile.replace(
        "kernel/sys.o fs/proc.o", "kernel/sys.o fs/proc.o kernel/extra.o", 1))
    r = k.create("--diffext=.new", "--id", "extra")
    assert "--diffext=.new: kernel/extra.c is a new file (refs/ksplice/pre has no " \
           "kernel/extra.c)" in r.stderr, r.stderr
    m = manifest(read_update(k.tarball("extra")))
    assert changed_functions(m) == {"kernel/extra.o": ["extra_fn"]}


# -- 5. ORIG_CONFIG that is a file --------------------------------------------------------


def test_orig_config_is_a_file(warm_kernel: Kernel, tmp_path: Path) -> None:
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\n")
    r = k.create("--config", str(passwd), expect=1)
    assert f"ORIG_CONFIG {passwd} is a file, not a directory" in r.stderr, r.stderr
    assert "does not exist" not in r.stderr
    assert ".config and System.map" in r.stderr and "--config=DIR" in r.stderr, r.stderr
    # The running kernel's .config itself: the way out is its directory.
    r = k.create("--config", "ksplice/.config", expect=1)
    assert f"--config={k.path / 'ksplice'}" in r.stderr, r.stderr
    k.create("--config", "ksplice", "--id", "dir")


# -- 6. job counts ----------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [["-j", "0"], ["-j", "-3"], ["--jobs=0"], ["-j0"]])
@pytest.mark.parametrize("via", ["git", "script"])
def test_jobs_below_one_are_usage_errors(jobs: list[str], via: str, warm_kernel: Kernel) -> None:
    """-j 0 and -j -3 once ran make -j<CPUs>: now a usage error before anything runs."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    args = [*jobs, "--id", "jobs"] + (["--git=HEAD", str(k.path)] if via == "script" else [])
    r = (k.create(*args, expect=2) if via == "git" else k.ksplice(*args, via="script",
                                                                  expect=2))
    assert re.search(r"(^|\n)error: Invalid value for '-j' / '--jobs': -?\d+ is not a number "
                     r"of make jobs \(1 or more\)", r.stderr), r.stderr
    assert r.stdout == "" and "pristine build" not in r.stderr
    assert "refs/ksplice/updates/jobs" not in k.ksplice_refs()


@pytest.mark.parametrize(("env", "git_args", "message"), [
    ({}, ("-c", "ksplice.jobs=0"), "ksplice.jobs=0 is not a positive number of make jobs"),
    ({}, ("-c", "ksplice.jobs=-2"), "ksplice.jobs=-2 is not a positive number of make jobs"),
    ({}, ("-c", "ksplice.jobs=many"), "bad value for ksplice.jobs: bad numeric config value"),
    ({"CONCURRENCY_LEVEL": "0"}, (), "CONCURRENCY_LEVEL='0' is not a positive number of make"),
    ({"CONCURRENCY_LEVEL": "-1"}, (), "CONCURRENCY_LEVEL='-1' is not a positive number"),
], ids=["config-0", "config-negative", "config-word", "env-0", "env-negative"])
def test_bad_job_settings(env: dict[str, str], git_args: tuple[str, ...], message: str,
                          warm_kernel: Kernel) -> None:
    """A bad ksplice.jobs or CONCURRENCY_LEVEL is an error naming the setting (exit 1: it is
    not on the command line), not a quiet -j1 or -j<CPUs>; -j on the command line wins."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    r = k.ksplice("create", "--id", "jobs", env=env, git_args=git_args, expect=1)
    assert f"error: {message}" in r.stderr, r.stderr
    assert "pristine build" not in r.stderr
    if git_args:
        assert "git config --show-origin ksplice.jobs" in r.stderr, r.stderr
    k.ksplice("create", "--id", "jobs", "-j", "1", env=env, git_args=git_args)


# -- 7. one error style -----------------------------------------------------------------------


def _help_args(pointer: str) -> list[str]:
    """The arguments of the command a `Try '... -h' for help.` pointer names."""
    m = re.search(r"Try '(.+)' for help\.", pointer)
    assert m, pointer
    words = m.group(1).split()
    return words[2:] if words[:2] == ["git", "ksplice"] else words[1:]


@pytest.mark.parametrize(("via", "args", "usage", "pointer", "message"), [
    ("git", ["create", "--frobnicate"], "Usage: git ksplice create [OPTIONS] [COMMIT]",
     "Try 'git ksplice create -h' for help.", "error: No such option '--frobnicate'"),
    ("git", ["frobnicate"], "Usage: git ksplice [OPTIONS] COMMAND [ARGS]...",
     "Try 'git ksplice -h' for help.", "error: No such command 'frobnicate'"),
    ("git", ["try"], "Usage: git ksplice try [OPTIONS] TARBALL",
     "Try 'git ksplice try -h' for help.", "error: Missing argument 'TARBALL'"),
    ("script", ["--frobnicate"], "Usage: ksplice-create [OPTIONS] {--patch=FILE",
     "Try 'ksplice-create -h' for help.", "error: No such option '--frobnicate'"),
], ids=["create-option", "command", "try-argument", "ksplice-create"])
def test_usage_errors_in_the_tools_style(via: str, args: list[str], usage: str, pointer: str,
                                         message: str, kernel: Kernel) -> None:
    """Click's usage errors read like every other error (`error: ...`), after the usage line
    and a pointer to -h (which works where git's --help, a man page, may not)."""
    r = kernel.ksplice(*args, via=via, expect=2)
    lines = r.stderr.splitlines()
    assert lines[0] == usage or _one_line(r.stderr).startswith(usage), r.stderr
    assert pointer in lines, r.stderr
    assert lines[-1].startswith(message), r.stderr
    assert "Error:" not in r.stderr and r.stdout == ""
    # The pointer leads to the command's help.
    shown = kernel.ksplice(*_help_args(pointer), via=via).stdout
    assert _one_line(shown).startswith(usage), shown


# -- 8. ksplice-create --help -------------------------------------------------------------------


def test_ksplice_create_help_shows_the_synopsis_once(kernel: Kernel) -> None:
    """The usage line is Ksplice's synopsis, printed once (the docstring repeated it)."""
    text = _one_line(kernel.ksplice("--help", via="script").stdout)
    assert text.startswith("Usage: ksplice-create [OPTIONS] {--patch=FILE | --diffext=EXT | "
                           "--git=COMMIT | --prebuild} KERNEL_SOURCE "), text
    assert text.count("ksplice-create [OPTIONS]") == 1, text
    assert text.count("{--patch=FILE") == 1, text


# -- 9. counts ----------------------------------------------------------------------------------


def test_counts_are_pluralised(warm_kernel: Kernel) -> None:
    """One object compiled is `1 object compiled`."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    r = k.create("--id", "one")
    assert "(1 object compiled, 1 changed)" in r.stderr, r.stderr
    assert re.search(r"comparing objects: done in [\d.]+s \(1 object\)", r.stderr), r.stderr
    assert not re.search(r"\b1 [a-z ]*?(objects|functions|products|relocations|updates)\b",
                         r.stderr), r.stderr


def test_a_commit_already_in_pre_is_named(warm_kernel: Kernel) -> None:
    """With --series, pre moves past each update; a commit an update already carries is in
    pre's history, not "not a descendant" of it."""
    k = warm_kernel
    fix = k.commit("proc: say more", PROC_FIX)
    k.commit("sys: longer name", SYS_FIX)
    k.create("--series", "--id", "both")  # pre moves to HEAD, past fix
    r = k.create(fix, "--id", "again", expect=66)
    assert f"is already in refs/ksplice/pre ({k.rev('refs/ksplice/pre')[:12]})" in r.stderr, \
        r.stderr
    assert "not a descendant" not in r.stderr
