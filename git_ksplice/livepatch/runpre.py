"""The run-pre check: the pristine code an update replaces is the code the running kernel runs.

Ksplice matched its pristine objects against the running kernel's memory before it applied an
update ("run-pre matching"); no tool since does. Without it, an update built from the wrong
source, configuration or compiler is packaged, loads, and replaces functions with code whose
assumptions (struct layouts, inlined callees, constants) are not the running kernel's. Here the
check is made at build time against the running kernel's own code, read from ORIG_CONFIG:
- for vmlinux, from the debug `vmlinux` when there is one, otherwise from `vmlinuz`
  unpacked (git_ksplice.kernel_image; unpacked once per image and kept in the state
  directory), each read by address through its program headers; addresses come from
  `System.map` (for an imported kernel, the image's own kallsyms);
- for a module, from its shipped `.ko` in ORIG_CONFIG's `modules/`, by section.

What is compared: every function the update replaces, and every function of the same pre
object they call or reference (the code the replacement's relocations will resolve to), weak
ones excepted (the running kernel may have another object's). The pristine bytes must equal
the running ones everywhere but at relocation sites, and each site must land where it should:
- against a named symbol, the running bytes hold the address of a symbol of that name (any
  of its namesakes; PC-relative sites relative to the running function);
- against a string section, they reach a string of the same contents (a changed literal is
  a changed source);
- against other section symbols (jump tables, constant arrays) the site is only masked:
  those targets hold relocations of their own.
A function of several namesakes (static functions of one name in many files) matches if one
of them is equal. Which one matched, and which namesake each site reaches, tell the livepatch
module's sympos which symbol the update means (`RunPreReport.resolved`): no debug package is
needed for that either.

The pristine objects are built with `-ffunction-sections -fdata-sections` and the running
kernel without: the instruction streams are the same (measured on Debian's kernel: 139/139
functions of kernel/sys.o), only calls between a unit's own functions gain relocations, which
the landing check covers.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.elf.model import (
    R_X86_64_32,
    R_X86_64_32S,
    R_X86_64_64,
    R_X86_64_PC32,
    R_X86_64_PLT32,
    SHF_STRINGS,
    STB_WEAK,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
    read_object,
)
from git_ksplice.errors import InputError, RefusedError
from git_ksplice.kernel_image import unpack_bzimage
from git_ksplice.livepatch.symbols import read_system_map
from git_ksplice.origconfig import OrigConfig
from git_ksplice.shipped_modules import ShippedModules
from git_ksplice.words import count

_WIDTH = {R_X86_64_PC32: 4, R_X86_64_PLT32: 4, R_X86_64_32: 4, R_X86_64_32S: 4,
          R_X86_64_64: 8}
_PHDR = struct.Struct("<IIQQQQQQ")
_LIKELY_CAUSE = ("the source, configuration or compiler is not the running kernel's: "
                 "refs/ksplice/pre must be the running kernel's exact source, ORIG_CONFIG "
                 "its build configuration (git ksplice import-kernel)")


@dataclass(frozen=True)
class Checked:
    """One pristine function found in the running kernel."""

    target: str
    function: str
    address: int | None  # in vmlinux; None for a module (matched by section)


@dataclass
class RunPreReport:
    checked: list[Checked] = field(default_factory=list)
    #: why some target was not checked (no image, no shipped module)
    skipped: list[str] = field(default_factory=list)
    #: target -> (source file, name) -> the running address of the one namesake the
    #: update's code means
    resolved: dict[str, dict[tuple[str | None, str], int]] = field(default_factory=dict)


class RunningImage:
    """The running vmlinux, read by address, with System.map's addresses by name."""

    def __init__(self, data: bytes | mmap.mmap, where: str, system_map: Path) -> None:
        self.data = data
        self.where = where
        self.segments = _load_segments(data, where)
        self.addresses: dict[str, list[int]] = {}
        #: (source file, name) -> the addresses matching placed a local of several
        #: namesakes at (see `resolved`)
        self.learned: dict[tuple[str | None, str], set[int]] = {}
        for address, name in read_system_map(system_map):
            self.addresses.setdefault(name, []).append(address)

    def learn(self, file: str | None, name: str, address: int) -> None:
        if len(self.addresses.get(name, ())) > 1:
            self.learned.setdefault((file, name), set()).add(address)

    def resolved(self) -> dict[tuple[str | None, str], int]:
        """The locals of several namesakes that matching placed at one address, by the
        source file of the object that uses them: which one the update means, without the
        debug package's FILE symbols."""
        return {key: next(iter(found)) for key, found in self.learned.items()
                if len(found) == 1}

    def read(self, address: int, size: int) -> bytes | None:
        for vaddr, offset, filesz in self.segments:
            if vaddr <= address and address + size <= vaddr + filesz:
                at = offset + address - vaddr
                return bytes(self.data[at:at + size])
        return None


