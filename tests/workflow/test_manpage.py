"""The git-ksplice(1) man page: current, complete, renderable, and found by `git help`.

What the page must cover is computed here from click and from the package's source, not from
the renderer's own walk, so that a renderer that skipped a command, an option or a setting
would fail these tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click

from git_ksplice import manpage
from git_ksplice.cli import cli, ksplice_create_cmd
from tests.needs import require
from tests.workflow.conftest import REPO, explain

PAGE = REPO / "man" / "man1" / "git-ksplice.1"
REGENERATE = "run `python3 -m git_ksplice.manpage --write` and commit man/man1/git-ksplice.1"


def roff(text: str) -> str:
    """How the page spells `text` in roff (hyphens are \\-)."""
    return text.replace("-", "\\-")


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                           click.Command]]:
    """Every visible command under `group`, nested groups included, found through click."""
    ctx = click.Context(group)
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        out.append(((*path, name), cmd))
        if isinstance(cmd, click.Group):
            out += commands(cmd, (*path, name))
    return out


def long_options(cmd: click.Command) -> list[str]:
    # The help option is not in cmd.params (click adds it per context); it is --help
    # whatever the short names are. (get_params() with a bare context would make click cache
    # a help option without the group's -h, for the rest of the process.)
    names = ["--help"] if cmd.add_help_option else []
    return [o for p in cmd.params if isinstance(p, click.Option) and not p.hidden
            for o in p.opts + p.secondary_opts if o.startswith("--")] + names


def section(page: str, start: str) -> str:
    """The roff from the line `start` to the next section or subsection heading."""
    lines = page.split("\n")
    assert start in lines, f"{start!r} not in the page"
    i = lines.index(start) + 1
    j = next((k for k in range(i, len(lines)) if lines[k].startswith((".SH", ".SS"))),
             len(lines))
    return "\n".join(lines[i:j])


def config_keys_in_source() -> set[str]:
    """Every `ksplice.X` git setting the package mentions (module paths like git_ksplice.cli
    are preceded by `_` and do not count), except in the man page's own table."""
    keys: set[str] = set()
    for path in (REPO / "git_ksplice").rglob("*.py"):
        if path.name in ("manpage.py", "completion.py"):
            continue
        keys |= set(re.findall(r"(?<![\w./-])(ksplice\.[a-z][A-Za-z]*)\b", path.read_text()))
    return keys


# -- the checked-in page -------------------------------------------------------------------


def test_checked_in_page_is_current() -> None:
    assert PAGE.exists(), f"{PAGE} is missing: {REGENERATE}"
    assert PAGE.read_text() == manpage.render(), f"{PAGE} is stale: {REGENERATE}"


def test_rendering_is_reproducible() -> None:
    """The same page from processes with different hash seeds: click keeps the help option's
    names in a set, whose order changes with the seed."""
    pages = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
        r = subprocess.run([sys.executable, "-m", "git_ksplice.manpage"], capture_output=True,
                           text=True, env=env, cwd=REPO)
        assert r.returncode == 0, explain(r)
        pages.add(r.stdout)
    assert len(pages) == 1


