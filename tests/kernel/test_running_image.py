"""The reference kernel's own bzImage read as a distribution's vmlinuz is (no System.map
shipped): its kallsyms tables give the symbols System.map has, in the same order, and its
banner the release and the compiler."""

from __future__ import annotations

import pytest

from git_ksplice.kernel_image import banner, read_kallsyms, unpack_bzimage
from tests.kernel.conftest import KernelRepo

pytestmark = pytest.mark.kernel


def test_the_image_gives_system_maps_symbols_in_order(kernel_repo: KernelRepo) -> None:
    running_kernel = kernel_repo.running
    image = unpack_bzimage(running_kernel.bzimage.read_bytes(), "bzImage")
    entries = read_kallsyms(image)
    in_map = []
    for line in (running_kernel.orig_config / "System.map").read_text().splitlines():
        address, kind, name = line.split()[:3]
        in_map.append((int(address, 16), kind, name))
    known = set(in_map)
    # Per-cpu symbols are absolute in kallsyms ('A'), data in System.map.
    relocated = [e for e in entries if e.type != "A"]
    assert len(relocated) > 20000
    assert all((e.address, e.type, e.name) in known for e in relocated)
    # The order sympos counts in: same-named symbols come in System.map's order. (Symbols
    # at one address may be listed in another order: kallsyms and nm break ties apart.)
    addresses = [e.address for e in relocated]
    assert addresses == sorted(addresses)
    namesakes: dict[str, list[int]] = {}
    for address, _, name in in_map:
        namesakes.setdefault(name, []).append(address)
    in_image: dict[str, list[int]] = {}
    for e in relocated:
        in_image.setdefault(e.name, []).append(e.address)
    assert all(in_image[name] == namesakes[name] for name in in_image)
    assert sum(len(a) > 1 for a in in_image.values()) > 100  # locals of one name
    assert any(e.name == "meminfo_proc_show" and e.type == "t" for e in entries)
    found = banner(image)
    assert found is not None and found.release == "6.1.192"
    config = (running_kernel.orig_config / ".config").read_text()
    assert f'CONFIG_CC_VERSION_TEXT="{found.compiler}"' in config
