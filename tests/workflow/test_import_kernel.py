"""`git ksplice import-kernel` on kernels laid out as distributions ship them, when the parts
do not fit together: each mismatch named before anything is written, never a traceback.
Debian's real packages are imported on the Debian tier (tests/debian); here the layouts are
built from small files (a setup header around a compressed payload with a banner), because
what is under test is the finding and the cross-checking, not the unpacking."""

from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
from pathlib import Path

import pytest

from git_ksplice.errors import InputError
from git_ksplice.installed_kernel import import_kernel
from git_ksplice.origconfig import OrigConfig
from git_ksplice.toolchain import running_kernel

R = "6.7.1-100.fc99.x86_64"
GCC = "gcc (GCC) 99.1.1 20990101 (Red Hat 99.1.1-1)"


def run_ksplice(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git-ksplice", *args], cwd=cwd, capture_output=True, text=True)


def _vmlinuz(release: str, compiler: str = GCC) -> bytes:
    """A bzImage whose payload holds a banner, as the kernel's linux_banner reads."""
    payload = (b"\x7fELF" + bytes(64) + f"Linux version {release} (mockbuild@fedora) "
               f"({compiler}, GNU ld version 2.99) #1 SMP PREEMPT_DYNAMIC\n".encode()
               + bytes(64))
    packed = gzip.compress(payload) + struct.pack("<I", len(payload))
    setup = bytearray(5 * 512)
    setup[0x1f1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20f)
    struct.pack_into("<II", setup, 0x248, 16, len(packed))
    return bytes(setup) + bytes(16) + packed


def _fedora(root: Path, release: str = R, *, compiler: str = GCC,
            vermagic: str | None = None) -> Path:
    """A Fedora-like installation: everything under lib/modules/RELEASE/."""
    mods = root / "lib/modules" / release
    (mods / "kernel/fs/nls").mkdir(parents=True)
    (mods / "config").write_text(f'CONFIG_CC_VERSION_TEXT="{compiler}"\nCONFIG_64BIT=y\n')
    (mods / "System.map").write_text("".join(f"ffffffff81{n:06x} T function_{n}\n"
                                             for n in range(200)))
    (mods / "vmlinuz").write_bytes(_vmlinuz(release, compiler))
    magic = vermagic or f"{release} SMP preempt mod_unload modversions "
    (mods / "kernel/fs/nls/nls_utf8.ko").write_bytes(
        b"\x7fELF" + bytes(32) + b"license=GPL\0vermagic=" + magic.encode() + b"\0name=x\0")
    (mods / "build").symlink_to("/usr/src/kernels/" + release)
    return mods


def _debug_vmlinux(root: Path, *, build: int) -> Path:
    """Fedora's debug vmlinux of build #`build` (the image of `_fedora` is #1)."""
    debug = root / "usr/lib/debug/lib/modules" / R / "vmlinux"
    debug.parent.mkdir(parents=True)
    debug.write_bytes(b"\x7fELF" + bytes(64) + f"Linux version {R} (mockbuild@fedora) "
                      f"({GCC}, GNU ld version 2.99) #{build} SMP PREEMPT_DYNAMIC\n".encode())
    return debug


def test_a_fedora_layout_is_imported_and_pins_the_release(tmp_path: Path) -> None:
    _fedora(tmp_path / "root")
    dest = tmp_path / "orig"
    report = import_kernel(tmp_path / "root", None, dest)
    assert report.release == R and report.banner is not None
    assert report.banner.compiler == GCC
    info = json.loads((dest / "kernel.json").read_text())
    assert info["release"] == R
    assert info["vermagic"] == f"{R} SMP preempt mod_unload modversions "
    assert info["imported"][".config"]["layout"] == "Fedora/RHEL"
    assert set(info["missing"]) == {"vmlinux", "Module.symvers"}
    assert (dest / "modules/kernel/fs/nls/nls_utf8.ko").is_file()
    assert not (dest / "modules/build").exists()  # kbuild's link back into the headers
    orig = OrigConfig(dest)
    orig.check()
    assert running_kernel(orig).release == R


def test_the_parts_of_two_kernels_are_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    mods = _fedora(tmp_path / "root")
    (mods / "vmlinuz").write_bytes(_vmlinuz("6.7.2-100.fc99.x86_64"))
    dest = tmp_path / "orig"
    with pytest.raises(InputError, match="is kernel 6.7.2-100.fc99.x86_64, not " + R):
        import_kernel(tmp_path / "root", R, dest)
    assert not dest.exists()


def test_a_configuration_of_another_compiler_is_refused(tmp_path: Path) -> None:
    mods = _fedora(tmp_path / "root")
    (mods / "config").write_text('CONFIG_CC_VERSION_TEXT="gcc (GCC) 98.0.0"\n')
    with pytest.raises(InputError, match=re.escape("was made with 'gcc (GCC) 98.0.0'")):
        import_kernel(tmp_path / "root", R, tmp_path / "orig")


def test_modules_of_another_release_are_refused(tmp_path: Path) -> None:
    _fedora(tmp_path / "root", vermagic="6.0.0 SMP mod_unload ")
    with pytest.raises(InputError, match=re.escape("is a module of kernel '6.0.0'")):
        import_kernel(tmp_path / "root", R, tmp_path / "orig")


def test_which_kernel_of_several_must_be_named(tmp_path: Path) -> None:
    _fedora(tmp_path / "root")
    _fedora(tmp_path / "root", "6.7.2-100.fc99.x86_64")
    with pytest.raises(InputError, match=re.escape(
            "holds 2 kernels: 6.7.1-100.fc99.x86_64, 6.7.2-100.fc99.x86_64")) as e:
        import_kernel(tmp_path / "root", None, tmp_path / "orig")
    assert "RELEASE" in (e.value.hint or "")
    with pytest.raises(InputError, match=r"no configuration of kernel 9.9 .*\(it holds "):
        import_kernel(tmp_path / "root", "9.9", tmp_path / "orig")
    with pytest.raises(InputError, match="no kernel under"):
        import_kernel(tmp_path / "empty", None, tmp_path / "orig")


def test_a_stub_system_map_without_an_image_is_refused(tmp_path: Path) -> None:
    """Debian's System.map is one line; without vmlinuz nothing can replace it."""
    root = tmp_path / "root"
    headers = root / f"usr/src/linux-headers-{R}"
    headers.mkdir(parents=True)
    (headers / ".config").write_text("CONFIG_64BIT=y\n")
    (root / "boot").mkdir()
    (root / f"boot/System.map-{R}").write_text(
        "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
    with pytest.raises(InputError, match="is a stub, and no kernel image"):
        import_kernel(root, R, tmp_path / "orig")


def test_another_kernels_vmlinux_in_orig_config_is_not_left_beside_the_import(
        tmp_path: Path) -> None:
    _fedora(tmp_path / "root")
    dest = tmp_path / "orig"
    dest.mkdir()
    stale = (b"\x7fELF" + bytes(64) + b"Linux version 5.10.0 (u@h) (gcc (GCC) 10.2.1, GNU ld "
             b"2.35) #1 SMP\n")
    (dest / "vmlinux").write_bytes(stale)
    (dest / "kernel.json").write_text('{"release": "5.10.0"}')  # an earlier import
    with pytest.raises(InputError, match=r"is another build's \('Linux version 5\.10\.0"):
        import_kernel(tmp_path / "root", R, dest)
    assert (dest / "vmlinux").read_bytes() == stale


def test_a_hand_made_orig_config_is_not_replaced(tmp_path: Path) -> None:
    _fedora(tmp_path / "root")
    dest = tmp_path / "orig"
    dest.mkdir()
    (dest / ".config").write_text("CONFIG_MINE=y\n")
    with pytest.raises(InputError, match="holds files import-kernel did not write "
                                         r"\(\.config\)"):
        import_kernel(tmp_path / "root", R, dest)
    assert (dest / ".config").read_text() == "CONFIG_MINE=y\n"


def test_an_interrupted_import_is_refused_then_redone(tmp_path: Path) -> None:
    """Killed mid-copy: the marker stays, create refuses the directory, the next import
    writes it whole; parts the new import lacks are not left from the old one."""
    _fedora(tmp_path / "root")
    dest = tmp_path / "orig"
    import_kernel(tmp_path / "root", R, dest)
    (dest / "Module.symvers").write_text("0x1\tstale\tvmlinux\tEXPORT_SYMBOL\n")
    (dest / "import-incomplete").write_text("")
    (dest / "kernel.json").unlink()
    with pytest.raises(InputError, match="half written"):
        OrigConfig(dest).check()
    import_kernel(tmp_path / "root", R, dest)
    OrigConfig(dest).check()
    assert not (dest / "Module.symvers").exists()  # this kernel ships none
    assert (dest / ".config").stat().st_nlink == 1  # a copy: editing it edits no package


def test_a_second_import_replaces_the_first(tmp_path: Path) -> None:
    _fedora(tmp_path / "root")
    other = "6.7.2-100.fc99.x86_64"
    _fedora(tmp_path / "root2", other)
    dest = tmp_path / "orig"
    import_kernel(tmp_path / "root", R, dest)
    import_kernel(tmp_path / "root2", other, dest)
    assert running_kernel(OrigConfig(dest)).release == other
    assert not list(dest.glob("*.part")) and not list(dest.glob("*.old"))


def test_the_command_reads_one_argument_with_a_slash_as_the_directory(
        tmp_path: Path) -> None:
    _fedora(tmp_path / "root")
    r = run_ksplice(["import-kernel", "--root", str(tmp_path / "root"), "./orig"],
                    cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"imported kernel {R} into {tmp_path / 'orig'}" in r.stderr
    assert "Module.symvers  missing: the CRCs" in r.stderr
    r = run_ksplice(["import-kernel", "--root", str(tmp_path / "root"), "--json", R,
                     str(tmp_path / "o2")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["release"] == R
    r = run_ksplice(["import-kernel", "--root", str(tmp_path / "nowhere"), "x/"],
                    cwd=tmp_path)
    assert r.returncode == 1 and "is not a directory" in r.stderr, r.stderr


def test_the_repositorys_orig_config_is_kept_out_of_git(tmp_path: Path) -> None:
    """Imported into the default ksplice/ of a repository: git ignores it (the modules are
    hundreds of megabytes a `git add -A` would commit), once, without touching the index."""
    _fedora(tmp_path / "root")
    repo = tmp_path / "linux"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "Makefile").write_text("all:\n")
    said = []
    for _ in range(2):
        r = run_ksplice(["import-kernel", "--root", str(tmp_path / "root")], cwd=repo)
        assert r.returncode == 0, r.stderr
        said.append("/ksplice/ added to the repository's info/exclude" in r.stderr)
    assert said == [True, False]
    assert (repo / ".git/info/exclude").read_text().count("/ksplice/") == 1
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    assert status == "?? Makefile\n", status
    assert (repo / "ksplice/kernel.json").is_file()


def test_a_debug_vmlinux_of_another_upload_is_refused(tmp_path: Path) -> None:
    """Same release, another build: the banners differ."""
    _fedora(tmp_path / "root")
    _debug_vmlinux(tmp_path / "root", build=2)
    with pytest.raises(InputError, match="is not the build of"):
        import_kernel(tmp_path / "root", R, tmp_path / "orig")
    assert not (tmp_path / "orig").exists()


def test_the_debug_vmlinux_of_the_same_build_is_imported(tmp_path: Path) -> None:
    _fedora(tmp_path / "root")
    debug = _debug_vmlinux(tmp_path / "root", build=1)
    report = import_kernel(tmp_path / "root", R, tmp_path / "orig")
    assert "vmlinux" not in report.missing
    assert (tmp_path / "orig/vmlinux").read_bytes() == debug.read_bytes()
