"""Shared helpers for the engine tests: compile kernel-style objects, run the differ, inspect ELF.

The behaviour tests build tiny C files with the system gcc, and again with clang (the
compiler of clang-built kernels: Android's, ChromeOS's, some distributions'), using the
code-generation flags the x86_64 kernel uses with each (function/data sections, kernel code
model, ``__fentry__`` calls recorded in ``__mcount_loc``), then run
``python -m git_ksplice diff-object`` on the pair.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from tests.needs import require

REPO_ROOT: Path = Path(__file__).resolve().parents[2]

#: Code-generation flags of an x86_64 kernel build that matter to the differ.
KERNEL_CFLAGS: tuple[str, ...] = (
    "-O2",
    "-ffunction-sections",
    "-fdata-sections",
    "-mcmodel=kernel",
    "-fno-pic",
    "-mno-red-zone",
    "-fno-asynchronous-unwind-tables",
    "-fno-stack-protector",
    "-fno-strict-aliasing",
    "-fno-common",
    "-pg",
    "-mfentry",
    "-mrecord-mcount",
    # The kernel never uses SSE/MMX/AVX registers; without these gcc 12 vectorises loops.
    "-mno-sse",
    "-mno-mmx",
    "-mno-sse2",
    "-mno-3dnow",
    "-mno-avx",
)

#: Exit codes of ``git_ksplice diff-object``.
EXIT_CHANGED = 0
EXIT_ERROR = 1
EXIT_REFUSED = 65
EXIT_UNCHANGED = 66

_RESULT_FOR_EXIT = {
    EXIT_CHANGED: "changed",
    EXIT_REFUSED: "refused",
    EXIT_UNCHANGED: "unchanged",
}

# Every source is compiled under this name, from its own directory, so that __FILE__ (and the
# object's STT_FILE symbol) is identical in ORIG and PATCHED, as in a real kernel rebuild.
SOURCE_NAME = "unit.c"


#: The compilers the behaviour tests run under: the kernel is built with either.
COMPILERS: tuple[str, ...] = ("gcc", "clang")

#: KERNEL_CFLAGS as the kernel's Makefile gives them to clang: no x87 either, and no
#: -mrecord-mcount, which clang does not have on x86 (kbuild then has objtool write
#: ``__mcount_loc`` after compiling: CONFIG_FTRACE_MCOUNT_USE_OBJTOOL).
CLANG_CFLAGS: tuple[str, ...] = (
    *(f for f in KERNEL_CFLAGS if f != "-mrecord-mcount"), "-mno-80387", "-fno-pie")

_FENTRY_CALL = re.compile(r"^\s*callq?\s+__fentry__\s*$", re.M)


def _record_mcount(assembly: str) -> str:
    """``assembly`` with each ``call __fentry__`` recorded in ``__mcount_loc``, as objtool
    --mcount records it for a clang-built kernel (and gcc's -mrecord-mcount for gcc)."""
    count = 0

    def record(call: re.Match[str]) -> str:
        nonlocal count
        count += 1
        label = f".Lksplice_test_mcount{count}"
        return (f"{label}:\n{call[0]}\n\t.pushsection __mcount_loc,\"a\",@progbits\n"
                f"\t.quad {label}\n\t.popsection")

    return _FENTRY_CALL.sub(record, assembly)


def _run_compiler(cmd: list[str], workdir: Path) -> None:
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{cmd[0]} failed for {workdir / SOURCE_NAME}:\n{proc.stderr}")


def compile_c(source: str, workdir: Path, extra_flags: Sequence[str] = (),
              compiler: str = "gcc") -> Path:
    """Compile ``source`` as ``workdir/unit.c`` with the kernel flags of ``compiler``;
    return the object path."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SOURCE_NAME).write_text(source)
    obj = workdir / "unit.o"
    if compiler == "gcc":
        _run_compiler(["gcc", *KERNEL_CFLAGS, *extra_flags, "-c", SOURCE_NAME,
                       "-o", obj.name], workdir)
        return obj
    assembly = workdir / "unit.s"
    _run_compiler([compiler, *CLANG_CFLAGS, *extra_flags, "-S", SOURCE_NAME,
                   "-o", assembly.name], workdir)
    assembly.write_text(_record_mcount(assembly.read_text()))
    _run_compiler([compiler, *CLANG_CFLAGS, *extra_flags, "-c", assembly.name,
                   "-o", obj.name], workdir)
    return obj


@dataclass
class DiffRun:
    """One invocation of ``git_ksplice diff-object --json``."""

    returncode: int
    stdout: str
    stderr: str
    out: Path
    data: dict[str, Any] = field(default_factory=dict)

    def _names(self, key: str) -> list[str]:
        return [entry["name"] for entry in self.data.get(key, [])]

    @property
    def changed_names(self) -> list[str]:
        return self._names("changed_functions")

    @property
    def new_names(self) -> list[str]:
        return self._names("new_functions")

    @property
    def included_names(self) -> list[str]:
        return self._names("included")

    def included(self, name: str) -> dict[str, Any] | None:
        """The ``included`` entry for ``name``, if any."""
        return next((e for e in self.data.get("included", []) if e["name"] == name), None)

    def special(self, name: str) -> dict[str, Any] | None:
        """The ``special_sections`` entry for section ``name``, if any."""
        return next((e for e in self.data.get("special_sections", []) if e["name"] == name), None)

    def refusal_text(self) -> str:
        """All refusals flattened to one lower-case string, for keyword assertions."""
        parts = []
        for r in self.data.get("refusals", []):
            parts.extend(str(r.get(k) or "") for k in ("symbol", "section", "reason"))
        return " ".join(parts).lower()

    def warning_text(self) -> str:
        """All warnings flattened to one lower-case string, for keyword assertions."""
        parts = []
        for w in self.data.get("warnings", []):
            parts.extend(str(w.get(k) or "") for k in ("symbol", "section", "message"))
        return " ".join(parts).lower()

    def describe(self) -> str:
        """Everything the differ said; used as an assertion message."""
        return (
            f"exit={self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def run_differ(orig: Path, patched: Path, out: Path, extra_args: Sequence[str] = ()) -> DiffRun:
    """Run the differ as a user would and validate the shape of what it printed.

    For exit codes 0/65/66 stdout must be exactly one JSON document (schema 1) whose
    ``result`` agrees with the exit code. No run may print a Python traceback.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        "-m",
        "git_ksplice",
        "diff-object",
        str(orig),
        str(patched),
        "-o",
        str(out),
        "--json",
        *extra_args,
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    run = DiffRun(proc.returncode, proc.stdout, proc.stderr, out)
    assert "Traceback" not in proc.stderr, run.describe()
    if proc.returncode in _RESULT_FOR_EXIT:
        try:
            run.data = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            pytest.fail(f"stdout is not one JSON document ({exc})\n{run.describe()}")
        assert run.data.get("schema") == 1, run.describe()
        assert run.data.get("result") == _RESULT_FOR_EXIT[proc.returncode], run.describe()
    return run


class Workbench:
    """ORIG/PATCHED objects built in one test's ``tmp_path`` and the differ run on them.

    ``build()`` compiles the two sources to ``tmp_path/orig/unit.o`` and
    ``tmp_path/patched/unit.o``; tests then check that gcc produced what they rely on and
    call ``diff()``, whose output object is ``tmp_path/out.o``.
    """

    def __init__(self, tmp_path: Path, compiler: str = "gcc") -> None:
        self.tmp_path = tmp_path
        self.compiler = compiler
        self.orig = tmp_path / "orig" / "unit.o"
        self.patched = tmp_path / "patched" / "unit.o"
        self.out = tmp_path / "out.o"

    def build(
        self, orig_src: str, patched_src: str, cflags: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        self.orig = compile_c(orig_src, self.tmp_path / "orig", cflags, self.compiler)
        self.patched = compile_c(patched_src, self.tmp_path / "patched", cflags, self.compiler)
        return self.orig, self.patched

    def diff(self, extra_args: Sequence[str] = ()) -> DiffRun:
        return run_differ(self.orig, self.patched, self.out, extra_args)


@pytest.fixture(params=COMPILERS)
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Workbench:
    """A :class:`Workbench` rooted in this test's ``tmp_path``, once per compiler."""
    if request.param != "gcc":
        require(request.param)
    return Workbench(tmp_path, request.param)


def check_output_object(obj: Path) -> None:
    """The differ's output must be a clean relocatable object that ld accepts."""
    assert obj.is_file(), f"output object {obj} was not written"
    proc = subprocess.run(
        ["readelf", "-a", "--wide", str(obj)], capture_output=True, text=True, check=False
    )
    bad = [
        line
        for line in proc.stderr.splitlines()
        if "warning" in line.lower() or "error" in line.lower()
    ]
    assert not bad, f"readelf complains about {obj}:\n" + "\n".join(bad)
    linked = obj.with_name(obj.stem + ".linked.o")
    proc = subprocess.run(
        ["ld", "-r", str(obj), "-o", str(linked)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"ld -r rejected {obj}:\n{proc.stderr}"


def nm_symbols(obj: Path) -> list[tuple[str, str]]:
    """``(type letter, name)`` for every symbol ``nm`` prints."""
    proc = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True)
    symbols = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            symbols.append((fields[-2], fields[-1]))
    return symbols


def text_symbols(obj: Path) -> set[str]:
    """Names of the symbols ``nm`` shows as text (``T``/``t``)."""
    return {name for kind, name in nm_symbols(obj) if kind in "Tt"}


def data_symbols(obj: Path) -> set[str]:
    """Names of the symbols ``nm`` shows as defined data, bss or rodata."""
    return {name for kind, name in nm_symbols(obj) if kind in "DdBbRr"}


def undefined_symbols(obj: Path) -> set[str]:
    """Names of the symbols ``nm`` shows as undefined."""
    return {name for kind, name in nm_symbols(obj) if kind == "U"}


def section_sizes(obj: Path) -> dict[str, int]:
    """Section name -> size, for every section of ``obj``."""
    with obj.open("rb") as f:
        return {s.name: s["sh_size"] for s in ELFFile(f).iter_sections()}


def section_bytes(obj: Path, name: str) -> bytes:
    """Contents of section ``name`` (empty for NOBITS); fails the test if it is missing."""
    with obj.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        if sec is None:
            pytest.fail(f"{obj} has no section {name}")
        return b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()


def sections_containing(obj: Path, needle: bytes) -> list[str]:
    """Names of the allocated PROGBITS sections whose contents include ``needle``."""
    found = []
    with obj.open("rb") as f:
        for sec in ELFFile(f).iter_sections():
            is_alloc = sec["sh_flags"] & 0x2  # SHF_ALLOC
            if sec["sh_type"] == "SHT_PROGBITS" and is_alloc and needle in sec.data():
                found.append(sec.name)
    return found


class Reloc(NamedTuple):
    """One relocation: where it applies, what it refers to, and whether that is defined."""

    offset: int
    target: str  # symbol name, or the section's name for a section symbol
    defined: bool  # False for a reference to a symbol outside the object (SHN_UNDEF)


def _relocations(elf: ELFFile, section_index: int) -> list[Reloc]:
    relocs = []
    for rel_sec in elf.iter_sections():
        if not isinstance(rel_sec, RelocationSection) or rel_sec["sh_info"] != section_index:
            continue
        symtab = elf.get_section(rel_sec["sh_link"])
        for rel in rel_sec.iter_relocations():
            sym = symtab.get_symbol(rel["r_info_sym"])
            name = sym.name
            if sym["st_info"]["type"] == "STT_SECTION":
                name = elf.get_section(sym["st_shndx"]).name
            relocs.append(Reloc(rel["r_offset"], name, sym["st_shndx"] != "SHN_UNDEF"))
    return sorted(relocs)


def relocation_targets(obj: Path, section: str) -> list[tuple[int, str]]:
    """``(offset, target)`` for each relocation applied to ``section``, by offset.

    The target is the symbol's name or, for a section symbol, the section's name.
    """
    with obj.open("rb") as f:
        elf = ELFFile(f)
        indexes = [i for i, sec in enumerate(elf.iter_sections()) if sec.name == section]
        return sorted((r.offset, r.target) for i in indexes for r in _relocations(elf, i))


def function_relocations(obj: Path, function: str) -> list[Reloc]:
    """The relocations applied to the code of the function symbol ``function``."""
    with obj.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        funcs = [
            s
            for s in symtab.get_symbol_by_name(function) or []
            if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF"
        ]
        if not funcs:
            pytest.fail(f"{function} is not a function defined in {obj}")
        sym = funcs[0]
        start, end = sym["st_value"], sym["st_value"] + sym["st_size"]
        return [r for r in _relocations(elf, sym["st_shndx"]) if start <= r.offset < end]


def calls_fentry(obj: Path, function: str) -> bool:
    """Whether ``function``'s code in ``obj`` has a relocation against ``__fentry__``."""
    return any(r.target == "__fentry__" for r in function_relocations(obj, function))


# Kernel-ish declarations shared by every source. No #include: the objects must not depend on
# the host's headers.
PRELUDE = """\
extern int printk(const char *fmt, ...);
extern void __warn_printk(const char *fmt, ...);
extern void __might_sleep(const char *file, int line);
extern int ext_work(int);
#define noinline __attribute__((noinline))
#define notrace __attribute__((no_instrument_function))
#define __init __attribute__((section(".init.text")))
#define __cold __attribute__((cold))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
"""


def c_source(body: str, **subs: object) -> str:
    """``PRELUDE`` + ``body`` with each ``@NAME@`` placeholder replaced by ``subs[NAME]``."""
    for key, value in subs.items():
        body = body.replace(f"@{key}@", str(value))
    assert "@" not in body, f"unfilled placeholder in:\n{body}"
    return PRELUDE + body


def expect_changed(run: DiffRun) -> None:
    """Exit 0 with a valid output object holding every changed and new function."""
    assert run.returncode == EXIT_CHANGED, run.describe()
    assert run.data["refusals"] == [], run.describe()
    assert run.data["output"] is not None, run.describe()
    assert Path(run.data["output"]).resolve() == run.out.resolve(), run.describe()
    check_output_object(run.out)
    in_out = text_symbols(run.out)
    for name in run.changed_names + run.new_names:
        assert name in in_out, f"{name} reported but not a text symbol of the output\n{in_out}"


# The x86 kernel's BUG(): a ud2 and a 12-byte __bug_table entry (address, file, line, flags).
BUG_MACRO = r"""
#define MY_BUG()                                                   \
    asm volatile("1: ud2\n"                                        \
                 ".pushsection __bug_table,\"aw\"\n"               \
                 "2: .long 1b - 2b\n"                              \
                 ".long %c0 - 2b\n"                                \
                 ".word %c1\n"                                     \
                 ".word %c2\n"                                     \
                 ".org 2b+%c3\n"                                   \
                 ".popsection"                                     \
                 : : "i"(__FILE__), "i"(__LINE__), "i"(0), "i"(12))
"""
