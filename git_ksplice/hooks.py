"""Automatic builds: a git hook queues an update for each new commit on a watched branch, and
one background worker per repository builds them, oldest first.

Why one `reference-transaction` hook: it is the only hook git runs for every way a branch
moves (commit, merge, rebase, reset, `fetch` into a branch or a remote-tracking ref, and a
push received by a bare repository), so it is the only one that cannot miss a move. It runs
for every ref update of every command, twice, so our block does nothing unless the
transaction is `committed`, and then compares the watched refs with what the last run saw in
the shell (three `git` calls); only when they differ does it start `notify`, which queues and
returns, never builds. This module and what it imports need nothing but the standard
library until an object is read (pygit2 is imported late, see repo.py), for the same reason.

The queue lives in the common git dir (`ksplice/hook/`): one JSON file per job, named by its
sequence number, so the order is the order the commits landed and a commit is queued once.
The worker is a detached process (its own session, no terminal, its own log), so closing the
terminal or a slow build never affects the git command that queued it. It takes a lock: at
most one worker per repository, and a job left `running` by a worker that died is found by
the next one and run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import site
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from git_ksplice.errors import EXIT_NO_CHANGE, EXIT_OK, EXIT_REFUSED
from git_ksplice.files import replace_file
from git_ksplice.package import new_update_id
from git_ksplice.repo import REF_PRE, GitError, Repo, clean_environment
from git_ksplice.settings import read_hook_settings

HOOK_NAME = "reference-transaction"
BEGIN = ("# >>> git-ksplice: added by `git ksplice hook install`; "
         "`git ksplice hook uninstall` removes it")
END = "# <<< git-ksplice"
#: Set in the worker's environment: the refs its own builds move are not news.
WORKER_ENV = "GIT_KSPLICE_HOOK_WORKER"
SCHEMA = 1

#: A for-each-ref pattern that matches no ref (see Queue.save_fast_path).
_NO_REF = "refs/ksplice/hook/no-such-ref"
#: queued -> running -> built | no-change | refused | failed | skipped; queued -> cancelled;
#: `retry` puts failed (and skipped, cancelled) ones back.
STATES = ("queued", "running", "built", "no-change", "refused", "failed", "skipped",
          "cancelled")



@dataclass
class Job:
    seq: int
    id: str
    ref: str
    commit: str
    subject: str
    series: bool
    state: str = "queued"
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    log: str = ""
    tarball: str | None = None
    message: str | None = None
    attempts: int = 0
    #: why this job stands for more than its commit (ksplice.hookLimit)
    note: str | None = None
    #: `update`, or `prebuild`: warming the pristine tree of refs/ksplice/pre (at install)
    kind: str = "update"
    #: where and how to run git-ksplice: the directory the hook ran in, and the absolute
    #: GIT_DIR / GIT_WORK_TREE it ran with (a bare server sets GIT_DIR=.)
    cwd: str = ""
    git_env: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict:
        d = asdict(self)
        d.pop("cwd")
        d.pop("git_env")
        return d


def _candidates(value: str) -> list[str]:
    """The refs one `ksplice.watch` value may name: itself if it is a full ref, else a local
    branch or a remote-tracking one."""
    v = value.strip()
    if not v:
        return []
    return [v] if v.startswith("refs/") else [f"refs/heads/{v}", f"refs/remotes/{v}"]


def ref_patterns(values: list[str]) -> list[str]:
    """Every ref a `ksplice.watch` value may name, whichever exists now: what the hook's
    shell line lists, so that `origin/fixes` appearing with a fetch is seen."""
    return list(dict.fromkeys(ref for v in values for ref in _candidates(v)))


def watched_refs(values: list[str], known: set[str]) -> list[str]:
    """`ksplice.watch` values as full ref names: `refs/...` as given, `REMOTE/BRANCH` when
    such a remote-tracking ref exists, otherwise a local branch. A value with `*`, `?` or
    `[` is a pattern, matched as `git for-each-ref` matches it (the hook's shell line lists
    the same patterns): every existing local or remote-tracking branch it names."""
    out = []
    for v in values:
        cands = _candidates(v)
        if is_pattern(v):
            out += sorted(ref for ref in known if any(_glob(c).fullmatch(ref) for c in cands))
            continue
        if len(cands) == 2:
            head, remote = cands
            cands = [remote if remote in known and head not in known else head]
        out += cands
    return list(dict.fromkeys(out))


def is_pattern(value: str) -> bool:
    return any(c in value for c in "*?[")


def _glob(pattern: str) -> re.Pattern[str]:
    """A ref pattern as git's for-each-ref reads it (wildmatch with WM_PATHNAME): `*` and `?`
    do not cross a `/`, `**` does (`fix/**` is every branch under fix/), `[...]` is a set
    of characters."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 1
        elif c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _write_atomic(path: Path, text: str) -> None:
    """Replace a file whole, so that a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, text)


class Queue:
    """The jobs of one repository, under `<common git dir>/ksplice/hook/`."""

    def __init__(self, common_dir: Path) -> None:
        self.common_dir = common_dir
        self.dir = common_dir / "ksplice" / "hook"
        self.jobs_dir = self.dir / "jobs"
        self.logs_dir = common_dir / "ksplice" / "logs" / "hook"
        self.tips_file = self.dir / "tips.json"
        self.worker_log = self.logs_dir / "worker.log"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The queue's lock: held only while jobs or tips are read and written."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "queue.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def jobs(self) -> list[Job]:
        out = []
        if not self.jobs_dir.is_dir():
            return out
        for p in sorted(self.jobs_dir.glob("*.json")):
            try:
                out.append(Job(**json.loads(p.read_text())))
            except (ValueError, TypeError):
                continue  # a torn write cannot happen (rename), but a hand edit can
        return out

    def last_seq(self) -> int:
        """The highest job number on disk, from the names: a file that does not parse (a
        hand edit, a newer version) must not have its number given again."""
        nums = [int(p.stem) for p in self.jobs_dir.glob("*.json") if p.stem.isdigit()]
        return max(nums, default=0)

    def log_path(self, seq: int, uid: str) -> str:
        return str(self.logs_dir / f"{seq:06d}-{uid}.log")

    def save(self, job: Job) -> None:
        _write_atomic(self.jobs_dir / f"{job.seq:06d}.json",
                      json.dumps(asdict(job), indent=1, sort_keys=True) + "\n")

    def tips(self) -> dict[str, str] | None:
        """Where the watched refs were when the hook last looked; None when the record is
        damaged (a hand edit, a disk error): then nothing tells which commits are new."""
        try:
            tips = json.loads(self.tips_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:  # (an OSError is no damage: it reaches the caller)
            return None
        if not isinstance(tips, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in tips.items()):
            return None
        return tips

    def save_tips(self, tips: dict[str, str]) -> None:
        _write_atomic(self.tips_file, json.dumps(tips, indent=1, sort_keys=True) + "\n")

    def save_fast_path(self, values: list[str], tips_now: dict[str, str]) -> None:
        """What the hook's shell line compares before it starts Python: `refs` (the patterns
        for `git for-each-ref`; the first matches nothing, so the list is never empty, which
        would list every ref) and `state`, the text that `git config --get-all ksplice.watch;
        git for-each-ref ... $(cat refs)` printed when we last looked. Written from the tips
        this run acted on, not read again: a ref that moved since must not match."""
        lines = list(values) + [f"{tips_now[r]} {r}" for r in sorted(tips_now)]
        _write_atomic(self.dir / "refs", "\n".join([_NO_REF, *ref_patterns(values)]) + "\n")
        _write_atomic(self.dir / "state", "\n".join(lines))

    def notifying(self) -> int:
        """How many hook runs are still queueing in the background (their marker files).
        A marker older than a minute is from a notify that was killed: removed."""
        count = 0
        for marker in self.dir.glob("pending.*"):
            try:
                if time.time() - marker.stat().st_mtime < 60:
                    count += 1
                else:
                    marker.unlink()
            except OSError:
                continue
        return count

    # -- the worker's lock -----------------------------------------------------------------

    def worker_running(self) -> int | None:
        """The pid of the running worker, or None. Read from the pid it writes, not by
        probing its lock: a probe could make a worker starting that instant give up."""
        try:
            text = (self.dir / "worker.lock").read_text().strip()
            cmdline = Path(f"/proc/{int(text)}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return int(text) if b"git_ksplice.hooks" in cmdline else None

    def try_worker_lock(self):
        """The worker lock's open file when we got it, else None."""
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.dir / "worker.lock", "a+")  # noqa: SIM115 (held across the run)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        return f


