"""Input that tries to bring the outside in: symlinks, special files, paths into .git, fuzzy
patches. Each must end in a clear message before anything is built, with nothing recorded,
or, where the input is legitimate (a symlink inside the tree), in an update that stores it as
git would. Nothing from outside the repository may reach a ref or a tarball.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.workflow.conftest import SYS_FIX, Kernel, changed_functions, manifest, read_update

SECRET = "int leaked_secret = 0x5ec7e7;\n"


def outside_secret(tmp_path: Path) -> Path:
    """A valid C file outside the repository: what a symlink must never bring in."""
    d = tmp_path / "outside"
    d.mkdir(exist_ok=True)
    p = d / "secret.c"
    p.write_text(SECRET)
    return p


def assert_nothing_recorded(k: Kernel) -> None:
    assert k.ksplice_refs() == {}, k.ksplice_refs()
    assert not k.updates_dir.exists() or not any(k.updates_dir.iterdir())


def assert_secret_nowhere(k: Kernel) -> None:
    """No object of the repository holds the outside file's text."""
    objects = k.git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    for oid in objects.split():
        data = subprocess.run(["git", "cat-file", "-p", oid], cwd=k.path,
                              capture_output=True).stdout
        assert b"leaked_secret" not in data, oid


# -- --diffext ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/etc/hostname", "secret", "/dev/zero"])
def test_diffext_symlink_out_of_the_tree_is_refused(kernel: Kernel, tmp_path: Path,
                                                    target: str) -> None:
    if target == "secret":
        target = str(outside_secret(tmp_path))
    (kernel.path / "kernel/sys.c.new").symlink_to(target)
    r = kernel.create("--diffext=.new", expect=1, timeout=30)
    assert f"kernel/sys.c is a symlink to {target}, which leads outside the source tree" \
        in r.stderr, r.stderr
    assert_nothing_recorded(kernel)
    assert_secret_nowhere(kernel)


def test_diffext_relative_symlink_escaping_the_tree_is_refused(kernel: Kernel,
                                                               tmp_path: Path) -> None:
    outside_secret(tmp_path)  # tmp_path/outside/secret.c; the repository is tmp_path/linux
    (kernel.path / "kernel/sys.c.new").symlink_to("../../outside/secret.c")
    r = kernel.create("--diffext=.new", expect=1)
    assert "outside the source tree" in r.stderr, r.stderr
    assert_nothing_recorded(kernel)
    assert_secret_nowhere(kernel)


def test_diffext_symlink_into_dot_git_is_refused(kernel: Kernel) -> None:
    (kernel.path / "kernel/sys.c.new").symlink_to("../.git/config")
    r = kernel.create("--diffext=.new", expect=1)
    assert "is a symlink to ../.git/config, which leads into .git" in r.stderr, r.stderr
    assert_nothing_recorded(kernel)


def test_diffext_symlinks_chained_out_of_the_tree_are_refused(kernel: Kernel) -> None:
    """Read as text, `r/../../../etc/passwd` stays inside; but r is itself a link (to the
    tree's root), and a checkout follows it: the `..` climb from where r points."""
    d = kernel.path / "kernel" / "deep" / "er"
    d.mkdir(parents=True)
    (d / "r.new").symlink_to("../../..")
    (d / "y.new").symlink_to("r/../../../etc/passwd")
    fixed = (kernel.path / "kernel/sys.c").read_text().replace(*SYS_FIX["kernel/sys.c"])
    (kernel.path / "kernel/sys.c.new").write_text(fixed)  # a real change beside them
    r = kernel.create("--diffext=.new", expect=1)
    assert "kernel/deep/er/y is a symlink to r/../../../etc/passwd, which leads outside" \
        in r.stderr, r.stderr
    assert_nothing_recorded(kernel)


def test_patch_writing_beyond_a_symlink_is_refused(kernel: Kernel, tmp_path: Path) -> None:
    """A patch that makes a directory link out of the tree and a file under it: the file
    would land wherever the link points, outside patch(1)'s scratch tree. patch(1) refuses
    to write it, and nothing is recorded."""
    patch = tmp_path / "beyond.patch"
    patch.write_text("diff --git a/kernel/up b/kernel/up\nnew file mode 120000\n"
                     "--- /dev/null\n+++ b/kernel/up\n@@ -0,0 +1 @@\n+../..\n"
                     "\\ No newline at end of file\n"
                     "--- /dev/null\n+++ b/kernel/up/PWNED\n@@ -0,0 +1 @@\n+int x;\n")
    r = kernel.create(f"--patch={patch}", expect=1)
    assert "does not apply" in r.stderr and "Invalid file name kernel/up/PWNED" in r.stderr, \
        r.stderr
    assert not list(tmp_path.parent.rglob("PWNED"))
    assert_nothing_recorded(kernel)


