"""The running kernel's symbols, as livepatch will look them up.

At load time the kernel resolves each `.klp.sym.<obj>.<name>,<sympos>` by walking kallsyms:
for vmlinux in address order, for a module in its symbol table's order, counting the
symbols named `<name>`; sympos 0 means "the only one", N the N-th. To compute sympos we need
the same list, and to know which of several same-named symbols is ours:
- from ORIG_CONFIG's `vmlinux` when it is there (unstripped: it keeps the FILE symbols that
  say which source file each local came from);
- otherwise from ORIG_CONFIG's `System.map` (the list, in kallsyms order) plus the pristine
  build's `vmlinux` (the FILE blocks, to find ours and its rank among its namesakes), or, in
  the targeted mode, which links no vmlinux, from `System.map` alone (a name it holds
  several times cannot be placed);
- for a module, from its `.ko` in the pristine build, or (targeted mode) its pre objects
  linked in kbuild's order.
A name that cannot be placed unambiguously is an error that names the symbol.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from git_ksplice.errors import InputError, RefusedError
from git_ksplice.origconfig import OrigConfig
from git_ksplice.words import count

_SYM = struct.Struct("<IBBHQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")

STT_FUNC, STT_OBJECT, STT_SECTION, STT_FILE = 2, 1, 3, 4


@dataclass(frozen=True)
class KSym:
    name: str
    value: int
    local: bool
    type: int
    file: str | None
    #: The FILE block a local belongs to (-1 for globals): locals of one object file.
    block: int
    index: int


def read_symbols(path: Path) -> list[KSym]:
    """The symbol table of any ELF64 file (vmlinux, a .ko), quickly."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if raw[:4] != b"\x7fELF" or raw[4] != 2:
        raise InputError(f"{path} is not a 64-bit ELF file")
    shoff = int.from_bytes(raw[40:48], "little")
    shnum = int.from_bytes(raw[60:62], "little")
    if shnum == 0 and shoff:
        shnum = _SHDR.unpack_from(raw, shoff)[5]
    headers = [_SHDR.unpack_from(raw, shoff + i * _SHDR.size) for i in range(shnum)]
    symtab = next((h for h in headers if h[1] == 2), None)
    if symtab is None:
        raise InputError(f"{path} has no symbol table (stripped?)")
    strtab = headers[symtab[6]]
    strings = raw[strtab[4]:strtab[4] + strtab[5]]
    out = []
    current_file = None
    block = -1
    data = raw[symtab[4]:symtab[4] + symtab[5]]
    for i, (st_name, info, _other, shndx, value, _size) in enumerate(_SYM.iter_unpack(data)):
        end = strings.find(b"\0", st_name)
        name = strings[st_name:end].decode("utf-8", "surrogateescape")
        typ, bind = info & 0xF, info >> 4
        if typ == STT_FILE:
            current_file = name
            block += 1
            continue
        if i == 0 or typ == STT_SECTION or shndx == 0 or not name:
            continue
        local = bind == 0
        out.append(KSym(name, value, local, typ, current_file if local else None,
                        block if local else -1, i))
    return out


