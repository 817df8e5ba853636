"""`git ksplice try TARBALL --kernel BZIMAGE`: prove an update on the kernel it is for.

Boots the running kernel's image under qemu and, inside it: loads the given modules (files,
earlier updates, or shipped modules by name with what they depend on), runs
the check (it must fail: the bug is there), loads the update and waits for the livepatch
transition to finish, runs the check (it must pass), disables and removes the update, and
runs the check again (it must fail: the update is undone cleanly). Each step is reported.
With `--expect-load-failure` the update must refuse to load instead (a pre-patch callback
that returns an error), leaving nothing patched and no module behind, and the check must
still fail.
The update's target modules (and their dependencies) are in the guest's /lib/modules with
a modules.dep, so that a check can `modprobe` one after the update is loaded.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from rich.markup import escape

from git_ksplice import qemu, ui
from git_ksplice.errors import EXIT_ERROR, EXIT_OK, InputError
from git_ksplice.package import read_tarball
from git_ksplice.settings import kernel_image, repository_orig_config
from git_ksplice.shipped_modules import ShippedModules

_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
# Only emergencies on the console from here: a kernel line (livepatch's "starting unpatching
# transition") printed while a step's marker drains to the slow serial console would split
# the marker. Everything is in the dmesg dump at the end.
echo 2 > /proc/sys/kernel/printk
step() { echo "@@ksplice $1 rc=$2@@"; }
check() {
    [ -f /ksplice/check.sh ] || return 0
    sh /ksplice/check.sh > /tmp/check.out 2>&1; rc=$?
    sed 's/^/  check: /' /tmp/check.out
    step "$1" $rc
}
wait_transition() {
    i=0
    while [ $i -lt 600 ]; do
        [ -e "$1/transition" ] || return 1
        [ "$(cat $1/transition)" = 0 ] && return 0
        sleep 0.1; i=$((i+1))
    done
    return 1
}
cd /ksplice
for m in $(cat modules.list); do
    insmod "$m"; step "load-module:$(basename $m .ko)" $?
    # A livepatch (an earlier update of a stack) finishes its transition before the next
    # one loads: the kernel refuses a patch while another is in transition.
    for d in /sys/kernel/livepatch/*; do [ -e "$d/transition" ] && wait_transition "$d"; done
done
check check-before
LP=/sys/kernel/livepatch/@MOD@
if insmod /ksplice/update.ko; then
    step load-update 0
    wait_transition $LP && [ "$(cat $LP/enabled)" = 1 ]; step transition $?
    check check-after
    echo 0 > $LP/enabled; step disable $?
    i=0
    while [ -e $LP ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    [ ! -e $LP ]; step unpatched $?
    rmmod @MOD@; step remove $?
    check check-undone
else
    step load-update 1
    [ ! -e $LP ] && ! grep -q "^@MOD@ " /proc/modules; step nothing-left $?
    check check-refused
fi
dmesg | grep -i -E 'livepatch|ksplice|klp|oops|bug' | tail -20 | sed 's/^/  dmesg: /'
echo "@@ksplice done rc=0@@"
reboot -f
"""

#: What each step must return: True for success (0), False for failure (non-zero).
_EXPECT = {
    "check-before": False,
    "load-update": True,
    "transition": True,
    "check-after": True,
    "disable": True,
    "unpatched": True,
    "remove": True,
    "check-undone": False,
    "done": True,
}

#: What each step must return when the update must refuse to load (--expect-load-failure).
_EXPECT_REFUSED = {
    "check-before": False,
    "load-update": False,
    "nothing-left": True,
    "check-refused": False,
    "done": True,
}
_CHECKS = ("check-before", "check-after", "check-undone", "check-refused")


def _livepatch(path: str) -> tuple[str, str, bytes, list[str]]:
    """(update id, livepatch module name, the module's bytes, its targets) of an update
    tarball."""
    update = read_tarball(Path(path))
    modname, ko = update.livepatch_module()
    return update.id, modname, ko, update.contents.targets


