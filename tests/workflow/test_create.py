"""`git ksplice create`: the four input modes, --series stacking, incremental builds."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.workflow.conftest import (
    DEMO_FIX,
    PROC_FIX,
    SYS_FIX,
    Kernel,
    changed_functions,
    diff_objects,
    manifest,
    read_update,
    run,
)


def _created(r) -> dict:
    doc = json.loads(r.stdout)  # exactly one JSON document on stdout
    assert doc["result"] == "created", doc
    return doc


def test_every_mode_gives_the_same_update(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A developer gives the same fix as a commit, as --git, as a patch file and as X.new
    files: each is the same update, and the temporary commits leave nothing behind."""
    k = warm_kernel
    pre = k.rev("refs/ksplice/pre")
    post = k.commit("proc: say more", PROC_FIX)
    patch = tmp_path / "fix.patch"
    patch.write_text(k.diff())

    runs = {"commit": [], "git": ["--git=HEAD"], "patch": [f"--patch={patch}"],
            "patch_again": [f"--patch={patch}"], "diffext": ["--diffext=.new"]}
    updates: dict[str, dict[str, bytes]] = {}
    for mode, args in runs.items():
        if mode == "diffext":
            (k.path / "fs/proc.c.new").write_text((k.path / "fs/proc.c").read_text())
        r = k.create(*args, "--id", mode, "--json")
        doc = _created(r)
        assert Path(doc["tarball"]) == k.tarball(mode)
        updates[mode] = read_update(k.tarball(mode))
        k.assert_no_tmp_refs()
        k.assert_tree_clean()
        assert k.rev("refs/ksplice/pre") == pre, "without --series pre stays"

    reference = diff_objects(updates["commit"])
    assert sorted(reference) == ["debug/diff/fs/proc.o"]
    manifests = {mode: manifest(files) for mode, files in updates.items()}
    for mode, files in updates.items():
        assert diff_objects(files) == reference, f"{mode}: diff objects differ from COMMIT's"
        m = manifests[mode]
        assert changed_functions(m) == {"fs/proc.o": ["proc_show"]}, mode
        assert m["pre"] == pre and m["id"] == mode
        assert k.rev(f"refs/ksplice/updates/{mode}") == m["post"]
        assert k.rev(m["post"] + "^{tree}") == k.rev("HEAD^{tree}"), f"{mode}: post tree"
        assert k.rev(m["post"] + "^") == pre

    assert manifests["commit"]["post"] == manifests["git"]["post"] == post
    assert [manifests[m]["mode"] for m in runs] == ["commit", "commit", "patch", "patch",
                                                   "diffext"]
    # The temporary commit of a patch is a function of the patch and pre alone.
    assert manifests["patch"]["post"] == manifests["patch_again"]["post"] != post
    assert updates["patch"]["patch"] == patch.read_bytes()
    assert b"uptime: up and running" in updates["diffext"]["patch"]
    assert b"proc: say more" in updates["commit"]["patch"], "COMMIT keeps the log message"


def test_series_stacks_updates(warm_kernel: Kernel) -> None:
    """A vendor ships a fix, then a second one built on top of the first (--series)."""
    k = warm_kernel
    base = k.rev("refs/ksplice/pre")
    first = k.commit("proc: say more", PROC_FIX)
    k.create("--series", "--id", "one", "--description", "first fix")
    assert k.rev("refs/ksplice/pre") == first, "--series moves pre to the first post"
    k.assert_tree_clean()

    second = k.commit("uname: longer name", SYS_FIX)
    k.create("--series", "--id", "two")
    one, two = (read_update(k.tarball(i)) for i in ("one", "two"))
    m1, m2 = manifest(one), manifest(two)
    assert (m1["pre"], m1["post"]) == (base, first)
    assert (m2["pre"], m2["post"]) == (first, second)
    assert sorted(diff_objects(two)) == ["debug/diff/kernel/sys.o"]
    assert changed_functions(m2) == {"kernel/sys.o": ["sys_uname"]}
    assert k.rev("refs/ksplice/pre") == second
    k.assert_tree_clean()

    log = k.git("log", "--format=%s", "refs/ksplice/series").splitlines()
    assert log == ["ksplice two: uname: longer name", "ksplice one: first fix"]
    assert k.git("show", "refs/ksplice/series:description") == "uname: longer name\n"
    assert json.loads(k.git("show", "refs/ksplice/series~1:manifest.json"))["id"] == "one"
    reflog = k.git("reflog", "show", "--format=%gs", "refs/ksplice/pre").splitlines()
    assert len(reflog) == 3, reflog  # created, moved by one, moved by two
    assert all(msg.startswith("ksplice create") for msg in reflog), reflog
    assert k.git("reflog", "show", "--format=%gs", "refs/ksplice/series").count("\n") == 2


