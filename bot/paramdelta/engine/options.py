"""Merge settings: the options a merge takes, their defaults, and size parsing.

Kept free of torch so that commands which never compute (plan, validate,
report) start fast.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from paramdelta.errors import UsageError

DEFAULT_SHARD_SIZE = 5_000_000_000
DEFAULT_MAX_MEMORY = 256 * 2**20

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


class MergeOptions(NamedTuple):
    alpha: float = 1.0
    dtype: str = "auto"
    vocab_policy: str = "error"
    shard_size: int = DEFAULT_SHARD_SIZE
    device: str = "auto"
    max_memory: int = DEFAULT_MAX_MEMORY
    progress: bool = True


def parse_size(text: str, option: str) -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536_870_912 (the Hub's and transformers' units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text.upper())
    if not match or float(match[1]) <= 0:
        raise UsageError(f"{option}: expected a size like 5GB or 512MiB, not {text!r}")
    return int(float(match[1]) * _SIZE_UNITS[match[2] or ""])
