"""The differ against real kernel object pairs with kpatch's verdicts (../shared/corpus).

Each pair is one translation unit of a real kernel before and after a change. For every case
the verdict, the number of text symbols in the diff object, and the case's extra property
must match `expectations.json`, except where a test below documents why our answer differs.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CORPUS, CORPUS_MISSING, assert_valid_object, run_ksplice

# Cases where git-ksplice is convinced kpatch's expected answer is wrong, and why.
DISAGREEMENTS = {
    # The .cold part jumps back into its parent at +0x3b. The parent changed, so sharing the
    # running kernel's .cold copy would return into the OLD parent's body and run old code on
    # that path. git-ksplice copies the .cold part with its parent (Ksplice's rule: a
    # reference into the middle of a changed function is a change): 2 text symbols, not 1.
    "cold-change-parent": {"text_symbols_in_output": 2},
    # PATCHED's __jump_table gives dev_queue_xmit_nit three more entries than ORIG (sites at
    # +0x132 keyed on read-mostly variables), and takes __netif_receive_skb_core's away. The
    # function's code is identical but the jump labels that patch it are not, so git-ksplice
    # replaces it as well (its table entries are part of what a function does; kpatch compares
    # only the bytes and relocations of the function's own section): 2 text symbols, not 1.
    "data-read-mostly": {"text_symbols_in_output": 2},
}


def _cases() -> list:
    """Every case of the corpus; without the corpus, one placeholder that skips saying how to
    get it (an empty list would only make pytest report "got empty parameter set")."""
    path = CORPUS / "expectations.json"
    if path.exists():
        return sorted(json.loads(path.read_text()))
    return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip(reason=CORPUS_MISSING))]


def _text_symbols(path: Path) -> list[str]:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines()
            if len(line.split()) == 3 and line.split()[1] in "Tt"]


@pytest.mark.corpus
@pytest.mark.parametrize("case", _cases())
def test_corpus_case(case: str, corpus: Path, tmp_path: Path) -> None:
    spec = json.loads((corpus / "expectations.json").read_text())[case]
    expected = {**spec, **DISAGREEMENTS.get(case, {})}
    out = tmp_path / "diff.o"
    r = run_ksplice("diff-object", str(corpus / spec["orig"]), str(corpus / spec["patched"]),
                    "-o", str(out), "--json")
    assert "Traceback" not in r.stderr, r.stderr
    report = json.loads(r.stdout)
    if expected["expect"] == "refuse":
        # kpatch "refuses" both unpatchable changes and changes with no functional effect.
        assert r.returncode in (65, 66), (r.returncode, report["refusals"])
        assert report["result"] in ("refused", "unchanged")
        assert not out.exists()
        return
    assert r.returncode == 0, (r.returncode, report["refusals"], r.stderr)
    assert report["result"] == "changed"
    assert out.exists()
    assert_valid_object(out, tmp_path)
    if "text_symbols_in_output" in expected:
        syms = _text_symbols(out)
        assert len(syms) == expected["text_symbols_in_output"], syms
    if case == "convert-global-local":
        nm = subprocess.run(["nm", str(out)], capture_output=True, text=True).stdout
        assert re.search(r"^[0-9a-f]+ t __kmalloc$", nm, re.M), nm
    if case == "import-ns":
        modinfo = subprocess.run(["readelf", "-p", ".modinfo", str(out)], capture_output=True,
                                 text=True).stdout
        assert len(re.findall(r"\bimport_ns=", modinfo)) == 4, modinfo
        # Table entries at the function's first byte (ORC, call sites) describe the copy, so
        # they must not turn into references to the running original.
        nm = subprocess.run(["nm", str(out)], capture_output=True, text=True).stdout
        assert not re.search(r"^\s+U cmdline_proc_show$", nm, re.M), nm
        assert "printk_index" in subprocess.run(["readelf", "-SW", str(out)],
                                                capture_output=True, text=True).stdout
    if case == "mcount_loc-issue-1102":
        rel = subprocess.run(["readelf", "-rW", str(out)], capture_output=True, text=True).stdout
        block = rel.split("'.rela__mcount_loc'")[1].split("Relocation section")[0]
        assert re.search(r"R_X86_64_64\s+0+\s+netlbl_catmap_getlong \+ 0\b", block), block
    if case == "zero-page-rela-issue-1064":
        rel = subprocess.run(["readelf", "-rW", str(out)], capture_output=True, text=True).stdout
        assert re.search(r"R_X86_64_64\s+0+\s+empty_zero_page \+ 80000000\b", rel), rel


@pytest.mark.corpus
def test_warn_detect_is_no_change(corpus: Path) -> None:
    """Only __LINE__ values moved: no functional change, exit 66, like ksplice-create."""
    r = run_ksplice("diff-object", str(corpus / "warn-detect.ORIG.o"),
                    str(corpus / "warn-detect.PATCHED.FAIL.o"))
    assert r.returncode == 66, r.stderr
    assert "No changes detected." in r.stderr


@pytest.mark.corpus
def test_meminfo_init_is_refused_with_reason(corpus: Path) -> None:
    r = run_ksplice("diff-object", str(corpus / "meminfo-init.ORIG.o"),
                    str(corpus / "meminfo-init.PATCHED.FAIL.o"), "--json")
    assert r.returncode == 65
    refusals = json.loads(r.stdout)["refusals"]
    assert any("__init" in x["reason"] and x["section"] == ".init.text" for x in refusals)


@pytest.mark.corpus
@pytest.mark.parametrize("case", _cases())
def test_corpus_object_against_itself_is_unchanged(case: str, corpus: Path) -> None:
    """kpatch's difftree check: an object compared with itself never shows a change."""
    spec = json.loads((corpus / "expectations.json").read_text())[case]
    path = str(corpus / spec["orig"])
    r = run_ksplice("diff-object", path, path)
    assert r.returncode == 66, r.stderr


