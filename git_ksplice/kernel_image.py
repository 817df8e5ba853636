"""The running kernel's own image: `vmlinuz` unpacked, its banner and its kallsyms read.

A distribution ships no usable System.map (Debian's is a one-line stub pointing at the 859 MB
debug package), but every kernel with CONFIG_KALLSYMS carries its symbol table inside the
image: names, types and addresses of every function (and, with KALLSYMS_ALL, every object),
in address order, which is the order livepatch's `sympos` counts in. So the symbols an update
needs come from the kernel that runs, not from a package that may be missing.

- `unpack_bzimage`: x86's bzImage holds the kernel as a compressed payload (its setup header
  says where: `payload_offset`, `payload_length`, boot protocol 2.08+) that unpacks to the
  kernel's ELF file, stripped of its symbols. gzip, xz, lzma and bzip2 payloads are unpacked
  with Python's own modules; zstd, lz4 and lzo are named in the error.
- `read_kallsyms`: the tables scripts/kallsyms.c writes into `.rodata`, found without symbols.
  The anchor is `kallsyms_token_table`: 256 NUL-terminated tokens, whose entries for the
  digits are (in practice always) the digits themselves, so `0\\0 1\\0 ... 9\\0` occurs in it;
  it is proven by `kallsyms_token_index` after it (the 256 offsets of its tokens). Before it
  come `kallsyms_markers` (the offset of every 256th name; since 6.2, and in Debian's 6.1,
  `kallsyms_seqs_of_names` lies between the two), `kallsyms_names` (each name a length and
  token numbers, the type letter first), `kallsyms_num_syms`, and the addresses: with
  CONFIG_KALLSYMS_BASE_RELATIVE `kallsyms_offsets` then `kallsyms_relative_base`, otherwise
  `kallsyms_addresses`. Every candidate is checked against the others (the count against the
  names that decode and end where the markers begin, every marker against the decoded
  offsets, the addresses sorted), so a wrong guess is refused, never returned.
- `banner`: `Linux version RELEASE (COMPILER, LINKER) #...`, what `/proc/version` says.
"""

from __future__ import annotations

import bz2
import lzma
import mmap
import re
import struct
import zlib
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from git_ksplice.errors import InputError

#: A payload's first bytes -> its compression, for the ones named in errors.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"),
          (b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"),
          (b"\x89LZO", "lzo"))
#: `Linux version RELEASE (USER@HOST) (COMPILER, LINKER) #VERSION ...`
_BANNER = re.compile(rb"Linux version (\S+) \([^()\n\x00]*\) \(([^\n\x00]*?)\) #[^\n\x00]*")
_DIGIT_TOKENS = b"".join(bytes([c, 0]) for c in b"0123456789")
_KSYM_NAME_LEN = 512  # the longest name kallsyms stores (6.1; 128 before 5.19)


@dataclass(frozen=True)
class Banner:
    """The kernel's `linux_banner`."""

    text: str
    release: str  # 6.1.0-57-amd64
    compiler: str  # gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0


@dataclass(frozen=True)
class KallsymsEntry:
    address: int
    type: str  # nm's letter: T t D d R r B b W ...
    name: str


def unpack_bzimage(data: bytes, where: str) -> bytes:
    """The kernel ELF file a bzImage carries (`where` names it in errors)."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise InputError(f"{where} is not an x86 bzImage (no 'HdrS' setup header)",
                         hint="give the kernel image the boot loader loads (vmlinuz)")
    version, = struct.unpack_from("<H", data, 0x206)
    if version < 0x208:
        raise InputError(f"{where} uses boot protocol {version >> 8}.{version & 0xff}, "
                         "which does not say where its payload is (2.08 and later do)")
    setup_sects = data[0x1f1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    if len(payload) != length or not length:
        raise InputError(f"{where} is truncated: its payload ends past the file")
    return _decompress(payload, where)


def _decompress(payload: bytes, where: str) -> bytes:
    kind = next((name for magic, name in _MAGIC if payload.startswith(magic)), "unknown")
    # The kernel appends the unpacked size (4 bytes) after the stream: left over, unread.
    unpackers = {"gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
                 "xz": lzma.LZMADecompressor, "lzma": lzma.LZMADecompressor,
                 "bzip2": bz2.BZ2Decompressor}
    if kind in unpackers:
        unpacker = unpackers[kind]()
        try:
            data = unpacker.decompress(payload)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
            raise InputError(f"cannot unpack {where}'s {kind} payload: {e}") from None
        if not unpacker.eof:
            raise InputError(f"cannot unpack {where}'s {kind} payload: it ends early")
        return data
    raise InputError(f"{where}'s payload is {kind}-compressed, which git-ksplice does not "
                     "unpack (gzip, xz, lzma and bzip2 it does)",
                     hint="give the unstripped vmlinux instead (the debug package's "
                          "usr/lib/debug/boot/vmlinux-RELEASE)")


def banner(image: bytes) -> Banner | None:
    """The `Linux version ...` string the image holds, or None. Since 6.1 an image holds two:
    init/version.o's, built before the build number is known (`# SMP ...`), and the one
    linked last, init/version-timestamp.o's (`#1 SMP ...`), which the kernel prints."""
    return _preferred(list(_BANNER.finditer(image)))


