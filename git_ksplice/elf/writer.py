"""An ELF64 writer for x86_64 relocatable objects (pyelftools only reads).

The caller hands over sections and symbols as model objects; every index is derived here:
section indices (with the `SHN_XINDEX` escape and a `.symtab_shndx` table once they reach
`SHN_LORESERVE`), one `.rela<name>` per section that has relocations (placed right after it,
as gcc does), the symbol table with all locals before the first global (`sh_info`), and the
string tables. Group sections get their member indices rewritten, `SHF_LINK_ORDER` sections
their `sh_link`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from git_ksplice.elf.model import (
    SHF_ALLOC,
    SHF_GROUP,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHN_LORESERVE,
    SHN_XINDEX,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    STT_SECTION,
    Section,
    Symbol,
)

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


class _StringTable:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.offsets: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        off = self.offsets.get(s)
        if off is None:
            off = len(self.data)
            self.data += s.encode("utf-8", "surrogateescape") + b"\0"
            self.offsets[s] = off
        return off


class _Header:
    __slots__ = ("addralign", "data", "entsize", "flags", "info", "link", "name", "size", "type")

    def __init__(self, name: str, type_: int, flags: int, data: bytes, *, size: int | None = None,
                 link: int = 0, info: int = 0, addralign: int = 1, entsize: int = 0) -> None:
        self.name, self.type, self.flags, self.data = name, type_, flags, data
        self.size = len(data) if size is None else size
        self.link, self.info, self.addralign, self.entsize = link, info, addralign, entsize


@dataclass
class _Numbering:
    """Every section's index in the output, decided before any header is written (group
    members and `sh_link`s refer to sections by index, possibly to later ones)."""

    #: Content sections, and the `.rela<name>` / `.klp.rela.<obj>.<name>` after each.
    sec_index: dict[Section, int]
    rela_of: dict[Section, int]
    klp_of: dict[tuple[Section, str], int]
    symtab: int
    strtab: int
    #: `.symtab_shndx`, present only when indices reach SHN_LORESERVE.
    shndx: int | None
    shstrtab: int
    total: int


def serialize(sections: Iterable[Section], symbols: Iterable[Symbol], *, e_flags: int = 0,
              osabi: int = 0) -> bytes:
    """Lay out a relocatable object holding `sections` and `symbols`.

    Symbols must include every symbol that a relocation refers to; the null symbol is added
    here. Locals keep their relative order (callers put each FILE symbol before its block).
    """
    sections = list(sections)
    symbols = [s for s in symbols]
    locals_ = [s for s in symbols if s.bind == STB_LOCAL]
    globals_ = [s for s in symbols if s.bind != STB_LOCAL]
    ordered = locals_ + globals_
    # Index of each symbol in .symtab (0 is the null symbol). Keyed by the objects, which
    # hash by identity: the writer must not change the caller's symbols (their `index` is
    # the input object's).
    sym_index = {s: i + 1 for i, s in enumerate(ordered)}
    num = _number_sections(sections)
    headers: list[_Header | None] = [None] * num.total
    for sec in sections:
        _section_headers(headers, sec, num, sym_index)
    _symbol_table(headers, ordered, len(locals_), num)
    return _lay_out(headers, num.shstrtab, e_flags, osabi)


def _number_sections(sections: list[Section]) -> _Numbering:
    """Each content section, then its relocation sections right after it (as gcc places
    them), then .symtab, .strtab, the .symtab_shndx escape if needed, and .shstrtab."""
    sec_index: dict[Section, int] = {}
    rela_of: dict[Section, int] = {}
    klp_of: dict[tuple[Section, str], int] = {}
    n = 1
    for sec in sections:
        sec_index[sec] = n
        n += 1
        if sec.relocs:
            rela_of[sec] = n
            n += 1
        for objname in sorted(sec.klp_relocs):
            if sec.klp_relocs[objname]:
                klp_of[(sec, objname)] = n
                n += 1
    symtab_i = n
    n_total = symtab_i + 3  # .symtab, .strtab, .shstrtab
    need_xindex = n_total >= SHN_LORESERVE
    if need_xindex:
        n_total += 1
    strtab_i = symtab_i + 1
    return _Numbering(sec_index, rela_of, klp_of, symtab_i, strtab_i,
                      strtab_i + 1 if need_xindex else None, n_total - 1, n_total)


def _section_headers(headers: list[_Header | None], sec: Section, num: _Numbering,
                     sym_index: dict[Symbol, int]) -> None:
    """The headers of one content section and of its relocation sections. A group's
    contents are rebuilt from the output indices of its members (and their relocations)."""
    i = num.sec_index[sec]
    link = info = 0
    data = sec.data
    if sec.type == SHT_GROUP:
        link = num.symtab
        if sec.group_signature is None or sec.group_signature not in sym_index:
            raise ValueError(f"group {sec.name} has no signature symbol in the output")
        info = sym_index[sec.group_signature]
        members = []
        for m in sec.group_members:
            if m in num.sec_index:
                members.append(num.sec_index[m])
                if m in num.rela_of:
                    members.append(num.rela_of[m])
        data = struct.pack(f"<{1 + len(members)}I", sec.group_flags, *members)
    elif sec.link_to is not None:
        link = num.sec_index[sec.link_to]
    headers[i] = _Header(sec.name, sec.type, sec.flags, b"" if sec.type == SHT_NOBITS else
                         data, size=sec.size if sec.type == SHT_NOBITS else len(data),
                         link=link, info=info, addralign=sec.addralign, entsize=sec.entsize)
    if sec in num.rela_of:
        flags = sec.rela_flags | SHF_INFO_LINK
        if sec.flags & SHF_GROUP:
            flags |= SHF_GROUP
        headers[num.rela_of[sec]] = _Header(".rela" + sec.name, SHT_RELA, flags,
                                            _relas(sec, sec.relocs, sym_index),
                                            link=num.symtab, info=i, addralign=8, entsize=24)
    for objname, relocs in sorted(sec.klp_relocs.items()):
        if (sec, objname) in num.klp_of:
            # Livepatch relocations: applied by livepatch when <objname> is loaded, not
            # by the module loader (SHF_RELA_LIVEPATCH), kept in memory (SHF_ALLOC).
            headers[num.klp_of[(sec, objname)]] = _Header(
                f".klp.rela.{objname}.{sec.name}", SHT_RELA,
                SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH,
                _relas(sec, relocs, sym_index), link=num.symtab, info=i, addralign=8,
                entsize=24)


def _symbol_table(headers: list[_Header | None], ordered: list[Symbol], n_locals: int,
                  num: _Numbering) -> None:
    """.symtab (locals first: `sh_info` is the index of the first global), .strtab, and
    .symtab_shndx holding the real section index of every symbol whose index does not fit
    in `st_shndx`."""
    strtab = _StringTable()
    symdata = bytearray(_SYM.size)
    shndx_words = [0]
    for sym in ordered:
        if sym.section is not None:
            shndx = num.sec_index.get(sym.section)
            if shndx is None:
                raise ValueError(f"symbol {sym.name!r} is defined in section "
                                 f"{sym.section.name!r} which is not written")
        else:
            shndx = sym.special_shndx
        name = "" if sym.type == STT_SECTION else sym.name
        if sym.section is not None and shndx >= SHN_LORESERVE:
            shndx_words.append(shndx)
            shndx = SHN_XINDEX
        else:
            shndx_words.append(0)
        symdata += _SYM.pack(strtab.add(name), sym.info, sym.other, shndx, sym.value, sym.size)
    headers[num.symtab] = _Header(".symtab", SHT_SYMTAB, 0, bytes(symdata), link=num.strtab,
                                  info=n_locals + 1, addralign=8, entsize=_SYM.size)
    if num.shndx is not None:
        headers[num.shndx] = _Header(".symtab_shndx", SHT_SYMTAB_SHNDX, 0,
                                     struct.pack(f"<{len(shndx_words)}I", *shndx_words),
                                     link=num.symtab, addralign=4, entsize=4)
    headers[num.strtab] = _Header(".strtab", SHT_STRTAB, 0, bytes(strtab.data))


def _lay_out(headers: list[_Header | None], shstrtab_i: int, e_flags: int, osabi: int
             ) -> bytes:
    """Name the sections (.shstrtab, last), then write the ELF header, the contents in
    index order, each aligned, and the section header table. Counts that do not fit the
    ELF header (`e_shnum`, `e_shstrndx`) go into section 0's header."""
    n_total = len(headers)
    shstrtab = _StringTable()
    names = [shstrtab.add(h.name) if h else 0 for h in headers[:-1]]
    names.append(shstrtab.add(".shstrtab"))
    headers[shstrtab_i] = _Header(".shstrtab", SHT_STRTAB, 0, bytes(shstrtab.data))

    out = bytearray(_EHDR.size)
    offsets = [0] * n_total
    for i, h in enumerate(headers):
        if h is None or h.type == SHT_NOBITS:
            continue
        align = max(h.addralign, 1)
        out += b"\0" * (-len(out) % align)
        offsets[i] = len(out)
        out += h.data
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    shnum = n_total
    for i, h in enumerate(headers):
        if h is None:
            out += _SHDR.pack(0, 0, 0, 0, 0, shnum if shnum >= SHN_LORESERVE else 0,
                              shstrtab_i if shstrtab_i >= SHN_LORESERVE else 0, 0, 0, 0)
            continue
        out += _SHDR.pack(names[i], h.type, h.flags, 0, offsets[i], h.size, h.link, h.info,
                          h.addralign, h.entsize)
    ident = b"\x7fELF" + bytes([2, 1, 1, osabi]) + b"\0" * 8
    out[: _EHDR.size] = _EHDR.pack(
        ident, 1, 62, 1, 0, 0, shoff, e_flags, _EHDR.size, 0, 0, _SHDR.size,
        0 if shnum >= SHN_LORESERVE else shnum,
        SHN_XINDEX if shstrtab_i >= SHN_LORESERVE else shstrtab_i,
    )
    return bytes(out)


def _relas(sec: Section, relocs: list, sym_index: dict[Symbol, int]) -> bytes:
    buf = bytearray()
    for r in relocs:
        try:
            si = sym_index[r.symbol]
        except KeyError:
            raise ValueError(f"relocation in {sec.name} refers to symbol {r.symbol.name!r} "
                             "which is not written") from None
        buf += _RELA.pack(r.offset, (si << 32) | r.type, r.addend)
    return bytes(buf)


def write_object(path: str | Path, sections: Iterable[Section], symbols: Iterable[Symbol], *,
                 e_flags: int = 0, osabi: int = 0) -> None:
    Path(path).write_bytes(serialize(sections, symbols, e_flags=e_flags, osabi=osabi))
