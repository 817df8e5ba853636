"""Static shell completion scripts for bash and zsh, generated from the click command tree.

Why static: click's own completion runs the program on every TAB press, and starting Python
(and importing click) costs a noticeable fraction of a second. The command tree changes only
with a new version of git-ksplice, so `git ksplice completion bash|zsh` writes it out once as
plain shell: subcommands, options, and what each option or argument takes (files,
directories, git refs, a fixed set of words, update ids).

What a value is, is inferred from click: a `click.Choice` gives its words, a `click.Path` files
or directories, and otherwise the metavar names it (COMMIT is a git ref, DIR a directory,
FILE a file). `_OVERRIDES` holds the few places where that guess would be wrong.

The walk over the command tree (`walk()`) is also what the man page (`git_ksplice.manpage`)
renders, so the two cannot disagree about which commands exist.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass

import click

# -- the command tree ----------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One command of the tree: `path` is the words after the program name (() for the top
    group, ("hook", "install") for a nested one)."""

    path: tuple[str, ...]
    command: click.Command
    ctx: click.Context

    @property
    def is_group(self) -> bool:
        return isinstance(self.command, click.Group)

    def subcommands(self) -> list[str]:
        """Visible subcommands, in click's listing order (sorted by name)."""
        if not isinstance(self.command, click.Group):
            return []
        out = []
        for name in self.command.list_commands(self.ctx):
            sub = self.command.get_command(self.ctx, name)
            if sub is not None and not sub.hidden:
                out.append(name)
        return out

    def params(self) -> list[click.Parameter]:
        """Arguments and visible options, the help option last. That one is made here from
        this context's help option names (the group's `-h`, `--help`) rather than taken from
        `get_params()`: click makes it once per command and caches it, with the names of
        whichever context asked first."""
        out = [p for p in self.command.params if not getattr(p, "hidden", False)]
        names = self.command.get_help_option_names(self.ctx)
        if names and self.command.add_help_option:
            out.append(click.Option(sorted(names), is_flag=True, expose_value=False,
                                    help="Show this message and exit."))
        return out


def context_for(command: click.Command, name: str,
                parent: click.Context | None = None) -> click.Context:
    """A context as click makes one when it runs `command`, without parsing anything: the
    command's context_settings apply and the parent's are inherited (help option names)."""
    return click.Context(command, info_name=name, parent=parent, **command.context_settings)


def walk(group: click.Command, prog_name: str = "git ksplice") -> Iterator[Node]:
    """Every visible command of the tree, depth first, the top group first. Hidden commands
    (and everything under them) are left out."""
    def visit(node: Node) -> Iterator[Node]:
        yield node
        if isinstance(node.command, click.Group):
            for name in node.subcommands():
                sub = node.command.get_command(node.ctx, name)
                assert sub is not None
                yield from visit(Node((*node.path, name), sub, context_for(sub, name,
                                                                             node.ctx)))

    yield from visit(Node((), group, context_for(group, prog_name)))


def help_text(command: click.Command) -> str:
    """A command's help as written in its docstring, dedented, without what follows `\\f`
    (click's marker for text meant for developers only)."""
    text = inspect.cleandoc(command.help or "")
    return text.split("\f", 1)[0].strip()


def short_help(command: click.Command) -> str:
    """One line: the command's short_help, else the first sentence of its help."""
    if command.short_help:
        return command.short_help
    first = help_text(command).split("\n\n", 1)[0]
    first = " ".join(first.split())
    m = re.match(r"(.+?\.)(\s|$)", first)
    return m.group(1) if m else first


def option_help(param: click.Parameter) -> str:
    return " ".join(inspect.cleandoc(getattr(param, "help", None) or "").split())


# -- what a value is -----------------------------------------------------------------------

#: Metavars (or argument names) that say what a value is, when the type does not.
_REF_WORDS = {"COMMIT", "REV", "REVISION", "REF", "BRANCH", "COMMIT-ISH", "TREE-ISH"}
_FILE_WORDS = {"FILE", "PATH", "TARBALL", "SCRIPT", "KO", "BZIMAGE", "KERNEL", "PATCH"}
_DIR_WORDS = {"DIR", "DIRECTORY", "ORIG_CONFIG", "KERNEL_SOURCE"}

#: (command path, parameter name) -> kind, where the type and metavar would mislead: `view
#: --id` names an update already built (its ref is refs/ksplice/updates/<ID>), while `create
#: --id` names a new one, so only the former completes ids.
_OVERRIDES: dict[tuple[str, str], str] = {
    ("view", "update_id"): "id",
}


