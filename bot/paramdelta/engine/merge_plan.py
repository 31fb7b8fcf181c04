"""What to compute: pair the three checkpoints' tensors and check they fit.

`plan_deltas` turns a new base and a list of weighted deltas (`Delta`: two
opened checkpoints and a weight; `plan_merge` is the one-delta form) into a
`MergePlan`: for every output tensor, its dtype, shape and the segments of
elements that are merged (``new_base + Σ wᵢ·(postᵢ - baseᵢ)``) or copied from
one checkpoint. Each delta is checked against the new base as a one-delta
merge is. It also
decides which non-weight files come from which checkpoint (`paramdelta.engine.files`),
what happens to each vocabulary row, and which token ids the output's config.json
carries. It reads no tensor data: every incompatibility is reported here, before
the first byte moves.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, NoReturn

from paramdelta.engine.adapter import ADAPTER_CONFIG, LoraRef
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
from paramdelta.engine.recipe import DTYPE_CHOICES, VOCAB_POLICIES, Recipe
from paramdelta.engine.roles import ROLES, title
from paramdelta.engine.safetensors_format import INDEX
from paramdelta.errors import CheckpointError

FORMULA = "new_base + alpha * (post - base)"
SEVERAL_FORMULA = "new_base + Σ wᵢ·(postᵢ - baseᵢ)"
COMPUTE_DTYPE = "float32"

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
        rows = ", ".join(f"{title(r)} {n}" for r, n in shared.inputs().items())
        super().__init__(
            f"vocabulary size differs in tensor {tensor!r} ({rows} rows); {fix}"
            f" to {shared.consequences()}"
        )

    def with_fix(self, fix: str) -> VocabularyError:
        return VocabularyError(self.tensor, self.shared, fix)


class Delta(NamedTuple):
    """``weight * (post - base)`` over two opened checkpoints: one term of a recipe."""

    post: Checkpoint
    base: Checkpoint
    weight: float


class Operand(NamedTuple):
    """A run of one input tensor: the checkpoint's role, the tensor, its first element.

    An adapter's targeted weight is a `LoraRef`: its delta, computed rather than read.
    """

    role: str
    ref: TensorRef | LoraRef
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

    def input_files(self) -> Iterator[tuple[str, str]]:
        """(role, file) of every input read, an FP8 weight's input scales included."""
        for segment in self.segments:
            for role, ref, _ in segment.inputs:
                yield role, ref.file
        if self.fp8 is not None:
            for operand, scale in zip(self.segments[0].inputs, self.fp8.scales, strict=True):
                if scale is not None:
                    yield operand.role, scale.file


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
    def shared_rows(cls, policy: str, rows: dict[str, int]) -> Vocabulary:
        """The rows every checkpoint shares are merged; the output has the (first) post
        model's rows, the tokenizer it ships. ``rows``: role -> rows."""
        shared = min(rows.values())
        return cls(
            policy,
            {**rows, "output": rows["post"]},
            merged=shared,
            kept_from_post=rows["post"] - shared,
            dropped_from_new_base=rows["new_base"] - shared,
            dropped_from_base=rows["base"] - shared,
        )

    def inputs(self) -> dict[str, int]:
        """The rows of each checkpoint, by role (without the output's)."""
        return {role: n for role, n in self.rows.items() if role != "output"}

    def _all(self) -> str:
        return "all three" if len(self.inputs()) == len(ROLES) else "all checkpoints"

    def consequences(self) -> str:
        """What the rows become, as a sentence fragment ("merge the 256 rows ...")."""
        parts = [f"merge the {self.merged} rows {self._all()} share"]
        if self.kept_from_post:
            parts.append(f"keep the post model's {self.kept_from_post} extra rows")
        for role, rows in self.inputs().items():
            if role != "post" and rows > self.merged:
                owner = "the new base's" if role == "new_base" else f"the {title(role)}'s"
                parts.append(f"drop {owner} {rows - self.merged} extra rows")
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]

    def describe(self) -> str:
        """One line for the log and the card."""
        inputs = self.inputs()
        if len(set(inputs.values())) == 1:
            head = f"{self.rows['output']} rows in {self._all()}"
        else:
            shown = ", ".join(f"{title(r)} {n}" for r, n in inputs.items())
            head = f"{shown} rows; output {self.rows['output']} rows"
        dropped = "".join(
            f", {rows - self.merged} dropped from the {title(role)}"
            for role, rows in inputs.items()
            if role not in ("post", "new_base") and rows > self.merged
        )
        # The policy's text is a one-delta merge's ("all three"), said of every input here.
        policy = VOCAB_POLICIES[self.policy].replace("all three", self._all())
        return (
            f"{head}: {self.merged} merged, {self.kept_from_post} kept from the post model,"
            f" {self.dropped_from_new_base} dropped from the new base{dropped}"
            f" (vocab policy `{self.policy}`: {policy})"
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
    adapter: dict[str, Any] | None = None  # the post model is a LoRA adapter: `Adapter.summary`

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.items)

    @functools.cached_property
    def deltas(self) -> int:
        """How many deltas the merge sums."""
        return max((len(s.deltas) for i in self.items for s in i.segments), default=1)

    @property
    def roles(self) -> tuple[str, ...]:
        """Every checkpoint the merge reads, in `merge_roles` order."""
        return tuple(self.read)

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
                f"{title(role)} {'missing' if view[key] is None else json.dumps(view[key])}"
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
            missing = [title(c.role) for c in checkpoints if c.role not in have]
            raise CheckpointError(
                f"tensor {name!r} is in {' and '.join(map(title, have))}"
                f" but not in {' and '.join(missing)}"
            )


