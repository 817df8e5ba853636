"""Reading a file that may be anything: a regular file only, and a bounded part of it.

Every path git-ksplice reads on the user's word or from a tree it is given (a patch, a file
of a --diffext change, an object for diff-object, an update's tarball) may be a FIFO (the
read would hang), a device (/dev/zero would fill memory) or a directory. It is opened with
O_NONBLOCK, so that opening a FIFO returns at once, and checked with fstat on the open
descriptor, so that what is read is what was checked.
"""

from __future__ import annotations

import errno
import os
import stat
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
