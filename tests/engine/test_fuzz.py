"""Mutated objects for `diff-object`: each must end in a result or a clean error, never a
traceback or a hang. Fixed seeds, so a failure is reproducible; a few seconds in all.

The pair is a real kernel-style object (tests/engine/conftest.py's flags) before and after a
change; the PATCHED side gets random byte flips, truncations and header fields set to
extreme values. The differ runs in-process through the real entry point (cli.main), which
turns an unexpected exception into "internal error": that is what must never be printed.
"""

from __future__ import annotations

import random
import resource
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from git_ksplice.cli import main
from tests.engine.conftest import compile_c

SOURCE = """
static int counter;
static const char *const names[] = { "a", "b", "c" };
int helper(int x) { return x * 3 + counter; }
int changed(int x) {
    if (x > 2) return helper(x) + %d;
    counter++;
    return names[x & 1][0];
}
"""


class Hang(BaseException):
    """The code under test ran past its deadline. A BaseException, so that no handler of
    the tool (which turns OSError, TimeoutError among them, into a message) can swallow it
    and make a hang look like a clean error."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(signum, frame):  # type: ignore[no-untyped-def]
        raise Hang(f"the command took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def memory_cap(extra: int) -> Iterator[None]:
    """At most `extra` more bytes of address space while the differ runs: a mutation that
    makes it allocate what a header claims must fail, not take the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    base = tmp_path_factory.mktemp("fuzz")
    orig = compile_c(SOURCE % 1, base / "orig")
    patched = compile_c(SOURCE % 2, base / "patched")
    return orig, patched.read_bytes()


def _mutations(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    for i in range(60):
        b = bytearray(data)
        for _ in range(rng.choice((1, 2, 8))):
            b[rng.randrange(len(b))] = rng.randrange(256)
        yield f"flip-{i}", bytes(b)
    for i in range(15):
        yield f"truncate-{i}", data[:rng.randrange(len(data))]
    # ELF64 header fields: e_shoff (40), e_shentsize (58), e_shnum (60), e_shstrndx (62).
    for offset, fmt in ((40, "<Q"), (58, "<H"), (60, "<H"), (62, "<H")):
        for value in (0, 1, 0xFFFF, 2**(8 * struct.calcsize(fmt)) - 1):
            b = bytearray(data)
            struct.pack_into(fmt, b, offset, value)
            yield f"header-{offset}-{value:x}", bytes(b)
    # Section headers: sh_offset, sh_size, sh_link, sh_info, sh_entsize set to extremes.
    (shoff,) = struct.unpack_from("<Q", data, 40)
    (shnum,) = struct.unpack_from("<H", data, 60)
    for _ in range(15):
        sec = rng.randrange(1, shnum)
        field, fmt = rng.choice(((24, "<Q"), (32, "<Q"), (40, "<I"), (44, "<I"), (56, "<Q")))
        b = bytearray(data)
        value = rng.choice((0, 1, 2**31, 2**(8 * struct.calcsize(fmt)) - 1))
        struct.pack_into(fmt, b, shoff + sec * 64 + field, value)
        yield f"section-{sec}-{field}-{value:x}", bytes(b)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mutated_objects_end_cleanly(pair: tuple[Path, bytes], tmp_path: Path, seed: int,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    orig, patched = pair
    failures = []
    for name, data in _mutations(patched, seed):
        mutated = tmp_path / f"{name}.o"
        mutated.write_bytes(data)
        out = tmp_path / f"{name}.diff.o"
        with deadline(20), memory_cap(1 << 30):
            code = main(["diff-object", str(orig), str(mutated), "-o", str(out), "--json"])
        err = capsys.readouterr().err
        if code not in (0, 1, 65, 66) or "internal error" in err or "Traceback" in err:
            failures.append(f"{name}: exit {code}\n{err[-1500:]}")
        mutated.unlink()
    assert not failures, f"{len(failures)} mutations broke the differ:\n" + "\n".join(
        failures[:3])


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_special_files_are_refused(pair: tuple[Path, bytes], tmp_path: Path, kind: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    import os

    orig, _ = pair
    if kind == "fifo":
        path = tmp_path / "x.o"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path
    else:
        path = Path(kind)
    with deadline(20), memory_cap(1 << 30):
        code = main(["diff-object", str(orig), str(path)])
    err = capsys.readouterr().err
    if kind == "directory":  # click's own check of the argument: a usage error
        assert code == 2 and "is a directory" in err, err
    else:
        assert code == 1 and "not a regular file" in err, err