def _compiled(log: str) -> list[str]:
    return re.findall(r"^  CC      (\S+)$", log, re.M)


def test_prebuild_then_create_compiles_only_the_change(warm_kernel: Kernel) -> None:
    """After --prebuild, a one-file fix rebuilds one object, not the kernel."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "proc")
    files = read_update(k.tarball("proc"))
    log = files["debug/build.log"].decode()
    assert _compiled(log) == ["fs/proc.o"], log
    assert log == k.log("proc").read_text()
    assert log.startswith("$ make -j"), log


def test_header_change_recompiles_everything_ships_only_changed_code(
        warm_kernel: Kernel) -> None:
    """A fix that touches a shared header: every unit recompiles, yet the update carries
    only the function whose code changed."""
    k = warm_kernel
    k.commit("proc: text from a header", {
        "include/tiny.h": ("#endif", '#define PROC_TEXT "uptime: up and running\\n"\n\n#endif'),
        "fs/proc.c": ('"uptime: up\\n"', "PROC_TEXT"),
    })
    k.create("--id", "hdr")
    files = read_update(k.tarball("hdr"))
    units = ["arch/head.o", "drivers/demo/demo_main.o", "drivers/demo/demo_util.o",
             "fs/proc.o", "kernel/core.o", "kernel/printk.o", "kernel/sys.o"]
    assert sorted(_compiled(files["debug/build.log"].decode())) == units
    assert sorted(diff_objects(files)) == ["debug/diff/fs/proc.o"]
    assert changed_functions(manifest(files)) == {"fs/proc.o": ["proc_show"]}
    assert files["contents"] == b"target vmlinux\n"
    k.assert_tree_clean()


def test_comment_only_header_change_is_no_change(warm_kernel: Kernel) -> None:
    """A header change that only edits a comment recompiles everything and ships nothing."""
    k = warm_kernel
    k.commit("tiny.h: comment", {"include/tiny.h": ("/* Kernel-like", "/* Kernel-style")})
    refs = k.ksplice_refs()
    r = k.create("--id", "comment", expect=66)
    assert "No changes detected." in r.stderr
    assert k.ksplice_refs() == refs
    assert not k.tarball("comment").exists()
    assert sorted(_compiled(k.log("comment").read_text()))[0] == "arch/head.o"
    k.assert_tree_clean()


def test_series_of_patches(warm_kernel: Kernel, tmp_path: Path) -> None:
    """Ksplice's habit: stack patch files with --series; each applies on top of the last
    update, whose temporary commit stays reachable from refs/ksplice/pre and its update ref."""
    k = warm_kernel
    patches = []
    for name, edits in (("one", PROC_FIX), ("two", SYS_FIX)):
        k.commit(name, edits)
        patches.append(tmp_path / f"{name}.patch")
        patches[-1].write_text(k.diff())
    k.git("reset", "-q", "--hard", "HEAD~2")
    base = k.rev("HEAD")

    k.create(f"--patch={patches[0]}", "--series", "--id", "one")
    first = k.rev("refs/ksplice/pre")
    assert first != base and k.rev("refs/ksplice/updates/one") == first
    author = k.git("log", "--format=%an <%ae>", "-1", first)
    assert author == "git-ksplice <git-ksplice@localhost>\n"
    k.create(f"--patch={patches[1]}", "--series", "--id", "two")
    m = manifest(read_update(k.tarball("two")))
    assert m["pre"] == first and k.rev(m["post"] + "^") == first
    assert changed_functions(m) == {"kernel/sys.o": ["sys_uname"]}
    k.assert_no_tmp_refs()
    # pre moved on: the first patch is in it already.
    r = k.create(f"--patch={patches[0]}", "--id", "again", expect=1)
    assert "does not apply" in r.stderr, r.stderr


def test_series_prebuild_moves_pre_to_head(warm_kernel: Kernel) -> None:
    """The machine was rebooted into a new kernel built from HEAD: --series --prebuild makes
    HEAD the running kernel's source, and updates build on it."""
    k = warm_kernel
    old = k.rev("refs/ksplice/pre")
    k.commit("proc: say more", PROC_FIX)
    new = k.commit("uname: longer name", SYS_FIX)
    r = k.create("--series", "--prebuild")
    assert new[:12] in r.stderr
    assert k.rev("refs/ksplice/pre") == new
    msg = k.git("reflog", "show", "--format=%gs", "-1", "refs/ksplice/pre").strip()
    assert msg.startswith("ksplice create: --series --prebuild"), msg
    k.assert_tree_clean()
    assert "up and running" in (k.tree / "fs/proc.c").read_text()
    k.create("--id", "same", expect=66)
    k.commit("demo: one more", DEMO_FIX)
    k.create("--id", "demo")
    m = manifest(read_update(k.tarball("demo")))
    assert m["pre"] == new and m["pre"] != old
    assert _compiled(k.log("demo").read_text()) == ["drivers/demo/demo_util.o"]


