"""The library below the commands, in-process: settings, the tarball format, the ledger and
the pipeline's phases. The subprocess tests prove the commands; these pin down each part's
contract where a failure names the part, and run in a fraction of the time."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from git_ksplice import ledger, pipeline
from git_ksplice.errors import InputError, NoChangeError
from git_ksplice.package import (
    Contents,
    Update,
    check_manifest,
    parse_manifest,
    read_tarball,
    write_tarball,
)
from git_ksplice.progress import Recorder
from git_ksplice.repo import REF_PRE, REF_SERIES, REF_UPDATES, Repo, clean_environment
from git_ksplice.settings import CreateOptions, read_create_settings, read_hook_settings
from tests.workflow.conftest import PROC_FIX, Kernel

# -- settings ------------------------------------------------------------------------------


def _git_c(monkeypatch: pytest.MonkeyPatch, **pairs: str) -> None:
    """What `git -c KEY=VALUE ksplice ...` gives the process: GIT_CONFIG_COUNT & co."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", str(len(pairs)))
    for i, (key, value) in enumerate(pairs.items()):
        monkeypatch.setenv(f"GIT_CONFIG_KEY_{i}", key.replace("_", "."))
        monkeypatch.setenv(f"GIT_CONFIG_VALUE_{i}", value)


