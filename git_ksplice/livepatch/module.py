"""The livepatch module of an update: `ksplice_<ID>.ko`, built with kbuild, then finished.

Phase 1, before the link: each diff object gets a global alias for every function it
replaces (`__ksplice_new_<n>`, what the generated `klp_func` table points at), and every
reference the module loader cannot resolve (a local of the running kernel, or a global it
does not export) is pointed at a placeholder, a weak undefined symbol `__ksplice_klp_<n>`
that stands for one `(object, name, sympos)`. A C file with one `klp_object` per target and
one `klp_func` per replaced function is generated, and kbuild builds the module against the
pristine tree: vermagic, `__versions` and modpost are the running kernel's.

The patch author's callbacks (elf/author.py) get global aliases too (`__ksplice_cb_<n>`),
and each target's `klp_callbacks` are generated functions that call them in order, with
Ksplice's argument-less hooks adapted and consented data changes written and restored
(`_callback_source`). On kernels before 6.3 a module target's callbacks also clear the
module's livepatch relocations when it goes, so that it can load again (reload.py).

Phase 2, after the link (linkers keep neither `SHN_LIVEPATCH` symbols nor two relocation
sections for one section): every relocation against a placeholder moves to
`.klp.rela.<object>.<section>`, against a `.klp.sym.<object>.<name>,<sympos>` symbol with
`st_shndx = SHN_LIVEPATCH`; the placeholders disappear. Then the module is checked the way
the kernel's loader will check it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.elf.diff import DiffResult
from git_ksplice.elf.extract import DiffObject
from git_ksplice.elf.model import (
    RELOC_SIZES,
    SHN_UNDEF,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    ElfObject,
    Reloc,
    Symbol,
    read_object,
)
from git_ksplice.elf.writer import serialize, write_object
from git_ksplice.errors import RefusedError
from git_ksplice.kbuild import build_external_module, module_file
from git_ksplice.livepatch import reload
from git_ksplice.livepatch.symbols import (
    ObjectSymbols,
    module_symbols,
    read_symvers,
    running_vermagic,
    vmlinux_symbols,
)
from git_ksplice.origconfig import OrigConfig

SHN_LIVEPATCH = 0xFF20
_PLACEHOLDER = "__ksplice_klp_"
_ALIAS = "__ksplice_new_"
_CALLBACK_ALIAS = "__ksplice_cb_"
_SLOTS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
_OBJNAME = re.compile(r"^[^.]{1,55}$")


@dataclass
class PatchedObject:
    """One changed object of the update."""

    target: str  # vmlinux or a module name
    path: str  # the object, relative to the tree
    result: DiffResult
    pristine: Path  # its pristine build


@dataclass
class KlpFunc:
    target: str
    old_name: str
    alias: str
    sympos: int


@dataclass
class KlpCallback:
    target: str
    slot: str  # a klp_callbacks member, or fail_patch
    alias: str
    signature: str  # klp, void or int (sections.RecordSpec)
    function: str
    macro: str


@dataclass
class KlpDataChange:
    target: str
    name: str
    #: how the generated C names the running kernel's variable: a placeholder (a klp
    #: relocation) or, for an exported one, its own name
    symbol: str
    value: bytes


@dataclass
class ModuleBuild:
    name: str
    ko: Path
    funcs: list[KlpFunc] = field(default_factory=list)
    callbacks: list[KlpCallback] = field(default_factory=list)
    data_changes: list[KlpDataChange] = field(default_factory=list)
    klp_relocations: int = 0
    vermagic: str = ""
    #: the objects (vmlinux, modules) the klp relocations resolve against
    klp_objects: set[str] = field(default_factory=set)
    #: what the kernel will do with the module that users would not expect
    warnings: list[str] = field(default_factory=list)
    #: the hash it was signed with (git_ksplice.livepatch.signing); None: unsigned
    signed: str | None = None


class _Resolver:
    """Where each external reference of the new code goes: a normal relocation the module
    loader resolves (exported symbols, symbols the update itself defines), or a klp
    relocation to (object, name, sympos)."""

    def __init__(self, tree: Path, orig: OrigConfig, objects: list[PatchedObject],
                 module_image: Callable[[str], Path | None],
                 running_addresses: dict[str, dict[tuple[str | None, str], int]] | None = None
                 ) -> None:
        self.running_addresses = running_addresses or {}
        self.tree = tree
        self.orig = orig
        self.module_image = module_image
        self.exports = read_symvers(tree / "Module.symvers")
        self._tables: dict[str, ObjectSymbols] = {}
        self.defined_here: set[str] = set()
        for po in objects:
            out = po.result.output
            if out is None:
                continue
            for s in out.symbols:
                if s.section is not None and not s.is_local and s.type != STT_FILE:
                    self.defined_here.add(s.name)

    def table(self, objname: str) -> ObjectSymbols:
        t = self._tables.get(objname)
        if t is None:
            if objname == "vmlinux":
                pristine = self.tree / "vmlinux"
                t = vmlinux_symbols(self.orig, pristine if pristine.exists() else None)
            else:
                ko = self.module_image(objname)
                if ko is None:
                    raise RefusedError(f"module {objname} is not built by this "
                                       "configuration")
                t = module_symbols(objname, ko)
            t.known = self.running_addresses.get(objname, {})
            self._tables[objname] = t
        return t

    def klp_target(self, sym: Symbol, target: str, file: str | None,
                   neighbours: set[str]) -> tuple[str, str, int] | None:
        """(object, name, sympos) for a klp relocation, or None for a normal one."""
        if sym.is_local:
            return target, sym.name, self.table(target).sympos(
                sym.name, local=True, file=file, neighbours=neighbours)
        if sym.name in self.defined_here:
            return None
        export = self.exports.get(sym.name)
        if export is not None:
            owner = export[1]
            if owner == "vmlinux":
                return None
            owner = Path(owner).name.replace("-", "_")
            return owner, sym.name, self.table(owner).sympos(
                sym.name, local=False, file=None, neighbours=set())
        table = self.table(target)
        if not table.exists(sym.name):
            if sym.bind == STB_WEAK:
                return None  # weak and undefined in the running kernel too: stays 0
            if target != "vmlinux" and self.table("vmlinux").exists(sym.name):
                table = self.table("vmlinux")
                target = "vmlinux"
            else:
                raise RefusedError(f"{sym.name} is neither exported nor defined in {target} "
                                   "of the running kernel")
        return target, sym.name, table.sympos(sym.name, local=False, file=None,
                                              neighbours=set())


def _local_names(obj: ElfObject) -> set[str]:
    return {s.name for s in obj.symbols if s.is_local and s.defined
            and s.type in (STT_FUNC, STT_OBJECT)}


@dataclass
class ModuleRequest:
    """What the livepatch module of one update is built from."""

    update_id: str
    objects: list[PatchedObject]
    tree: Path  # the pristine tree, reverted: the module is built against it
    orig: OrigConfig
    work: Path  # a directory of the module's own (emptied first)
    make_args: list[str]
    jobs: int
    log: Path
    description: str
    #: module name -> the running kernel's image of it (its symbol table is what sympos
    #: counts in); None: the pristine tree's built .ko
    module_image: Callable[[str], Path | None] | None = None
    #: target -> (source file, name) -> the running address the run-pre check placed a
    #: local of several namesakes at (livepatch/runpre.py)
    running_addresses: dict[str, dict[tuple[str | None, str], int]] = field(
        default_factory=dict)


@dataclass
class _Links:
    """What phase 1 decides across all objects: the functions the module replaces and the
    placeholder standing for each (object, name, sympos) the loader cannot resolve."""

    funcs: list[KlpFunc] = field(default_factory=list)
    callbacks: list[KlpCallback] = field(default_factory=list)
    data_changes: list[KlpDataChange] = field(default_factory=list)
    placeholders: dict[tuple[str, str, int], Symbol] = field(default_factory=dict)
    #: the symbol type of each placeholder's target (a .klp.sym keeps it)
    types: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def placeholder(self, where: tuple[str, str, int], sym_type: int) -> Symbol:
        ph = self.placeholders.get(where)
        if ph is None:
            ph = Symbol(f"{_PLACEHOLDER}{len(self.placeholders)}", 0, 0, STB_WEAK,
                        STT_NOTYPE, special_shndx=SHN_UNDEF)
            self.placeholders[where] = ph
            self.types[where] = sym_type
        return ph


def build_module(req: ModuleRequest) -> ModuleBuild:
    """The update's livepatch module: phase 1 on each diff object, the generated C, kbuild,
    phase 2, and the loader's checks."""
    name = f"ksplice_{req.update_id}"
    shutil.rmtree(req.work, ignore_errors=True)
    req.work.mkdir(parents=True)
    resolver = _Resolver(req.tree, req.orig, req.objects,
                         req.module_image or (lambda name: module_file(req.tree, name)),
                         req.running_addresses)
    links = _Links()
    shipped = [_ship_object(n, po, resolver, links, req.work)
               for n, po in enumerate(req.objects)]
    if not (links.funcs or links.callbacks or links.data_changes
            or any(po.result.new for po in req.objects)):
        raise RefusedError("the update replaces no traceable function")
    clearing = _relocation_clearing(req.tree, links)
    (req.work / "ksplice_patch.c").write_text(_patch_source(name, links, req.description,
                                                            clearing))
    (req.work / "Kbuild").write_text(f"obj-m := {name}.o\n{name}-y := ksplice_patch.o "
                                     + " ".join(shipped) + "\n")
    build_external_module(req.tree, req.work, req.make_args, req.jobs, req.log,
                          what="the livepatch module")
    ko = req.work / f"{name}.ko"
    klp_relocations = _finish(ko, {p.name: w for w, p in links.placeholders.items()},
                              links.types)
    build = ModuleBuild(name, ko, links.funcs, links.callbacks, links.data_changes,
                        klp_relocations,
                        vermagic=_modinfo(ko).get("vermagic", ""),
                        klp_objects={w[0] for w in links.placeholders})
    check_module(ko)
    return build


