"""Real updates for Linux 6.1, each built by `git ksplice create` and proven with
`git ksplice try`: the check fails on the running kernel, passes with the update loaded, and
fails again once it is removed. Unsafe changes are refused with a reason and no tarball."""

from __future__ import annotations

import json
import tarfile

import pytest

from git_ksplice.package import read_tarball
from tests.kernel.conftest import KernelRepo

pytestmark = pytest.mark.kernel

MEMINFO = ("fs/proc/meminfo.c", [('"MemAvailable:   "', '"MemAvailable:!  "')])
CMDLINE = ("fs/proc/cmdline.c", [("\tseq_putc(m, '\\n');", "\tseq_puts(m, \" ksplice\");\n"
                                  "\tseq_putc(m, '\\n');")])


def _manifest(tarball) -> dict:
    with tarfile.open(tarball) as t:
        top = t.getnames()[0].split("/")[0]
        f = t.extractfile(f"{top}/manifest.json")
        assert f is not None
        return json.load(f)


def _module_sections(k: KernelRepo, manifest: dict) -> set[str]:
    from git_ksplice.elf.model import read_object

    tarball = k.out / f"ksplice-{manifest['id']}.tar.gz"
    ko = k.out / f"{manifest['id']}.ko"
    with tarfile.open(tarball) as t:
        f = t.extractfile(f"ksplice-{manifest['id']}/{manifest['livepatch']['module']}.ko")
        assert f is not None
        ko.write_bytes(f.read())
    return {s.name for s in read_object(ko).sections}


def _prove(k: KernelRepo, name: str, edits: dict, check: str, *, modules=(),
           functions: set[str] | None = None, create_args: tuple[str, ...] = ()) -> dict:
    k.commit_patch(name, edits)
    _, tarball, _ = k.create(name, *create_args)
    manifest = _manifest(tarball)
    replaced = {f["name"] for f in manifest["livepatch"]["functions"]}
    if functions is not None:
        assert replaced == functions, manifest["livepatch"]
    r = k.try_update(tarball, check, modules)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the update works" in r.stderr
    return manifest


def test_string_in_a_proc_show_function(kernel_repo: KernelRepo) -> None:
    """The classic: a string printed by /proc/meminfo."""
    _prove(kernel_repo, "meminfo-string", dict([MEMINFO]),
           'grep -q "MemAvailable:!" /proc/meminfo', functions={"meminfo_proc_show"})


def test_static_function_with_namesakes_uses_sympos(kernel_repo: KernelRepo) -> None:
    """kernel/reboot.c's static type_show has namesakes in other files: the update must
    name the right one by its position among them."""
    m = _prove(kernel_repo, "reboot-type", {"kernel/reboot.c": [
        ('\t\tval = BOOT_PCI_STR;\n\t\tbreak;\n\tdefault:\n\t\tval = REBOOT_UNDEFINED_STR;\n'
         '\t}\n\n\treturn sprintf(buf, "%s\\n", val);',
         '\t\tval = BOOT_PCI_STR;\n\t\tbreak;\n\tdefault:\n\t\tval = REBOOT_UNDEFINED_STR;\n'
         '\t}\n\n\treturn sprintf(buf, "%s!\\n", val);')]},
        "grep -q '!' /sys/kernel/reboot/type", functions={"type_show"})
    (func,) = m["livepatch"]["functions"]
    assert func["sympos"] >= 1, func


def test_new_static_helper_function(kernel_repo: KernelRepo) -> None:
    """The fix adds a static helper that the changed function calls."""
    _prove(kernel_repo, "version-helper", {"fs/proc/version.c": [
        ("static int version_proc_show(", "static noinline void ksplice_note(struct seq_file "
         "*m)\n{\n\tseq_puts(m, \"patched by ksplice\\n\");\n}\n\n"
         "static int version_proc_show("),
        ("\t\tutsname()->version);\n", "\t\tutsname()->version);\n\tksplice_note(m);\n")]},
        "grep -q 'patched by ksplice' /proc/version", functions={"version_proc_show"})