@dataclass(frozen=True)
class Value:
    """What an option's or argument's value is: `kind` is one of file, dir, ref, id, choice
    (then `choices`), or none (nothing sensible to offer)."""

    kind: str
    choices: tuple[str, ...] = ()


def value_of(node: Node, param: click.Parameter) -> Value:
    override = _OVERRIDES.get((" ".join(node.path), param.name or ""))
    if override:
        return Value(override)
    t = param.type
    if isinstance(t, click.Choice):
        return Value("choice", tuple(str(c) for c in t.choices))
    if isinstance(t, click.Path):
        if t.dir_okay and not t.file_okay:
            return Value("dir")
        return Value("file")
    word = label(param).upper()
    if word in _REF_WORDS:
        return Value("ref")
    if word in _FILE_WORDS:
        return Value("file")
    if word in _DIR_WORDS:
        return Value("dir")
    return Value("none")


def label(param: click.Parameter) -> str:
    """What a value is called: the metavar (or the argument's name) without the brackets and
    dots of usage, `[ID]...` -> ID."""
    m = re.search(r"[A-Za-z_][\w-]*", param.metavar or (param.name or "value").upper())
    return m.group(0) if m else "VALUE"


def spellings(param: click.Parameter) -> list[str]:
    """An option's names, short ones first, then the secondary (--no-...) ones. Sorted: click
    builds the help option's names from a set, so their order changes from run to run."""
    return (sorted(param.opts, key=lambda n: (n.startswith("--"), n))
            + sorted(getattr(param, "secondary_opts", [])))


def takes_value(param: click.Parameter) -> bool:
    """An option followed by a value (not a flag, not a counter)."""
    return isinstance(param, click.Option) and not param.is_flag and not param.count


@dataclass(frozen=True)
class Spec:
    """A command as completion sees it."""

    node: Node
    subcommands: list[str]
    flags: list[str]          # options without a value, every spelling (--series, --no-series)
    valued: list[click.Option]
    arguments: list[click.Argument]

    @property
    def path(self) -> str:
        return " ".join(self.node.path)


def spec_of(node: Node) -> Spec:
    flags: list[str] = []
    valued: list[click.Option] = []
    arguments: list[click.Argument] = []
    for p in node.params():
        if isinstance(p, click.Argument):
            arguments.append(p)
        elif isinstance(p, click.Option):
            if takes_value(p):
                valued.append(p)
            else:
                flags.extend(spellings(p))
    return Spec(node, node.subcommands(), flags, valued, arguments)


def script(shell: str, group: click.Group) -> str:
    """The completion script for `shell` (bash or zsh) of the commands under `group`."""
    specs = [spec_of(n) for n in walk(group)]
    if shell == "bash":
        return _bash(specs)
    if shell == "zsh":
        return _zsh(specs)
    raise ValueError(f"no completion for shell {shell!r} (bash and zsh are supported)")


def _sq(s: str) -> str:
    """A single-quoted shell word (the same in bash and zsh)."""
    return "'" + s.replace("'", "'\\''") + "'"


# -- bash ----------------------------------------------------------------------------------

