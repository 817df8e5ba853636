"""`git ksplice hook install | uninstall | status | retry`: automatic update builds.

Install adds one marked block to the repository's `reference-transaction` hook, wherever git
looks for hooks (`core.hooksPath` included), next to whatever the user's hook already does;
uninstall removes that block and nothing else. The queue and the worker are in
`git_ksplice.hooks`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.markup import escape

from git_ksplice import hooks, ui
from git_ksplice.errors import EXIT_OK, InputError, KspliceError
from git_ksplice.files import replace_file
from git_ksplice.origconfig import OrigConfig
from git_ksplice.repo import REF_PRE, Repo
from git_ksplice.settings import (
    HookSettings,
    build_dir,
    orig_config_dir,
    read_build_mode,
    read_hook_settings,
)

_SHELLS = ("sh", "bash", "dash", "ksh", "zsh", "ash", "busybox")


def hook_path(repo: Repo) -> Path:
    """Where git runs the hook from: `core.hooksPath` or the common dir's hooks/."""
    return repo.git_path(f"hooks/{hooks.HOOK_NAME}")


def _cwd(repo: Repo) -> Path:
    return repo.toplevel or repo.git_dir


_BEGIN, _END = hooks.BEGIN.encode(), hooks.END.encode()
#: In the block when install made the file: uninstall then removes the file too.
_CREATED = b"# (install created this file)"
#: `--path-format` (git 2.31) in the hook's line and here.
MIN_GIT = (2, 31)


def _is_shell_script(data: bytes) -> bool:
    first = data.split(b"\n", 1)[0].decode("latin-1")
    if not first.startswith("#!"):
        return True  # git runs a script without #! through sh
    words = first[2:].split()
    if not words:
        return True
    prog = Path(words[0]).name
    if prog == "env" and len(words) > 1:
        prog = Path(words[1]).name
    return prog in _SHELLS


def _block(created: bool = False) -> bytes:
    lines = [hooks.BEGIN, *(["# (install created this file)"] if created else []),
             hooks.hook_lines(), hooks.END]
    return ("\n".join(lines) + "\n").encode()


def _block_span(data: bytes) -> tuple[int, int] | None:
    """Where our block is, from its first byte to the end of its last line."""
    start = data.find(_BEGIN)
    if start < 0:
        return None
    end = data.find(_END, start)
    if end < 0:
        return None
    end += len(_END)
    if data[end:end + 1] == b"\n":
        end += 1
    return start, end


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace the file's bytes whole (rename), through a symlink to where it points: a
    hook linked from a dotfiles repository stays a link."""
    replace_file(path.resolve() if path.is_symlink() else path, data, mode=mode)


def _check_git_version(repo: Repo) -> None:
    version = repo.git_version()
    if version is not None and version < MIN_GIT:
        raise InputError(f"git {version[0]}.{version[1]} is too old for the hook: it needs git "
                         f"{MIN_GIT[0]}.{MIN_GIT[1]} or later (reference-transaction hook, "
                         "rev-parse --path-format)", hint="upgrade git, or run git ksplice "
                         "create by hand")


def _shared_hooks_path(repo: Repo) -> str | None:
    """Where core.hooksPath comes from, when it is not this repository's own setting: the
    hook is then every repository's that uses it."""
    origin = repo.config_origin("core.hooksPath")
    if origin is None:
        return None
    local = {str(repo.common_dir / "config"), str(repo.git_dir / "config.worktree")}
    try:
        resolved = str(Path(_cwd(repo), origin).resolve())
    except OSError:
        resolved = origin
    return None if resolved in local or origin in local else origin


def install(repo: Repo, branches: list[str], series: bool | None, as_json: bool) -> int:
    _check_git_version(repo)
    path = hook_path(repo)
    data = path.read_bytes() if path.exists() else b""
    span = _block_span(data)
    if span is None and path.exists():
        _check_ours_to_edit(path, data)
    _configure(repo, branches, series)
    _write_block(path, data, span)
    shared = _shared_hooks_path(repo)
    if shared:
        ui.console.print("[yellow]note:[/] " + escape(
            f"core.hooksPath is set in {shared}: the hook in {path.parent} runs for every "
            "repository that uses it (those without ksplice.watch only pay its shell check)"))
    settings = read_hook_settings(repo)
    watch = hooks.watched_refs(_watch_values(settings), set(repo.refs("refs/")))
    missing = [r for r in watch if repo.ref(r) is None]
    pre = _start_pre(repo, [r for r in watch if r not in missing])
    usable = _warn_without_orig_config(repo)
    tips = hooks.record_tips(repo)
    warming = None
    if usable and pre is not None and not _pristine_ready(repo, pre):
        warming = hooks.queue_prebuild(repo, str(_cwd(repo)), pre)
        how = ("preparing the pristine tree (make modules_prepare)"
               if read_build_mode(repo) == "targeted" else "building the pristine tree")
        ui.console.print(f"{how} of refs/ksplice/pre ({pre[:12]}) in the background now, so "
                         f"the first update does not wait for it (log {warming.log})",
                         markup=False)
    if as_json:
        ui.print_json({"schema": hooks.SCHEMA, "hook": str(path), "watch": watch,
                       "series": settings.series, "tips": tips,
                       "prebuild": warming.public() if warming else None})
    else:
        ui.console.print(f"installed {path}: watching {', '.join(watch)}"
                         + (" (--series)" if settings.series else ""), markup=False)
        for r in missing:
            ui.console.print(f"  {r} does not exist yet: its first commits beyond "
                             "refs/ksplice/pre will be built when it appears", markup=False)
    return EXIT_OK


