"""Boot a kernel under qemu with a tiny busybox initramfs, and run a scripted session in it.

The initramfs holds a static busybox, the files to test (modules, the update), and an
`/init` that runs the session's steps and prints one marker line per step
(`@@ksplice <step> rc=<n>@@`), then powers off. qemu runs with TCG (no KVM here), two CPUs
on two sockets (SeaBIOS lists one CPU per socket without ACPI), no network, no disk.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.errors import InputError

_MARKER = re.compile(r"@@ksplice (\S+) rc=(\d+)@@")


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
                ino: int = 0) -> bytes:
    """One entry of a `newc` cpio archive (the format the kernel unpacks)."""
    namez = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = header + namez
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def make_initramfs(files: dict[str, bytes], init: str) -> bytes:
    """A gzipped newc archive: directories, /dev/console, busybox, `files`, `/init`."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise InputError("busybox is not installed", hint="apt-get install busybox-static")
    bb = Path(busybox).read_bytes()
    if b"/lib64/ld-linux" in bb[:4096] or b"ld-linux" in bb[:1024]:
        raise InputError(f"{busybox} is dynamically linked",
                         hint="install a static busybox (busybox-static)")
    entries = []
    ino = 1
    for d in ("bin", "dev", "proc", "sys", "tmp", "ksplice"):
        entries.append(_cpio_entry(d, 0o040755, ino=ino))
        ino += 1
    entries.append(_cpio_entry("dev/console", 0o020600, rdev=(5, 1), ino=ino))
    ino += 1
    entries.append(_cpio_entry("bin/busybox", 0o100755, bb, ino=ino))
    ino += 1
    for name, data in sorted(files.items()):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in ("bin", "dev", "proc", "sys", "tmp", "ksplice"):
                entries.append(_cpio_entry(d, 0o040755, ino=ino))
                ino += 1
        entries.append(_cpio_entry(name, 0o100755, data, ino=ino))
        ino += 1
    entries.append(_cpio_entry("init", 0o100755, init.encode(), ino=ino))
    entries.append(_cpio_entry("TRAILER!!!", 0))
    raw = b"".join(entries)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=1) as gz:
        gz.write(raw)
    return buf.getvalue()


@dataclass
class Session:
    console: str
    steps: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timed_out: bool = False


def run(kernel: Path, initramfs: bytes, *, workdir: Path, timeout: float = 300,
        memory: str = "512", extra_append: str = "") -> Session:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise InputError("qemu-system-x86_64 is not installed",
                         hint="apt-get install qemu-system-x86")
    if not kernel.is_file():
        raise InputError(f"kernel image {kernel} does not exist",
                         hint="give the running kernel's bzImage with --kernel")
    workdir.mkdir(parents=True, exist_ok=True)
    rd = workdir / "initramfs.cpio.gz"
    rd.write_bytes(initramfs)
    cmd = [qemu, "-m", memory, "-smp", "2,sockets=2,cores=1,threads=1", "-nographic",
           "-no-reboot", "-nic", "none", "-kernel", str(kernel), "-initrd", str(rd),
           "-append", f"console=ttyS0 panic=-1 oops=panic {extra_append}".strip()]
    start = time.monotonic()
    timed_out = False
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                           env=dict(os.environ))
        out = r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        timed_out = True
        out = (e.stdout or b"") + (e.stderr or b"")
    console = out.decode("utf-8", "replace").replace("\r", "")
    (workdir / "console.log").write_text(console)
    session = Session(console, seconds=time.monotonic() - start, timed_out=timed_out)
    for m in _MARKER.finditer(console):
        session.steps[m.group(1)] = int(m.group(2))
    return session