def _ship_object(n: int, po: PatchedObject, resolver: _Resolver, links: _Links,
                 work: Path) -> str:
    """Phase 1 on one diff object: an alias for each function it replaces, placeholders for
    what the loader cannot resolve; written as `d<n>.o_shipped` for kbuild. Returns the
    object's name in the Kbuild file."""
    out = po.result.output
    assert out is not None
    pristine = read_object(po.pristine) if po.pristine.exists() else None
    neighbours = _local_names(pristine) if pristine is not None else set()
    file = next((s.name for s in out.symbols if s.type == STT_FILE), None)
    symbols = list(out.symbols) + _aliases(po, out, resolver, links, file, neighbours,
                                           new_object=pristine is None)
    symbols += _callback_aliases(po, out, links)
    _data_changes(po, resolver, links, file, neighbours)
    for sec in out.sections:
        for i, r in enumerate(sec.relocs):
            if r.symbol.section is not None or r.symbol.type == STT_FILE:
                continue
            where = resolver.klp_target(r.symbol, po.target, file, neighbours)
            if where is not None:
                sec.relocs[i] = Reloc(r.offset, r.type, links.placeholder(where, r.symbol.type),
                                      r.addend)
    # Undefined symbols nothing refers to any more (their references became placeholders)
    # go. Symbols compare by identity, not name: a placeholder stands for one object.
    used = {r.symbol for sec in out.sections for r in sec.relocs}
    symbols = [s for s in symbols if s.section is not None or s.type == STT_FILE
               or s in used]
    symbols += [p for p in links.placeholders.values() if p in used]
    (work / f"d{n}.o_shipped").write_bytes(serialize(out.sections, symbols))
    (work / f".d{n}.o.cmd").write_text("")
    return f"d{n}.o"


