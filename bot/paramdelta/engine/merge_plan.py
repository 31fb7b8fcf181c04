"""What to compute: pair the three checkpoints' tensors and check they fit.

`plan_merge` turns three opened checkpoints into a `MergePlan`: for every
output tensor, its dtype, shape and the segments of elements that are merged
(``new_base + Σ wᵢ·(postᵢ - baseᵢ)``, today with one delta of weight alpha) or
copied from one checkpoint. It also
decides which non-weight files come from which checkpoint (`paramdelta.engine.files`),
what happens to each vocabulary row, and which token ids the output's config.json
carries. It reads no tensor data: every incompatibility is reported here, before
the first byte moves.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, NoReturn

from paramdelta.engine.checkpoint import CONFIG, Checkpoint, Source, TensorRef, read_json
from paramdelta.engine.dtypes import COPIED_DTYPES, FLOAT_DTYPES, ITEMSIZE, TORCH_NAMES
from paramdelta.engine.files import GENERATION_CONFIG, file_donors, skipped_files
from paramdelta.engine.fp8_layout import (
    FP8,
    SCALE_SUFFIX,
    BlockScaled,
    output_config,
    scale_shape,
    split_scales,
)
from paramdelta.engine.limits import MAX_CONFIG_BYTES, MAX_DONATED_BYTES, check_size
from paramdelta.engine.recipe import DTYPE_CHOICES, Recipe
from paramdelta.engine.safetensors_format import INDEX
from paramdelta.errors import CheckpointError

FORMULA = "new_base + alpha * (post - base)"
COMPUTE_DTYPE = "float32"

ROLE_TITLES = {"base": "base", "post": "post", "new_base": "new base"}
ROLES = tuple(ROLE_TITLES)  # the three checkpoints of a merge, in the formula's order

# Architecture fields that must agree for a weight delta to mean anything.
CONFIG_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
)

# The special token ids the output's config.json takes from the post model: they
# belong to the tokenizer the output ships (the post model's), and generate() reads
# them from generation_config.json (also the post model's), so both files agree.
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


class VocabularyError(CheckpointError):
    """The vocabulary sizes differ and the policy is `error`; the fix in the caller's terms."""

    FLAG = "pass --vocab-policy shared"

    def __init__(self, tensor: str, shared: Vocabulary, fix: str = FLAG) -> None:
        self.tensor, self.shared, self.fix = tensor, shared, fix
        rows = ", ".join(f"{ROLE_TITLES[r]} {shared.rows[r]}" for r in ROLES)
        super().__init__(
            f"vocabulary size differs in tensor {tensor!r} ({rows} rows); {fix}"
            f" to {shared.consequences()}"
        )

    def with_fix(self, fix: str) -> VocabularyError:
        return VocabularyError(self.tensor, self.shared, fix)


class Operand(NamedTuple):
    """A run of one input tensor: the checkpoint's role, the tensor, its first element."""

    role: str
    ref: TensorRef
    first: int


class WeightedDelta(NamedTuple):
    """``weight * (post - base)``, one term of the sum."""

    post: Operand
    base: Operand
    weight: float


@dataclass(frozen=True)
class Segment:
    """A run of ``count`` output elements starting at ``out_start``.

    ``op == "merge"``: ``start + Σ wᵢ·(postᵢ - baseᵢ)`` over ``deltas``, in their
    order (``start`` is the new base). ``op == "copy"``: ``start`` alone, copied
    (converted if its dtype differs from the output's).
    """

    op: Literal["merge", "copy"]
    out_start: int
    count: int
    start: Operand
    deltas: tuple[WeightedDelta, ...] = ()

    @functools.cached_property  # a MoE plan asks ~100k segments for them, several times
    def inputs(self) -> tuple[Operand, ...]:
        """Every operand in the order the kernel reads them: start, then each post and base."""
        return (self.start, *(o for d in self.deltas for o in (d.post, d.base)))

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(d.weight for d in self.deltas)