def _check_ours_to_edit(path: Path, data: bytes) -> None:
    """A hook the user already has: git must be running it, and it must be a shell script
    for our block to run inside it."""
    if not os.access(path, os.X_OK):
        raise InputError(f"{path} exists but is not executable, so git does not run it",
                         hint="make it executable (chmod +x) or remove it, then install "
                              "again")
    if data and not _is_shell_script(data):
        raise InputError(
            f"{path} is not a shell script: git-ksplice can add itself only to shell "
            "hooks", hint="add these lines to your hook yourself, where they run for "
            "every call, with the hook's arguments:\n" + _block().decode())


def _configure(repo: Repo, branches: list[str], series: bool | None) -> None:
    """ksplice.watch (--branch, else what is set, else the current branch) and
    ksplice.hookSeries."""
    if branches:
        repo.set_config("ksplice.watch", branches)
    elif not _watch_values(read_hook_settings(repo)):
        head = repo.current_branch()
        if not head:
            raise InputError("HEAD is not on a branch: which branch should be watched?",
                             hint="git ksplice hook install --branch BRANCH")
        repo.set_config("ksplice.watch", [head])
    if series is not None:
        repo.set_config("ksplice.hookSeries", [str(series).lower()])


def _write_block(path: Path, data: bytes, span: tuple[int, int] | None) -> None:
    """Our block into the hook: a new file, after the #! line of the user's, or refreshed
    where it is (the interpreter may have moved)."""
    if span is not None:
        created = _CREATED in data[span[0]:span[1]]
        new = data[:span[0]] + _block(created) + data[span[1]:]
        if new != data:
            _write(path, new, path.stat().st_mode & 0o7777)
        return
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, b"#!/bin/sh\n" + _block(created=True), 0o755)
        return
    # After the #! line: the block runs even if the user's script exits early, and it reads
    # nothing from stdin, which stays the user's script's. Every other byte of the file
    # stays as it is, so uninstall can give it back exactly.
    if data.startswith(b"#!"):
        nl = data.find(b"\n")
        head, rest = (data, b"") if nl < 0 else (data[:nl + 1], data[nl + 1:])
        if not head.endswith(b"\n"):
            raise InputError(f"{path} is one line without a newline at its end",
                             hint="end it with a newline, then install again")
        new = head + _block() + rest
    else:
        new = _block() + data
    _write(path, new, path.stat().st_mode & 0o7777)


def _start_pre(repo: Repo, present: list[str]) -> str | None:
    """refs/ksplice/pre, created at the first watched branch when it does not exist:
    otherwise `create` would take HEAD on first use, in a hook the new commit itself."""
    pre = repo.ref(REF_PRE)
    if pre is not None or not present:
        return pre
    tip = repo.ref(present[0])
    assert tip is not None
    repo.update_ref(REF_PRE, tip, None, f"ksplice hook install: {present[0]}")
    ui.console.print(f"refs/ksplice/pre created at {present[0]} ({tip[:12]}): the running "
                     "kernel's source (move it with `git update-ref refs/ksplice/pre "
                     "COMMIT` if it is not)", markup=False)
    return tip


def _warn_without_orig_config(repo: Repo) -> bool:
    """Every background build would fail without ORIG_CONFIG: say so now, not in a log.
    True when it is there."""
    try:
        OrigConfig(orig_config_dir(repo, None, str(_cwd(repo)))).check()
    except KspliceError as e:
        ui.console.print("[yellow]warning:[/] " + escape(
            f"the builds will fail until this is fixed: {e.message}"
            + (f" ({e.hint})" if e.hint else "")))
        return False
    return True


def _pristine_tree(repo: Repo, pre: str | None):  # -> pipeline.PristineTree
    # The pipeline (and the engine below it) is imported only here: `hook notify`, on every
    # ref update, must stay light.
    from git_ksplice.pipeline import pristine_tree

    return pristine_tree(repo, build_dir(repo), read_build_mode(repo), pre)


