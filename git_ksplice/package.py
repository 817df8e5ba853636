"""The update tarball `ksplice-<ID>.tar.gz`: its members, its `contents`, its manifest, and
reading one from anywhere. The one owner of the format: `create` writes through it, `view`,
`series`, `try` and the hook read through it (the ledger keeps the same manifest).

Layout, one top directory `ksplice-<ID>/`: `contents` (one record per line: `target <name>`
for each target the update patches; `livepatch <modname> <file.ko>` once the module builder
makes one; `module <target> <path.ko>` with --build-modules), `patch`, `description`,
`api-version`, `timestamp`, `utsname`, `manifest.json`, and `debug/` (the pre and post
objects, the diff objects, the build log).

The manifest (`manifest.json` of a tarball and of each ledger entry) is input from anywhere
too: a tarball can come from anyone, and a ledger entry arrives with `git fetch`. What is read
from one is checked against the schema first, so a wrong type is a message naming the field,
not a traceback three functions later. Unknown fields are allowed (a newer git-ksplice may add
some); the fields this version reads must have the types it writes, and a function entry must
have its name.

With `SOURCE_DATE_EPOCH` and `--id` fixed the tarball is byte-for-byte reproducible: entries
sorted, times from the timestamp, owners zeroed, gzip header without name or time.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import secrets
import string
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from git_ksplice.errors import InputError, KspliceError
from git_ksplice.files import open_regular, replace_file

if TYPE_CHECKING:
    from git_ksplice.elf.diff import DiffResult
    from git_ksplice.livepatch.module import ModuleBuild

API_VERSION = "1"
MANIFEST_FORMAT = 1

#: An update id: names a ref (refs/ksplice/updates/<ID>), a file and a kernel module.
#: `\Z`, not `$`: `$` also matches before a final newline, and "abc\n" is no id.
UPDATE_ID = re.compile(r"[a-z0-9][a-z0-9_]{0,31}\Z")


def new_update_id() -> str:
    """Eight random characters of an update id's alphabet."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def check_update_id(update_id: str) -> None:
    if not UPDATE_ID.match(update_id):
        raise InputError(f"--id={update_id!r}: an update id is 1 to 32 characters of a-z, "
                         "0-9 and _, starting with a letter or digit")


def timestamp() -> int:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            return int(sde)
        except ValueError:
            raise InputError(f"SOURCE_DATE_EPOCH={sde!r} is not a number of seconds") from None
    return int(time.time())


# -- contents ------------------------------------------------------------------------------

#: A kernel module's name (MODULE_NAME_LEN is 56, with its NUL).
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,55}")


@dataclass
class Contents:
    """The `contents` file: what the update holds, one record per line."""

    #: (module name, file) of the livepatch module
    livepatch: tuple[str, str] | None = None
    targets: list[str] = field(default_factory=list)
    #: (target, file) of each patched module shipped with --build-modules
    modules: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        lines = []
        if self.livepatch is not None:
            lines.append(f"livepatch {self.livepatch[0]} {self.livepatch[1]}")
        lines += [f"target {t}" for t in self.targets]
        lines += [f"module {t} {f}" for t, f in self.modules]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, where: str) -> Contents:
        """The records of a `contents` file; unknown records are skipped (a newer version's),
        a livepatch record that names no file or no module name is damage."""
        out = cls()
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["target"] and len(words) >= 2:
                out.targets.append(words[1])
            elif words[:1] == ["module"] and len(words) >= 3:
                out.modules.append((words[1], words[2]))
            elif words[:1] == ["livepatch"] and out.livepatch is None:
                if len(words) < 3:
                    raise InputError(f"{where} is damaged: its contents line {line.strip()!r} "
                                     "names no module file", hint="build the update again")
                if not _MODULE_NAME.fullmatch(words[1]):
                    # It goes into a guest's /init script and onto the terminal: only a name.
                    raise InputError(f"{where} is damaged: its livepatch module is named "
                                     f"{words[1][:60]!r}, which is no kernel module name",
                                     hint="build the update again")
                out.livepatch = (words[1], words[2])
        return out

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> Contents:
        """What the tarball's contents said, from its manifest (a ledger entry keeps no
        tarball): the targets and the livepatch module."""
        module = manifest.get("livepatch", {}).get("module")
        return cls(livepatch=(module, f"{module}.ko") if module else None,
                   targets=sorted(manifest.get("targets", {})))


# -- the manifest --------------------------------------------------------------------------


@dataclass
class ChangedObject:
    """One object of the update, as the manifest records it."""

    path: str  # relative to the tree
    target: str  # vmlinux or a module name
    result: DiffResult


@dataclass
class Provenance:
    """Where an update came from: its change, its base, and what built it."""

    id: str
    description: str
    mode: str  # commit, patch or diffext
    series: bool  # refs/ksplice/pre moved to this update's post commit (--series)
    pre: str
    post: str
    when: int
    compiler: str
    tool: str
    kcflags: str


