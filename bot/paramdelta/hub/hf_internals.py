"""The one door to huggingface_hub's internals: written for huggingface_hub 2.4.

Everything here is private to huggingface_hub: any release may move or change it.
Each is used because no public API does the same job, and the rest of the bot
imports them from here only:

- ``utils._http.default_client_factory``: the shared client huggingface_hub makes by
  default (its request hook, redirects followed). `paramdelta.hub.client` installs a
  factory (with the public `set_client_factory`) that starts from it and adds a
  timeout, the rate-limit pacer and token registration; without it, the default's
  hooks would have to be copied.
- ``utils._xet``: ``XetFileData``, ``XetTokenType``, ``get_xet_session``,
  ``refresh_xet_connection_info``, ``xet_connection_info_refresh_url``,
  ``xet_headers_without_auth``: `--stream` reads byte ranges through hf_xet download
  streams (`paramdelta.hub.xet`), which need the Xet read token that huggingface_hub
  fetches and caches, and its process-wide XetSession; there is no public way to ask
  for either.
- ``utils._shared_blobs.shared_blobs_dir``: where the HF cache keeps the Xet files
  shared between repos (``<cache>/blobs``); `paramdelta.hub.cache` accepts a cached
  input that links there, and nowhere else.
- ``CommitOperationAdd._is_uploaded``: whether `preupload_lfs_files` stored an
  operation's file as a large file (`is_uploaded`); the publisher deletes a shard once
  it is uploaded, and uploads the ones that are not one by one.

pyproject.toml pins huggingface_hub to the minor these were written for (2.4). An
upgrade that moves one fails at import, with an error naming what moved (`check`),
not with an AttributeError in the middle of a merge; tests/hub/test_hf_internals.py
runs the same check.
"""

from __future__ import annotations

import importlib

import huggingface_hub
from huggingface_hub import CommitOperationAdd

WRITTEN_FOR = "2.4"

# (module, name): each internal that the bot uses, where huggingface_hub 2.4 keeps it.
# A dotted name is an attribute (a dataclass field with a default is one of its class).
NEEDED: tuple[tuple[str, str], ...] = (
    ("huggingface_hub.utils._http", "default_client_factory"),
    ("huggingface_hub.utils._xet", "XetFileData"),
    ("huggingface_hub.utils._xet", "XetTokenType.READ"),
    ("huggingface_hub.utils._xet", "get_xet_session"),
    ("huggingface_hub.utils._xet", "refresh_xet_connection_info"),
    ("huggingface_hub.utils._xet", "xet_connection_info_refresh_url"),
    ("huggingface_hub.utils._xet", "xet_headers_without_auth"),
    ("huggingface_hub.utils._shared_blobs", "shared_blobs_dir"),
    ("huggingface_hub", "CommitOperationAdd._is_uploaded"),
)


class InternalsMovedError(ImportError):
    """An upgrade of huggingface_hub moved (or removed) an internal that the bot uses."""


def installed_version() -> str:
    """huggingface_hub's version, major.minor (as the pin and WRITTEN_FOR are written)."""
    return ".".join(huggingface_hub.__version__.split(".")[:2])


def missing() -> list[str]:
    """The internals in NEEDED that the installed huggingface_hub does not have, dotted."""
    gone = []
    for module_name, name in NEEDED:
        try:
            found: object = importlib.import_module(module_name)
            for part in name.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            gone.append(f"{module_name}.{name}")
    return gone


def check() -> None:
    """Raise InternalsMovedError, naming what moved, unless every internal is where it was."""
    gone = missing()
    if gone:
        raise InternalsMovedError(
            f"huggingface_hub {installed_version()} moved {', '.join(gone)}; paramdelta's"
            f" hub/hf_internals.py was written for {WRITTEN_FOR}"
        )


check()  # before the imports below: a moved name is named, with the version

from huggingface_hub.utils._http import default_client_factory  # noqa: E402
from huggingface_hub.utils._shared_blobs import shared_blobs_dir  # noqa: E402
from huggingface_hub.utils._xet import (  # noqa: E402
    XetFileData,
    XetTokenType,
    get_xet_session,
    refresh_xet_connection_info,
    xet_connection_info_refresh_url,
    xet_headers_without_auth,
)

__all__ = [
    "WRITTEN_FOR",
    "InternalsMovedError",
    "XetFileData",
    "XetTokenType",
    "check",
    "default_client_factory",
    "get_xet_session",
    "is_uploaded",
    "refresh_xet_connection_info",
    "shared_blobs_dir",
    "xet_connection_info_refresh_url",
    "xet_headers_without_auth",
]


def is_uploaded(operation: CommitOperationAdd) -> bool:
    """Whether `preupload_lfs_files` stored the operation's file as a large file (LFS or Xet).

    A small file (regular upload mode) is not: it travels inside the commit itself.
    """
    return bool(operation._is_uploaded)
