"""The manifest (`manifest.json` of a tarball and of each ledger entry): its schema, and
reading one that someone else wrote.

A tarball is input from anywhere, and a ledger entry arrives with `git fetch`: what `view`,
`series` and `try` read from a manifest is checked against the schema first, so a wrong type
is a message naming the field, not a traceback three functions later. Unknown fields are
allowed (a newer git-ksplice may add some); the fields this version reads must have the
types it writes, and a function entry must have its name.
"""

from __future__ import annotations

import json
from typing import Any

from git_ksplice.errors import InputError


class Required:
    """A field a record must have."""

    def __init__(self, schema: object) -> None:
        self.schema = schema


#: A schema is a type (the value's), a list of one schema (every item), a dict with the key
#: `str` (a mapping: every value), or a dict of field names (a record; fields optional unless
#: Required). `object` is anything.
_FUNCTION = {"name": Required(str), "size": int, "sympos": int}
_OBJECT = {"changed_functions": [_FUNCTION], "new_functions": [_FUNCTION],
           "warnings": [object]}
SCHEMA: dict[str, object] = {
    "format": int, "id": str, "description": str, "mode": str, "series": bool,
    "pre": str, "post": str, "timestamp": int, "compiler": str, "tool": str,
    "kcflags": str, "extra_objects": [str],
    "targets": {str: {"objects": {str: _OBJECT}}},
    "livepatch": {"module": str, "vermagic": str, "klp_relocations": int,
                  "functions": [{"target": str, "name": Required(str), "sympos": int}],
                  "warnings": [str]},
}

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number",
               bool: "true or false"}


def parse(data: bytes, where: str) -> dict[str, Any]:
    """The manifest in `data`, checked; an InputError naming `where` and the field if not."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{where}: manifest.json is not JSON ({e})",
                         hint="the update is damaged or was not made by git-ksplice") from None
    check(doc, where)
    return doc


def check(doc: object, where: str) -> None:
    problem = _problem(doc, SCHEMA, "")
    if problem:
        raise InputError(f"{where}: manifest.json is not a git-ksplice manifest: {problem}",
                         hint="the update is damaged or was not made by git-ksplice")


def _problem(value: object, schema: object, path: str) -> str | None:
    """What is wrong with `value` at `path`, or None."""
    here = path or "the document"
    if schema is object:
        return None
    if isinstance(schema, type):
        # bool is an int to Python, but true is no timestamp.
        ok = isinstance(value, schema) and not (schema is int and isinstance(value, bool))
        return None if ok else f"{here} is {_describe(value)}, not {_TYPE_NAMES[schema]}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{here} is {_describe(value)}, not a list"
        for i, item in enumerate(value):
            if (p := _problem(item, schema[0], f"{path}[{i}]")) is not None:
                return p
        return None
    assert isinstance(schema, dict)
    if not isinstance(value, dict):
        return f"{here} is {_describe(value)}, not an object"
    if str in schema:
        for key, item in value.items():
            if (p := _problem(item, schema[str], _join(path, key))) is not None:
                return p
        return None
    for key, field in schema.items():
        required = isinstance(field, Required)
        sub = field.schema if isinstance(field, Required) else field
        if key not in value:
            if required:
                return f"{here} has no {key}"
            continue
        if (p := _problem(value[key], sub, _join(path, key))) is not None:
            return p
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    for t in (bool, dict, list, str, int):
        if isinstance(value, t):
            return _TYPE_NAMES[t]
    return "null" if value is None else type(value).__name__
