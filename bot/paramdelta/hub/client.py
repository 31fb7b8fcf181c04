"""The only module that talks to the Hugging Face Hub (through huggingface_hub).

Every request has a timeout; idempotent reads are retried with exponential
backoff on 429/5xx, timeouts and dropped connections, honouring Retry-After.
Commits are never retried blindly: a failed commit is re-planned by the caller.
huggingface_hub's errors become the bot's typed errors (exit code 4, or 5 for
a commit whose parent moved) with one-line messages that never hold a token.

Settings come from the environment: HF_ENDPOINT (read per client, so tests and
the demo can point at a loopback Hub), HF_TOKEN or --token-file,
PARAMDELTA_HUB_TIMEOUT (seconds per network operation, default 60) and
PARAMDELTA_HUB_RETRIES (default 5).
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import CommitInfo, CommitOperation, CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OIDCError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from paramdelta.errors import HubError, ParamDeltaError, PublishConflictError, UsageError
from paramdelta.tokens import redact

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_EXCEPTIONS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
# What a request to the Hub may raise: HTTP and network errors (HfHubHTTPError is both),
# file errors of the cache, a failed trusted-publishing exchange.
HUB_FAILURES = (httpx2.HTTPError, OSError, OIDCError)
MAX_BACKOFF = 8.0

T = TypeVar("T")


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{name}={value!r}: expected a number") from None
    if number < 0:
        raise UsageError(f"{name}={value!r}: must not be negative")
    return number


@dataclass(frozen=True)
class RepoFiles:
    """A repo pinned to one commit: its sha and every file's size."""

    repo_id: str
    revision: str
    sha: str
    sizes: dict[str, int]
    card_data: dict[str, Any]


class Hub:
    """A Hub client for one endpoint and token (the token is never shown)."""

    def __init__(self, token: str | None = None, endpoint: str | None = None) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip(
            "/"
        )
        self._token = token
        self.timeout = _env_number("PARAMDELTA_HUB_TIMEOUT", 60.0)
        self.retries = int(_env_number("PARAMDELTA_HUB_RETRIES", 5))
        self.api = HfApi(endpoint=self.endpoint, token=token)
        self.sleep: Callable[[float], None] = time.sleep  # tests replace it
        _ensure_timeout(self.timeout)

    def __repr__(self) -> str:
        return f"Hub(endpoint={self.endpoint!r}, token={'***' if self._token else None})"

    # -- reads -------------------------------------------------------------------------

    def repo_files(self, repo_id: str, revision: str = "main", *, files: bool = True) -> RepoFiles:
        """Resolve ``revision`` to a commit sha and list the files there, in one request.

        ``files=False`` skips file sizes (cheaper for the Hub: what `plan` needs).
        """
        what = f"{repo_id}@{revision}"
        info = self._retry(
            what,
            lambda: self.api.model_info(
                repo_id, revision=revision, files_metadata=files, timeout=self.timeout
            ),
        )
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        card = info.card_data.to_dict() if info.card_data else {}
        return RepoFiles(repo_id, revision, info.sha or "", sizes, card)

    def read(self, repo_id: str, sha: str, path: str, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(repo_id, sha, path, offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, repo_id: str, sha: str, path: str, offset: int, view: memoryview) -> None:
        """Fill ``view`` with bytes [offset, offset+len) of a file, by HTTP Range requests.

        A dropped connection resumes from the last byte received.
        """
        url = self._file_url(repo_id, sha, path)
        what = f"{repo_id}@{sha[:7]}/{path}"
        filled = 0

        def attempt() -> None:
            nonlocal filled
            if filled == len(view):
                return
            first, last = offset + filled, offset + len(view) - 1
            headers = {**self._headers(), "Range": f"bytes={first}-{last}"}
            with get_session().stream("GET", url, headers=headers) as response:
                hf_raise_for_status(response)
                if response.status_code != 206 and not (first == 0 and response.status_code == 200):
                    raise HubError(f"{what}: the server ignored the byte range request")
                for chunk in response.iter_bytes():
                    take = min(len(chunk), len(view) - filled)
                    view[filled : filled + take] = chunk[:take]
                    filled += take
                    if filled == len(view):
                        break
            if filled != len(view):
                raise httpx2.RemoteProtocolError(f"{what}: connection closed early")

        self._retry(what, attempt)

    def download(self, repo_id: str, sha: str, paths: Sequence[str]) -> Path:
        """Fetch files into the HF cache (HF_HOME), pinned to ``sha``; returns the snapshot dir."""
        return Path(
            self._retry(
                f"{repo_id}@{sha[:7]}",
                lambda: self.api.snapshot_download(
                    repo_id, revision=sha, allow_patterns=list(paths), etag_timeout=self.timeout
                ),
            )
        )

    def read_small_file(self, repo_id: str, path: str, revision: str) -> bytes | None:
        """A small file's content, or None if the repo or file does not exist."""
        url = self._file_url(repo_id, revision, path)
        try:
            response = self._retry(f"{repo_id}@{revision}/{path}", lambda: self._get(url))
        except HubError as e:
            if _is_missing(e):
                return None
            raise
        return response.content

    def open_pr_refs(self, repo_id: str) -> list[str]:
        """The repo's pull request refs, newest first (``refs/pr/N``); none if no such repo."""
        try:
            refs = self._retry(
                repo_id, lambda: self.api.list_repo_refs(repo_id, include_pull_requests=True)
            )
        except HubError as e:
            if _is_missing(e):
                return []
            raise
        prs = sorted(refs.pull_requests or [], key=lambda r: int(r.ref.rsplit("/", 1)[-1]))
        return [r.ref for r in reversed(prs)]

    def newest_repo(self, author: str, pattern: str) -> tuple[str, datetime] | None:
        """The most recently created repo of ``author`` whose name matches the glob ``pattern``."""
        literal = pattern.split("*")[0].split("?")[0].split("[")[0]

        def newest() -> tuple[str, datetime] | None:
            found = self.api.list_models(
                author=author, search=literal or None, sort="created_at", limit=1000
            )
            for model in found:
                name = model.id.split("/", 1)[-1]
                if fnmatch.fnmatchcase(name, pattern) and model.created_at is not None:
                    return model.id, model.created_at
            return None

        return self._retry(f"{author}/{pattern}", newest)

    # -- writes ------------------------------------------------------------------------

    def create_repo(self, repo_id: str, *, private: bool) -> None:
        self._retry(repo_id, lambda: self.api.create_repo(repo_id, private=private, exist_ok=True))

    def preupload(
        self,
        repo_id: str,
        operations: Iterable[CommitOperationAdd],
        *,
        revision: str,
        create_pr: bool,
    ) -> None:
        """Upload LFS content ahead of the commit (huggingface_hub retries each request)."""
        try:
            self.api.preupload_lfs_files(
                repo_id, additions=operations, revision=revision, create_pr=create_pr
            )
        except (*HUB_FAILURES, ValueError) as e:  # LFS batch errors arrive as ValueError
            raise self._error(repo_id, e) from e

    def commit(
        self,
        repo_id: str,
        operations: Sequence[CommitOperation],
        *,
        message: str,
        description: str,
        parent: str | None,
        revision: str,
        create_pr: bool,
    ) -> CommitInfo:
        """One commit; not retried: a conflict means someone else moved the branch."""
        try:
            return self.api.create_commit(
                repo_id,
                operations=list(operations),
                commit_message=message,
                commit_description=description,
                parent_commit=parent,
                revision=revision,
                create_pr=create_pr,
            )
        except HfHubHTTPError as e:
            if e.response is not None and e.response.status_code in (409, 412):
                raise PublishConflictError(
                    f"output repo {repo_id} changed during publish ({revision} is no longer at"
                    f" {(parent or 'its start')[:7]}); nothing was committed; re-run to re-plan"
                ) from None
            raise self._error(repo_id, e) from e
        except (*HUB_FAILURES, ValueError) as e:  # LFS batch errors arrive as ValueError
            raise self._error(repo_id, e) from e

    # -- plumbing ----------------------------------------------------------------------

    def _file_url(self, repo_id: str, revision: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo_id, path, revision=revision, endpoint=self.endpoint)

    def _headers(self) -> dict[str, str]:
        return build_hf_headers(token=self._token)

    def _get(self, url: str) -> httpx2.Response:
        response = get_session().get(url, headers=self._headers())
        hf_raise_for_status(response)
        return response

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """Run an idempotent request; retry transient failures with backoff."""
        delay = 1.0
        for attempt in range(self.retries + 1):
            try:
                return call()
            except ParamDeltaError:
                raise
            except HUB_FAILURES as e:  # anything else is a bug and propagates as one
                wait = _retry_after(e, delay)
                if wait is None or attempt == self.retries:
                    raise self._error(what, e) from e
                self.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF)
        raise AssertionError("unreachable")

    def _error(self, what: str, e: Exception) -> ParamDeltaError:
        return HubError(redact(f"{what}: {_describe(e)}"))


