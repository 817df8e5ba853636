"""Mutated tarballs and manifests for `view`, mutated patches for `create --patch`: each must
end in a result or a clean error, never a traceback, a hang or unbounded memory. Fixed seeds.

`view` runs in-process through the real entry point (cli.main turns an unexpected exception
into "internal error", which must never be printed), under a time and memory cap; `create`
runs as a user runs it, on the tiny kernel, with the user's state checked by Kernel.ksplice.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from git_ksplice.cli import main
from tests.engine.test_fuzz import deadline, memory_cap
from tests.workflow.conftest import PROC_FIX, SYS_FIX, Kernel


@pytest.fixture(scope="module")
def real_update(tmp_path_factory: pytest.TempPathFactory, running_kernel: Path) -> bytes:
    """A tarball built by create on the tiny kernel."""
    from tests.workflow.conftest import hermetic_env, make_repo, use_env

    base = tmp_path_factory.mktemp("fuzz-update")
    with pytest.MonkeyPatch.context() as mp:
        use_env(mp, hermetic_env(base / "home"))
        k = make_repo(base / "linux", running_kernel)
        k.git("update-ref", "refs/ksplice/pre", "HEAD")
        k.commit("proc: say more", PROC_FIX)
        k.create("--id", "real")
        return k.tarball("real").read_bytes()


def _members(tarball: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
                for m in tar.getmembers()]


def _pack(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return gzip.compress(raw.getvalue())


def _mutated_manifests(manifest: dict, rng: random.Random) -> list[bytes]:
    """Type swaps and deletions at random places of the manifest's tree, and raw flips."""
    out = []
    text = json.dumps(manifest)
    for _ in range(25):
        doc = json.loads(text)
        node, key = doc, None
        for _ in range(rng.randrange(1, 6)):  # walk down to a random field
            if isinstance(node, dict) and node:
                key = rng.choice(sorted(node))
            elif isinstance(node, list) and node:
                key = rng.randrange(len(node))
            else:
                break
            parent, node = node, node[key]
        if key is not None:
            parent[key] = rng.choice([None, 7, "x", [], {}, [1], True, -1])  # type: ignore[index]
        out.append(json.dumps(doc).encode())
    for _ in range(15):
        b = bytearray(text.encode())
        for _ in range(rng.choice((1, 3))):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_updates_end_cleanly(real_update: bytes, tmp_path: Path, seed: int,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(seed)
    members = _members(real_update)
    manifest = json.loads(next(d for m, d in members if m.name.endswith("/manifest.json")))
    cases: list[bytes] = []
    for data in _mutated_manifests(manifest, rng):  # a valid tarball, a bad manifest
        cases.append(_pack([(m, data if m.name.endswith("/manifest.json") else d)
                            for m, d in members]))
    raw = gzip.decompress(real_update)
    for _ in range(20):  # the tar stream damaged, then compressed again
        b = bytearray(raw)
        for _ in range(rng.choice((1, 4, 16))):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(gzip.compress(bytes(b)))
    for _ in range(10):  # the compressed bytes damaged or cut
        b = bytearray(real_update)
        b[rng.randrange(10, len(b))] = rng.randrange(256)
        cases.append(bytes(b) if rng.random() < 0.5 else bytes(b[:rng.randrange(len(b))]))
    failures = []
    path = tmp_path / "u.tar.gz"
    for i, data in enumerate(cases):
        path.write_bytes(data)
        for args in ([str(path)], [str(path), "--json"]):
            with deadline(20), memory_cap(1 << 30):
                code = main(["view", *args])
            err = capsys.readouterr().err
            if code not in (0, 1) or "internal error" in err or "Traceback" in err:
                failures.append(f"case {i} {args[1:]}: exit {code}\n{err[-1200:]}")
    assert not failures, f"{len(failures)} mutated updates broke view:\n" + "\n".join(
        failures[:3])


def _patch_text(k: Kernel) -> str:
    for rel, (old, new) in {**PROC_FIX, **SYS_FIX}.items():
        k.edit(rel, old, new)
    text = k.git("diff")
    k.git("checkout", "--", *PROC_FIX, *SYS_FIX)
    return text


def _mutated_patches(text: str, rng: random.Random) -> list[str]:
    lines = text.splitlines(keepends=True)
    out = []
    for _ in range(8):  # lines lost or repeated
        cut = list(lines)
        i = rng.randrange(len(cut))
        if rng.random() < 0.5:
            del cut[i]
        else:
            cut.insert(i, cut[i])
        out.append("".join(cut))
    for _ in range(8):  # characters changed, in headers and hunks alike
        b = list(text)
        for _ in range(rng.choice((1, 2, 5))):
            b[rng.randrange(len(b))] = rng.choice("@-+ \t\n/.ab0123\x00\x1b")
        out.append("".join(b))
    out.append(text.replace("@@ -", "@@ -99", 1))  # a hunk far from its place
    out.append(text.replace("a/fs/proc.c", "a/../../etc/passwd"))  # a path out of the tree
    return out


def test_mutated_patches_end_cleanly(warm_kernel: Kernel, tmp_path: Path) -> None:
    """Each mutated patch either builds an update or is refused with a message (exit 1, 65
    or 66); Kernel.ksplice fails the test on a traceback or a change to the user's state."""
    k = warm_kernel
    rng = random.Random(7)
    codes = []
    for i, text in enumerate(_mutated_patches(_patch_text(k), rng)):
        p = tmp_path / f"m{i}.patch"
        p.write_text(text, errors="surrogateescape")
        r = k.create(f"--patch={p}", "--id", f"m{i}", expect=None, timeout=120)
        assert r.returncode in (0, 1, 65, 66), (i, r.returncode, r.stderr[-2000:])
        assert "internal error" not in r.stderr, (i, r.stderr[-2000:])
        codes.append(r.returncode)
        k.assert_no_tmp_refs()
    assert 1 in codes, codes  # the mutations do reach the refusals