def plan_merge(
    base: Checkpoint,
    post: Checkpoint,
    new_base: Checkpoint,
    recipe: Recipe = Recipe(),
) -> MergePlan:
    """The one-delta merge ``new_base + alpha * (post - base)``: see `plan_deltas`."""
    return plan_deltas(new_base, [Delta(post, base, recipe.alpha)], recipe)


def plan_deltas(new_base: Checkpoint, deltas: Sequence[Delta], recipe: Recipe) -> MergePlan:
    """Pair tensors, check compatibility, and lay out the computation.

    The deltas' weights are the recipe's (`Recipe.delta_weights`), in its order.
    """
    recipe.check()
    if tuple(d.weight for d in deltas) != recipe.delta_weights:
        raise ValueError(f"delta weights {[d.weight for d in deltas]} are not the recipe's")
    # FP8 weights carry their scale tensors: those are part of the weight, not tensors to pair.
    opened = {c.role: split_scales(c) for d in deltas for c in (d.base, d.post)}
    opened[new_base.role] = split_scales(new_base)
    scales_of = {role: found for role, (_, found) in opened.items()}
    if len(deltas) > 1 and (fp8 := [r for r, found in scales_of.items() if found]):
        raise CheckpointError(
            f"{title(fp8[0])}: FP8 block-scaled weights merge with one delta only; give"
            " several deltas as unquantized (e.g. bf16) checkpoints"
        )
    deltas = [Delta(opened[d.post.role][0], opened[d.base.role][0], d.weight) for d in deltas]
    new_base = opened[new_base.role][0]
    for delta in deltas:  # each delta must fit the new base, as a one-delta merge
        trio = (delta.base, delta.post, new_base)
        if delta.post.adapter is not None:
            _refuse_fp8_adapter(trio, tuple(scales_of[c.role] for c in trio))
        check_configs(trio)
        _check_names(trio)
    # Every checkpoint in `merge_roles` order: each delta's base and post, the new base.
    everyone = (*(c for d in deltas for c in (d.base, d.post)), new_base)
    post = deltas[0].post
    trio = (deltas[0].base, post, new_base)
    # In the order of an FP8 segment's inputs (one delta: new base, post, base).
    scales = tuple(scales_of[c.role] for c in reversed(trio))

    forced = DTYPE_CHOICES[recipe.dtype]
    config = json.loads(json.dumps(new_base.config))
    changes: dict[str, Any] = {}
    items = []
    vocabularies: list[Vocabulary] = []
    # Output follows the new base's file order: reads then stream forward.
    order = sorted(new_base.tensors.values(), key=lambda r: (r.file, r.entry.offset))
    for ref_new in order:
        name = ref_new.entry.name
        refs = tuple(c.tensors[name] for c in everyone)
        if any(name in found for found in scales):
            base_ref, post_ref, new_ref = refs  # FP8: one delta
            items.extend(
                _plan_fp8(name, (base_ref, post_ref, new_ref), trio, scales, forced, deltas)
            )
            continue
        item = _plan_tensor(name, refs, everyone, deltas, forced, recipe, vocabularies)
        for delta in deltas:
            if delta.post.adapter is not None:
                item = _adapt_item(item, delta.post, delta.base.role)
        items.append(_without_zero_deltas(item))

    vocabulary = _vocabulary(vocabularies, everyone, recipe.vocab_policy)
    if vocabulary is not None and vocabulary.rows["output"] != vocab_size(new_base.config):
        changes["vocab_size"] = vocabulary.rows["output"]
        _set_config(config, "vocab_size", changes["vocab_size"])
    changes.update(output_config(config, any(item.dtype == FP8 for item in items)))
    # An adapter without generation defaults gives the base's (see file_donors).
    first = deltas[0]
    donor = first.base if post.adapter is not None and GENERATION_CONFIG not in post.files else post
    for key, value in _token_ids(donor).items():
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

    listings = {c.role: c.files for c in everyone}
    files = file_donors(listings)
    for path, role in files.items():
        donor = next(c for c in everyone if c.role == role)
        check_size(
            donor.source.size(path), MAX_DONATED_BYTES, f"{donor.where}/{path}", "a copied file"
        )
    read = _files_read(everyone, items, files)
    return MergePlan(
        items=items,
        recipe=recipe,
        files=files,
        config=config,
        config_changes=changes,
        skipped=skipped_files(listings, files, {p for paths in read.values() for p in paths}),
        vocabulary=vocabulary,
        read=read,
        adapter=post.adapter.summary() if post.adapter is not None else None,
    )


