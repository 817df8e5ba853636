"""The update tarball `ksplice-<ID>.tar.gz`: layout, manifest, reproducibility, and reading it.

Layout, one top directory `ksplice-<ID>/`: `contents` (one record per line: `target <name>`
for each target the update patches; `livepatch <modname> <file.ko>` once the module builder
makes one; `module <target> <path.ko>` with --build-modules), `patch`, `description`,
`api-version`, `timestamp`, `utsname`, `manifest.json`, and `debug/` (the pre and post
objects, the diff objects, the build log).

With `SOURCE_DATE_EPOCH` and `--id` fixed the tarball is byte-for-byte reproducible: entries
sorted, times from the timestamp, owners zeroed, gzip header without name or time.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from git_ksplice import manifest as manifest_schema
from git_ksplice.errors import InputError, KspliceError
from git_ksplice.files import open_regular

API_VERSION = "1"
MANIFEST_FORMAT = 1

#: An update id: names a ref (refs/ksplice/updates/<ID>), a file and a kernel module.
#: `\Z`, not `$`: `$` also matches before a final newline, and "abc\n" is no id.
UPDATE_ID = re.compile(r"[a-z0-9][a-z0-9_]{0,31}\Z")


def timestamp() -> int:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            return int(sde)
        except ValueError:
            raise InputError(f"SOURCE_DATE_EPOCH={sde!r} is not a number of seconds") from None
    return int(time.time())


@dataclass
class Update:
    """Everything a tarball holds, before it is written."""

    id: str
    files: dict[str, bytes] = field(default_factory=dict)  # path inside ksplice-<ID>/

    def add(self, path: str, data: bytes | str) -> None:
        self.files[path] = data.encode() if isinstance(data, str) else data

    def add_file(self, path: str, src: Path) -> None:
        self.files[path] = src.read_bytes()


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
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                                compresslevel=9) as gz:
            gz.write(raw.getvalue())
            gz.close()
            f.flush()
            os.fsync(f.fileno())  # a full disk says so here, not later on close
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise KspliceError(f"cannot write {dest}: {e.strerror}",
                           hint="free some space there (or give another -o DIR) and run the "
                                "same command again: nothing was recorded") from None
    return dest


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
        return {} if data is None else manifest_schema.parse(data, str(self.path))

    def text(self, name: str) -> str:
        return self.files.get(name, b"").decode("utf-8", "replace")

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
