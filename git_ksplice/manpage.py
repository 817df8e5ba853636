"""The git-ksplice(1) man page, rendered from the click command tree.

Why generated: the commands, their options and their help are written once, in
git_ksplice/cli.py; a page written by hand would drift from them. What the command tree cannot
say (what the tool does, the configuration keys, the files it keeps, exit codes, the
environment) is written here, next to the renderer. The rendered page is checked in as
man/man1/git-ksplice.1 so that it can be installed and read without Python, and so that
`git help ksplice` finds it once man/ is on MANPATH; `--check` (run by
tests/workflow/test_manpage.py) fails when it is stale.

    python3 -m git_ksplice.manpage --write   # regenerate man/man1/git-ksplice.1
    python3 -m git_ksplice.manpage --check   # exit 1 if man/man1/git-ksplice.1 is stale
    python3 -m git_ksplice.manpage           # print the page

The output is deterministic: the date in the title line is `PAGE_DATE`, a fixed string, not
the clock's (a page that changed with every regeneration would always look stale).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import click

from git_ksplice import __version__, errors
from git_ksplice.completion import (
    Node,
    context_for,
    help_text,
    spellings,
    takes_value,
    walk,
)

#: Where the checked-in page lives (in a source checkout).
PAGE = Path(__file__).resolve().parents[1] / "man" / "man1" / "git-ksplice.1"

#: The date of the title line: when the hand-written text below was last revised. Kept fixed
#: so that rendering is reproducible; bump it when the prose changes.
PAGE_DATE = "2026-11-29"

#: The `ksplice.*` configuration keys, key -> meaning. Hand-maintained: a test checks that every
#: key the package reads appears here.
CONFIG_KEYS: dict[str, str] = {
    "ksplice.config":
        "ORIG_CONFIG, the directory describing the running kernel (its `.config` and "
        "`System.map`; optionally `flags`, `vmlinux`, `Module.symvers`), when `--config` is "
        "not given. A relative path is relative to the top of the working tree. Default: "
        "`ksplice/` at the top of the working tree (of the main working tree, from a linked "
        "one).",
    "ksplice.jobs":
        "Number of make jobs when neither `-j` nor CONCURRENCY_LEVEL is given. Default: the "
        "number of CPUs.",
    "ksplice.buildDir":
        "Where the build worktree, the cache of the pristine build and its state live. "
        "Default: `ksplice/build` in the common git directory. A kernel tree built at one "
        "path rebuilds everything at another: changing it means one full build.",
    "ksplice.buildMode":
        "`targeted` (the default) or `full`, as `--build-mode` gives them: the targeted mode "
        "only prepares the pristine tree and compiles the objects a change can affect; the "
        "full mode builds the whole pristine tree once and rebuilds incrementally. A tree "
        "that is not Linux is always built whole.",
    "ksplice.outputDir":
        "Where update tarballs are written when `-o` is not given. A relative path is "
        "relative to the top of the working tree. Default: `ksplice/updates` in the common "
        "git directory.",
    "ksplice.makeArgs":
        "Extra make arguments, split as a shell splits words, after those of ORIG_CONFIG's "
        "`flags` file: for example `CC=\"ccache gcc\"` or distcc settings.",
    "ksplice.makeTargets":
        "The make targets of both builds, split as a shell splits words, instead of the "
        "default (for Linux `vmlinux modules` for the pristine build and only compiling for "
        "the patched one; make's default target otherwise). Set, it selects the full build "
        "mode: the targeted mode compiles single objects with kbuild's own targets.",
    "ksplice.series":
        "Boolean: `create` stacks updates as with `--series` unless `--no-series` is given.",
    "ksplice.buildModules":
        "Boolean: `create` ships the patched modules' `.ko` files as with `--build-modules` "
        "unless `--no-build-modules` is given.",
    "ksplice.wait":
        "Boolean, default true: false makes `create` fail at once, as with `--no-wait`, when "
        "another `create` holds the repository's lock.",
    "ksplice.onlyTargets":
        "Multi-valued: the patterns of `--only-targets` when the option is not given.",
    "ksplice.extraMatch":
        "Multi-valued: the patterns of `--extra-match` when the option is not given.",
    "ksplice.excludeMatch":
        "Multi-valued: the patterns of `--exclude-match` when the option is not given.",
    "ksplice.patchOpt":
        "Multi-valued: the options for patch(1) of `--patch-opt` when that option is not "
        "given.",
    "ksplice.signKey":
        "The private key the livepatch module is signed with when `--sign-key` is not "
        "given (with `ksplice.signCert`), by the kernel's `scripts/sign-file` and the hash "
        "of `CONFIG_MODULE_SIG_HASH`. Without them the module is unsigned: a kernel that "
        "enforces signatures (`module.sig_enforce`, Secure Boot lockdown) refuses it.",
    "ksplice.signCert":
        "The X.509 certificate of `ksplice.signKey`; the running kernel must trust it (its "
        "built-in keys, or a key enrolled in MOK) for the signature to count.",
    "ksplice.kernel":
        "The running kernel's image that `try` boots when `--kernel` is not given (without "
        "it: ORIG_CONFIG's `vmlinuz`, which `import-kernel` copies).",
    "ksplice.watch":
        "Multi-valued: the branches the hook watches (`git ksplice hook install -b` sets "
        "them; `git config --add ksplice.watch BRANCH` adds one). Each value is a full ref "
        "(`refs/...`), a remote-tracking branch (`REMOTE/BRANCH`) or a local branch. Every "
        "commit that lands on one of them is queued for an update.",
    "ksplice.hookLimit":
        "At most this many commits arriving on a watched branch at once are built one by "
        "one; beyond it only the last is built (its update holds all of their changes). "
        "0: no limit. Default: 32.",
    "ksplice.hookSeries":
        "Boolean: the hook builds its updates with `--series`, each on top of the previous "
        "one (`git ksplice hook install --series` sets it).",
}

DESCRIPTION = [
    "git ksplice turns a change to a Linux kernel's source, kept in git, into a rebootless "
    "update of the running kernel, the way Ksplice's ksplice-create did: it builds the kernel "
    "before and after the change, compares the compiled objects function by function, "
    "extracts the changed code and packages a livepatch module as "
    "`ksplice-<ID>.tar.gz`.",
    "The kernel is built in git-ksplice's own worktree under the common git directory "
    "(`ksplice/build`), never in yours: your HEAD, index and files are left alone. By "
    "default (the targeted mode) the pristine tree of the running kernel's source is only "
    "prepared (`make modules_prepare`), and each update compiles the objects its change can "
    "affect (the objects of changed sources, the units that can include a changed header, "
    "the objects under a changed Makefile) before and after the change; a change only a "
    "full build can follow (a Kconfig file, the top Makefile, scripts) falls back to it, "
    "saying why. In the full mode (`--build-mode=full`) the pristine build is made once and "
    "kept warm, and each update is an incremental build of the changed commit in the same "
    "tree, which is then reverted. Objects whose bytes changed are compared function by "
    "function and mapped to their target, vmlinux or a module. For a Linux tree the update "
    "carries one livepatch module, `ksplice_<ID>.ko`, checked against the running kernel's "
    "`vermagic` and symbol CRCs before it is packaged.",
    "The state is kept in git, under `refs/ksplice/`:",
]

#: refs/ksplice/* -> meaning (DESCRIPTION).
REFS: dict[str, str] = {
    "refs/ksplice/pre": "The source of the running kernel; created from HEAD on first use.",
    "refs/ksplice/updates/<ID>": "The commit update <ID> was built from.",
    "refs/ksplice/series": "The ledger: one commit per update (its manifest, patch and "
                           "description); `git log refs/ksplice/series` is the history.",
    "refs/ksplice/tmp/<ID>": "The temporary commit of a `--patch` or `--diffext` run, while "
                             "it builds.",
}

REFS_AFTER = (
    "Every ref moves as a compare-and-swap with a reflog entry, the refs of one update in a "
    "single transaction; share them with `git push` and `git fetch` of `refs/ksplice/*`.")

#: Paths under the common git directory's ksplice/ (FILES).
FILES: dict[str, str] = {
    "build/targeted/tree/": "The targeted mode's build worktree, prepared (make "
                            "modules_prepare) at refs/ksplice/pre.",
    "build/targeted/objects/": "Objects compiled at refs/ksplice/pre, with their `.cmd` "
                               "records, kept for the next update; `targets.json` is what the "
                               "configuration builds, `state.json` the tree's phase.",
    "build/tree/": "The full-tree mode's build worktree (a locked git worktree), at "
                   "refs/ksplice/pre when no build runs.",
    "build/pristine/": "A copy of every product of the pristine build, restored after each "
                       "patched build.",
    "build/state.json": "The build tree's phase; a run killed mid-build leaves it so that "
                        "the next run reverts the tree first.",
    "updates/": "The update tarballs, `ksplice-<ID>.tar.gz` (unless `-o` or ksplice.outputDir "
                "says otherwise).",
    "logs/": "Build logs: `prepare.log`, `prebuild.log`, `<ID>.log`; `logs/hook/` holds the "
             "hook's job logs and `worker.log`.",
    "modules/<ID>/": "Where the livepatch module of update <ID> is built.",
    "hook/": "The hook's queue: `jobs/` (one JSON file per queued commit, in the order the "
             "commits landed), `tips.json` (the watched refs as last seen) and the queue's "
             "and worker's locks.",
    "lock": "Serialises `create` runs on the repository.",
}

ENVIRONMENT: dict[str, str] = {
    "CONCURRENCY_LEVEL": "Number of make jobs when `-j` is not given (before ksplice.jobs), as "
                         "for Ksplice and Debian's kernel builds.",
    "SOURCE_DATE_EPOCH": "The timestamp recorded in an update tarball. With it and `--id` "
                         "fixed, the same change gives a byte-for-byte identical tarball.",
    "GIT_DIR, GIT_WORK_TREE": "As for any git command: which repository and working tree "
                              "git-ksplice works on (and the other GIT_* variables git "
                              "honours, through git itself).",
}

SEE_ALSO = ["git(1)", "git-config(1)", "git-worktree(1)", "githooks(5)", "patch(1)", "make(1)"]


# -- roff ----------------------------------------------------------------------------------


def esc(text: str) -> str:
    """Text that roff prints as it is (see `_chars`); a `.` or `'` that would start a line,
    and so make it a request, is protected with `\\&`."""
    return _protect_lines(_chars(text))


def _chars(text: str) -> str:
    """Backslashes become `\\e`; hyphens `\\-` (the ASCII hyphen-minus, so that options can
    be searched for and copied from the rendered page); long words with slashes (paths) get
    break points after the slashes, so that a narrow terminal does not overflow; characters
    beyond ASCII become `\\[uXXXX]`, so that the page needs no encoding."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"\S{30,}", lambda m: m.group(0).replace("/", "/\\:"), text)
    text = text.replace("-", "\\-")
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


