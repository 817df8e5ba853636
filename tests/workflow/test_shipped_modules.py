"""Shipped modules found by name with what they depend on (git_ksplice.shipped_modules), on a
module directory laid out as a distribution ships it; Debian's real one is used on the
Debian tier."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from git_ksplice.errors import InputError
from git_ksplice.shipped_modules import ShippedModules, modinfo


def _ko(root: Path, rel: str, depends: str, *, xz: bool = False) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (b"\x7fELF" + bytes(40) + b"license=GPL\0depends=" + depends.encode()
            + b"\0vermagic=6.1.0 SMP mod_unload \0name=" + path.name.split(".")[0].encode()
            + b"\0")
    if xz:
        data = lzma.compress(data, format=lzma.FORMAT_XZ)
    path.write_bytes(data)
    return path


@pytest.fixture
def modules(tmp_path: Path) -> ShippedModules:
    root = tmp_path / "modules"
    _ko(root, "kernel/net/llc/llc.ko", "")
    _ko(root, "kernel/net/802/stp.ko", "llc")
    _ko(root, "kernel/net/bridge/bridge.ko", "llc,stp")
    _ko(root, "kernel/fs/nls/nls_iso8859-1.ko.xz", "", xz=True)
    _ko(root, "kernel/x/loop_a.ko", "loop_b")
    _ko(root, "kernel/x/loop_b.ko", "loop_a")
    _ko(root, "kernel/x/broken.ko", "gone")
    return ShippedModules(root)


def test_a_module_comes_after_what_it_needs(modules: ShippedModules) -> None:
    order = [name for name, _ in modules.with_dependencies("bridge")]
    assert order == ["llc", "stp", "bridge"]
    assert modules.modules_dep(modules.with_dependencies("bridge")) == (
        "kernel/net/llc/llc.ko:\n"
        "kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n"
        "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n")


def test_names_treat_dash_and_underscore_alike(modules: ShippedModules) -> None:
    found = modules.find("stp")
    assert found is not None and modinfo(found)["depends"] == "llc"
    _ko(modules.root, "kernel/fs/nls/nls_cp-437.ko", "")
    again = ShippedModules(modules.root)
    assert again.find("nls_cp_437") == again.find("nls_cp-437") is not None


def test_a_compressed_module_is_named_not_misread(modules: ShippedModules) -> None:
    assert modules.find("nls_iso8859-1") is None
    with pytest.raises(InputError, match=r"nls_iso8859_1 is shipped compressed "
                                         r"\(nls_iso8859-1\.ko\.xz\)"):
        modules.with_dependencies("nls_iso8859-1")
    assert modinfo(modules.compressed["nls_iso8859_1"])["vermagic"].startswith("6.1.0")


def test_a_circle_or_a_missing_dependency_is_named(modules: ShippedModules) -> None:
    with pytest.raises(InputError, match="in a circle: loop_a -> loop_b -> loop_a"):
        modules.with_dependencies("loop_a")
    with pytest.raises(InputError, match=r"no module gone in .* \(needed by broken\)"):
        modules.with_dependencies("broken")
