"""The in-memory model of an x86_64 relocatable ELF object.

Everything the differ and the writer need is held here with object references instead of
indices: a relocation points at a `Symbol`, a symbol at its `Section`. The writer re-derives
every index, so the differ can drop, add and reorder sections and symbols freely.

pyelftools reads the ELF and section headers (it copes with the `e_shnum == 0` /
`SHN_XINDEX` forms that objects with more than 65,280 sections use). The symbol and
relocation tables, which hold most of an object's entries, are decoded here with
`struct.iter_unpack`: building one pyelftools object per entry costs seconds on a large
kernel object, and the diff of a 400 KB object must take well under one.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from git_ksplice.errors import InputError
from git_ksplice.files import open_fd, read_bounded

if TYPE_CHECKING:
    from git_ksplice.elf.sections import Kind
    from git_ksplice.elf.units import Target, Unit

# ELF constants used across the engine (values from the System V ABI and the x86_64 psABI).
ET_REL = 1
EM_X86_64 = 62

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9
SHT_GROUP = 17
SHT_SYMTAB_SHNDX = 18

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
SHF_LINK_ORDER = 0x80
SHF_GROUP = 0x200
SHF_RELA_LIVEPATCH = 0x00100000

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
SHN_LIVEPATCH = 0xFF20

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4

R_X86_64_NONE = 0
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_PC64 = 24

RELOC_NAMES = {
    0: "R_X86_64_NONE",
    1: "R_X86_64_64",
    2: "R_X86_64_PC32",
    4: "R_X86_64_PLT32",
    9: "R_X86_64_GOTPCREL",
    10: "R_X86_64_32",
    11: "R_X86_64_32S",
    24: "R_X86_64_PC64",
    41: "R_X86_64_GOTPCRELX",
    42: "R_X86_64_REX_GOTPCRELX",
}
#: Bytes patched by each relocation type the kernel's module loader supports on x86_64.
RELOC_SIZES = {0: 0, 1: 8, 2: 4, 4: 4, 10: 4, 11: 4, 24: 8}
PC_RELATIVE = frozenset({R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64})

BIND_NAMES = {STB_LOCAL: "local", STB_GLOBAL: "global", STB_WEAK: "weak"}


@dataclass(eq=False)
class Symbol:
    name: str
    value: int
    size: int
    bind: int
    type: int
    other: int = 0
    section: Section | None = None
    #: For section indices without a section: SHN_UNDEF, SHN_ABS or SHN_COMMON.
    special_shndx: int = SHN_UNDEF
    #: The STT_FILE symbol that opens the block a local symbol belongs to.
    file: str | None = None
    index: int = 0

    # What the differ learns about the symbol, set on the object it belongs to. ORIG and
    # PATCHED are parsed separately, so each side's symbols carry their own; all of them are
    # cleared when an `ObjectIndex` is built over the object (`ElfObject.clear_diff_state`).

    #: The same symbol in the other object: set on both by `Correlation` (correlate.py).
    twin: Symbol | None = field(default=None, repr=False)
    #: The unit whose bytes this FUNC/OBJECT symbol names (aliases share one): `ObjectIndex`.
    unit: Unit | None = field(default=None, repr=False)
    #: The symbol defined for it in the diff object, when it is copied (extract.py).
    copy: Symbol | None = field(default=None, repr=False)

    @property
    def defined(self) -> bool:
        return self.section is not None

    @property
    def is_local(self) -> bool:
        return self.bind == STB_LOCAL

    @property
    def info(self) -> int:
        return (self.bind << 4) | self.type

    def __repr__(self) -> str:
        where = self.section.name if self.section else "UND"
        return f"<Symbol {self.name!r} {where}+{self.value:#x} size {self.size}>"


@dataclass(eq=False)
class Reloc:
    offset: int
    type: int
    symbol: Symbol
    addend: int
    #: Where the relocation lands, resolved once by `ObjectIndex.target` (units.py).
    target: Target | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        kind = RELOC_NAMES.get(self.type, str(self.type))
        return f"<Reloc +{self.offset:#x} {kind} {self.symbol.name}{self.addend:+#x}>"


@dataclass(eq=False)
class Section:
    name: str
    type: int
    flags: int
    data: bytes
    size: int
    addralign: int = 1
    entsize: int = 0
    index: int = 0
    #: Relocations that apply to this section (read from, and written to, `.rela<name>`).
    relocs: list[Reloc] = field(default_factory=list)
    #: Flags of the RELA section that carried the relocations (kept by the writer).
    rela_flags: int = SHF_INFO_LINK
    #: Livepatch relocations by object name (`.klp.rela.<object>.<this section>`).
    klp_relocs: dict[str, list[Reloc]] = field(default_factory=dict)
    #: Defined symbols of this section, sorted by value (section symbols excluded).
    symbols: list[Symbol] = field(default_factory=list)
    section_symbol: Symbol | None = None
    #: SHF_LINK_ORDER target.
    link_to: Section | None = None
    #: For SHT_GROUP sections: the signature symbol, group flags and member sections.
    group_signature: Symbol | None = None
    group_flags: int = 0
    group_members: list[Section] = field(default_factory=list)
    _starts: list[int] | None = field(default=None, repr=False)
    _max_size: int = field(default=0, repr=False)

    # What the differ learns about the section (see `Symbol.twin`), cleared like a symbol's.

    #: What the section holds (sections.py's `classify`): set by `ObjectIndex`.
    kind: Kind | None = field(default=None, repr=False)
    #: For a section without FUNC/OBJECT symbols, its units in offset order: `ObjectIndex`.
    anon_units: list[Unit] | None = field(default=None, repr=False)
    #: For a PATCHED section, the ORIG section it corresponds to (`Correlation`). One-way:
    #: several PATCHED sections can correspond to one ORIG section (`.text` after a split).
    twin: Section | None = field(default=None, repr=False)
    #: For a PATCHED special section, the (offset, size) spans of the entries the update
    #: keeps: set by the differ's table reduction (diff.py), read by extraction.
    kept_entries: list[tuple[int, int]] | None = field(default=None, repr=False)
    #: The section of the diff object its copied pieces go to (extract.py).
    copy: Section | None = field(default=None, repr=False)

    @property
    def is_text(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    def symbol_at(self, offset: int) -> Symbol | None:
        """The FUNC or OBJECT symbol whose bytes contain `offset` (a zero-size one at it);
        failing that, another symbol there (a NOTYPE label)."""
        if self._starts is None:
            self.symbols.sort(key=lambda s: (s.value, -s.size))
            self._starts = [s.value for s in self.symbols]
            self._max_size = max((s.size for s in self.symbols), default=0)
        i = bisect.bisect_right(self._starts, offset) - 1
        fallback = None
        # Symbols may overlap (aliases, a FUNC inside a larger one): walk back over every
        # symbol that starts early enough to still cover `offset`.
        while i >= 0 and self._starts[i] + self._max_size >= offset:
            sym = self.symbols[i]
            if sym.value <= offset < sym.value + sym.size or (
                sym.size == 0 and sym.value == offset
            ):
                if sym.type in (STT_FUNC, STT_OBJECT):
                    return sym
                fallback = fallback or sym
            i -= 1
        return fallback

    def string_at(self, offset: int) -> bytes:
        end = self.data.find(b"\0", offset)
        return self.data[offset : end if end >= 0 else len(self.data)]

    def __repr__(self) -> str:
        return f"<Section {self.name!r} size {self.size}>"


@dataclass(eq=False)
class ElfObject:
    path: str
    sections: list[Section]
    symbols: list[Symbol]
    e_flags: int = 0
    e_ident_osabi: int = 0

    def section(self, name: str) -> Section | None:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def clear_diff_state(self) -> None:
        """Forget what an earlier diff of this object recorded on its symbols, sections and
        relocations, so that a new diff starts from the object as it was read."""
        for sym in self.symbols:
            sym.twin = sym.unit = sym.copy = None
        for sec in self.sections:
            sec.kind = None
            sec.anon_units = None
            sec.twin = None
            sec.kept_entries = None
            sec.copy = None
            for r in sec.relocs:
                r.target = None
            for sym in sec.symbols:
                sym.twin = sym.unit = sym.copy = None

    def duplicate(self) -> ElfObject:
        """A copy of the object that shares no symbol, section or relocation with it (the
        contents bytes are shared; they are never modified), and no diff state."""
        secs = {s: Section(s.name, s.type, s.flags, s.data, s.size, s.addralign, s.entsize,
                           s.index, rela_flags=s.rela_flags, group_flags=s.group_flags)
                for s in self.sections}
        syms = {y: Symbol(y.name, y.value, y.size, y.bind, y.type, y.other,
                          secs[y.section] if y.section is not None else None,
                          y.special_shndx, y.file, y.index)
                for y in self.symbols}

        def relocs(rs: list[Reloc]) -> list[Reloc]:
            return [Reloc(r.offset, r.type, syms[r.symbol], r.addend) for r in rs]

        for old, new in secs.items():
            new.relocs = relocs(old.relocs)
            new.klp_relocs = {name: relocs(rs) for name, rs in old.klp_relocs.items()}
            new.symbols = [syms[y] for y in old.symbols]
            new.section_symbol = syms[old.section_symbol] if old.section_symbol else None
            new.link_to = secs[old.link_to] if old.link_to is not None else None
            new.group_signature = (syms[old.group_signature]
                                   if old.group_signature is not None else None)
            new.group_members = [secs[m] for m in old.group_members]
        return ElfObject(self.path, list(secs.values()), list(syms.values()), self.e_flags,
                         self.e_ident_osabi)


def empty_object(path: str) -> ElfObject:
    """An object with nothing in it: the "before" of a source file a change adds."""
    return ElfObject(path=path, sections=[], symbols=[Symbol("", 0, 0, STB_LOCAL, STT_NOTYPE)])


_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


def read_object(path: str | Path) -> ElfObject:
    """Read an x86_64 ELF64 relocatable object, or raise InputError saying what is wrong."""
    path = str(path)
    raw = read_bounded(open_fd(path, path), MAX_OBJECT_BYTES, path,
                             "give the .o files kbuild compiled")
    if raw[:4] != b"\x7fELF":
        raise InputError(f"{path} is not an ELF object (no ELF magic)")
    try:
        return _parse(path, raw)
    except (ELFError, struct.error, IndexError, ValueError) as e:
        raise InputError(f"{path} is a malformed ELF object: {e}") from None


#: No kernel object is near this large (the largest of Linux 6.1's are a few tens of MB).
MAX_OBJECT_BYTES = 1 << 30
#: Nor is any .bss this large, nor an alignment (pages are 4 KiB, huge pages 2 MiB): a
#: header claiming more is damaged, and would make the differ allocate what it claims.
MAX_NOBITS_BYTES = 256 << 20
MAX_ALIGN = 1 << 24


def _check_section_header(name: str, type_: int, h) -> None:  # type: ignore[no-untyped-def]
    align = h["sh_addralign"]
    if align > MAX_ALIGN or align & (align - 1):
        raise ValueError(f"section {name} has alignment {align:#x}, which is no power of two "
                         "up to 16 MiB")
    if type_ == SHT_NOBITS and h["sh_size"] > MAX_NOBITS_BYTES:
        raise ValueError(f"section {name} claims {h['sh_size']:#x} bytes of .bss")


def _parse(path: str, raw: bytes) -> ElfObject:
    """Build the model of the object in `raw`, in the order its parts depend on each other:
    sections first (symbols point into them), then symbols (relocations and groups name
    them), then relocations, groups and SHF_LINK_ORDER links."""
    import io

    elf = ELFFile(io.BytesIO(raw))
    _check_elf_header(path, elf)
    reader = _Reader(path, raw, elf)
    reader.read_sections()
    symbols = reader.read_symbols()
    reader.read_relocations(symbols)
    reader.link_sections(symbols)
    return ElfObject(
        path=path,
        sections=[s for s in reader.sections if s is not None],
        symbols=symbols,
        e_flags=elf["e_flags"],
        e_ident_osabi=raw[7],
    )


def _check_elf_header(path: str, elf: ELFFile) -> None:
    """Only what the differ and the writer understand: x86_64 ELF64 relocatable objects."""
    if elf.elfclass != 64 or not elf.little_endian:
        raise InputError(f"{path} is not a 64-bit little-endian ELF object")
    if elf["e_type"] != "ET_REL":
        raise InputError(f"{path} is not a relocatable object (type {elf['e_type']}); "
                         "pass the .o files kbuild compiles, not linked images")
    if elf["e_machine"] != "EM_X86_64":
        raise InputError(f"{path} is for {elf['e_machine']}; only x86_64 objects are supported")


class _Reader:
    """The state of one parse: the section headers (read by pyelftools, which copes with
    the extended-numbering forms), and the model sections built from them, by header index
    (None for the headers that are not modelled as sections: the symbol table, its string
    table and index escape, relocation sections, the section name table)."""

    def __init__(self, path: str, raw: bytes, elf: ELFFile) -> None:
        self.path = path
        self.raw = raw
        self.headers: list = []
        self.names: list[str] = []
        for sec in elf.iter_sections():
            self.headers.append(sec.header)
            self.names.append(sec.name)
        symtab_indices = [i for i, h in enumerate(self.headers) if h["sh_type"] == "SHT_SYMTAB"]
        if len(symtab_indices) != 1:
            raise InputError(f"{path} has {len(symtab_indices)} symbol tables; expected one "
                             "(was it stripped with --strip-all?)")
        self.symtab_index = symtab_indices[0]
        shstrndx = (elf["e_shstrndx"] if elf["e_shstrndx"] != SHN_XINDEX
                    else self.headers[0]["sh_link"])
        #: String tables the model rebuilds rather than keeps: section names, symbol names.
        self.skip_strtabs = {shstrndx, self.headers[self.symtab_index]["sh_link"]}
        self.sections: list[Section | None] = [None] * len(self.headers)
        self.shndx_table: tuple[int, ...] = ()
        self.rela_headers: list = []
        self.group_headers: list = []

    def content(self, h) -> bytes:  # type: ignore[no-untyped-def]
        if h["sh_type"] == "SHT_NOBITS":
            return b""
        off, size = h["sh_offset"], h["sh_size"]
        if off + size > len(self.raw):
            raise ValueError(f"section at {off:#x}+{size:#x} runs past the end of the file")
        return self.raw[off : off + size]

    def read_sections(self) -> None:
        """A `Section` for every header that holds contents; relocation and group headers
        are set aside until the symbols they refer to exist."""
        for i, h in enumerate(self.headers):
            t = _sh_type(h["sh_type"])
            if t in (SHT_NULL, SHT_SYMTAB):
                continue
            if t == SHT_SYMTAB_SHNDX:
                self.shndx_table = tuple(x[0] for x in struct.iter_unpack("<I", self.content(h)))
                continue
            if t == SHT_REL:
                raise InputError(f"{self.path}: REL relocation section {self.names[i]} "
                                 "(x86_64 uses RELA)")
            if t == SHT_RELA:
                self.rela_headers.append((i, h))
                continue
            if t == SHT_STRTAB and i in self.skip_strtabs:
                continue
            _check_section_header(self.names[i], t, h)
            self.sections[i] = Section(
                name=self.names[i],
                type=t,
                flags=h["sh_flags"],
                data=self.content(h),
                size=h["sh_size"],
                addralign=h["sh_addralign"],
                entsize=h["sh_entsize"],
                index=i,
            )
            if t == SHT_GROUP:
                self.group_headers.append((i, h))

    def read_symbols(self) -> list[Symbol]:
        """Every symbol table entry, in order, attached to its section (the first SECTION
        symbol of a section is its `section_symbol`, others go to `Section.symbols`), and
        each local tagged with the FILE symbol that opens its block."""
        sh = self.headers[self.symtab_index]
        strtab = self.content(self.headers[sh["sh_link"]])
        symbols: list[Symbol] = []
        current_file: str | None = None
        for n, (st_name, st_info, st_other, st_shndx, st_value, st_size) in enumerate(
            _SYM.iter_unpack(self.content(sh))
        ):
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name:end].decode("utf-8", "surrogateescape")
            bind, typ = st_info >> 4, st_info & 0xF
            sym = Symbol(name, st_value, st_size, bind, typ, st_other, index=n)
            self._place_symbol(sym, st_shndx, n)
            if typ == STT_FILE:
                current_file = name
            if bind == STB_LOCAL:
                sym.file = current_file
            symbols.append(sym)
            if sym.section is not None:
                if typ == STT_SECTION:
                    if sym.section.section_symbol is None:
                        sym.section.section_symbol = sym
                    if not sym.name:
                        sym.name = sym.section.name
                else:
                    sym.section.symbols.append(sym)
        return symbols

    def _place_symbol(self, sym: Symbol, st_shndx: int, n: int) -> None:
        """Resolve the symbol's section index (through .symtab_shndx when escaped): a section
        of the model, or a special index (undefined, absolute, common)."""
        shndx = st_shndx
        if shndx == SHN_XINDEX:
            shndx = self.shndx_table[n]
        if shndx == SHN_UNDEF or (shndx >= SHN_LORESERVE and st_shndx != SHN_XINDEX):
            sym.special_shndx = shndx
            return
        sec = self.sections[shndx] if shndx < len(self.sections) else None
        if sec is None:
            raise ValueError(f"symbol {sym.name!r} refers to section {shndx} which has no data")
        sym.section = sec
        if sym.type in (STT_FUNC, STT_OBJECT) and sym.value + sym.size > sec.size:
            raise ValueError(f"symbol {sym.name!r} ({sym.value:#x}+{sym.size:#x}) runs past "
                             f"the end of {sec.name} ({sec.size:#x} bytes)")

    def read_relocations(self, symbols: list[Symbol]) -> None:
        """Each RELA section's entries onto the section they apply to (`Section.relocs`, or
        `Section.klp_relocs` for livepatch relocations), sorted by offset."""
        sections = self.sections
        for i, h in self.rela_headers:
            target = sections[h["sh_info"]] if h["sh_info"] < len(sections) else None
            if target is None:
                # Relocations for sections we do not model (debug info is not relocated here).
                continue
            if h["sh_link"] != self.symtab_index:
                raise ValueError(f"{self.names[i]} is linked to a symbol table we do not know")
            relocs = target.relocs
            if h["sh_flags"] & SHF_RELA_LIVEPATCH and self.names[i].startswith(".klp.rela."):
                objname = self.names[i][len(".klp.rela."):].split(".", 1)[0]
                relocs = target.klp_relocs.setdefault(objname, [])
            for off, info, addend in _RELA.iter_unpack(self.content(h)):
                if target.type != SHT_NOBITS and off + RELOC_SIZES.get(info & 0xFFFFFFFF, 1) > \
                        target.size:
                    raise ValueError(f"{self.names[i]} relocates offset {off:#x}, past the end "
                                     f"of {target.name} ({target.size:#x} bytes)")
                relocs.append(Reloc(off, info & 0xFFFFFFFF, symbols[info >> 32], addend))
            if relocs is target.relocs:
                target.rela_flags = h["sh_flags"]
            relocs.sort(key=lambda r: r.offset)

    def link_sections(self, symbols: list[Symbol]) -> None:
        """Group sections get their flags, members and signature symbol; SHF_LINK_ORDER
        sections the section they describe."""
        sections = self.sections
        for i, h in self.group_headers:
            g = sections[i]
            assert g is not None
            words = [w[0] for w in struct.iter_unpack("<I", g.data)]
            g.group_flags = words[0] if words else 0
            g.group_members = [sections[w] for w in words[1:] if sections[w] is not None]
            g.group_signature = symbols[h["sh_info"]]
        for i, h in enumerate(self.headers):
            sec = sections[i]
            if sec is not None and sec.flags & SHF_LINK_ORDER and h["sh_link"]:
                sec.link_to = sections[h["sh_link"]]


_SH_TYPES = {
    "SHT_NULL": SHT_NULL,
    "SHT_PROGBITS": SHT_PROGBITS,
    "SHT_SYMTAB": SHT_SYMTAB,
    "SHT_STRTAB": SHT_STRTAB,
    "SHT_RELA": SHT_RELA,
    "SHT_NOBITS": SHT_NOBITS,
    "SHT_REL": SHT_REL,
    "SHT_GROUP": SHT_GROUP,
    "SHT_SYMTAB_SHNDX": SHT_SYMTAB_SHNDX,
    "SHT_NOTE": 7,
    "SHT_INIT_ARRAY": 14,
    "SHT_FINI_ARRAY": 15,
    "SHT_PREINIT_ARRAY": 16,
    "SHT_X86_64_UNWIND": 0x70000001,
    "SHT_GNU_ATTRIBUTES": 0x6FFFFFF5,
}


def _sh_type(value: object) -> int:
    if isinstance(value, int):
        return value
    try:
        return _SH_TYPES[str(value)]
    except KeyError:
        raise ValueError(f"unsupported section type {value}") from None
