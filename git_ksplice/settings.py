"""Settings: read once, in one place, into typed objects that are passed down.

Precedence, for every setting: the command line, then `git -c`, then `git config` (git
itself merges those two, and this module asks git), then the default. Nothing below the
commands reads `git config`: the pipeline, the build, the hook's queue and worker get what
they need from here.

| setting                  | option                  | key                               |
|--------------------------|-------------------------|-----------------------------------|
| stack updates            | --series                | ksplice.series                    |
| ship patched modules     | --build-modules         | ksplice.buildModules              |
| wait for another run     | --wait                  | ksplice.wait (default on)         |
| targets, objects, patch  | --only-targets ...      | ksplice.onlyTargets, extraMatch,  |
|                          |                         | excludeMatch, patchOpt (multi)    |
| make jobs                | -j (CONCURRENCY_LEVEL)  | ksplice.jobs                      |
| targeted or full build   | --build-mode            | ksplice.buildMode (targeted)      |
| ORIG_CONFIG              | --config                | ksplice.config                    |
| tarball directory        | -o                      | ksplice.outputDir                 |
| make                     |                         | ksplice.makeArgs, makeTargets     |
| build directory          |                         | ksplice.buildDir                  |
| the hook                 | hook install --branch   | ksplice.watch, hookSeries,        |
|                          |                         | hookLimit                         |
| the kernel `try` boots   | try --kernel            | ksplice.kernel                    |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.errors import InputError
from git_ksplice.origconfig import OrigConfig, shell_words
from git_ksplice.package import check_update_id, new_update_id
from git_ksplice.repo import Repo, user_config


@dataclass
class CreateOptions:
    """What the user gave `create` (or `ksplice-create`) on the command line. None (and an
    empty list) means "not given": the setting, then the default, applies."""

    commit: str | None = None
    patch: str | None = None
    diffext: str | None = None
    prebuild: bool = False
    series: bool | None = None
    id: str | None = None
    description: str | None = None
    jobs: int | None = None
    verbose: int = 0
    config: str | None = None
    build_modules: bool | None = None
    #: a list that holds only "" (`--only-targets=`) clears the setting
    only_targets: list[str] = field(default_factory=list)
    extra_match: list[str] = field(default_factory=list)
    exclude_match: list[str] = field(default_factory=list)
    skip_prebuild: bool = False
    patch_opts: list[str] = field(default_factory=list)
    output: str | None = None
    as_json: bool = False
    wait: bool | None = None
    #: build even though a struct or union changes layout (see git_ksplice.layout)
    allow_layout_change: bool = False
    #: "targeted" or "full" (see git_ksplice.targeted); None: ksplice.buildMode
    build_mode: str | None = None
    #: the private key and certificate the livepatch module is signed with; None:
    #: ksplice.signKey, ksplice.signCert
    sign_key: str | None = None
    sign_cert: str | None = None
    #: Where relative paths (--patch, --config, -o) are resolved: the user's directory.
    cwd: str = field(default_factory=os.getcwd)
    #: Where the repository is found (ksplice-create's KERNEL_SOURCE); default `cwd`.
    source: str | None = None

    def modes(self) -> list[str]:
        """The ways of giving the change that were used: exactly one is allowed."""
        given = [("COMMIT/--git", self.commit), ("--patch", self.patch),
                 ("--diffext", self.diffext), ("--prebuild", self.prebuild or None)]
        return [name for name, value in given if value is not None]


def one_change_at_a_time(modes: list[str]) -> str | None:
    """The complaint about `modes` when more than one way of giving the change was used."""
    if len(modes) <= 1:
        return None
    return "give one change at a time: " + " and ".join(modes) + " were given"


@dataclass(frozen=True)
class Settings:
    """Everything one `create` runs with, resolved."""

    update_id: str
    orig: OrigConfig
    series: bool
    build_modules: bool
    wait: bool
    only_targets: list[str]
    extra_match: list[str]
    exclude_match: list[str]
    patch_opts: list[str]
    jobs: int
    output_dir: Path
    build_dir: Path
    #: ksplice.makeArgs (ORIG_CONFIG's flags come first; see `make_args`)
    extra_make_args: list[str]
    #: ksplice.makeTargets; None: what the tree needs (see pipeline)
    make_targets: list[str] | None
    verbose: int
    #: "targeted" (prepare the tree, compile what the change touches) or "full"
    build_mode: str = "targeted"
    #: (private key, certificate) to sign the livepatch module with; None: unsigned
    signing: tuple[Path, Path] | None = None

    @property
    def make_args(self) -> list[str]:
        """kbuild arguments: ORIG_CONFIG's flags (how the running kernel was built), then
        ksplice.makeArgs."""
        return [*self.orig.flags, *self.extra_make_args]


def read_create_settings(repo: Repo, opts: CreateOptions) -> Settings:
    """The settings of one `create`, each read once. Errors come in the order the user
    would fix them: the options' own, then ORIG_CONFIG, then the numbers and directories."""
    update_id = opts.id if opts.id is not None else new_update_id()
    switches = {name: _switch(repo, given, key, default)
                for name, given, key, default in (
                    ("series", opts.series, "ksplice.series", False),
                    ("build_modules", opts.build_modules, "ksplice.buildModules", False),
                    ("wait", opts.wait, "ksplice.wait", True))}
    lists = {name: _list(repo, given, key)
             for name, given, key in (
                 ("only_targets", opts.only_targets, "ksplice.onlyTargets"),
                 ("extra_match", opts.extra_match, "ksplice.extraMatch"),
                 ("exclude_match", opts.exclude_match, "ksplice.excludeMatch"),
                 ("patch_opts", opts.patch_opts, "ksplice.patchOpt"))}
    check_update_id(update_id)
    orig = OrigConfig(orig_config_dir(repo, opts.config, opts.cwd))
    orig.check()
    make_args = repo.config("ksplice.makeArgs")
    make_targets = repo.config("ksplice.makeTargets")
    return Settings(
        update_id=update_id, orig=orig, **switches, **lists,
        jobs=_jobs(repo, opts.jobs), output_dir=_output_dir(repo, opts),
        build_dir=build_dir(repo),
        extra_make_args=shell_words(make_args, "ksplice.makeArgs") if make_args else [],
        make_targets=(None if make_targets is None
                      else shell_words(make_targets, "ksplice.makeTargets")),
        verbose=opts.verbose, build_mode=_build_mode(repo, opts.build_mode),
        signing=_signing(repo, opts))