# Helpers that do not depend on the command tree. `__git_ksplice_mode` is `git` when git's
# completion called us (`git ksplice ...`: reply through its __gitcomp helpers, which add the
# trailing space its `-o nospace` registration leaves out), `plain` for `git-ksplice ...`.
_BASH_HEAD = r"""# bash completion for git-ksplice.
#
# Generated from git-ksplice's command tree by `git ksplice completion bash`; regenerate it
# after upgrading git-ksplice. Install it as
#   ~/.local/share/bash-completion/completions/git-ksplice
# (bash-completion loads it on demand, and git's own completion then finds _git_ksplice for
# `git ksplice ...`), or source it from ~/.bashrc after git's completion.
# Nothing here starts Python: the lists below are plain shell.

# Is $1 one of the remaining arguments?
__git_ksplice_in () {
	local x=$1 y
	shift
	for y in "$@"; do
		[[ $y == "$x" ]] && return 0
	done
	return 1
}

# Reply with the words of $1 (space-separated) that start with $2.
__git_ksplice_words () {
	if [[ $__git_ksplice_mode == git ]]; then
		__gitcomp "$1" "" "$2"
		return
	fi
	local IFS=$' \t\n'
	COMPREPLY=($(compgen -W "$1" -- "$2"))
	# "--patch=" wants its value right after the "=".
	if [[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *= ]]; then
		compopt -o nospace 2>/dev/null
	fi
}

# Reply with the lines of $1 that start with $2 (git refs, update ids).
__git_ksplice_lines () {
	if [[ $__git_ksplice_mode == git ]]; then
		__gitcomp_nl "$1" "" "$2"
		return
	fi
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$1" -- "$2"))
}

# Files (-f) or directories (-d) starting with $2.
__git_ksplice_paths () {
	compopt -o filenames 2>/dev/null
	# git registers with -o nospace; a file name wants its space (directories get a "/").
	[[ $__git_ksplice_mode == git ]] && compopt +o nospace 2>/dev/null
	local IFS=$'\n'
	COMPREPLY=($(compgen "$1" -- "$2"))
}

# Run git quietly; through git's completion's __git when it called us, which passes on the
# `git -C DIR` or `--git-dir` of the command line being completed.
__git_ksplice_git () {
	if [[ $__git_ksplice_mode == git ]] && declare -F __git >/dev/null; then
		__git "$@"
	else
		git "$@" 2>/dev/null
	fi
}

# Git refs starting with $1: through git's own helper when git's completion called us, else
# branches, tags and remote-tracking branches from `git for-each-ref`.
__git_ksplice_refs () {
	if [[ $__git_ksplice_mode == git ]] && declare -F __git_complete_refs >/dev/null; then
		__git_complete_refs --cur="$1"
		return
	fi
	__git_ksplice_lines "HEAD
$(__git_ksplice_git for-each-ref --format='%(refname:short)' refs/heads refs/tags \
	refs/remotes)" "$1"
}

# Ids of the updates built so far (refs/ksplice/updates/<ID>) starting with $1.
__git_ksplice_ids () {
	__git_ksplice_lines "$(__git_ksplice_git for-each-ref --format='%(refname:lstrip=3)' \
	refs/ksplice/updates/)" "$1"
}

# Complete the last of the given words, which follow the program name (`git-ksplice` or
# `git ksplice`): find the command they name, then whether the last one is an option, the
# value of an option, a subcommand or an argument.
__git_ksplice_complete () {
	local -a w=("$@")
	local n=${#w[@]}
	local cur=${w[n-1]}
	local path='' subs flags valued nargs variadic
	local i word expect='' dashdash='' npos=0
	__git_ksplice_spec ''
	for ((i = 0; i < n - 1; i++)); do
		word=${w[i]}
		if [[ -n $expect ]]; then
			expect=''
		elif [[ -z $dashdash && $word == -- ]]; then
			dashdash=1
		elif [[ -z $dashdash && $word == -?* ]]; then
			# An option; "--opt=value" carries its value, "--opt value" is followed by it.
			if [[ $word != *=* ]] && __git_ksplice_in "$word" $valued; then
				expect=$word
			fi
		elif [[ -n $subs ]] && __git_ksplice_in "$word" $subs; then
			path=${path:+$path }$word
			__git_ksplice_spec "$path"
			npos=0
		else
			((npos++))
		fi
	done
	if [[ -n $expect ]]; then
		__git_ksplice_value "$path" "$expect" "$cur"
		return
	fi
	if [[ -z $dashdash ]]; then
		case $cur in
		--*=*)
			__git_ksplice_value "$path" "${cur%%=*}" "${cur#*=}"
			return
			;;
		-*)
			local opts="$flags" o
			for o in $valued; do
				[[ $o == --* ]] && o="$o="
				opts="$opts $o"
			done
			__git_ksplice_words "$opts" "$cur"
			return
			;;
		esac
	fi
	if [[ -n $subs ]]; then
		__git_ksplice_words "$subs" "$cur"
		return
	fi
	if ((npos < nargs)); then
		__git_ksplice_value "$path" "#$npos" "$cur"
	elif [[ -n $variadic ]] && ((nargs > 0)); then
		__git_ksplice_value "$path" "#$((nargs - 1))" "$cur"
	fi
}
"""

