"""`git ksplice diff-object`: the object differ as a plumbing command."""

from __future__ import annotations

import os

from rich.markup import escape
from rich.table import Table

from git_ksplice import ui
from git_ksplice.elf.diff import DiffResult, Options, diff_objects
from git_ksplice.elf.model import read_object
from git_ksplice.elf.writer import serialize
from git_ksplice.errors import EXIT_NO_CHANGE, EXIT_OK, EXIT_REFUSED, InputError
from git_ksplice.files import replace_file


def parse_entry_sizes(values: tuple[str, ...]) -> dict[str, int]:
    sizes = {}
    for v in values:
        name, sep, num = v.partition("=")
        if not name or not sep or not num.isdigit() or int(num) <= 0:
            raise InputError(f"--entry-size {v!r}: expected SECTION=N with N > 0, "
                             "e.g. --entry-size __bug_table=12")
        sizes[name] = int(num)
    return sizes


def run(orig: str, patched: str, *, output: str | None, as_json: bool, target: str,
        entry_sizes: tuple[str, ...]) -> int:
    options = Options(target=target, entry_sizes=parse_entry_sizes(entry_sizes))
    res = diff_objects(read_object(orig), read_object(patched), options)
    written = None
    if output and res.result == "changed" and res.output is not None:
        data = serialize(res.output.sections, res.output.symbols)
        _write_output(output, data)
        written = output
    if as_json:
        ui.print_json(res.as_json(written))
    else:
        _show(res, written)
    if res.result == "refused":
        return EXIT_REFUSED
    if res.result == "unchanged":
        if not as_json:
            ui.console.print("No changes detected.")
        return EXIT_NO_CHANGE
    return EXIT_OK


def _write_output(path: str, data: bytes) -> None:
    try:
        replace_file(os.path.abspath(path), data)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from None


def _show(res: DiffResult, written: str | None) -> None:
    """Tables on a terminal, one plain line per fact otherwise (logs, pipes, CI)."""
    c = ui.console
    functions = [("changed", f.name, f.size, f.reason) for f in res.changed] + [
        ("new", f.name, f.size, "") for f in res.new]
    reported = {f.name for f in res.changed + res.new}
    others = [i for i in res.included if i["name"] not in reported]
    refs = res.output.references if res.output else []
    if c.is_terminal:
        if functions:
            t = Table(title="Functions", title_justify="left", show_edge=False)
            for col in ("function", "status", "size", "why"):
                t.add_column(col, justify="right" if col == "size" else "left")
            for status, name, size, why in functions:
                t.add_row(name, status, str(size), why)
            c.print(t)
        if others:
            t = Table(title="Also carried", title_justify="left", show_edge=False)
            for col in ("what", "section", "why"):
                t.add_column(col)
            for i in others:
                t.add_row(i["name"], i["section"], i["why"])
            c.print(t)
    else:
        for status, name, size, why in functions:
            c.print(f"{status:8} {name} ({ui.count(size, 'byte')}){': ' + why if why else ''}")
        for i in others:
            where = f" [{i['section']}]" if i["section"] != i["name"] else ""
            c.print(f"carried  {i['name']}{where}: {i['why']}")
    kept = [s for s in res.special_sections if s["kept"]]
    for s in kept:
        c.print(f"table    {s['name']}: kept {s['kept']} of "
                f"{ui.count(s['entries'], 'entry', 'entries')} "
                f"({ui.count(s['entry_size'], 'byte')} each)")
    if refs:
        c.print("uses     " + ", ".join(
            r["name"] + (f" (local, {r['file']})" if r["binding"] == "local" else "")
            for r in refs))
    for i in res.ignored:
        c.print(f"ignored  {i.symbol}: {i.message}")
    for w in res.warnings:
        c.print("[yellow]warning[/]  " + escape(f"{w.symbol or w.section}: {w.message}"))
    for r in res.refusals:
        where = " in ".join(x for x in (r.symbol, r.section) if x)
        c.print("[bold red]refused[/]  " + escape(f"{where}: {r.message}"))
    if written:
        c.print(f"Wrote {written}")