def test_diffext_fifo_is_refused_without_hanging(kernel: Kernel) -> None:
    os.mkfifo(kernel.path / "kernel/sys.c.new")
    r = kernel.create("--diffext=.new", expect=1, timeout=30)
    assert "kernel/sys.c.new is a FIFO, not a regular file" in r.stderr, r.stderr
    assert_nothing_recorded(kernel)


def test_diffext_symlink_inside_the_tree_is_committed_as_a_symlink(warm_kernel: Kernel
                                                                    ) -> None:
    """A link to another file of the change is legitimate: it is stored as a link (mode
    120000, its target as the blob), and kbuild compiles what it points at."""
    k = warm_kernel
    fixed = (k.path / "kernel/sys.c").read_text().replace(*SYS_FIX["kernel/sys.c"])
    (k.path / "kernel/sys_fixed.c.new").write_text(fixed)
    (k.path / "kernel/sys.c.new").symlink_to("sys_fixed.c")
    k.create("--diffext=.new", "--id", "linked")
    post = k.rev("refs/ksplice/updates/linked")
    entry = k.git("ls-tree", post, "kernel/sys.c").split()
    assert entry[0] == "120000", entry
    assert k.git("cat-file", "-p", entry[2]) == "sys_fixed.c"
    assert changed_functions(manifest(read_update(k.tarball("linked")))) == {
        "kernel/sys.o": ["sys_uname"]}


# -- --patch -----------------------------------------------------------------------------

def _write(tmp_path: Path, text: str, name: str = "change.patch") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_patch_creating_a_symlink_out_of_the_tree_is_refused(kernel: Kernel,
                                                             tmp_path: Path) -> None:
    """A git-style patch adding `new file mode 120000` (patch(1) makes the link) and a file
    that #includes it: the link is refused, the outside file never read."""
    secret = outside_secret(tmp_path)
    patch = _write(tmp_path, (
        "diff --git a/kernel/secret.h b/kernel/secret.h\n"
        "new file mode 120000\n"
        "--- /dev/null\n"
        "+++ b/kernel/secret.h\n"
        "@@ -0,0 +1 @@\n"
        f"+{secret}\n"
        "\\ No newline at end of file\n"
        "--- a/kernel/sys.c\n"
        "+++ b/kernel/sys.c\n"
        "@@ -1,1 +1,2 @@\n"
        f"+#include \"secret.h\"\n"
        f" {(kernel.path / 'kernel/sys.c').read_text().splitlines()[0]}\n"))
    r = kernel.create(f"--patch={patch}", expect=1)
    assert f"kernel/secret.h is a symlink to {secret}, which leads outside the source tree" \
        in r.stderr, r.stderr
    assert_nothing_recorded(kernel)
    assert_secret_nowhere(kernel)


@pytest.mark.parametrize("path", [".git/hooks/post-checkout", "kernel/.git/config",
                                  "../outside.c", "kernel/../../outside.c"])
def test_patch_paths_out_of_the_tree_or_into_git_are_refused(kernel: Kernel, tmp_path: Path,
                                                            path: str) -> None:
    patch = _write(tmp_path, f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+#!/bin/sh\n")
    r = kernel.create(f"--patch={patch}", expect=1)
    assert ("is inside .git" in r.stderr or "is not a path inside the tree" in r.stderr), \
        r.stderr
    assert_nothing_recorded(kernel)
    assert not (kernel.path / ".git/hooks/post-checkout").exists()
    assert not (tmp_path / "outside.c").exists()


def _fuzzy_patch(k: Kernel) -> str:
    """A patch for sys.c whose first context line is wrong: it applies only with fuzz."""
    lines = (k.path / "kernel/sys.c").read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if '"Tiny"' in line)
    before = lines[max(0, i - 3):i]
    after = lines[i + 1:i + 4]
    before[0] = before[0] + " /* not in the running kernel's source */"
    start = max(0, i - 3) + 1
    hunk = [f"@@ -{start},{len(before) + 1 + len(after)} +{start},"
            f"{len(before) + 1 + len(after)} @@"]
    hunk += [" " + line for line in before]
    hunk += ["-" + lines[i], "+" + lines[i].replace('"Tiny"', '"Tiny Linux"')]
    hunk += [" " + line for line in after]
    return "--- a/kernel/sys.c\n+++ b/kernel/sys.c\n" + "\n".join(hunk) + "\n"


