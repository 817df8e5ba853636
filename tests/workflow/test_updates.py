"""What an update holds and how it is shown: modules, targets, reproducible tarballs,
`git ksplice view` and `git ksplice series`, and builds through ccache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

from tests.needs import require
from tests.workflow.conftest import (
    DEMO_FIX,
    EPOCH,
    PROC_FIX,
    SYS_FIX,
    Kernel,
    changed_functions,
    diff_objects,
    manifest,
    read_update,
    symbols,
)


def test_build_modules_and_only_targets(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A fix to a loadable module (drivers/demo): the update targets the module and, with
    --build-modules, ships the rebuilt demo.ko; --only-targets narrows what is patched."""
    k = warm_kernel
    k.commit("demo: one more", DEMO_FIX)
    k.create("--build-modules", "--id", "mod")
    files = read_update(k.tarball("mod"))
    assert files["contents"] == b"target demo\nmodule demo modules/demo.ko\n"
    ko = files["modules/demo.ko"]
    assert ko[:4] == b"\x7fELF"
    assert re.search(r" T demo_value$", symbols(ko, tmp_path), re.M)
    assert sorted(diff_objects(files)) == ["debug/diff/drivers/demo/demo_util.o"]
    m = manifest(files)
    assert list(m["targets"]) == ["demo"]
    assert changed_functions(m) == {"drivers/demo/demo_util.o": ["demo_value"]}
    k.assert_tree_clean()
    reverted = (k.tree / "drivers/demo/demo.ko").read_bytes()
    assert reverted == (k.tree.parent / "pristine/drivers/demo/demo.ko").read_bytes() != ko

    r = k.create("--only-targets=vmlinux", "--id", "vm", expect=66)
    assert "No changes detected." in r.stderr

    # A fix touching both: the pattern (make's %) picks the module only.
    k.commit("proc: say more", PROC_FIX)
    k.create("--only-targets=de%", "--id", "de")
    files = read_update(k.tarball("de"))
    assert files["contents"] == b"target demo\n"
    assert sorted(diff_objects(files)) == ["debug/diff/drivers/demo/demo_util.o"]
    assert not any(name.startswith("modules/") for name in files)


def test_tarball_layout(warm_kernel: Kernel) -> None:
    """What a packager finds inside ksplice-<ID>.tar.gz."""
    k = warm_kernel
    post = k.commit("uname: longer name\n\nSay Tiny Linux.", SYS_FIX)
    description = "uname: report the full name\n\nThe tiny kernel said “Tiny”."
    k.create("--id", "layout", "--description", description,
             "--extra-match=kernel/%", "--exclude-match=kernel/printk.o")
    files = read_update(k.tarball("layout"))
    assert sorted(files) == [
        "api-version", "contents", "debug/build.log", "debug/diff/kernel/sys.o",
        "debug/objects/extra/kernel/core.o", "debug/objects/post/kernel/sys.o",
        "debug/objects/pre/kernel/sys.o", "description", "manifest.json", "patch",
        "timestamp", "utsname"]
    assert files["contents"] == b"target vmlinux\n"
    assert files["description"] == (description + "\n").encode()
    assert k.git("log", "-1", "--format=%s", "refs/ksplice/series") == (
        "ksplice layout: uname: report the full name\n")
    assert files["api-version"] == b"1\n"
    assert re.fullmatch(rb"\d+\n", files["timestamp"])
    assert b"Release: 0.1.0-tiny\n" in files["utsname"]
    assert files["patch"].startswith(b"uname: longer name\n\nSay Tiny Linux.\n\ndiff --git")
    assert files["debug/objects/extra/kernel/core.o"] == (
        k.tree.parent / "pristine/kernel/core.o").read_bytes()
    m = manifest(files)
    assert (m["id"], m["post"], m["mode"]) == ("layout", post, "commit")
    assert m["extra_objects"] == ["kernel/core.o"]
    assert m["description"] == description
    assert m["kcflags"] == "-ffunction-sections -fdata-sections"
    with tarfile.open(k.tarball("layout")) as tar:
        for member in tar.getmembers():
            assert member.name.startswith("ksplice-layout/") or member.name == "ksplice-layout"
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")


