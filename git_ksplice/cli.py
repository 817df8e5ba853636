"""Command-line wiring: click commands, option parsing, exit codes. No logic lives here."""

from __future__ import annotations

import errno
import platform
import sys

import click

from git_ksplice import __version__
from git_ksplice.errors import (
    EXIT_BAD_USAGE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    KspliceError,
)

#: `--version` also names the interpreter and its environment (sys.prefix: a venv's own
#: directory), as `pip --version` does: the first thing to know when a module is missing.
_VERSION_MESSAGE = (f"%(prog)s %(version)s (Python {platform.python_version()}, "
                    f"{sys.prefix})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="git-ksplice", message=_VERSION_MESSAGE)
def cli() -> None:
    """Build rebootless kernel updates from git history."""


@cli.command("diff-object")
@click.argument("orig", type=click.Path(dir_okay=False))
@click.argument("patched", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
              help="Write the diff object (changed and new code, kept table entries) here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--target", default="vmlinux", show_default=True,
              help="What the object links into: vmlinux or a module name.")
@click.option("--entry-size", "entry_sizes", multiple=True, metavar="SECTION=N",
              help="Entry size of a special section, instead of inferring it (repeatable).")
def diff_object_cmd(orig: str, patched: str, output: str | None, as_json: bool, target: str,
                    entry_sizes: tuple[str, ...]) -> None:
    """Compare two builds of one object file, function by function.

    Exit status: 0 the objects differ (and OUTPUT is written), 66 no change, 65 the change
    cannot be applied to a running kernel, 1 bad input.
    """
    from git_ksplice.commands.diff_object import run

    sys.exit(run(orig, patched, output=output, as_json=as_json, target=target,
                 entry_sizes=entry_sizes))


class _Jobs(click.ParamType):
    """A number of make jobs: 1 or more. make refuses -j0 and -j-3, and quietly building with
    every CPU instead (as 0 once meant here) hides a typo, so both are usage errors (exit 2)
    before anything runs."""

    name = "integer"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value))
            except ValueError:
                self.fail(f"{value!r} is not a number of make jobs", param, ctx)
        if number < 1:
            self.fail(f"{value} is not a number of make jobs (1 or more)", param, ctx)
        return number


_JOBS = _Jobs()


def _create_options(f):
    """Options shared by `git ksplice create` and the `ksplice-create` script."""
    for decorator in reversed([
        click.option("--patch", "patch", metavar="FILE", help="Build the change this patch "
                     "makes to refs/ksplice/pre (applied with patch(1))."),
        click.option("--diffext", metavar="EXT", help="Every file X<EXT> in the working tree "
                     "replaces X (EXT with its dot: .new)."),
        click.option("--git", "git_commit", metavar="COMMIT", help="Build the change "
                     "refs/ksplice/pre..COMMIT (same as COMMIT)."),
        click.option("--prebuild", is_flag=True, help="Only prepare (full mode: build) the "
                     "pristine tree."),
        click.option("--series/--no-series", default=None, help="Stack: the next update "
                     "builds on this one (refs/ksplice/pre advances; default: ksplice.series)."),
        click.option("--id", "update_id", metavar="ID", help="Update id (default: 8 random "
                     "characters)."),
        click.option("--description", metavar="TEXT", help="What the update fixes."),
        click.option("-j", "--jobs", type=_JOBS, metavar="N", help="make jobs "
                     "(default: CONCURRENCY_LEVEL, ksplice.jobs, or the number of CPUs)."),
        click.option("-v", "--verbose", count=True, help="Show the build's output (-vv: "
                     "make V=1)."),
        click.option("--config", "config", metavar="ORIG_CONFIG", help="Directory describing "
                     "the running kernel (.config, System.map; default: ksplice.config, or "
                     "<source>/ksplice)."),
        click.option("--build-modules/--no-build-modules", default=None, help="Also ship "
                     "the patched modules' .ko files (default: ksplice.buildModules)."),
        click.option("--only-targets", multiple=True, metavar="PAT", help="Only patch these "
                     "targets (vmlinux, module names; % wildcards; ksplice.onlyTargets)."),
        click.option("--extra-match", multiple=True, metavar="PAT", help="Also ship these "
                     "unchanged objects' pristine builds for checking (% wildcards; "
                     "ksplice.extraMatch)."),
        click.option("--exclude-match", multiple=True, metavar="PAT", help="Remove objects "
                     "from --extra-match (ksplice.excludeMatch)."),
        click.option("--skip-prebuild", is_flag=True, help="Use the pristine build as it is."),
        click.option("--build-mode", type=click.Choice(["targeted", "full"]), default=None,
                     help="targeted: prepare the pristine tree and compile only the objects "
                     "the change can affect (the default for Linux); full: build the whole "
                     "pristine tree once and rebuild incrementally (ksplice.buildMode)."),
        click.option("--patch-opt", "patch_opts", multiple=True, metavar="OPT",
                     help="Option for patch(1) (repeatable; replaces the default -p1; "
                     "ksplice.patchOpt)."),
        click.option("-o", "--output", metavar="DIR", help="Where to write the tarball "
                     "(default: ksplice.outputDir, or .git/ksplice/updates)."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON document on "
                     "stdout."),
        click.option("--allow-layout-change", is_flag=True, help="Build even though the "
                     "change alters a struct or union's layout (only safe when no object of "
                     "the type exists while the update is loaded)."),
        click.option("--wait/--no-wait", default=None, help="Wait for another create on this "
                     "repository to finish (default; ksplice.wait), or fail at once."),
        click.option("--sign-key", metavar="KEY", help="Sign the livepatch module with this "
                     "private key, with the kernel's scripts/sign-file (ksplice.signKey; "
                     "needs --sign-cert)."),
        click.option("--sign-cert", metavar="CERT", help="The X.509 certificate of "
                     "--sign-key (ksplice.signCert)."),
    ]):
        f = decorator(f)
    return f