def test_patch_applies_exactly_unless_fuzz_is_allowed(warm_kernel: Kernel,
                                                      tmp_path: Path) -> None:
    k = warm_kernel
    patch = _write(tmp_path, _fuzzy_patch(k))
    r = k.create(f"--patch={patch}", expect=1)
    assert "does not apply to refs/ksplice/pre" in r.stderr, r.stderr
    assert not any(n.startswith("refs/ksplice/updates/") for n in k.ksplice_refs())
    # Asked for, fuzz is allowed (the options replace the default -p1, as in ksplice-create).
    k.create(f"--patch={patch}", "--patch-opt=-p1", "--patch-opt=--fuzz=2", "--id", "fuzzy")
    assert changed_functions(manifest(read_update(k.tarball("fuzzy")))) == {
        "kernel/sys.o": ["sys_uname"]}


def test_plain_diff_against_a_tracked_symlink_is_refused(kernel: Kernel,
                                                         tmp_path: Path) -> None:
    """A plain diff of a symlink's target text must not rewrite where the link points."""
    k = kernel
    (k.path / "include/current.h").symlink_to("tiny.h")
    k.git("add", "include/current.h")
    k.git("commit", "-q", "-m", "a link")
    patch = _write(tmp_path, "--- a/include/current.h\n+++ b/include/current.h\n"
                             "@@ -1 +1 @@\n-tiny.h\n\\ No newline at end of file\n"
                             "+/etc/passwd\n\\ No newline at end of file\n")
    r = k.create(f"--patch={patch}", expect=1)
    assert "is not a regular file -- refusing to patch" in r.stderr, r.stderr
    assert not any(n.startswith("refs/ksplice/updates/") for n in k.ksplice_refs())


