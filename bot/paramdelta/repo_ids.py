"""Hub repo ids and checkpoint specs (``org/name[@revision]``), checked without the Hub.

Standard library only: the watchlist, the commands and the Hub wing all parse
the same syntax, and `paramdelta --help` must not pay for huggingface_hub.
"""

from __future__ import annotations

import re

from paramdelta.errors import UsageError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(text: str) -> bool:
    return REPO_ID.fullmatch(text) is not None and ".." not in text


def check_repo_id(repo_id: str, option: str) -> str:
    """``repo_id`` if it is one, else a UsageError naming ``option``."""
    if not is_repo_id(repo_id):
        raise UsageError(f"{option} {repo_id!r}: expected a Hub repo id like org/name")
    return repo_id


def parse_spec(spec: str) -> tuple[str, str]:
    """``org/name@rev`` -> (repo id, revision); UsageError if it is not one."""
    repo_id, _, revision = spec.partition("@")
    if not is_repo_id(repo_id) or (spec.endswith("@") and not revision):
        raise UsageError(
            f"{spec!r} is neither a directory nor a Hub repo id like org/name[@revision]"
        )
    return repo_id, revision or "main"