def _files_read(
    trio: Sequence[Checkpoint], items: Sequence[MergeItem], donors: dict[str, str]
) -> dict[str, list[str]]:
    """Per role, every file the merge reads: config, index, shards and donated files."""
    read = {
        c.role: {ADAPTER_CONFIG} if c.adapter else {CONFIG, *({INDEX} & set(c.files))} for c in trio
    }
    for item in items:
        for role, file in item.input_files():
            read[role].add(file)
    for path, role in donors.items():
        read[role].add(path)
    return {role: sorted(paths) for role, paths in read.items()}


def _adapt_item(item: MergeItem, post: Checkpoint, base_role: str) -> MergeItem:
    """The item with one delta's post an adapter (``post``, on the checkpoint ``base_role``),
    planned as if that post were its base: the delta is s·B@A where the adapter targets the
    tensor, ``saved - base`` for a saved module, and ``base - base`` (zero) elsewhere."""
    adapter = post.adapter
    assert adapter is not None
    if item.name in adapter.saved:
        return item
    lora = adapter.lora.get(item.name)
    segments = []
    for segment in item.segments:
        if segment.op == "copy" and segment.start.role == post.role:  # post's extra vocab rows
            if lora is not None:
                raise CheckpointError(
                    f"tensor {item.name!r}: the adapter changes it and its rows differ between"
                    " base and new base; an adapter on resized rows is not supported"
                )
            segment = replace(segment, start=segment.start._replace(role=base_role))
        elif segment.op == "merge":
            deltas = tuple(
                d._replace(post=d.post._replace(ref=lora) if lora else d.base)
                if d.post.role == post.role
                else d
                for d in segment.deltas
            )
            segment = replace(segment, deltas=deltas)
        segments.append(segment)
    return replace(item, segments=tuple(segments))


def _without_zero_deltas(item: MergeItem) -> MergeItem:
    """A merge whose every delta is an adapter's zero (``base - base``) is the new base's
    tensor, copied: no base read. Beside a delta that is not zero, a zero one stays, so
    every merged chunk has the same deltas in the same order (`kernel.Moments.gram`)."""
    if not any(s.op == "merge" and all(d.post == d.base for d in s.deltas) for s in item.segments):
        return item  # the usual case: no new objects per tensor
    segments = tuple(
        replace(s, op="copy", deltas=())
        if s.op == "merge" and all(d.post == d.base for d in s.deltas)
        else s
        for s in item.segments
    )
    return replace(item, segments=segments)


