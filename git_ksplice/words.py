"""Words the tool prints, made the same way everywhere (the engine side included, which has no
console)."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 object`, `2 objects`, `0 objects`: every count the tool prints goes through here,
    so none reads "1 objects". `plural` for nouns that do not just take an s."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
