"""`git ksplice view` and `git ksplice series`: what was built, from tarballs or the ledger.

The ledger (`refs/ksplice/series`) is a chain of commits, one per update, whose trees hold
each update's manifest, patch and description; `git log refs/ksplice/series` is its
history, and `git push/fetch 'refs/ksplice/*'` shares it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pygit2

from git_ksplice import manifest as manifest_schema
from git_ksplice import ui
from git_ksplice.errors import EXIT_OK, InputError
from git_ksplice.package import UPDATE_ID, read_tarball
from git_ksplice.repo import REF_SERIES, REF_UPDATES, Repo

#: The largest file of a ledger entry read (a manifest, a description, a patch).
MAX_LEDGER_FILE = 64 << 20


def _ledger(repo: Repo) -> list[tuple[str, dict[str, Any] | str, str, str]]:
    """(entry commit, manifest, description, patch), oldest first. A damaged entry (its
    manifest not one: the ledger arrives with `git fetch` from anyone) has, in place of the
    manifest, what is wrong with it: listing the others must not depend on it."""
    tip = repo.ref(REF_SERIES)
    out = []
    pg = repo.pygit
    oid = tip
    while oid:
        commit = pg[oid]
        tree = commit.tree

        def blob(name: str, tree: pygit2.Tree = tree) -> str:
            """A file of the entry, read only when it is a blob of a sane size (the size
            from the object's header, before its bytes are read)."""
            try:
                entry = tree[name]
            except KeyError:
                return ""
            kind, size = pg.odb.read_header(entry.id)
            if kind != pygit2.enums.ObjectType.BLOB:
                raise InputError(f"{name} is not a file")
            if size > MAX_LEDGER_FILE:
                raise InputError(f"{name} is {size >> 20} MiB, more than a ledger file can be")
            return entry.data.decode("utf-8", "replace")  # type: ignore[union-attr]

        where = f"ledger entry {str(commit.id)[:12]}"
        manifest: dict[str, Any] | str
        try:
            manifest = manifest_schema.parse(blob("manifest.json").encode() or b"{}", where)
            description, patch = blob("description"), blob("patch")
        except InputError as e:
            manifest, description, patch = (e.message if e.message.startswith(where)
                                             else f"{where}: {e.message}"), "", ""
        out.append((str(commit.id), manifest, description, patch))
        oid = str(commit.parent_ids[0]) if commit.parent_ids else None
    out.reverse()
    return out


def _functions(manifest: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for target, t in sorted(manifest.get("targets", {}).items()):
        for obj, o in sorted(t.get("objects", {}).items()):
            for f in o.get("changed_functions", []):
                rows.append({"target": target, "object": obj, "function": f["name"],
                             "status": "changed"})
            for f in o.get("new_functions", []):
                rows.append({"target": target, "object": obj, "function": f["name"],
                             "status": "new"})
    return rows


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
                             or any(isinstance(e[1], dict) and e[1].get("id") == tarball
                                    for e in _ledger(repo))):
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
        t = read_tarball(Path(tarball), wanted=("manifest.json", "description", "patch"))
        manifest, description, patch = t.manifest, t.text("description"), t.text("patch")
        contents = t.text("contents")
        uid = t.id
    else:
        repo = Repo.discover()
        ledger = _ledger(repo)
        entries = [e for e in ledger if isinstance(e[1], dict) and e[1].get("id") == update_id]
        if not entries:
            known = repo.refs(REF_UPDATES + update_id)
            damaged = [e[1] for e in ledger if isinstance(e[1], str)]
            raise InputError(f"no update {update_id} in the series ledger"
                             + (" (its ref exists but its ledger entry is missing)"
                                if known else "")
                             + (f"; {len(damaged)} damaged entries were skipped: {damaged[0]}"
                                if damaged else ""),
                             hint="git ksplice series lists the updates built here")
        _, manifest, description, patch = entries[-1]
        assert isinstance(manifest, dict)
        lines = [f"target {t}" for t in sorted(manifest.get("targets", {}))]
        module = manifest.get("livepatch", {}).get("module")
        if module:
            lines.insert(0, f"livepatch {module} {module}.ko")
        contents = "\n".join(lines)
        uid = update_id
    functions = _functions(manifest)
    if as_json:
        ui.print_json({"schema": 1, "id": uid, "description": description.rstrip("\n"),
                       "pre": manifest.get("pre"), "post": manifest.get("post"),
                       "targets": sorted(manifest.get("targets", {})),
                       "functions": functions, "contents": contents.splitlines(),
                       "patch": patch})
        return EXIT_OK
    # Plain writes, not rich: the patch must come out verbatim (tabs and all) to apply. All
    # of it is the update's text, from anywhere: escaped where it could drive the terminal.
    lines = [f"Update {uid}: {description.splitlines()[0] if description else ''}",
             f"pre {manifest.get('pre', '?')}  post {manifest.get('post', '?')}"]
    lines += [f"  {line}" for line in contents.splitlines()]
    lines += [f"  {f['status']:8} {f['target']}: {f['function']} ({f['object']})"
              for f in functions]
    sys.stdout.write(ui.printable("\n".join(lines) + "\n"))
    if patch:
        sys.stdout.write(ui.printable("\n" + patch.rstrip("\n") + "\n"))
    return EXIT_OK


def _when(timestamp: object) -> str:
    """A ledger entry's build time, or `-`: a fetched entry may say anything (10**20)."""
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return "-"


def run_series(as_json: bool) -> int:
    repo = Repo.discover()
    entries = _ledger(repo)
    rows = []
    for commit, manifest, description, _ in entries:
        if isinstance(manifest, str):
            ui.console.print(f"warning: {ui.printable(manifest, terminal=True)}",
                             markup=False, highlight=False)
            rows.append({"id": None, "entry": commit, "description": "", "pre": None,
                         "post": None, "targets": [], "timestamp": None, "stacked": None,
                         "damaged": manifest})
            continue
        rows.append({"id": manifest.get("id"), "entry": commit,
                     "description": description.splitlines()[0] if description else "",
                     "pre": manifest.get("pre"), "post": manifest.get("post"),
                     "targets": sorted(manifest.get("targets", {})),
                     "timestamp": manifest.get("timestamp"),
                     "stacked": manifest.get("series")})
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
