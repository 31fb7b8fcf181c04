"""The arithmetic of one chunk, exactly as the formula states it, and what it measures.

``out = new_base + Σ wᵢ·(postᵢ - baseᵢ)``, accumulated in float32 in the order
of the deltas and rounded once to the output dtype: bit for bit
``acc = new.float()``, then ``acc = acc + w * (post.float() - base.float())``
for each delta, then ``acc.to(dtype)``. With one delta of weight 1 that is
``(post.float() - base.float() + new_base.float()).to(dtype)`` (IEEE addition
commutes, and ``1.0 * d == d``).

While a block is in cache the kernel also measures the delta report's moments
(`Moments`) of every delta: the squared norms of each post-training delta
``postᵢ - baseᵢ`` and of its base update ``new_base - baseᵢ``, their dot
products and the dots between deltas, all from one Gram matrix product of
the 2N rows. The base update is computed
explicitly: deriving its norm from the norms of new_base and base would lose
every digit when they are close. The same sums are the NaN/Inf sentinel: a NaN
or Inf in any input makes one of them non-finite, and they bound how far the
output can exceed new_base (see `_headroom`), so only a block they flag is
counted element by element. This costs two passes over the block besides the
merge's own: on a memory-bound CPU, about a fifth more time
(docs/performance.md); on a GPU, nothing measurable.

Each operand is first widened into a float32 scratch row and the chunk is
processed in cache-sized blocks: on a CPU this is memory-bound, and
mixed-dtype ops (float32 minus bfloat16) or full-chunk float32 temporaries each
cost several times more memory traffic than a block that stays in cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from paramdelta.engine.dtypes import TORCH_NAMES

# safetensors dtype name -> torch dtype, for each one this torch has.
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, torch_name)
    for name, torch_name in TORCH_NAMES.items()
    if isinstance(getattr(torch, torch_name, None), torch.dtype)
}

# Elements per block on the CPU: one block per chunk (local chunks are ~1 MiB per input).
# Smaller blocks fit the L2 cache, but their extra Python calls serialise the workers
# on the GIL, which costs more in a multi-worker merge than it saves (measured).
CPU_BLOCK = 1 << 20

# The counted operands of a one-delta merge, in the order of `NonFinite`; a later
# delta's post and base follow (`operand_roles`).
OPERANDS = ("post", "base", "new_base", "output")
NEW_BASE, OUTPUT = 2, 3


def operand_roles(deltas: int) -> tuple[str, ...]:
    """The role of each `NonFinite` count for a merge of ``deltas`` deltas."""
    return (*OPERANDS, *(f"{r}[{i}]" for i in range(1, deltas) for r in ("post", "base")))


def _post_index(delta: int) -> int:
    """Where delta ``delta``'s post is counted (its base is the next index)."""
    return 0 if delta == 0 else len(OPERANDS) + 2 * (delta - 1)


@dataclass
class NonFinite:
    """NaN and Inf counts of each operand of a chunk, in `operand_roles` order."""

    nan: list[int] = field(default_factory=lambda: [0] * len(OPERANDS))
    inf: list[int] = field(default_factory=lambda: [0] * len(OPERANDS))

    @classmethod
    def of(cls, deltas: int) -> NonFinite:
        size = len(operand_roles(deltas))
        return cls([0] * size, [0] * size)

    def add(self, other: NonFinite) -> None:
        for mine, theirs in ((self.nan, other.nan), (self.inf, other.inf)):
            mine.extend([0] * (len(theirs) - len(mine)))
            for i, count in enumerate(theirs):
                mine[i] += count

    def count(self, index: int, values: torch.Tensor) -> None:
        if values.is_floating_point():
            self.nan[index] += int(torch.isnan(values).sum())
            self.inf[index] += int(torch.isinf(values).sum())

    @property
    def output(self) -> int:
        return self.nan[OUTPUT] + self.inf[OUTPUT]


@dataclass
class Moments:
    """Sums over the merged elements of a chunk (or a tensor): the delta report's raw data.

    ``gram`` is the Gram matrix, row-major, of the vectors ``d0, u0, d1, u1, ...``
    where ``dᵢ = postᵢ - baseᵢ`` (unscaled) and ``uᵢ = new_base - baseᵢ``: every
    delta's squared norm, its dot with its base update, and every pair of deltas.
    Empty where nothing was merged.
    """

    elements: int = 0
    gram: list[float] = field(default_factory=list)
    nonfinite: NonFinite | None = None  # only when some value was not finite
    # FP8 outputs (`paramdelta.engine.fp8`): elements re-quantized, sum of (q·s - x)^2, of x^2.
    requantized: int = 0
    requant_err_sq: float = 0.0
    requant_sq: float = 0.0

    @property
    def deltas(self) -> int:
        return math.isqrt(len(self.gram)) // 2

    def dot(self, row: int, column: int) -> float:
        """One entry of the Gram matrix (0.0 where nothing was merged)."""
        side = 2 * self.deltas
        return self.gram[row * side + column] if self.gram else 0.0

    @property
    def post_sq(self) -> float:  # sum of (post - base)^2, of the first delta
        return self.dot(0, 0)

    @property
    def update_sq(self) -> float:  # sum of (new_base - base)^2, of the first delta
        return self.dot(1, 1)

    @property
    def cross(self) -> float:  # sum of (post - base) * (new_base - base), of the first delta
        return self.dot(0, 1)

    def add(self, other: Moments) -> None:
        self.elements += other.elements
        if not self.gram:
            self.gram = [0.0] * len(other.gram)
        for i, value in enumerate(other.gram):
            self.gram[i] += value
        self.requantized += other.requantized
        self.requant_err_sq += other.requant_err_sq
        self.requant_sq += other.requant_sq
        if other.nonfinite is not None:
            if self.nonfinite is None:
                self.nonfinite = NonFinite()
            self.nonfinite.add(other.nonfinite)


