"""Debian's shipped kernel, from its packages to a proven update: import-kernel reads it, the
build is pinned to it (no flags file), the run-pre check proves the pristine code is Debian's,
and `try` boots Debian's own vmlinuz with the update loaded and undone."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from tests.debian.conftest import RELEASE, DebianRepo
from tests.kernel.conftest import _git_env, _sh

pytestmark = [pytest.mark.kernel, pytest.mark.debian]

MEMINFO = "fs/proc/meminfo.c"


def _proven(k: DebianRepo, name: str, edits: dict, check: str) -> dict:
    """Build the fix and prove it under qemu; its manifest."""
    k.commit_patch(name, edits)
    _, tarball, r = k.create(name)
    assert "run-pre check: done" in r.stderr, r.stderr
    tried = k.try_update(tarball, check)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    view = k.ksplice("view", "--json", str(tarball))
    return json.loads(view.stdout)


def test_import_reads_debians_packages(debian_repo: DebianRepo) -> None:
    k = debian_repo
    orig = k.path / "ksplice"
    info = json.loads((orig / "kernel.json").read_text())
    assert info["release"] == RELEASE
    assert info["compiler"].startswith("gcc-12 (Debian 12.2.0")
    assert info["vermagic"] == f"{RELEASE} SMP preempt mod_unload modversions "
    assert info["system_map_from_kallsyms"] and info["missing"] == ["vmlinux"]
    assert info["imported"][".config"]["from"].endswith(f"linux-headers-{RELEASE}/.config")
    assert not (orig / "flags").exists()
    assert len((orig / "System.map").read_text().splitlines()) > 90000
    assert (orig / "modules/kernel/fs/nls/nls_iso8859-1.ko").is_file()


def test_a_string_in_vmlinux(debian_repo: DebianRepo) -> None:
    manifest = _proven(debian_repo, "meminfo-string", {MEMINFO: [
        ('"MemTotal:       "', '"MemTotal(lp):   "')]}, "grep -q 'MemTotal(lp):' /proc/meminfo")
    functions = [f["function"] for f in manifest["functions"]]
    assert functions == ["meminfo_proc_show"], manifest


def test_a_new_helper_and_a_static_local(debian_repo: DebianRepo) -> None:
    """A new noinline function called from the changed one, with a static counter."""
    _proven(debian_repo, "cmdline-helper", {"fs/proc/cmdline.c": [
        ("static int cmdline_proc_show(struct seq_file *m, void *v)\n{",
         "static noinline void cmdline_mark(struct seq_file *m)\n{\n"
         "\tstatic int shown;\n\n\tseq_printf(m, \" lp=%d\", ++shown);\n}\n\n"
         "static int cmdline_proc_show(struct seq_file *m, void *v)\n{"),
        ("\tseq_puts(m, saved_command_line);\n",
         "\tseq_puts(m, saved_command_line);\n\tcmdline_mark(m);\n")]},
        "grep -q ' lp=1' /proc/cmdline && grep -q ' lp=2' /proc/cmdline")


def test_a_static_function_of_two_namesakes(debian_repo: DebianRepo) -> None:
    """fs/proc/fd.c's seq_show shares its name with another static function: without the
    debug package's FILE symbols, the run-pre matching tells which one runs at which
    address, and the klp_func's sympos follows."""
    k = debian_repo
    system_map = (k.path / "ksplice" / "System.map").read_text().splitlines()
    namesakes = [line.split()[0] for line in system_map if line.endswith(" t seq_show")]
    assert len(namesakes) == 2
    manifest = _proven(k, "fdinfo", {"fs/proc/fd.c": [
        ('"pos:\\t%lli', '"pos(lp):\\t%lli')]}, "grep -q 'pos(lp)' /proc/self/fdinfo/0")
    assert manifest["functions"][0]["function"] == "seq_show"
    tarball = next(k.out.glob(f"ksplice-{manifest['id']}.tar.gz"))
    with tarfile.open(tarball) as t:
        member = t.extractfile(f"ksplice-{manifest['id']}/manifest.json")
        funcs = json.loads(member.read())["livepatch"]["functions"]  # type: ignore[union-attr]
    # fs/proc/fd.o's is the first of the two in address order
    assert funcs == [{"target": "vmlinux", "name": "seq_show", "sympos": 1}], funcs


BRIDGE = {"net/bridge/br_sysfs_br.c": [
    ('return sprintf(buf, "%lu\\n", jiffies_to_clock_t(br->forward_delay));',
     'return sprintf(buf, "%lu lp\\n", jiffies_to_clock_t(br->forward_delay));')]}
SHOW_BRIDGE = ("brctl addbr br0 2>/dev/null\n"
               "grep -q ' lp' /sys/class/net/br0/bridge/forward_delay")