def test_check_and_write(tmp_path: Path) -> None:
    page = tmp_path / "man1" / "git-ksplice.1"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "git_ksplice.manpage"]

    r = subprocess.run([*cmd, "--check", "--file", str(page)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1 and "--write" in r.stderr, explain(r)
    r = subprocess.run([*cmd, "--write", "--file", str(page)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, explain(r)
    assert page.read_text() == manpage.render()
    r = subprocess.run([*cmd, "--check", "--file", str(page)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, explain(r)
    page.write_text(page.read_text().replace("rebootless", "reboot"))
    r = subprocess.run([*cmd, "--check", "--file", str(page)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1, explain(r)


# -- what it covers ------------------------------------------------------------------------


def test_every_command_and_option_is_documented() -> None:
    page = manpage.render()
    synopsis = section(page, ".SH SYNOPSIS")
    found = commands(cli)
    assert {p for p, _ in found} >= {("create",), ("view",), ("try",), ("series",),
                                     ("diff-object",), ("completion",)}
    for path, cmd in found:
        name = " ".join(("git ksplice", *path))
        body = section(page, f".SS {roff(name)}")
        if not isinstance(cmd, click.Group):
            assert f"\\fB{roff(name)}\\fR" in synopsis, f"{name} is not in the SYNOPSIS"
        for option in long_options(cmd):
            assert f"\\fB{roff(option)}\\fR" in body, f"{name} {option} is not documented"
        first_line = (cmd.help or "").strip().split("\n")[0]
        words = re.findall(r"[a-z]{4,}", first_line)[:3]  # its help, not only its name
        assert all(roff(w) in body for w in words), f"{name}: help missing ({words})"
    for option in long_options(cli):
        assert f"\\fB{roff(option)}\\fR" in section(page, ".SH OPTIONS"), option


def test_ksplice_create_is_documented() -> None:
    page = manpage.render()
    assert "\\fBksplice\\-create\\fR" in section(page, ".SH SYNOPSIS")
    body = section(page, ".SS ksplice\\-create")
    assert "KERNEL_SOURCE" in body and "\\fBgit ksplice create\\fR" in body
    create = cli.get_command(click.Context(cli), "create")
    assert create is not None
    own = set(long_options(ksplice_create_cmd)) - set(long_options(create))
    for option in own:
        assert f"\\fB{roff(option)}\\fR" in body, option


def test_every_setting_is_documented() -> None:
    keys = config_keys_in_source()
    assert {"ksplice.jobs", "ksplice.config", "ksplice.outputDir"} <= keys, keys
    configuration = section(manpage.render(), ".SH CONFIGURATION")
    missing = sorted(k for k in keys if f"\\fB{k}\\fR" not in configuration)
    assert not missing, (f"settings read by git_ksplice/ but not in the man page's "
                         f"CONFIGURATION: {missing}; add them to CONFIG_KEYS in "
                         "git_ksplice/manpage.py")
    assert "git \\-c ksplice.jobs=4 ksplice create" in configuration


def test_sections() -> None:
    page = manpage.render()
    headings = re.findall(r"^\.SH (.+)$", page, flags=re.M)
    assert headings == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS",
                        "CONFIGURATION", "FILES", "EXIT STATUS", "ENVIRONMENT", "SEE ALSO"]
    exit_status = section(page, ".SH EXIT STATUS")
    for code in ("0", "1", "2", "65", "66"):
        assert f".TP\n{code}\n" in exit_status, code
    environment = section(page, ".SH ENVIRONMENT")
    for var in ("CONCURRENCY_LEVEL", "SOURCE_DATE_EPOCH", "GIT_DIR"):
        assert var in environment
    files = section(page, ".SH FILES")
    for path in ("ksplice/build/", "ksplice/updates/", "ksplice/logs/", "ksplice/hook/"):
        assert f"\\fB{roff(path)}" in files, path


def test_escaping() -> None:
    """Lines that would be roff requests are protected; backslashes and hyphens escaped."""
    assert manpage.esc(".config\n'quoted") == "\\&.config\n\\&'quoted"
    assert manpage.esc("a\\b-c") == "a\\eb\\-c"
    assert manpage.inline("`.config` is read") == "\\fB.config\\fR is read"
    assert manpage.inline(". starts") == "\\&. starts"
    page = manpage.render()
    for line in page.split("\n"):
        if line.startswith('.\\"'):
            continue  # a comment
        if line.startswith("."):
            assert re.match(r"\.(TH|SH|SS|PP|TP|nf|fi|ad|nh|hy|in|ti|br)( |$)", line), line
            if line.startswith((".ti", ".in")):
                continue  # -4n is a number
        text = re.sub(r"\\(-|f[BIR]|&|e|:|\[u[0-9A-F]{4}\])", "", line)
        assert "-" not in text and "\\" not in text, f"unescaped: {line!r}"
    assert page.isascii()


# -- reading it --------------------------------------------------------------------------


def _man(env: dict[str, str]) -> str:
    require("man-db", "groff-base")
    man = shutil.which("man", path=env["PATH"])
    assert man is not None, f"man is not on the test's PATH {env['PATH']}"
    return man


def _reader_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, MANPAGER="cat", PAGER="cat", GIT_PAGER="cat", MANWIDTH="80",
               LC_ALL="C.UTF-8")
    env.update(extra or {})
    return env


def test_man_renders_it_without_warnings(tmp_path: Path) -> None:
    env = _reader_env()
    man = _man(env)
    r = subprocess.run([man, "-l", "--warnings=w", str(PAGE)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0 and r.stderr == "", explain(r)
    assert re.search(r"^NAME\n\s+git-ksplice - ", r.stdout, flags=re.M), r.stdout[:400]
    for path, _ in commands(cli):
        assert " ".join(("git ksplice", *path)) in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80

    # The check itself works: a broken page does make man complain.
    bad = tmp_path / "bad.1"
    bad.write_text(PAGE.read_text().replace(".SH FILES", ".SH FILES\n.XY unknown"))
    r = subprocess.run([man, "-l", "--warnings=w", str(bad)], capture_output=True, text=True,
                       env=env)
    assert "XY" in r.stderr, explain(r)


def test_git_help_shows_it(tmp_path: Path, hermetic: dict[str, str]) -> None:
    """With the page on MANPATH, `git help ksplice` and `git ksplice --help` (which git
    turns into `git help ksplice`) show it. git-ksplice must be on PATH (hermetic puts the
    checkout's bin/ there): git only maps `ksplice` to the page git-ksplice when it knows the
    command."""
    mandir = tmp_path / "man"
    (mandir / "man1").mkdir(parents=True)
    shutil.copy2(PAGE, mandir / "man1" / "git-ksplice.1")
    env = _reader_env({"MANPATH": str(mandir)})
    _man(env)
    for cmd in (["git", "help", "ksplice"], ["git", "ksplice", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert r.returncode == 0, explain(r)
        assert r.stdout.startswith("GIT-KSPLICE(1)"), explain(r)
        assert "git ksplice create [OPTIONS] [COMMIT]" in r.stdout
        assert "CONFIGURATION" in r.stdout

    # Without it, there is nothing to show: the page above came from our MANPATH.
    env["MANPATH"] = str(tmp_path / "empty")
    r = subprocess.run(["git", "help", "ksplice"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert "GIT-KSPLICE(1)" not in r.stdout