def _pristine_ready(repo: Repo, pre: str) -> bool:
    tree = _pristine_tree(repo, pre)
    return tree.ready and tree.pre == pre


def _watch_values(settings: HookSettings) -> list[str]:
    return [v for v in settings.watch if v.strip()]


def uninstall(repo: Repo, as_json: bool) -> int:
    path = hook_path(repo)
    removed = False
    if path.exists():
        data = path.read_bytes()
        span = _block_span(data)
        if span is not None:
            created = _CREATED in data[span[0]:span[1]]
            rest = data[:span[0]] + data[span[1]:]
            if created and rest == b"#!/bin/sh\n":
                path.unlink()  # ours alone
            else:
                _write(path, rest, path.stat().st_mode & 0o7777)
            removed = True
            shared = _shared_hooks_path(repo)
            if shared:
                ui.console.print("[yellow]note:[/] " + escape(
                    f"core.hooksPath is set in {shared}: the hook is gone for every "
                    "repository that uses it"))
    for key in ("ksplice.watch", "ksplice.hookSeries"):
        repo.set_config(key, [])
    queue = hooks.Queue(repo.common_dir)
    running = queue.worker_running()
    if as_json:
        ui.print_json({"schema": hooks.SCHEMA, "hook": str(path), "removed": removed,
                       "worker": running})
    else:
        ui.console.print(f"removed git-ksplice from {path}" if removed
                         else f"git-ksplice was not installed in {path}", markup=False)
        if running:
            ui.console.print(f"the worker (pid {running}) finishes the jobs already queued",
                             markup=False)
    return EXIT_OK


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


#: Finished jobs `hook status` shows without --all (queued and running ones always).
RECENT = 10


def status(repo: Repo, as_json: bool, show_all: bool = False) -> int:
    queue = hooks.Queue(repo.common_dir)
    path = hook_path(repo)
    installed = path.exists() and _block_span(path.read_bytes()) is not None
    settings = read_hook_settings(repo)
    watch = hooks.watched_refs(_watch_values(settings), set(repo.refs("refs/")))
    series_on = settings.series
    worker = queue.worker_running()
    notifying = queue.notifying()
    jobs = queue.jobs()
    if worker is None:
        for j in jobs:
            if j.state == "running":
                j.message = ("interrupted: the worker is gone; the next worker (or `git "
                             "ksplice hook retry`) runs it again")
    pre = repo.ref(REF_PRE)
    if as_json:
        ui.print_json({"schema": hooks.SCHEMA, "installed": installed, "hook": str(path),
                       "watch": watch, "series": series_on, "pre": pre,
                       "worker": {"pid": worker, "log": str(queue.worker_log)},
                       "notifying": notifying, "jobs": [j.public() for j in jobs],
                       "pristine_tree": vars(_pristine_tree(repo, pre))})
        return EXIT_OK
    # A listing, like `git status`: on stdout, so that `| grep failed` and `| less` work.
    con = ui.listing
    con.print(f"hook: {'installed in ' + str(path) if installed else 'not installed'}"
              + (f"; watching {', '.join(watch)}" if watch else "")
              + (" (--series)" if series_on else ""))
    if installed and not os.access(path, os.X_OK):
        con.print("[yellow]warning:[/] " + escape(f"{path} is not executable: git does not run it"))
    con.print("refs/ksplice/pre: " + (f"{pre[:12]} {repo.commit_subject(pre)}" if pre
                                       else "not set (the running kernel's source)"),
              markup=False)
    con.print("pristine tree: " + _pristine_tree(repo, pre).describe(), markup=False)
    if installed:
        _warn_without_orig_config(repo)
    con.print(f"worker: {'running, pid ' + str(worker) if worker else 'idle'} "
              f"(log {queue.worker_log})"
              + (f"; {ui.count(notifying, 'branch move')} being queued" if notifying else ""))
    if not jobs:
        con.print("no updates queued yet")
        return EXIT_OK
    shown = jobs
    if not show_all:
        finished = [j for j in jobs if j.state not in ("queued", "running")]
        older = {j.seq for j in finished[:-RECENT]}
        shown = [j for j in jobs if j.seq not in older]
        if older:
            con.print(f"({ui.count(len(older), 'older finished job')} not shown: --all "
                      "shows them)")
    for j in shown:
        state = j.state + (f" (exit {j.exit_code})" if j.state == "failed" and j.exit_code
                           else "")
        what = (f"{j.commit[:12]} {j.subject}" if j.kind == "update"
                else f"pristine tree of refs/ksplice/pre ({j.commit[:12]})")
        con.print(f"#{j.seq} {j.id}  {state:<10} {what}  "
                  f"({j.ref.removeprefix('refs/heads/')})", markup=False)
        times = f"queued {_when(j.queued_at)}"
        if j.started_at:
            times += f", started {_when(j.started_at)}"
        if j.finished_at and j.started_at:
            times += f", finished {_when(j.finished_at)} ({j.finished_at - j.started_at:.1f} s)"
        if j.attempts > 1:
            times += f", attempt {j.attempts}"
        con.print(f"    {times}", markup=False)
        for text in (j.note, j.message if j.state != "no-change" else None):
            for line in (text or "").splitlines():
                con.print(f"    {line.strip()}", markup=False)
        con.print(f"    hook log {j.log}", markup=False)
        if j.tarball and j.state == "built":
            con.print(f"    update {j.tarball}", markup=False)
    if any(j.state == "failed" for j in jobs):
        con.print("retry the failed builds with `git ksplice hook retry` (or retry ID...)")
    if any(j.state == "refused" for j in jobs):
        con.print("a refused change cannot be applied to a running kernel as it is: its "
                  "reason is above; retrying does not change that")
    return EXIT_OK


