"""The errors wattlens raises on purpose.

Every error carries a one-line message that says what went wrong *and what to do*; the CLI
prints ``str(error)`` and exits with ``exit_code``. Nothing else in the code base should need to
format a user-facing error.
"""

from __future__ import annotations


class WattlensError(Exception):
    """Base class. ``exit_code`` 1 = the work failed, 2 = bad usage or bad input."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} — {hint}")


class BadInputError(WattlensError):
    """The user asked for something that cannot be done as asked (exit code 2)."""

    exit_code = 2


class MissingExtraError(BadInputError):
    """The command needs an optional part of wattlens that is not installed (exit code 2); the
    hint names the pip extra, e.g. ``pip install 'wattlens[advisor]'``."""


class TargetNotFoundError(BadInputError):
    """The PID does not exist (or is not visible to us)."""


class TargetAccessError(WattlensError):
    """The target exists but we may not inspect it (ptrace / /proc permissions)."""


class SourceUnavailableError(WattlensError):
    """A power source cannot be used here; ``hint`` says how to fix it."""


class NvmlError(SourceUnavailableError):
    """An NVML call failed; mapped once in :mod:`wattlens.profiler.sources.nvml`."""


class StoreError(WattlensError):
    """The database cannot be opened or written."""


class CorruptDatabaseError(StoreError, BadInputError):
    """The file is not a wattlens database (or is damaged). It is never overwritten."""

    exit_code = 2


class NoDatabaseError(StoreError, BadInputError):
    """A command that only reads found no database: nothing was created (exit code 2)."""

    exit_code = 2


class SessionNotFoundError(BadInputError):
    """No session with that id in the database."""


class ModelLoadError(BadInputError):
    """A model folder or file could not be loaded."""


class ActionError(WattlensError):
    """An optimisation action failed; the input model is untouched."""