_BASH_TAIL = r"""
# `git ksplice ...`: git's completion (__git_main) calls _git_<command> with $words, $cword
# and $cur set, `=` kept inside words; __git_cmd_idx (git >= 2.30) is where "ksplice" is.
_git_ksplice () {
	local __git_ksplice_mode=git
	local i=${__git_cmd_idx-}
	if [[ -z $i ]]; then
		for ((i = 1; i < cword; i++)); do
			[[ ${words[i]} == ksplice ]] && break
		done
	fi
	__git_ksplice_complete "${words[@]:i+1:cword-i-1}" "$cur"
}

# `git-ksplice ...`: needs nothing of git's completion. Bash splits "--opt=value" at the "="
# (COMP_WORDBREAKS) into three words; they are joined back so both forms look alike.
_git_ksplice_dashed () {
	local __git_ksplice_mode=plain
	local -a w=()
	local j word joined=''
	for ((j = 1; j <= COMP_CWORD; j++)); do
		word=${COMP_WORDS[j]}
		local last=$((${#w[@]} - 1))
		if [[ $word == = && $last -ge 0 && ${w[last]} == --* && ${w[last]} != *=* ]]; then
			w[last]+="="
			joined=1
		elif [[ -n $joined ]]; then
			w[last]+=$word
			joined=''
		else
			w+=("$word")
		fi
	done
	# The word under the cursor may be the "=" itself: complete an empty value.
	[[ ${#w[@]} == 0 ]] && w=('')
	__git_ksplice_complete "${w[@]}"
}

complete -o bashdefault -o default -F _git_ksplice_dashed git-ksplice
"""


def _bash_words(words: list[str]) -> str:
    return _sq(" ".join(words))


def _bash(specs: list[Spec]) -> str:
    spec_arms = []
    value_arms = []
    for s in specs:
        valued_names = [n for o in s.valued for n in spellings(o)]
        variadic = any(a.nargs == -1 for a in s.arguments)
        spec_arms.append(
            f"\t{_sq(s.path)})\n"
            f"\t\tsubs={_bash_words(s.subcommands)}\n"
            f"\t\tflags={_bash_words(s.flags)}\n"
            f"\t\tvalued={_bash_words(valued_names)}\n"
            f"\t\tnargs={len(s.arguments)} variadic={'1' if variadic else ''}\n"
            "\t\t;;")
        slots: list[tuple[list[str], Value]] = [
            ([f"{s.path}|{n}" for n in spellings(o)], value_of(s.node, o))
            for o in s.valued]
        slots += [([f"{s.path}|#{i}"], value_of(s.node, a))
                  for i, a in enumerate(s.arguments)]
        for keys, value in slots:
            action = _bash_action(value)
            if action:
                value_arms.append(f"\t{'|'.join(_sq(k) for k in keys)})\n\t\t{action} ;;")
    return (_BASH_HEAD
            + "\n# What a command takes: its subcommands, options and number of arguments.\n"
            "__git_ksplice_spec () {\n\tcase $1 in\n" + "\n".join(spec_arms)
            + "\n\tesac\n}\n"
            + "\n# Complete $3, the value of option $2 (or argument #N) of command $1.\n"
            "__git_ksplice_value () {\n\tcase \"$1|$2\" in\n" + "\n".join(value_arms)
            + "\n\t*)\n\t\tCOMPREPLY=() ;;\n\tesac\n}\n"
            + _BASH_TAIL)


def _bash_action(value: Value) -> str | None:
    return {
        "file": '__git_ksplice_paths -f "$3"',
        "dir": '__git_ksplice_paths -d "$3"',
        "ref": '__git_ksplice_refs "$3"',
        "id": '__git_ksplice_ids "$3"',
        "choice": f'__git_ksplice_words {_bash_words(list(value.choices))} "$3"',
    }.get(value.kind)


# -- zsh -----------------------------------------------------------------------------------

_ZSH_HEAD = r"""#compdef git-ksplice
# zsh completion for git-ksplice.
#
# Generated from git-ksplice's command tree by `git ksplice completion zsh`; regenerate it
# after upgrading git-ksplice. Install it as a file named _git-ksplice in a directory of
# $fpath (before compinit runs). It completes `git-ksplice ...`, and zsh's own _git
# completes `git ksplice ...` through _git-ksplice too. Nothing here starts Python.

__git-ksplice_refs () {
  local -a refs expl
  # _call_program evals its words: the format is quoted for that.
  refs=(HEAD ${(f)"$(_call_program refs 'git for-each-ref --format="%(refname:short)"' \
    refs/heads refs/tags refs/remotes 2>/dev/null)"})
  _wanted refs expl 'commit' compadd -a refs
}

__git-ksplice_ids () {
  local -a ids expl
  ids=(${(f)"$(_call_program ids 'git for-each-ref --format="%(refname:lstrip=3)"' \
    refs/ksplice/updates/ 2>/dev/null)"})
  _wanted ids expl 'update id' compadd -a ids
}
"""

