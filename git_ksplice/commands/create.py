"""`git ksplice create` (and `ksplice-create`): options in, the pipeline run, the result out.

The work is `git_ksplice.pipeline`; this module turns the command line into settings and a
request, gives the pipeline a reporter that draws on the terminal, and prints what it made
(or, with --json, one document whatever happens).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from git_ksplice import ui
from git_ksplice.errors import EXIT_NO_CHANGE, EXIT_OK, EXIT_REFUSED, InputError, KspliceError
from git_ksplice.pipeline import Created, Prebuilt, Request, create
from git_ksplice.repo import Repo
from git_ksplice.settings import CreateOptions, one_change_at_a_time, read_create_settings

#: What --json calls the outcome of a failed run, by exit code.
_JSON_RESULTS = {EXIT_NO_CHANGE: "unchanged", EXIT_REFUSED: "refused"}


def run(opts: CreateOptions) -> int:
    try:
        return _run(opts)
    except KspliceError as e:
        if opts.as_json:
            # Scripts get one document whatever happens; the message still goes to stderr.
            ui.print_json({"schema": 1, "result": _JSON_RESULTS.get(e.exit_code, "error"),
                           "message": e.message, "hint": e.hint})
        raise


def _run(opts: CreateOptions) -> int:
    problem = one_change_at_a_time(opts.modes())
    if problem:
        raise InputError(problem, hint="use one of COMMIT, --git, --patch, --diffext or "
                                       "--prebuild")
    repo = Repo.discover(opts.source or opts.cwd)
    settings = read_create_settings(repo, opts)
    reporter = ui.Phases(verbose=opts.verbose, quiet=opts.as_json and not opts.verbose)
    outcome = create(repo, settings, _request(opts), reporter)
    if isinstance(outcome, Prebuilt):
        if opts.as_json:
            ui.print_json({"schema": 1, "result": "prebuilt", "pre": outcome.pre,
                           "tree": str(outcome.tree)})
        return EXIT_OK
    _report(opts, outcome)
    return EXIT_OK


def _request(opts: CreateOptions) -> Request:
    patch = None
    if opts.patch is not None:
        patch = Path(opts.patch)
        patch = patch if patch.is_absolute() else Path(opts.cwd) / patch
    return Request(commit=opts.commit, patch=patch, diffext=opts.diffext,
                   prebuild=opts.prebuild, description=opts.description,
                   skip_prebuild=opts.skip_prebuild,
                   allow_layout_change=opts.allow_layout_change)


def _report(opts: CreateOptions, created: Created) -> None:
    if opts.as_json:
        ui.print_json({"schema": 1, "result": "created", "id": created.id,
                       "tarball": str(created.tarball), "pre": created.pre,
                       "post": created.post, "series": created.series,
                       "targets": created.targets})
        return
    c = ui.console
    for r in created.changed:
        for f in r.result.changed:
            c.print(f"changed  {r.target}: {f.name} ({r.path})")
        for f in r.result.new:
            c.print(f"new      {r.target}: {f.name} ({r.path})")
        for w in r.result.warnings:
            c.print("[yellow]warning[/]  " + escape(f"{r.path}: {w.symbol}: {w.message}"))
    c.print(f"Update {created.id}: {created.tarball}")