def _aliases(po: PatchedObject, out: DiffObject, resolver: _Resolver, links: _Links,
             file: str | None, neighbours: set[str], *, new_object: bool) -> list[Symbol]:
    """A global alias (what the `klp_func` table points at) for each local function the
    object replaces, each recorded with its sympos in the running kernel."""
    replaced = {f.original for f in po.result.changed}
    aliases = []
    for s in out.symbols:
        if s.section is not None and s.type == STT_FUNC and s.is_local and s.name in replaced:
            alias = f"{_ALIAS}{len(links.funcs)}"
            aliases.append(Symbol(alias, s.value, s.size, STB_GLOBAL, STT_FUNC,
                                  section=s.section))
            sympos = resolver.table(po.target).sympos(
                s.name, local=new_object or s.name in neighbours, file=file,
                neighbours=neighbours)
            links.funcs.append(KlpFunc(po.target, s.name, alias, sympos))
    return aliases


def _callback_aliases(po: PatchedObject, out: DiffObject, links: _Links) -> list[Symbol]:
    """A global alias for each callback function of the object, for the generated C."""
    aliases = []
    for cb in po.result.callbacks:
        fn = next((s for s in out.symbols if s.name == cb.function and s.section is not None
                   and s.type == STT_FUNC), None)
        if fn is None:
            raise RefusedError(f"the callback {cb.function} ({cb.macro}) is not in the diff "
                               f"object of {po.path}")
        alias = f"{_CALLBACK_ALIAS}{len(links.callbacks)}"
        aliases.append(Symbol(alias, fn.value, fn.size, STB_GLOBAL, STT_FUNC,
                              section=fn.section))
        links.callbacks.append(KlpCallback(po.target, cb.slot, alias, cb.signature,
                                           cb.function, cb.macro))
    return aliases