def _signing(repo: Repo, opts: CreateOptions) -> tuple[Path, Path] | None:
    """--sign-key and --sign-cert (else ksplice.signKey, ksplice.signCert): both or none,
    each a readable file."""
    given = {}
    for name, value, key in (("key", opts.sign_key, "ksplice.signKey"),
                             ("certificate", opts.sign_cert, "ksplice.signCert")):
        if value is not None:
            path = Path(value).expanduser()
            given[name] = path if path.is_absolute() else Path(opts.cwd) / path
        else:
            configured = repo.config(key, type="path")
            if configured:
                given[name] = Path(configured).expanduser()
    if not given:
        return None
    if len(given) == 1:
        missing = "certificate" if "key" in given else "key"
        raise InputError(f"a signing {next(iter(given))} was given without its {missing}",
                         hint="give both: --sign-key KEY --sign-cert CERT (or git config "
                              "ksplice.signKey and ksplice.signCert)")
    for name, path in given.items():
        if not path.is_file():
            raise InputError(f"the signing {name} {path} is not a file",
                             hint="--sign-key takes the private key (PEM), --sign-cert its "
                                  "X.509 certificate (PEM or DER), as scripts/sign-file does")
    return given["key"], given["certificate"]


BUILD_MODES = ("targeted", "full")


def read_build_mode(repo: Repo) -> str:
    """ksplice.buildMode: how `create` (and so the hook) builds."""
    return _build_mode(repo, None)


def _build_mode(repo: Repo, given: str | None) -> str:
    if given is not None:
        return given
    value = repo.config("ksplice.buildMode")
    if value is None:
        return "targeted"
    if value.strip().lower() not in BUILD_MODES:
        raise InputError(f"ksplice.buildMode={value!r} is not a build mode",
                         hint="set it to targeted (compile what the change touches) or full "
                              "(build the whole tree once), or remove it")
    return value.strip().lower()


def _switch(repo: Repo, given: bool | None, key: str, default: bool) -> bool:
    if given is not None:
        return given
    value = repo.config(key, type="bool")
    return default if value is None else value == "true"


def _list(repo: Repo, given: list[str], key: str) -> list[str]:
    if given:  # an empty value (--only-targets=) clears the setting
        return [v for v in given if v]
    return repo.config_all(key)


def _jobs(repo: Repo, given: int | None) -> int:
    """-j N, else CONCURRENCY_LEVEL, else ksplice.jobs, else the number of CPUs. A value below
    1 is an error naming where it came from, never "every CPU": make itself refuses -j0, and
    a silent substitute hides the typo. (-j is checked by click, as a usage error; the other
    two are not on the command line, so they are ordinary errors, exit 1.)"""
    if given is not None:
        if given < 1:  # the CLI refuses it; library callers get the same answer
            raise InputError(f"-j {given}: the number of make jobs must be 1 or more")
        return given
    env = os.environ.get("CONCURRENCY_LEVEL")
    if env:
        if not re.fullmatch(r"[0-9]+", env) or int(env) < 1:
            raise InputError(f"CONCURRENCY_LEVEL={env!r} is not a positive number of make jobs",
                             hint="set it to 1 or more, or unset it (-j N overrides it)")
        return int(env)
    configured = repo.config("ksplice.jobs", type="int")
    if configured is not None:
        if int(configured) < 1:
            raise InputError(f"ksplice.jobs={configured} is not a positive number of make jobs",
                             hint="set it to 1 or more (git config ksplice.jobs N) or remove it "
                                  "(git config --unset ksplice.jobs); `git config "
                                  "--show-origin ksplice.jobs` shows where it is set")
        return int(configured)
    return os.cpu_count() or 1


