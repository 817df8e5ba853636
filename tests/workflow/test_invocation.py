"""Where and how git-ksplice is started: subdirectories, `git -C`, linked worktrees, job
counts from options, environment and configuration, and the `ksplice-create` script."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.workflow.conftest import (
    DEMO_FIX,
    PROC_FIX,
    SYS_FIX,
    Kernel,
    changed_functions,
    diff_objects,
    manifest,
    read_update,
)


def test_from_a_subdirectory(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A developer runs create from deep in the tree, with paths relative to where they are."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    patch = tmp_path / "fix.patch"
    patch.write_text(k.diff())
    sub = k.path / "drivers" / "demo"
    k.create("--id", "sub", cwd=sub)
    k.create("--patch=../../../fix.patch", "--id", "subpatch", "-o", "../../../out", cwd=sub)
    a = read_update(k.tarball("sub"))
    b = read_update(k.tarball("subpatch", tmp_path / "out"))
    assert diff_objects(a) == diff_objects(b) != {}
    k.assert_tree_clean()


def test_through_git_dash_c(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A script builds updates without entering the repository: git -C DIR ksplice."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = k.ksplice("create", "--id", "viac", "--json", git_args=("-C", str(k.path)),
                  cwd=elsewhere)
    assert Path(json.loads(r.stdout)["tarball"]) == k.tarball("viac")
    assert list(elsewhere.iterdir()) == []
    # python -m git_ksplice is the same program.
    k.commit("uname: longer name", SYS_FIX)
    k.create("--id", "viapy", via="python")
    assert changed_functions(manifest(read_update(k.tarball("viapy")))) == {
        "fs/proc.o": ["proc_show"], "kernel/sys.o": ["sys_uname"]}


def test_from_a_linked_worktree(warm_kernel: Kernel, tmp_path: Path) -> None:
    """The fix lives on a branch checked out in a second worktree of the user's
    (git worktree add); ORIG_CONFIG is configured once for the repository."""
    k = warm_kernel
    wt = tmp_path / "topic"
    k.git("worktree", "add", "-q", "-b", "topic", str(wt))
    post = k.commit("proc: say more", PROC_FIX, root=wt)
    k.git("config", "ksplice.config", str(k.path / "ksplice"))
    r = k.create("--id", "wt", "--json", cwd=wt, check_state=(k.path, wt))
    doc = json.loads(r.stdout)
    assert doc["post"] == post and doc["pre"] == k.rev("main")
    assert Path(doc["tarball"]) == k.tarball("wt"), "state lives in the common git dir"
    assert k.rev("refs/ksplice/updates/wt") == post
    k.assert_tree_clean()
    # The main worktree's HEAD is not the fix: from there, HEAD is pre itself.
    k.create("--id", "main", expect=66)


def test_linked_worktree_finds_the_main_trees_orig_config(warm_kernel: Kernel,
                                                          tmp_path: Path) -> None:
    """Same, without ksplice.config: ORIG_CONFIG is the main worktree's ksplice/, unless the
    linked worktree has its own."""
    k = warm_kernel
    wt = tmp_path / "topic"
    k.git("worktree", "add", "-q", "-b", "topic", str(wt))
    k.commit("proc: say more", PROC_FIX, root=wt)
    k.create("--id", "wt", cwd=wt, check_state=(k.path, wt))
    (wt / "ksplice").mkdir()
    r = k.create("--id", "own", cwd=wt, check_state=(k.path, wt), expect=1)
    assert f"System.map file in ORIG_CONFIG directory {wt / 'ksplice'}" in r.stderr, r.stderr


@pytest.mark.parametrize(("env", "git_args", "args", "jobs"), [
    ({}, ("-c", "ksplice.jobs=3"), ("-v",), 3),
    ({"CONCURRENCY_LEVEL": "2"}, (), (), 2),
    ({"CONCURRENCY_LEVEL": "2"}, ("-c", "ksplice.jobs=3"), (), 2),
    ({"CONCURRENCY_LEVEL": "2"}, ("-c", "ksplice.jobs=3"), ("-j", "1", "-vv"), 1),
], ids=["config", "env", "env-over-config", "option-over-both"])
def test_job_count(env: dict[str, str], git_args: tuple[str, ...], args: tuple[str, ...],
                   jobs: int, warm_kernel: Kernel) -> None:
    """The make job count comes from -j, else CONCURRENCY_LEVEL, else ksplice.jobs."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    r = k.ksplice("create", "--id", "jobs", "--json", *args, env=env, git_args=git_args)
    assert json.loads(r.stdout)["id"] == "jobs", "-v output must not spoil --json's stdout"
    command = k.log("jobs").read_text().splitlines()[0]
    assert re.match(rf"\$ make -j{jobs} ", command), command
    assert command.endswith(" V=1") == ("-vv" in args), command
    if "-v" in args or "-vv" in args:
        assert "  CC      fs/proc.o" in r.stderr, "-v shows the build's output"
    else:
        assert "  CC      " not in r.stderr


