"""Xet storage: byte ranges through hf_xet download streams, and what hf_xet's failures mean.

A `--stream` merge reads Xet-backed files (those the tree listing gives a
`xetHash`) with `XetSession.new_download_stream_group(...).download_stream(file,
start, end)`: no `/resolve/` request per range, so no "resolvers" quota spent.
The read token is asked for once per repo revision (an "api" request) and
cached by huggingface_hub until a minute before it expires; a new token opens
a new stream group, so every token is fetched with the Hub token of the moment.

hf_xet raises builtin exceptions whose message names the kind of failure
(xet-core's `XetError`): network, rate limit, server and timeout failures are
transient and retried; authentication, missing objects, corrupt data and
internal errors are final, and become one-line Hub errors.
"""

from __future__ import annotations

import errno
import re
import threading
from typing import Any

from paramdelta.hub import hf_internals as hf

# The prefixes of xet-core's XetError messages (xet_pkg/src/error.rs).
_TRANSIENT = re.compile(r"^(Network error|Rate limited|Server error|Timeout): ")
_FINAL = re.compile(
    r"^(Authentication error|Not found|Data integrity error|Configuration error|I/O error"
    r"|Internal error|Task error|Previous task error|Operation cancelled|User cancelled"
    r"|Already completed|Invalid task ID|Wrong runtime mode): "
)


def is_xet_failure(e: BaseException) -> bool:
    """Whether hf_xet raised this (its messages say which XetError it was)."""
    if type(e).__module__ == "hf_xet" or type(e).__name__.startswith("Xet"):
        return True
    message = str(e)
    return bool(_TRANSIENT.match(message) or _FINAL.match(message))


# An OS error that xet-core wraps in another kind (its cache database's, say): Rust's Debug form.
_OS_ERROR = re.compile(r'Os \{ code: (\d+), kind: \w+, message: "([^"]*)" \}')
# The errors of a full, read-only or unusable local disk (what LocalFileError stands for).
_LOCAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def local_failure(e: BaseException) -> str | None:
    """What a Xet failure of the local disk says; None for a failure of anything else.

    hf_xet's own I/O errors, and an OS error of the local disk inside another kind: a full
    disk under its chunk cache surfaces as an "Internal error" of its dedup database.
    """
    message = str(e)
    if message.startswith("I/O error: "):
        return message
    found = _OS_ERROR.search(message)
    if found and int(found.group(1)) in _LOCAL_ERRNOS:
        return found.group(2)
    if "Storage(PreviousIo)" in message:  # the database refuses writes after a failed one
        return "a write to the local disk failed (is it full?)"
    return None


def is_transient(e: BaseException) -> bool:
    """A Xet failure worth retrying: the network, the server's load, a timeout."""
    message = str(e)
    nested = message.removeprefix("Task error: ").removeprefix("Previous task error: ")
    return bool(_TRANSIENT.match(message) or _TRANSIENT.match(nested))


def describe(e: BaseException) -> str:
    """One line for a Xet failure (its message without the traceback's lines)."""
    first = " ".join(str(e).split())[:300]
    kind = "transient, retried" if is_transient(e) else "not retried"
    return f"Xet storage failed ({kind}): {first}"


class XetReader:
    """Byte ranges of one repo revision's Xet-backed files."""

    def __init__(
        self, endpoint: str, repo_id: str, sha: str, headers: Any, xet_hashes: dict[str, str]
    ) -> None:
        self.refresh_route = hf.xet_connection_info_refresh_url(
            token_type=hf.XetTokenType.READ,
            repo_id=repo_id,
            repo_type="model",
            revision=sha,
            endpoint=endpoint,
        )
        self.label = f"{repo_id}@{sha[:7]}"
        self.headers = headers  # () -> the Hub headers now (the token may have been renewed)
        self.xet_hashes = xet_hashes
        self._lock = threading.Lock()
        self._group: Any = None
        self._token: str | None = None

    def has(self, path: str) -> bool:
        return path in self.xet_hashes

    def read_into(self, path: str, size: int, offset: int, view: memoryview) -> int:
        """Fill ``view`` from ``offset``; returns the bytes filled (less if the stream broke)."""
        from hf_xet import XetFileInfo

        file = XetFileInfo(self.xet_hashes[path], size)
        filled = 0
        for chunk in self._stream_group().download_stream(file, offset, offset + len(view)):
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return filled

    def _stream_group(self) -> Any:
        headers = self.headers()
        data = hf.XetFileData(file_hash="", refresh_route=self.refresh_route)
        info = hf.refresh_xet_connection_info(file_data=data, headers=headers)
        with self._lock:
            if self._group is None or info.access_token != self._token:
                self._group = hf.get_xet_session().new_download_stream_group(
                    endpoint=info.endpoint,
                    token=info.access_token,
                    token_expiry_unix_secs=info.expiration_unix_epoch,
                    custom_headers=hf.xet_headers_without_auth(headers),
                )
                self._token = info.access_token
            return self._group

    def close(self) -> None:
        """Let go of the stream group (hf_xet's local CAS stays locked while one is open)."""
        with self._lock:
            self._group = None
