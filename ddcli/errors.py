"""Errors that the CLI turns into one line on stderr and an exit code.

Exit codes (documented in the README): 0 ok, 1 failed run, 2 bad usage or bad input.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class DDCliError(Exception):
    """A failure with a one-line, user-facing message and an exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(DDCliError):
    """Bad input (a path, a file, an option value): exit 2."""

    exit_code = EXIT_BAD_INPUT


class DataError(InputError):
    """A dataset folder or shard that cannot be read."""


class BundleError(InputError):
    """A bundle file that is missing, foreign, truncated, tampered with or too new."""


class RunError(DDCliError):
    """A run that started and failed: exit 1."""

    exit_code = EXIT_FAILED


class Interrupted(KeyboardInterrupt):
    """The user pressed Ctrl-C (or the run got SIGTERM); state was saved where possible, and
    the message says where. A :class:`KeyboardInterrupt`, not a :class:`DDCliError`: a Python
    caller's ``except Exception`` (a sweep over settings) caught it and went on to the next
    setting after a Ctrl-C."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str = "interrupted", exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