def test_reproducible_tarballs(new_kernel) -> None:
    """A distributor rebuilds an update on another machine (another checkout path) with
    SOURCE_DATE_EPOCH and the same id: the tarball is byte-for-byte the same."""
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    tarballs = []
    for name in ("a", "somewhere/much/deeper/b"):
        k = new_kernel(name)
        k.prebuild()
        k.commit("proc: say more", PROC_FIX)
        k.create("--id", "repro", env=env)
        tarballs.append(k.tarball("repro").read_bytes())
    assert tarballs[0] == tarballs[1]
    files = read_update(k.tarball("repro"))
    assert files["timestamp"] == f"{EPOCH}\n".encode()
    assert manifest(files)["timestamp"] == int(EPOCH)
    with tarfile.open(k.tarball("repro")) as tar:
        assert {m.mtime for m in tar.getmembers()} == {int(EPOCH)}


def test_view_and_series(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A developer looks at what was built: one update (from its tarball or by id) and the
    whole series, for people and as JSON."""
    k = warm_kernel
    r = k.ksplice("series")
    assert r.stdout == "" and "No updates built yet." in r.stderr
    assert json.loads(k.ksplice("series", "--json").stdout) == {"schema": 1, "series": []}

    pre = k.rev("HEAD")
    first = k.commit("proc: say more", PROC_FIX)
    k.create("--id", "one", "--description", "first fix")
    second = k.commit("uname: longer name", SYS_FIX)
    k.create("--id", "two")

    shown = k.ksplice("view", str(k.tarball("one"))).stdout
    lines = shown.splitlines()
    assert lines[0] == "Update one: first fix"
    assert lines[1] == f"pre {pre}  post {first}"
    assert "  target vmlinux" in lines
    assert "  changed  vmlinux: proc_show (fs/proc.o)" in lines
    assert any("up and running" in line and line.startswith("+") for line in lines)
    assert k.ksplice("view", "--id", "one").stdout == shown

    doc = json.loads(k.ksplice("view", "--json", str(k.tarball("two"))).stdout)
    assert (doc["id"], doc["pre"], doc["post"]) == ("two", pre, second)
    assert doc["description"] == "uname: longer name"
    assert doc["targets"] == ["vmlinux"] and doc["contents"] == ["target vmlinux"]
    assert doc["functions"] == [
        {"target": "vmlinux", "object": "fs/proc.o", "function": "proc_show",
         "status": "changed"},
        {"target": "vmlinux", "object": "kernel/sys.o", "function": "sys_uname",
         "status": "changed"}]
    assert "Tiny Linux" in doc["patch"] and "up and running" in doc["patch"]
    by_id = json.loads(k.ksplice("view", "--json", "--id", "two").stdout)
    assert {key: by_id[key] for key in doc} == doc

    series = json.loads(k.ksplice("series", "--json").stdout)["series"]
    assert [e["id"] for e in series] == ["one", "two"], "oldest first"
    assert [(e["pre"], e["post"]) for e in series] == [(pre, first), (pre, second)]
    assert [e["description"] for e in series] == ["first fix", "uname: longer name"]
    assert series[1]["entry"] == k.rev("refs/ksplice/series")
    assert [e["stacked"] for e in series] == [False, False]
    plain = k.ksplice("series").stdout.splitlines()
    assert plain[0].split()[:5] == ["ID", "BUILT", "POST", "S", "TARGETS"]
    assert [line.split()[0] for line in plain[1:3]] == ["one", "two"]
    assert re.fullmatch(r"one  \d{4}-\d\d-\d\d \d\d:\d\d  " + first[:12]
                        + r"  -  vmlinux  first fix", plain[1]), plain

    for args, message in [(("view", "--id", "nope"), "no update nope"),
                          (("view",), "give a TARBALL or --id"),
                          (("view", str(k.path / "README")), "cannot read update")]:
        r = k.ksplice(*args, expect=1)
        assert message in r.stderr, r.stderr
    not_an_update = tmp_path / "other.tar.gz"
    with tarfile.open(not_an_update, "w:gz") as tar:
        tar.add(k.path / "RELEASE", arcname="RELEASE")
    r = k.ksplice("view", str(not_an_update), expect=1)
    assert "is not a ksplice update" in r.stderr, r.stderr


def test_view_prints_the_patch_verbatim(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A reviewer saves the patch shown by `git ksplice view` and applies it elsewhere: it
    must be the update's patch byte for byte (tabs included)."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "one")
    patch = read_update(k.tarball("one"))["patch"].decode()
    assert "\treturn" in patch
    for args in (("view", str(k.tarball("one"))), ("view", "--id", "one")):
        shown = k.ksplice(*args).stdout
        assert shown.endswith("\n" + patch), f"git ksplice {' '.join(args)}:\n{shown}"


def test_through_ccache(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A developer builds through ccache (ksplice.makeArgs CC="ccache gcc"): the same
    update as without, and the second identical build is served from the cache."""
    require("ccache")
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "plain")
    k.git("config", "ksplice.makeArgs", 'CC="ccache gcc"')
    env = {"CCACHE_DIR": str(tmp_path / "ccache")}

    def stats() -> dict[str, int]:
        r = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True,
                           env={**os.environ, **env}, check=True)
        return {key: int(value) for key, value in
                (line.split("\t") for line in r.stdout.splitlines()) if value.isdigit()}

    k.create("--prebuild", env=env)
    assert "'CC=ccache gcc'" in (k.state_dir / "logs/prebuild.log").read_text().splitlines()[0]
    k.create("--id", "cc1", env=env)
    before = stats()
    k.create("--id", "cc2", env=env)
    after = stats()
    hits = sum(after.get(s, 0) - before.get(s, 0)
               for s in ("direct_cache_hit", "preprocessed_cache_hit"))
    assert hits >= 1, (before, after)
    assert "'CC=ccache gcc'" in k.log("cc2").read_text().splitlines()[0]
    plain = diff_objects(read_update(k.tarball("plain")))
    for update_id in ("cc1", "cc2"):
        assert diff_objects(read_update(k.tarball(update_id))) == plain != {}
    k.assert_tree_clean()