@dataclass(frozen=True)
class MergeItem:
    name: str
    dtype: str
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]
    fp8: BlockScaled | None = None  # an FP8 block-scaled merge, computed in row bands
    scale_of: str | None = None  # an output scale tensor, written with this weight

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True)
class Vocabulary:
    """What happens to the embedding and LM-head rows: merged, kept from post, or dropped."""

    policy: str
    rows: dict[str, int]  # role -> rows, and "output"
    merged: int
    kept_from_post: int = 0
    dropped_from_new_base: int = 0
    dropped_from_base: int = 0

    @classmethod
    def shared_rows(cls, policy: str, rows: tuple[int, int, int]) -> Vocabulary:
        """The rows all three share are merged; the output has the post model's rows."""
        base, post, new = rows
        shared = min(rows)
        return cls(
            policy,
            {"base": base, "post": post, "new_base": new, "output": post},
            merged=shared,
            kept_from_post=post - shared,
            dropped_from_new_base=new - shared,
            dropped_from_base=base - shared,
        )

    def consequences(self) -> str:
        """What the rows become, as a sentence fragment ("merge the 256 rows ...")."""
        parts = [f"merge the {self.merged} rows all three share"]
        if self.kept_from_post:
            parts.append(f"keep the post model's {self.kept_from_post} extra rows")
        if self.dropped_from_new_base:
            parts.append(f"drop the new base's {self.dropped_from_new_base} extra rows")
        if self.dropped_from_base:
            parts.append(f"drop the base's {self.dropped_from_base} extra rows")
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]

    def describe(self) -> str:
        """One line for the log and the card."""
        sizes = {self.rows[r] for r in ROLES}
        if len(sizes) == 1:
            head = f"{self.rows['output']} rows in all three"
        else:
            shown = ", ".join(f"{ROLE_TITLES[r]} {self.rows[r]}" for r in ROLES)
            head = f"{shown} rows; output {self.rows['output']} rows"
        dropped = f", {self.dropped_from_base} dropped from the base" * bool(self.dropped_from_base)
        return (
            f"{head}: {self.merged} merged, {self.kept_from_post} kept from the post model,"
            f" {self.dropped_from_new_base} dropped from the new base{dropped}"
            f" (vocab policy {self.policy})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "rows": dict(self.rows),
            "merged": self.merged,
            "kept_from_post": self.kept_from_post,
            "dropped_from_new_base": self.dropped_from_new_base,
            "dropped_from_base": self.dropped_from_base,
        }


@dataclass
class MergePlan:
    items: list[MergeItem]
    recipe: Recipe
    files: dict[str, str]  # path -> donor role
    config: dict[str, Any]
    config_changes: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # input path -> why not in the output
    vocabulary: Vocabulary | None = None
    read: dict[str, list[str]] = field(default_factory=dict)  # role -> every file the merge reads

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.items)

    @functools.cached_property
    def operands(self) -> int:
        """The most inputs one output element is computed from (3 for one delta)."""
        return max((len(s.inputs) for i in self.items for s in i.segments), default=1)

    @functools.cached_property
    def input_itemsize(self) -> int:
        """The widest dtype any input is read in, in bytes."""
        return max(
            (ITEMSIZE[op.ref.dtype] for i in self.items for s in i.segments for op in s.inputs),
            default=1,
        )

    @property
    def written_dtype(self) -> str:
        """The dtype the float tensors are written in ("bfloat16"; several, comma-separated)."""
        written = FLOAT_DTYPES | {FP8}
        names = sorted({TORCH_NAMES[i.dtype] for i in self.items if i.dtype in written})
        return ", ".join(names) or "none"

    def config_bytes(self, new_base: Source) -> bytes:
        """config.json for the output: the new base's, verbatim unless we had to change it."""
        if not self.config_changes:
            return new_base.read(CONFIG, 0, new_base.size(CONFIG))
        return (json.dumps(self.config, indent=2) + "\n").encode()


def _title(role: str) -> str:
    return ROLE_TITLES[role]