def _vocabulary(
    seen: list[Vocabulary], everyone: Sequence[Checkpoint], policy: str
) -> Vocabulary | None:
    """The rows' fate: from the tensors whose rows differ, else every row is merged."""
    if any(v != seen[0] for v in seen):  # cannot happen: each tensor's rows are its config's
        raise CheckpointError(f"vocabulary rows differ between tensors: {seen[0]} != {seen[-1]}")
    if seen:
        return seen[0]
    rows = vocab_size(everyone[-1].config)
    if rows is None:
        return None
    roles = [c.role for c in everyone]
    return Vocabulary(policy, {**dict.fromkeys(roles, rows), "output": rows}, merged=rows)


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
    refs: tuple[TensorRef, ...],
    everyone: tuple[Checkpoint, ...],
    deltas: Sequence[Delta],
    forced: str | None,
    recipe: Recipe,
    vocabularies: list[Vocabulary],
) -> MergeItem:
    """One output tensor from its refs in ``everyone``'s order (each base and post, new base)."""
    new, post = refs[-1], refs[1]
    vocab_policy = recipe.vocab_policy
    dtypes = {r.entry.dtype for r in refs}
    if COPIED_DTYPES.issuperset(dtypes):
        # Integer buffers (position ids, masks) are not weights: take the new base's.
        if len({r.shape for r in refs}) != 1:
            _shape_mismatch(name, refs, everyone)
        segment = Segment("copy", 0, new.entry.numel, Operand("new_base", new, 0))
        return MergeItem(name, new.dtype, new.shape, (segment,))
    if not FLOAT_DTYPES.issuperset(dtypes):
        ref, checkpoint = next(
            p for p in zip(refs, everyone, strict=True) if p[0].dtype not in FLOAT_DTYPES
        )
        raise CheckpointError(
            f"{checkpoint.where}: tensor {name!r} has dtype {ref.dtype}, which cannot be"
            " merged (only float tensors, FP8 block-scaled weights and integer buffers can)"
        )
    out_dtype = forced or new.dtype

    if len({r.shape for r in refs}) == 1:
        merged = _merge_segment(refs, everyone, deltas, new.entry.numel)
        return MergeItem(name, out_dtype, new.shape, (merged,))

    rows = _vocab_rows(refs, everyone)
    if rows is None:
        _shape_mismatch(name, refs, everyone)
    vocabulary = Vocabulary.shared_rows(vocab_policy, rows)
    if vocab_policy == "error":
        raise VocabularyError(name, Vocabulary.shared_rows("shared", rows))
    vocabularies.append(vocabulary)
    # "shared": the output serves the (first) post model's tokenizer, so it has that
    # model's rows; rows every checkpoint shares are merged, the rest come from post.
    row = new.entry.numel // rows["new_base"]
    shared = vocabulary.merged
    out_rows = vocabulary.rows["output"]
    segments = [_merge_segment(refs, everyone, deltas, shared * row)]
    if out_rows > shared:
        extra = (out_rows - shared) * row
        segments.append(Segment("copy", shared * row, extra, Operand("post", post, shared * row)))
    return MergeItem(name, out_dtype, (out_rows, *new.shape[1:]), tuple(segments))


def _refuse_fp8_adapter(
    trio: tuple[Checkpoint, Checkpoint, Checkpoint], scales: tuple[dict[str, TensorRef], ...]
) -> None:
    """An adapter's delta s·B@A is computed in float32 rows, an FP8 merge in 128-row bands of
    dequantized blocks: the two are not combined, so an adapter on FP8 weights is refused."""
    for checkpoint, found in zip(trio, scales, strict=True):
        if found:
            name = next(iter(found))
            raise CheckpointError(
                f"{checkpoint.where}: tensor {name!r} is an FP8 block-scaled weight and the post"
                " model is a LoRA adapter: an adapter cannot be merged with FP8 weights;"
                " use unquantized (e.g. bf16) base and new base checkpoints"
            )


def _plan_fp8(
    name: str,
    refs: tuple[TensorRef, TensorRef, TensorRef],
    trio: tuple[Checkpoint, Checkpoint, Checkpoint],
    scales: tuple[dict[str, TensorRef], ...],
    forced: str | None,
    deltas: Sequence[Delta],
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
    segment = _merge_segment(refs, trio, deltas, new.entry.numel)
    layout = BlockScaled(tuple(s.get(name) for s in scales), out_scale)
    items = [MergeItem(name, out_dtype, new.shape, (segment,), fp8=layout)]
    if out_scale is not None:
        items.append(MergeItem(out_scale, "F32", scale_shape(new.shape), (), scale_of=name))
    return items


def _merge_segment(
    refs: tuple[TensorRef, ...],
    everyone: tuple[Checkpoint, ...],
    deltas: Sequence[Delta],
    count: int,
) -> Segment:
    """``new_base + Σ wᵢ·(postᵢ - baseᵢ)`` over the first ``count`` elements of each."""
    operands = [Operand(c.role, ref, 0) for c, ref in zip(everyone, refs, strict=True)]
    terms = tuple(
        WeightedDelta(operands[2 * i + 1], operands[2 * i], d.weight) for i, d in enumerate(deltas)
    )
    return Segment("merge", 0, count, operands[-1], terms)


def _vocab_rows(
    refs: tuple[TensorRef, ...], everyone: tuple[Checkpoint, ...]
) -> dict[str, int] | None:
    """Rows by role if the tensors differ only in dim 0 and that is each config's vocab size."""
    shapes = [r.shape for r in refs]
    if any(len(s) == 0 or s[1:] != shapes[0][1:] for s in shapes):
        return None
    rows = {c.role: s[0] for c, s in zip(everyone, shapes, strict=True)}
    if any(vocab_size(c.config) != rows[c.role] for c in everyone):
        return None
    return rows


def _shape_mismatch(
    name: str, refs: tuple[TensorRef, ...], everyone: tuple[Checkpoint, ...]
) -> NoReturn:
    shown = ", ".join(
        f"{title(c.role)} {list(r.shape)}" for c, r in zip(everyone, refs, strict=True)
    )
    raise CheckpointError(f"shape mismatch for tensor {name!r}: {shown}")