def scratch_buffers(
    block: int, device: torch.device, deltas: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's float32 scratch: two rows per delta (it and its base update), one more."""
    return (
        torch.empty((2 * deltas, block), dtype=torch.float32, device=device),
        torch.empty(block, dtype=torch.float32, device=device),
    )


class Difference(NamedTuple):
    """A delta already computed (an adapter's ``s·B@A``, float32) in place of ``post - base``:
    its Gram row holds these values; its base is still read, for its base update's row."""

    values: torch.Tensor
    base: torch.Tensor
    weight: float


Delta = tuple[torch.Tensor, torch.Tensor, float] | Difference  # post, base, weight


def merge_into(
    out: torch.Tensor,
    new_base: torch.Tensor,
    deltas: Sequence[Delta],
    scratch: tuple[torch.Tensor, torch.Tensor],
) -> Moments:
    """``out = new_base + Σ w·(post - base)`` over 1-D tensors of equal length; its moments.

    Every delta is widened first (into its own scratch row, unscaled, for the
    moments), then scaled and added to the accumulator in the order given.
    """
    rows, acc_buf = scratch
    side = 2 * len(deltas)
    if rows.shape[0] < side:
        raise ValueError(f"scratch for {rows.shape[0] // 2} deltas, not {len(deltas)}")
    block = acc_buf.numel()
    headroom = _headroom(out.dtype, new_base.dtype)
    limit = torch.finfo(out.dtype).max
    moments = Moments(elements=out.numel(), gram=[0.0] * side * side)
    for start in range(0, out.numel(), block):
        end = min(start + block, out.numel())
        pairs = rows[:side, : end - start]  # d0, u0, d1, u1, ...
        acc = acc_buf[: end - start]
        acc.copy_(new_base[start:end])  # widening (or float64 narrowing) is exact like .float()
        for i, term in enumerate(deltas):
            post, base, _ = term
            delta, update = pairs[2 * i], pairs[2 * i + 1]
            delta.copy_(post[start:end])
            update.copy_(base[start:end])
            if not isinstance(term, Difference):  # an adapter's delta is given, not read
                delta.sub_(update)
            torch.sub(acc, update, out=update)  # acc is still new_base here
        # The Gram matrix of the deltas and updates, in one pass: norms, dots, pairs.
        gram = torch.mm(pairs, pairs.t()).view(-1).tolist()
        for k, value in enumerate(gram):
            moments.gram[k] += value
        bound = 0.0  # how far the deltas may move the output from new_base
        update_sq = 0.0
        for i, (_, _, weight) in enumerate(deltas):
            bound += abs(weight) * math.sqrt(gram[2 * i * (side + 1)])
            update_sq += gram[(2 * i + 1) * (side + 1)]
            delta = pairs[2 * i]
            if weight != 1.0:  # after the moments: they describe the unscaled delta
                delta.mul_(weight)
            acc.add_(delta)
        finite = _finite(acc, bound, update_sq, headroom, limit)
        out[start:end].copy_(acc)
        if not finite:
            counted = NonFinite.of(len(deltas))
            for index, values in _operands(new_base, deltas, out):
                counted.count(index, values[start:end])
            moments.add(Moments(nonfinite=counted))
    return moments


def _operands(
    new_base: torch.Tensor, deltas: Sequence[Delta], out: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor]]:
    """Each operand with its `operand_roles` index."""
    for i, (post, base, _) in enumerate(deltas):
        yield _post_index(i), post
        yield _post_index(i) + 1, base
    yield NEW_BASE, new_base
    yield OUTPUT, out


def _headroom(out_dtype: torch.dtype, new_base_dtype: torch.dtype) -> float:
    """How large ``alpha * (post - base)`` may grow without the rounded output overflowing.

    Elementwise ``|out| <= |new_base| + |alpha * delta|``. When new_base's dtype cannot
    exceed the output's largest value, the sum rounds to at most that value while the
    added part stays below half a unit in its last place (a quarter, to be safe from
    float32's own rounding). Otherwise (float32 in, bfloat16 out) there is no headroom
    and the output itself is measured.
    """
    out_info = torch.finfo(out_dtype)
    if out_info.max < torch.finfo(new_base_dtype).max:
        return 0.0
    return out_info.eps * out_info.max / 4


def _finite(
    output: torch.Tensor, scaled_norm: float, update_sq: float, headroom: float, limit: float
) -> bool:
    """True when a block's inputs are finite and its rounded output cannot overflow.

    A NaN or Inf in post or base makes the delta's norm non-finite, one in new_base
    the update's (and NaN fails every comparison).
    """
    if not (scaled_norm < math.inf and update_sq < math.inf):
        return False
    if scaled_norm < headroom:
        return True
    return torch.linalg.vector_norm(output).item() < limit  # no element exceeds the norm


def copy_into(out: torch.Tensor, values: torch.Tensor) -> NonFinite | None:
    """Copy (converting) ``values`` into ``out``; their NaN/Inf counts if any are not finite."""
    out.copy_(values)
    return check_copy(out)


def check_copy(out: torch.Tensor) -> NonFinite | None:
    """The NaN/Inf counts of a copied float chunk, or None when all its values are finite."""
    if not out.is_floating_point() or out.numel() == 0:
        return None
    total = out.sum(dtype=torch.float32).item()
    if total - total == 0.0:  # finite (a NaN or an Inf anywhere makes this NaN)
        return None
    counted = NonFinite()
    counted.count(OUTPUT, out)
    return counted if counted.output else None
