"""What a merge computes (`Recipe`) and how it runs on this machine (`Runtime`).

The recipe is defined here once: the watchlist parses a target into one, the
command line builds one, the engine takes it, the lineage records it and
`plan` compares the recorded one with the target's (`MERGED_FIELDS`). The
runtime (device, memory, progress bars) never changes the merged bytes, so it
is neither recorded nor compared.

Kept free of torch so that commands which never compute (plan, validate,
report) start fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from paramdelta.engine.dtypes import TORCH_NAMES
from paramdelta.errors import UsageError

DEFAULT_SHARD_SIZE = 5_000_000_000
DEFAULT_MAX_MEMORY = 256 * 2**20

# --dtype choices, mapped to safetensors dtype names (None: keep the new base's).
DTYPE_CHOICES: dict[str, str | None] = {
    "auto": None,
    **{TORCH_NAMES[name]: name for name in ("BF16", "F16", "F32")},
}
# Each --vocab-policy and what it means, said wherever a policy is named
# (a bare "policy error" reads as a failure).
VOCAB_POLICIES = {
    "error": "sizes must match, or the merge stops",
    "shared": "the rows all three share are merged",
}

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


class Recipe(NamedTuple):
    """The merge ``new_base + Σ wᵢ·(postᵢ - baseᵢ)``, its output dtype, rows and shards.

    One delta (the usual ParamΔ merge) has the weight ``alpha``; several deltas
    have ``weights``, one per delta in the order they are summed (``alpha`` then
    stays 1.0). Which checkpoints the deltas are is the caller's, not the recipe's.
    """

    alpha: float = 1.0
    dtype: str = "auto"  # a DTYPE_CHOICES key
    vocab_policy: str = "error"  # a VOCAB_POLICIES entry
    shard_size: int = DEFAULT_SHARD_SIZE
    weights: tuple[float, ...] = ()  # several deltas' weights; () for one delta of ``alpha``

    @property
    def delta_weights(self) -> tuple[float, ...]:
        """The weight of every delta, in order."""
        return self.weights or (self.alpha,)

    def check(self) -> Recipe:
        """This recipe, if every field is one the engine can do; else the one-line reason."""
        if not math.isfinite(self.alpha):
            raise UsageError(f"--alpha must be a finite number, not {self.alpha}")
        if self.weights and (len(self.weights) < 2 or self.alpha != 1.0):
            raise UsageError(
                "several deltas have one weight each (and no --alpha); one delta has --alpha"
            )
        for i, weight in enumerate(self.weights):
            if not math.isfinite(weight):
                raise UsageError(f"delta {i + 1}: the weight must be a finite number, not {weight}")
        if self.dtype not in DTYPE_CHOICES:
            choices = ", ".join(DTYPE_CHOICES)
            raise UsageError(f"--dtype must be one of {choices}, not {self.dtype!r}")
        if self.vocab_policy not in VOCAB_POLICIES:
            raise UsageError(f"--vocab-policy must be one of {', '.join(VOCAB_POLICIES)}")
        return self

    def merged_fields(self) -> dict[str, Any]:
        """The fields that change the merged bytes: what `plan` compares."""
        return {key: getattr(self, key) for key in MERGED_FIELDS}


# Shard size changes the files, not the tensors: a new shard size alone is no new merge.
MERGED_FIELDS = ("alpha", "weights", "dtype", "vocab_policy")
# Where a lineage record's recipe keeps a field of another name: its "dtype" is the
# dtype written, the option asked for is beside it.
RECORD_KEYS = {"dtype": "requested_dtype"}


def recorded_fields(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The merged fields as a lineage record's ``recipe`` section keeps them (None where it
    has none; a record older than ``requested_dtype`` kept the option as "dtype"; a
    one-delta record has no "weights", a several-delta one no "alpha")."""
    fields = {key: recipe.get(RECORD_KEYS.get(key, key), recipe.get(key)) for key in MERGED_FIELDS}
    weights = fields["weights"]
    fields["weights"] = tuple(weights) if isinstance(weights, list) else ()
    if fields["weights"] and "alpha" not in recipe:
        fields["alpha"] = 1.0
    return fields


class Runtime(NamedTuple):
    """How a merge runs here: where the arithmetic happens, buffer memory, progress bars."""

    device: str = "auto"  # auto, cpu or cuda
    max_memory: int = DEFAULT_MAX_MEMORY
    progress: bool = True


def parse_size(text: str, option: str) -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536_870_912 (the Hub's and transformers' units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text.upper())
    if not match or float(match[1]) <= 0:
        raise UsageError(f"{option}: expected a size like 5GB or 512MiB, not {text!r}")
    return int(float(match[1]) * _SIZE_UNITS[match[2] or ""])