def read_system_map(path: Path) -> list[tuple[int, str]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            try:
                out.append((int(parts[0], 16), parts[2]))
            except ValueError:
                continue
    return out


def read_symvers(path: Path) -> dict[str, tuple[int, str]]:
    """Module.symvers: symbol -> (crc, exporting object)."""
    out: dict[str, tuple[int, str]] = {}
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            try:
                out[parts[1]] = (int(parts[0], 16), parts[2])
            except ValueError:
                continue
    return out


class ObjectSymbols:
    """One target's symbols (vmlinux or a module) and the sympos of each."""

    def __init__(self, name: str, located: list[KSym], order: list[tuple[int, str]] | None,
                 by_address: bool) -> None:
        self.name = name
        self.located = located  # symbols with their FILE blocks
        self.by_address = by_address
        # kallsyms order of the running kernel: (key, name) where key sorts like kallsyms
        self.order = order
        self._by_name: dict[str, list[KSym]] = defaultdict(list)
        for s in located:
            self._by_name[s.name].append(s)
        self._blocks: dict[int, set[str]] = defaultdict(set)
        for s in located:
            if s.block >= 0:
                self._blocks[s.block].add(s.name)
        #: (source file, name) -> the running address the run-pre check placed a local of
        #: several namesakes at (runpre.py): which one an object of that file means
        self.known: dict[tuple[str | None, str], int] = {}

    def exists(self, name: str) -> bool:
        return name in self._by_name

    def sympos(self, name: str, *, local: bool, file: str | None,
               neighbours: set[str]) -> int:
        """Position of our `name` among its namesakes, as klp_find_object_symbol counts."""
        cands = self._by_name.get(name, [])
        if not cands:
            raise RefusedError(f"symbol {name} is not in {self.name} of the running kernel",
                               hint="was ORIG_CONFIG taken from the kernel this source built?")
        ours = self._ours(cands, local=local, file=file, neighbours=neighbours)
        key = (lambda s: (s.value, s.index)) if self.by_address else (lambda s: s.index)
        ranked = sorted(cands, key=key)
        if self.order is None:
            return 0 if len(ranked) == 1 else ranked.index(ours) + 1
        # The located symbols come from another build than the running kernel's list: the
        # rank carries over only if both have the same number of namesakes.
        running = [a for a, n in self.order if n == name]
        if len(running) != len(ranked):
            raise RefusedError(
                f"cannot place {name} unambiguously: the running kernel's System.map has "
                f"{count(len(running), 'symbol')} of that name, the pristine build "
                f"{len(ranked)}",
                hint="put the running kernel's unstripped vmlinux in ORIG_CONFIG")
        return 0 if len(running) == 1 else ranked.index(ours) + 1

    def _ours(self, cands: list[KSym], *, local: bool, file: str | None,
              neighbours: set[str]) -> KSym:
        if not local:
            globals_ = [c for c in cands if not c.local]
            if len(globals_) == 1:
                return globals_[0]
        pool = [c for c in cands if c.local == local] or cands
        if len(pool) == 1:
            return pool[0]
        named = [c for c in pool if c.file == file] if file else []
        if len(named) == 1:
            return named[0]
        if named:
            # Several FILE blocks of the same name (many core.c): the one whose locals are
            # most like the object's own.
            scored = sorted(named, key=lambda c: -len(self._blocks[c.block] & neighbours))
            if len(self._blocks[scored[0].block] & neighbours) > len(
                    self._blocks[scored[1].block] & neighbours):
                return scored[0]
        placed = self._placed(pool, local=local, file=file)
        if placed is not None:
            return placed
        raise RefusedError(f"cannot tell which of {len(pool)} symbols named {cands[0].name} "
                           f"in {self.name} is the one from {file or 'this object'}",
                           hint="put the running kernel's unstripped vmlinux in ORIG_CONFIG")

    def _placed(self, pool: list[KSym], *, local: bool, file: str | None) -> KSym | None:
        """The namesake the run-pre check found this file's code to use, when the symbols
        are the running kernel's own (their addresses are the ones matched)."""
        known = self.known.get((file, pool[0].name)) if local else None
        if known is None or self.order is not None:
            return None
        matched = [c for c in pool if c.value == known]
        return matched[0] if len(matched) == 1 else None


def vmlinux_symbols(orig: OrigConfig, pristine_vmlinux: Path | None) -> ObjectSymbols:
    """The running kernel's symbols: from ORIG_CONFIG's vmlinux when it has one, else the
    pristine build's vmlinux ordered by ORIG_CONFIG's System.map, else (the targeted mode
    links no vmlinux) System.map alone: a name it has once is placed, one it has several
    times is refused (without FILE symbols nothing says which is ours)."""
    vmlinux = orig.vmlinux
    if vmlinux is not None:
        located = read_symbols(vmlinux)
        _check_map_agrees(orig.system_map, vmlinux, located)
        return ObjectSymbols("vmlinux", located, None, by_address=True)
    system_map = read_system_map(orig.system_map)
    if pristine_vmlinux is None:
        return ObjectSymbols("vmlinux", _map_symbols(orig.system_map), None, by_address=True)
    return ObjectSymbols("vmlinux", read_symbols(pristine_vmlinux), system_map,
                         by_address=True)


def _map_symbols(system_map: Path) -> list[KSym]:
    """System.map's symbols, without the FILE blocks it does not have."""
    out = []
    for i, line in enumerate(system_map.read_text(errors="replace").splitlines()):
        parts = line.split()
        # Undefined, absolute and debugging entries are not in kallsyms' count; defined
        # weak symbols (W, V) are.
        if len(parts) < 3 or len(parts[1]) != 1 or parts[1] in "aAUNwv" \
                or not parts[1].isalpha():
            continue
        try:
            address = int(parts[0], 16)
        except ValueError:
            continue
        kind = STT_FUNC if parts[1] in "tT" else STT_OBJECT
        out.append(KSym(parts[2], address, parts[1].islower(), kind, None, -1, i))
    return out


def _check_map_agrees(system_map: Path, vmlinux: Path, located: list[KSym]) -> None:
    """ORIG_CONFIG's System.map and vmlinux must be the same build's: System.map is `nm -n
    vmlinux`, so a name that both have once is at the same address in both. A map of another
    kernel (or a random file) would otherwise mislead the sympos of the first update that
    uses it."""
    def unique(pairs: list[tuple[str, int]]) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, address in pairs:
            out[name] = address if name not in out else None  # namesakes: not compared
        return out

    in_map = unique([(n, a) for a, n in read_system_map(system_map)])
    in_vmlinux = unique([(s.name, s.value) for s in located])
    common = [n for n in in_map if n in in_vmlinux]
    if len(common) < len(in_map) // 2:
        raise InputError(f"{system_map} does not belong to {vmlinux}: only {len(common)} of "
                         f"its {len(in_map)} names are in the vmlinux's symbol table",
                         hint="copy the System.map of the same build as the vmlinux")
    for name in common:
        a, b = in_map[name], in_vmlinux[name]
        if a is not None and b is not None and a != b:
            raise InputError(f"{system_map} does not belong to {vmlinux}: {name} is at "
                             f"{a:#x} in one and {b:#x} in the other",
                             hint="copy the System.map of the same build as the vmlinux")


def module_symbols(name: str, ko: Path) -> ObjectSymbols:
    return ObjectSymbols(name, read_symbols(ko), None, by_address=False)


def running_vermagic(orig: OrigConfig) -> str | None:
    """The running kernel's vermagic (the string the module loader compares against): what
    import-kernel read from a shipped module, else ORIG_CONFIG's vmlinux's `vermagic`;
    None when neither is there."""
    recorded = (orig.imported() or {}).get("vermagic")
    if isinstance(recorded, str) and recorded:
        return recorded
    vmlinux = orig.vmlinux
    if vmlinux is None:
        return None
    raw = vmlinux.read_bytes()
    shoff = int.from_bytes(raw[40:48], "little")
    shnum = int.from_bytes(raw[60:62], "little")
    headers = [_SHDR.unpack_from(raw, shoff + i * _SHDR.size) for i in range(shnum)]
    for sym in read_symbols(vmlinux):
        if sym.name == "vermagic" and sym.local:
            for h in headers:
                addr, off, size = h[3], h[4], h[5]
                if h[1] != 8 and addr <= sym.value < addr + size:
                    start = off + sym.value - addr
                    return raw[start:raw.index(b"\0", start)].decode(errors="replace")
    return None