def test_a_module_loaded_before_the_update(debian_repo: DebianRepo) -> None:
    """The bridge module, shipped by Debian, loaded with what it depends on (llc, stp)
    before the update: sympos and the run-pre check read the shipped bridge.ko."""
    k = debian_repo
    k.commit_patch("bridge-before", BRIDGE)
    _, tarball, r = k.create("bridge-before")
    assert "changed  bridge: forward_delay_show" in r.stderr, r.stderr
    assert "run-pre check: done" in r.stderr
    tried = k.ksplice("try", str(tarball), "--modules", "bridge", "--check",
                      str(_script(k, "bridge-before", SHOW_BRIDGE)), expect=None)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "load-module:llc" in tried.stderr and "load-module:stp" in tried.stderr


def test_a_module_loaded_after_the_update(debian_repo: DebianRepo) -> None:
    """Not loaded when the update is: the check modprobes it (the guest has the update's
    target modules with a modules.dep) once the livepatch is there, and the kernel applies
    the update to it as it loads. The update is signed (Debian's kernel, not enforcing
    signatures, loads it either way; the signature is checked for what sign-file writes)."""
    k = debian_repo
    k.commit_patch("bridge-after", BRIDGE)
    key, cert = k.out / "signing.pem", k.out / "signing.der"
    _sh("openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
        str(key), "-outform", "DER", "-out", str(cert), "-subj", "/CN=git-ksplice test",
        "-days", "30", cwd=k.out)
    _, tarball, r = k.create("bridge-after", "--sign-key", str(key), "--sign-cert", str(cert))
    assert "signed (sha256)" in r.stderr, r.stderr  # CONFIG_MODULE_SIG_HASH
    with tarfile.open(tarball) as t:
        ko = next(m for m in t.getmembers() if m.name.endswith(".ko"))
        data = t.extractfile(ko).read()  # type: ignore[union-attr]
    assert data.endswith(b"~Module signature appended~\n") and b"git-ksplice test" in data
    check = ("if ls /sys/kernel/livepatch | grep -q ksplice; then modprobe bridge; fi\n"
             + SHOW_BRIDGE)
    keep = k.out / "bridge-after.try"
    tried = k.ksplice("try", str(tarball), "--keep", str(keep), "--check",
                      str(_script(k, "bridge-after", check)), expect=None)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    console = (keep / "console.log").read_text(errors="replace")
    assert "to loading module 'bridge'" in console, console[-3000:]


def _script(k: DebianRepo, name: str, body: str):
    script = k.out / f"{name}.check.sh"
    script.write_text("#!/bin/sh\n" + body + "\n")
    return script


def test_a_syscall_body_with_a_user_copy(debian_repo: DebianRepo) -> None:
    """uname(2): the body __do_sys_newuname is inlined into its traceable wrapper (no
    __fentry__ of its own), which is what gets replaced; copy_to_user is in it."""
    _proven(debian_repo, "uname", {"kernel/sys.c": [
        ("\tif (copy_to_user(name, &tmp, sizeof(tmp)))\n\t\treturn -EFAULT;\n\n"
         "\tif (override_release",
         "\tstrcpy(tmp.sysname, \"Debian-lp\");\n"
         "\tif (copy_to_user(name, &tmp, sizeof(tmp)))\n\t\treturn -EFAULT;\n\n"
         "\tif (override_release")]}, '[ "$(uname -s)" = Debian-lp ]')


def test_a_function_with_exception_table_entries(debian_repo: DebianRepo) -> None:
    """filldir64 writes to user space with unsafe_put_user: its __ex_table entries come
    with it, and the run-pre check passes over their sites. The update hides "ksplice"."""
    manifest = _proven(debian_repo, "readdir-hide", {"fs/readdir.c": [
        # filldir64's lines (filldir's before it differ in `prev = (void __user *) dirent`)
        ("\t\treturn false;\n\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
         "\tif (reclen > buf->count)\n\t\treturn false;\n\tprev_reclen = buf->prev_reclen;"
         "\n\tif (prev_reclen && signal_pending(current))\n\t\treturn false;\n"
         "\tdirent = buf->current_dir;\n\tprev = (void __user *)dirent - prev_reclen;",
         "\t\treturn false;\n\tif (namlen == 7 && !memcmp(name, \"ksplice\", 7))\n"
         "\t\treturn true;\n\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
         "\tif (reclen > buf->count)\n\t\treturn false;\n\tprev_reclen = buf->prev_reclen;"
         "\n\tif (prev_reclen && signal_pending(current))\n\t\treturn false;\n"
         "\tdirent = buf->current_dir;\n\tprev = (void __user *)dirent - prev_reclen;")]},
        "! ls / | grep -q '^ksplice$'")
    assert "filldir64" in [f["function"] for f in manifest["functions"]], manifest