def _protect_lines(text: str) -> str:
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def inline(text: str) -> str:
    """Prose with `code` spans in bold, on one line (roff fills it)."""
    parts = re.split(r"`([^`]+)`", " ".join(text.split()))
    return _protect_lines("".join(f"\\fB{_chars(part)}\\fR" if i % 2 else _chars(part)
                                  for i, part in enumerate(parts)))


def bold(text: str) -> str:
    return f"\\fB{_chars(text)}\\fR"


def usage(words: str) -> str:
    """A usage string: metavars in italics, literal words (options, choices) in bold,
    brackets and braces roman."""
    out = []
    for token in re.split(r"([A-Za-z0-9_][\w.-]*|-[\w-]+)", words):
        if not token:
            continue
        if re.fullmatch(r"[A-Z][A-Z0-9_=-]*", token):
            out.append(f"\\fI{_chars(token)}\\fR")
        elif re.match(r"[\w-]", token):
            out.append(bold(token))
        else:
            out.append(_chars(token))
    return _protect_lines("".join(out))


def paragraphs(text: str) -> list[str]:
    """Roff for click help: paragraphs separated by blank lines are filled; one that starts
    with click's `\\b` marker is kept as it is written."""
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        if not para.strip():
            continue
        if para.startswith("\b"):
            body = "\n".join(esc(line) for line in para[1:].strip("\n").split("\n"))
            out.append(f".PP\n.nf\n{body}\n.fi")
        else:
            out.append(f".PP\n{inline(para)}")
    return out


