"""`git ksplice hook`: updates built in the background for each new commit on a watched
branch, whichever git command moved it, next to the user's own hooks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from git_ksplice.hooks import BEGIN, STATES
from tests.workflow.conftest import (
    DEMO_FIX,
    PROC_FIX,
    SYS_FIX,
    Kernel,
    UserState,
    explain,
    read_update,
    run,
)

BROKEN = {"kernel/sys.c": ('"Tiny"', '"Tiny" +')}  # does not compile
COMMENT_ONLY = {"kernel/core.c": ("/* Core services of the tiny kernel. */",
                                  "/* Core services of the tiny kernel (say so). */")}


def status(k: Kernel, cwd: Path | None = None) -> dict:
    r = k.ksplice("hook", "status", "--json", cwd=cwd, check_state=())
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1
    assert all(j["state"] in STATES for j in doc["jobs"]), doc["jobs"]
    return doc


def wait_idle(k: Kernel, cwd: Path | None = None, timeout: float = 240) -> list[dict]:
    """The jobs once no hook run is still queueing, nothing is queued or running and the
    worker is gone."""
    deadline = time.monotonic() + timeout
    while True:
        doc = status(k, cwd)
        busy = [j for j in doc["jobs"] if j["state"] in ("queued", "running")]
        if not busy and doc["worker"]["pid"] is None and not doc["notifying"]:
            return doc["jobs"]
        if time.monotonic() > deadline:
            log = Path(doc["worker"]["log"])
            raise AssertionError(f"jobs still busy after {timeout}s: {busy}\n"
                                 + (log.read_text() if log.exists() else ""))
        time.sleep(0.3)


def warmed_then(jobs: list[dict]) -> list[dict]:
    """The jobs after the pristine build that install queued for a cold repository."""
    assert jobs and jobs[0]["kind"] == "prebuild" and jobs[0]["state"] == "built", jobs
    assert all(j["kind"] == "update" for j in jobs[1:]), jobs
    return jobs[1:]


def git_cmd(k: Kernel, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A user's git command: must succeed, whatever the hook does."""
    r = subprocess.run(["git", *args], cwd=cwd or k.path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, explain(r)
    assert "Traceback" not in r.stderr, explain(r)
    return r


def test_commits_on_the_watched_branch_are_built_in_order(warm_kernel: Kernel) -> None:
    k = warm_kernel
    r = k.ksplice("hook", "install", "--series", check_state=())
    assert "watching refs/heads/main (--series)" in r.stderr
    hook = k.path / ".git/hooks/reference-transaction"
    assert BEGIN in hook.read_text() and os.access(hook, os.X_OK)

    # One commit: queued by the commit itself, built in the background.
    c1 = k.commit("proc: say more", PROC_FIX)
    jobs = wait_idle(k)
    assert [(j["commit"], j["state"]) for j in jobs] == [(c1, "built")]
    tarball = Path(jobs[0]["tarball"])
    assert tarball == k.tarball(jobs[0]["id"]) and tarball.exists()
    assert b"proc: say more" in read_update(tarball)["description"]
    assert "build" in Path(jobs[0]["log"]).read_text()

    # Several at once (a fast-forward merge of a topic branch): all, in order, once each.
    git_cmd(k, "checkout", "-q", "-b", "topic")
    c2 = k.commit("sys: longer name", SYS_FIX)
    c3 = k.commit("demo: one more", DEMO_FIX)
    c4 = k.commit("docs only", COMMENT_ONLY)
    assert status(k)["jobs"] == jobs  # topic is not watched
    git_cmd(k, "checkout", "-q", "main")
    git_cmd(k, "merge", "-q", "--ff-only", "topic")
    before = UserState.of(k.path)
    jobs = wait_idle(k)
    assert [(j["commit"], j["state"]) for j in jobs] == [
        (c1, "built"), (c2, "built"), (c3, "built"), (c4, "no-change")]
    assert [j["seq"] for j in jobs] == [1, 2, 3, 4]
    assert len({j["id"] for j in jobs}) == 4
    # --series: each update stacked on the previous; the ledger has them in order.
    assert k.rev("refs/ksplice/pre") == c3
    ledger = json.loads(k.ksplice("series", "--json", check_state=()).stdout)
    assert [u["id"] for u in ledger["series"]] == [j["id"] for j in jobs[:3]]
    # The background builds left the user's checkout alone.
    before.assert_same(UserState.of(k.path), "the background builds")

    # Moving the branch back and forth to commits already built queues nothing.
    git_cmd(k, "reset", "-q", "--hard", c1)
    git_cmd(k, "merge", "-q", "--ff-only", "topic")
    assert wait_idle(k) == jobs

    text = k.ksplice("hook", "status", check_state=()).stdout
    assert "no-change" in text and jobs[0]["id"] in text and jobs[0]["log"] in text


def test_a_merge_commit_is_one_update(warm_kernel: Kernel) -> None:
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    git_cmd(k, "checkout", "-q", "-b", "topic")
    k.commit("proc: say more", PROC_FIX)
    k.commit("sys: longer name", SYS_FIX)
    git_cmd(k, "checkout", "-q", "main")
    git_cmd(k, "merge", "-q", "--no-ff", "-m", "Merge topic", "topic")
    merge = k.rev("HEAD")
    jobs = wait_idle(k)
    assert [(j["commit"], j["state"], j["subject"]) for j in jobs] == [
        (merge, "built", "Merge topic")]
    files = read_update(Path(jobs[0]["tarball"]))
    assert set(json.loads(files["manifest.json"])["targets"]["vmlinux"]["objects"]) == {
        "fs/proc.o", "kernel/sys.o"}
    # Not --series: refs/ksplice/pre stays at the running kernel's source.
    assert k.rev("refs/ksplice/pre") == k.rev("main^1")


def test_a_fetch_that_moves_a_watched_remote_branch(warm_kernel: Kernel, tmp_path: Path,
                                                    running_kernel: Path) -> None:
    upstream = warm_kernel
    clone = Kernel(tmp_path / "clone")
    run(["git", "clone", "-q", str(upstream.path), str(clone.path)], cwd=tmp_path)
    shutil.copytree(running_kernel, clone.path / "ksplice")
    with open(clone.path / ".git/info/exclude", "a") as f:
        f.write("ksplice/\n")
    # Watched both ways: the remote-tracking ref, and a local branch fetched into.
    clone.ksplice("hook", "install", "--branch", "origin/main", "--branch", "fixes",
                  check_state=())
    git_cmd(clone, "branch", "fixes", "origin/main")
    assert status(clone)["watch"] == ["refs/remotes/origin/main", "refs/heads/fixes"]
    assert clone.rev("refs/ksplice/pre") == clone.rev("origin/main")

    c1 = upstream.commit("proc: say more", PROC_FIX)
    r = git_cmd(clone, "fetch", "-q", "origin")
    assert "its new commits are queued and built in the background" in r.stderr
    # The first build creates the clone's build worktree; `git worktree add` writes a
    # placeholder HEAD first, and a fetch whose connectivity check runs at that moment fails
    # ("bad object worktrees/tree/HEAD"): a race in git that the next fetch must not meet
    # here. (Known: the worktree should be made before any background build; see the note.)
    wait_idle(clone)
    c2 = upstream.commit("sys: longer name", SYS_FIX)
    git_cmd(clone, "fetch", "-q", "origin", "main:fixes")  # fixes and origin/main move
    jobs = warmed_then(wait_idle(clone))
    # c2 arrived on both refs: it is built once, for whichever the background queueing
    # looked at first.
    assert [(j["commit"], j["state"]) for j in jobs] == [(c1, "built"), (c2, "built")]
    assert jobs[0]["ref"] == "refs/remotes/origin/main"
    assert jobs[1]["ref"] in ("refs/remotes/origin/main", "refs/heads/fixes")


def test_a_push_into_a_bare_server_repository(warm_kernel: Kernel, tmp_path: Path,
                                              running_kernel: Path) -> None:
    """The server's own post-receive hook keeps running; the update is built there."""
    dev = warm_kernel
    server = tmp_path / "server.git"
    run(["git", "clone", "-q", "--bare", str(dev.path), str(server)], cwd=tmp_path)
    srv = Kernel(server)
    marker = tmp_path / "post-receive.out"
    post_receive = server / "hooks/post-receive"
    post_receive.write_text(f"#!/bin/sh\ncat >> {marker}\necho 'server: thanks'\n")
    post_receive.chmod(0o755)
    r = srv.ksplice("hook", "install", "--branch", "main", cwd=server, check_state=())
    assert "refs/ksplice/pre created at refs/heads/main" in r.stderr
    assert "builds will fail" in r.stderr and "ksplice.config" in r.stderr  # not set yet
    run(["git", "config", "ksplice.config", str(running_kernel)], cwd=server)
    r = srv.ksplice("hook", "install", cwd=server, check_state=())
    assert "warning" not in r.stderr
    assert (server / "hooks/reference-transaction").exists()

    c1 = dev.commit("proc: say more", PROC_FIX)
    r = git_cmd(dev, "push", "-q", str(server), "main")
    assert "server: thanks" in r.stderr
    assert f"(git -C {server} ksplice hook status)" in r.stderr  # the pusher's view
    assert marker.read_text().split()[1:] == [c1, "refs/heads/main"]
    jobs = warmed_then(wait_idle(srv, cwd=server))
    assert [(j["commit"], j["state"]) for j in jobs] == [(c1, "built")], jobs
    assert Path(jobs[0]["tarball"]).parent == server / "ksplice/updates"
    assert not (server / "hooks/post-receive").read_text().count("ksplice")


def test_a_failing_build_does_not_fail_git_and_can_be_retried(warm_kernel: Kernel) -> None:
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    c1 = k.commit("sys: broken", BROKEN)  # the commit itself succeeds
    jobs = wait_idle(k)
    assert [(j["commit"], j["state"]) for j in jobs] == [(c1, "failed")]
    assert jobs[0]["exit_code"] not in (0, 66, None)
    log = Path(jobs[0]["log"]).read_text()
    assert "kernel/sys.c" in log and "error" in log
    text = k.ksplice("hook", "status", check_state=()).stdout
    assert "failed" in text and jobs[0]["log"] in text and "hook retry" in text

    # The build environment was the problem (here: ORIG_CONFIG moved away): fix it, retry.
    c2 = k.commit("sys: fixed", {"kernel/sys.c": ('"Tiny" +', '"Tiny Linux"')})
    (k.path / "ksplice").rename(k.path / "ksplice.away")
    jobs = wait_idle(k)
    assert jobs[1]["commit"] == c2 and jobs[1]["state"] == "failed"
    assert "ORIG_CONFIG" in Path(jobs[1]["log"]).read_text()
    (k.path / "ksplice.away").rename(k.path / "ksplice")
    r = k.ksplice("hook", "retry", jobs[1]["id"], check_state=())
    assert jobs[1]["id"] in r.stderr
    jobs = wait_idle(k)
    assert [j["state"] for j in jobs] == ["failed", "built"]
    assert jobs[1]["attempts"] == 2
    k.ksplice("hook", "retry", jobs[1]["id"], expect=1, check_state=())  # built: not again


def test_install_next_to_the_users_hook_and_uninstall(warm_kernel: Kernel,
                                                       tmp_path: Path) -> None:
    k = warm_kernel
    hook = k.path / ".git/hooks/reference-transaction"
    out = tmp_path / "user-hook.out"
    users = (f"#!/bin/bash\nset -e\n# the user's own hook: records what moves\n"
             f"while read -r old new ref; do echo \"$1 $ref\" >> {out}; done\nexit 0\n")
    hook.write_text(users)
    hook.chmod(0o750)
    k.ksplice("hook", "install", check_state=())
    text = hook.read_text()
    assert text.startswith("#!/bin/bash\n" + BEGIN) and text.endswith(users[12:])
    assert hook.stat().st_mode & 0o777 == 0o750
    k.ksplice("hook", "install", check_state=())  # twice: still one block
    assert hook.read_text() == text

    c1 = k.commit("proc: say more", PROC_FIX)
    assert "committed refs/heads/main" in out.read_text()  # the user's hook read its stdin
    assert [j["commit"] for j in wait_idle(k)] == [c1]

    k.ksplice("hook", "uninstall", check_state=())
    assert hook.read_text() == users and hook.stat().st_mode & 0o777 == 0o750
    assert k.git("config", "--get-all", "ksplice.watch", check=False) == ""
    k.commit("sys: longer name", SYS_FIX)
    assert len(status(k)["jobs"]) == 1  # nothing queued any more


def test_core_hooks_path_and_refusals(warm_kernel: Kernel, tmp_path: Path) -> None:
    k = warm_kernel
    shared = tmp_path / "shared-hooks"
    shared.mkdir()
    k.git("config", "core.hooksPath", str(shared))
    r = k.ksplice("hook", "install", check_state=())
    assert str(shared / "reference-transaction") in r.stderr
    assert not (k.path / ".git/hooks/reference-transaction").exists()
    c1 = k.commit("proc: say more", PROC_FIX)
    assert [j["commit"] for j in wait_idle(k)] == [c1]
    k.ksplice("hook", "uninstall", check_state=())
    assert list(shared.iterdir()) == []  # the file was ours alone: gone

    # A hook that is not a shell script: refused, with the line to add by hand.
    py = shared / "reference-transaction"
    py.write_text("#!/usr/bin/env python3\nprint('mine')\n")
    py.chmod(0o755)
    r = k.ksplice("hook", "install", expect=1, check_state=())
    assert "not a shell script" in r.stderr and "git_ksplice.hooks notify" in r.stderr
    assert py.read_text() == "#!/usr/bin/env python3\nprint('mine')\n"
    # One that git ignores (not executable): refused rather than silently dead.
    py.chmod(0o644)
    r = k.ksplice("hook", "install", expect=1, check_state=())
    assert "not executable" in r.stderr


def test_the_worker_survives_the_terminal_closing(warm_kernel: Kernel) -> None:
    """`git commit` in a terminal that is closed right after it returns: the build goes
    on (the worker has its own session, so the hangup does not reach it)."""
    import pty

    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    k.edit("fs/proc.c", *PROC_FIX["fs/proc.c"])
    k.git("add", "fs/proc.c")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        os.chdir(k.path)
        os.execvp("git", ["git", "commit", "-q", "-m", "proc: say more"])
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
    os.close(fd)  # the terminal goes away: SIGHUP for whoever still has it
    jobs = wait_idle(k)
    assert [j["state"] for j in jobs] == ["built"]


@pytest.mark.parametrize("where", ["subdir", "worktree", "git_dir"])
def test_hook_commands_from_anywhere_in_the_repository(warm_kernel: Kernel, tmp_path: Path,
                                                       where: str) -> None:
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    env = None
    if where == "subdir":
        cwd = k.path / "fs"
    elif where == "worktree":
        cwd = tmp_path / "wt"
        k.git("worktree", "add", "-q", str(cwd), "-b", "wt-branch")
    else:
        cwd = tmp_path
        env = {"GIT_DIR": str(k.path / ".git"), "GIT_WORK_TREE": str(k.path)}
    r = k.ksplice("hook", "status", "--json", cwd=cwd, env=env, check_state=())
    assert json.loads(r.stdout)["watch"] == ["refs/heads/main"]
    if where == "worktree":
        # A commit made in a linked worktree onto the watched branch is seen too.
        git_cmd(k, "checkout", "-q", "--detach")
        c1 = k.commit("proc: say more", PROC_FIX, root=cwd)
        git_cmd(k, "push", "-q", ".", "wt-branch:main", cwd=cwd)
        assert [j["commit"] for j in wait_idle(k)] == [c1]


def test_a_worker_killed_mid_build_is_repaired(warm_kernel: Kernel, tmp_path: Path,
                                              fake_make) -> None:
    """kill -9 of the worker (and its build) leaves the job `running`; status says it was
    interrupted, `hook retry` runs it again, and the build tree is repaired on the way."""
    import signal

    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    building = tmp_path / "building"
    slow = fake_make("slow", f"touch {building}; sleep 60")
    k.edit("fs/proc.c", *PROC_FIX["fs/proc.c"])
    k.git("add", "fs/proc.c")
    env = dict(os.environ, PATH=f"{slow}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["git", "commit", "-q", "-m", "proc: say more"], cwd=k.path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, explain(r)
    deadline = time.monotonic() + 60
    while not building.exists():
        assert time.monotonic() < deadline, "the background build never started make"
        time.sleep(0.1)
    doc = status(k)
    pid = doc["worker"]["pid"]
    assert pid and [j["state"] for j in doc["jobs"]] == ["running"]
    os.killpg(pid, signal.SIGKILL)  # the worker leads its own session: all of it goes
    deadline = time.monotonic() + 10
    while status(k)["worker"]["pid"] is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = k.ksplice("hook", "status", check_state=()).stdout
    assert "interrupted" in text and "hook retry" in text
    k.ksplice("hook", "retry", check_state=())
    jobs = wait_idle(k)
    assert [(j["state"], j["attempts"]) for j in jobs] == [("built", 2)]
    k.assert_tree_clean()


def test_the_hook_starts_python_only_when_a_watched_ref_moves(warm_kernel: Kernel) -> None:
    """Most git commands move nothing watched: the hook's shell line sees that and returns
    without starting Python (whose runs rewrite the state file). A branch added to
    ksplice.watch later is picked up at its next move, with what it has beyond pre."""
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    state = k.path / ".git/ksplice/hook/state"
    before = state.stat().st_mtime_ns
    git_cmd(k, "checkout", "-q", "-b", "topic")
    c1 = k.commit("proc: say more", PROC_FIX)
    git_cmd(k, "tag", "v-topic")
    assert state.stat().st_mtime_ns == before
    assert status(k)["jobs"] == []

    k.git("config", "--add", "ksplice.watch", "topic")
    c2 = k.commit("sys: longer name", SYS_FIX)
    jobs = wait_idle(k)
    assert state.stat().st_mtime_ns != before
    assert [(j["commit"], j["ref"]) for j in jobs] == [
        (c1, "refs/heads/topic"), (c2, "refs/heads/topic")]


def test_many_commits_at_once_become_one_update(warm_kernel: Kernel) -> None:
    """Past ksplice.hookLimit (a pull of a stable release), one job for the last commit,
    whose update holds every change, says why."""
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    k.git("config", "ksplice.hookLimit", "2")
    git_cmd(k, "checkout", "-q", "-b", "stable")
    k.commit("proc: say more", PROC_FIX)
    k.commit("sys: longer name", SYS_FIX)
    c3 = k.commit("demo: one more", DEMO_FIX)
    git_cmd(k, "checkout", "-q", "main")
    git_cmd(k, "merge", "-q", "--ff-only", "stable")
    jobs = wait_idle(k)
    assert [(j["commit"], j["state"]) for j in jobs] == [(c3, "built")]
    assert "3 commits arrived at once" in jobs[0]["note"]
    m = json.loads(read_update(Path(jobs[0]["tarball"]))["manifest.json"])
    assert set(m["targets"]) == {"vmlinux", "demo"}
    assert "3 commits arrived at once" in k.ksplice("hook", "status", check_state=()).stdout


def test_a_remote_branch_watched_before_it_exists(warm_kernel: Kernel, tmp_path: Path,
                                                 running_kernel: Path) -> None:
    """`--branch origin/fixes` before the first fetch of that branch: when the fetch creates
    it, what it holds beyond refs/ksplice/pre is built."""
    upstream = warm_kernel
    clone = Kernel(tmp_path / "clone")
    run(["git", "clone", "-q", str(upstream.path), str(clone.path)], cwd=tmp_path)
    shutil.copytree(running_kernel, clone.path / "ksplice")
    clone.ksplice("hook", "install", "--branch", "origin/fixes", check_state=())
    clone.git("update-ref", "refs/ksplice/pre", "origin/main")
    git_cmd(upstream, "checkout", "-q", "-b", "fixes")
    c1 = upstream.commit("proc: say more", PROC_FIX)
    git_cmd(clone, "fetch", "-q", "origin")
    jobs = wait_idle(clone)  # no pre at install (nothing watched existed): no warm-up
    assert [(j["commit"], j["ref"], j["state"]) for j in jobs] == [
        (c1, "refs/remotes/origin/fixes", "built")]


def test_the_workers_settings_are_the_hooks(warm_kernel: Kernel) -> None:
    """ksplice.series for manual runs, or a `git -c` on the git command that queued the job,
    do not make the hook's builds stack; a change that cannot be applied live is `refused`
    with its reason, not `failed`."""
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    k.git("config", "ksplice.series", "true")
    pre = k.rev("refs/ksplice/pre")
    k.edit("fs/proc.c", *PROC_FIX["fs/proc.c"])
    k.git("add", "fs/proc.c")
    git_cmd(k, "-c", "ksplice.series=true", "commit", "-q", "-m", "proc: say more")
    k.commit("core: start later", {"kernel/core.c": ("static unsigned long ticks;",
                                                     "static unsigned long ticks = 5;")})
    jobs = wait_idle(k)
    assert [j["state"] for j in jobs] == ["built", "refused"]
    assert k.rev("refs/ksplice/pre") == pre
    assert "ticks" in jobs[1]["message"] and jobs[1]["exit_code"] == 65
    text = k.ksplice("hook", "status", check_state=()).stdout
    assert "refused" in text and "retrying does not change that" in text
    k.ksplice("hook", "retry", jobs[1]["id"], expect=1, check_state=())


def test_a_failure_in_a_series_is_carried_by_the_next_update(warm_kernel: Kernel) -> None:
    """--series: a failed build leaves pre where it was, so the next update carries that
    commit's change too, and the failed job becomes `skipped`, superseded by it."""
    k = warm_kernel
    k.ksplice("hook", "install", "--series", check_state=())
    (k.path / "ksplice").rename(k.path / "ksplice.away")
    c1 = k.commit("proc: say more", PROC_FIX)
    assert [j["state"] for j in wait_idle(k)] == ["failed"]
    (k.path / "ksplice.away").rename(k.path / "ksplice")
    c2 = k.commit("sys: longer name", SYS_FIX)
    jobs = wait_idle(k)
    assert [(j["commit"], j["state"]) for j in jobs] == [(c1, "skipped"), (c2, "built")]
    assert f"superseded by update {jobs[1]['id']}" in jobs[0]["message"]
    m = json.loads(read_update(Path(jobs[1]["tarball"]))["manifest.json"])
    assert set(m["targets"]["vmlinux"]["objects"]) == {"fs/proc.o", "kernel/sys.o"}
    text = k.ksplice("hook", "status", check_state=()).stdout
    assert "superseded" in text and "hook retry" not in text
    r = k.ksplice("hook", "retry", jobs[0]["id"], expect=1, check_state=())
    assert "already contains it" in r.stderr


@pytest.mark.parametrize("kind", ["crlf", "latin1", "shebang-only", "symlink"])
def test_uninstall_gives_the_users_hook_back_byte_for_byte(warm_kernel: Kernel,
                                                          tmp_path: Path, kind: str) -> None:
    k = warm_kernel
    hook = k.path / ".git/hooks/reference-transaction"
    data = {"crlf": b"#!/bin/sh\r\necho mine\r\n",
            "latin1": b"#!/bin/sh\n# caf\xe9\necho mine\n",
            "shebang-only": b"#!/bin/sh\n",
            "symlink": b"#!/bin/sh\necho linked\n"}[kind]
    if kind == "symlink":
        real = tmp_path / "dotfiles-hook"
        real.write_bytes(data)
        real.chmod(0o755)
        hook.symlink_to(real)
    else:
        hook.write_bytes(data)
        hook.chmod(0o755)
    k.ksplice("hook", "install", check_state=())
    assert BEGIN.encode() in hook.read_bytes()
    k.ksplice("hook", "uninstall", check_state=())
    assert hook.read_bytes() == data
    if kind == "symlink":
        assert hook.is_symlink() and hook.resolve() == real.resolve()


def test_cancel_takes_queued_jobs_off(warm_kernel: Kernel, fake_make, tmp_path: Path) -> None:
    """An accidental pull queued builds nobody wants: cancel them; the running one ends."""
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    building = tmp_path / "building"
    slow = fake_make("slow", f"touch {building}; sleep 3")
    env = dict(os.environ, PATH=f"{slow}{os.pathsep}{os.environ['PATH']}")
    git_cmd(k, "checkout", "-q", "-b", "pull")
    c1 = k.commit("proc: say more", PROC_FIX)
    k.commit("sys: longer name", SYS_FIX)
    k.commit("demo: one more", DEMO_FIX)
    git_cmd(k, "checkout", "-q", "main")
    r = subprocess.run(["git", "merge", "-q", "--ff-only", "pull"], cwd=k.path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, explain(r)
    deadline = time.monotonic() + 30
    while not building.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = k.ksplice("hook", "cancel", "--json", check_state=())
    assert [j["state"] for j in json.loads(r.stdout)["cancelled"]] == ["cancelled"] * 2
    jobs = wait_idle(k)
    assert [(j["commit"] == c1, j["state"]) for j in jobs] == [
        (True, "built"), (False, "cancelled"), (False, "cancelled")]
    k.ksplice("hook", "cancel", jobs[0]["id"], expect=1, check_state=())
    k.ksplice("hook", "retry", jobs[2]["id"], check_state=())
    assert [j["state"] for j in wait_idle(k)] == ["built", "cancelled", "built"]


def test_a_branch_pattern_watches_every_branch_it_names(warm_kernel: Kernel) -> None:
    """`--branch 'fix/*'` is a pattern, as git for-each-ref reads one (`*` stops at `/`): a
    commit on a new fix/ branch is built, one on another branch is not."""
    k = warm_kernel
    k.ksplice("hook", "install", "--branch", "fix/*", check_state=())
    git_cmd(k, "checkout", "-q", "-b", "fix/proc")
    fix = k.commit("proc: say more", PROC_FIX)
    git_cmd(k, "checkout", "-q", "-b", "other", "main")
    k.commit("sys: longer name", SYS_FIX)
    git_cmd(k, "checkout", "-q", "-b", "fix/deeper/sys", "main")
    k.commit("sys: longer name", SYS_FIX)
    jobs = wait_idle(k)
    assert [(j["commit"], j["ref"], j["state"]) for j in jobs] == [
        (fix, "refs/heads/fix/proc", "built")]
    assert "refs/heads/fix/proc" in status(k)["watch"]


def test_the_worker_stops_when_its_repository_is_deleted(warm_kernel: Kernel, fake_make,
                                                         tmp_path: Path) -> None:
    """A repository removed while its update builds: the worker stops the build it started
    (create, its make and what make runs) and exits, instead of building for nobody."""
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    make_pid = tmp_path / "make.pid"
    slow = fake_make("slow", f"echo $$ > {make_pid}; sleep 120")
    env = dict(os.environ, PATH=f"{slow}{os.pathsep}{os.environ['PATH']}")
    for rel, (old, new) in PROC_FIX.items():
        k.edit(rel, old, new)
    r = subprocess.run(["git", "commit", "-qam", "proc: say more"], cwd=k.path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, explain(r)
    deadline = time.monotonic() + 60
    while not make_pid.exists() or not make_pid.read_text().strip():
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    worker = status(k)["worker"]["pid"]
    assert worker is not None
    shutil.rmtree(k.path)

    def alive(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended

    deadline = time.monotonic() + 30
    while alive(worker) or alive(int(make_pid.read_text())):
        assert time.monotonic() < deadline, "the worker or its make outlived the repository"
        time.sleep(0.2)


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '{"refs/heads/main": 7}'])
def test_a_damaged_record_of_the_tips_queues_nothing_again(warm_kernel: Kernel,
                                                           garbage: str) -> None:
    """The hook's record of where the watched branches were, damaged: it used to read as
    "never seen", and every commit beyond refs/ksplice/pre was queued again."""
    k = warm_kernel
    k.ksplice("hook", "install", check_state=())
    first = k.commit("proc: say more", PROC_FIX)
    assert [(j["commit"], j["state"]) for j in wait_idle(k)] == [(first, "built")]
    (k.state_dir / "hook" / "tips.json").write_text(garbage)
    r = subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "empty"], cwd=k.path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, explain(r)
    assert [j["commit"] for j in wait_idle(k)] == [first]  # nothing queued again
    assert "was damaged: it starts again" in Path(status(k)["worker"]["log"]).read_text()
    second = k.commit("sys: longer name", SYS_FIX)
    assert [j["commit"] for j in wait_idle(k)] == [first, second]
