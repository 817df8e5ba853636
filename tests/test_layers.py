"""The layers CONTRIBUTING.md draws, checked against the imports and calls in the code: a
module that reaches past its layer fails here, naming the file and what it reached."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "git_ksplice"


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE.parent)): ast.parse(p.read_text())
            for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(tree: ast.Module) -> set[str]:
    """Every module imported, by full name (`from git_ksplice import ui` is
    `git_ksplice.ui`), type-checking-only imports left out."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "git_ksplice":
                out |= {f"git_ksplice.{a.name}" for a in node.names}
    return out


def _reaching(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path} imports {name}" for path, tree in MODULES.items()
            if path.startswith(prefix) for name in sorted(_imports(tree))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize(("prefix", "forbidden"), [
    # the engine: object files in, diff objects out
    ("git_ksplice/elf/", ("pygit2", "click", "rich", "subprocess", "git_ksplice.repo",
                          "git_ksplice.build", "git_ksplice.ui", "git_ksplice.settings",
                          "git_ksplice.livepatch", "git_ksplice.pipeline")),
    ("git_ksplice/livepatch/", ("pygit2", "click", "rich", "git_ksplice.repo",
                                "git_ksplice.build", "git_ksplice.ui", "git_ksplice.settings",
                                "git_ksplice.pipeline", "git_ksplice.commands")),
    # the library below the commands: it reports through progress.Reporter, never prints
    *[(f"git_ksplice/{m}", ("click", "rich", "git_ksplice.ui", "git_ksplice.commands",
                            "git_ksplice.cli"))
      for m in ("pipeline.py", "build.py", "worktree.py", "targeted.py", "affected.py",
                "inputs.py", "package.py", "ledger.py",
                "settings.py", "repo.py", "kbuild.py", "kbuild_objects.py", "origconfig.py",
                "hooks.py", "layout.py", "includes.py", "progress.py", "files.py",
                "toolchain.py", "kernel_image.py", "installed_kernel.py", "shipped_modules.py",
                "errors.py", "words.py")],
])
def test_a_layer_imports_only_from_below(prefix: str, forbidden: tuple[str, ...]) -> None:
    assert _reaching(prefix, forbidden) == []


def test_only_repo_runs_git() -> None:
    """No `pygit2` import and no `"git"` command anywhere but repo.py."""
    found = []
    for path, tree in MODULES.items():
        if path == "git_ksplice/repo.py":
            continue
        if "pygit2" in _imports(tree):
            found.append(f"{path} imports pygit2")
        for node in ast.walk(tree):
            if isinstance(node, ast.List) and node.elts and \
                    isinstance(node.elts[0], ast.Constant) and node.elts[0].value == "git":
                found.append(f"{path}:{node.lineno} runs git")
    assert found == []


def test_only_settings_reads_git_config() -> None:
    found = [f"{path}:{node.lineno}" for path, tree in MODULES.items()
             if path not in ("git_ksplice/settings.py", "git_ksplice/repo.py")
             for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr in ("config", "config_all")
             and isinstance(node.value, ast.Name) and node.value.id == "repo"]
    assert found == []


def test_no_function_is_longer_than_a_screen_and_a_half() -> None:
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > 90]
    assert long == []