AUTHOR_FIX = {"fs/proc.c": (
    '\treturn scnprintf(buf, len, "uptime: up\\n");\n}\n',
    '\treturn scnprintf(buf, len, "uptime: up (debug)\\n");\n}\n\n'
    '#include "ksplice-patch.h"\n'
    "KPATCH_IGNORE_FUNCTION(proc_show);\n"
    "static int up_since;\n"
    "static void ksplice_note_start(void) { up_since = 1; }\n"
    "ksplice_apply(ksplice_note_start);\n")}


def test_author_records_in_manifest_and_view(warm_kernel: Kernel) -> None:
    """A patch that includes the shipped header (found without copying it: create puts its
    directory on the build's include path) registers a Ksplice hook and marks its other
    change ignored: the manifest and `view` show the callback and what was left out."""
    k = warm_kernel
    k.commit("proc: note the start", AUTHOR_FIX)
    k.create("--id", "hooks")
    obj = manifest(read_update(k.tarball("hooks")))["targets"]["vmlinux"]["objects"]["fs/proc.o"]
    assert obj["callbacks"] == [{"slot": "post_patch", "function": "ksplice_note_start",
                                 "signature": "void", "macro": "ksplice_apply"}]
    assert [e["symbol"] for e in obj["left_out"]] == ["proc_show"]
    assert obj["changed_functions"] == []
    shown = k.ksplice("view", "--id", "hooks").stdout
    assert re.search(r"callback +vmlinux: ksplice_note_start \(post_patch, ksplice_apply\)",
                     shown), shown
    assert re.search(r"left out +vmlinux: proc_show", shown), shown