@dataclass
class Summary:
    """What a manifest says of its update, for listings (`view`, `series`). Fields a
    manifest lacks are None (or empty): a fetched one need not have them."""

    id: str | None
    pre: str | None
    post: str | None
    timestamp: int | None
    series: bool | None
    targets: list[str]
    #: (target, object, name, what): what is `changed` or `new` for a function, `callback`
    #: (the name says its slot), `left out` (an author's ignore mark), `data` (a consented
    #: data change); sorted by target and object
    functions: list[tuple[str, str, str, str]]

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Summary:
        functions = []
        for target, t in sorted(manifest.get("targets", {}).items()):
            for obj, o in sorted(t.get("objects", {}).items()):
                functions += [(target, obj, f["name"], "changed")
                              for f in o.get("changed_functions", [])]
                functions += [(target, obj, f["name"], "new")
                              for f in o.get("new_functions", [])]
                functions += [(target, obj, f"{c['function']} ({c['slot'] or 'never runs'}, "
                               f"{c['macro']})", "callback") for c in o.get("callbacks", [])]
                functions += [(target, obj, f"{i['symbol']} ({i['message']})", "left out")
                              for i in o.get("left_out", [])]
                functions += [(target, obj, f"{d['name']} ({d['mode']}, {d['macro']})", "data")
                              for d in o.get("data_changes", [])]
        return cls(manifest.get("id"), manifest.get("pre"), manifest.get("post"),
                   manifest.get("timestamp"), manifest.get("series"),
                   sorted(manifest.get("targets", {})), functions)


def compose_manifest(origin: Provenance, changed: list[ChangedObject], extra: list[str],
                     module: ModuleBuild | None) -> dict[str, Any]:
    """The manifest of an update, as `SCHEMA` describes it."""
    targets: dict[str, Any] = {}
    for c in changed:
        t = targets.setdefault(c.target, {"objects": {}})
        t["objects"][c.path] = {
            "changed_functions": [f.as_json() for f in c.result.changed],
            "new_functions": [f.as_json() for f in c.result.new],
            "warnings": [w.as_json() for w in c.result.warnings],
            "callbacks": [cb.as_json() for cb in c.result.callbacks],
            "left_out": [i.as_json() for i in c.result.left_out],
            "data_changes": [d.as_json() for d in c.result.data_changes],
        }
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT, "id": origin.id, "description": origin.description,
        "mode": origin.mode, "series": origin.series, "pre": origin.pre,
        "post": origin.post, "targets": targets, "extra_objects": extra,
        "timestamp": origin.when, "compiler": origin.compiler, "tool": origin.tool,
        "kcflags": origin.kcflags,
    }
    if module is not None:
        manifest["livepatch"] = {
            "module": module.name, "vermagic": module.vermagic,
            "functions": [{"target": f.target, "name": f.old_name, "sympos": f.sympos}
                          for f in module.funcs],
            "callbacks": [{"target": c.target, "slot": c.slot, "function": c.function,
                           "macro": c.macro} for c in module.callbacks],
            "data_changes": [{"target": d.target, "name": d.name, "size": len(d.value)}
                             for d in module.data_changes],
            "klp_relocations": module.klp_relocations,
            "warnings": module.warnings, "signed": module.signed or ""}
    return manifest



def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as both the tarball and the ledger keep it."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


@dataclass
class Update:
    """Everything a tarball holds, before it is written: the pipeline adds the debug files
    as it compares, then the update's own files once it is built (`finish`)."""

    id: str
    files: dict[str, bytes] = field(default_factory=dict)  # path inside ksplice-<ID>/

    def add(self, path: str, data: bytes | str) -> None:
        self.files[path] = data.encode() if isinstance(data, str) else data

    def add_file(self, path: str, src: Path) -> None:
        self.files[path] = src.read_bytes()

    def add_compared(self, rel: str, pre: Path | None, post: Path) -> None:
        """The two builds of an object that was compared (no pre: a new file)."""
        if pre is not None:
            self.add_file(f"debug/objects/pre/{rel}", pre)
        self.add_file(f"debug/objects/post/{rel}", post)

    def add_diff(self, rel: str, data: bytes) -> None:
        """The differ's output for one object: its changed and new code."""
        self.add(f"debug/diff/{rel}", data)

    def add_extra(self, rel: str, pristine: Path) -> None:
        """An unchanged object's pristine build, for checking the running kernel
        (--extra-match)."""
        self.add_file(f"debug/objects/extra/{rel}", pristine)

    def finish(self, *, manifest: dict[str, Any], patch: str, description: str, when: int,
               release: str, targets: list[str], livepatch: tuple[str, Path] | None,
               modules: dict[str, bytes], build_log: Path) -> None:
        """The update's own files: manifest, patch, description, version records, the
        livepatch module (name, built .ko), the --build-modules modules, the build log."""
        self.add("manifest.json", manifest_bytes(manifest))
        self.add("patch", patch)
        self.add("description", description.rstrip("\n") + "\n")
        self.add("api-version", API_VERSION + "\n")
        self.add("timestamp", f"{when}\n")
        self.add("utsname", f"Sysname: Linux\nMachine: x86_64\nRelease: {release}\n")
        contents = Contents(targets=list(targets))
        if livepatch is not None:
            name, ko = livepatch
            self.add_file(f"{name}.ko", ko)
            contents.livepatch = (name, f"{name}.ko")
        for target, data in sorted(modules.items()):
            self.add(f"modules/{target}.ko", data)
            contents.modules.append((target, f"modules/{target}.ko"))
        self.add("contents", contents.text())
        self.add_file("debug/build.log", build_log)