def test_new_static_data_used_by_a_changed_function(kernel_repo: KernelRepo) -> None:
    """New static data lives in the update module: a counter starting at 41."""
    _prove(kernel_repo, "cmdline-counter", {"fs/proc/cmdline.c": [
        ("static int cmdline_proc_show(", "static int ksplice_reads = 41;\n\n"
         "static int cmdline_proc_show("),
        ("\tseq_putc(m, '\\n');", "\tseq_printf(m, \" reads=%d\", ++ksplice_reads);\n"
         "\tseq_putc(m, '\\n');")]},
        "grep -q 'reads=42' /proc/cmdline")


def test_static_local_state_survives_the_update(kernel_repo: KernelRepo) -> None:
    """do_sys_settimeofday64 keeps `static int firsttime = 1`, cleared by the first
    settimeofday with a timezone (busybox hwclock --systz). The update prints it: a fresh
    copy would say 1; the running kernel's variable, which the update must share, says 0."""
    m = _prove(kernel_repo, "settimeofday-static", {"kernel/time/time.c": [
        ("\tstatic int firsttime = 1;\n\tint error = 0;\n",
         "\tstatic int firsttime = 1;\n\tint error = 0;\n\n"
         "\tpr_info(\"ksplice firsttime=%d\\n\", firsttime);\n")]},
        "hwclock --systz; dmesg -c | grep -q 'ksplice firsttime=0'")
    # Also replaced: the syscall wrapper it is inlined into; both use the one firsttime.
    assert "do_sys_settimeofday64" in {f["name"] for f in m["livepatch"]["functions"]}
    assert m["livepatch"]["klp_relocations"] >= 1  # firsttime, a local of the running kernel


NEXT_INO_CHECK = """
a=$(readlink /proc/self/fd/1); b=$(readlink /proc/self/fd/1)
a=${a#pipe:[}; a=${a%]}; b=${b#pipe:[}; b=${b%]}
echo "pipe inodes $a $b"
[ "$a" -gt $((0x40000000 + 1024)) ] && [ "$b" -gt "$a" ]
"""


def test_static_local_counter_keeps_counting(kernel_repo: KernelRepo) -> None:
    """get_next_ino numbers pipes (and ramfs files, sockets...) from batches it takes off
    `static atomic_t shared_last_ino`, a counter past 1024 by the time user space runs (each
    CPU takes a batch first). The update takes every number from that counter itself and
    marks it with bit 30: with the running kernel's counter a new pipe is numbered above
    2^30 + 1024 and the next one higher still; a fresh copy of the counter would restart at
    2^30 + 1."""
    m = _prove(kernel_repo, "next-ino-counter", {"fs/inode.c": [
        ("\tif (unlikely((res & (LAST_INO_BATCH-1)) == 0)) {\n"
         "\t\tstatic atomic_t shared_last_ino;\n"
         "\t\tint next = atomic_add_return(LAST_INO_BATCH, &shared_last_ino);\n\n"
         "\t\tres = next - LAST_INO_BATCH;\n",
         "\tif (1) {\n"
         "\t\tstatic atomic_t shared_last_ino;\n"
         "\t\tint next = atomic_add_return(1, &shared_last_ino);\n\n"
         "\t\tres = next - 1;\n"),
        ("\tput_cpu_var(last_ino);\n\treturn res;\n}\nEXPORT_SYMBOL(get_next_ino);",
         "\tput_cpu_var(last_ino);\n\treturn res | 0x40000000;\n}\n"
         "EXPORT_SYMBOL(get_next_ino);")]},
        NEXT_INO_CHECK)
    assert "get_next_ino" in {f["name"] for f in m["livepatch"]["functions"]}
    assert m["livepatch"]["klp_relocations"] >= 1  # shared_last_ino, the running kernel's


def test_syscall_visible_from_busybox(kernel_repo: KernelRepo) -> None:
    """uname(2): the body is an inlined __do_sys_newuname; its traceable wrapper is what
    gets replaced. copy_to_user is in there too."""
    _prove(kernel_repo, "uname", {"kernel/sys.c": [
        ("\tif (copy_to_user(name, &tmp, sizeof(tmp)))\n\t\treturn -EFAULT;\n\n"
         "\tif (override_release",
         "\tstrcpy(tmp.sysname, \"Ksplice\");\n"
         "\tif (copy_to_user(name, &tmp, sizeof(tmp)))\n\t\treturn -EFAULT;\n\n"
         "\tif (override_release")]},
        '[ "$(uname -s)" = Ksplice ]')


