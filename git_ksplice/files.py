"""Files read from anywhere and files written whole.

Reading a file that may be anything: a regular file only, and a bounded part of it.

Every path git-ksplice reads on the user's word or from a tree it is given (a patch, a file
of a --diffext change, an object for diff-object, an update's tarball) may be a FIFO (the
read would hang), a device (/dev/zero would fill memory) or a directory. It is opened with
O_NONBLOCK, so that opening a FIFO returns at once, and checked with fstat on the open
descriptor, so that what is read is what was checked.

Writing: every file git-ksplice keeps (a state file, a job, the hook, a tarball) is replaced
whole, through a temporary file in the same directory and a rename, so that a reader (or a
run killed mid-write) never sees half of it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from git_ksplice.errors import InputError

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def open_fd(path: str | os.PathLike[str], what: str, *, follow: bool = True) -> int:
    """An open descriptor for `path`. With follow=False a symlink is not opened: the OSError
    (ELOOP) reaches the caller, who reads the link itself."""
    try:
        return os.open(path, _FLAGS | (0 if follow else os.O_NOFOLLOW))
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise
        raise InputError(f"cannot read {what}: {e.strerror}") from None


def read_bounded(fd: int, limit: int, what: str, hint: str) -> bytes:
    """The bytes of the open file `fd` (closed here), at most `limit` of them, if it is a
    regular file; `hint` says what the file should have been."""
    chunks: list[bytes] = []
    size = 0
    try:
        _check_regular(fd, what, hint)
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"{what} is larger than {limit >> 20} MiB",
                         hint="no such file is that large: is it the right file?")
    return b"".join(chunks)


def open_regular(path: str | os.PathLike[str], what: str, hint: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file, for a reader that streams it."""
    fd = open_fd(path, what)
    try:
        _check_regular(fd, what, hint)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _check_regular(fd: int, what: str, hint: str) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} is {_kind(mode)}, not a regular file", hint=hint)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "a special file"


def replace_file(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None,
                 durable: bool = False) -> None:
    """Write `path` whole: a temporary file of a unique name beside it, then a rename. `mode`
    sets its permissions (default: 0666 less the umask, as open() would); `durable` fsyncs
    before the rename, so that a full disk says so here rather than on a later close (for
    files the user keeps: a tarball). The directory must exist. An OSError reaches the
    caller, and no temporary file is left behind."""
    target = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def same_contents(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (read a megabyte at a time)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
