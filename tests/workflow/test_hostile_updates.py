"""Updates from anywhere: `view`, `series` and `try` read tarballs and ledger entries that
someone else made. A damaged or hostile one ends in a message naming what is wrong, within
bounds of time and memory, and its text never drives the terminal.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.workflow.conftest import PROC_FIX, REPO, Kernel, explain

GOOD_MANIFEST = {"format": 1, "id": "x1", "pre": "a" * 40, "post": "b" * 40,
                 "targets": {"vmlinux": {"objects": {"fs/proc.o": {
                     "changed_functions": [{"name": "proc_show", "size": 10}],
                     "new_functions": []}}}}}


def make_tarball(path: Path, files: dict[str, bytes], top: str = "ksplice-x1",
                 sizes: dict[str, int] | None = None) -> Path:
    """A tarball as an attacker would write one: `files` under `top`; `sizes` gives members
    whose data is that many zero bytes (streamed, never held in memory)."""
    with gzip.open(path, "wb", compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, data in {"contents": b"target vmlinux\n", **files}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, size in (sizes or {}).items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = size
            tar.addfile(info, _Zeros(size))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def view(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "git_ksplice", "view", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "Traceback" not in r.stderr, explain(r)
    return r


@pytest.mark.parametrize(("manifest", "message"), [
    (b"{not json", "manifest.json is not JSON"),
    (b"[1, 2]", "the document is a list, not an object"),
    (b"null", "the document is null, not an object"),
    (json.dumps({"targets": {"vmlinux": {"objects": {"fs/proc.o": {
        "changed_functions": [{"size": 3}]}}}}}).encode(),
     "targets.vmlinux.objects.fs/proc.o.changed_functions[0] has no name"),
    (json.dumps({"targets": []}).encode(), "targets is a list, not an object"),
    (json.dumps({"id": 7}).encode(), "id is a number, not a string"),
    (json.dumps({"timestamp": True}).encode(), "timestamp is true or false, not a number"),
    (b"\xff\xfe", "manifest.json is not JSON"),
])
def test_a_bad_manifest_is_named(tmp_path: Path, manifest: bytes, message: str) -> None:
    t = make_tarball(tmp_path / "u.tar.gz", {"manifest.json": manifest})
    for args in ([str(t)], [str(t), "--json"]):
        r = view(*args)
        assert r.returncode == 1 and message in r.stderr, explain(r)


def test_a_good_manifest_is_shown(tmp_path: Path) -> None:
    t = make_tarball(tmp_path / "u.tar.gz", {"manifest.json": json.dumps(GOOD_MANIFEST)
                                             .encode(), "description": b"fix\n"})
    r = view(str(t))
    assert r.returncode == 0 and "changed  vmlinux: proc_show (fs/proc.o)" in r.stdout, \
        explain(r)


def test_a_member_too_large_is_refused_without_reading_it(tmp_path: Path) -> None:
    t = make_tarball(tmp_path / "bomb.tar.gz", {}, sizes={"manifest.json": 300 << 20})
    assert t.stat().st_size < 2 << 20  # a small file, a large promise
    start = time.monotonic()
    r = view(str(t))
    assert r.returncode == 1 and "more than an update's file can be" in r.stderr, explain(r)
    assert time.monotonic() - start < 30


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    t = make_tarball(tmp_path / "many.tar.gz", {f"debug/{i}": b"" for i in range(10_001)})
    r = view(str(t))
    assert r.returncode == 1 and "holds more than 10000 files" in r.stderr, explain(r)


@pytest.mark.parametrize(("files", "top", "message"), [
    ({}, "other", "expected one top directory ksplice-<ID>/"),
    ({"manifest.json": b"{}"}, "ksplice-x1", None),
])
def test_the_layout_is_checked(tmp_path: Path, files: dict[str, bytes], top: str,
                               message: str | None) -> None:
    t = make_tarball(tmp_path / "u.tar.gz", files, top=top)
    r = view(str(t))
    if message is None:
        assert r.returncode == 0, explain(r)
    else:
        assert r.returncode == 1 and message in r.stderr, explain(r)


@pytest.mark.parametrize("kind", ["fifo", "garbage", "truncated"])
def test_what_is_no_tarball_is_named(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "u.tar.gz"
    if kind == "fifo":
        os.mkfifo(p)
        message = "is a FIFO, not a regular file"
    elif kind == "garbage":
        p.write_bytes(os.urandom(4096))
        message = "cannot read update"
    else:
        good = make_tarball(tmp_path / "good.tar.gz", {"manifest.json": b"{}"})
        p.write_bytes(good.read_bytes()[:60])
        message = "cannot read update"
    r = view(str(p), timeout=30)
    assert r.returncode == 1 and message in r.stderr, explain(r)


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    """An update's text is printed with escape sequences, C1 controls and bidi overrides
    escaped; tabs stay (the patch must apply)."""
    description = "fix\x1b]0;pwned\x07 \x1b[2J\u202e\n"
    patch = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-\told\n+\tnew\x9b31m\n"
    t = make_tarball(tmp_path / "u.tar.gz", {"manifest.json": json.dumps(GOOD_MANIFEST)
                                             .encode(), "description": description.encode(),
                                             "patch": patch.encode()})
    r = view(str(t))
    assert r.returncode == 0, explain(r)
    assert "\x1b" not in r.stdout and "\x9b" not in r.stdout and "\u202e" not in r.stdout
    assert "fix\\x1b]0;pwned\\x07 \\x1b[2J\\u202e" in r.stdout, r.stdout
    assert "+\tnew\\x9b31m" in r.stdout, r.stdout
    # JSON keeps the text as it is (json escapes it itself).
    doc = json.loads(view(str(t), "--json").stdout)
    assert doc["description"] == description.rstrip("\n")


def test_a_damaged_ledger_entry_does_not_hide_the_others(warm_kernel: Kernel) -> None:
    """The ledger arrives with git fetch: an entry whose manifest is not one is reported as
    damaged; series lists the rest, view --id shows the good ones."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "good")
    tip = k.rev("refs/ksplice/series")
    blob = k.git("hash-object", "-w", "--stdin", input='{"targets": [1]}').strip()
    tree = k.git("mktree", input=f"100644 blob {blob}\tmanifest.json\n").strip()
    bad = k.git("commit-tree", tree, "-p", tip, "-m", "ksplice bad: damaged").strip()
    k.git("update-ref", "refs/ksplice/series", bad, tip)

    r = k.ksplice("series")
    assert "good" in r.stdout and f"(damaged ledger entry {bad[:12]})" in r.stdout, explain(r)
    assert "targets is a list, not an object" in r.stderr, explain(r)
    rows = json.loads(k.ksplice("series", "--json").stdout)["series"]
    assert [r["id"] for r in rows] == ["good", None]
    assert "targets is a list" in rows[1]["damaged"]
    assert "proc_show" in k.ksplice("view", "--id", "good").stdout
    r = k.ksplice("view", "--id", "nope", expect=1)
    assert "1 damaged entries were skipped" in r.stderr, explain(r)


