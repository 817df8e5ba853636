"""x86_64 instruction decoding, where the differ needs to know instruction boundaries.

Two questions need a decoder. Where does a PC-relative relocation's instruction end? The
target of `R_X86_64_PC32 sym+A` at P is `end_of_instruction + (sym + A - P)`, so when an
immediate follows the displacement (`cmpl $1, x(%rip)`) the addend alone points at the wrong
place; the symbol a relocation through a section symbol lands in depends on it. And is a
difference between two functions only a `__LINE__` immediate passed to a WARN/printk-style
call? Both are answered with capstone, decoding each function once, lazily.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import capstone

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_CS.skipdata = True


@dataclass(frozen=True)
class Insn:
    offset: int
    size: int
    mnemonic: str
    operands: str


def decode(code: bytes, base: int = 0) -> list[Insn]:
    return [Insn(a, s, m, o) for a, s, m, o in _CS.disasm_lite(code, base)]


class FunctionCode:
    """The decoded instructions of one function (a byte range of a text section)."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.insns = decode(data[start:end], start)
        self.starts = [i.offset for i in self.insns]

    def containing(self, offset: int) -> Insn | None:
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0:
            return None
        insn = self.insns[i]
        return insn if insn.offset <= offset < insn.offset + insn.size else None


#: Functions whose argument carries a source line number, so an immediate loaded for them
#: may change when lines move even though the code did not.
LINE_CONSUMERS = frozenset({
    "__warn_printk", "warn_slowpath_fmt", "warn_slowpath_null", "__might_sleep",
    "___might_sleep", "__might_resched", "__might_fault", "printk", "_printk",
    "lockdep_rcu_suspicious", "__btrfs_abort_transaction", "__btrfs_handle_fs_error",
    "__btrfs_panic", "__bad_percpu_size", "report_bug",
})

# mov $imm32, %esi / %edx / %ecx / %r8d: the 2nd to 5th integer argument registers.
_LINE_ARG_MOVS = ("mov esi, ", "mov edx, ", "mov ecx, ", "mov r8d, ")


def is_line_argument_load(insn: Insn) -> bool:
    text = f"{insn.mnemonic} {insn.operands}"
    if not text.startswith(_LINE_ARG_MOVS):
        return False
    value = text.split(", ", 1)[1]
    return value.startswith("0x") or value.isdigit()