def test_syscall_without_arguments(kernel_repo: KernelRepo) -> None:
    """SYSCALL_DEFINE0(getppid): __x64_sys_getppid is an alias of __do_sys_getppid, one
    function under two names. Replaced once: two klp_funcs (and two ftrace sites) at one
    address made ftrace fail and switch itself off when the update loaded."""
    m = _prove(kernel_repo, "getppid-alias", {"kernel/sys.c": [
        ("\tpid = task_tgid_vnr(rcu_dereference(current->real_parent));\n\trcu_read_unlock();"
         "\n\n\treturn pid;",
         "\tpid = task_tgid_vnr(rcu_dereference(current->real_parent));\n\trcu_read_unlock();"
         "\n\n\treturn pid + 1000000;")]},
        "[ \"$(sh -c 'echo $PPID')\" -ge 1000000 ]", functions={"__x64_sys_getppid"})
    assert m["livepatch"]["functions"][0]["name"] == "__x64_sys_getppid"


def test_function_of_a_loadable_module(kernel_repo: KernelRepo) -> None:
    """samples/kobject/kobject-example.ko: the update patches the module once it is
    loaded (its klp_object is the module)."""
    k = kernel_repo
    m = _prove(k, "kobject", {"samples/kobject/kobject-example.c": [
        ('return sysfs_emit(buf, "%d\\n", foo);',
         'return sysfs_emit(buf, "%d (patched)\\n", foo);')]},
        # foo_show uses the module's own static `foo`: a klp relocation against the
        # module, which Linux 6.1 alone would refuse to write again when the module is
        # reloaded under the update (the update clears it as the module goes).
        "grep -q patched /sys/kernel/kobject_example/foo || exit 1\n"
        "rmmod kobject_example && insmod \"$(grep kobject /ksplice/modules.list)\" "
        "|| exit 2\n"
        "grep -q patched /sys/kernel/kobject_example/foo",
        modules=(k.running.module("samples/kobject/kobject-example.ko"),),
        functions={"foo_show"}, create_args=("--build-modules",))
    assert {f["target"] for f in m["livepatch"]["functions"]} == {"kobject_example"}
    assert m["livepatch"]["warnings"] == [], m["livepatch"]
    # --build-modules: the patched module itself, built as the running kernel's modules are
    # (no function sections), for installing on disk.
    from git_ksplice.elf.model import read_object

    with tarfile.open(k.out / f"ksplice-{m['id']}.tar.gz") as t:
        top = f"ksplice-{m['id']}"
        contents = t.extractfile(f"{top}/contents").read().decode()  # type: ignore[union-attr]
        assert "module kobject_example modules/kobject_example.ko" in contents
        ko = k.out / f"{m['id']}-kobject_example.ko"
        ko.write_bytes(t.extractfile(f"{top}/modules/kobject_example.ko").read())  # type: ignore[union-attr]
    sections = {s.name for s in read_object(ko).sections}
    assert ".text" in sections and not any(n.startswith(".text.foo") for n in sections)
    modinfo = read_object(ko).section(".modinfo")
    assert modinfo is not None and b"vermagic=6.1.192 SMP" in modinfo.data


def test_patch_touching_two_objects(kernel_repo: KernelRepo) -> None:
    _prove(kernel_repo, "two-objects", dict([MEMINFO, CMDLINE]),
           'grep -q "MemAvailable:!" /proc/meminfo && grep -q ksplice /proc/cmdline',
           functions={"meminfo_proc_show", "cmdline_proc_show"})


def test_function_with_a_warn_entry(kernel_repo: KernelRepo) -> None:
    """The changed function carries a __bug_table entry (WARN_ON) that must come along."""
    _prove(kernel_repo, "cmdline-warn", {"fs/proc/cmdline.c": [
        ("\tseq_puts(m, saved_command_line);", "\tWARN_ON(!m);\n"
         "\tseq_puts(m, saved_command_line);"), CMDLINE[1][0]]},
        "grep -q ksplice /proc/cmdline", functions={"cmdline_proc_show"})