def write_tarball(update: Update, out_dir: Path, when: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    top = f"ksplice-{update.id}"
    dest = out_dir / f"{top}.tar.gz"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = {top}
        for path in update.files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add(top + "/" + "/".join(parts[:i]))
        entries = sorted([(d, None) for d in dirs] +
                         [(f"{top}/{p}", data) for p, data in update.files.items()])
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = when
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                       compresslevel=9) as gz:
        gz.write(raw.getvalue())
    try:
        replace_file(dest, compressed.getvalue(), durable=True)
    except OSError as e:
        raise KspliceError(f"cannot write {dest}: {e.strerror}",
                           hint="free some space there (or give another -o DIR) and run the "
                                "same command again: nothing was recorded") from None
    return dest


#: The files that say what an update is, without its module and debug files (`view`).
SUMMARY_FILES = ("manifest.json", "description", "patch")

#: Bounds for reading an update from anywhere: a tarball of 2 MB can hold 2 GiB of zeros,
#: or 300,000 members. A real update holds a few dozen files of a few MB.
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 256 << 20
MAX_TOTAL_BYTES = 1 << 30


@dataclass
class Tarball:
    """A read update: the files that were asked for, by path inside `ksplice-<ID>/`."""

    path: Path
    id: str
    files: dict[str, bytes]

    @property
    def manifest(self) -> dict[str, Any]:
        data = self.files.get("manifest.json")
        return {} if data is None else parse_manifest(data, str(self.path))

    @property
    def contents(self) -> Contents:
        return Contents.parse(self.text("contents"), str(self.path))

    def livepatch_module(self) -> tuple[str, bytes]:
        """(module name, the module's bytes) of the update's livepatch module."""
        livepatch = self.contents.livepatch
        if livepatch is None:
            raise InputError(f"{self.path} has no livepatch module (no 'livepatch' line in "
                             "its contents)", hint="it was built for a tree that is not a "
                                                   "Linux kernel, or by an older git-ksplice")
        return livepatch[0], self.member(livepatch[1])

    def text(self, name: str) -> str:
        return self.files.get(name, b"").decode("utf-8", "replace")

    @property
    def description(self) -> str:
        return self.text("description")

    @property
    def patch(self) -> str:
        return self.text("patch")

    @property
    def contents_text(self) -> str:
        """The contents file as it is (what `view` shows, unknown records included)."""
        return self.text("contents")

    def member(self, name: str) -> bytes:
        """A file the update's own contents names (its livepatch module)."""
        if name not in self.files:
            raise InputError(f"{self.path} is damaged: its contents name {name}, which it "
                             "does not hold", hint="build the update again")
        return self.files[name]


class _Bounded(io.RawIOBase):
    """The decompressed stream, refusing to give more than MAX_TOTAL_BYTES."""

    def __init__(self, stream: io.BufferedIOBase, path: Path) -> None:
        self.stream, self.path, self.total = stream, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.stream.read(len(buffer))
        self.total += len(data)
        if self.total > MAX_TOTAL_BYTES:
            raise InputError(f"{self.path} unpacks to more than {MAX_TOTAL_BYTES >> 20} MiB: "
                             "no update is that large", hint="is it a ksplice update?")
        buffer[:len(data)] = data
        return len(data)


