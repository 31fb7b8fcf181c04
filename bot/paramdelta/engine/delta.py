"""The delta report: what the merge pass measured, per tensor, summed per layer and overall.

For each merged tensor the kernel sums, in float32 blocks added up in float64,
the squared norms of the post-training delta (post - base) and of the base
update (new_base - base), their dot product, and NaN/Inf counts of every input
and the output (`kernel.Moments`). Here they become norms and cosines:

- ``post_delta_norm``: how much post-training changed the base (what is transferred);
- ``base_update_norm``: how far the new base moved from the old one;
- ``cosine``: whether the two point the same way. ParamΔ relies on them being
  nearly orthogonal (cosine near 0); a strongly negative cosine means the new
  base undoes part of what post-training did.

Groups sum the raw moments before taking roots, so a layer's norm is the norm
of all its tensors together and its cosine that of the concatenated deltas. A
vision-language model's vision tower and its projector (which maps image
features into the language model) are one group each, whatever layers they
hold, so their rows never mix with the language model's layer of the same index.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from paramdelta.engine.kernel import OPERANDS, Moments, NonFinite

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


def summarise(moments: Moments) -> dict[str, Any]:
    """Norms, cosine and NaN/Inf counts of summed moments (JSON-ready)."""
    denominator = math.sqrt(moments.post_sq * moments.update_sq)
    cosine = moments.cross / denominator if denominator > 0 else None
    counts = moments.nonfinite or NonFinite()
    summary = {
        "elements": moments.elements,
        "post_delta_norm": _norm(moments.post_sq),
        "base_update_norm": _norm(moments.update_sq),
        "cosine": None if cosine is None else _rounded(max(-1.0, min(1.0, cosine))),
        "nonfinite": {role: counts.nan[i] + counts.inf[i] for i, role in enumerate(OPERANDS)},
    }
    if moments.requantized:  # an FP8 output: relative RMS of q·s - x over the re-quantized
        ratio = moments.requant_err_sq / moments.requant_sq if moments.requant_sq > 0 else 0.0
        summary["requant_error"] = _norm(ratio)
    return summary


def _raw_row(m: Moments) -> list[Any]:
    row: list[Any] = [m.elements, m.post_sq, m.update_sq, m.cross]
    counts = (m.nonfinite.nan, m.nonfinite.inf) if m.nonfinite else (None, None)
    if m.requantized:
        row += [*counts, m.requantized, m.requant_err_sq, m.requant_sq]
    elif m.nonfinite:
        row += counts
    return row


@dataclass
class DeltaReport:
    """The moments of every output tensor, by name, in the plan's order."""

    tensors: dict[str, Moments] = field(default_factory=dict)
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
        the report, handed to the finish job. ``[elements, post_sq, update_sq, cross]``, then
        the NaN and Inf counts (null when finite) and an FP8 output's ``requantized,
        requant_err_sq, requant_sq``, each only where needed."""
        return {name: _raw_row(m) for name, m in self.tensors.items()}

    @classmethod
    def from_raw(cls, data: dict[str, list[Any]]) -> DeltaReport:
        """The report `raw` gave; ValueError if ``data`` is not of that shape."""
        tensors = {}
        try:
            for name, (elements, post_sq, update_sq, cross, *rest) in data.items():
                extra: list[Any] = rest or [None, None]
                nan, inf, *requant = extra
                requantized, err_sq, sq = requant or (0, 0.0, 0.0)
                tensors[name] = Moments(
                    int(elements),
                    float(post_sq),
                    float(update_sq),
                    float(cross),
                    None if nan is None else NonFinite(list(nan), list(inf)),
                    int(requantized),
                    float(err_sq),
                    float(sq),
                )
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"not a delta report: {e}") from None
        return cls(tensors)

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
            "overall": {"tensors": len(self.tensors), **summarise(self.overall())},
            "layers": [
                {
                    "layer": group,
                    "tensors": count,
                    **({"experts": experts[group]} if group in experts else {}),
                    **summarise(total),
                }
                for group, count, total in self.groups()
            ],
            "nonfinite_tensors": sorted(
                name
                for name, m in self.tensors.items()
                if m.nonfinite is not None and sum(m.nonfinite.nan) + sum(m.nonfinite.inf)
            ),
        }