# -- the repository, as the hook sees it ---------------------------------------------------------


def _ref_tips(repo: Repo, values: list[str]) -> dict[str, str]:
    """Where the refs `ksplice.watch` may name are: the same listing as the hook's shell
    line makes (see Queue.save_fast_path)."""
    return repo.ref_tips([_NO_REF, *ref_patterns(values)])


def enqueue(cwd: str, env: dict[str, str] | None = None,
            notes: list[str] | None = None) -> list[Job]:
    """Queue a job for each commit that landed on a watched ref since it was last seen.
    Returns the new jobs; what the user should know besides goes to `notes`."""
    notes = [] if notes is None else notes
    env = dict(os.environ if env is None else env)
    repo = Repo.discover(cwd)
    settings = read_hook_settings(repo)
    queue = Queue(repo.common_dir)
    git_env = {k: str(Path(cwd, env[k]).resolve()) for k in ("GIT_DIR", "GIT_WORK_TREE")
               if env.get(k)}
    with queue.locked():
        # The tips are read under the lock: two hooks running at once must not let the one
        # that read first put back an older tip than the other recorded.
        tips_now = _ref_tips(repo, settings.watch)
        refs = watched_refs(settings.watch, set(tips_now))
        queue.save_fast_path(settings.watch, tips_now)
        if not settings.watch:
            return []
        seen = queue.tips()
        if seen is None:
            # Taking every watched commit as new would queue again what was built: start
            # again from where the refs are now, and say so.
            queue.save_tips({r: tips_now[r] for r in refs if r in tips_now})
            notes.append(f"the hook's record of the watched branches ({queue.tips_file}) "
                         "was damaged: it starts again from where they are now, and this "
                         "move was not built (git ksplice create COMMIT builds it)")
            return []
        if all(seen.get(r) == tips_now.get(r) for r in refs):
            return []
        new_jobs: list[Job] = []
        known = {j.commit for j in queue.jobs()}
        pre = repo.ref(REF_PRE)
        for ref in refs:
            old, new = seen.get(ref), tips_now.get(ref)
            if new is None:
                seen.pop(ref, None)
                continue
            if old != new:
                commits = [c for c in _landed(repo, ref, old, new, pre, notes)
                           if c not in known]
                template = Job(seq=0, id="", ref=ref, commit="", subject="",
                               series=settings.series, cwd=str(Path(cwd).resolve()),
                               git_env=git_env)
                new_jobs += _queue_commits(repo, queue, template, commits, settings.limit)
                known.update(commits)
            seen[ref] = new
        queue.save_tips(seen)
    return new_jobs


