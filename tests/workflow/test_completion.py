"""Shell completion: the scripts `git ksplice completion bash|zsh` prints, run by real shells.

bash: the script is sourced in a non-interactive `bash` and its functions are called as
readline would call them (COMP_WORDS, COMP_CWORD), for `git-ksplice ...` alone and for
`git ksplice ...` through git's own completion (`__git_main`, loaded from git's package), and
through bash-completion's on-demand loading from the directory the `completion` command's
help names. zsh: the script must load with compinit in `zsh -f`, and TAB is pressed in a real
interactive zsh on a pseudo-terminal. What must be completed (commands, options, choices) is
read from click here, so a new command or option is tested without touching this file.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import click
import pytest

from git_ksplice.cli import cli
from tests.needs import require
from tests.workflow.conftest import explain, run

#: Where distributions put git's bash completion.
GIT_BASH_COMPLETION = [Path("/usr/share/bash-completion/completions/git"),
                       Path("/usr/share/git-core/contrib/completion/git-completion.bash"),
                       Path("/etc/bash_completion.d/git")]
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def ksplice_script(shell: str, env: dict[str, str]) -> str:
    """The script as a user gets it: from the real command, through git's dispatch."""
    r = run(["git", "ksplice", "completion", shell], cwd=Path.cwd(), env=env)
    assert r.stderr == "", explain(r)
    return r.stdout


@pytest.fixture
def bash_script(tmp_path: Path, hermetic: dict[str, str]) -> Path:
    path = tmp_path / "git-ksplice.bash"
    path.write_text(ksplice_script("bash", hermetic))
    return path


@pytest.fixture
def repo(tmp_path: Path, hermetic: dict[str, str]) -> Path:
    """A scratch repository with branches main and fixes-1, a tag, a file and a directory."""
    path = tmp_path / "repo"
    path.mkdir()
    for cmd in (["git", "init", "-q", "-b", "main"],
                ["git", "commit", "-q", "--allow-empty", "-m", "first"],
                ["git", "branch", "fixes-1"], ["git", "tag", "v1"]):
        run(cmd, cwd=path, env=hermetic)
    (path / "fix.patch").write_text("")
    (path / "orig-config").mkdir()
    return path


def visible(group: click.Group) -> list[str]:
    ctx = click.Context(group)
    return sorted(n for n in group.list_commands(ctx)
                  if (c := group.get_command(ctx, n)) is not None and not c.hidden)