def test_function_with_exception_table_entries(kernel_repo: KernelRepo) -> None:
    """filldir64 writes directory entries to user space with unsafe_put_user: its
    __ex_table entries must come along. The update hides entries named "ksplice"."""
    m = _prove(kernel_repo, "readdir-hide", {"fs/readdir.c": [
        ("\tbuf->error = verify_dirent_name(name, namlen);\n\tif (unlikely(buf->error))\n"
         "\t\treturn false;\n\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
         "\tif (reclen > buf->count)\n\t\treturn false;\n\tprev_reclen = buf->prev_reclen;"
         "\n\tif (prev_reclen && signal_pending(current))\n\t\treturn false;\n"
         "\tdirent = buf->current_dir;\n\tprev = (void __user *)dirent - prev_reclen;",
         "\tbuf->error = verify_dirent_name(name, namlen);\n\tif (unlikely(buf->error))\n"
         "\t\treturn false;\n\tif (namlen == 7 && !memcmp(name, \"ksplice\", 7))\n"
         "\t\treturn true;\n\tbuf->error = -EINVAL;\t/* only used if we fail.. */\n"
         "\tif (reclen > buf->count)\n\t\treturn false;\n\tprev_reclen = buf->prev_reclen;"
         "\n\tif (prev_reclen && signal_pending(current))\n\t\treturn false;\n"
         "\tdirent = buf->current_dir;\n\tprev = (void __user *)dirent - prev_reclen;")]},
        "! ls / | grep -q '^ksplice$'", functions={"filldir64"})
    assert "__ex_table" in _module_sections(kernel_repo, m)


@pytest.mark.parametrize(("name", "edits", "code", "reason"), [
    ("line-only", {"kernel/sys.c": [("#include <linux/export.h>\n",
                                     "#include <linux/export.h>\n\n\n")]}, 66,
     "No changes detected"),
    ("init-function", {"fs/proc/meminfo.c": [
        ('proc_create_single("meminfo", 0, NULL, meminfo_proc_show);',
         'proc_create_single("meminfo", 0444, NULL, meminfo_proc_show);')]}, 65, "__init"),
    ("data-initialiser", {"kernel/panic.c": [
        ("int panic_timeout = CONFIG_PANIC_TIMEOUT;",
         "int panic_timeout = CONFIG_PANIC_TIMEOUT + 1;")]}, 65, "initialiser"),
    ("resized-data", {"kernel/reboot.c": [
        ("static char poweroff_cmd[POWEROFF_CMD_PATH_LEN] = ",
         "static char poweroff_cmd[POWEROFF_CMD_PATH_LEN + 8] = ")]}, 65, "resized"),
    # A member at the head of a struct live objects have (every open /proc/PID/maps): built,
    # such an update oopses the first reader. Refused from the source, before any build.
    ("struct-layout", {"fs/proc/internal.h": [
        ("struct proc_maps_private {\n\tstruct inode *inode;",
         "struct proc_maps_private {\n\tunsigned long generation;\n\tstruct inode *inode;")]},
     65, "layout of struct proc_maps_private (fs/proc/internal.h:307)"),
    # A const ops table registered at boot by __init code gains a method: the running kernel
    # keeps the old table, so the update could not change anything.
    ("init-registered-ops", {"fs/proc/stat.c": [
        ("static const struct proc_ops stat_proc_ops = {\n",
         "static ssize_t stat_write(struct file *f, const char __user *b, size_t n, "
         "loff_t *p)\n{\n\treturn n;\n}\n\n"
         "static const struct proc_ops stat_proc_ops = {\n\t.proc_write\t= stat_write,\n")]},
     65, "used by __init code (proc_stat_init)"),
    # New boot-time setup: the update could not run it (alone, it used to be "no change").
    ("new-initcall", {"fs/proc/version.c": [
        ("fs_initcall(proc_version_init);",
         "fs_initcall(proc_version_init);\n\nstatic int __init proc_version2_init(void)\n{\n"
         "\tproc_create_single(\"version2\", 0, NULL, version_proc_show);\n\treturn 0;\n}\n"
         "late_initcall(proc_version2_init);")]},
     65, "adds an initcall (.initcall7.init)"),
])
def test_unsafe_or_empty_changes_are_refused(kernel_repo: KernelRepo, name: str, edits: dict,
                                              code: int, reason: str) -> None:
    k = kernel_repo
    k.commit_patch(name, edits)
    _, tarball, r = k.create(name, expect=code)
    assert reason in r.stderr, r.stderr
    assert not tarball.exists()