def _config_view(config: dict[str, Any]) -> dict[str, Any]:
    """The fields that must agree; multimodal configs keep them in text_config."""
    text = config.get("text_config")
    merged = dict(text) if isinstance(text, dict) else {}
    merged.update({k: v for k, v in config.items() if k != "text_config"})
    return {key: merged.get(key) for key in CONFIG_KEYS}


def vocab_size(config: dict[str, Any]) -> int | None:
    value = config.get("vocab_size")
    text = config.get("text_config")
    if value is None and isinstance(text, dict):
        value = text.get("vocab_size")
    return value if isinstance(value, int) else None


def check_configs(checkpoints: Sequence[Checkpoint]) -> None:
    views = [(c.role, _config_view(c.config)) for c in checkpoints]
    for key in CONFIG_KEYS:
        values = [view[key] for _, view in views]
        if any(v != values[0] for v in values):
            shown = ", ".join(
                f"{_title(role)} {'missing' if view[key] is None else json.dumps(view[key])}"
                for role, view in views
            )
            raise CheckpointError(f"config.json mismatch: {key} is {shown}")


def _check_names(checkpoints: Sequence[Checkpoint]) -> None:
    names = [c.tensors.keys() for c in checkpoints]
    if all(n == names[0] for n in names):  # at C speed; the loop below names a stray tensor
        return
    union = set().union(*names)
    for name in sorted(union):
        have = [c.role for c, n in zip(checkpoints, names, strict=True) if name in n]
        if len(have) != len(checkpoints):
            missing = [_title(c.role) for c in checkpoints if c.role not in have]
            raise CheckpointError(
                f"tensor {name!r} is in {' and '.join(map(_title, have))}"
                f" but not in {' and '.join(missing)}"
            )


def plan_merge(
    base: Checkpoint,
    post: Checkpoint,
    new_base: Checkpoint,
    recipe: Recipe = Recipe(),
) -> MergePlan:
    """Pair tensors, check compatibility, and lay out the computation."""
    recipe.check()
    vocab_policy = recipe.vocab_policy
    # FP8 weights carry their scale tensors: those are part of the weight, not tensors to pair.
    (base, base_scales), (post, post_scales), (new_base, new_scales) = map(
        split_scales, (base, post, new_base)
    )
    trio = (base, post, new_base)
    scales = (new_scales, post_scales, base_scales)  # in the order of a segment's inputs
    check_configs(trio)
    _check_names(trio)

    forced = DTYPE_CHOICES[recipe.dtype]
    config = json.loads(json.dumps(new_base.config))
    changes: dict[str, Any] = {}
    items = []
    vocabularies: list[Vocabulary] = []
    # Output follows the new base's file order: reads then stream forward.
    order = sorted(new_base.tensors.values(), key=lambda r: (r.file, r.entry.offset))
    for ref_new in order:
        name = ref_new.entry.name
        refs = (base.tensors[name], post.tensors[name], ref_new)
        if name in new_scales or name in post_scales or name in base_scales:
            items.extend(_plan_fp8(name, refs, trio, scales, forced, recipe.alpha))
            continue
        items.append(_plan_tensor(name, refs, trio, forced, recipe, vocabularies))

    vocabulary = _vocabulary(vocabularies, trio, vocab_policy)
    if vocabulary is not None and vocabulary.rows["output"] != vocab_size(new_base.config):
        changes["vocab_size"] = vocabulary.rows["output"]
        _set_config(config, "vocab_size", changes["vocab_size"])
    changes.update(output_config(config, any(item.dtype == FP8 for item in items)))
    for key, value in _token_ids(post).items():
        if _get_config(config, key) != value:
            changes[key] = value
            _set_config(config, key, value)
    out_dtypes = {item.dtype for item in items if item.dtype in FLOAT_DTYPES}
    if forced is not None and len(out_dtypes) == 1:
        torch_name = TORCH_NAMES[forced]
        for key in ("torch_dtype", "dtype"):
            if key in config and config[key] != torch_name:
                config[key] = torch_name
                changes[key] = torch_name

    listings = {c.role: c.files for c in trio}
    files = file_donors(listings)
    for path, role in files.items():
        donor = next(c for c in trio if c.role == role)
        check_size(
            donor.source.size(path), MAX_DONATED_BYTES, f"{donor.where}/{path}", "a copied file"
        )
    read = _files_read(trio, items, files)
    return MergePlan(
        items=items,
        recipe=recipe,
        files=files,
        config=config,
        config_changes=changes,
        skipped=skipped_files(listings, files, {p for paths in read.values() for p in paths}),
        vocabulary=vocabulary,
        read=read,
    )