# -- the command tree --------------------------------------------------------------------


def command_name(node: Node, prog: str = "git ksplice") -> str:
    return " ".join((prog, *node.path))


def usage_line(node: Node, prog: str = "git ksplice") -> str:
    pieces = node.command.collect_usage_pieces(node.ctx)
    return bold(command_name(node, prog)) + (" " + usage(" ".join(pieces)) if pieces else "")


def option_entry(param: click.Option, ctx: click.Context) -> str:
    """One option as a .TP entry: every spelling, the metavar, the help."""
    names = ", ".join(bold(n) for n in spellings(param))  # -j, --jobs: as git's pages do
    if takes_value(param):
        names += " " + usage(param.metavar or param.make_metavar(ctx))
    help_ = " ".join((param.help or "").split())
    extra = []
    if param.required:
        extra.append("Required.")
    if (param.show_default and takes_value(param) and param.default is not None
            and not callable(param.default)):
        extra.append(f"Default: `{param.default}`.")
    if param.multiple and "repeatable" not in help_.lower():
        extra.append("Repeatable.")
    text = " ".join([help_, *extra]).strip()
    return f".TP\n{names}\n{inline(text)}" if text else f".TP\n{names}"


def options_of(node: Node) -> list[click.Option]:
    return [p for p in node.params() if isinstance(p, click.Option)]