def test_git_binary_patch_is_named(kernel: Kernel, tmp_path: Path) -> None:
    patch = _write(tmp_path, "diff --git a/fw.bin b/fw.bin\nnew file mode 100644\n"
                             "index 0000000..e69de29\nGIT binary patch\nliteral 4\n"
                             "LcmZ?d00001\n\nliteral 0\nHcmV?d00001\n\n")
    r = kernel.create(f"--patch={patch}", expect=1)
    assert "holds a git binary patch, which patch(1) cannot apply" in r.stderr, r.stderr
    assert "git ksplice create COMMIT" in r.stderr
    assert_nothing_recorded(kernel)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_patch_file_must_be_a_regular_file(kernel: Kernel, tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "change.patch"
        os.mkfifo(path)
        expected = "is a FIFO, not a regular file"
    elif kind == "directory":
        path = tmp_path
        expected = "is a directory, not a regular file"
    else:
        path = Path(kind)
        expected = "is a character device, not a regular file"
    r = kernel.create(f"--patch={path}", expect=1, timeout=30)
    assert expected in r.stderr, r.stderr
    assert_nothing_recorded(kernel)


def test_tarball_holds_nothing_from_outside(warm_kernel: Kernel, tmp_path: Path) -> None:
    """The symlinked build above aside, a normal --diffext run next to an outside link that
    is not part of the change (no X<EXT>) ships only the tree's files."""
    k = warm_kernel
    secret = outside_secret(tmp_path)
    (k.path / "kernel/notes.txt").symlink_to(secret)  # untracked, not X.new: not read
    fixed = (k.path / "kernel/sys.c").read_text().replace(*SYS_FIX["kernel/sys.c"])
    (k.path / "kernel/sys.c.new").write_text(fixed)
    k.create("--diffext=.new", "--id", "clean")
    with tarfile.open(k.tarball("clean")) as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            assert f is None or b"leaked_secret" not in f.read(), member.name
    assert_secret_nowhere(k)


# -- settings and ids ----------------------------------------------------------------------


def test_an_id_is_matched_whole(kernel: Kernel) -> None:
    r = kernel.create("--id", "abc\n", expect=1)
    assert "an update id is 1 to 32 characters" in r.stderr, r.stderr
    assert_nothing_recorded(kernel)


@pytest.mark.parametrize("where", ["flags", "ksplice.makeArgs", "ksplice.makeTargets"])
def test_an_unbalanced_quote_in_a_setting_is_named(kernel: Kernel, where: str) -> None:
    k = kernel
    k.git("update-ref", "refs/ksplice/pre", "HEAD")
    k.commit("proc: say more", {"fs/proc.c": ("uptime: up\\n", "uptime: up and on\\n")})
    if where == "flags":
        (k.path / "ksplice" / "flags").write_text('CC="ccache gcc\n')
        name = "ORIG_CONFIG's flags"
    else:
        k.git("config", where, 'CC="ccache gcc')
        name = where
    r = k.create("HEAD", expect=1)
    assert f"cannot read {name}" in r.stderr and "No closing quotation" in r.stderr, r.stderr
    assert set(k.ksplice_refs()) == {"refs/ksplice/pre"}


# -- a build directory shared by two repositories ------------------------------------------


def test_a_shared_build_directory_belongs_to_its_first_repository(new_kernel,
                                                                  tmp_path: Path) -> None:
    """Two repositories given the same ksplice.buildDir: the second is refused, naming the
    owner, and the first one's tree, cache and later runs are untouched."""
    a, b = new_kernel("a"), new_kernel("b")
    shared = tmp_path / "shared-builds"
    for k in (a, b):
        k.git("config", "ksplice.buildDir", str(shared))
    a.prebuild()
    tree_head = a.git("rev-parse", "HEAD", cwd=shared / "tree")
    r = b.create("--prebuild", expect=1)
    owner = str((a.path / ".git").resolve())
    assert f"the build directory {shared} belongs to the repository {owner}" in r.stderr, \
        r.stderr
    assert "git config ksplice.buildDir DIR" in r.stderr
    assert a.git("rev-parse", "HEAD", cwd=shared / "tree") == tree_head
    a.commit("proc: say more", {"fs/proc.c": ("uptime: up\\n", "uptime: up and on\\n")})
    a.create("--id", "still_works")
    # Its owner gone, the directory is taken over, with a note.
    shutil.rmtree(a.path)
    r = b.create("--prebuild")
    assert f"belonged to {owner}, which is gone: taking it over" in r.stderr, r.stderr


def test_one_owner_per_build_directory_whichever_mode_claims_it(tmp_path: Path) -> None:
    """The targeted tree lives in <build dir>/targeted and the full tree in <build dir>:
    a repository claiming the directory in one mode keeps it from another in the other."""
    from git_ksplice.build import BuildTree
    from git_ksplice.errors import InputError
    from git_ksplice.repo import Repo
    from git_ksplice.targeted import PreparedTree

    repos = []
    for name in ("a", "b"):
        subprocess.run(["git", "init", "-q", str(tmp_path / name)], check=True)
        repos.append(Repo.discover(str(tmp_path / name)))
    shared = tmp_path / "shared-builds"
    PreparedTree(repos[0], shared).claim(print)
    with pytest.raises(InputError, match="belongs to the repository"):
        BuildTree(repos[1], shared).claim(print)
    with pytest.raises(InputError, match="belongs to the repository"):
        PreparedTree(repos[1], shared).claim(print)
    BuildTree(repos[0], shared).claim(print)  # its own, in the other mode


# -- ORIG_CONFIG ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "message"), [
    (".config", "", "holds no kernel configuration (no CONFIG_ lines)"),
    (".config", "# only comments\n", "holds no kernel configuration"),
    (".config", "root:x:0:0:root:/root:/bin/bash\n", "is not a kernel configuration: line 1"),
    (".config", "CONFIG_PROC=y\nCONFIG_ARM64=y\n", "is for arm64 (CONFIG_ARM64=y)"),
    ("System.map", "", "System.map is empty"),
    ("System.map", "hello world\n", "is not a System.map: line 1"),
    ("System.map", "ffffffff81000000 T _text\nnot a symbol line at all\n",
     "is not a System.map: line 2"),
])
def test_orig_config_files_are_checked(kernel: Kernel, name: str, text: str,
                                       message: str) -> None:
    """Checked before anything is built or recorded: an empty .config used to build a
    kernel with every option off."""
    (kernel.path / "ksplice" / name).write_text(text)
    r = kernel.create("--prebuild", expect=1)
    assert message in r.stderr, r.stderr
    assert_nothing_recorded(kernel)


def test_diffext_file_in_place_of_a_directory_is_refused(kernel: Kernel) -> None:
    (kernel.path / "kernel.new").write_text("not a directory\n")
    fixed = (kernel.path / "kernel/sys.c").read_text().replace(*SYS_FIX["kernel/sys.c"])
    (kernel.path / "kernel/sys.c.new").write_text(fixed)
    r = kernel.create("--diffext=.new", expect=1)
    assert "kernel is a directory in refs/ksplice/pre; a file cannot replace it" in r.stderr, \
        r.stderr
    assert_nothing_recorded(kernel)
