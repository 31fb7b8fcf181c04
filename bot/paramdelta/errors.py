"""The project's errors: one base class, one exit code per class.

This is the only place that knows exit codes. Every error the bot raises on
purpose is a `ParamDeltaError`; the CLI prints its message on one line and
exits with its `exit_code`. `as_error` gives any other exception its class: a
failure of the file system is a LocalFileError, anything else is a bug (exit 1).
SIGINT and SIGTERM both raise `Interrupted` (exit 128 + the signal's number).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Tracebacks of bugs on stderr (the CLI's and each failing target's): read once, at import.
DEBUG = bool(os.environ.get("PARAMDELTA_DEBUG"))


class ParamDeltaError(Exception):
    """Base of every error the bot raises on purpose."""

    exit_code = 1


class UnexpectedError(ParamDeltaError):
    """An exception no code raised on purpose: a bug."""

    exit_code = 1


class UsageError(ParamDeltaError):
    """Bad arguments, settings or configuration (watchlist, template, paths)."""

    exit_code = 2


class CheckpointError(ParamDeltaError):
    """A checkpoint is malformed, unsafe (pickle) or incompatible with the others."""

    exit_code = 3


class HubError(ParamDeltaError):
    """The Hub refused or failed a request (missing/gated repo, bad revision, auth, 5xx)."""

    exit_code = 4


class NotFoundError(HubError):
    """The repo or file does not exist (not: exists, but is gated or private)."""


class MissingRevisionError(HubError):
    """The repo exists, but not the branch, tag or commit asked for."""


class PublishConflictError(ParamDeltaError):
    """The output repo changed while we were publishing; nothing was committed."""

    exit_code = 5


class GitHubError(ParamDeltaError):
    """The GitHub API refused or failed a request while reporting."""

    exit_code = 6


class LocalFileError(ParamDeltaError):
    """A local file-system operation failed (disk full, permission denied, missing path)."""

    exit_code = 7

    @classmethod
    def from_os_error(cls, e: OSError, path: object = None) -> LocalFileError:
        """One line naming the path: ``/out/x.safetensors: No space left on device``."""
        where = path if path is not None else (e.filename or "file system")
        return cls(f"{where}: {e.strerror or e}")


@contextmanager
def local_io(path: object) -> Iterator[None]:
    """Turn an OSError of the block into a LocalFileError naming ``path``."""
    try:
        yield
    except OSError as e:
        raise LocalFileError.from_os_error(e, path) from e


class MissingResultError(ParamDeltaError):
    """A planned target's merge job reported nothing (cancelled, timed out, killed)."""

    exit_code = 8


class CheckError(ParamDeltaError):
    """The pre-publish check failed (or, with --check on, could not run); nothing was published.

    ``details`` holds the check's numbers, for the result file and the report.
    """

    exit_code = 9

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details


class MissingLegsError(ParamDeltaError):
    """A fan-out's finish job found legs that never staged their shards; nothing was published."""

    exit_code = 10

    def __init__(self, message: str, legs: list[int]) -> None:
        super().__init__(message)
        self.legs = legs


def exit_codes() -> dict[int, str]:
    """Each exit code of an error class and what it means (its docstring's first line)."""
    codes: dict[int, str] = {}
    pending = list(ParamDeltaError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if "exit_code" in vars(cls) and cls.__doc__:
            codes.setdefault(cls.exit_code, cls.__doc__.splitlines()[0].rstrip("."))
    return dict(sorted(codes.items()))


def as_error(e: Exception) -> ParamDeltaError:
    """Any exception as one of ours, with its exit code and a one-line message."""
    if isinstance(e, ParamDeltaError):
        return e
    if isinstance(e, OSError):  # a local file the code did not name (network errors are typed)
        return LocalFileError.from_os_error(e)
    return UnexpectedError(
        f"unexpected {type(e).__name__}: {e} (a bug; set PARAMDELTA_DEBUG=1 for a traceback)"
    )


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (a cancelled job, a stopped container): stop and clean up.

    A KeyboardInterrupt, so that SIGTERM unwinds exactly as Ctrl-C does: workers
    stop, partial output is removed, scratch directories go.
    """

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted ({signal.Signals(self.signum).name})"


def interruption(e: KeyboardInterrupt) -> Interrupted:
    """A Ctrl-C that Python raised itself, or one of ours, as an Interrupted."""
    return e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
