"""The project's errors: one base class, one exit code per class.

This is the only place that knows exit codes. Every error the bot raises on
purpose is a `ParamDeltaError`; the CLI prints its message on one line and
exits with its `exit_code`. Anything else is a bug and exits 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class ParamDeltaError(Exception):
    """Base of every error the bot raises on purpose."""

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


class PublishConflictError(ParamDeltaError):
    """The output repo changed while we were publishing; nothing was committed."""

    exit_code = 5


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


class CheckError(ParamDeltaError):
    """The pre-publish check failed (or, with --check on, could not run); nothing was published.

    ``details`` holds the check's numbers, for the result file and the report.
    """

    exit_code = 8

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details


class GitHubError(ParamDeltaError):
    """The GitHub API refused or failed a request while reporting."""

    exit_code = 6


EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
