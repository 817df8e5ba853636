"""The running kernel's shipped modules (ORIG_CONFIG's `modules/`, a copy of
`lib/modules/RELEASE/`): found by name, with the modules each needs loaded first.

A distribution's module directory holds thousands of `.ko` files; which one is `bridge` and
what it needs is in each file's `.modinfo` (`depends=llc,stp`). Debian does not ship
`modules.dep` (depmod makes it at install), so the dependencies are read from the modules
themselves. Module names treat `-` and `_` alike, as the kernel does (`nls_iso8859-1.ko` is
`nls_iso8859_1`). Used for module targets (sympos and the run-pre check read the shipped
`.ko`) and by `try` (a module loaded with everything it depends on, in order).
"""

from __future__ import annotations

import lzma
from pathlib import Path

from git_ksplice.errors import InputError

#: Module files as distributions ship them; a compressed one is read through lzma (xz).
_SUFFIXES = (".ko", ".ko.xz")


def module_name(path: Path) -> str:
    """`nls_iso8859-1.ko` -> `nls_iso8859_1`."""
    name = path.name
    for suffix in (*_SUFFIXES, ".ko.zst"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    return name.replace("-", "_")


def modinfo(path: Path) -> dict[str, str]:
    """A module's `.modinfo` strings (the last of a repeated key), read without parsing the
    ELF: its `key=value` strings are NUL-separated and keys are plain words."""
    try:
        data = path.read_bytes()
        if path.name.endswith(".xz"):
            data = lzma.decompress(data)
    except (OSError, lzma.LZMAError) as e:
        raise InputError(f"cannot read module {path}: {e}") from None
    out = {}
    for key in (b"depends", b"vermagic", b"name", b"license"):
        at = data.find(b"\0" + key + b"=")
        if at >= 0:
            end = data.find(b"\0", at + 1)
            out[key.decode()] = data[at + len(key) + 2:end].decode("utf-8", "replace")
    return out


class ShippedModules:
    """The shipped modules under one directory, by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_name: dict[str, Path] = {}
        #: modules shipped compressed (.ko.xz, .ko.zst: Fedora, Ubuntu): named, not read,
        #: since the ELF readers take plain files
        self.compressed: dict[str, Path] = {}
        for path in sorted(root.rglob("*.ko")):
            self.by_name.setdefault(module_name(path), path)
        for pattern in ("*.ko.xz", "*.ko.zst"):
            for path in sorted(root.rglob(pattern)):
                self.compressed.setdefault(module_name(path), path)

    def find(self, name: str) -> Path | None:
        return self.by_name.get(name.replace("-", "_"))

    def with_dependencies(self, name: str) -> list[tuple[str, Path]]:
        """`name` and every module it depends on, each after what it needs."""
        order: list[tuple[str, Path]] = []
        self._visit(name.replace("-", "_"), order, set(), [])
        return order

    def _visit(self, name: str, order: list[tuple[str, Path]], done: set[str],
               path: list[str]) -> None:
        if name in done:
            return
        if name in path:
            raise InputError(f"shipped modules depend on each other in a circle: "
                             f"{' -> '.join([*path, name])}")
        ko = self.find(name)
        if ko is None and name in self.compressed:
            raise InputError(f"module {name} is shipped compressed "
                             f"({self.compressed[name].name}), which git-ksplice does not "
                             "read", hint="unpack it beside the others (xz -dk / zstd -d) "
                                          "in ORIG_CONFIG's modules/")
        if ko is None:
            needed_by = f" (needed by {path[-1]})" if path else ""
            raise InputError(f"no module {name} in {self.root}{needed_by}",
                             hint="git ksplice import-kernel copies the running kernel's "
                                  "modules into ORIG_CONFIG's modules/")
        for dep in filter(None, modinfo(ko).get("depends", "").split(",")):
            self._visit(dep.replace("-", "_"), order, done, [*path, name])
        done.add(name)
        order.append((name, ko))

    def modules_dep(self, modules: list[tuple[str, Path]]) -> str:
        """modules.dep lines for `modules` (paths relative to the module directory), so
        that a guest's `modprobe` finds them: each module's whole dependency chain, the ones
        to load first last, as depmod writes it."""
        lines = []
        for name, ko in modules:
            chain = [p for _, p in self.with_dependencies(name)[:-1]]
            rel = " ".join(str(p.relative_to(self.root)) for p in reversed(chain))
            lines.append(f"{ko.relative_to(self.root)}: {rel}".rstrip() + "\n")
        return "".join(lines)


__all__ = ["ShippedModules", "modinfo", "module_name"]