def test_patch_with_strip_level_zero(warm_kernel: Kernel, tmp_path: Path) -> None:
    """A patch made with plain `diff -u fs/proc.c.orig fs/proc.c` (no a/ b/ prefixes) is
    applied with --patch-opt=-p0, and gives the update a -p1 patch gives."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    p1 = tmp_path / "p1.patch"
    p1.write_text(k.diff())
    p0 = tmp_path / "p0.patch"
    p0.write_text(k.git("diff", "--no-prefix", "HEAD~1", "HEAD"))
    k.create(f"--patch={p1}", "--id", "p1")
    k.create(f"--patch={p0}", "--patch-opt=-p0", "--id", "p0")
    a, b = (manifest(read_update(k.tarball(i))) for i in ("p1", "p0"))
    assert a["post"] == b["post"] or k.rev(a["post"] + "^{tree}") == k.rev(b["post"] + "^{tree}")
    r = k.create(f"--patch={p0}", "--id", "p0bad", expect=1)  # -p1 strips the fs/ directory
    assert "does not apply" in r.stderr or "can't find file" in r.stderr, r.stderr


def test_new_source_file(warm_kernel: Kernel) -> None:
    """A fix adds a new compilation unit to vmlinux: its functions are new code of the
    update (or the change is refused, naming the object); never an internal error."""
    k = warm_kernel
    (k.path / "kernel/extra.c").write_text(
        "#include <tiny.h>\n\nint extra_fn(void)\n{\n\treturn 42;\n}\n")
    k.edit("Makefile", "kernel/sys.o fs/proc.o", "kernel/sys.o kernel/extra.o fs/proc.o")
    k.git("add", "kernel/extra.c", "Makefile")
    k.git("commit", "-q", "-m", "kernel: an extra function")
    r = k.create("--id", "extra", "--json", expect=None)
    assert "pristine" not in r.stderr, "an internal path leaks into the message"
    if r.returncode == 0:
        m = manifest(read_update(k.tarball("extra")))
        assert changed_functions(m) == {"kernel/extra.o": ["extra_fn"]}
    else:
        assert r.returncode == 65 and "kernel/extra.o" in r.stderr, r.stderr
    k.assert_tree_clean()


def test_running_kernel_config_differs_from_committed(warm_kernel: Kernel,
                                                      tmp_path: Path) -> None:
    """The running kernel was configured with the demo driver built in (CONFIG_DEMO=y)
    while the tree's committed .config says =m: the update is built for the running kernel's
    configuration (demo code is in vmlinux), and only the changed unit is recompiled."""
    k = warm_kernel
    running = tmp_path / "running-y"
    shutil.copytree(k.path, running, ignore=shutil.ignore_patterns(".git", "ksplice"))
    k.edit(".config", "CONFIG_DEMO=m", "CONFIG_DEMO=y", root=running)
    run(["make", "-s"], cwd=running)
    for name in (".config", "System.map"):
        shutil.copy2(running / name, k.path / "ksplice" / name)
    k.prebuild()
    k.commit("demo: one more", DEMO_FIX)
    k.create("--id", "demo")
    files = read_update(k.tarball("demo"))
    assert files["contents"] == b"target vmlinux\n"
    assert changed_functions(manifest(files)) == {"drivers/demo/demo_util.o": ["demo_value"]}
    assert _compiled(files["debug/build.log"].decode()) == ["drivers/demo/demo_util.o"]
    k.assert_tree_clean()


def test_uncommitted_work_stays_out(warm_kernel: Kernel) -> None:
    """The developer has staged, unstaged and untracked work in progress besides the
    committed fix: the update is the commit alone, and their work is untouched."""
    k = warm_kernel
    k.commit("proc: say more", PROC_FIX)
    k.edit("kernel/sys.c", '"Tiny"', '"Tiny WIP"')
    k.git("add", "kernel/sys.c")
    k.edit("kernel/printk.c", "return 0;", "return 1;")
    (k.path / "kernel/new.c").write_text("int wip;\n")
    k.create("--id", "fix")  # Kernel.ksplice checks that the index and files are unchanged
    files = read_update(k.tarball("fix"))
    assert sorted(diff_objects(files)) == ["debug/diff/fs/proc.o"]
    assert _compiled(files["debug/build.log"].decode()) == ["fs/proc.o"]


def test_unrelated_fixes_in_a_row(warm_kernel: Kernel) -> None:
    """Two fixes on two branches built one after the other: the second update does not
    carry the first (the build tree was reverted), and each compiles one object."""
    k = warm_kernel
    k.git("switch", "-q", "-c", "proc-fix")
    k.commit("proc: say more", PROC_FIX)
    k.create("--id", "proc")
    k.git("switch", "-q", "-c", "sys-fix", "main")
    k.commit("uname: longer name", SYS_FIX)
    k.create("--id", "sys")
    files = read_update(k.tarball("sys"))
    assert sorted(diff_objects(files)) == ["debug/diff/kernel/sys.o"]
    assert _compiled(files["debug/build.log"].decode()) == ["kernel/sys.o"]
    k.git("switch", "-q", "proc-fix")
    k.create("--id", "proc2")
    assert diff_objects(read_update(k.tarball("proc2"))) == diff_objects(
        read_update(k.tarball("proc")))
    k.assert_tree_clean()


STRUCT_BASE = {
    "include/tiny.h": ("unsigned long jiffies_now(void);",
                       "unsigned long jiffies_now(void);\n\nstruct tiny_req {\n"
                       "\tunsigned long len;\n};"),
    "kernel/sys.c": ("long sys_uname(char *buf, unsigned long len)\n{\n"
                     "\treturn scnprintf(buf, len, sysname);",
                     "noinline unsigned long req_len(struct tiny_req *r)\n{\n"
                     "\treturn r->len;\n}\n\n"
                     "long sys_uname(char *buf, unsigned long len)\n{\n"
                     "\tstruct tiny_req req = { .len = len };\n\n"
                     "\treturn scnprintf(buf, req_len(&req), sysname);"),
}


def test_struct_layout_change_is_refused_before_building(kernel: Kernel) -> None:
    """A member added to a struct: refused from the source, before any build, naming the
    struct (objects the running kernel has would be misread); --allow-layout-change builds
    it anyway, for a type that has no object live across the update (here: on the stack)."""
    k = kernel
    k.commit("tiny_req", STRUCT_BASE)
    k.create("--prebuild")
    pre = k.rev("refs/ksplice/pre")
    k.commit("tiny_req: flags", {
        "include/tiny.h": ("\tunsigned long len;\n", "\tunsigned long flags;\n"
                           "\tunsigned long len;\n")})
    r = k.create("--id", "layout", "--json", expect=65)
    assert "layout of struct tiny_req (include/tiny.h:" in r.stderr
    assert "shadow variable" in r.stderr and "--allow-layout-change" in r.stderr
    assert json.loads(r.stdout)["result"] == "refused"
    assert "pristine build" not in r.stderr  # refused before building anything
    assert not k.tarball("layout").exists() and k.rev("refs/ksplice/pre") == pre
    k.assert_no_tmp_refs()

    r = k.create("--id", "layout", "--allow-layout-change")
    assert "warning: the change alters the layout of struct tiny_req" in r.stderr
    assert changed_functions(manifest(read_update(k.tarball("layout")))) == {
        "kernel/sys.o": ["req_len", "sys_uname"]}