def command_section(node: Node, prog: str = "git ksplice") -> str:
    """A subcommand: its usage, its help, its options."""
    out = [f".SS {esc(command_name(node, prog))}", ".PP", usage_line(node, prog)]
    out += paragraphs(help_text(node.command))
    if node.is_group:
        subs = ", ".join(bold(command_name(node, prog) + " " + s) for s in node.subcommands())
        out += [".PP", f"Its commands: {subs}."]
    out += [option_entry(p, node.ctx) for p in options_of(node)]
    return "\n".join(out)


def _ksplice_create_section(root: Node) -> tuple[str, str]:
    """(SYNOPSIS line, COMMANDS section) of the `ksplice-create` drop-in script. Its options
    are git ksplice create's: only those create does not have are listed."""
    from git_ksplice.cli import ksplice_create_cmd

    node = Node((), ksplice_create_cmd, context_for(ksplice_create_cmd, "ksplice-create"))
    # Ksplice's synopsis is the command's usage (its options_metavar), as --help prints it.
    synopsis = bold("ksplice-create") + " " + usage(
        " ".join(ksplice_create_cmd.collect_usage_pieces(node.ctx)))
    rest = help_text(ksplice_create_cmd)
    create = next((n for n in walk(root.command) if n.path == ("create",)), None)
    known = {o for p in options_of(create) for o in spellings(p)} if create else set()
    own = [p for p in options_of(node) if set(spellings(p)) - known]
    out = [".SS ksplice\\-create", ".PP", synopsis, *paragraphs(rest)]
    if create:
        out += [".PP", inline("It takes the options of `git ksplice create` (above) and writes "
                              "the tarball to the current directory unless `-o` is given.")]
    out += [option_entry(p, node.ctx) for p in own]
    return synopsis, "\n".join(out)


def _table(entries: dict[str, str], *, code_keys: bool = True) -> list[str]:
    out = []
    for key, meaning in entries.items():
        out += [".TP", bold(key) if code_keys else esc(key), inline(meaning)]
    return out