def _preferred(matches: list[re.Match[bytes]]) -> Banner | None:
    """The banner the kernel prints among those found: the one with a build number."""
    if not matches:
        return None
    m = next((m for m in matches if re.search(rb"\) #\d", m.group(0))), matches[0])
    text = m.group(0).decode("utf-8", "replace")
    compiler = m.group(2).decode("utf-8", "replace")
    # "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40"
    return Banner(text, m.group(1).decode("utf-8", "replace"),
                  _split_toolchain(compiler)[0])


def _split_toolchain(text: str) -> list[str]:
    """`COMPILER, LINKER` split at the top-level comma (parentheses may hold commas)."""
    depth, parts, current = 0, [], []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    return [*parts, "".join(current).strip()]


def read_kallsyms(image: bytes) -> list[KallsymsEntry]:
    """Every symbol of the kernel's kallsyms tables, in their (address) order; an error
    when the image holds no tables this reader can prove."""
    at = image.find(_DIGIT_TOKENS)
    while at >= 0:
        found = _tables_around(image, at)
        if found is not None:
            return found
        at = image.find(_DIGIT_TOKENS, at + 1)
    raise InputError("no kallsyms tables found in the kernel image (a kernel built without "
                     "CONFIG_KALLSYMS, or one whose tables this reader does not know)",
                     hint="give the running kernel's System.map or unstripped vmlinux")


def _tables_around(image: bytes, digits: int) -> list[KallsymsEntry] | None:
    tokens = _token_table(image, digits)
    if tokens is None:
        return None
    table_start, table = tokens
    for m_start, markers in _marker_candidates(image, table_start):
        found = _names_before(image, m_start, markers)
        if found is None:
            continue
        count_at, entries = found
        addresses = _addresses(image, count_at, len(entries))
        if addresses is None:
            continue
        names = [_expand(e, table) for e in entries]
        return [KallsymsEntry(a, n[0], n[1:]) for a, n in zip(addresses, names, strict=True)]
    return None


def _token_table(image: bytes, digits: int) -> tuple[int, list[bytes]] | None:
    """(where the table starts, its 256 tokens), when `digits` is token 0x30 of a table
    that `kallsyms_token_index` follows."""
    start = digits
    for _ in range(0x30):  # back over tokens 0x2f ... 0, none empty
        prev = image.rfind(b"\x00", 0, start - 1)
        if prev < 0 or prev == start - 2:  # no NUL before, or an empty token
            return None
        start = prev + 1
    if start % 8:
        return None
    tokens, offsets, pos = [], [], start
    for _ in range(256):
        end = image.find(b"\x00", pos)
        if end <= pos:
            return None
        offsets.append(pos - start)
        tokens.append(image[pos:end])
        pos = end + 1
    index_at = (pos + 7) & ~7
    index = struct.unpack_from("<256H", image, index_at) if index_at + 512 <= len(image) \
        else ()
    if list(index) != offsets:
        return None
    return start, tokens


def _marker_candidates(image: bytes, table_start: int):  # type: ignore[no-untyped-def]
    """(start, values) of the u32 runs before the token table that can be
    `kallsyms_markers`: 0, then increasing by what 256 names take. Searched back over as
    much as `kallsyms_seqs_of_names` (3 bytes a symbol) can fill."""
    lowest = max(0, table_start - 3 * (1 << 22))
    for m_start in range((table_start - 4) & ~7, lowest, -8):
        if struct.unpack_from("<I", image, m_start)[0] != 0:
            continue
        values, pos = [0], m_start + 4
        while pos + 4 <= table_start:
            v, = struct.unpack_from("<I", image, pos)
            if not 256 * 2 <= v - values[-1] <= 256 * (_KSYM_NAME_LEN + 2):
                break
            values.append(v)
            pos += 4
        # A kernel has more than 256 symbols: two markers at least. The u32 after the
        # last one may happen to continue the run: one or two shorter runs are tried too.
        for cut in range(len(values), max(1, len(values) - 2), -1):
            yield m_start, values[:cut]