def _load_segments(data: bytes | mmap.mmap, where: str) -> list[tuple[int, int, int]]:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise InputError(f"{where} is not a 64-bit ELF kernel image")
    phoff = int.from_bytes(data[32:40], "little")
    phnum = int.from_bytes(data[56:58], "little")
    out = []
    try:
        for i in range(phnum):
            p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = \
                _PHDR.unpack_from(data, phoff + i * _PHDR.size)
            if p_type == 1:  # PT_LOAD
                out.append((vaddr, offset, filesz))
    except struct.error:
        out = []
    if not out:
        raise InputError(f"{where} has no loadable segments to read the running code from",
                         hint="ORIG_CONFIG's vmlinux or vmlinuz is damaged: import the "
                              "kernel again (git ksplice import-kernel)")
    return out


def running_image(orig: OrigConfig, cache: Path) -> RunningImage | None:
    """The running vmlinux: the debug one, else vmlinuz unpacked (kept in `cache`, named by
    the image's hash); None when ORIG_CONFIG has neither."""
    if orig.vmlinux is not None:
        if not orig.vmlinux.is_file() or orig.vmlinux.stat().st_size == 0:
            raise InputError(f"ORIG_CONFIG's vmlinux ({orig.vmlinux}) is not a kernel image",
                             hint="put the running kernel's unstripped vmlinux there, or "
                                  "remove it (vmlinuz serves too)")
        return RunningImage(_mapped(orig.vmlinux), str(orig.vmlinux), orig.system_map)
    if orig.vmlinuz is None:
        return None
    packed = orig.vmlinuz.read_bytes()
    unpacked = cache / f"vmlinux-{hashlib.sha256(packed).hexdigest()[:16]}"
    if not unpacked.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("vmlinux-*"):
            old.unlink(missing_ok=True)
        part = unpacked.with_name(unpacked.name + ".part")
        part.write_bytes(unpack_bzimage(packed, str(orig.vmlinuz)))
        part.replace(unpacked)
    return RunningImage(_mapped(unpacked), str(orig.vmlinuz), orig.system_map)