def _landed(repo: Repo, ref: str, old: str | None, new: str, pre: str | None,
            notes: list[str]) -> list[str]:
    """The commits that landed on `ref` moving from `old` to `new`, oldest first."""
    if old is None:
        # First sight of this ref: what it has beyond the running kernel's source, if it
        # builds on it; otherwise nothing (we do not build unrelated history).
        if not pre or not repo.is_ancestor(pre, new):
            notes.append(f"{ref} is watched and now exists, but "
                         + ("refs/ksplice/pre does not" if not pre else
                            "it does not build on refs/ksplice/pre")
                         + ": nothing queued for what it holds; its next commits will be")
            return []
        return repo.first_parent_commits(new, [pre])
    try:
        return repo.first_parent_commits(new, [old] + ([pre] if pre else []))
    except GitError:  # the old tip is gone (rewritten and pruned)
        return repo.first_parent_commits(new, [pre] if pre else [])[-1:]


def _queue_commits(repo: Repo, queue: Queue, template: Job, commits: list[str],
                   limit: int) -> list[Job]:
    """A job per commit, like `template`; beyond `limit` commits only the last, which holds
    all their changes. Called with the queue locked."""
    note = None
    if limit and len(commits) > limit:
        # A pull of a stable release brings hundreds of commits: one update of the tip holds
        # all their changes; hundreds of builds would help nobody.
        note = (f"{len(commits)} commits arrived at once (ksplice.hookLimit is {limit}): "
                "only the last is built, with all of their changes")
        commits = commits[-1:]
    jobs = []
    seq = queue.last_seq()
    for commit in commits:
        seq += 1
        uid = new_update_id()
        job = Job(**{**asdict(template), "seq": seq, "id": uid, "commit": commit,
                     "subject": repo.commit_subject(commit), "queued_at": time.time(),
                     "log": queue.log_path(seq, uid), "note": note})
        queue.save(job)
        jobs.append(job)
    return jobs


