"""The patch author's API on Linux 6.1: callbacks (kpatch's and Ksplice's names), ignore
marks, consented data changes and shadow variables, each built by `git ksplice create` from
a patch that includes the shipped header, and proven in qemu by `git ksplice try`."""

from __future__ import annotations

import pytest

from tests.kernel.conftest import KernelRepo
from tests.kernel.test_kernel_updates import MEMINFO, _manifest

pytestmark = pytest.mark.kernel

MEMINFO_C = "fs/proc/meminfo.c"
INCLUDES = '#include "internal.h"'


def _objects(manifest: dict) -> dict:
    return {path: o for t in manifest["targets"].values() for path, o in t["objects"].items()}


def _create_and_try(k: KernelRepo, name: str, edits: dict, check: str, *, refused=False,
                    modules=()) -> dict:
    k.commit_patch(name, edits)
    _, tarball, _ = k.create(name)
    r = k.try_update(tarball, check, modules, refused=refused)
    assert r.returncode == 0, r.stdout + r.stderr
    return _manifest(tarball)


def test_a_pre_patch_callback_that_refuses_fails_the_load(kernel_repo: KernelRepo) -> None:
    """kpatch's KPATCH_PRE_PATCH_CALLBACK returning an error: insmod fails, no livepatch and
    no module stay behind, and /proc/meminfo still shows the old string."""
    name, edits = MEMINFO
    edits = [*edits, (INCLUDES, INCLUDES + '\n#include "kpatch-macros.h"\n\n'
                      "static int ksplice_not_here(struct klp_object *obj)\n{\n"
                      '\tpr_info("ksplice test: refusing\\n");\n\treturn -EPERM;\n}\n'
                      "KPATCH_PRE_PATCH_CALLBACK(ksplice_not_here);\n")]
    m = _create_and_try(kernel_repo, "refusing-callback", {name: edits},
                        'grep -q "MemAvailable:!" /proc/meminfo', refused=True)
    assert [(c["slot"], c["function"]) for c in m["livepatch"]["callbacks"]] == [
        ("pre_patch", "ksplice_not_here")]
    assert _objects(m)[MEMINFO_C.replace(".c", ".o")]["callbacks"][0]["macro"] == \
        "KPATCH_PRE_PATCH_CALLBACK"


def test_ksplice_hooks_fix_up_a_global_and_restore_it(kernel_repo: KernelRepo) -> None:
    """Ksplice's ksplice_apply/ksplice_reverse: vm.overcommit_ratio set at load, put back at
    undo, by functions that are the whole change (no function of the kernel changes)."""
    hooks = ('\n#include "ksplice-patch.h"\n\nstatic int ksplice_saved_ratio;\n\n'
             "static void ksplice_raise_ratio(void)\n{\n"
             "\tksplice_saved_ratio = sysctl_overcommit_ratio;\n"
             "\tsysctl_overcommit_ratio = 77;\n}\n\n"
             "static void ksplice_restore_ratio(void)\n{\n"
             "\tsysctl_overcommit_ratio = ksplice_saved_ratio;\n}\n\n"
             "ksplice_apply(ksplice_raise_ratio);\nksplice_reverse(ksplice_restore_ratio);\n")
    m = _create_and_try(kernel_repo, "ksplice-hooks", {"mm/util.c": [
        ("int sysctl_overcommit_ratio __read_mostly = 50;\n",
         "int sysctl_overcommit_ratio __read_mostly = 50;\n" + hooks)]},
        '[ "$(cat /proc/sys/vm/overcommit_ratio)" = 77 ]')
    assert m["livepatch"]["functions"] == []
    assert {(c["slot"], c["function"], c["macro"]) for c in m["livepatch"]["callbacks"]} == {
        ("post_patch", "ksplice_raise_ratio", "ksplice_apply"),
        ("post_unpatch", "ksplice_restore_ratio", "ksplice_reverse")}


def test_a_consented_data_change_is_applied_and_undone(kernel_repo: KernelRepo) -> None:
    """A changed initialiser is refused, unless KSPLICE_APPLY_DATA_CHANGE says it is meant:
    then the update writes it over the running kernel's variable and puts it back."""
    k = kernel_repo
    change = ("int sysctl_overcommit_ratio __read_mostly = 50;\n",
              "int sysctl_overcommit_ratio __read_mostly = 60;\n")
    k.commit_patch("data-change-refused", {"mm/util.c": [change]})
    _, tarball, r = k.create("data-change-refused", expect=65)
    assert "KSPLICE_APPLY_DATA_CHANGE" in r.stderr and not tarball.exists()
    m = _create_and_try(k, "data-change", {"mm/util.c": [
        (change[0], change[1] + '#include "ksplice-patch.h"\n'
         "KSPLICE_APPLY_DATA_CHANGE(sysctl_overcommit_ratio);\n")]},
        '[ "$(cat /proc/sys/vm/overcommit_ratio)" = 60 ]')
    assert m["livepatch"]["data_changes"] == [
        {"target": "vmlinux", "name": "sysctl_overcommit_ratio", "size": 4}]