_STRUCT_SIZE_KEYS = {"__bug_table": "BUG", "__ex_table": "EX", "__jump_table": "JUMP",
                     ".altinstructions": "ALT", ".orc_unwind": "ORC",
                     ".parainstructions": "PARA", ".static_call_sites": "STATIC_CALL"}


@pytest.mark.corpus
@pytest.mark.parametrize("case", _cases())
def test_entry_sizes_read_from_the_objects(case: str, corpus: Path) -> None:
    """Special-section entry sizes come from the object itself and match the sizes kpatch was
    told for the kernel each pair came from. Two declared sizes are wrong for their objects
    and are not checked: static-call-pr-1315's .altinstructions holds 480 bytes with a
    relocation pair every 12 (its kernel has 12-byte alt_instr, not 13), and import-ns's
    .printk_index is an array of 8-byte pointers to pi_entry structs (44 is the struct)."""
    from git_ksplice.elf.model import read_object
    from git_ksplice.elf.sections import TABLES, Kind, classify, infer_entry_size

    spec = json.loads((corpus / "expectations.json").read_text())[case]
    for name in (spec["orig"], spec["patched"]):
        obj = read_object(corpus / name)
        ip = obj.section(".orc_unwind_ip")
        ip_entries = ip.size // infer_entry_size(ip, TABLES[ip.name]).size if ip else None
        for sec in obj.sections:
            if classify(sec) != Kind.TABLE:
                continue
            size = infer_entry_size(sec, TABLES[sec.name], lockstep_entries=ip_entries).size
            key = _STRUCT_SIZE_KEYS.get(sec.name)
            if key and not (case == "static-call-pr-1315" and key == "ALT"):
                assert size == spec["entry_sizes"][f"{key}_STRUCT_SIZE"], (name, sec.name)
            if sec.name in (".smp_locks", ".orc_unwind_ip", ".return_sites", ".call_sites",
                            ".retpoline_sites"):
                assert size == 4, (name, sec.name)
            if sec.name == ".printk_index":
                assert size == 8, (name, sec.name)