def queue_prebuild(repo: Repo, cwd: str, pre: str) -> Job:
    """A job that builds the pristine tree of refs/ksplice/pre, so that the first commit's
    update does not wait for a whole kernel build."""
    queue = Queue(repo.common_dir)
    with queue.locked():
        for j in queue.jobs():  # installed twice: one warm-up is enough
            if j.kind == "prebuild" and j.commit == pre and j.state in ("queued", "running"):
                return j
        seq = queue.last_seq() + 1
        uid = f"prebuild_{seq}"
        job = Job(seq=seq, id=uid, ref=REF_PRE, commit=pre,
                  subject="warm the pristine tree", series=False, queued_at=time.time(),
                  log=queue.log_path(seq, uid), cwd=str(Path(cwd).resolve()),
                  kind="prebuild")
        queue.save(job)
    spawn_worker(queue.common_dir)
    return job


def record_tips(repo: Repo) -> dict[str, str]:
    """Remember the watched refs where they are now: what is already there is not built."""
    queue = Queue(repo.common_dir)
    values = read_hook_settings(repo).watch
    with queue.locked():
        tips_now = _ref_tips(repo, values)
        refs = watched_refs(values, set(tips_now))
        tips = {r: tips_now[r] for r in refs if r in tips_now}
        queue.save_tips(tips)
        queue.save_fast_path(values, tips_now)
    return tips


# -- the worker ----------------------------------------------------------------------------------


def _python_env() -> dict[str, str]:
    """The environment of a git-ksplice process started from a hook: the user's, without
    what ties it to the git command that ran the hook."""
    env = clean_environment(drop_settings=True)
    env[WORKER_ENV] = "1"
    return env


def spawn_worker(common_dir: Path) -> None:
    """Start the worker, detached: its own session (no terminal to hang up on it), no
    inherited descriptors (a push must not wait for the build on the hook's stderr)."""
    queue = Queue(common_dir)
    queue.logs_dir.mkdir(parents=True, exist_ok=True)
    with open(queue.worker_log, "a") as log:
        subprocess.Popen([sys.executable, "-m", "git_ksplice.hooks", "worker", str(common_dir)],
                         cwd=common_dir, env=_python_env(), stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, close_fds=True)


def _say(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)


def worker(common_dir: Path) -> int:
    """Run queued jobs one at a time, oldest first, until none is left."""
    queue = Queue(common_dir)
    while True:
        lock = queue.try_worker_lock()
        if lock is None:
            return 0  # another worker has the queue; it will see our jobs
        try:
            with queue.locked():
                for job in queue.jobs():
                    if job.state == "running":  # its worker died: we hold the lock now
                        _say(f"job {job.seq} ({job.id}) was interrupted: queued again")
                        job.state = "queued"
                        job.message = "interrupted; queued again"
                        queue.save(job)
            while True:
                if not _repository_exists(queue.common_dir):
                    _say(f"the repository {queue.common_dir} is gone: the worker stops")
                    return 0
                with queue.locked():
                    todo = [j for j in queue.jobs() if j.state == "queued"]
                    if not todo:
                        break
                    job = todo[0]
                    job.state, job.started_at, job.finished_at = "running", time.time(), None
                    job.attempts += 1
                    queue.save(job)
                _say(f"job {job.seq}: building {job.commit[:12]} as update {job.id}")
                run_job(queue, job)
                _say(f"job {job.seq}: {job.state}"
                     + (f" ({job.message})" if job.message else ""))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        # A job queued after our last look, whose own worker found the lock still ours,
        # would wait for the next commit: look once more now that the lock is free.
        if not any(j.state == "queued" for j in queue.jobs()):
            return 0