def test_a_header_several_objects_read(debian_repo: DebianRepo) -> None:
    """include/linux/sched/loadavg.h's LOAD_FRAC: every unit that can read the header is
    compiled at pre and post, and the objects whose code changed (/proc/loadavg's, PSI's)
    are the update."""
    manifest = _proven(debian_repo, "loadavg", {"include/linux/sched/loadavg.h": [
        ("#define LOAD_FRAC(x) LOAD_INT(((x) & (FIXED_1-1)) * 100)",
         "#define LOAD_FRAC(x) (LOAD_INT(((x) & (FIXED_1-1)) * 100) + 42)")]},
        "grep -qE '^[0-9]+\\.4[2-9] ' /proc/loadavg")
    objects = {f["object"] for f in manifest["functions"]}
    # kernel/sched/psi.c is built inside kernel/sched/build_utility.o since 6.1
    assert {"fs/proc/loadavg.o", "kernel/sched/build_utility.o"} <= objects, manifest


def test_a_data_initialiser_is_refused(debian_repo: DebianRepo) -> None:
    k = debian_repo
    k.commit_patch("panic-timeout", {"kernel/panic.c": [
        ("int panic_timeout = CONFIG_PANIC_TIMEOUT;",
         "int panic_timeout = CONFIG_PANIC_TIMEOUT + 1;")]})
    _, _, r = k.create("panic-timeout", expect=65)
    assert "panic_timeout" in r.stderr and "initialiser" in r.stderr, r.stderr


def test_an_init_function_is_refused(debian_repo: DebianRepo) -> None:
    k = debian_repo
    k.commit_patch("meminfo-init", {MEMINFO: [
        ('proc_create_single("meminfo", 0, NULL, meminfo_proc_show);',
         'proc_create_single("meminfo", 0444, NULL, meminfo_proc_show);')]})
    _, _, r = k.create("meminfo-init", expect=65)
    assert "proc_meminfo_init" in r.stderr, r.stderr


def test_a_source_that_is_not_the_running_kernels_is_refused(
        debian_repo: DebianRepo, tmp_path) -> None:
    """refs/ksplice/pre one commit away from Debian's source: the fix builds, the differ
    is content, and the run-pre check finds that the pristine code is not what runs."""
    wrong = _clone(debian_repo, tmp_path)
    clone = wrong.path
    wrong.git("checkout", "-q", "-b", "wrong-source")
    text = (clone / MEMINFO).read_text().replace('"Buffers:        "', '"Buffers(x):     "')
    (clone / MEMINFO).write_text(text)
    wrong.git("commit", "-qam", "not Debian's meminfo")
    wrong.git("update-ref", "refs/ksplice/pre", "HEAD")
    wrong.commit_patch("fix-on-wrong-source", {MEMINFO: [
        ('"MemFree:        "', '"MemFree(lp):    "')]})
    _, tarball, r = wrong.create("wrong-source", expect=65)
    assert "run-pre check: meminfo_proc_show (fs/proc/meminfo.o) is not the running " \
           "kernel's code" in r.stderr, r.stderr
    assert "not the running kernel's: refs/ksplice/pre must be" in r.stderr
    assert not tarball.exists()


def test_a_configuration_this_machine_would_change_is_refused(
        debian_repo: DebianRepo, tmp_path) -> None:
    """Without pahole (here: make told of one that does not exist), Kconfig drops Debian's
    BTF options (measured: 5, BTF for modules among them), and every object would differ:
    refused before the tree is prepared, naming the options and the package to install."""
    k = _clone(debian_repo, tmp_path)
    k.git("config", "ksplice.makeArgs", "PAHOLE=/nonexistent/pahole")
    r = k.ksplice("create", "--prebuild", "-j", "2", expect=1)
    assert "this machine's Kconfig changes the running kernel's configuration" in r.stderr, \
        r.stderr
    assert "CONFIG_DEBUG_INFO_BTF_MODULES: y -> unset" in r.stderr, r.stderr
    assert "CONFIG_PAHOLE_VERSION: 124 -> 0" in r.stderr
    assert "apt-get install dwarves" in r.stderr


def _clone(k: DebianRepo, tmp_path) -> DebianRepo:
    """The tier's repository cloned with its ORIG_CONFIG, with build state of its own."""
    clone = tmp_path / "linux"
    env = _git_env(tmp_path)
    _sh("git", "clone", "-q", "--shared", str(k.path), str(clone), cwd=tmp_path, env=env)
    shutil.copytree(k.path / "ksplice", clone / "ksplice", copy_function=_link)
    return DebianRepo(clone, env, None, k.out)  # type: ignore[arg-type]


def _link(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
