"""Command-line wiring: click commands, option parsing, exit codes. No logic lives here."""

from __future__ import annotations

import sys

import click

from git_ksplice import __version__
from git_ksplice.errors import EXIT_ERROR, KspliceError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="git-ksplice")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of `git-ksplice`: the only place that turns errors into exit codes."""
    from git_ksplice import ui

    try:
        cli.main(args=argv, prog_name="git ksplice", standalone_mode=False)
    except KspliceError as e:
        ui.error(e.message, e.hint)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code if e.exit_code != 1 else 129
    except click.exceptions.Abort:
        ui.error("interrupted")
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
    return 0