_ZSH_TAIL = r"""
# Autoloaded from $fpath, this file is the body of _git-ksplice: it defines the functions
# above (the real _git-ksplice among them) on first use, then completes. Sourced, it
# registers itself.
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
  _git-ksplice "$@"
elif (( $+functions[compdef] )); then
  compdef _git-ksplice git-ksplice
fi
"""


def _zsh_function(spec: Spec) -> str:
    return "_git-ksplice" if not spec.node.path else "__git-ksplice_" + "_".join(
        re.sub(r"[^A-Za-z0-9_-]", "_", p) for p in spec.node.path)


def _zsh_text(s: str, *, limit: int = 0) -> str:
    """Help as _arguments shows it: one line, no backticks, brackets and colons escaped."""
    s = " ".join(s.replace("`", "").split())
    if limit and len(s) > limit:
        m = re.match(r"(.+?\.)(\s|$)", s)
        s = m.group(1) if m and len(m.group(1)) <= limit else s
    return re.sub(r"([\\\[\]:])", r"\\\1", s)


def _zsh_action(value: Value) -> str:
    if value.kind == "choice":
        return "(" + " ".join(re.sub(r"([\\\s():'\"])", r"\\\1", c) for c in value.choices) + ")"
    return {"file": "_files", "dir": "_files -/", "ref": "__git-ksplice_refs",
            "id": "__git-ksplice_ids"}.get(value.kind, " ")


def _zsh_option_specs(spec: Spec) -> list[str]:
    out = []
    for p in spec.node.params():
        if not isinstance(p, click.Option):
            continue
        names = spellings(p)
        desc = _zsh_text(option_help(p), limit=90)
        if p.is_eager and p.is_flag:
            exclusion = "(- *)"  # --help, --version: nothing else matters after them
        elif p.multiple or p.count:
            exclusion = "*"
        else:
            exclusion = "(" + " ".join(names) + ")"
        if takes_value(p):
            metavar = (p.metavar or p.make_metavar(spec.node.ctx)).replace(":", "\\:")
            suffix = f":{metavar}:{_zsh_action(value_of(spec.node, p))}"
            forms = [n + ("=" if n.startswith("--") else "+") for n in names]
        else:
            suffix = ""
            forms = names
        for form in forms:
            out.append(_sq(f"{exclusion}{form}[{desc}]{suffix}"))
    return out


def _zsh_argument_specs(spec: Spec) -> list[str]:
    out = []
    for a in spec.arguments:
        message = label(a)
        action = _zsh_action(value_of(spec.node, a))
        if a.nargs == -1:
            out.append(_sq(f"*:{message}:{action}"))
        else:
            out.extend([_sq(f"{':' if a.required else '::'}{message}:{action}")] * a.nargs)
    return out


def _zsh_command(spec: Spec, children: list[Spec]) -> str:
    name = _zsh_function(spec)
    lines = [f"{name} () {{"]
    args = _zsh_option_specs(spec)
    if spec.subcommands:
        lines += ["  local curcontext=$curcontext state state_descr line ret=1",
                  "  typeset -A opt_args"]
        args += ["': :->command'", "'*:: :->argument'"]
        lines.append("  _arguments -C -s -S \\\n    " + " \\\n    ".join(args)
                     + " && ret=0")
        described = [_sq(f"{c.node.path[-1]}:{_zsh_text(short_help(c.node.command))}")
                     for c in children]
        title = " ".join(("git ksplice", *spec.node.path, "command"))
        arms = [f"        {_sq(c.node.path[-1])}) {_zsh_function(c)} && ret=0 ;;"
                for c in children]
        lines += [
            "  case $state in",
            "    command)",
            "      local -a commands=(\n        " + "\n        ".join(described) + "\n      )",
            f"      _describe -t commands {_sq(title)} commands && ret=0",
            "      ;;",
            "    argument)",
            "      curcontext=${curcontext%:*:*}:git-ksplice-$words[1]:",
            "      case $words[1] in",
            *arms,
            "        *) _message \"unknown command: $words[1]\" ;;",
            "      esac",
            "      ;;",
            "  esac",
            "  return ret",
        ]
    else:
        args += _zsh_argument_specs(spec)
        lines.append("  _arguments -s -S \\\n    " + " \\\n    ".join(args))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _zsh(specs: list[Spec]) -> str:
    functions = []
    for s in specs:
        children = [c for c in specs
                    if len(c.node.path) == len(s.node.path) + 1
                    and c.node.path[:-1] == s.node.path]
        functions.append(_zsh_command(s, children))
    return _ZSH_HEAD + "\n" + "\n".join(functions) + _ZSH_TAIL