def _data_changes(po: PatchedObject, resolver: _Resolver, links: _Links, file: str | None,
                  neighbours: set[str]) -> None:
    """Where each data change the update applies lands in the running kernel: through a
    placeholder (a klp relocation, resolved in phase 2), or by name when exported."""
    for dc in po.result.data_changes:
        if dc.mode != "apply":
            continue
        sym = Symbol(dc.name, 0, dc.size, STB_LOCAL if dc.is_local else STB_GLOBAL,
                     STT_OBJECT, special_shndx=SHN_UNDEF)
        where = resolver.klp_target(sym, po.target, file, neighbours)
        name = dc.name if where is None else links.placeholder(where, STT_OBJECT).name
        links.data_changes.append(KlpDataChange(po.target, dc.name, name, dc.value))


def check_against_running(module: ModuleBuild, orig: OrigConfig) -> None:
    """Refuse a module the running kernel would refuse: another vermagic, or CRCs of the
    symbols it uses that differ from the running kernel's Module.symvers."""
    running = running_vermagic(orig)
    if running is not None and running != module.vermagic:
        raise RefusedError(f"the module's vermagic {module.vermagic!r} differs from the "
                           f"running kernel's {running!r}: the kernel would refuse it",
                           hint="build from the running kernel's exact source and "
                                "configuration (ORIG_CONFIG/.config, and LOCALVERSION= in "
                                "ORIG_CONFIG/flags if its release has no '+')")
    bad = check_versions(module.ko, orig.module_symvers)
    if bad:
        raise RefusedError("symbol versions (CRCs) the module needs disagree with the "
                           "running kernel's Module.symvers: " + ", ".join(bad),
                           hint="the change alters an exported symbol's type (a header "
                                "change?); the kernel would refuse the module")


