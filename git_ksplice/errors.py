"""Exceptions that carry the message a user sees; `cli.main()` is the only place that exits.

Each error names the problem and, where there is one, the way out. Exit codes follow
ksplice-create and sysexits(3): 66 (EX_NOINPUT) "No changes detected.", 65 (EX_DATAERR) a
change that cannot be applied live, 1 anything else.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
#: git's exit status for bad usage, for the click errors that are not usage errors (those
#: exit 2, as click has them)
EXIT_BAD_USAGE = 129
EXIT_REFUSED = 65
EXIT_NO_CHANGE = 66
#: interrupted (SIGINT), as a shell reports it
EXIT_INTERRUPTED = 130


class KspliceError(Exception):
    """An error with a user-facing message."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(KspliceError):
    """A file or argument given by the user cannot be used."""


class NoChangeError(KspliceError):
    exit_code = EXIT_NO_CHANGE


class RefusedError(KspliceError):
    """The change is understood but cannot be applied to a running kernel safely."""

    exit_code = EXIT_REFUSED


class ConcurrencyError(KspliceError):
    """Someone else moved a ref or holds the lock."""


class BuildError(KspliceError):
    """The kernel build failed."""