def test_try_names_a_module_the_tarball_lacks(tmp_path: Path) -> None:
    t = make_tarball(tmp_path / "u.tar.gz", {"contents": b"livepatch ksplice_x1 gone.ko\n"})
    r = subprocess.run([sys.executable, "-m", "git_ksplice", "try", str(t), "--kernel",
                        str(tmp_path / "bzImage")], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert r.returncode == 1 and "its contents name gone.ko, which it does not hold" in \
        r.stderr, explain(r)


def test_a_deeply_nested_manifest_is_named(tmp_path: Path) -> None:
    t = make_tarball(tmp_path / "u.tar.gz", {"manifest.json": b"[" * 100_000})
    r = view(str(t))
    assert r.returncode == 1 and "manifest.json is not JSON" in r.stderr, explain(r)


def test_a_ledger_entry_from_the_far_future_is_listed(warm_kernel: Kernel) -> None:
    k = warm_kernel
    blob = k.git("hash-object", "-w", "--stdin",
                 input=json.dumps({"id": "future", "timestamp": 10**20})).strip()
    tree = k.git("mktree", input=f"100644 blob {blob}\tmanifest.json\n").strip()
    entry = k.git("commit-tree", tree, "-m", "ksplice future").strip()
    k.git("update-ref", "refs/ksplice/series", entry)
    r = k.ksplice("series")
    assert "future" in r.stdout and "internal error" not in r.stderr, explain(r)


@pytest.mark.parametrize("name", ["[/b]", "a;reboot -f", "x" * 60])
def test_try_refuses_a_module_name_that_is_none(tmp_path: Path, name: str) -> None:
    t = make_tarball(tmp_path / "u.tar.gz", {"contents": f"livepatch {name} m.ko\n".encode(),
                                             "m.ko": b"\x7fELF"})
    r = subprocess.run([sys.executable, "-m", "git_ksplice", "try", str(t), "--kernel",
                        str(tmp_path / "bzImage")], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert r.returncode == 1 and "which is no kernel module name" in r.stderr, explain(r)


def test_an_error_quoting_hostile_text_escapes_it(tmp_path: Path) -> None:
    t = make_tarball(tmp_path / "u.tar.gz", {"manifest.json": json.dumps(
        {"targets": {"\x1b[2J": 7}}).encode()})
    r = view(str(t))
    assert r.returncode == 1 and "\x1b" not in r.stderr and "\\x1b[2J" in r.stderr, explain(r)


@pytest.mark.parametrize("kind", ["tree", "huge"])
def test_a_ledger_entry_whose_files_are_no_files_is_damaged(warm_kernel: Kernel,
                                                            kind: str) -> None:
    """A manifest.json that is a directory, or a patch of 65 MiB: the entry is reported as
    damaged (its size read from the object's header, not its bytes)."""
    k = warm_kernel
    if kind == "tree":
        inner = k.git("mktree", input="").strip()
        tree = k.git("mktree", input=f"040000 tree {inner}\tmanifest.json\n").strip()
        message = "manifest.json is not a file"
    else:
        big = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=k.path,
                             input=b"+" * (65 << 20), capture_output=True,
                             check=True).stdout.decode().strip()
        good = k.git("hash-object", "-w", "--stdin", input='{"id": "big"}').strip()
        tree = k.git("mktree", input=f"100644 blob {good}\tmanifest.json\n"
                                     f"100644 blob {big}\tpatch\n").strip()
        message = "patch is 65 MiB, more than a ledger file can be"
    entry = k.git("commit-tree", tree, "-m", "ksplice odd").strip()
    k.git("update-ref", "refs/ksplice/series", entry)
    r = k.ksplice("series")
    assert message in r.stderr and "damaged ledger entry" in r.stdout, explain(r)
