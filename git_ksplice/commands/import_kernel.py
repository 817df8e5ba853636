"""`git ksplice import-kernel [--root ROOT] [RELEASE] [DIR]`: ORIG_CONFIG from a distribution's
kernel, installed (ROOT `/`) or unpacked from its packages.

The reading, checking and writing are `git_ksplice.installed_kernel`'s; this module chooses
the release and the directory, and says what was found, what is missing and what that costs.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.markup import escape

from git_ksplice import ui
from git_ksplice.errors import EXIT_OK, InputError
from git_ksplice.installed_kernel import ImportReport, import_kernel
from git_ksplice.repo import Repo
from git_ksplice.settings import orig_config_dir
from git_ksplice.words import count


def run(root: str, release: str | None, directory: str | None, as_json: bool) -> int:
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise InputError(f"--root {root} is not a directory",
                         hint="give / for the installed kernel, or the directory its packages "
                              "were unpacked into (dpkg-deb -x PACKAGE ROOT)")
    if release is None and root_path == Path("/"):
        release = os.uname().release  # the kernel this machine runs
    repo = _repository()
    destination = _destination(directory, repo)
    report = import_kernel(root_path, release, destination)
    # ORIG_CONFIG in the working tree holds hundreds of megabytes of modules: a `git add -A`
    # must not commit them.
    excluded = repo.exclude(destination) if repo is not None else None
    if as_json:
        ui.print_json({**_document(report), "excluded": excluded})
    else:
        _show(report)
        if excluded:
            ui.console.print(f"  [dim]{escape(excluded)} added to the repository's "
                             "info/exclude: git ignores it[/]", highlight=False)
    return EXIT_OK


def _repository() -> Repo | None:
    """The repository here, if this is one; git's other complaints (a repository owned by
    another user, under sudo) are the user's to see, not "not a repository"."""
    try:
        return Repo.discover()
    except InputError as e:
        if "not a git repository" in e.message:
            return None
        raise


def _destination(directory: str | None, repo: Repo | None) -> Path:
    """DIR, else the repository's ORIG_CONFIG (--config's default: ksplice.config or
    <source>/ksplice)."""
    if directory is not None:
        return Path(directory).expanduser().resolve()
    if repo is None:
        raise InputError("where should the kernel go? no DIR was given and this is not a git "
                         "repository", hint="name the ORIG_CONFIG directory: git ksplice "
                                            "import-kernel [RELEASE] DIR, or run it in the "
                                            "kernel's repository")
    return orig_config_dir(repo, None, os.getcwd())


def _document(report: ImportReport) -> dict:
    return {
        "schema": 1, "release": report.release, "directory": str(report.destination),
        "banner": report.banner.text if report.banner else None,
        "compiler": report.banner.compiler if report.banner else None,
        "vermagic": report.vermagic,
        "found": [{"part": f.part.name, "from": str(f.path), "layout": f.place.layout,
                   "notes": f.notes} for f in report.found],
        "missing": [{"part": name, "costs": cost} for name, cost in report.missing.items()],
        "system_map_symbols_from_kallsyms": report.synthesized_symbols,
        "notes": report.notes,
    }


def _show(report: ImportReport) -> None:
    say = ui.console.print
    say(f"imported kernel {escape(report.release)} into {escape(str(report.destination))}",
        highlight=False)
    if report.banner is not None:
        say(f"  built with {escape(report.banner.compiler)}", highlight=False)
    for f in report.found:
        if f.part.name == "System.map" and report.synthesized_symbols is not None:
            continue  # a stub or unreadable: said below
        say(f"  {f.part.name:15} {escape(str(f.path))}", highlight=False)
        for note in f.notes:
            say(f"  {'':15} [yellow]{escape(note)}[/]", highlight=False)
    if report.synthesized_symbols is not None:
        stub = next((f for f in report.found if f.part.name == "System.map"), None)
        why = (f"; {stub.path} is a stub" + (f" ({'; '.join(stub.notes)})" if stub.notes
                                             else "") if stub is not None else "")
        say(f"  {'System.map':15} written from vmlinuz's kallsyms "
            f"({count(report.synthesized_symbols, 'symbol')}){escape(why)}", highlight=False)
    for name, cost in report.missing.items():
        say(f"  {name:15} [yellow]missing[/]: {escape(cost)}", highlight=False)
    for note in report.notes:
        say(f"  [dim]{escape(note)}[/]", highlight=False)
