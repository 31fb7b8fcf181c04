"""The only module that talks to the Hugging Face Hub (through huggingface_hub).

Every request has a timeout, set through huggingface_hub's client factory so that
it survives the shared client being replaced (after a connection error, on fork).
huggingface_hub has one shared client per process, so the factory is installed
once per process, by the first Hub: one timeout and one rate-limit pacer for
every Hub and for huggingface_hub's own requests (`client_settings`).

Large files move through Xet storage (hf_xet), as huggingface_hub moves them:
uploads by path, downloads into the cache, and for `--stream` byte ranges from
hf_xet download streams (`paramdelta.hub.xet`); other files by HTTP.

Retries follow one policy, `http_backoff`'s: 429/5xx, timeouts and dropped
connections are retried after 1, 2, 4, 8, 8... seconds, or as long as a 429's
RateLimit or Retry-After header asks. huggingface_hub applies it itself to its
listings, downloads and uploads (snapshot_download, preupload_lfs_files,
list_models) and, through `http_backoff`/`http_stream_backoff`, to the statuses
of the bot's ranged and small-file GETs and of the Xet token requests; those are
not retried again, except for hf_xet's transient failures and for a connection
dropped while the bot reads a body (a ranged read resumes from the last byte
received). The calls huggingface_hub does not retry (model_info, whoami, the
discussions API, create_repo) get the same policy from `Hub._retry`, which reads
the RateLimit headers with huggingface_hub's `parse_ratelimit_headers`; a spent
quota is waited out by `paramdelta.hub.rate_limits`, which also keeps every
request out of a spent quota. Commits are never retried blindly: a failed commit
is re-planned by the caller.

Tokens: HF_TOKEN, --token-file or the saved login; or, with HF_OIDC_RESOURCE
(trusted publishing), a short-lived token that huggingface_hub exchanges for
and renews before it expires, fetched per request. Every token sent is
registered for redaction.

huggingface_hub's and hf_xet's errors become the bot's typed errors (exit code
4, or 5 for a commit whose parent moved) with one-line messages that never hold
a token; a repo or file that does not exist is a NotFoundError (a gated one is
not), a revision that does not exist a MissingRevisionError; a failure of the
local disk (a full HF cache, an unreadable upload) is a LocalFileError (exit
code 7) naming the path.

Settings come from the environment: HF_ENDPOINT (read per client, so tests and
the demo can point at a loopback Hub) and PARAMDELTA_HUB_RETRIES (retries of the
bot's own requests, default 5; huggingface_hub's internal retries keep its own
count), read by each Hub; PARAMDELTA_HUB_TIMEOUT (seconds per network operation,
default 60) and PARAMDELTA_HUB_MAX_RATE_WAIT (the longest wait for a rate-limit
window to reset, default 900 s), read once per process, with the client factory.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

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
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import (
    build_hf_headers,
    hf_raise_for_status,
    http_stream_backoff,
    parse_ratelimit_headers,
    set_client_factory,
)

from paramdelta.errors import (
    HubError,
    LocalFileError,
    MissingRevisionError,
    NotFoundError,
    ParamDeltaError,
    PublishConflictError,
    UsageError,
)
from paramdelta.hub import content_ids, xet
from paramdelta.hub.hf_internals import default_client_factory
from paramdelta.hub.rate_limits import Pacer
from paramdelta.tokens import oidc_resource, redact, register, shorten

# The one retry policy, huggingface_hub's defaults spelled out: handed to http_backoff
# for the GETs the bot builds, applied by Hub._retry to the HfApi calls it cannot wrap.
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
RETRY_EXCEPTIONS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
FIRST_WAIT = 1.0
MAX_WAIT = 8.0
# What a request to the Hub may raise: HTTP and network errors (HfHubHTTPError is both),
# file errors (of the cache, of a file to upload), a failed trusted-publishing exchange.
HUB_FAILURES = (httpx2.HTTPError, OSError, OIDCError)
UPLOAD_FAILURES = (*HUB_FAILURES, ValueError)  # LFS batch errors arrive as ValueError

SMALL_FILE_LIMIT = 1 << 20  # read_small_file's default cap (a lineage record is ~2 KB)

T = TypeVar("T")
# What huggingface_hub already retries in a call (Hub._retry retries the rest).
Handled = Literal["nothing", "statuses", "http"]


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


def default_endpoint() -> str:
    """The Hub's URL: HF_ENDPOINT (read now, not at import), else huggingface_hub's."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class ClientSettings:
    """What huggingface_hub's shared client is made with: one of each per process."""

    timeout: float  # PARAMDELTA_HUB_TIMEOUT
    max_rate_wait: float  # PARAMDELTA_HUB_MAX_RATE_WAIT
    pacer: Pacer  # what each quota has left, as every answer in the process said