@dataclass
class _Clearing:
    """The module targets whose relocations the module clears when they go (reload.py),
    and the placeholder standing for each vmlinux symbol that needs."""

    targets: set[str]
    names: dict[str, str]


def _relocation_clearing(tree: Path, links: _Links) -> _Clearing | None:
    targets = {where[0] for where in links.placeholders} - {"vmlinux"}
    if not targets or reload.kernel_clears_relocations(tree):
        return None
    names = {}
    for symbol, decl in reload.KERNEL_SYMBOLS:
        kind = STT_FUNC if "(" in decl else STT_OBJECT
        names[symbol] = links.placeholder(("vmlinux", symbol, 0), kind).name
    return _Clearing(targets, names)


def _patch_source(name: str, links: _Links, description: str,
                  clearing: _Clearing | None = None) -> str:
    """The module's C: one klp_object per target with its klp_funcs and callbacks."""
    targets: list[str] = []
    for t in [f.target for f in links.funcs] + [c.target for c in links.callbacks] \
            + [d.target for d in links.data_changes]:
        if t not in targets:
            targets.append(t)
    lines = [
        f"/* Generated by git-ksplice: the livepatch of update {name}. */",
        "#include <linux/module.h>",
        "#include <linux/kernel.h>",
        "#include <linux/livepatch.h>",
        "#include <linux/string.h>",
        "",
    ]
    if clearing is not None:
        lines += reload.clear_source(clearing.names)
    lines += [f"extern char {f.alias}[];" for f in links.funcs]
    lines.append("")
    for i, target in enumerate(targets):
        lines.append(f"static struct klp_func ksplice_funcs_{i}[] = {{")
        for f in links.funcs:
            if f.target == target:
                lines.append(f'\t{{ .old_name = "{f.old_name}", .new_func = {f.alias}, '
                             f".old_sympos = {f.sympos} }},")
        lines += ["\t{ }", "};", ""]
        lines += _callback_source(i, [c for c in links.callbacks if c.target == target],
                                  [d for d in links.data_changes if d.target == target],
                                  clear=clearing is not None and target in clearing.targets)
    lines.append("static struct klp_object ksplice_objs[] = {")
    for i, target in enumerate(targets):
        objname = "NULL" if target == "vmlinux" else f'"{target}"'
        lines.append(f"\t{{ .name = {objname}, .funcs = ksplice_funcs_{i}, "
                     f".callbacks = KSPLICE_CALLBACKS_{i} }},")
    lines += ["\t{ }", "};", ""]
    desc = description.splitlines()[0].replace("\\", "\\\\").replace('"', '\\"') \
        if description.strip() else name
    lines += [
        "static struct klp_patch ksplice_patch = {",
        "\t.mod = THIS_MODULE,",
        "\t.objs = ksplice_objs,",
        "\t.replace = false,  /* updates stack, as with --series */",
        "};",
        "",
        "static int __init ksplice_init(void)",
        "{",
        "\treturn klp_enable_patch(&ksplice_patch);",
        "}",
        "",
        "static void __exit ksplice_exit(void)",
        "{",
        "}",
        "",
        "module_init(ksplice_init);",
        "module_exit(ksplice_exit);",
        'MODULE_LICENSE("GPL");',
        'MODULE_INFO(livepatch, "Y");',
        f'MODULE_DESCRIPTION("{desc}");',
        "",
    ]
    return "\n".join(lines)