def _chosen(queue: hooks.Queue, ids: list[str], default: tuple[str, ...]) -> list[hooks.Job]:
    """The jobs named by `ids`, or without ids every job in one of the `default` states.
    Called with the queue locked."""
    jobs = queue.jobs()
    if not ids:
        return [j for j in jobs if j.state in default]
    by_id = {j.id: j for j in jobs}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise InputError(f"no queued update with id {', '.join(unknown)}",
                         hint="`git ksplice hook status` lists them")
    return [by_id[i] for i in ids]


def retry(repo: Repo, ids: list[str], as_json: bool) -> int:
    queue = hooks.Queue(repo.common_dir)
    with queue.locked():
        # A job left running by a worker that is gone was interrupted: retried like a failure.
        interrupted = ("running",) if queue.worker_running() is None else ()
        retryable = ("failed", "skipped", "cancelled", *interrupted)
        chosen = _chosen(queue, ids, ("failed", *interrupted))
        bad = [j for j in chosen if j.state not in retryable]
        if bad and ids:
            raise InputError(f"update {bad[0].id} is {bad[0].state}, not failed: only failed "
                             "(or interrupted) builds are retried")
        pre = repo.ref(REF_PRE)
        contained = [j for j in chosen if j.series and pre and repo.is_ancestor(j.commit, pre)]
        if contained and ids:
            j = contained[0]
            raise InputError(f"update {j.id} ({j.commit[:12]}) cannot be rebuilt as part of "
                             "the series: refs/ksplice/pre already contains it (a later update "
                             "of the series carries its change)",
                             hint="build it by hand against another base, or leave it")
        for j in contained:  # nothing to retry: a later update of the series carries it
            j.state = "skipped"
            j.message = ("its change is in a later update of the series (refs/ksplice/pre "
                         "contains the commit)")
            queue.save(j)
        chosen = [j for j in chosen if j not in contained]
        for j in chosen:
            j.state, j.message, j.exit_code = "queued", "queued again by retry", None
            j.started_at = j.finished_at = None
            queue.save(j)
    if chosen:
        hooks.spawn_worker(repo.common_dir)  # a worker finishing now may not see them
    if as_json:
        ui.print_json({"schema": hooks.SCHEMA, "queued": [j.public() for j in chosen],
                       "skipped": [j.public() for j in contained]})
    else:
        for j in contained:
            ui.console.print(f"{j.id}: not retried, {j.message}", markup=False)
        ui.console.print("queued again: " + (", ".join(j.id for j in chosen) or "nothing "
                                             "(no failed build)"))
    return EXIT_OK


def cancel(repo: Repo, ids: list[str], as_json: bool) -> int:
    """Take queued jobs off the queue (an accidental pull, a branch pushed by mistake); a
    running build finishes."""
    queue = hooks.Queue(repo.common_dir)
    with queue.locked():
        chosen = _chosen(queue, ids, ("queued",))
        bad = [j for j in chosen if j.state != "queued"]
        if bad:
            raise InputError(f"update {bad[0].id} is {bad[0].state}, not queued: only queued "
                             "jobs are cancelled")
        for j in chosen:
            j.state, j.message = "cancelled", "cancelled by `git ksplice hook cancel`"
            queue.save(j)
    if as_json:
        ui.print_json({"schema": hooks.SCHEMA, "cancelled": [j.public() for j in chosen]})
    else:
        ui.console.print("cancelled: " + (", ".join(j.id for j in chosen) or "nothing (no "
                                          "queued job)"))
    return EXIT_OK