def test_kpatch_macros_callback_and_ignored_function(kernel_repo: KernelRepo) -> None:
    """A patch written for kpatch: "kpatch-macros.h", a post-patch callback that switches
    the new behaviour on, and KPATCH_IGNORE_FUNCTION on a changed __init function (which
    would be refused), left out and said so in the manifest."""
    m = _create_and_try(kernel_repo, "kpatch-macros", {"fs/proc/cmdline.c": [
        ("#include <linux/seq_file.h>\n",
         '#include <linux/seq_file.h>\n#include "kpatch-macros.h"\n\n'
         'static const char *ksplice_suffix = "";\n'),
        ("\tseq_putc(m, '\\n');", "\tseq_puts(m, ksplice_suffix);\n\tseq_putc(m, '\\n');"),
        ('proc_create_single("cmdline", 0, NULL', 'proc_create_single("cmdline", 0444, NULL'),
        ("fs_initcall(proc_cmdline_init);",
         "fs_initcall(proc_cmdline_init);\nKPATCH_IGNORE_FUNCTION(proc_cmdline_init);\n\n"
         "static void ksplice_switch_on(struct klp_object *obj)\n{\n"
         '\tksplice_suffix = " kpatch-style";\n}\n'
         "KPATCH_POST_PATCH_CALLBACK(ksplice_switch_on);\n")]},
        "grep -q kpatch-style /proc/cmdline")
    o = _objects(m)["fs/proc/cmdline.o"]
    assert [f["name"] for f in o["changed_functions"]] == ["cmdline_proc_show"]
    assert [i["symbol"] for i in o["left_out"]] == ["proc_cmdline_init"]
    assert "KPATCH_IGNORE_FUNCTION" in o["left_out"][0]["message"]


def test_a_shadow_variable_survives_across_calls(kernel_repo: KernelRepo) -> None:
    """New state beside an existing structure: a counter attached to the reader's pid
    namespace with klp_shadow_get_or_alloc, kept from one read of /proc/meminfo to the
    next, and freed by a post-unpatch callback."""
    name, _ = MEMINFO
    edits = [
        (INCLUDES, INCLUDES + '\n#include <linux/pid_namespace.h>\n'
         '#include "ksplice-patch.h"\n\n#define KSPLICE_READS_ID 0x6b737031\n\n'
         "static void ksplice_free_counters(struct klp_object *obj)\n{\n"
         "\tklp_shadow_free_all(KSPLICE_READS_ID, NULL);\n}\n"
         "KPATCH_POST_UNPATCH_CALLBACK(ksplice_free_counters);\n"),
        ('\tshow_val_kb(m, "MemAvailable:   ", available);\n',
         '\tshow_val_kb(m, "MemAvailable:   ", available);\n'
         "\t{\n\t\tunsigned long *reads = klp_shadow_get_or_alloc(task_active_pid_ns(current),"
         "\n\t\t\tKSPLICE_READS_ID, sizeof(*reads), GFP_KERNEL, NULL, NULL);\n\n"
         "\t\tif (reads)\n"
         '\t\t\tseq_printf(m, "KspliceReads:   %lu\\n", ++*reads);\n\t}\n'),
    ]
    check = ("a=$(awk '/^KspliceReads:/ {print $2}' /proc/meminfo)\n"
             "b=$(awk '/^KspliceReads:/ {print $2}' /proc/meminfo)\n"
             '[ -n "$a" ] && [ "$b" -eq $((a + 1)) ]')
    m = _create_and_try(kernel_repo, "shadow-variable", {name: edits}, check)
    assert [f["name"] for f in m["livepatch"]["functions"]] == ["meminfo_proc_show"]


def test_a_modules_callback_runs_on_its_klp_object(kernel_repo: KernelRepo) -> None:
    """Callbacks in a module's file belong to the module's klp_object: samples/kobject's
    `foo` set when the update patches the loaded module, set again when the module is
    reloaded under the update (livepatch runs a module's callbacks as it comes), and put
    back when the update is undone."""
    k = kernel_repo
    m = _create_and_try(k, "module-callback", {"samples/kobject/kobject-example.c": [
        ("static int foo;\n",
         'static int foo;\n#include "ksplice-patch.h"\n\nstatic int ksplice_saved_foo;\n\n'
         "static void ksplice_set_foo(struct klp_object *obj)\n{\n"
         "\tksplice_saved_foo = foo;\n\tfoo = 4242;\n}\n\n"
         "static void ksplice_put_foo_back(struct klp_object *obj)\n{\n"
         "\tfoo = ksplice_saved_foo;\n}\n"
         "KPATCH_POST_PATCH_CALLBACK(ksplice_set_foo);\n"
         "KPATCH_PRE_UNPATCH_CALLBACK(ksplice_put_foo_back);\n")]},
        "grep -qx 4242 /sys/kernel/kobject_example/foo || exit 1\n"
        "rmmod kobject_example && insmod \"$(grep kobject /ksplice/modules.list)\" "
        "|| exit 2\n"
        "grep -qx 4242 /sys/kernel/kobject_example/foo",
        modules=(k.running.module("samples/kobject/kobject-example.ko"),))
    assert {(c["target"], c["slot"]) for c in m["livepatch"]["callbacks"]} == {
        ("kobject_example", "post_patch"), ("kobject_example", "pre_unpatch")}