def _mapped(path: Path) -> mmap.mmap:
    """A whole image, mapped rather than read: only the functions checked are paged in."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # outlives the file object


def functions_to_check(pre: ElfObject, replaced: list[str]) -> list[Symbol]:
    """The replaced functions of the pre object and the functions of that object they
    reference, in that order."""
    by_name = {s.name: s for s in pre.symbols if s.type == STT_FUNC and s.defined}
    out = [by_name[n] for n in replaced if n in by_name]
    seen = {s.name for s in out}
    for fn in list(out):
        assert fn.section is not None
        for r in fn.section.relocs:
            if not fn.value <= r.offset < fn.value + fn.size:
                continue
            callee = r.symbol
            if callee.type == STT_SECTION and callee.section is not None:
                callee = callee.section.symbol_at(r.addend + 4) or callee
            # A weak callee may be another object's function in the running kernel (the
            # __weak arch_report_meminfo of fs/proc/meminfo.c is arch/x86's): not compared.
            if callee.type == STT_FUNC and callee.defined and callee.bind != STB_WEAK \
                    and callee.name not in seen:
                seen.add(callee.name)
                out.append(callee)
    return out


def first_difference(fn: Symbol, running: bytes, at: int | None,
                     image: RunningImage | None,
                     placed: list[tuple[str, int]] | None = None) -> int | None:
    """The offset in `fn` of the first byte the running code (at address `at` of `image`;
    None for a module's section) does not have, relocation sites masked and checked. The
    locals of several namesakes a site told apart are added to `placed`."""
    assert fn.section is not None
    start, size = fn.value, fn.size
    ours = fn.section.data[start:start + size]
    masked = bytearray(size)
    for r in fn.section.relocs:
        width = _WIDTH.get(r.type, 4)
        if start <= r.offset < start + size:
            for i in range(r.offset - start, min(size, r.offset - start + width)):
                masked[i] = 1
            if at is not None and image is not None and \
                    not _lands(r, running, r.offset - start, at, image, placed):
                return r.offset - start
    for i in range(size):
        if not masked[i] and ours[i] != running[i]:
            return i
    return None


def _lands(r: Reloc, running: bytes, offset: int, at: int, image: RunningImage,
           placed: list[tuple[str, int]] | None) -> bool:
    """Whether the running bytes at a relocation site hold what it must resolve to: a named
    symbol's address, or a string literal with our string's contents."""
    width = _WIDTH.get(r.type)
    if width is None or offset + width > len(running):
        return True
    value = int.from_bytes(running[offset:offset + width], "little")
    pc_relative = r.type in (R_X86_64_PC32, R_X86_64_PLT32)
    site = at + offset
    if r.symbol.type == STT_SECTION:
        return _string_lands(r, value, width, site if pc_relative else None, image)
    candidates = image.addresses.get(r.symbol.name) if r.symbol.name else None
    if not candidates:
        return True  # not in the running kernel's map (an alias the map leaves out)
    # The field holds the low bytes of the value (sign-extended or not by the instruction;
    # the linker checked that it fits): compared modulo its width.
    mask = (1 << (8 * width)) - 1
    hits = [s for s in candidates
            if (s + r.addend - (site if pc_relative else 0)) & mask == value]
    if len(hits) == 1 and r.symbol.is_local and placed is not None:
        placed.append((r.symbol.name, hits[0]))
    return bool(hits)


def _string_lands(r: Reloc, value: int, width: int, site: int | None,
                  image: RunningImage) -> bool:
    """A relocation against a string section (`.rodata.str1.1`) must reach the same string
    in the running kernel: a changed literal is a changed source. Other sections' targets
    (jump tables, constant arrays) hold relocations of their own: masked only."""
    section = r.symbol.section
    if section is None or not section.flags & SHF_STRINGS:
        return True
    if width == 4:
        value -= (value & 0x80000000) << 1  # both PC32 and 32S sign-extend
    # the section's address, as a 64-bit address (a 32S field sign-extends to the top 2 GB)
    base = ((value + site if site is not None else value) - r.addend) & ((1 << 64) - 1)
    # A PC-relative field usually ends its instruction (the string at addend + 4); an
    # immediate after it moves the string by its size.
    offsets = [r.addend + 4 + n for n in (0, 1, 2, 4)] if site is not None else [r.addend]
    for stroff in offsets:
        if not 0 <= stroff < len(section.data):
            continue
        ours = section.data[stroff:section.data.find(b"\0", stroff) + 1]
        if ours and image.read(base + stroff, len(ours)) == ours:
            return True
    return False


def check_vmlinux_object(image: RunningImage, pre_path: Path, rel: str,
                         replaced: list[str]) -> list[Checked]:
    """Every function to check of one vmlinux object, found in the running image; a
    refusal naming the first that is not."""
    pre = read_object(pre_path)
    checked = []
    for fn in functions_to_check(pre, replaced):
        candidates = image.addresses.get(fn.name, [])
        if not candidates:
            if fn.name in replaced:
                raise RefusedError(f"run-pre check: {fn.name} ({rel}) is not in the running "
                                   "kernel's symbols: the update could not replace it",
                                   hint=f"likely cause: {_LIKELY_CAUSE}")
            continue  # a callee the running kernel inlined everywhere
        differences = []
        match = None
        placed: list[tuple[str, int]] = []
        for address in candidates:
            running = image.read(address, fn.size)
            if running is None:
                differences.append((address, 0))
                continue
            placed = []
            at = first_difference(fn, running, address, image, placed)
            if at is None:
                match = address
                break
            differences.append((address, at))
        if match is None:
            address, at = max(differences, key=lambda d: d[1])
            raise RefusedError(
                f"run-pre check: {fn.name} ({rel}) is not the running kernel's code: it "
                f"differs at offset {at:#x} from {image.where}'s at {address:#x}"
                + (f" (and {count(len(candidates) - 1, 'other namesake')})"
                   if len(candidates) > 1 else ""),
                hint=f"likely cause: {_LIKELY_CAUSE}")
        # What the matching namesake's sites reach, and the namesake itself, is what this
        # object's code means: learned for sympos (only from the match).
        for name, address in [*placed, *([(fn.name, match)] if fn.is_local else [])]:
            image.learn(fn.file, name, address)
        checked.append(Checked("vmlinux", fn.name, match))
    return checked


def check_module_object(ko: Path, pre_path: Path, rel: str, target: str,
                        replaced: list[str]) -> list[Checked]:
    """The module's functions to check against the shipped `.ko`: the same bytes, the
    relocation sites of both masked (a .ko's sites are resolved at load)."""
    pre = read_object(pre_path)
    shipped = read_object(ko)
    theirs = {s.name: s for s in shipped.symbols if s.type == STT_FUNC and s.defined}
    checked = []
    for fn in functions_to_check(pre, replaced):
        other = theirs.get(fn.name)
        if other is None or other.section is None:
            if fn.name in replaced:
                raise RefusedError(f"run-pre check: {fn.name} ({rel}) is not in the shipped "
                                   f"module {ko.name}", hint=f"likely cause: {_LIKELY_CAUSE}")
            continue
        at = _module_difference(fn, other)
        if at is not None:
            raise RefusedError(f"run-pre check: {fn.name} ({rel}) is not the code of the "
                               f"shipped module {ko.name}: it differs at offset {at:#x}",
                               hint=f"likely cause: {_LIKELY_CAUSE}")
        checked.append(Checked(target, fn.name, None))
    return checked


def _module_difference(fn: Symbol, other: Symbol) -> int | None:
    """Where `fn` differs from the shipped module's `other`: a size apart, a relocation
    site that does not reach what ours reaches, or the first byte outside the sites."""
    assert fn.section is not None and other.section is not None
    if other.size != fn.size:
        return min(fn.size, other.size)
    ours = fn.section.data[fn.value:fn.value + fn.size]
    running = bytearray(other.section.data[other.value:other.value + other.size])
    theirs = {r.offset - other.value: r for r in other.section.relocs
              if other.value <= r.offset < other.value + other.size}
    for r in fn.section.relocs:
        offset = r.offset - fn.value
        if not 0 <= offset < fn.size:
            continue
        shipped = theirs.get(offset)
        if not (_same_target(r, shipped) if shipped is not None
                else _reaches_in_section(r, offset, other, bytes(running))):
            return offset
    # The sites of both sides are not compared byte for byte: theirs take our bytes.
    for offset, r in theirs.items():
        for i in range(max(0, offset), min(len(running), offset + _WIDTH.get(r.type, 4))):
            running[i] = ours[i]
    return first_difference(fn, bytes(running), None, None)


def _same_target(ours: Reloc, theirs: Reloc) -> bool:
    """Two relocations of the same site reach the same thing: the same named symbol and
    addend, or the same string; other section targets (jump tables) are not compared."""
    calls = (R_X86_64_PC32, R_X86_64_PLT32)
    if ours.type != theirs.type and not (ours.type in calls and theirs.type in calls):
        return False
    if ours.symbol.type != STT_SECTION or theirs.symbol.type != STT_SECTION:
        return (ours.symbol.name, ours.addend) == (theirs.symbol.name, theirs.addend)
    a, b = ours.symbol.section, theirs.symbol.section
    if a is None or b is None or not (a.flags & b.flags & SHF_STRINGS):
        return True
    # A string section's merged layout differs between builds: compare the strings, at the
    # offsets a PC-relative field ending its instruction (or one before an immediate) reads.
    shifts = (4, 5, 6, 8) if ours.type in calls else (0,)
    return any(_string(a, ours.addend + n) == _string(b, theirs.addend + n) != b""
               for n in shifts)


def _string(section: Section, offset: int) -> bytes:
    if not 0 <= offset < len(section.data):
        return b""
    return section.data[offset:section.data.find(b"\0", offset) + 1]


def _reaches_in_section(r: Reloc, offset: int, other: Symbol, running: bytes) -> bool:
    """A site our object relocates but the shipped module does not: the assembler resolved
    it (a call to a function of the same section, built without function sections). Its
    displacement must reach the shipped symbol of the name ours names."""
    if r.type not in (R_X86_64_PC32, R_X86_64_PLT32) or r.symbol.type == STT_SECTION:
        return True
    assert other.section is not None
    value = int.from_bytes(running[offset:offset + 4], "little", signed=True)
    reached = other.value + offset + value - r.addend
    return any(s.name == r.symbol.name and s.value == reached for s in other.section.symbols)


def check_run_pre(objects: list[tuple[str, str, Path, list[str]]], orig: OrigConfig,
                  cache: Path) -> RunPreReport:
    """The run-pre check of an update's changed objects, each (target, path in the tree,
    pristine object, names of the functions it replaces in the pristine object)."""
    report = RunPreReport()
    image: RunningImage | None = None
    no_image = False
    for target, rel, pristine, replaced in objects:
        if not replaced:
            continue  # only new code: nothing running to compare with
        if not pristine.exists():
            report.skipped.append(f"{rel}: no pristine object to compare")
            continue
        if target == "vmlinux":
            if image is None and not no_image:
                image = running_image(orig, cache)
                no_image = image is None
            if image is None:
                report.skipped.append(f"{rel}: ORIG_CONFIG has neither vmlinux nor vmlinuz "
                                      "(git ksplice import-kernel copies vmlinuz)")
                continue
            report.checked += check_vmlinux_object(image, pristine, rel, replaced)
            continue
        ko = shipped_module(orig, target)
        if ko is None:
            report.skipped.append(f"{rel}: module {target} is not among ORIG_CONFIG's "
                                  "modules/ (or is shipped compressed)")
            continue
        report.checked += check_module_object(ko, pristine, rel, target, replaced)
    if image is not None:
        report.resolved["vmlinux"] = image.resolved()
    return report


def shipped_module(orig: OrigConfig, name: str) -> Path | None:
    """Module `name`'s shipped .ko in ORIG_CONFIG's modules/."""
    if orig.modules is None:
        return None
    st = orig.modules.stat()  # a re-import replaces the directory: another index
    return _shipped(orig.modules, st.st_ino, st.st_mtime_ns).find(name)


@functools.lru_cache(maxsize=4)
def _shipped(root: Path, inode: int, mtime: int) -> ShippedModules:
    """One index of a module directory (4,000 files for Debian), made once: sympos and the
    run-pre check look modules up in it object by object."""
    del inode, mtime  # the cache's key only
    return ShippedModules(root)


__all__ = ["Checked", "RunPreReport", "RunningImage", "check_module_object", "check_run_pre",
           "check_vmlinux_object", "first_difference", "functions_to_check", "running_image",
           "shipped_module"]