def _callback_source(i: int, callbacks: list[KlpCallback],
                     changes: list[KlpDataChange], *, clear: bool = False) -> list[str]:
    """`ksplice_callbacks_<i>`: for each slot, a function that calls the author's callbacks
    of the slot in order. A pre-patch callback that fails stops the load (Ksplice's
    fail_apply hooks run first); the data changes are written after the post-patch ones'
    switch and put back before the pre-unpatch ones' undo, mirror-wise. With `clear`, the
    target's relocations are cleared after its post-unpatch callbacks and when a pre-patch
    one refuses it (reload.py)."""
    lines = []
    for c in callbacks:
        ret = "int" if c.signature == "int" or c.slot == "pre_patch" else "void"
        args = "struct klp_object *obj" if c.signature == "klp" else "void"
        lines.append(f"extern {ret} {c.alias}({args});  /* {c.function}, {c.macro} */")
    for n, d in enumerate(changes):
        values = ", ".join(f"{b:#04x}" for b in d.value)
        lines += [f"extern char {d.symbol}[] __attribute__((weak));  /* {d.name} */",
                  f"static const unsigned char ksplice_value_{i}_{n}[{len(d.value)}] = "
                  f"{{ {values} }};",
                  f"static unsigned char ksplice_saved_{i}_{n}[{len(d.value)}];"]
    members = []
    for slot in _SLOTS:
        body = _slot_body(slot, [c for c in callbacks if c.slot == slot],
                          [c for c in callbacks if c.slot == "fail_patch"], i, changes,
                          clear)
        if not body:
            continue
        ret = "int" if slot == "pre_patch" else "void"
        lines += ["", f"static {ret} ksplice_{slot}_{i}(struct klp_object *obj)", "{", *body,
                  "}"]
        members.append(f".{slot} = ksplice_{slot}_{i},")
    # klp_object holds its callbacks by value: a constant initialiser, not a variable.
    lines += ["", f"#define KSPLICE_CALLBACKS_{i} {{ " + " ".join(members) + " }", ""]
    return lines


def _call(c: KlpCallback) -> str:
    return f"{c.alias}({'obj' if c.signature == 'klp' else ''})"


def _slot_body(slot: str, calls: list[KlpCallback], failed: list[KlpCallback], i: int,
               changes: list[KlpDataChange], clear: bool) -> list[str]:
    """The statements of one slot's function (none: the slot is left empty)."""
    forget = ["\tksplice_clear_relocations(obj);"] if clear else []
    writes = [f"\tmemcpy(ksplice_saved_{i}_{n}, {d.symbol}, sizeof(ksplice_saved_{i}_{n}));\n"
              f"\tmemcpy({d.symbol}, ksplice_value_{i}_{n}, sizeof(ksplice_value_{i}_{n}));"
              for n, d in enumerate(changes)]
    restores = [f"\tmemcpy({d.symbol}, ksplice_saved_{i}_{n}, sizeof(ksplice_saved_{i}_{n}));"
                for n, d in enumerate(changes)]
    if slot == "pre_patch":
        if not calls:
            return []
        body = ["\tint ret;", ""]
        for c in calls:
            body += [f"\tret = {_call(c)};", "\tif (ret)", "\t\tgoto failed;"]
        body += ["\treturn 0;", "failed:",
                 '\tpr_warn("%s: a pre-patch callback refused the update (%d)\\n", '
                 "THIS_MODULE->name, ret);"]
        body += [f"\t{_call(c)};" for c in failed]
        return [*body, *forget, "\treturn ret;"]
    body = []
    for c in calls:
        if c.signature == "int":
            body += ["\tif (" + _call(c) + ")",
                     f'\t\tpr_warn("%s: {c.function} failed, and an undo cannot be '
                     'refused\\n", THIS_MODULE->name);']
        else:
            body.append(f"\t{_call(c)};")
    if slot == "post_patch":
        return writes + body
    if slot == "pre_unpatch":
        return body + restores
    if slot == "post_unpatch":
        return body + forget
    return body