def all_commands(group: click.Group, path: tuple[str, ...] = ()
                 ) -> list[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    out: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    for name in visible(group):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


def long_options(cmd: click.Command) -> set[str]:
    # The help option is not in cmd.params (click adds it per context); it is --help
    # whatever the short names are. (get_params() with a bare context would make click cache
    # a help option without the group's -h, for the rest of the process.)
    names = ["--help"] if cmd.add_help_option else []
    return {o for p in cmd.params if isinstance(p, click.Option) and not p.hidden
            for o in p.opts + p.secondary_opts if o.startswith("--")} | set(names)


# -- bash --------------------------------------------------------------------------------

#: Calls the dashed-form function as readline does for `git-ksplice WORDS...`, the last word
#: being the one under the cursor; prints COMPREPLY, one entry a line.
_DASHED = r"""
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
COMPREPLY=()
_git_ksplice_dashed
printf '%s\n' "${COMPREPLY[@]}"
"""

#: The same through git's completion: `git WORDS...` completed by __git_main, the function
#: git's script registers for `git` (its wrapper fills words/cword/cur from COMP_WORDS).
_THROUGH_GIT = r"""
source "$1"; shift
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
COMPREPLY=()
__git_wrap__git_main
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash(code: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", code, "bash", *args],
                       capture_output=True, text=True, cwd=cwd, env=env, timeout=30)
    assert r.returncode == 0 and r.stderr == "", explain(r)
    return [line for line in r.stdout.split("\n") if line]


def dashed(script: Path, *words: str, cwd: Path) -> list[str]:
    return bash(_DASHED, str(script), "git-ksplice", *words, cwd=cwd)


def git_completion() -> Path:
    for path in GIT_BASH_COMPLETION:
        if path.exists():
            return path
    # Debian's git installs it under bash-completion's directory, which that package owns.
    require("bash-completion")
    pytest.skip("git's bash completion script is not installed: it comes with git itself "
                f"(looked in {', '.join(map(str, GIT_BASH_COMPLETION))})")


def test_bash_script_is_valid(bash_script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(bash_script)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", explain(r)
    text = bash_script.read_text()
    assert "python" not in text.lower().replace("nothing here starts python", ""), \
        "the script must not start Python on TAB"
    r = subprocess.run(["bash", "--norc", "-c", 'source "$1" && complete -p git-ksplice && '
                        "declare -F _git_ksplice", "bash", str(bash_script)],
                       capture_output=True, text=True)
    assert r.returncode == 0, explain(r)
    assert "-F _git_ksplice_dashed git-ksplice" in r.stdout


def test_bash_subcommands(bash_script: Path, repo: Path) -> None:
    assert dashed(bash_script, "cr", cwd=repo) == ["create"]
    assert dashed(bash_script, "", cwd=repo) == visible(cli)
    # Nested groups (`hook`): their own subcommands.
    for path, cmd in all_commands(cli):
        if path and isinstance(cmd, click.Group):
            assert dashed(bash_script, *path, "", cwd=repo) == visible(cmd), path


def test_bash_options(bash_script: Path, repo: Path) -> None:
    assert dashed(bash_script, "create", "--build-modu", cwd=repo) == ["--build-modules"]
    # Options that take a value are offered as --opt= (one word with its value).
    assert dashed(bash_script, "create", "--pa", cwd=repo) == ["--patch=", "--patch-opt="]
    assert "-j" in dashed(bash_script, "create", "-", cwd=repo)
    for path, cmd in all_commands(cli):
        offered = {o.rstrip("=") for o in dashed(bash_script, *path, "--", cwd=repo)}
        assert offered == long_options(cmd), path


def test_bash_values(bash_script: Path, repo: Path) -> None:
    refs = dashed(bash_script, "create", "", cwd=repo)
    assert {"HEAD", "main", "fixes-1", "v1"} <= set(refs), refs
    assert dashed(bash_script, "create", "fi", cwd=repo) == ["fixes-1"]
    # `--git=fi`: bash splits it at "=" into three words.
    assert dashed(bash_script, "create", "--git", "=", "fi", cwd=repo) == ["fixes-1"]
    assert dashed(bash_script, "create", "--git", "fi", cwd=repo) == ["fixes-1"]
    assert dashed(bash_script, "create", "--patch", "=", "f", cwd=repo) == ["fix.patch"]
    assert dashed(bash_script, "create", "--patch", "", cwd=repo) == [".git", "fix.patch",
                                                                     "orig-config"]
    assert dashed(bash_script, "create", "--config", "o", cwd=repo) == ["orig-config"]
    assert dashed(bash_script, "create", "-o", "", cwd=repo) == [".git", "orig-config"]
    assert dashed(bash_script, "try", "--check", "f", cwd=repo) == ["fix.patch"]
    assert dashed(bash_script, "try", "--kernel=f", cwd=repo) == ["fix.patch"]
    assert dashed(bash_script, "try", "f", cwd=repo) == ["fix.patch"]
    assert dashed(bash_script, "diff-object", "a.o", "f", cwd=repo) == ["fix.patch"]
    shells = dashed(bash_script, "completion", "", cwd=repo)
    assert shells == ["bash", "zsh"]
    # An option's value is not an argument: `create -j 4 fi` still completes COMMIT.
    assert dashed(bash_script, "create", "-j", "4", "fi", cwd=repo) == ["fixes-1"]
    # Nothing is offered for a value nothing is known about.
    assert dashed(bash_script, "create", "--id", "", cwd=repo) == []
    assert dashed(bash_script, "create", "HEAD", "", cwd=repo) == []


def test_bash_update_ids(bash_script: Path, repo: Path, hermetic: dict[str, str]) -> None:
    run(["git", "update-ref", "refs/ksplice/updates/fix1", "HEAD"], cwd=repo, env=hermetic)
    assert dashed(bash_script, "view", "--id", "", cwd=repo) == ["fix1"]


def test_bash_through_git(bash_script: Path, repo: Path, tmp_path: Path) -> None:
    """`git ksplice <TAB>` with git's completion loaded: git calls _git_ksplice; replies
    carry the trailing space git's helpers add (it registers with -o nospace)."""
    git = str(git_completion())

    def through_git(*words: str, cwd: Path = repo) -> list[str]:
        return bash(_THROUGH_GIT, git, str(bash_script), "git", *words, cwd=cwd)

    assert through_git("ksplice", "cr") == ["create "]
    assert through_git("ksplice", "create", "--build-modu") == ["--build-modules "]
    assert through_git("ksplice", "create", "--pat") == ["--patch=", "--patch-opt="]
    assert through_git("ksplice", "create", "fi") == ["fixes-1 "]
    assert through_git("ksplice", "create", "--git=fi") == ["fixes-1 "]
    assert through_git("ksplice", "completion", "z") == ["zsh "]
    # git's own ref helper is used: it follows `git -C DIR`.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert through_git("-C", str(repo), "ksplice", "create", "fi", cwd=elsewhere) == \
        ["fixes-1 "]
    run(["git", "update-ref", "refs/ksplice/updates/fix1", "HEAD"], cwd=repo)
    assert through_git("-C", str(repo), "ksplice", "view", "--id", "", cwd=elsewhere) == \
        ["fix1 "]


def test_bash_loaded_on_demand(bash_script: Path, repo: Path, tmp_path: Path,
                               hermetic: dict[str, str]) -> None:
    """Installed where the `completion` command's help says, bash-completion loads the script
    the first time `git ksplice` is completed: nothing in ~/.bashrc."""
    require("bash-completion")
    git_completion()
    help_text = run(["git", "ksplice", "completion", "--help"], cwd=repo, env=hermetic).stdout
    # (click wraps the help, possibly at a hyphen of the path)
    assert "~/.local/share/bash-completion/completions/git-ksplice" in "".join(help_text.split())
    home = Path(hermetic["HOME"])
    target = home / ".local" / "share" / "bash-completion" / "completions" / "git-ksplice"
    target.parent.mkdir(parents=True)
    shutil.copy2(bash_script, target)
    env = {k: v for k, v in hermetic.items()
           if k not in ("BASH_COMPLETION_USER_DIR", "XDG_DATA_HOME")}
    code = r"""
source "$1"; shift
declare -F _git_ksplice >/dev/null && echo "loaded too early"
_completion_loader git
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
COMPREPLY=()
__git_wrap__git_main
printf '%s\n' "${COMPREPLY[@]}"
"""
    assert bash(code, str(BASH_COMPLETION), "git", "ksplice", "cr", cwd=repo, env=env) == \
        ["create "]


# -- zsh ---------------------------------------------------------------------------------


def zsh() -> str:
    require("zsh")
    path = shutil.which("zsh")
    assert path is not None
    return path


@pytest.fixture
def zsh_fpath(tmp_path: Path, hermetic: dict[str, str]) -> Path:
    """A directory of $fpath holding the script as _git-ksplice, as its header says."""
    d = tmp_path / "zfunc"
    d.mkdir()
    (d / "_git-ksplice").write_text(ksplice_script("zsh", hermetic))
    return d


def test_zsh_script_loads(zsh_fpath: Path, repo: Path) -> None:
    script = zsh_fpath / "_git-ksplice"
    assert script.read_text().startswith("#compdef git-ksplice\n")
    r = subprocess.run([zsh(), "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", explain(r)
    code = (f"fpath=({zsh_fpath} $fpath); autoload -U compinit; compinit -u -D; "
            "print -r -- $_comps[git-ksplice]; "
            # Sourced instead of autoloaded, it defines the functions and registers itself.
            f"source {script}; print -r -- ${{+functions[__git-ksplice_create]}}")
    r = subprocess.run([zsh(), "-f", "-c", code], capture_output=True, text=True, cwd=repo)
    assert r.returncode == 0 and r.stderr == "", explain(r)
    assert r.stdout.split() == ["_git-ksplice", "1"], explain(r)


def spawn_on_pty(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, int]:
    """Start argv on a new pseudo-terminal: (pid, the terminal's master fd).

    The child is a copy of the whole pytest process until it execs: whatever fails there
    must end it, never let it return into the test session (it would run the remaining tests
    a second time, in parallel)."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    return pid, fd


def test_a_child_that_cannot_exec_ends_there(tmp_path: Path) -> None:
    pid, fd = spawn_on_pty([str(tmp_path / "no-such-shell")], tmp_path, {})
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 127


class Zsh:
    """An interactive zsh on a pseudo-terminal, with compinit and our script on $fpath:
    `complete("git-ksplice cr")` types the words and TAB, and returns the line as the
    completion left it."""

    def __init__(self, fpath: Path, cwd: Path, env: dict[str, str]) -> None:
        # zsh() may skip the test: in the parent, before the fork.
        self.pid, self.fd = spawn_on_pty([zsh(), "-f", "-i"], cwd, {**env, "TERM": "dumb"})
        self.output = b""
        self.send(f"bindkey -e; PS1='> '; fpath=({fpath} $fpath); autoload -U compinit; "
                  "compinit -u -D; echo READY\n")
        self.expect(rb"\nREADY\r?\n")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: bytes, timeout: float = 20) -> re.Match[bytes]:
        end = time.monotonic() + timeout
        while (m := re.search(pattern, self.output)) is None:
            left = end - time.monotonic()
            assert left > 0, f"zsh did not print {pattern!r}:\n{self.output.decode()}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.output += os.read(self.fd, 65536)
        return m

    def complete(self, line: str) -> str:
        """Type `line`, TAB; then go to the start of the line (^A), make it an echo of the
        line between markers, go to its end (^E) and run it."""
        self.output = b""
        # All at once: keys typed while the completion runs wait in the terminal, and zle
        # reads them when it is done, as when a user types ahead.
        self.send(line + "\t\x01echo BEGIN:\x05:END\n")
        return self.expect(rb"\nBEGIN:(.*?):END\r?\n").group(1).decode().rstrip()

    def close(self) -> None:
        self.send("exit\n")
        try:
            os.waitpid(self.pid, 0)
        finally:
            os.close(self.fd)


def test_zsh_completes(zsh_fpath: Path, repo: Path, hermetic: dict[str, str]) -> None:
    z = Zsh(zsh_fpath, repo, hermetic)
    try:
        assert z.complete("git-ksplice cr") == "git-ksplice create"
        assert z.complete("git-ksplice create --build-modu") == "git-ksplice create --build-modules"
        assert z.complete("git-ksplice create fi") == "git-ksplice create fixes-1"
        assert z.complete("git-ksplice create --git=fi") == "git-ksplice create --git=fixes-1"
        assert z.complete("git-ksplice try --check f") == "git-ksplice try --check fix.patch"
        # (the "/" after a directory goes when the next key is typed: AUTO_REMOVE_SLASH)
        assert z.complete("git-ksplice create --config o") == \
            "git-ksplice create --config orig-config"
        assert z.complete("git-ksplice completion z") == "git-ksplice completion zsh"
        # `git ksplice`: zsh's _git hands the words after `git` to _git-ksplice.
        assert z.complete("git ksplice cr") == "git ksplice create"
        assert z.complete("git ksplice create --no-w") == "git ksplice create --no-wait"
        for path, cmd in all_commands(cli):
            if path and isinstance(cmd, click.Group):
                first = visible(cmd)[0]
                words = " ".join(("git-ksplice", *path))
                assert z.complete(f"{words} {first[:-1]}") == f"{words} {first}", path
    finally:
        z.close()