def _files_read(
    trio: Sequence[Checkpoint], items: Sequence[MergeItem], donors: dict[str, str]
) -> dict[str, list[str]]:
    """Per role, every file the merge reads: config, index, shards and donated files."""
    read = {c.role: {CONFIG, *({INDEX} & set(c.files))} for c in trio}
    for item in items:
        for segment in item.segments:
            for role, ref, _ in segment.inputs:
                read[role].add(ref.file)
        if item.fp8 is not None:
            for operand, scale in zip(item.segments[0].inputs, item.fp8.scales, strict=True):
                if scale is not None:
                    read[operand.role].add(scale.file)
    for path, role in donors.items():
        read[role].add(path)
    return {role: sorted(paths) for role, paths in read.items()}


def _vocabulary(
    seen: list[Vocabulary], trio: tuple[Checkpoint, ...], policy: str
) -> Vocabulary | None:
    """The rows' fate: from the tensors whose rows differ, else every row is merged."""
    if any(v != seen[0] for v in seen):  # cannot happen: each tensor's rows are its config's
        raise CheckpointError(f"vocabulary rows differ between tensors: {seen[0]} != {seen[-1]}")
    if seen:
        return seen[0]
    rows = vocab_size(trio[2].config)
    if rows is None:
        return None
    return Vocabulary(policy, {**dict.fromkeys(ROLES, rows), "output": rows}, merged=rows)


def _token_ids(post: Checkpoint) -> dict[str, Any]:
    """The post model's special token ids: generation_config.json's, else its config.json's."""
    generation: Any = {}
    if GENERATION_CONFIG in post.files:
        where = f"{post.where}/{GENERATION_CONFIG}"
        generation = read_json(post.source, GENERATION_CONFIG, MAX_CONFIG_BYTES, where)
    ids = {}
    for key in TOKEN_ID_KEYS:
        if isinstance(generation, dict) and key in generation:
            ids[key] = generation[key]
        elif (value := _get_config(post.config, key)) is not None:
            ids[key] = value
    return ids


def _get_config(config: dict[str, Any], key: str) -> Any:
    text = config.get("text_config")
    if key not in config and isinstance(text, dict):
        return text.get(key)
    return config.get(key)


def _set_config(config: dict[str, Any], key: str, value: Any) -> None:
    text = config.get("text_config")
    if key not in config and isinstance(text, dict) and key in text:
        text[key] = value
    else:
        config[key] = value


