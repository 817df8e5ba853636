"""What compiler-generated symbol names mean, and which of them may be correlated.

gcc numbers the clones and statics it creates (`foo.isra.0`, `count.3`, `__key.12`); the
numbers change when unrelated code changes, so correlation ignores them. Some statics are
created by kernel macros for their own bookkeeping (lockdep keys, WARN_ONCE flags, ratelimit
states, dynamic-debug descriptors): a patched function gets fresh copies of those rather
than sharing the running kernel's.
"""

from __future__ import annotations

import re

_NUMBERED = re.compile(r"\.\d+(?=\.|$)")
_UNIQUE_ID = re.compile(r"^(__UNIQUE_ID_.*?)\d+((?:\..*)?)$")

# Prefixes (before the numbered suffix) of statics that kernel macros generate per use site.
_SPECIAL_STATIC_PREFIXES = (
    "__key.",  # lockdep class keys (spin_lock_init, mutex_init, ...)
    "__warned.",  # WARN_ONCE and friends (older kernels)
    "__already_done.",  # DO_ONCE_LITE / WARN_ONCE (.data.once)
    "__print_once.",
    "__func__.",
    "__FUNCTION__.",
    "__PRETTY_FUNCTION__.",
    "_rs.",  # printk_ratelimited's ratelimit state
    "CSWTCH.",  # switch-conversion lookup tables
    "_entry.",  # printk index entries
    "_entry_ptr.",
    "descriptor.",  # dynamic debug
    "__compound_literal.",
    "__UNIQUE_ID_ddebug",
    "__tpstrtab_",
    "___tp_str.",  # tracepoint_string() pointers
)

# Of those, the ones whose contents are constants the code reads (a switch's table of
# values, a compound literal): a changed value changes the function that uses them.
_CONSTANT_STATIC_PREFIXES = ("CSWTCH.", "__compound_literal.", "switch.table.")

# Compiler-made data with no name a running kernel could be searched for: UBSAN source
# locations and type descriptors, clang's unnamed constants.
_UNNAMED_DATA_SECTIONS = (".data..Lubsan", ".data..L__unnamed", ".rodata..L__unnamed")

#: Sections whose every object is per-use-site bookkeeping.
SPECIAL_STATIC_SECTIONS = frozenset(
    {".data.once", ".data..once", "__verbose", "__dyndbg", ".data..ratelimit"}
)


def demangle(name: str) -> str:
    """The name with gcc's numbering removed: `foo.isra.3` -> `foo.isra`, `cnt.42` -> `cnt`.

    `__UNIQUE_ID_<name><counter>` loses its counter. A `.constprop` or `.isra` marker itself
    stays, so `foo.constprop.0` never correlates with plain `foo` (the calling convention
    differs).
    """
    if name.startswith("__UNIQUE_ID_"):
        m = _UNIQUE_ID.match(name)
        if m:
            name = m.group(1) + m.group(2)
    return _NUMBERED.sub("", name)


def is_special_static(name: str, section_name: str | None) -> bool:
    if section_name in SPECIAL_STATIC_SECTIONS:
        return True
    if section_name and section_name.startswith(_UNNAMED_DATA_SECTIONS):
        return True
    return name.startswith(_SPECIAL_STATIC_PREFIXES) or \
        _local_name(name).startswith(_SPECIAL_STATIC_PREFIXES)


def _local_name(name: str) -> str:
    """A function-scope static's name as gcc spells it (`_rs.3`): clang spells it after its
    function instead (`show_stats._rs`), which gives `_rs.` here."""
    owner, _, variable = _NUMBERED.sub("", name).rpartition(".")
    if owner and variable:
        return variable + "."
    return name


def is_constant_static(name: str) -> bool:
    """A per-use-site static whose bytes are part of what its function does, not state."""
    return name.startswith(_CONSTANT_STATIC_PREFIXES) or \
        _local_name(name).startswith(_CONSTANT_STATIC_PREFIXES)


def is_numbered_static(name: str) -> bool:
    """A function-scope static (`calls.0`) or a file static renamed to avoid a clash."""
    return not name.startswith(".") and _NUMBERED.search(name) is not None

