"""`git ksplice view` and `git ksplice series`: what was built, from tarballs or the ledger.

The formats are `git_ksplice.package` (a tarball, its contents and manifest) and
`git_ksplice.ledger` (the series ledger); this module only chooses what to read and prints.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from git_ksplice import ledger, ui
from git_ksplice.errors import EXIT_OK, InputError
from git_ksplice.package import SUMMARY_FILES, UPDATE_ID, Contents, Summary, read_tarball
from git_ksplice.repo import REF_UPDATES, Repo


def _functions(summary: Summary) -> list[dict[str, str]]:
    return [{"target": target, "object": obj, "function": name, "status": status}
            for target, obj, name, status in summary.functions]


def _tarball_or_id(tarball: str) -> str | None:
    """TARBALL that is no file but the id of an update built here (as `git ksplice series`
    lists them): that id, so `view ID` shows what `view --id ID` would. A file wins over an
    id of the same name: it is what the user pointed at."""
    if Path(tarball).exists():
        return None
    try:
        repo = Repo.discover() if UPDATE_ID.match(tarball) else None
    except InputError:
        repo = None  # outside a repository there are no ids to look up
    if repo is not None and (repo.refs(REF_UPDATES + tarball)
                             or ledger.find(repo, tarball)[0] is not None):
        return tarball
    raise InputError(f"cannot read update {tarball}: there is no such file"
                     + (", nor an update with that id here" if repo is not None else ""),
                     hint="give an update tarball's path, or --id ID for an update built in "
                          "this repository (git ksplice series lists them)")


def run(tarball: str | None, update_id: str | None, as_json: bool) -> int:
    if (tarball is None) == (update_id is None):
        raise InputError("give a TARBALL or --id ID (one of them)")
    if tarball is not None:
        update_id = _tarball_or_id(tarball)
        if update_id is not None:
            tarball = None
    if tarball is not None:
        t = read_tarball(Path(tarball), wanted=SUMMARY_FILES)
        manifest, description, patch = t.manifest, t.description, t.patch
        contents = t.contents_text
        uid = t.id
    else:
        assert update_id is not None
        manifest, description, patch = _from_ledger(update_id)
        contents = Contents.of_manifest(manifest).text()
        uid = update_id
    summary = Summary.of(manifest)
    functions = _functions(summary)
    if as_json:
        ui.print_json({"schema": 1, "id": uid, "description": description.rstrip("\n"),
                       "pre": summary.pre, "post": summary.post, "targets": summary.targets,
                       "functions": functions, "contents": contents.splitlines(),
                       "patch": patch})
        return EXIT_OK
    # Plain writes, not rich: the patch must come out verbatim (tabs and all) to apply. All
    # of it is the update's text, from anywhere: escaped where it could drive the terminal.
    lines = [f"Update {uid}: {description.splitlines()[0] if description else ''}",
             f"pre {summary.pre or '?'}  post {summary.post or '?'}"]
    lines += [f"  {line}" for line in contents.splitlines()]
    lines += [f"  {f['status']:8} {f['target']}: {f['function']} ({f['object']})"
              for f in functions]
    sys.stdout.write(ui.printable("\n".join(lines) + "\n"))
    if patch:
        sys.stdout.write(ui.printable("\n" + patch.rstrip("\n") + "\n"))
    return EXIT_OK


def _from_ledger(update_id: str) -> tuple[dict[str, Any], str, str]:
    """(manifest, description, patch) of the update's ledger entry."""
    repo = Repo.discover()
    entry, damaged = ledger.find(repo, update_id)
    if entry is None or entry.manifest is None:
        known = repo.refs(REF_UPDATES + update_id)
        raise InputError(f"no update {update_id} in the series ledger"
                         + (" (its ref exists but its ledger entry is missing)"
                            if known else "")
                         + (f"; {len(damaged)} damaged entries were skipped: "
                            f"{damaged[0].damage}" if damaged else ""),
                         hint="git ksplice series lists the updates built here")
    return entry.manifest, entry.description, entry.patch


def _when(timestamp: object) -> str:
    """A ledger entry's build time, or `-`: a fetched entry may say anything (10**20)."""
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return "-"


def run_series(as_json: bool) -> int:
    rows = []
    for e in ledger.entries(Repo.discover()):
        if e.manifest is None:
            ui.console.print(f"warning: {ui.printable(e.damage or '', terminal=True)}",
                             markup=False, highlight=False)
            rows.append({"id": None, "entry": e.commit, "description": "", "pre": None,
                         "post": None, "targets": [], "timestamp": None, "stacked": None,
                         "damaged": e.damage})
            continue
        m = Summary.of(e.manifest)
        rows.append({"id": m.id, "entry": e.commit,
                     "description": e.description.splitlines()[0] if e.description else "",
                     "pre": m.pre, "post": m.post, "targets": m.targets,
                     "timestamp": m.timestamp, "stacked": m.series})
    if as_json:
        ui.print_json({"schema": 1, "series": rows})
        return EXIT_OK
    if not rows:
        ui.console.print("No updates built yet.")
        return EXIT_OK
    width = max(len(str(r["id"])) for r in rows)
    sys.stdout.write(f"{'ID':<{width}}  {'BUILT':<16}  {'POST':<12}  S  TARGETS  "
                     "DESCRIPTION\n")
    for r in rows:
        when = _when(r.get("timestamp"))
        stacked = {True: "s", False: "-"}.get(r["stacked"], "?")
        if r.get("damaged"):
            r["description"] = f"(damaged ledger entry {r['entry'][:12]})"
        sys.stdout.write(ui.printable(
            f"{r['id'] or '?'!s:<{width}}  {when:<16}  {str(r['post'] or '-')[:12]:<12}  "
            f"{stacked}  {','.join(r['targets'])}  {r['description']}\n"))
    sys.stdout.write("(S: s = stacked with --series, each on the previous one)\n")
    return EXIT_OK