def _plan_tensor(
    name: str,
    refs: tuple[TensorRef, TensorRef, TensorRef],
    trio: tuple[Checkpoint, Checkpoint, Checkpoint],
    forced: str | None,
    recipe: Recipe,
    vocabularies: list[Vocabulary],
) -> MergeItem:
    base, post, new = refs
    vocab_policy = recipe.vocab_policy
    dtypes = (base.entry.dtype, post.entry.dtype, new.entry.dtype)
    if COPIED_DTYPES.issuperset(dtypes):
        # Integer buffers (position ids, masks) are not weights: take the new base's.
        if len({r.shape for r in refs}) != 1:
            _shape_mismatch(name, refs, trio)
        segment = Segment("copy", 0, new.entry.numel, Operand("new_base", new, 0))
        return MergeItem(name, new.dtype, new.shape, (segment,))
    if not FLOAT_DTYPES.issuperset(dtypes):
        ref, checkpoint = next(
            p for p in zip(refs, trio, strict=True) if p[0].dtype not in FLOAT_DTYPES
        )
        raise CheckpointError(
            f"{checkpoint.where}: tensor {name!r} has dtype {ref.dtype}, which cannot be"
            " merged (only float tensors, FP8 block-scaled weights and integer buffers can)"
        )
    out_dtype = forced or new.dtype

    if base.shape == post.shape == new.shape:
        merged = _merge_segment(refs, recipe.alpha, new.entry.numel)
        return MergeItem(name, out_dtype, new.shape, (merged,))

    rows = _vocab_rows(refs, trio)
    if rows is None:
        _shape_mismatch(name, refs, trio)
    vocabulary = Vocabulary.shared_rows(vocab_policy, rows)
    if vocab_policy == "error":
        raise VocabularyError(name, Vocabulary.shared_rows("shared", rows))
    vocabularies.append(vocabulary)
    # "shared": the output serves the post model's tokenizer, so it has the
    # post model's rows; rows all three share are merged, the rest come from post.
    row = new.entry.numel // rows[2]
    shared = vocabulary.merged
    out_rows = vocabulary.rows["output"]
    segments = [_merge_segment(refs, recipe.alpha, shared * row)]
    if out_rows > shared:
        extra = (out_rows - shared) * row
        segments.append(Segment("copy", shared * row, extra, Operand("post", post, shared * row)))
    return MergeItem(name, out_dtype, (out_rows, *new.shape[1:]), tuple(segments))


def _plan_fp8(
    name: str,
    refs: tuple[TensorRef, TensorRef, TensorRef],
    trio: tuple[Checkpoint, Checkpoint, Checkpoint],
    scales: tuple[dict[str, TensorRef], ...],
    forced: str | None,
    weight: float,
) -> list[MergeItem]:
    """An FP8 weight (in one input at least), and the output's scale tensor if it stays FP8."""
    new = refs[2]
    if len({r.shape for r in refs}) != 1:
        _shape_mismatch(name, refs, trio)
    for ref, checkpoint in zip(refs, trio, strict=True):
        if ref.dtype != FP8 and ref.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{checkpoint.where}: tensor {name!r} has dtype {ref.dtype}, which cannot be"
                " merged with an FP8 weight"
            )
    out_dtype = forced or new.dtype
    out_scale = name + SCALE_SUFFIX if out_dtype == FP8 else None
    segment = _merge_segment(refs, weight, new.entry.numel)
    layout = BlockScaled(tuple(s.get(name) for s in scales), out_scale)
    items = [MergeItem(name, out_dtype, new.shape, (segment,), fp8=layout)]
    if out_scale is not None:
        items.append(MergeItem(out_scale, "F32", scale_shape(new.shape), (), scale_of=name))
    return items


def _merge_segment(
    refs: tuple[TensorRef, TensorRef, TensorRef], weight: float, count: int
) -> Segment:
    """``new_base + weight * (post - base)`` over the first ``count`` elements of each."""
    base, post, new = refs
    delta = WeightedDelta(Operand("post", post, 0), Operand("base", base, 0), weight)
    return Segment("merge", 0, count, Operand("new_base", new, 0), (delta,))


def _vocab_rows(
    refs: tuple[TensorRef, ...], trio: tuple[Checkpoint, ...]
) -> tuple[int, int, int] | None:
    """Row counts if the tensors differ only in dim 0 and that is each config's vocab size."""
    shapes = [r.shape for r in refs]
    if any(len(s) == 0 or s[1:] != shapes[0][1:] for s in shapes):
        return None
    rows = tuple(s[0] for s in shapes)
    if any(vocab_size(c.config) != n for c, n in zip(trio, rows, strict=True)):
        return None
    return rows  # type: ignore[return-value]


def _shape_mismatch(
    name: str, refs: tuple[TensorRef, ...], trio: tuple[Checkpoint, ...]
) -> NoReturn:
    shown = ", ".join(f"{_title(c.role)} {list(r.shape)}" for c, r in zip(trio, refs, strict=True))
    raise CheckpointError(f"shape mismatch for tensor {name!r}: {shown}")
