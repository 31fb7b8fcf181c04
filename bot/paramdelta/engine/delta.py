"""The delta report: what the merge pass measured, per tensor, summed per layer and overall.

For each merged tensor the kernel sums, in float32 blocks added up in float64,
the squared norms of the post-training delta (post - base) and of the base
update (new_base - base), their dot product, and NaN/Inf counts of every input
and the output (`kernel.Moments`); with several deltas, each delta's and the
dots between deltas. Here they become norms and cosines:

- ``post_delta_norm``: how much post-training changed the base (what is transferred);
- ``base_update_norm``: how far the new base moved from the old one;
- ``cosine``: whether the two point the same way. ParamΔ relies on them being
  nearly orthogonal (cosine near 0); a strongly negative cosine means the new
  base undoes part of what post-training did;
- ``delta_cosines`` (several deltas): how much two deltas overlap; near 1, the
  recipe adds nearly the same change twice.

Groups sum the raw moments before taking roots, so a layer's norm is the norm
of all its tensors together and its cosine that of the concatenated deltas. A
vision-language model's vision tower and its projector (which maps image
features into the language model) are one group each, whatever layers they
hold, so their rows never mix with the language model's layer of the same index.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from paramdelta.engine.kernel import Moments, NonFinite, operand_roles

# The projector first: Qwen2-VL's sits inside its vision tower (visual.merger).
_PROJECTOR = re.compile(
    r"(?:^|\.)(?:multi_modal_projector|mm_projector|connector|merger|deepstack_merger_list)\."
)
_VISION = re.compile(r"(?:^|\.)(?:vision_tower|vision_model|visual|vision_encoder|image_encoder)\.")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_EMBEDDING = re.compile(r"embed|(?:^|\.)wte\.|(?:^|\.)wpe\.")
_HEAD = re.compile(r"(?:^|\.)lm_head\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")
# Groups in model order: the vision tower and projector (a vision-language model's), the
# embeddings, the layers, the rest (final norm), the LM head.
VISION, PROJECTOR = "vision_tower", "projector"
EMBEDDINGS, OTHER, HEAD = "embeddings", "other", "lm_head"
_NAMED_ORDER = {VISION: -2, PROJECTOR: -1, EMBEDDINGS: 0, OTHER: 2, HEAD: 3}


@functools.lru_cache(maxsize=1 << 18)  # asked ~3x per tensor while planning, six regexes each
def group_of(name: str) -> int | str:
    """The layer index of a tensor, or the name of the group it belongs to."""
    if _PROJECTOR.search(name):
        return PROJECTOR
    if _VISION.search(name):
        return VISION
    if match := _LAYER.search(name):
        return int(match[1])
    if _HEAD.search(name):
        return HEAD
    if _EMBEDDING.search(name):
        return EMBEDDINGS
    return OTHER


def _order(group: int | str) -> tuple[int, int]:
    if isinstance(group, int):
        return (1, group)
    return (_NAMED_ORDER[group], 0)


def _rounded(value: float) -> float:
    return float(f"{value:.6g}")


def _norm(squares: float) -> float:
    return _rounded(math.sqrt(squares)) if squares >= 0 else math.nan


def _cosine(moments: Moments, a: int, b: int) -> float | None:
    denominator = math.sqrt(moments.dot(a, a) * moments.dot(b, b))
    if not denominator > 0:  # a zero delta, or a non-finite one (counted in "nonfinite")
        return None
    return _rounded(max(-1.0, min(1.0, moments.dot(a, b) / denominator)))


def _delta_summary(moments: Moments, delta: int) -> dict[str, Any]:
    """One delta's norm, its base update's, and their cosine."""
    d, u = 2 * delta, 2 * delta + 1
    return {
        "post_delta_norm": _norm(moments.dot(d, d)),
        "base_update_norm": _norm(moments.dot(u, u)),
        "cosine": _cosine(moments, d, u),
    }


def _raw_row(m: Moments) -> list[Any]:
    row: list[Any] = [m.elements, list(m.gram)]
    counts = (m.nonfinite.nan, m.nonfinite.inf) if m.nonfinite else (None, None)
    if m.requantized:
        row += [*counts, m.requantized, m.requant_err_sq, m.requant_sq]
    elif m.nonfinite:
        row += counts
    return row


def summarise(moments: Moments, deltas: int = 1) -> dict[str, Any]:
    """Norms, cosines and NaN/Inf counts of summed moments (JSON-ready).

    The top-level norms and cosine are the first delta's (as for one delta); with
    several, ``deltas`` has each delta's and ``delta_cosines`` the cosine of every
    pair (a matrix in the recipe's order; None for a delta that is all zero).
    """
    counts = moments.nonfinite or NonFinite()
    roles = operand_roles(deltas)
    summary = {"elements": moments.elements, **_delta_summary(moments, 0)}
    if deltas > 1:
        summary["deltas"] = [_delta_summary(moments, i) for i in range(deltas)]
        summary["delta_cosines"] = [
            [_cosine(moments, 2 * i, 2 * j) for j in range(deltas)] for i in range(deltas)
        ]
    summary["nonfinite"] = {
        role: _at(counts.nan, i) + _at(counts.inf, i) for i, role in enumerate(roles)
    }
    if moments.requantized:  # an FP8 output: relative RMS of q·s - x over the re-quantized
        ratio = moments.requant_err_sq / moments.requant_sq if moments.requant_sq > 0 else 0.0
        summary["requant_error"] = _norm(ratio)
    return summary


def _at(counts: list[int], index: int) -> int:
    return counts[index] if index < len(counts) else 0


@dataclass
class DeltaReport:
    """The moments of every output tensor, by name, in the plan's order."""

    tensors: dict[str, Moments] = field(default_factory=dict)
    deltas: int = 1  # how many deltas the merge summed
    # The last summary: the CLI, the record and the card each ask (95k tensors for DeepSeek).
    _summary: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def add(self, name: str, moments: Moments) -> None:
        self._summary = None
        self.tensors.setdefault(name, Moments()).add(moments)

    def merge(self, others: Iterable[DeltaReport]) -> None:
        for other in others:
            for name, moments in other.tensors.items():
                self.add(name, moments)

    def raw(self) -> dict[str, list[Any]]:
        """Every tensor's moments exactly (JSON round-trips floats): a fan-out leg's part of
        the report, handed to the finish job. ``[elements, gram]``, then the NaN and Inf
        counts (null when finite) and an FP8 output's ``requantized, requant_err_sq,
        requant_sq``, each only where needed."""
        return {name: _raw_row(m) for name, m in self.tensors.items()}

    @classmethod
    def from_raw(cls, data: dict[str, list[Any]]) -> DeltaReport:
        """The report `raw` gave; ValueError if ``data`` is not of that shape."""
        tensors = {}
        try:
            for name, (elements, gram, *rest) in data.items():
                extra: list[Any] = rest or [None, None]
                nan, inf, *requant = extra
                requantized, err_sq, sq = requant or (0, 0.0, 0.0)
                tensors[name] = Moments(
                    int(elements),
                    [float(g) for g in gram],
                    None if nan is None else NonFinite(list(nan), list(inf)),
                    int(requantized),
                    float(err_sq),
                    float(sq),
                )
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"not a delta report: {e}") from None
        deltas = max((m.deltas for m in tensors.values()), default=1)
        return cls(tensors, max(deltas, 1))

    def groups(self) -> Iterator[tuple[int | str, int, Moments]]:
        """(group, number of tensors, summed moments), in model order."""
        sums: dict[int | str, tuple[int, Moments]] = {}
        for name, moments in self.tensors.items():
            group = group_of(name)
            count, total = sums.setdefault(group, (0, Moments()))
            total.add(moments)
            sums[group] = (count + 1, total)
        for group in sorted(sums, key=_order):
            count, total = sums[group]
            yield group, count, total

    def experts(self) -> dict[int | str, int]:
        """The number of experts of each group that has any (mixture-of-experts layers)."""
        seen: dict[int | str, set[int]] = {}
        for name in self.tensors:
            if match := _EXPERT.search(name):
                seen.setdefault(group_of(name), set()).add(int(match[1]))
        return {group: len(ids) for group, ids in seen.items()}

    def overall(self) -> Moments:
        total = Moments()
        for moments in self.tensors.values():
            total.add(moments)
        return total

    def summary(self) -> dict[str, Any]:
        """The report as paramdelta.json keeps it: overall, per layer, and non-finite tensors."""
        if self._summary is None:
            self._summary = self._summarise()
        return copy.deepcopy(self._summary)  # a caller may edit its copy

    def _summarise(self) -> dict[str, Any]:
        experts = self.experts()
        return {
            "overall": {"tensors": len(self.tensors), **summarise(self.overall(), self.deltas)},
            "layers": [
                {
                    "layer": group,
                    "tensors": count,
                    **({"experts": experts[group]} if group in experts else {}),
                    **summarise(total, self.deltas),
                }
                for group, count, total in self.groups()
            ],
            "nonfinite_tensors": sorted(
                name
                for name, m in self.tensors.items()
                if m.nonfinite is not None and sum(m.nonfinite.nan) + sum(m.nonfinite.inf)
            ),
        }