def test_settings_take_the_command_line_then_git_c_then_git_config_then_defaults(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repo.discover(kernel.path)
    opts = CreateOptions(cwd=str(kernel.path))
    s = read_create_settings(repo, opts)
    assert (s.series, s.wait, s.build_modules, s.jobs) == (False, True, False, os.cpu_count())
    assert s.output_dir == repo.state_dir / "updates"
    assert s.build_dir == repo.state_dir / "build"
    assert s.orig.path == (kernel.path / "ksplice").resolve()

    kernel.git("config", "ksplice.series", "true")
    kernel.git("config", "ksplice.jobs", "3")
    kernel.git("config", "--add", "ksplice.extraMatch", "fs/%")
    assert read_create_settings(repo, opts).series is True
    assert read_create_settings(repo, opts).extra_match == ["fs/%"]

    _git_c(monkeypatch, ksplice_series="false", ksplice_jobs="2")
    s = read_create_settings(repo, opts)
    assert (s.series, s.jobs) == (False, 2)  # git -c over git config

    s = read_create_settings(repo, CreateOptions(cwd=str(kernel.path), series=True, jobs=5,
                                                 extra_match=[""]))
    assert (s.series, s.jobs, s.extra_match) == (True, 5, [])  # the command line over all

    assert read_create_settings(repo, opts).build_mode == "targeted"
    kernel.git("config", "ksplice.buildMode", "Full")
    assert read_create_settings(repo, opts).build_mode == "full"
    assert read_create_settings(repo, CreateOptions(cwd=str(kernel.path),
                                                    build_mode="targeted")).build_mode == \
        "targeted"


def test_a_bad_setting_names_itself(kernel: Kernel) -> None:
    repo = Repo.discover(kernel.path)
    kernel.git("config", "ksplice.series", "perhaps")
    with pytest.raises(InputError, match=r"bad value for ksplice\.series"):
        read_create_settings(repo, CreateOptions(cwd=str(kernel.path)))
    kernel.git("config", "ksplice.series", "true")
    kernel.git("config", "ksplice.buildMode", "quick")
    with pytest.raises(InputError, match=r"ksplice\.buildMode='quick' is not a build mode"):
        read_create_settings(repo, CreateOptions(cwd=str(kernel.path)))


def test_the_hook_reads_its_settings_once(kernel: Kernel) -> None:
    repo = Repo.discover(kernel.path)
    assert read_hook_settings(repo).limit == 32
    kernel.git("config", "--add", "ksplice.watch", "main")
    kernel.git("config", "--add", "ksplice.watch", "fix/*")
    kernel.git("config", "ksplice.hookLimit", "4")
    s = read_hook_settings(repo)
    assert (s.watch, s.limit, s.series) == (["main", "fix/*"], 4, False)


def test_one_environment_list_serves_build_trees_and_the_worker() -> None:
    env = {"GIT_DIR": ".", "GIT_INDEX_FILE": "i", "GIT_CONFIG_PARAMETERS": "'a.b'='c'",
           "GIT_CONFIG_KEY_0": "x", "HOME": "/h"}
    assert clean_environment(env) == {"GIT_CONFIG_PARAMETERS": "'a.b'='c'",
                                      "GIT_CONFIG_KEY_0": "x", "HOME": "/h"}
    assert clean_environment(env, drop_settings=True) == {"HOME": "/h"}


# -- the tarball ---------------------------------------------------------------------------


def _update(tmp_path: Path, update_id: str = "abc") -> Update:
    log = tmp_path / "build.log"
    log.write_text("make\n")
    ko = tmp_path / "ksplice_abc.ko"
    ko.write_bytes(b"\x7fELF module")
    u = Update(update_id)
    u.add_diff("fs/proc.o", b"diff object")
    u.finish(manifest={"format": 1, "id": update_id, "targets": {}}, patch="--- a\n",
             description="fix proc", when=1_700_000_000, release="6.1.0",
             targets=["vmlinux"], livepatch=("ksplice_abc", ko),
             modules={"demo": b"module"}, build_log=log)
    return u


def test_the_tarball_reads_back_what_was_written_and_is_reproducible(tmp_path: Path) -> None:
    first = write_tarball(_update(tmp_path), tmp_path / "a", 1_700_000_000)
    second = write_tarball(_update(tmp_path), tmp_path / "b", 1_700_000_000)
    assert first.read_bytes() == second.read_bytes()
    t = read_tarball(first)
    assert t.id == "abc"
    assert t.contents == Contents(livepatch=("ksplice_abc", "ksplice_abc.ko"),
                                  targets=["vmlinux"], modules=[("demo", "modules/demo.ko")])
    assert t.livepatch_module() == ("ksplice_abc", b"\x7fELF module")
    assert t.manifest["id"] == "abc"
    assert t.text("utsname").endswith("Release: 6.1.0\n")
    assert t.files["debug/diff/fs/proc.o"] == b"diff object"
    only = read_tarball(first, wanted=("description",))
    assert set(only.files) == {"description", "contents"}


def _tarball_with(tmp_path: Path, files: dict[str, bytes], top: str = "ksplice-x") -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "t.tar.gz"
    path.write_bytes(raw.getvalue())
    return path


@pytest.mark.parametrize(("contents", "message"), [
    (b"target vmlinux\n", "has no livepatch module"),
    (b"livepatch ksplice_x\n", "names no module file"),
    (b"livepatch $(reboot) x.ko\n", "which is no kernel module name"),
    (b"livepatch ksplice_x x.ko\n", "its contents name x.ko, which it does not hold"),
])
def test_a_damaged_contents_file_is_named(tmp_path: Path, contents: bytes,
                                          message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        read_tarball(_tarball_with(tmp_path, {"contents": contents})).livepatch_module()


def test_contents_of_a_ledger_manifest() -> None:
    c = Contents.of_manifest({"targets": {"vmlinux": {}, "demo": {}},
                              "livepatch": {"module": "ksplice_x"}})
    assert c.text() == "livepatch ksplice_x ksplice_x.ko\ntarget demo\ntarget vmlinux\n"


@pytest.mark.parametrize(("doc", "field"), [
    ({"timestamp": True}, "timestamp is true or false, not a number"),
    ({"targets": {"vmlinux": {"objects": {"a.o": {"changed_functions": [{}]}}}}},
     "targets.vmlinux.objects.a.o.changed_functions[0] has no name"),
    ({"livepatch": {"functions": "f"}}, "livepatch.functions is a string, not a list"),
    ([], "the document is a list, not an object"),
])
def test_the_manifest_schema_names_the_wrong_field(doc: object, field: str) -> None:
    with pytest.raises(InputError, match=re.escape(field)):
        check_manifest(doc, "here")


def test_a_manifest_that_is_not_json_is_named() -> None:
    with pytest.raises(InputError, match=r"here: manifest\.json is not JSON"):
        parse_manifest(b"\xff{", "here")


# -- the ledger ----------------------------------------------------------------------------


def _record(repo: Repo, update_id: str, pre: str, post: str, **manifest: object) -> None:
    ledger.record(repo, ledger.Record(
        update_id, pre, post, {"format": 1, "id": update_id, **manifest}, f"fix {update_id}",
        "--- a\n+++ b\n", "commit", f"summary {update_id}", series=True))


def test_the_ledger_records_and_reads_updates_oldest_first(kernel: Kernel) -> None:
    repo = Repo.discover(kernel.path)
    pre = kernel.rev("HEAD")
    kernel.git("update-ref", REF_PRE, pre)
    one = kernel.commit("one", PROC_FIX)
    _record(repo, "one", pre, one)
    assert repo.ref(REF_PRE) == one  # --series: pre moved with the entry
    assert repo.ref(REF_UPDATES + "one") == one
    two = kernel.commit("two", {"fs/proc.c": ("up and running", "up, running")})
    _record(repo, "two", one, two)
    entries = ledger.entries(repo)
    assert [e.id for e in entries] == ["one", "two"]
    assert entries[1].description == "fix two\n" and entries[1].patch.startswith("--- a")
    assert ledger.find(repo, "one")[0] == entries[0]
    assert ledger.find(repo, "three") == (None, [])


def test_a_damaged_ledger_entry_does_not_hide_the_others(kernel: Kernel) -> None:
    repo = Repo.discover(kernel.path)
    pre = kernel.rev("HEAD")
    kernel.git("update-ref", REF_PRE, pre)
    _record(repo, "good", pre, kernel.commit("one", PROC_FIX))
    tip = repo.ref(REF_SERIES)
    blob = kernel.git("hash-object", "-w", "--stdin", input='{"id": 7}').strip()
    tree = kernel.git("mktree", input=f"100644 blob {blob}\tmanifest.json\n").strip()
    bad = kernel.git("commit-tree", tree, "-p", tip, "-m", "forged").strip()
    kernel.git("update-ref", REF_SERIES, bad)
    good, damaged = ledger.entries(repo)
    assert good.id == "good" and damaged.manifest is None
    assert damaged.damage is not None and "id is a number, not a string" in damaged.damage
    assert ledger.find(repo, "good") == (good, [damaged])


# -- the pipeline --------------------------------------------------------------------------


def _settings(kernel: Kernel, **given: object):
    repo = Repo.discover(kernel.path)
    opts = CreateOptions(cwd=str(kernel.path), jobs=2, **given)  # type: ignore[arg-type]
    return repo, read_create_settings(repo, opts)


def test_the_pipeline_runs_its_phases_in_order(kernel: Kernel) -> None:
    repo, settings = _settings(kernel)
    prebuilt = pipeline.create(repo, settings, pipeline.Request(prebuild=True), Recorder())
    assert isinstance(prebuilt, pipeline.Prebuilt) and prebuilt.pre == kernel.rev("HEAD")

    post = kernel.commit("proc: say more", PROC_FIX)
    repo, settings = _settings(kernel, id="lib1")
    said = Recorder()
    created = pipeline.create(repo, settings, pipeline.Request(commit="HEAD"), said)
    assert isinstance(created, pipeline.Created)
    assert [p.split(" ")[0] for p in said.phases()] == ["pristine", "incremental",
                                                        "comparing"]
    assert said.events[1] == ("done", "up to date")
    assert (created.id, created.post, created.pre) == ("lib1", post, prebuilt.pre)
    assert [c.path for c in created.changed] == ["fs/proc.o"]
    assert created.tarball == repo.state_dir / "updates" / "ksplice-lib1.tar.gz"
    assert read_tarball(created.tarball).manifest == created.manifest
    assert ledger.find(repo, "lib1")[0] is not None
    assert json.loads(json.dumps(created.manifest))["mode"] == "commit"


def test_the_pipeline_checks_its_input_before_it_builds(kernel: Kernel) -> None:
    repo, settings = _settings(kernel)
    said = Recorder()
    with pytest.raises(InputError, match="unknown commit 'nope'"):
        pipeline.create(repo, settings, pipeline.Request(commit="nope"), said)
    assert said.phases() == [] and repo.ref(REF_PRE) is None
    with pytest.raises(NoChangeError):
        pipeline.create(repo, settings, pipeline.Request(commit="HEAD"), said)
    assert said.phases() == []
    assert repo.ref(REF_PRE) == kernel.rev("HEAD")  # first use records pre, and says so
    assert said.events[-1][0] == "note" and "created at HEAD" in said.events[-1][1]


# -- the hook's queue ----------------------------------------------------------------------


def test_watched_patterns_match_as_for_each_ref_does() -> None:
    from git_ksplice.hooks import watched_refs

    known = {"refs/heads/main", "refs/heads/fix/a", "refs/heads/fix/deep/b",
             "refs/remotes/origin/fixes", "refs/heads/fixes"}
    assert watched_refs(["fix/*"], known) == ["refs/heads/fix/a"]
    assert watched_refs(["fix/**"], known) == ["refs/heads/fix/a", "refs/heads/fix/deep/b"]
    assert watched_refs(["origin/fixes", "main"], known) == ["refs/remotes/origin/fixes",
                                                             "refs/heads/main"]
    assert watched_refs(["refs/heads/new"], known) == ["refs/heads/new"]


def test_the_queue_takes_each_landed_commit_once_and_caps_a_flood(kernel: Kernel) -> None:
    from git_ksplice import hooks

    kernel.git("update-ref", REF_PRE, kernel.rev("HEAD"))
    kernel.git("config", "--add", "ksplice.watch", "main")
    kernel.git("config", "ksplice.hookLimit", "2")
    hooks.record_tips(Repo.discover(kernel.path))
    first = kernel.commit("one", PROC_FIX)
    jobs = hooks.enqueue(str(kernel.path))
    assert [(j.commit, j.subject, j.ref) for j in jobs] == [(first, "one", "refs/heads/main")]
    assert hooks.enqueue(str(kernel.path)) == []  # nothing moved since
    for i in range(3):
        kernel.commit(f"more {i}", {"fs/proc.c": ("up and running" if i == 0 else f"up {i - 1}",
                                                  f"up {i}")})
    flood = hooks.enqueue(str(kernel.path))
    assert [j.commit for j in flood] == [kernel.rev("HEAD")]
    assert flood[0].note is not None and "3 commits arrived at once" in flood[0].note
    assert [j.seq for j in hooks.Queue(Repo.discover(kernel.path).common_dir).jobs()] == [1, 2]


def _module_source(tmp_path: Path, kernel_core: str | None) -> str:
    """The generated C of a module with one klp relocation into the module `demo`, built
    against a tree whose kernel/livepatch/core.c says `kernel_core` (None: none)."""
    from git_ksplice.livepatch import module as lpmodule

    tree = tmp_path / "tree"
    if kernel_core is not None:
        (tree / "kernel/livepatch").mkdir(parents=True)
        (tree / "kernel/livepatch/core.c").write_text(kernel_core)
    links = lpmodule._Links()
    links.funcs.append(lpmodule.KlpFunc("demo", "demo_value", "__ksplice_new_0", 0))
    links.placeholder(("demo", "level", 0), 1)
    clearing = lpmodule._relocation_clearing(tree, links)
    return lpmodule._patch_source("ksplice_t", links, "test", clearing)


def test_a_module_target_clears_its_relocations_before_linux_6_3(tmp_path: Path) -> None:
    """Linux before 6.3 leaves a going module's livepatch relocations written, and refuses
    them on its next load: the generated C clears them in the target's post-unpatch
    callback, through klp placeholders for text_poke and text_mutex."""
    old = _module_source(tmp_path / "old", "static void klp_cleanup_module_patches(void)")
    assert "static void ksplice_post_unpatch_0(struct klp_object *obj)\n{\n" \
           "\tksplice_clear_relocations(obj);\n}" in old
    assert re.search(r"extern void \*__ksplice_klp_\d+\(void \*addr", old)
    assert ".post_unpatch = ksplice_post_unpatch_0," in old
    new = _module_source(tmp_path / "new", "void klp_clear_object_relocs(struct klp_patch *p)")
    assert "ksplice_clear_relocations" not in new and "post_unpatch" not in new