def read_tarball(path: Path, wanted: tuple[str, ...] | None = None) -> Tarball:
    """The update at `path`, streamed: only the files in `wanted` (every regular file when
    None) are kept, each at most MAX_MEMBER_BYTES, with at most MAX_MEMBERS members and
    MAX_TOTAL_BYTES unpacked. Nothing is extracted to disk."""
    files: dict[str, bytes] = {}
    top = None
    if wanted is not None:
        wanted = (*wanted, "contents")  # what makes it an update
    try:
        with open_regular(path, f"update {path}", "give the update's tarball") as raw, \
                gzip.GzipFile(fileobj=raw, mode="rb") as gz, \
                tarfile.open(fileobj=io.BufferedReader(_Bounded(gz, path)), mode="r|") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise InputError(f"{path} holds more than {MAX_MEMBERS} files: no update "
                                     "does", hint="is it a ksplice update?")
                first, _, rest = member.name.partition("/")
                if top is None:
                    top = first
                if first != top or not UPDATE_ID.match(top.removeprefix("ksplice-")) \
                        or not top.startswith("ksplice-"):
                    raise InputError(f"{path} is not a ksplice update (expected one top "
                                     "directory ksplice-<ID>/)")
                if not member.isfile() or not rest or (wanted and rest not in wanted):
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise InputError(f"{path}: {member.name} is {member.size >> 20} MiB, more "
                                     "than an update's file can be",
                                     hint="is it a ksplice update?")
                f = tar.extractfile(member)
                if f is not None:
                    files[rest] = f.read()
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise InputError(f"cannot read update {path}: {e}") from None
    if top is None or "contents" not in files:
        raise InputError(f"{path} is not a ksplice update (no contents file)")
    return Tarball(path, top.removeprefix("ksplice-"), files)


# -- the manifest's schema ----------------------------------------------------------------


class Required:
    """A field a record must have."""

    def __init__(self, schema: object) -> None:
        self.schema = schema


#: A schema is a type (the value's), a list of one schema (every item), a dict with the key
#: `str` (a mapping: every value), or a dict of field names (a record; fields optional unless
#: Required). `object` is anything.
_FUNCTION = {"name": Required(str), "size": int, "sympos": int}
_CALLBACK = {"slot": str, "function": Required(str), "signature": str, "macro": str}
_LEFT_OUT = {"symbol": Required(str), "section": str, "message": str}
_DATA_CHANGE = {"name": Required(str), "section": str, "size": int, "mode": str, "macro": str}
_OBJECT = {"changed_functions": [_FUNCTION], "new_functions": [_FUNCTION],
           "warnings": [object], "callbacks": [_CALLBACK], "left_out": [_LEFT_OUT],
           "data_changes": [_DATA_CHANGE]}
SCHEMA: dict[str, object] = {
    "format": int, "id": str, "description": str, "mode": str, "series": bool,
    "pre": str, "post": str, "timestamp": int, "compiler": str, "tool": str,
    "kcflags": str, "extra_objects": [str],
    "targets": {str: {"objects": {str: _OBJECT}}},
    "livepatch": {"module": str, "vermagic": str, "klp_relocations": int,
                  "functions": [{"target": str, "name": Required(str), "sympos": int}],
                  "callbacks": [{"target": str, "slot": str, "function": Required(str),
                                 "macro": str}],
                  "data_changes": [{"target": str, "name": Required(str), "size": int}],
                  "warnings": [str], "signed": str},
}

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number",
               bool: "true or false"}


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """The manifest in `data`, checked; an InputError naming `where` and the field if not."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{where}: manifest.json is not JSON ({e})",
                         hint="the update is damaged or was not made by git-ksplice") from None
    check_manifest(doc, where)
    return doc


def check_manifest(doc: object, where: str) -> None:
    problem = _problem(doc, SCHEMA, "")
    if problem:
        raise InputError(f"{where}: manifest.json is not a git-ksplice manifest: {problem}",
                         hint="the update is damaged or was not made by git-ksplice")


def _problem(value: object, schema: object, path: str) -> str | None:
    """What is wrong with `value` at `path`, or None."""
    here = path or "the document"
    if schema is object:
        return None
    if isinstance(schema, type):
        # bool is an int to Python, but true is no timestamp.
        ok = isinstance(value, schema) and not (schema is int and isinstance(value, bool))
        return None if ok else f"{here} is {_describe(value)}, not {_TYPE_NAMES[schema]}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{here} is {_describe(value)}, not a list"
        for i, item in enumerate(value):
            if (p := _problem(item, schema[0], f"{path}[{i}]")) is not None:
                return p
        return None
    assert isinstance(schema, dict)
    if not isinstance(value, dict):
        return f"{here} is {_describe(value)}, not an object"
    if str in schema:
        for key, item in value.items():
            if (p := _problem(item, schema[str], _join(path, key))) is not None:
                return p
        return None
    for key, spec in schema.items():
        required = isinstance(spec, Required)
        sub = spec.schema if isinstance(spec, Required) else spec
        if key not in value:
            if required:
                return f"{here} has no {key}"
            continue
        if (p := _problem(value[key], sub, _join(path, key))) is not None:
            return p
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    for t in (bool, dict, list, str, int):
        if isinstance(value, t):
            return _TYPE_NAMES[t]
    return "null" if value is None else type(value).__name__