_settings: ClientSettings | None = None
_settings_lock = threading.Lock()


def client_settings() -> ClientSettings:
    """The process's settings: read, and the client factory installed, on first use.

    huggingface_hub shares one client per process: its timeout and its pacer are the
    same for every Hub (not those of the last one built).
    """
    global _settings
    with _settings_lock:
        if _settings is None:
            timeout = _env_number("PARAMDELTA_HUB_TIMEOUT", 60.0)
            max_rate_wait = _env_number("PARAMDELTA_HUB_MAX_RATE_WAIT", 900.0)
            # time.sleep looked up at each wait: a test that replaces it replaces this one too.
            pacer = Pacer(max_rate_wait, sleep=lambda seconds: time.sleep(seconds))
            _install_client(timeout, pacer)
            _settings = ClientSettings(timeout, max_rate_wait, pacer)
        return _settings


def reset_client() -> None:
    """Forget the process's settings and pacer, and give huggingface_hub its default factory back.

    The next Hub reads PARAMDELTA_HUB_TIMEOUT and PARAMDELTA_HUB_MAX_RATE_WAIT again and
    installs a new factory (tests that change them, or start with no quota known, do this).
    """
    global _settings
    with _settings_lock:
        _settings = None
        set_client_factory(default_client_factory)


@dataclass(frozen=True)
class RepoFiles:
    """A repo pinned to one commit: its sha, every file's size and content id, its card data.

    A content id (`paramdelta.hub.content_ids`) names a file's bytes whatever commit
    holds them: ``sha256:<hex>`` for an LFS or Xet file, else ``blob:<git blob id>``.
    Empty when listed without file metadata.
    """

    repo_id: str
    revision: str
    sha: str
    sizes: dict[str, int]
    card_data: dict[str, Any]
    content: dict[str, str] = field(default_factory=dict)


