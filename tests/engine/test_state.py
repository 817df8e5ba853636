"""The differ's state lives on the model objects (`Symbol.twin`, `Section.kind`, `Unit.status`
...): what one diff records must not leak into the next, the two sides stay apart, and the
pairs it records are the ones the correlation rules promise (real corpus cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from git_ksplice.elf.correlate import Correlation
from git_ksplice.elf.diff import DiffResult, diff_objects
from git_ksplice.elf.model import ElfObject, read_object
from git_ksplice.elf.units import ObjectIndex
from git_ksplice.elf.writer import serialize

pytestmark = pytest.mark.corpus


def _outcome(res: DiffResult) -> tuple[str, bytes]:
    data = serialize(res.output.sections, res.output.symbols) if res.output else b""
    return json.dumps(res.as_json(None), sort_keys=True), data


def _pair(corpus: Path, case: str) -> tuple[ElfObject, ElfObject]:
    return (read_object(corpus / f"{case}.ORIG.o"), read_object(corpus / f"{case}.PATCHED.o"))


@pytest.mark.parametrize("case", ["gcc-constprop", "static-local-moved-subfunction-issue-1054",
                                  "cold-change-parent", "data-read-mostly"])
def test_diffing_the_same_objects_again_gives_the_same_answer(corpus: Path, case: str) -> None:
    orig, patched = _pair(corpus, case)
    first = _outcome(diff_objects(orig, patched))
    assert json.loads(first[0])["result"] == "changed"
    # Reversed, then again: each diff starts from the objects as read.
    diff_objects(patched, orig)
    assert _outcome(diff_objects(orig, patched)) == first
    assert _outcome(diff_objects(*_pair(corpus, case))) == first


def test_one_object_as_both_sides_is_unchanged(corpus: Path) -> None:
    obj = read_object(corpus / "gcc-constprop.ORIG.o")
    assert diff_objects(obj, obj).result == "unchanged"
    twin = obj.duplicate()
    assert not {id(s) for s in twin.symbols} & {id(s) for s in obj.symbols}
    assert serialize(twin.sections, twin.symbols[1:]) == serialize(obj.sections, obj.symbols[1:])


def _twins(corr: Correlation, names: list[str]) -> dict[str, str | None]:
    by_name = {s.name: s for s in corr.p.obj.symbols}
    return {n: (by_name[n].twin.name if by_name[n].twin else None) for n in names}


def test_renumbered_clones_pair_both_ways(corpus: Path) -> None:
    orig, patched = _pair(corpus, "gcc-constprop")
    corr = Correlation(ObjectIndex(orig), ObjectIndex(patched))
    assert _twins(corr, ["timekeeping_forward_now.constprop.6", "tk_xtime_add.constprop.9"]) == {
        "timekeeping_forward_now.constprop.6": "timekeeping_forward_now.constprop.5",
        "tk_xtime_add.constprop.9": "tk_xtime_add.constprop.8"}
    for sym in patched.symbols:
        if sym.twin is not None:
            assert sym.twin.twin is sym
    sec = patched.section(".rodata.__timekeeping_inject_sleeptime.constprop.5.str1.8")
    assert sec is not None and sec.twin is not None
    assert sec.twin.name == ".rodata.__timekeeping_inject_sleeptime.constprop.4.str1.8"


def test_same_named_statics_pair_through_their_users(corpus: Path) -> None:
    orig, patched = _pair(corpus, "static-local-moved-subfunction-issue-1054")
    corr = Correlation(ObjectIndex(orig), ObjectIndex(patched))
    assert _twins(corr, ["lock.65417", "lock.65433", "last_check.65415"]) == {
        "lock.65417": "lock.65414", "lock.65433": "lock.65427",
        "last_check.65415": "last_check.65412"}