def _names_before(image: bytes, m_start: int, markers: list[int]
                  ) -> tuple[int, list[bytes]] | None:
    """(where `kallsyms_num_syms` is, the encoded names) for the names that end where the
    markers begin, each 256th at its marker's offset."""
    lo_count, hi_count = 256 * (len(markers) - 1) + 1, 256 * len(markers)
    last = markers[-1]
    for names_at in range((m_start - last) & ~7, m_start - last - 256 * (_KSYM_NAME_LEN + 2),
                          -8):
        count, = struct.unpack_from("<I", image, names_at - 8)
        if not lo_count <= count <= hi_count:
            continue
        entries = _decode_names(image, names_at, count, m_start)
        if entries is not None and all(entries[1][i * 256] == markers[i]
                                       for i in range(len(markers))):
            return names_at - 8, entries[0]
    return None


def _decode_names(image: bytes, start: int, count: int, limit: int
                  ) -> tuple[list[bytes], list[int]] | None:
    """The `count` names from `start` (token numbers), with each one's offset, when they
    end within alignment of `limit`."""
    names, offsets, pos = [], [], start
    for _ in range(count):
        if pos >= limit:
            return None
        offsets.append(pos - start)
        n = image[pos]
        pos += 1
        if n & 0x80:
            n = (n & 0x7F) | (image[pos] << 7)
            pos += 1
        names.append(image[pos:pos + n])
        pos += n
    if not limit - 8 < pos <= limit:
        return None
    return names, offsets


def _addresses(image: bytes, count_at: int, count: int) -> list[int] | None:
    """The symbols' addresses before `kallsyms_num_syms`: relative offsets and their base
    (CONFIG_KALLSYMS_BASE_RELATIVE, absolute per-cpu or not) or absolute addresses."""
    base_at = count_at - 8
    base, = struct.unpack_from("<Q", image, base_at)
    if base >= 0xffffffff80000000:
        for start in (base_at - 4 * count, base_at - 4 * count - 4):
            offsets = struct.unpack_from(f"<{count}i", image, start)
            for absolute_percpu in (True, False):
                found = [_relative(base, o, absolute_percpu) for o in offsets]
                if _plausible(found):
                    return found
    start = count_at - 8 * count
    found = list(struct.unpack_from(f"<{count}Q", image, start)) if start >= 0 else []
    return found if _plausible(found) else None


def _relative(base: int, offset: int, absolute_percpu: bool) -> int:
    if not absolute_percpu:
        return base + (offset & 0xffffffff)
    return offset if offset >= 0 else base - 1 - offset


def _plausible(addresses: list[int]) -> bool:
    """Kernel text addresses, in order (per-cpu offsets, small, may come first)."""
    kernel = [a for a in addresses if a >= 0xffffffff80000000]
    return len(kernel) > len(addresses) // 2 and all(a <= b for a, b in pairwise(kernel))


def _expand(entry: bytes, table: list[bytes]) -> str:
    return b"".join(table[t] for t in entry).decode("utf-8", "replace")


def banner_in_file(path: Path) -> Banner | None:
    """A vmlinux's banner, read without loading the (633 MB) file: the one `banner` would
    choose."""
    matches = []
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.find(b"Linux version ")
            while at >= 0:
                found = _BANNER.match(m[at:at + 512])
                if found is not None:
                    matches.append(found)
                at = m.find(b"Linux version ", at + 1)
    except (OSError, ValueError):
        return None
    return _preferred(matches)


def system_map(entries: list[KallsymsEntry]) -> str:
    """The symbols as System.map lines (`ADDRESS TYPE NAME`), in kallsyms order."""
    return "".join(f"{e.address:016x} {e.type} {e.name}\n" for e in entries)


__all__ = ["Banner", "KallsymsEntry", "banner", "banner_in_file", "read_kallsyms", "system_map",
           "unpack_bzimage"]