class Hub:
    """A Hub client for one endpoint and token (the token is never shown).

    ``token``: a token; True to fetch it per request (trusted publishing renews it);
    None for huggingface_hub's default (HF_TOKEN or the saved login, if allowed).
    """

    def __init__(self, token: str | bool | None = None, endpoint: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/") if endpoint else default_endpoint()
        # Redacted from everything the bot writes (a renewed token: as it is sent).
        self._token = register(token) if isinstance(token, str) else token
        self._account: str | None = None  # whoami, once asked
        settings = client_settings()  # the process's (the first Hub installs the client)
        self.timeout = settings.timeout
        self.max_rate_wait = settings.max_rate_wait
        self.pacer = settings.pacer  # shared: the quotas are the account's, not this Hub's
        self.retries = int(_env_number("PARAMDELTA_HUB_RETRIES", 5))
        self.api = HfApi(endpoint=self.endpoint, token=token)
        # The waits of Hub._retry (tests replace it); http_backoff and the pacer wait
        # with time.sleep.
        self.sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"Hub(endpoint={self.endpoint!r}, token={'***' if self._token else None})"

    # -- reads -------------------------------------------------------------------------

    def repo_files(self, repo_id: str, revision: str = "main", *, files: bool = True) -> RepoFiles:
        """Resolve ``revision`` to a commit sha and list the files there, in one request.

        ``files=False`` skips file sizes and content ids (a lighter request, for existence).
        """
        info = self._retry(
            f"{repo_id}@{revision}",
            lambda: self.api.model_info(repo_id, revision=revision, files_metadata=files),
        )
        siblings = info.siblings or []
        sizes = {s.rfilename: s.size or 0 for s in siblings}
        card = info.card_data.to_dict() if info.card_data else {}
        content = {s.rfilename: cid for s in siblings if (cid := content_ids.listed(s))}
        return RepoFiles(repo_id, revision, info.sha or "", sizes, card, content)

    def find_repo_files(self, repo_id: str, revision: str) -> RepoFiles | None:
        """`repo_files` with file metadata, or None if the repo or the revision does not exist."""
        try:
            return self.repo_files(repo_id, revision)
        except (NotFoundError, MissingRevisionError):
            return None

    def read(self, repo_id: str, sha: str, path: str, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(repo_id, sha, path, offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, repo_id: str, sha: str, path: str, offset: int, view: memoryview) -> None:
        """Fill ``view`` with bytes [offset, offset+len) of a file, by HTTP Range requests.

        Sent with ``Accept-Encoding: identity``: a CDN may ignore the range of a request
        that accepts gzip and answer 200 with the whole file, which is then read up to
        the range (slow, but right). http_stream_backoff retries the statuses; a dropped
        connection (before or during the body) resumes from the last byte received.
        """
        url = self._file_url(repo_id, sha, path)
        what = f"{repo_id}@{sha[:7]}/{path}"
        filled = 0

        def attempt() -> None:
            nonlocal filled
            first, last = offset + filled, offset + len(view) - 1
            headers = {
                **self._headers(),
                "Range": f"bytes={first}-{last}",
                "Accept-Encoding": "identity",
            }
            # retry_on_exceptions=(): an error raised while we read the body must reach
            # Hub._retry, not the backoff generator (which cannot yield a second response).
            backoff = {**self._backoff, "retry_on_exceptions": ()}
            with http_stream_backoff("GET", url, headers=headers, **backoff) as response:
                hf_raise_for_status(response)
                if response.status_code not in (200, 206):
                    raise HubError(f"{what}: unexpected HTTP {response.status_code} to a range")
                skip = first if response.status_code == 200 else 0  # the whole file came
                for chunk in response.iter_bytes():
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    data = memoryview(chunk)[skip:]
                    skip = 0
                    take = min(len(data), len(view) - filled)
                    view[filled : filled + take] = data[:take]
                    filled += take
                    if filled == len(view):
                        break
            if filled != len(view):
                raise httpx2.RemoteProtocolError(f"{what}: connection closed early")

        if view:  # an empty range is not a valid Range header
            self._retry(what, attempt, handled="statuses")

    def xet_reader(self, repo_id: str, sha: str) -> xet.XetReader:
        """Stream access to the Xet-backed files of a revision (their hashes: one listing)."""
        what = f"{repo_id}@{sha[:7]}"
        with self._failures(what):  # pages are fetched (and retried) lazily
            hashes = {
                entry.path: entry.xet_hash
                for entry in self.api.list_repo_tree(repo_id, revision=sha, recursive=True)
                if isinstance(entry, RepoFile) and entry.xet_hash
            }
        return xet.XetReader(self.endpoint, repo_id, sha, self._headers, hashes)

    def read_xet(
        self, reader: xet.XetReader, path: str, size: int, offset: int, view: memoryview
    ) -> None:
        """Fill ``view`` from a Xet download stream; a broken stream resumes where it broke."""
        what = f"{reader.label}/{path}"
        filled = 0

        def attempt() -> None:
            nonlocal filled
            filled += reader.read_into(path, size, offset + filled, view[filled:])
            if filled != len(view):
                raise httpx2.RemoteProtocolError(f"{path}: Xet stream ended early")

        if view:
            self._retry(what, attempt, handled="statuses")

    def download(self, repo_id: str, sha: str, paths: Sequence[str]) -> Path:
        """Fetch files into the HF cache (HF_HOME), pinned to ``sha``; returns the snapshot dir."""
        return Path(
            self._retry(
                f"{repo_id}@{sha[:7]}",
                lambda: self.api.snapshot_download(
                    repo_id, revision=sha, allow_patterns=list(paths), etag_timeout=self.timeout
                ),
                handled="http",  # snapshot_download retries HTTP itself; hf_xet's failures: here
                where=constants.HF_HUB_CACHE,
            )
        )

    def read_small_file(
        self, repo_id: str, path: str, revision: str, *, limit: int = SMALL_FILE_LIMIT
    ) -> bytes | None:
        """A small file's content, or None if the repo or file does not exist.

        Read as a stream and refused beyond ``limit`` bytes, whatever the repo holds.
        """
        url = self._file_url(repo_id, revision, path)
        what = f"{repo_id}@{revision}/{path}"

        def attempt() -> bytes:
            backoff = {**self._backoff, "retry_on_exceptions": ()}  # see read_into
            with http_stream_backoff("GET", url, headers=self._headers(), **backoff) as response:
                hf_raise_for_status(response)
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise HubError(f"{what}: larger than {limit} bytes")
                return bytes(data)

        try:
            return self._retry(what, attempt, handled="statuses")
        except NotFoundError:
            return None

    def whoami(self) -> str | None:
        """The account of the token (asked once); None without a token."""
        if self._token is None:
            return None
        if self._account is None:
            self._account = str(self._retry("whoami", lambda: self.api.whoami())["name"])
        return self._account

    def own_open_prs(self, repo_id: str) -> list[int]:
        """The numbers of the open pull requests that this token's account opened, newest first.

        Anyone may open a pull request on a public repo: only the bot's own are its work.
        Without a token, none (the account is unknown); none if there is no such repo.
        """
        me = self.whoami()
        if me is None:
            return []

        def listed() -> list[int]:
            found = self.api.get_repo_discussions(
                repo_id, author=me, discussion_type="pull_request", discussion_status="open"
            )
            # Filtered again: the answer is the Hub's, the decision ours.
            return [
                d.num for d in found if d.is_pull_request and d.author == me and d.status == "open"
            ]

        try:
            return sorted(self._retry(repo_id, listed), reverse=True)
        except NotFoundError:
            return []

    def close_pr(self, repo_id: str, number: int, comment: str) -> None:
        """Close a pull request with a comment (one request; closing twice is harmless)."""
        self._retry(
            f"{repo_id}#{number}",
            lambda: self.api.change_discussion_status(repo_id, number, "closed", comment=comment),
        )

    def author_repos(self, author: str) -> list[str]:
        """The ids of ``author``'s model repos that the token can see (one listing, up to
        1000); none if the listing fails: it only ever adds a hint to another error."""
        try:
            with self._failures(author):
                return [m.id for m in self.api.list_models(author=author, limit=1000)]
        except HubError:
            return []

    def newest_repo(self, author: str, pattern: str) -> tuple[str, datetime] | None:
        """The most recently created repo of ``author`` whose name matches the glob ``pattern``."""
        literal = pattern.split("*")[0].split("?")[0].split("[")[0]
        with self._failures(f"{author}/{pattern}"):  # pages are fetched (and retried) lazily
            for model in self.api.list_models(
                author=author, search=literal or None, sort="created_at", limit=1000
            ):
                name = model.id.split("/", 1)[-1]
                if fnmatch.fnmatchcase(name, pattern) and model.created_at is not None:
                    return model.id, model.created_at
        return None

    # -- writes ------------------------------------------------------------------------

    def create_repo(self, repo_id: str, *, private: bool) -> bool:
        """Create the repo unless it exists; whether this call created it (a failed run
        removes a repo it created, and only such a one: `paramdelta.hub.publisher`)."""

        def create() -> bool:
            try:
                self.api.create_repo(repo_id, private=private)
                return True
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else None
                if status == 409:  # it exists
                    return False
                if status in (401, 402, 403):
                    # A token that may not create repos (trusted publishing) may still write
                    # to this one: exist_ok looks it up, and raises this error if it is not there.
                    self.api.create_repo(repo_id, private=private, exist_ok=True)
                    return False
                raise

        return self._retry(repo_id, create)

    def delete_repo(self, repo_id: str) -> None:
        """Delete a repo (one that is not there is not an error)."""
        self._retry(repo_id, lambda: self.api.delete_repo(repo_id, missing_ok=True))

    def preupload(
        self,
        repo_id: str,
        operations: Iterable[CommitOperationAdd],
        *,
        revision: str,
        create_pr: bool,
    ) -> None:
        """Upload large files ahead of the commit, through Xet when the operations hold paths.

        huggingface_hub retries each HTTP request; a transient hf_xet failure retries the
        upload (what is already stored is deduplicated, not sent again).
        """
        additions = list(operations)
        self._retry(
            repo_id,
            lambda: self.api.preupload_lfs_files(
                repo_id, additions=additions, revision=revision, create_pr=create_pr
            ),
            handled="http",
            caught=UPLOAD_FAILURES,
        )

    def branches(self, repo_id: str) -> dict[str, str]:
        """Every branch of a repo and the commit it points at."""
        refs = self._retry(repo_id, lambda: self.api.list_repo_refs(repo_id))
        return {branch.name: branch.target_commit for branch in refs.branches}

    def create_branch(self, repo_id: str, branch: str, revision: str) -> None:
        """Create ``branch`` at ``revision``; one that exists already is kept as it is."""
        self._retry(
            f"{repo_id}@{branch}",
            lambda: self.api.create_branch(
                repo_id, branch=branch, revision=revision, exist_ok=True
            ),
        )

    def delete_branch(self, repo_id: str, branch: str) -> None:
        """Delete ``branch``; one that is gone already is no failure."""
        with suppress(NotFoundError, MissingRevisionError):
            self._retry(
                f"{repo_id}@{branch}", lambda: self.api.delete_branch(repo_id, branch=branch)
            )

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
        with self._failures(repo_id, caught=UPLOAD_FAILURES):
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
                        f"output repo {repo_id} changed during publish ({revision} is no longer"
                        f" at {(parent or 'its start')[:7]}); nothing was committed; re-run to"
                        " re-plan"
                    ) from None
                raise

    # -- plumbing ----------------------------------------------------------------------

    def _file_url(self, repo_id: str, revision: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo_id, path, revision=revision, endpoint=self.endpoint)

    def _headers(self) -> dict[str, str]:
        """Headers for a request sent now: with trusted publishing, the token of the moment."""
        return build_hf_headers(token=self._token)

    @property
    def _backoff(self) -> dict[str, Any]:
        """The retry policy, as http_backoff's arguments."""
        return {
            "max_retries": self.retries,
            "base_wait_time": FIRST_WAIT,
            "max_wait_time": MAX_WAIT,
            "retry_on_status_codes": RETRY_STATUS,
            "retry_on_exceptions": RETRY_EXCEPTIONS,
        }

    def _retry(
        self,
        what: str,
        call: Callable[[], T],
        *,
        handled: Handled = "nothing",
        where: str | None = None,
        caught: tuple[type[Exception], ...] = HUB_FAILURES,
    ) -> T:
        """Run an idempotent call under the retry policy, where huggingface_hub does not.

        ``handled``: what huggingface_hub already retries in this call. "nothing" (an HfApi
        call that sends one request: model_info, create_repo...): its statuses and network
        errors are retried here. "statuses": http_backoff or http_stream_backoff retried
        the statuses (429 as its RateLimit or Retry-After header asks, 5xx); a network
        error raised while the call reads a body is retried here. "http": huggingface_hub
        retries every request (snapshot_download, preupload_lfs_files); only hf_xet's
        transient failures are retried here. hf_xet's are retried whatever ``handled``.
        """
        backoff = FIRST_WAIT
        with self._failures(what, where=where, caught=caught):
            for _ in range(self.retries):
                try:
                    return call()
                except Exception as e:
                    if xet.is_xet_failure(e):
                        wait = backoff if xet.is_transient(e) else None
                    elif handled != "http" and isinstance(e, RETRY_EXCEPTIONS):
                        wait = backoff
                    elif handled == "nothing" and isinstance(e, HfHubHTTPError):
                        wait = _status_wait(e, backoff, self.max_rate_wait)
                    else:
                        wait = None
                    if wait is None:
                        raise
                if wait:
                    self.sleep(wait)
                backoff = min(2 * backoff, MAX_WAIT)
            return call()

    @contextmanager
    def _failures(
        self,
        what: str,
        *,
        where: str | None = None,
        caught: tuple[type[Exception], ...] = HUB_FAILURES,
    ) -> Iterator[None]:
        """Raise what a Hub call raises as the bot's error; ``where``: the local files it writes."""
        try:
            yield
        except ParamDeltaError:
            raise
        except Exception as e:  # anything else is a bug and propagates as one
            if xet.is_xet_failure(e):
                if (local := xet.local_failure(e)) is not None:  # the local disk
                    raise LocalFileError(redact(f"{where or what}: {local}")) from e
                raise HubError(redact(f"{what}: {xet.describe(e)}")) from e
            if not isinstance(e, caught):
                raise
            if _is_local(e):
                raise LocalFileError.from_os_error(e, e.filename or where) from e
            raise _error_class(e)(redact(f"{what}: {_describe(e)}")) from e


def _error_class(e: Exception) -> type[HubError]:
    """A repo or file that does not exist, as opposed to one we may not see; a revision
    that does not exist; any other failure."""
    if isinstance(e, GatedRepoError):
        return HubError
    if isinstance(e, (RepositoryNotFoundError, RemoteEntryNotFoundError)):
        return NotFoundError
    if isinstance(e, RevisionNotFoundError):
        return MissingRevisionError
    return HubError


def _is_local(e: Exception) -> TypeGuard[OSError]:
    """A failure of this machine's files (disk full, permission denied), not of the Hub.

    The operating system sets errno; huggingface_hub's own OSErrors (HTTP errors, a
    file missing from the cache when offline, a short download) carry none.
    """
    network = (httpx2.HTTPError, ConnectionError, TimeoutError)
    return isinstance(e, OSError) and e.errno is not None and not isinstance(e, network)


def _status_wait(e: HfHubHTTPError, backoff: float, max_rate_wait: float) -> float | None:
    """Seconds to wait before retrying a call that failed with ``e``, as http_backoff would
    (for the calls it does not retry); None if it is not to be retried.

    A 429 for a spent quota is retried at once: the pacer, which has read the same
    RateLimit header, holds the request until the window resets (and logs it). A spent
    quota or a Retry-After beyond PARAMDELTA_HUB_MAX_RATE_WAIT is not retried.
    """
    response = e.response
    if response is None or response.status_code not in RETRY_STATUS:
        return None
    limit = parse_ratelimit_headers(response.headers)
    if response.status_code == 429 and limit is not None and limit.remaining == 0:
        return 0.0 if limit.reset_in_seconds <= max_rate_wait else None
    after = response.headers.get("Retry-After", "").strip()  # seconds; an HTTP date is ignored
    if not after.isdigit():
        return backoff
    return float(after) + 1.0 if int(after) <= max_rate_wait else None  # http_backoff's margin


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
    if isinstance(e, HfHubHTTPError) and e.response is not None and _is_exchange(e.response):
        detail = shorten(" ".join((e.server_message or "").split()), 300)
        resource = oidc_resource() or ""
        return (
            f"trusted publishing (HF_OIDC_RESOURCE={resource}): the Hub refused the token"
            f" exchange (HTTP {e.response.status_code}: {detail or 'no reason given'})"
        )
    if isinstance(e, LocalEntryNotFoundError):
        return "download failed (network unreachable?)"
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status in (401, 403):
            return f"HTTP {status}: not authorised (check HF_TOKEN or --token-file)"
        # Redacted before it is cut: a token straddling the cut would leak its first part.
        detail = shorten(" ".join((e.server_message or "").split()), 300)
        detail = detail or redact(str(e).splitlines()[0])
        return f"HTTP {status}: {detail}"
    if isinstance(e, RETRY_EXCEPTIONS):
        return f"network error: {type(e).__name__}: {e}"
    return f"{type(e).__name__}: {e}"


def _is_exchange(response: httpx2.Response) -> bool:
    """An answer of the trusted-publishing token exchange (huggingface_hub's `_oidc`)."""
    return response.request.url.path.endswith("/oauth/token")


def _install_client(seconds: float, pacer: Pacer) -> None:
    """Make huggingface_hub's shared client, and every one it replaces it with, time out,
    pace itself within the rate limits and register the tokens it sends (`client_settings`).

    Its default client has no timeout at all; the factory survives `close_session`,
    which huggingface_hub calls after a connection error and on fork.
    """
    timeout = httpx2.Timeout(seconds, connect=min(seconds, 30.0))
    set_client_factory(functools.partial(_client_with_hooks, timeout, pacer))


def _client_with_hooks(timeout: httpx2.Timeout, pacer: Pacer) -> httpx2.Client:
    """huggingface_hub's default client (its event hooks, redirects) with ``timeout``.

    The request hook also bounds the requests that huggingface_hub sends with an explicit
    ``timeout=None`` (model_info, its paginated listings), which override a client default.
    """

    def bound(request: httpx2.Request) -> None:
        if all(value is None for value in request.extensions.get("timeout", {}).values()):
            request.extensions["timeout"] = timeout.as_dict()

    client = default_client_factory()
    client.timeout = timeout
    hooks = client.event_hooks
    client.event_hooks = {
        **hooks,
        "request": [*hooks.get("request", []), bound, _register_token, pacer.before],
        "response": [*hooks.get("response", []), pacer.after],
    }
    return client


def _register_token(request: httpx2.Request) -> None:
    """Every token sent is redacted from what the bot prints (trusted publishing renews them)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        register(value)