def test_ksplice_create_script(kernel: Kernel, tmp_path: Path) -> None:
    """Someone used to Ksplice runs ksplice-create from their own directory, naming the
    kernel source: the tarball lands in the current directory."""
    k = kernel
    out = tmp_path / "work"
    out.mkdir()
    k.ksplice("--prebuild", "../linux", via="script", cwd=out)
    assert list(out.iterdir()) == []
    for rel, (old, new) in PROC_FIX.items():
        k.edit(rel, old, new)
    (out / "fix.patch").write_text(k.git("diff"))
    k.git("checkout", "--", *PROC_FIX)
    k.ksplice("--patch=fix.patch", "--id", "kc", str(k.path), via="script", cwd=out)
    files = read_update(out / "ksplice-kc.tar.gz")
    assert changed_functions(manifest(files)) == {"fs/proc.o": ["proc_show"]}

    k.commit("proc: say more", PROC_FIX)
    k.ksplice("--git=HEAD", "--id", "kg", "../linux", via="script", cwd=out)
    assert diff_objects(read_update(out / "ksplice-kg.tar.gz")) == diff_objects(files)
    assert sorted(p.name for p in out.iterdir()) == ["fix.patch", "ksplice-kc.tar.gz",
                                                     "ksplice-kg.tar.gz"]

    r = k.ksplice("../linux", via="script", cwd=out, expect=2)
    assert "give one of --patch, --diffext, --git or --prebuild" in r.stderr, r.stderr
    r = k.ksplice("--git=HEAD", via="script", cwd=out, expect=2)
    assert "KERNEL_SOURCE" in r.stderr, r.stderr


def test_ksplice_create_missing_source(kernel: Kernel, tmp_path: Path) -> None:
    """ksplice-create given a KERNEL_SOURCE that does not exist: a message, not a crash."""
    r = kernel.ksplice("--git=HEAD", str(tmp_path / "nowhere"), via="script", cwd=tmp_path,
                       expect=None)
    assert r.returncode in (1, 2), r.stderr
    assert "nowhere" in r.stderr, r.stderr