def orig_config_dir(repo: Repo, given: str | None, cwd: str) -> Path:
    """ORIG_CONFIG: --config, else ksplice.config, else ksplice/ at the top of the tree."""
    if given is not None:
        p = Path(given)
        return (p if p.is_absolute() else Path(cwd) / p).resolve()
    configured = repo.config("ksplice.config", type="path")
    if configured:
        p = Path(configured).expanduser()
        if not p.is_absolute() and repo.toplevel:
            p = repo.toplevel / p
        return p.resolve()
    if repo.toplevel is None:
        raise InputError("no ORIG_CONFIG: this repository has no working tree",
                         hint="pass --config=DIR or set ksplice.config")
    p = repo.toplevel / "ksplice"
    main_tree = repo.common_dir.parent
    if not p.exists() and (main_tree / "ksplice").is_dir():
        p = main_tree / "ksplice"  # from a linked worktree: the main tree's
    return p.resolve()


def _output_dir(repo: Repo, opts: CreateOptions) -> Path:
    """-o DIR, else ksplice.outputDir, else the state directory: never, by default, the
    user's working tree (an untracked tarball there would change `git status`)."""
    if opts.output is not None:
        p = Path(opts.output).expanduser()
        return p if p.is_absolute() else Path(opts.cwd) / p
    configured = repo.config("ksplice.outputDir", type="path")
    if configured is None:
        return repo.state_dir / "updates"
    p = Path(configured).expanduser()  # relative to the top of the tree, like ksplice.config
    return p if p.is_absolute() else (repo.toplevel or repo.common_dir) / p


def build_dir(repo: Repo) -> Path:
    """ksplice.buildDir (relative: to the top of the tree), else the state directory's."""
    configured = repo.config("ksplice.buildDir", type="path")
    root = Path(configured).expanduser() if configured else repo.state_dir / "build"
    return root if root.is_absolute() else (repo.toplevel or repo.common_dir) / root


# -- the hook ------------------------------------------------------------------------------

#: At most this many commits arriving at once are built one by one (ksplice.hookLimit; 0: no
#: limit); beyond it only the last.
DEFAULT_HOOK_LIMIT = 32


@dataclass(frozen=True)
class HookSettings:
    #: ksplice.watch, every value as git prints it (branches, REMOTE/BRANCH, full refs,
    #: patterns; the hook's shell line compares this very text)
    watch: list[str]
    series: bool
    limit: int


def read_hook_settings(repo: Repo) -> HookSettings:
    limit = repo.config("ksplice.hookLimit", type="int")
    return HookSettings(watch=repo.config_all("ksplice.watch"),
                        series=repo.config("ksplice.hookSeries", type="bool") == "true",
                        limit=DEFAULT_HOOK_LIMIT if limit is None else int(limit))


# -- try -----------------------------------------------------------------------------------


def kernel_image(given: str | None) -> str:
    """The kernel `try` boots: --kernel, else ksplice.kernel (read through git, so `git -c`
    works; outside a repository only the user's and the system's configuration), else the
    repository's ORIG_CONFIG's `vmlinuz` (what import-kernel copied)."""
    if given is not None:
        return given
    configured = user_config("ksplice.kernel", type="path")
    if configured:
        return configured
    imported = _imported_vmlinuz()
    if imported is None:
        raise InputError("which kernel should boot? no --kernel was given, ksplice.kernel "
                         "is not set and ORIG_CONFIG has no vmlinuz",
                         hint="pass --kernel BZIMAGE (the running kernel's image), set "
                              "ksplice.kernel, or run git ksplice import-kernel")
    return str(imported)


def _imported_vmlinuz() -> Path | None:
    orig = repository_orig_config()
    return orig.vmlinuz if orig is not None else None


def repository_orig_config() -> OrigConfig | None:
    """The ORIG_CONFIG of the repository here (as `create` finds it), if there is one."""
    try:
        repo = Repo.discover()
        orig = OrigConfig(orig_config_dir(repo, None, os.getcwd()))
    except InputError:
        return None
    return orig if orig.path.is_dir() else None
