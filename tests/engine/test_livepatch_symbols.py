"""sympos, computed the way the kernel counts it, on a small linked image with namesakes.

Three objects each define a static `show` (and a.c and c.c share a file name, as the many
core.c of a kernel do); linked together they stand for vmlinux. The kernel counts namesakes
in address order, 1-based, 0 meaning "the only one".
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from git_ksplice.errors import InputError, RefusedError
from git_ksplice.livepatch.symbols import (
    ObjectSymbols,
    read_symbols,
    read_system_map,
    vmlinux_symbols,
)
from git_ksplice.origconfig import OrigConfig

SOURCES = {
    "one/core.c": "static int __attribute__((noinline)) show(int x) { return x + 1; }\n"
                  "static int __attribute__((noinline)) only_in_one(int x) { return x * 7; }\n"
                  "int use_one(int x) { return show(x) + only_in_one(x); }\n",
    "two/proc.c": "static int __attribute__((noinline)) show(int x) { return x + 2; }\n"
                  "int use_two(int x) { return show(x); }\n"
                  "int unique_global(int x) { return x; }\n",
    "three/core.c": "static int __attribute__((noinline)) show(int x) { return x + 3; }\n"
                    "static int __attribute__((noinline)) only_in_three(int x) "
                    "{ return x * 9; }\n"
                    "int use_three(int x) { return show(x) + only_in_three(x); }\n",
}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    objs = []
    for rel, text in SOURCES.items():
        src = tmp_path / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(text)
        obj = src.with_suffix(".o")
        # Compiled from its own directory, so the FILE symbol is "core.c" twice.
        subprocess.run(["gcc", "-O2", "-c", src.name, "-o", obj.name], cwd=src.parent,
                       check=True)
        objs.append(str(obj))
    out = tmp_path / "vmlinux"
    subprocess.run(["ld", "-e", "use_one", "-o", str(out), *objs], check=True)
    return out


def test_namesakes_are_counted_in_address_order(image: Path) -> None:
    table = ObjectSymbols("vmlinux", read_symbols(image), None, by_address=True)
    assert table.sympos("show", local=True, file="core.c", neighbours={"only_in_one"}) == 1
    assert table.sympos("show", local=True, file="proc.c", neighbours=set()) == 2
    assert table.sympos("show", local=True, file="core.c", neighbours={"only_in_three"}) == 3
    assert table.sympos("unique_global", local=False, file=None, neighbours=set()) == 0


def test_same_file_name_without_evidence_is_refused(image: Path) -> None:
    table = ObjectSymbols("vmlinux", read_symbols(image), None, by_address=True)
    with pytest.raises(RefusedError, match="cannot tell which of 3 symbols named show"):
        table.sympos("show", local=True, file="core.c", neighbours=set())


def test_system_map_of_the_running_kernel_with_the_pristine_build(image: Path,
                                                                  tmp_path: Path) -> None:
    """Without the running kernel's vmlinux: its System.map gives the count, the pristine
    build the rank; a disagreement between the two is refused."""
    system_map = tmp_path / "System.map"
    system_map.write_text(subprocess.run(["nm", "-n", str(image)], capture_output=True,
                                         text=True, check=True).stdout)
    table = ObjectSymbols("vmlinux", read_symbols(image), read_system_map(system_map),
                          by_address=True)
    assert table.sympos("show", local=True, file="proc.c", neighbours=set()) == 2
    fewer = [line for line in system_map.read_text().splitlines()
             if not line.endswith(" show")]
    fewer.append("0000000000000001 t show")
    system_map.write_text("\n".join(fewer) + "\n")
    table = ObjectSymbols("vmlinux", read_symbols(image), read_system_map(system_map),
                          by_address=True)
    with pytest.raises(RefusedError, match=r"running kernel's System\.map has 1"):
        table.sympos("show", local=True, file="proc.c", neighbours=set())


def test_missing_symbol_is_refused_by_name(image: Path) -> None:
    table = ObjectSymbols("vmlinux", read_symbols(image), None, by_address=True)
    with pytest.raises(RefusedError, match="symbol nowhere is not in vmlinux"):
        table.sympos("nowhere", local=True, file="core.c", neighbours=set())


def _orig_config(tmp_path: Path, image: Path, system_map: str) -> OrigConfig:
    orig = tmp_path / "orig"
    orig.mkdir(parents=True)
    (orig / "vmlinux").write_bytes(image.read_bytes())
    (orig / "System.map").write_text(system_map)
    return OrigConfig(orig)


def test_system_map_must_belong_to_the_vmlinux(image: Path, tmp_path: Path) -> None:
    """ORIG_CONFIG's System.map and vmlinux are one build's, or the update is refused before
    any sympos is taken from them."""
    nm = subprocess.run(["nm", "-n", str(image)], capture_output=True, text=True,
                        check=True).stdout
    vmlinux_symbols(_orig_config(tmp_path / "same", image, nm), tmp_path)

    moved = "\n".join(f"{int(line.split()[0], 16) + 16:016x} {' '.join(line.split()[1:])}"
                      if "unique_global" in line else line for line in nm.splitlines())
    with pytest.raises(InputError, match="unique_global is at"):
        vmlinux_symbols(_orig_config(tmp_path / "moved", image, moved + "\n"), tmp_path)

    other = "".join(f"ffffffff8100{i:04x} T other_kernel_{i}\n" for i in range(50))
    with pytest.raises(InputError, match="only 0 of its 50 names"):
        vmlinux_symbols(_orig_config(tmp_path / "other", image, other), tmp_path)
