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
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from git_ksplice.errors import InputError

API_VERSION = "1"
MANIFEST_FORMAT = 1

#: An update id: names a ref (refs/ksplice/updates/<ID>), a file and a kernel module.
UPDATE_ID = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")


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
    with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                            compresslevel=9) as gz:
        gz.write(raw.getvalue())
    os.replace(tmp, dest)
    return dest


@dataclass
class Tarball:
    """A read update."""

    path: Path
    id: str
    files: dict[str, bytes]

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.files.get("manifest.json", b"{}"))

    def text(self, name: str) -> str:
        return self.files.get(name, b"").decode("utf-8", "replace")


def read_tarball(path: Path) -> Tarball:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(tops) != 1 or not next(iter(tops)).startswith("ksplice-"):
                raise InputError(f"{path} is not a ksplice update (expected one top directory "
                                 "ksplice-<ID>/)")
            top = tops.pop()
            files = {}
            for m in members:
                f = tar.extractfile(m)
                if f is not None and "/" in m.name:
                    files[m.name.split("/", 1)[1]] = f.read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise InputError(f"cannot read update {path}: {e}") from None
    if "contents" not in files:
        raise InputError(f"{path} is not a ksplice update (no contents file)")
    return Tarball(path, top.removeprefix("ksplice-"), files)