def test_from_a_git_hook_environment(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A post-commit hook runs git ksplice create: GIT_DIR and GIT_INDEX_FILE are set (and
    relative), and the user has hooks of their own, which are for their checkout only."""
    k = warm_kernel
    marks = tmp_path / "hooks.log"
    for hook in ("post-checkout", "pre-commit", "post-commit", "pre-auto-gc"):
        script = k.path / ".git/hooks" / hook
        script.write_text(f"#!/bin/sh\necho \"{hook} $PWD\" >> {marks}\n")
        script.chmod(0o755)
    k.commit("proc: say more", PROC_FIX)
    marks.unlink()
    k.create("--id", "hook", env={"GIT_DIR": ".git", "GIT_INDEX_FILE": ".git/index"})
    assert not marks.exists(), f"user hooks ran in git-ksplice's trees:\n{marks.read_text()}"
    assert changed_functions(manifest(read_update(k.tarball("hook")))) == {
        "fs/proc.o": ["proc_show"]}
    k.assert_tree_clean()


def test_configured_directories(kernel: Kernel, tmp_path: Path) -> None:
    """ksplice.buildDir and ksplice.outputDir put the build tree and the tarballs elsewhere;
    a relative ksplice.outputDir means the same place wherever create is run from."""
    k = kernel
    k.git("config", "ksplice.buildDir", str(tmp_path / "builds"))
    k.git("config", "ksplice.outputDir", "../updates")
    k.prebuild()
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "top")
    assert (tmp_path / "updates/ksplice-top.tar.gz").exists()
    assert (tmp_path / "builds/tree/Makefile").exists()
    assert not k.tree.exists()
    assert k.git("status", "--porcelain", "--untracked-files=no",
                 cwd=tmp_path / "builds/tree") == ""
    k.create("--id", "sub", cwd=k.path / "fs")
    assert (tmp_path / "updates/ksplice-sub.tar.gz").exists()


def test_orig_config_flags(warm_kernel: Kernel) -> None:
    """The running kernel was built with extra kbuild arguments (ORIG_CONFIG/flags, as
    Ksplice had them): the pristine and patched builds use them, before ksplice.makeArgs."""
    k = warm_kernel
    (k.path / "ksplice/flags").write_text("KCFLAGS=-DTINY_EXTRA=1\n")
    k.git("config", "ksplice.makeArgs", "LD=ld")
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "flags")
    command = k.log("flags").read_text().splitlines()[0]
    matched = re.fullmatch(r"\$ make -j\d+ 'KCFLAGS=-DTINY_EXTRA=1 -ffunction-sections "
                           r"-fdata-sections -I(\S+)' LD=ld", command)
    assert matched, command
    # The author's headers, named relative to the tree (no checkout path in the log).
    include = matched[1]
    assert not include.startswith("/"), include
    assert (k.tree / include / "ksplice-patch.h").is_file()
    prebuild = (k.state_dir / "logs/prebuild.log").read_text()
    assert "-DTINY_EXTRA=1" in prebuild.splitlines()[0], "the pristine tree was not rebuilt"


def test_options_as_settings(warm_kernel: Kernel, tmp_path: Path) -> None:
    """Options that are settings come from git config, `git -c` included; the command line
    wins over them."""
    k = warm_kernel
    k.commit("demo: one more", DEMO_FIX)
    r = k.ksplice("create", "--id", "cfg", "--json", git_args=(
        "-c", "ksplice.buildModules=true", "-c", "ksplice.onlyTargets=demo"))
    files = read_update(k.tarball("cfg"))
    assert files["contents"] == b"target demo\nmodule demo modules/demo.ko\n"
    assert json.loads(r.stdout)["series"] is False
    k.ksplice("create", "--id", "cfg2", "--no-build-modules", "--only-targets=vmlinux",
              git_args=("-c", "ksplice.buildModules=true", "-c", "ksplice.onlyTargets=demo"),
              expect=66)
    pre = k.rev("refs/ksplice/pre")
    k.git("config", "ksplice.series", "true")
    k.create("--id", "stacked")
    assert k.rev("refs/ksplice/pre") == k.rev("HEAD") != pre
    # patch(1) options, multi-valued.
    k.git("config", "ksplice.series", "false")
    patch = tmp_path / "fix.patch"
    k.commit("proc: say more", PROC_FIX)
    patch.write_text(k.git("diff", "--no-prefix", "HEAD~1", "HEAD"))
    k.git("config", "--add", "ksplice.patchOpt", "-p0")
    k.git("config", "--add", "ksplice.patchOpt", "--forward")
    k.create("--patch", str(patch), "--id", "p0")
    assert changed_functions(manifest(read_update(k.tarball("p0")))) == {
        "fs/proc.o": ["proc_show"]}
    r = k.ksplice("create", "--id", "bad", git_args=("-c", "ksplice.series=maybe"), expect=1)
    assert "ksplice.series" in r.stderr


def test_with_git_dir_and_work_tree(warm_kernel: Kernel, tmp_path: Path) -> None:
    """GIT_DIR and GIT_WORK_TREE name the repository from anywhere (as scripts do)."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"GIT_DIR": str(k.path / ".git"), "GIT_WORK_TREE": str(k.path)}
    k.create("--id", "env", cwd=elsewhere, env=env)
    assert changed_functions(manifest(read_update(k.tarball("env")))) == {
        "fs/proc.o": ["proc_show"]}
    assert list(elsewhere.iterdir()) == []
    r = k.ksplice("series", "--json", cwd=elsewhere, env=env)
    assert [u["id"] for u in json.loads(r.stdout)["series"]] == ["env"]


def test_in_a_bare_repository(warm_kernel: Kernel, tmp_path: Path,
                              running_kernel: Path) -> None:
    """A server keeps only a bare repository: create builds there, ORIG_CONFIG configured."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    bare = tmp_path / "server.git"
    k.git("clone", "-q", "--bare", str(k.path), str(bare))
    srv = Kernel(bare)
    r = srv.ksplice("create", "--id", "nocfg", cwd=bare, check_state=(), expect=1)
    assert "no working tree" in r.stderr and "ksplice.config" in r.stderr
    srv.git("update-ref", "refs/ksplice/pre", "main~1")
    srv.git("config", "ksplice.config", str(running_kernel))
    r = srv.ksplice("create", "main", "--id", "bare", "--json", cwd=bare, check_state=())
    tarball = Path(json.loads(r.stdout)["tarball"])
    assert tarball == bare / "ksplice/updates/ksplice-bare.tar.gz"
    assert changed_functions(manifest(read_update(tarball))) == {"fs/proc.o": ["proc_show"]}
    r = srv.ksplice("view", "--id", "bare", cwd=bare, check_state=())
    assert "proc_show" in r.stdout


def test_says_when_git_gc_competes_for_the_cpus(kernel: Kernel) -> None:
    """A repository just imported from a tarball repacks in the background (`git gc
    --auto`, detached): the prebuild says so rather than being mysteriously slow."""
    import socket
    import subprocess

    k = kernel
    gc = subprocess.Popen(["sleep", "60"])  # stands for the detached gc: a live pid
    try:
        (k.path / ".git/gc.pid").write_text(f"{gc.pid} {socket.gethostname()}")
        r = k.create("--prebuild")
        assert f"git gc (pid {gc.pid}) is repacking this repository" in r.stderr
    finally:
        gc.kill()
        gc.wait()
    k.commit("proc: say more", PROC_FIX)
    r = k.create("--id", "after")  # the pid is gone: nothing to say
    assert "git gc" not in r.stderr