def render() -> str:
    """The whole page."""
    from git_ksplice.cli import cli

    nodes = list(walk(cli))
    root, subs = nodes[0], [n for n in nodes[1:] if not n.is_group]
    ksc_synopsis, ksc_section = _ksplice_create_section(root)
    name, _, _ = help_text(cli).partition("\n")
    name = name.rstrip(".")
    name = name[:1].lower() + name[1:]

    out = [
        '.\\" git-ksplice(1): generated from the click command tree by',
        '.\\" `python3 -m git_ksplice.manpage --write`; do not edit by hand.',
        f'.TH GIT\\-KSPLICE 1 "{esc(PAGE_DATE)}" "git\\-ksplice {esc(__version__)}" '
        '"git\\-ksplice Manual"',
        # Ragged right: justified text with long option names leaves wide gaps.
        ".ad l",
        ".SH NAME",
        f"git\\-ksplice \\- {esc(name)}",
        ".SH SYNOPSIS",
        # One entry per command, its continuation lines indented (a hanging indent made by
        # hand: .HP is deprecated), not hyphenated.
        ".nh",
        ".in +4n",
        "\n.br\n".join(".ti -4n\n" + line for line in [
            usage_line(root), *[usage_line(n) for n in subs], ksc_synopsis]),
        ".in",
        ".hy",
        ".SH DESCRIPTION",
    ]
    for para in DESCRIPTION:
        out += [".PP", inline(para)]
    out += _table(REFS)
    out += [".PP", inline(REFS_AFTER)]
    out += [".SH OPTIONS", ".PP",
            inline("Options of git ksplice itself, given before the command:")]
    out += [option_entry(p, root.ctx) for p in options_of(root)]
    out += [".SH COMMANDS"]
    out += [command_section(n) for n in nodes[1:]]
    out += [ksc_section]
    out += [".SH CONFIGURATION", ".PP", inline(
        "git-ksplice reads these settings through `git config`, so they come from the "
        "repository's, the user's or the system's configuration like any git setting, and "
        "`git -c` overrides them for one run: `git -c ksplice.jobs=4 ksplice create`. Command "
        "line options take precedence.")]
    out += _table(CONFIG_KEYS)
    out += [".SH FILES", ".PP", inline(
        "git-ksplice keeps its state in `ksplice/` in the common git directory (`.git/ksplice/` "
        "in a non-bare repository; the one directory that all worktrees share):")]
    out += _table({f"ksplice/{k}": v for k, v in FILES.items()})
    out += [".PP", inline(
        "`ksplice/` at the top of the working tree is the default ORIG_CONFIG: the running "
        "kernel's `.config` and `System.map`, and optionally `flags` (extra kbuild "
        "arguments), `vmlinux`, `vmlinuz`, `Module.symvers`, `modules/` (its shipped "
        "modules) and `kernel.json` (what `import-kernel` read: release, banner, compiler, "
        "vermagic, where each file came from). `git ksplice import-kernel` fills it from a "
        "distribution's kernel. The build is pinned to the running kernel's release (from "
        "`kernel.json`, else the banner of `vmlinux` or `vmlinuz`) and its compiler "
        "(`CONFIG_CC_VERSION_TEXT`), and `make olddefconfig` must change nothing.")]
    out += [".SH EXIT STATUS"]
    out += _table({
        str(errors.EXIT_OK): "Success: for `create`, an update was written.",
        str(errors.EXIT_ERROR): "An error; the message names the problem and the way out.",
        str(click.UsageError.exit_code): "A usage error: an unknown option, a missing or "
                                         "extra argument.",
        str(errors.EXIT_REFUSED): "The change cannot be applied to a running kernel; each "
                                  "refusal names the symbol, the section and the reason.",
        str(errors.EXIT_NO_CHANGE): "No changes detected: the change alters no compiled code.",
        "130": "Interrupted.",
    }, code_keys=False)
    out += [".SH ENVIRONMENT"]
    out += _table(ENVIRONMENT)
    out += [".SH SEE ALSO", ", ".join(
        f"\\fB{esc(page.split('(')[0])}\\fR({page.split('(')[1]}" for page in SEE_ALSO) + ",",
        inline("and the kernel's `Documentation/livepatch/livepatch.rst`.")]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m git_ksplice.manpage",
                                     description="Render the git-ksplice(1) man page.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"rewrite {PAGE}")
    action.add_argument("--check", action="store_true",
                        help=f"exit 1 if {PAGE} is not what --write would write")
    parser.add_argument("--file", type=Path, default=PAGE, help="the page (default: %(default)s)")
    args = parser.parse_args(argv)
    page = render()
    if args.write:
        args.file.parent.mkdir(parents=True, exist_ok=True)
        args.file.write_text(page)
        return 0
    if args.check:
        current = args.file.read_text() if args.file.exists() else None
        if current != page:
            print(f"{args.file} is stale: run `python3 -m git_ksplice.manpage --write`",
                  file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