def test_symbol_version_disagreement_is_refused(kernel_repo: KernelRepo, tmp_path) -> None:
    """A module whose symbol CRCs differ from the running kernel's would not load: refused,
    naming the symbol. (ORIG_CONFIG's Module.symvers is edited to disagree on seq_printf.)
    The full-tree mode's tree makes its own Module.symvers, which can disagree; the targeted
    mode builds the module against ORIG_CONFIG's itself, so its CRCs are the running
    kernel's by construction (the next test)."""
    import shutil

    k = kernel_repo
    orig = tmp_path / "orig"
    shutil.copytree(k.running.orig_config, orig)
    symvers = orig / "Module.symvers"
    lines = []
    for line in symvers.read_text().splitlines():
        crc, name, rest = line.split("\t", 2)
        if name == "seq_printf":
            crc = f"0x{int(crc, 16) ^ 0x1:08x}"
        lines.append("\t".join((crc, name, rest)))
    symvers.write_text("\n".join(lines) + "\n")
    k.commit_patch("symvers", dict([MEMINFO]))
    _, tarball, r = k.create("symvers", f"--config={orig}", "--build-mode=full", expect=65)
    assert "seq_printf" in r.stderr and "CRC" in r.stderr, r.stderr
    assert not tarball.exists()


def test_the_targeted_module_takes_the_running_kernels_crcs(kernel_repo: KernelRepo,
                                                            tmp_path) -> None:
    import shutil

    k = kernel_repo
    orig = tmp_path / "orig"
    shutil.copytree(k.running.orig_config, orig)
    symvers = orig / "Module.symvers"
    crc = next(line.split("\t")[0] for line in symvers.read_text().splitlines()
               if line.split("\t")[1] == "seq_printf")
    changed = f"0x{int(crc, 16) ^ 0x1:08x}"
    symvers.write_text(symvers.read_text().replace(f"{crc}\tseq_printf\t",
                                                   f"{changed}\tseq_printf\t"))
    k.commit_patch("symvers-targeted", dict([MEMINFO]))
    _, tarball, _ = k.create("symvers_targeted", f"--config={orig}")
    _, ko = read_tarball(tarball).livepatch_module()
    assert int(changed, 16).to_bytes(4, "little") + b"\0" * 4 + b"seq_printf\0" in ko


def test_vermagic_mismatch_is_refused(kernel_repo: KernelRepo, tmp_path) -> None:
    """ORIG_CONFIG describes another kernel release (its vmlinux says 6.1.193): the module
    would be rejected, so the update is refused with both vermagic strings."""
    import shutil

    k = kernel_repo
    orig = tmp_path / "orig"
    shutil.copytree(k.running.orig_config, orig)
    vmlinux = orig / "vmlinux"
    data = vmlinux.read_bytes()
    assert data.count(b"6.1.192 SMP mod_unload") == 1
    vmlinux.write_bytes(data.replace(b"6.1.192 SMP mod_unload", b"6.1.193 SMP mod_unload"))
    k.commit_patch("vermagic", dict([MEMINFO]))
    _, tarball, r = k.create("vermagic", f"--config={orig}", expect=65)
    assert "vermagic" in r.stderr and "6.1.193" in r.stderr, r.stderr
    assert not tarball.exists()


def test_two_updates_stacked_with_series(kernel_repo: KernelRepo) -> None:
    """Two updates on one running kernel: the second is built on the first's source, and
    both load together."""
    k = kernel_repo
    pre = k.git("rev-parse", "refs/ksplice/pre").strip()
    try:
        k.commit_patch("series-1", dict([MEMINFO]))
        _, first, _ = k.create("series_1", "--series")
        k.commit_patch("series-2", dict([CMDLINE]), base="HEAD")
        _, second, _ = k.create("series_2", "--series")
        m2 = _manifest(second)
        assert {f["name"] for f in m2["livepatch"]["functions"]} == {"cmdline_proc_show"}
        assert m2["pre"] == _manifest(first)["post"]
        # The first update loaded first (its tarball, as --modules takes it), the second
        # tried on top of it.
        r = k.try_update(second, 'grep -q "MemAvailable:!" /proc/meminfo && '
                                 "grep -q ksplice /proc/cmdline", modules=(first,))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"load-module:{_manifest(first)['livepatch']['module']}" in r.stderr
    finally:
        # Put the running kernel's source back for the other tests.
        now = k.git("rev-parse", "refs/ksplice/pre").strip()
        k.git("update-ref", "refs/ksplice/pre", pre, now)