def _is_missing(e: HubError) -> bool:
    """The repo or file does not exist (as opposed to: exists, but we may not see it)."""
    cause = e.__cause__
    missing = isinstance(cause, (RepositoryNotFoundError, RemoteEntryNotFoundError))
    return missing and not isinstance(cause, GatedRepoError)


def _retry_after(e: Exception, delay: float) -> float | None:
    """Seconds to wait before retrying ``e``, or None if it is not transient."""
    if isinstance(e, RETRY_EXCEPTIONS):
        return delay
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        if e.response.status_code not in RETRY_STATUS:
            return None
        header = e.response.headers.get("Retry-After")
        if header is not None:
            try:
                return min(max(float(header), 0.0), 300.0)
            except ValueError:
                return delay
        return delay
    return None


def _describe(e: Exception) -> str:
    if isinstance(e, GatedRepoError):
        return "gated repository: accept its conditions on the Hub with the account of your token"
    if isinstance(e, RepositoryNotFoundError):
        return "repository not found (or private, and the token cannot see it)"
    if isinstance(e, RevisionNotFoundError):
        return "revision not found"
    if isinstance(e, RemoteEntryNotFoundError):
        return "file not found"
    if isinstance(e, OIDCError):
        return f"trusted publishing failed: {e}"
    if isinstance(e, LocalEntryNotFoundError):
        return "download failed (network unreachable?)"
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status in (401, 403):
            return f"HTTP {status}: not authorised (check HF_TOKEN or --token-file)"
        detail = " ".join((e.server_message or "").split())[:300] or str(e).splitlines()[0]
        return f"HTTP {status}: {detail}"
    if isinstance(e, RETRY_EXCEPTIONS):
        return f"network error: {type(e).__name__}: {e}"
    return f"{type(e).__name__}: {e}"


def _ensure_timeout(seconds: float) -> None:
    """Give huggingface_hub's shared HTTP client a timeout (its default is none at all).

    Calls that take a ``timeout`` argument (model_info) are also given one
    explicitly, since an explicit None there would override this default.
    """
    get_session().timeout = httpx2.Timeout(seconds, connect=min(seconds, 30.0))