def _run_create(commit: str | None, source: str | None = None, **kw) -> None:
    from git_ksplice.commands.create import run
    from git_ksplice.settings import CreateOptions, one_change_at_a_time

    git_commit = kw.pop("git_commit")
    if commit is not None and git_commit is not None:
        raise click.UsageError("give the commit either as COMMIT or as --git, not both")
    opts = CreateOptions(
        commit=commit if commit is not None else git_commit,
        patch=kw["patch"], diffext=kw["diffext"], prebuild=kw["prebuild"],
        series=kw["series"], id=kw["update_id"], description=kw["description"],
        jobs=kw["jobs"], verbose=kw["verbose"], config=kw["config"],
        build_modules=kw["build_modules"], only_targets=list(kw["only_targets"]),
        extra_match=list(kw["extra_match"]), exclude_match=list(kw["exclude_match"]),
        skip_prebuild=kw["skip_prebuild"], patch_opts=list(kw["patch_opts"]),
        output=kw["output"], as_json=kw["as_json"], wait=kw["wait"], source=source,
        allow_layout_change=kw["allow_layout_change"], build_mode=kw["build_mode"],
        sign_key=kw["sign_key"], sign_cert=kw["sign_cert"])
    problem = one_change_at_a_time(opts.modes())
    if problem:
        raise click.UsageError(problem)
    sys.exit(run(opts))


@cli.command("create")
@click.argument("commit", required=False)
@_create_options
def create_cmd(commit: str | None, **kw) -> None:
    """Build an update for the change refs/ksplice/pre..COMMIT (default HEAD).

    Exit status: 0 an update was written, 66 no change, 65 the change cannot be applied to
    a running kernel, 1 an error.
    """
    if commit is None and not any(kw[k] for k in ("patch", "diffext", "git_commit",
                                                  "prebuild")):
        commit = "HEAD"
    _run_create(commit, **kw)


