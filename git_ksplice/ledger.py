"""The series ledger `refs/ksplice/series`: what was built, kept in git, written and read here.

The ledger is a chain of commits, one per update, whose trees hold each update's
`manifest.json`, `patch` and `description`; `git log refs/ksplice/series` is its history,
and `git push/fetch 'refs/ksplice/*'` shares it. An entry is recorded in the same ref
transaction that creates `refs/ksplice/updates/<ID>` and moves `refs/ksplice/pre`, so the
ledger, the update refs and pre never disagree.

Entries arrive with `git fetch` from anyone: each is read within bounds (a file's type and
size from the object's header before its bytes), and one that is damaged is reported as such
without hiding the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from git_ksplice.errors import InputError
from git_ksplice.package import manifest_bytes, parse_manifest
from git_ksplice.repo import REF_PRE, REF_SERIES, REF_UPDATES, Repo

#: The largest file of a ledger entry read (a manifest, a description, a patch).
MAX_LEDGER_FILE = 64 << 20


@dataclass
class Entry:
    """One update of the ledger."""

    commit: str
    #: None when the entry is damaged: then `damage` says what is wrong with it.
    manifest: dict[str, Any] | None
    description: str = ""
    patch: str = ""
    damage: str | None = None

    @property
    def id(self) -> str | None:
        return None if self.manifest is None else self.manifest.get("id")


@dataclass
class Record:
    """What `record` writes for one update."""

    id: str
    pre: str
    post: str
    manifest: dict[str, Any]
    description: str
    patch: str
    mode: str
    summary: str  # the change's one line, for an entry without a description
    series: bool  # pre moves to post
    #: the temporary ref holding post while it was built (--patch, --diffext), deleted
    tmp_ref: str | None = None


def record(repo: Repo, r: Record) -> None:
    """Add the update's entry and move the refs, all at once: `refs/ksplice/updates/<ID>` to
    post, the ledger to the new entry, pre checked (or moved to post with --series), the
    temporary ref deleted. If someone moved pre meanwhile, the transaction fails rather than
    record an update against a source that is no longer the running kernel's."""
    tip = repo.ref(REF_SERIES)
    tree = repo.write_tree_from_files({
        "manifest.json": manifest_bytes(r.manifest),
        "patch": r.patch.encode(),
        "description": (r.description.rstrip("\n") + "\n").encode(),
    })
    first = r.description.splitlines()[0] if r.description.strip() else r.summary
    entry = repo.user_commit(tree, [tip] if tip else [],
                             f"ksplice {r.id}: {first}\n\npre: {r.pre}\npost: {r.post}\n")
    updates: list[tuple[str, str | None, str | None]] = [
        (REF_UPDATES + r.id, r.post, None),
        (REF_SERIES, entry, tip),
        (REF_PRE, r.post if r.series else r.pre, r.pre),
    ]
    if r.tmp_ref is not None:
        updates.append((r.tmp_ref, None, r.post))
    repo.update_refs(updates, f"ksplice create: {r.id} pre={r.pre[:12]} "
                              f"post={r.post[:12]} ({r.mode})")


def entries(repo: Repo) -> list[Entry]:
    """Every entry, oldest first."""
    out = [_read_entry(repo, commit) for commit in repo.first_parent_chain(repo.ref(REF_SERIES))]
    out.reverse()
    return out


def find(repo: Repo, update_id: str) -> tuple[Entry | None, list[Entry]]:
    """(the latest readable entry of `update_id` or None, the damaged entries skipped)."""
    all_entries = entries(repo)
    matching = [e for e in all_entries if e.id == update_id]
    return (matching[-1] if matching else None), [e for e in all_entries if e.damage]


def _read_entry(repo: Repo, commit: str) -> Entry:
    where = f"ledger entry {commit[:12]}"

    def text(name: str) -> str:
        data = repo.read_bounded_blob(commit, name, MAX_LEDGER_FILE, "a ledger file")
        return "" if data is None else data.decode("utf-8", "replace")

    try:
        manifest = parse_manifest(text("manifest.json").encode() or b"{}", where)
        return Entry(commit, manifest, text("description"), text("patch"))
    except InputError as e:
        damage = e.message if e.message.startswith(where) else f"{where}: {e.message}"
        return Entry(commit, None, damage=damage)
