"""Errors that users can cause, and help for fixing them."""

import difflib
from collections.abc import Iterable


class ResnetsError(Exception):
    """A mistake in what the user asked for: the CLI prints it as one line."""


class UsageError(ResnetsError, ValueError):
    """A bad name, option or value (the CLI exits with 2)."""


class DataError(ResnetsError, ValueError):
    """Data that cannot be used as given (the CLI exits with 1)."""


class TrainingError(ResnetsError, RuntimeError):
    """A run that failed while it ran (the CLI exits with 1)."""


class Stopped(ResnetsError):
    """A run stopped on request (Ctrl-C, SIGTERM) with its state saved: not a failure.

    The CLI prints it without the word "error" and exits with 128 + the signal's number,
    as a shell reports a process that a signal ended (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a 'did you mean' hint naming the choices closest to `name`, or ''."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
