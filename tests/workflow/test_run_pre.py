"""The run-pre check (git_ksplice.livepatch.runpre) on real code: a unit compiled as the
update's pristine object (function sections) is compared with a "running kernel" linked by ld
at the kernel's addresses from the same or another source, as the debug vmlinux or an
unpacked vmlinuz is read: by address through its program headers, symbols from System.map.
Debian's real kernel is checked on the Debian tier."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from git_ksplice.errors import RefusedError
from git_ksplice.livepatch.runpre import RunningImage, check_module_object, check_vmlinux_object

FLAGS = ["-O2", "-mcmodel=kernel", "-fno-pic", "-mno-red-zone",
         "-fno-asynchronous-unwind-tables", "-c"]
UNIT = """
extern int helper_value(int);
extern void emit(const char *);
extern void emit_other(const char *);
static __attribute__((noinline)) int scale(int x) { return x * FACTOR + 1; }
int show(int x)
{
	EMIT(LABEL);
	return helper_value(scale(x)) + 7;
}
"""
STUBS = """
int helper_value(int x) { return x; }
void emit(const char *s) { (void)s; }
void emit_other(const char *s) { (void)s; }
"""


def _compile(tmp: Path, name: str, source: str, *flags: str, factor: int = 3,
             label: str = '"value: "', emit: str = "emit") -> Path:
    c = tmp / f"{name}.c"
    c.write_text(source)
    out = tmp / f"{name}.o"
    subprocess.run(["gcc", *FLAGS, *flags, f"-DFACTOR={factor}", f"-DLABEL={label}",
                    f"-DEMIT={emit}", str(c), "-o", str(out)], check=True)
    return out


def _running(tmp: Path, **source: object) -> RunningImage:
    """The unit built as the running kernel was (no function sections), linked at
    0xffffffff81000000 with what it calls."""
    unit = _compile(tmp, "running", UNIT, **source)  # type: ignore[arg-type]
    stubs = _compile(tmp, "stubs", STUBS)
    image = tmp / "vmlinux"
    subprocess.run(["ld", "-o", str(image), "-Ttext=0xffffffff81000000", "-e", "show",
                    str(unit), str(stubs)], check=True)
    system_map = tmp / "System.map"
    system_map.write_text(subprocess.run(["nm", "-n", str(image)], check=True,
                                         capture_output=True, text=True).stdout)
    return RunningImage(image.read_bytes(), str(image), system_map)


def _pristine(tmp: Path) -> Path:
    return _compile(tmp, "pre", UNIT, "-ffunction-sections", "-fdata-sections")


def test_the_running_kernels_own_code_passes_with_its_callees(tmp_path: Path) -> None:
    checked = check_vmlinux_object(_running(tmp_path), _pristine(tmp_path), "a.o", ["show"])
    assert [c.function for c in checked] == ["show", "scale"]
    assert all(c.address is not None and c.address >= 0xffffffff81000000 for c in checked)


@pytest.mark.parametrize(("running", "refused"), [
    ({"factor": 4}, "scale (a.o) is not the running kernel's code"),
    ({"label": '"value= "'}, "show (a.o) is not the running kernel's code"),
    ({"emit": "emit_other"}, "show (a.o) is not the running kernel's code"),
])
def test_other_code_is_refused_naming_the_function(tmp_path: Path, running: dict,
                                                   refused: str) -> None:
    """Another constant in a callee, another string literal, a call that lands elsewhere:
    each a source that is not the running kernel's."""
    with pytest.raises(RefusedError, match=re.escape(refused)) as e:
        check_vmlinux_object(_running(tmp_path, **running), _pristine(tmp_path), "a.o",
                             ["show"])
    assert "differs at offset 0x" in e.value.message
    assert "not the running kernel's" in (e.value.hint or "")


def test_a_function_the_running_kernel_lacks_is_refused(tmp_path: Path) -> None:
    renamed = _compile(tmp_path, "pre2", UNIT.replace("int show(", "int show_v2("),
                       "-ffunction-sections")
    with pytest.raises(RefusedError, match=r"show_v2 .* not in the running kernel's symbols"):
        check_vmlinux_object(_running(tmp_path), renamed, "a.o", ["show_v2"])


def test_a_module_is_compared_with_the_shipped_ko(tmp_path: Path) -> None:
    """A .ko is relocatable: both sides' relocation sites are masked."""
    shipped = _compile(tmp_path, "shipped", UNIT)
    checked = check_module_object(shipped, _pristine(tmp_path), "a.o", "mod", ["show"])
    assert {c.function for c in checked} == {"show", "scale"}
    other = _compile(tmp_path, "other", UNIT, factor=5)
    with pytest.raises(RefusedError, match=r"scale .* shipped module other\.o"):
        check_module_object(other, _pristine(tmp_path), "a.o", "mod", ["show"])
