"""The ELF writer: what it writes reads back identically, and binutils accept it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from git_ksplice.elf.model import SHN_XINDEX, ElfObject, read_object
from git_ksplice.elf.writer import write_object
from tests.conftest import CORPUS, CORPUS_MISSING, assert_valid_object


def _snapshot(obj: ElfObject) -> tuple[list, list]:
    sections = [(s.name, s.type, s.flags, s.data, s.size, s.entsize, s.addralign,
                 s.link_to.name if s.link_to else None,
                 [(r.offset, r.type, r.symbol.name, r.addend) for r in s.relocs])
                for s in obj.sections]
    symbols = [(s.name, s.value, s.size, s.info, s.other, s.file,
                s.section.name if s.section else s.special_shndx) for s in obj.symbols]
    return sections, symbols


def _round_trip(path: Path, tmp_path: Path) -> Path:
    obj = read_object(path)
    out = tmp_path / (path.name + ".rt.o")
    write_object(out, obj.sections, obj.symbols[1:], e_flags=obj.e_flags)
    assert _snapshot(read_object(out)) == _snapshot(obj)
    return out


def _corpus_objects() -> list:
    """Every object of the corpus; without it, a placeholder that skips saying how to get it."""
    if (CORPUS / "expectations.json").exists():
        return sorted(p.name for p in CORPUS.glob("*.o"))
    return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip(reason=CORPUS_MISSING))]


@pytest.mark.corpus
@pytest.mark.parametrize("name", _corpus_objects())
def test_round_trip_corpus_object(name: str, corpus: Path, tmp_path: Path) -> None:
    out = _round_trip(corpus / name, tmp_path)
    assert_valid_object(out, tmp_path)


def test_round_trip_gcc_object(tmp_path: Path) -> None:
    src = tmp_path / "a.c"
    src.write_text("static int helper(int x) { return x * 3; }\n"
                   "int api(int y) { return helper(y) + 1; }\n"
                   "int bump(void) { static int calls; return ++calls; }\n"
                   "const char *name(void) { return \"api\"; }\n")
    obj = tmp_path / "a.o"
    subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-fno-pic",
                    "-mcmodel=kernel", "-pg", "-mfentry", "-mrecord-mcount", "-c", str(src),
                    "-o", str(obj)], check=True)
    out = _round_trip(obj, tmp_path)
    assert_valid_object(out, tmp_path)


def test_more_than_65280_sections_use_xindex(tmp_path: Path) -> None:
    """Function-section objects (and linked modules) can exceed SHN_LORESERVE sections: the
    section count, the string table index and symbol section indices then move to
    section 0 and .symtab_shndx."""
    n = 32700  # two sections per function (code and relocations): past SHN_LORESERVE
    asm = tmp_path / "many.s"
    with asm.open("w") as f:
        for i in range(n):
            f.write(f'.section .text.f{i},"ax",@progbits\n.globl f{i}\n.type f{i},@function\n'
                    f"f{i}:\n call f{(i + 1) % n}\n ret\n.size f{i}, .-f{i}\n")
    obj = tmp_path / "many.o"
    subprocess.run(["as", str(asm), "-o", str(obj)], check=True)
    parsed = read_object(obj)
    assert len([s for s in parsed.sections if s.name.startswith(".text.f")]) == n
    out = _round_trip(obj, tmp_path)
    raw = out.read_bytes()
    e_shnum = int.from_bytes(raw[60:62], "little")
    e_shstrndx = int.from_bytes(raw[62:64], "little")
    assert e_shnum == 0 and e_shstrndx == SHN_XINDEX
    assert_valid_object(out, tmp_path)


def test_diff_output_of_every_corpus_case_links(corpus: Path, tmp_path: Path) -> None:
    """Diff objects of all changed corpus cases, linked together as a module would be."""
    from tests.conftest import run_ksplice

    spec = json.loads((corpus / "expectations.json").read_text())
    outs = []
    for case, e in sorted(spec.items()):
        out = tmp_path / f"{case}.o"
        r = run_ksplice("diff-object", str(corpus / e["orig"]), str(corpus / e["patched"]),
                        "-o", str(out))
        if r.returncode == 0:
            outs.append(out)
    assert len(outs) >= 20
    for out in outs:
        assert_valid_object(out, tmp_path)
