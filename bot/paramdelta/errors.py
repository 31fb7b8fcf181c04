"""The project's errors: one base class, one exit code per class.

This is the only place that knows exit codes. Every error the bot raises on
purpose is a `ParamDeltaError`; the CLI prints its message on one line and
exits with its `exit_code`. Anything else is a bug and exits 1.
"""

from __future__ import annotations


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


class GitHubError(ParamDeltaError):
    """The GitHub API refused or failed a request while reporting."""

    exit_code = 6


EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
