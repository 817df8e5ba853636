"""Reading a kernel image (git_ksplice.kernel_image) when it is not what it should be: every
bad image is a clear error, never a traceback or a wrong table. The real images (the
reference kernel's bzImage, Debian's vmlinuz) are read in tests/kernel."""

from __future__ import annotations

import gzip
import lzma
import struct

import pytest

from git_ksplice.errors import InputError
from git_ksplice.kernel_image import banner, banner_in_file, read_kallsyms, unpack_bzimage


def _bzimage(payload: bytes, *, protocol: int = 0x20f, length: int | None = None) -> bytes:
    """A setup header saying where `payload` is, as a boot loader reads it."""
    setup = bytearray(5 * 512)  # setup_sects = 4
    setup[0x1f1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    struct.pack_into("<II", setup, 0x248, 16, len(payload) if length is None else length)
    return bytes(setup) + bytes(16) + payload


def test_the_payload_is_unpacked_whatever_follows_it() -> None:
    elf = b"\x7fELF" + bytes(100)
    for packed in (gzip.compress(elf), lzma.compress(elf, format=lzma.FORMAT_XZ)):
        # the kernel appends the unpacked size after the stream
        assert unpack_bzimage(_bzimage(packed + struct.pack("<I", len(elf))), "img") == elf


@pytest.mark.parametrize(("image", "message"), [
    (b"\x7fELF" + bytes(4096), "is not an x86 bzImage"),
    (b"", "is not an x86 bzImage"),
    (_bzimage(b"x", protocol=0x204), "boot protocol 2.4"),
    (_bzimage(gzip.compress(b"x"), length=1 << 20), "is truncated"),
    (_bzimage(b"\x28\xb5\x2f\xfd" + bytes(20)), "zstd-compressed"),
    (_bzimage(b"\x1f\x8b" + bytes(20)), "cannot unpack"),
    (_bzimage(b"\xfd7zXZ\x00" + bytes(20)), "cannot unpack"),
    (_bzimage(gzip.compress(bytes(5000))[:-30]), "ends early"),
    (_bzimage(lzma.compress(bytes(5000), format=lzma.FORMAT_XZ)[:-30]), "cannot unpack"),
])
def test_a_bad_image_is_named(image: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        unpack_bzimage(image, "img")


def test_no_kallsyms_tables_is_an_error_not_a_guess() -> None:
    """Digits that look like the token table's, with nothing around them to prove it."""
    image = bytes(64) + b"".join(bytes([c, 0]) for c in b"0123456789") * 3 + bytes(64)
    with pytest.raises(InputError, match="no kallsyms tables"):
        read_kallsyms(image)
    with pytest.raises(InputError, match="no kallsyms tables"):
        read_kallsyms(b"")


def test_the_banner_names_release_and_compiler() -> None:
    text = (b"\x00Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 "
            b"(Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 "
            b"SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)\n\x00")
    found = banner(text)
    assert found is not None and found.release == "6.1.0-57-amd64"
    assert found.compiler == "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
    assert banner(b"no banner here") is None


def test_a_file_gives_the_banner_the_kernel_prints(tmp_path) -> None:
    """6.1's vmlinux holds init/version.o's banner (`# SMP`) before the one with the build
    number: read from memory or from a file, the same one is chosen."""
    head = (b"Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
            b"12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) ")
    image = (b"\x7fELF" + bytes(32) + head + b"# SMP PREEMPT_DYNAMIC\n\x00" + bytes(64)
             + head + b"#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)\n\x00")
    (tmp_path / "vmlinux").write_bytes(image)
    from_memory, from_file = banner(image), banner_in_file(tmp_path / "vmlinux")
    assert from_memory is not None and "#1 SMP" in from_memory.text
    assert from_file == from_memory
    (tmp_path / "empty").write_bytes(b"")
    assert banner_in_file(tmp_path / "empty") is None