def _repository_exists(common_dir: Path) -> bool:
    return (common_dir / "HEAD").exists()


def _run_while_repository_exists(cmd: list[str], cwd: str, env: dict[str, str], log: TextIO,
                                 common_dir: Path) -> tuple[int | None, str]:
    """(exit code, stdout) of `cmd`, or (None, "") when the repository was deleted while it
    ran: then everything it started (create, its make, the compilers) is stopped, since
    nothing it builds can be recorded anywhere."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    chunks = []
    while True:
        try:
            out, _ = proc.communicate(timeout=2)
            chunks.append(out)
            return proc.returncode, "".join(chunks)
        except subprocess.TimeoutExpired:
            if not _repository_exists(common_dir):
                _say(f"the repository {common_dir} is gone: stopping its build")
                _stop_tree(proc.pid)
                proc.wait()
                return None, ""


def _stop_tree(root: int) -> None:
    """SIGKILL `root` and every process descended from it: create starts its make in a
    session of its own, so neither a process group nor a session holds them all. Found
    first, killed after, so that none is re-parented away while the tree is walked."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))  # ppid
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def run_job(queue: Queue, job: Job) -> None:
    env = _python_env()
    env.update(job.git_env)
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    cwd = job.cwd
    if not Path(cwd).is_dir():  # a linked worktree removed since: the main one, or the bare
        common = queue.common_dir
        cwd = str(common.parent if common.name == ".git" else common)
    state, message, tarball, code = "failed", None, None, None
    with open(job.log, "a") as log:
        log.write(f"# git-ksplice hook: update {job.id} for {job.commit} ({job.subject}) "
                  f"on {job.ref}, attempt {job.attempts}, "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        skip = None
        repo = Repo.at_common_dir(queue.common_dir)
        if job.series:
            pre = repo.ref(REF_PRE)
            if pre and repo.is_ancestor(job.commit, pre):
                skip = ("already in refs/ksplice/pre: an update built after it includes "
                        "its change")
        if skip:
            state, message = "skipped", skip
            log.write(f"skipped: {skip}\n")
        else:
            # --json for the tarball's path, -v for a log with the build's output
            if job.kind == "prebuild":
                cmd = [sys.executable, "-m", "git_ksplice", "create", "--prebuild", "--json",
                       "-v"]
            else:
                cmd = [sys.executable, "-m", "git_ksplice", "create", job.commit, "--id",
                       job.id, "--json", "-v", "--description", f"{job.subject} "
                       f"({job.commit[:12]}, {job.ref.removeprefix('refs/heads/')})"]
            # Everything explicit: the user's settings for manual runs (ksplice.series,
            # ksplice.wait) are not the hook's.
            cmd += ["--series" if job.series else "--no-series", "--wait"]
            code, stdout = _run_while_repository_exists(cmd, cwd, env, log, queue.common_dir)
            if code is None:
                return  # the repository is gone, and its queue with it: nothing to record
            log.write(stdout)
            doc: dict = {}
            with contextlib.suppress(ValueError):
                doc = json.loads(stdout)
            reason = (doc.get("message") or "") + (f"\nhint: {doc['hint']}"
                                                    if doc.get("hint") else "")
            if code == EXIT_OK:
                state, tarball = "built", doc.get("tarball")
            elif code == EXIT_NO_CHANGE:
                state, message = "no-change", "the commit changes no compiled code"
            elif code == EXIT_REFUSED:  # not a failure to retry: the change cannot be applied live
                state, message = "refused", reason or "refused; see the log"
            else:
                message = reason or f"git ksplice create exited with {code}; see the log"
        log.write(f"# {state}\n")
    with queue.locked():
        job.state, job.finished_at, job.exit_code = state, time.time(), code
        job.message, job.tarball = message, tarball
        queue.save(job)
        if state == "built" and job.series and job.kind == "update":
            # Failed jobs of the series before this one: their changes are in this update
            # (refs/ksplice/pre did not move past them), so there is nothing left to retry.
            for other in queue.jobs():
                if other.state == "failed" and other.series and other.seq < job.seq and \
                        repo.is_ancestor(other.commit, job.commit):
                    other.state = "skipped"
                    other.message = (f"superseded by update {job.id}, which carries its "
                                     "change")
                    queue.save(other)


# -- the hook's line -----------------------------------------------------------------------------


def hook_lines() -> str:
    """Our block's body. Only for a `committed` transaction, and only when the watched refs
    (or ksplice.watch) differ from what the last run saw: three `git` calls in the shell,
    not a Python start, for the commands that move nothing watched (most of them). Then this
    interpreter runs `notify` in the background, with the directory the package is imported
    from when it is not installed in that interpreter: the git command returns at once (a
    commit on a watched branch costs the shell's few milliseconds, not Python's hundred),
    and says where to look. A marker file per hook run says that a notify is under way
    (`hook status`) until it has queued. Safe under the user's `set -eu`; reads no stdin."""
    pkg_parent = str(Path(__file__).resolve().parents[1])
    sites = set(site.getsitepackages()) | {site.getusersitepackages()}
    py = _sh_quote(sys.executable)
    prefix = ""
    if pkg_parent not in sites:
        prefix = f"PYTHONPATH={_sh_quote(pkg_parent)}${{PYTHONPATH:+:$PYTHONPATH}} "
    return "\n".join([
        'if [ "${1-}" = committed ]; then',
        "\t_ksplice_d=$(git rev-parse --path-format=absolute --git-common-dir)/ksplice/hook "
        "|| _ksplice_d=/nonexistent",
        "\t_ksplice_now=$(git config --get-all ksplice.watch; git for-each-ref "
        "--format='%(objectname) %(refname)' $(cat \"$_ksplice_d/refs\" 2>/dev/null "
        "|| echo refs/heads/) </dev/null) || :",
        '\tif [ "$_ksplice_now" != "$(cat "$_ksplice_d/state" 2>/dev/null)" ] &&',
        '\t\t[ -d "$_ksplice_d" ] && : >"$_ksplice_d/pending.$$"; then',
        # SIGHUP ignored before Python starts: a terminal closed as the command returns
        # must not take the queueing with it (notify then leaves the session).
        f"\t\t(trap '' HUP; {prefix}exec {py} -m git_ksplice.hooks notify "
        "\"$_ksplice_d/pending.$$\" </dev/null >/dev/null 2>&1 &) || :",
        "\t\techo \"git-ksplice: a watched branch moved: its new commits are queued and "
        "built in the background (git -C ${_ksplice_d%/ksplice/hook} ksplice hook status)\""
        " >&2",
        "\tfi",
        "\tunset _ksplice_d _ksplice_now",
        "fi",
    ])


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def notify(marker: str | None = None) -> int:
    """What the hook starts in the background: queue new commits, start a worker if none
    runs, and remove the hook run's marker file. What the user should know goes to the
    worker log, which `hook status` names (the git command has long returned)."""
    if os.environ.get(WORKER_ENV):
        return 0
    with contextlib.suppress(OSError):
        os.setsid()  # no terminal to hang up on it
    try:
        cwd = os.getcwd()
        queue = Queue(Repo.discover(cwd).common_dir)
        queue.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(queue.worker_log, "a") as log, contextlib.redirect_stdout(log):
            try:
                notes: list[str] = []
                jobs = enqueue(cwd, notes=notes)
                for note in notes:
                    _say(f"hook: {note}")
                if jobs:
                    _say("hook: queued " + ", ".join(f"{j.id} ({j.commit[:12]} on {j.ref})"
                                                      for j in jobs))
                    # Always: a worker that is about to exit may already have looked for
                    # work. One too many finds the lock taken and exits at once.
                    spawn_worker(queue.common_dir)
            except Exception as e:  # logged; nothing else is there to tell
                _say(f"hook: {e} (nothing was queued)")
    finally:
        if marker:
            with contextlib.suppress(OSError):
                os.unlink(marker)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["notify"]:
        return notify(argv[1] if len(argv) > 1 else None)
    if argv[:1] == ["worker"] and len(argv) == 2:
        return worker(Path(argv[1]))
    print("usage: python -m git_ksplice.hooks notify | worker COMMON_GIT_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
