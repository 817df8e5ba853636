"""The hook on the real kernel: a fix committed on a watched branch is built in the
background, and the update it leaves works under qemu."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.kernel.conftest import KernelRepo

pytestmark = pytest.mark.kernel


def _jobs(k: KernelRepo) -> dict:
    return json.loads(k.ksplice("hook", "status", "--json").stdout)


def test_a_commit_on_the_watched_branch_becomes_a_working_update(
        kernel_repo: KernelRepo) -> None:
    k = kernel_repo
    branch = f"t/hooked-{uuid.uuid4().hex[:6]}"
    k.ksplice("hook", "install", "--branch", branch)
    try:
        k.git("checkout", "-q", "-f", "-b", branch, "refs/ksplice/pre")
        p = k.path / "fs/proc/meminfo.c"
        p.write_text(p.read_text().replace('"MemAvailable:   "', '"MemAvailable:?  "', 1))
        k.git("commit", "-qam", "meminfo: say it from the hook")
        commit = k.git("rev-parse", "HEAD").strip()
        # The commit has returned; the job is queued (in the background too) and built
        # without it.
        doc = _jobs(k)
        assert doc["notifying"] or [j["state"] for j in doc["jobs"]
                                    if j["commit"] == commit] in (["queued"], ["running"])
        deadline = time.monotonic() + 900
        while True:
            doc = _jobs(k)
            mine = [j for j in doc["jobs"] if j["commit"] == commit]
            if mine and mine[0]["state"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, doc
            time.sleep(1)
        job = mine[0]
        assert job["state"] == "built", (job, Path(job["log"]).read_text()[-3000:])
        r = k.try_update(Path(job["tarball"]), 'grep -q "MemAvailable:?" /proc/meminfo')
        assert r.returncode == 0, r.stdout + r.stderr
        assert "the update works" in r.stderr
    finally:
        k.ksplice("hook", "uninstall")