@cli.command("view")
@click.argument("tarball", required=False, type=click.Path(dir_okay=False))
@click.option("--id", "update_id", metavar="ID", help="Show the update with this id from the "
              "series ledger.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def view_cmd(tarball: str | None, update_id: str | None, as_json: bool) -> None:
    """Show what an update contains: description, targets, functions, patch."""
    from git_ksplice.commands.view import run

    sys.exit(run(tarball, update_id, as_json))


@cli.command("try")
@click.argument("tarball", type=click.Path(dir_okay=False))
@click.option("--kernel", metavar="BZIMAGE", type=click.Path(dir_okay=False),
              help="The running kernel's image (the kernel the update is for; default: "
                   "ksplice.kernel, else ORIG_CONFIG's vmlinuz).")
@click.option("--check", metavar="SCRIPT", type=click.Path(dir_okay=False),
              help="Shell script run in the guest: must fail before the update, pass with "
                   "it, fail again once it is removed.")
@click.option("--modules", "modules", multiple=True, metavar="KO",
              type=click.Path(dir_okay=False), help="Modules to load first, in order: .ko "
              "files, earlier updates' tarballs for a stack, or names of the running "
              "kernel's shipped modules (ORIG_CONFIG's modules/; loaded after what they "
              "depend on) (repeatable).")
@click.option("--expect-load-failure", "refused", is_flag=True,
              help="The update must refuse to load here (a pre-patch callback that checks "
                   "the machine): loading it fails, and nothing stays patched or loaded.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds for the boot.")
@click.option("--keep", metavar="DIR", help="Keep the initramfs and console log in DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def try_cmd(tarball: str, kernel: str | None, check: str | None, modules: tuple[str, ...],
            refused: bool, timeout: float, keep: str | None, as_json: bool) -> None:
    """Boot KERNEL under qemu and prove the update: load, check, undo.

    Exit status: 0 every step did what it should, 1 otherwise.
    """
    from git_ksplice.commands.try_update import run

    sys.exit(run(tarball, kernel, check, modules, timeout, as_json, keep, refused=refused))


@cli.command("series")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def series_cmd(as_json: bool) -> None:
    """List the updates built so far, oldest first."""
    from git_ksplice.commands.view import run_series

    sys.exit(run_series(as_json))


@cli.group("hook")
def hook_group() -> None:
    """Build an update for every new commit on watched branches, in the background.

    The hook queues; one worker per repository builds, oldest commit first, and logs to the
    common git dir (ksplice/logs/hook/). Settings: ksplice.watch (multi-valued),
    ksplice.hookSeries, ksplice.hookLimit.
    """


@hook_group.command("install")
@click.option("-b", "--branch", "branches", multiple=True, metavar="BRANCH",
              help="Watch this branch (repeatable; a local branch, REMOTE/BRANCH, a full "
                   "ref, or a pattern such as 'fix/*'; default: ksplice.watch, or the current "
                   "branch). Replaces ksplice.watch.")
@click.option("--series/--no-series", default=None, help="Stack the updates: each one builds "
              "on the previous (sets ksplice.hookSeries).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def hook_install_cmd(branches: tuple[str, ...], series: bool | None, as_json: bool) -> None:
    """Add git-ksplice to the repository's reference-transaction hook.

    Also creates refs/ksplice/pre at the first watched branch when it does not exist (it must
    be the running kernel's source), and starts building its pristine tree in the background
    when that is not built yet. Commits already on the branches are not built.
    """
    from git_ksplice.commands.hook import install
    from git_ksplice.repo import Repo

    sys.exit(install(Repo.discover(), list(branches), series, as_json))


@hook_group.command("uninstall")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def hook_uninstall_cmd(as_json: bool) -> None:
    """Remove what install added (the hook block, ksplice.watch, ksplice.hookSeries)."""
    from git_ksplice.commands.hook import uninstall
    from git_ksplice.repo import Repo

    sys.exit(uninstall(Repo.discover(), as_json))


@hook_group.command("status")
@click.option("--all", "show_all", is_flag=True, help="Every job, not only the queued, "
              "running and last ten finished ones.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout "
              "(every job).")
def hook_status_cmd(show_all: bool, as_json: bool) -> None:
    """Show queued, running, built and failed updates, with their logs."""
    from git_ksplice.commands.hook import status
    from git_ksplice.repo import Repo

    sys.exit(status(Repo.discover(), as_json, show_all))


@hook_group.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def hook_retry_cmd(ids: tuple[str, ...], as_json: bool) -> None:
    """Queue failed (or cancelled) builds again (default: every failed one)."""
    from git_ksplice.commands.hook import retry
    from git_ksplice.repo import Repo

    sys.exit(retry(Repo.discover(), list(ids), as_json))


@hook_group.command("cancel")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def hook_cancel_cmd(ids: tuple[str, ...], as_json: bool) -> None:
    """Take queued builds off the queue (default: every queued one)."""
    from git_ksplice.commands.hook import cancel
    from git_ksplice.repo import Repo

    sys.exit(cancel(Repo.discover(), list(ids), as_json))


@cli.command("import-kernel")
@click.argument("release", required=False)
@click.argument("directory", required=False, metavar="[DIR]")
@click.option("--root", default="/", show_default=True, metavar="ROOT",
              help="Where the kernel is installed, or where its packages were unpacked "
                   "(dpkg-deb -x PACKAGE ROOT).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def import_kernel_cmd(release: str | None, directory: str | None, root: str,
                      as_json: bool) -> None:
    """Fill ORIG_CONFIG (DIR; default: the repository's) from a distribution's kernel.

    RELEASE defaults to the running kernel's (uname -r) for ROOT /, else to the one kernel
    under ROOT. A single argument that contains a slash is DIR (./orig, not orig).
    """
    from git_ksplice.commands.import_kernel import run

    if directory is None and release is not None and "/" in release:
        release, directory = None, release
    sys.exit(run(root, release, directory, as_json))


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh"]))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script for SHELL.

    For bash: `git ksplice completion bash > ~/.local/share/bash-completion/completions/git-ksplice`
    (git's own completion then completes `git ksplice` too). For zsh: write it as `_git-ksplice`
    in a directory of $fpath.
    """
    from git_ksplice.completion import script

    sys.stdout.write(script(shell, cli))


#: Ksplice's synopsis: click prints it as the usage line (`[OPTIONS]` then the one change to
#: build), so `--help` and usage errors show Ksplice's form once, and the man page reads it
#: from the same place.
_KSPLICE_CREATE_MODES = "[OPTIONS] {--patch=FILE | --diffext=EXT | --git=COMMIT | --prebuild}"


@click.command("ksplice-create", options_metavar=_KSPLICE_CREATE_MODES,
               context_settings={"help_option_names": ["-h", "--help", "-?"]})
@click.argument("kernel_source", type=click.Path(file_okay=False))
@_create_options
@click.version_option(__version__, prog_name="ksplice-create", message=_VERSION_MESSAGE)
def ksplice_create_cmd(kernel_source: str, **kw) -> None:
    """Build a rebootless update of the kernel whose source is the git repository
    KERNEL_SOURCE, as Ksplice's ksplice-create did. Same as `git -C KERNEL_SOURCE ksplice
    create`; exactly one of --patch, --diffext, --git or --prebuild.
    """
    if not any(kw[k] for k in ("patch", "diffext", "git_commit", "prebuild")):
        raise click.UsageError("give one of --patch, --diffext, --git or --prebuild")
    if kw["output"] is None:
        kw["output"] = "."  # ksplice-create wrote the tarball to the current directory
    _run_create(None, source=kernel_source, **kw)


def ksplice_create_main(argv: list[str] | None = None) -> int:
    """Entry point of the `ksplice-create` script."""
    return _main(ksplice_create_cmd, "ksplice-create", argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `git-ksplice`."""
    return _main(cli, "git ksplice", argv)


def _main(command: click.Command, prog_name: str, argv: list[str] | None) -> int:
    """The only place that turns errors into exit codes."""
    from git_ksplice import ui

    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except KspliceError as e:
        ui.error(e.message, e.hint)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()  # `git ksplice` alone: the help is the message
        return e.exit_code
    except click.UsageError as e:
        _show_usage_error(e)
        return e.exit_code
    except click.ClickException as e:
        ui.error(e.format_message())
        return e.exit_code if e.exit_code != EXIT_ERROR else EXIT_BAD_USAGE
    except click.exceptions.Abort:
        ui.error("interrupted")
        return EXIT_INTERRUPTED
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
    except OSError as e:
        if e.errno not in _MACHINE_SAID_NO:
            return _internal_error()
        # The machine said no (a full disk, a read-only file system, a permission): a
        # message, not a traceback. The refs move last, in one transaction, so what a run
        # left is repaired by the next.
        where = f" ({e.filename})" if e.filename else ""
        ui.error(f"{e.strerror or e}{where}", hint="fix that and run the command again")
        return EXIT_ERROR
    except Exception as e:  # a bug: say so, and keep the evidence
        if type(e).__module__.startswith(("pygit2", "_pygit2")):
            # libgit2 refusing to write (a full disk, a read-only .git) is the machine's
            # answer, not a bug of ours.
            ui.error(f"git: {e}", hint="fix that and run the command again")
            return EXIT_ERROR
        return _internal_error()
    return EXIT_OK


#: What the machine, not the program, is to blame for: said as a message, not a traceback.
_MACHINE_SAID_NO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                    errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def _internal_error() -> int:
    """A bug: say so, and keep the evidence (called from an except block)."""
    import traceback

    from git_ksplice import ui

    ui.error("internal error in git-ksplice (this is a bug; please report it with the "
             "traceback below)")
    traceback.print_exc()
    return EXIT_ERROR


def _show_usage_error(e: click.UsageError) -> None:
    """Click's usage error in the tool's own style: the usage line and where help is, then
    `error: ...` on the same console as every other error (click would print `Error:`).
    The error comes last, where a terminal leaves the eye, as click has it. The pointer
    names `-h`: git turns `git ksplice --help` into `man git-ksplice`, which fails where the
    man page is not installed, while `-h` always reaches the tool's own help."""
    from git_ksplice import ui

    ctx = e.ctx
    if ctx is not None:
        ui.console.print(ctx.get_usage(), markup=False, highlight=False)
        if ctx.command.get_help_option(ctx) is not None:
            names = ctx.command.get_help_option_names(ctx)
            option = "-h" if "-h" in names else max(names, key=len)
            ui.console.print(f"Try '{ctx.command_path} {option}' for help.", markup=False,
                             highlight=False)
    ui.error(e.format_message())