def _finish(ko: Path, where_of: dict[str, tuple[str, str, int]], types: dict) -> int:
    """Phase 2: placeholders become .klp.rela/.klp.sym."""
    obj = read_object(ko)
    klp_syms: dict[tuple[str, str, int], Symbol] = {}
    count = 0
    for sec in obj.sections:
        keep = []
        for r in sec.relocs:
            where = where_of.get(r.symbol.name) if r.symbol.section is None else None
            if where is None:
                keep.append(r)
                continue
            objname, name, pos = where
            ks = klp_syms.get(where)
            if ks is None:
                ks = Symbol(f".klp.sym.{objname}.{name},{pos}", 0, 0, STB_GLOBAL,
                            types.get(where, STT_NOTYPE), special_shndx=SHN_LIVEPATCH)
                klp_syms[where] = ks
            sec.klp_relocs.setdefault(objname, []).append(Reloc(r.offset, r.type, ks,
                                                                r.addend))
            count += 1
        sec.relocs = keep
    symbols = [s for s in obj.symbols[1:] if s.name not in where_of]
    symbols += list(klp_syms.values())
    write_object(ko, obj.sections, symbols, e_flags=obj.e_flags, osabi=obj.e_ident_osabi)
    return count


def _modinfo(ko: Path) -> dict[str, str]:
    obj = read_object(ko)
    sec = obj.section(".modinfo")
    out = {}
    if sec is not None:
        for item in sec.data.split(b"\0"):
            k, sep, v = item.decode(errors="replace").partition("=")
            if sep:
                out[k] = v
    return out


def check_module(ko: Path) -> None:
    """What the kernel's module loader and livepatch will check, checked first."""
    obj = read_object(ko)
    problems = []
    for sec in obj.sections:
        for objname, relocs in sec.klp_relocs.items():
            if not _OBJNAME.match(objname):
                problems.append(f".klp.rela.{objname}.{sec.name}: object name too long or "
                                "with a dot")
            for r in relocs:
                s = r.symbol
                if s.special_shndx != SHN_LIVEPATCH or s.section is not None:
                    problems.append(f"{s.name} in .klp.rela.{objname}.{sec.name} is not a "
                                    "livepatch symbol")
                m = re.match(r"^\.klp\.sym\.([^.]{1,55})\.([^,]{1,511}),(\d+)$", s.name)
                if m is None:
                    problems.append(f"{s.name}: not a .klp.sym.<obj>.<name>,<pos> name")
                elif objname != "vmlinux" and m.group(1) == "vmlinux":
                    problems.append(f"{s.name} used from module-specific "
                                    f".klp.rela.{objname}.{sec.name}")
                if r.offset + RELOC_SIZES.get(r.type, 8) > sec.size:
                    problems.append(f"relocation at {sec.name}+{r.offset:#x} is outside the "
                                    "section")
        for r in sec.relocs:
            if r.symbol.name.startswith(_PLACEHOLDER):
                problems.append(f"placeholder {r.symbol.name} left in {sec.name}")
            if r.offset + RELOC_SIZES.get(r.type, 8) > sec.size:
                problems.append(f"relocation at {sec.name}+{r.offset:#x} is outside the "
                                "section")
    if problems:
        raise RefusedError("the livepatch module would be rejected by the kernel:\n  "
                           + "\n  ".join(problems[:20]))


def check_versions(ko: Path, orig_symvers: Path) -> list[str]:
    """Symbols whose CRC in the module disagrees with the running kernel's Module.symvers."""
    running = read_symvers(orig_symvers)
    if not running:
        return []
    obj = read_object(ko)
    sec = obj.section("__versions")
    bad = []
    if sec is None:
        return bad
    entry = 64  # struct modversion_info: unsigned long crc; char name[56]
    for off in range(0, len(sec.data), entry):
        crc = int.from_bytes(sec.data[off:off + 8], "little")
        name = sec.data[off + 8:off + entry].split(b"\0")[0].decode()
        want = running.get(name)
        if want is not None and want[0] != crc:
            bad.append(f"{name} (module {crc:#010x}, running kernel {want[0]:#010x})")
    return bad


__all__ = ["ModuleBuild", "ModuleRequest", "PatchedObject", "build_module",
           "check_against_running", "check_module", "check_versions"]
