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

from git_ksplice.errors import InputError, RefusedError
from git_ksplice.livepatch.runpre import (
    RunningImage,
    check_module_object,
    check_run_pre,
    check_vmlinux_object,
    running_image,
)
from git_ksplice.origconfig import OrigConfig

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


@pytest.mark.parametrize(("shipped", "refused"), [
    ({"factor": 5}, "scale"),  # other code in a callee
    ({"emit": "emit_other"}, "show"),  # a call relocated to another function
    ({"label": '"value= "'}, "show"),  # another string literal
])
def test_another_module_is_refused(tmp_path: Path, shipped: dict, refused: str) -> None:
    other = _compile(tmp_path, "other", UNIT, **shipped)
    with pytest.raises(RefusedError, match=rf"{refused} .* shipped module other\.o"):
        check_module_object(other, _pristine(tmp_path), "a.o", "mod", ["show"])


def test_a_damaged_running_image_is_named(tmp_path: Path) -> None:
    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / "System.map").write_text("ffffffff81000000 T show\n")
    (orig / "vmlinux").write_bytes(b"")
    with pytest.raises(InputError, match="is not a kernel image"):
        running_image(OrigConfig(orig), tmp_path / "cache")
    (orig / "vmlinux").write_bytes(b"\x7fELF\x02" + bytes(59))  # no program headers
    with pytest.raises(InputError, match="no loadable segments"):
        running_image(OrigConfig(orig), tmp_path / "cache")


def test_what_was_not_checked_is_said(tmp_path: Path) -> None:
    """No image for vmlinux does not skip the module objects after it."""
    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / "System.map").write_text("ffffffff81000000 T show\n")
    pre = _pristine(tmp_path)
    report = check_run_pre([("vmlinux", "a.o", pre, ["show"]),
                            ("mod", "m.o", pre, ["show"]),
                            ("vmlinux", "gone.o", tmp_path / "gone.o", ["f"])],
                           OrigConfig(orig), tmp_path / "cache")
    assert report.checked == []
    assert [s.split(":")[0] for s in report.skipped] == ["a.o", "m.o", "gone.o"]
