"""What the pre-publish check decides, without running a model: modes, thresholds, verdicts.

Kept free of torch and transformers, so the watchlist (which knows the check's
settings) and the report (which shows its numbers) stay light, and so every
rule can be tested with constructed numbers. `paramdelta.pipeline.check` runs the
models and applies these rules.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from paramdelta.engine.adapter import LoraRef
from paramdelta.engine.merge_plan import MergePlan
from paramdelta.errors import CheckError
from paramdelta.rendering.check_report import STEP_TITLES

MODES = ("auto", "on", "off")
# Chat models read plain text worse than their bases (their perplexity on it is often
# 1.2-2x higher), while a broken merge (a wrong base, a mismatched vocabulary, a huge
# alpha) is worse by 10x or more: 3x lets the first through and stops the second.
DEFAULT_PERPLEXITY_FACTOR = 3.0
# Loading needs the weights plus room for activations on short texts and the allocator.
MEMORY_FACTOR = 1.25
REFERENCES = ("post", "new_base")
INSTALL_HINT = "pip install 'paramdelta-bot[check]'"


# -- whether the check fits -------------------------------------------------------


def size_text(nbytes: float) -> str:
    """Bytes in the Hub's decimal units: '16 GB', '350 MB', '210 kB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{nbytes:.0f} B"


def memory_reason(model_bytes: int, free_bytes: int, where: str) -> str | None:
    """None if a model of ``model_bytes`` fits in ``free_bytes``, else why not (one line)."""
    if model_bytes * MEMORY_FACTOR <= free_bytes:
        return None
    return f"{size_text(model_bytes)} model, {size_text(free_bytes)} free on {where}"


def model_bytes(plan: MergePlan) -> int:
    """The largest of the three models the check loads (one at a time): output, post, new base."""
    sizes = {"output": plan.nbytes}
    seen = set()
    for item in plan.items:
        for segment in item.segments:
            for role, ref, _ in segment.inputs:
                if isinstance(ref, LoraRef):  # an adapter: its base is counted, as it is loaded
                    continue
                if (role, ref.entry.name) not in seen:
                    seen.add((role, ref.entry.name))
                    sizes[role] = sizes.get(role, 0) + ref.entry.nbytes
    return max(sizes.values())


# -- verdicts ----------------------------------------------------------------------------


def perplexity_verdict(
    merged: float, references: Mapping[str, float | None], factor: float
) -> dict[str, Any]:
    """Pass when ``merged`` is at most ``factor`` times the better (lower) reference.

    ``references`` maps each reference asked for to its perplexity (None: it could
    not be measured). With none asked for, a finite perplexity passes on its own.
    """
    measured = [p for p in references.values() if p is not None and math.isfinite(p)]
    better = min(measured) if measured else None
    if better is None:
        ratio = None
        passed = not references and math.isfinite(merged)
    else:
        ratio = merged / better if math.isfinite(merged) else math.inf
        passed = ratio <= factor
    return {
        "merged": _rounded(merged),
        **{role: _rounded(p) for role, p in references.items()},
        "better": _rounded(better),
        "ratio": _rounded(ratio),
        "factor": factor,
        "passed": passed,
    }


def degeneracy(new_tokens: Sequence[int], special: set[int], text: str) -> str | None:
    """Why greedy output is degenerate, or None: empty, special tokens only, one token repeated."""
    plain = [t for t in new_tokens if t not in special]
    if not new_tokens:
        return "no tokens"
    if not plain:
        return "only special tokens"
    if not text.strip():
        return "only whitespace"
    token, count = Counter(plain).most_common(1)[0]
    if len(plain) >= 4 and count >= len(plain) - 1:
        return f"one token repeated ({count} of {len(plain)} are token {token})"
    return None


def _rounded(value: float | None) -> float | None:
    """Five significant digits; None for a value that is not finite (JSON has no NaN or Inf)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.5g}")


# -- the report --------------------------------------------------------------------------


@dataclass
class Step:
    step: str
    passed: bool
    detail: str


@dataclass
class CheckReport:
    """What the check found; ``status`` is passed, failed or not-checked."""

    status: str = "passed"
    reason: str | None = None
    device: str | None = None
    seconds: float = 0.0
    steps: list[Step] = field(default_factory=list)
    generation: list[dict[str, Any]] = field(default_factory=list)
    perplexity: dict[str, Any] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)  # what "passes" meant

    @classmethod
    def not_checked(cls, reason: str) -> CheckReport:
        return cls(status="not-checked", reason=reason)

    def record(self, step: str, passed: bool, detail: str) -> bool:
        self.steps.append(Step(step, passed, detail))
        if not passed and self.status != "failed":
            self.status, self.reason = "failed", f"{STEP_TITLES[step]}: {detail}"
        return passed

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def error(self) -> CheckError:
        """The one-line error that blocks the publish, carrying the numbers."""
        failures = sum(not s.passed for s in self.steps)
        more = f" (and {failures - 1} more failed step(s))" if failures > 1 else ""
        return CheckError(f"pre-publish check failed: {self.reason}{more}", self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"seconds": round(self.seconds, 2)}