def _modules(given: str, shipped: ShippedModules | None) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the modules to load first for one --modules: a .ko, an update
    tarball (an earlier update of a stack: its livepatch module), or the name of a shipped
    module (ORIG_CONFIG's modules/), preceded by the modules it depends on."""
    p = Path(given)
    if p.name.endswith((".tar.gz", ".tgz")):
        _, modname, ko, _ = _livepatch(given)
        return [(f"{modname}.ko", ko)]
    if not p.exists() and shipped is not None and shipped.find(given) is not None:
        return [(ko.name, ko.read_bytes()) for _, ko in shipped.with_dependencies(given)]
    try:
        return [(p.name, p.read_bytes())]
    except OSError as e:
        raise InputError(f"cannot read module {given}: {e.strerror}"
                         + ("" if shipped is None else
                            ", nor is it the name of a module in ORIG_CONFIG's modules/"),
                         hint="give a .ko file, an update tarball, or a shipped module's "
                              "name (after git ksplice import-kernel)") from None


def _guest_module_directory(targets: list[str], shipped: ShippedModules | None,
                            release: str | None) -> dict[str, bytes]:
    """The update's target modules and what they need, as /lib/modules/RELEASE/ with a
    modules.dep, so that the check script can `modprobe` a target after the update (a
    livepatch applies to a module when it loads)."""
    if shipped is None or release is None:
        return {}
    wanted = []
    for target in targets:
        if target != "vmlinux" and shipped.find(target) is not None:
            wanted += [m for m in shipped.with_dependencies(target) if m not in wanted]
    if not wanted:
        return {}
    base = f"lib/modules/{release}"
    files = {f"{base}/{ko.relative_to(shipped.root)}": ko.read_bytes() for _, ko in wanted}
    files[f"{base}/modules.dep"] = shipped.modules_dep(wanted).encode()
    return files


def run(tarball: str, kernel: str | None, check: str | None, modules: tuple[str, ...],
        timeout: float, as_json: bool, keep: str | None, *, refused: bool = False) -> int:
    kernel = kernel_image(kernel)
    update_id, modname, ko, targets = _livepatch(tarball)
    orig = repository_orig_config()
    shipped = ShippedModules(orig.modules) if orig is not None and orig.modules else None
    release = (orig.imported() or {}).get("release") if orig is not None else None
    if not isinstance(release, str) or not re.fullmatch(r"[\w.+~-]+", release):
        release = None  # not a release a directory can be named after: no modprobe tree
    files = {"ksplice/update.ko": ko,
             **_guest_module_directory(targets, shipped, release)}
    names: list[str] = []
    for m in modules:
        for name, data in _modules(m, shipped):
            if f"/ksplice/modules/{name}" not in names:
                files[f"ksplice/modules/{name}"] = data
                names.append(f"/ksplice/modules/{name}")
    files["ksplice/modules.list"] = ("\n".join(names) + "\n").encode()
    if check is not None:
        try:
            files["ksplice/check.sh"] = Path(check).read_bytes()
        except OSError as e:
            raise InputError(f"cannot read check script {check}: {e.strerror}") from None
    init = _INIT.replace("@MOD@", modname)
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"ksplice-try-{update_id}-"))
    ui.console.print(f"booting {kernel} with update {update_id} ({modname})...",
                     markup=False, highlight=False)
    session = qemu.run(Path(kernel), qemu.make_initramfs(files, init), workdir=workdir,
                       timeout=timeout)
    expected = {f"load-module:{Path(n).stem}": True for n in names}
    expected.update(_EXPECT_REFUSED if refused else _EXPECT)
    if check is None:
        for k in _CHECKS:
            expected.pop(k, None)
    rows = []
    ok = True
    for step, want_success in expected.items():
        rc = session.steps.get(step)
        good = rc is not None and ((rc == 0) == want_success)
        ok &= good
        rows.append({"step": step, "rc": rc, "expected": "pass" if want_success else "fail",
                     "ok": good})
    log: Path | None = workdir / "console.log"
    if ok and not keep:
        # Nothing to look at: do not leave a directory in /tmp per run. A failure keeps it.
        shutil.rmtree(workdir, ignore_errors=True)
        log = None
    if as_json:
        ui.print_json({"schema": 1, "id": update_id, "module": modname, "ok": ok,
                       "steps": rows, "seconds": round(session.seconds, 1),
                       "timed_out": session.timed_out, "console": str(log) if log else None})
    else:
        for r in rows:
            status = "ok" if r["ok"] else "[bold red]FAILED[/]"
            got = "missing" if r["rc"] is None else f"rc={r['rc']}"
            ui.console.print(f"  {r['step']:22} expected to {r['expected']:4}  {got:8} "
                             f"{status}")
        verdict = ("[green]the update refuses to load, as it should[/]" if refused else
                   "[green]the update works[/]") if ok else "[bold red]the update failed[/]"
        ui.console.print(f"{verdict} ({session.seconds:.1f}s"
                         f"{', timed out' if session.timed_out else ''})"
                         + (f"; console: {escape(str(log))}" if log else ""))
    return EXIT_OK if ok else EXIT_ERROR
