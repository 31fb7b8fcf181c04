"""What to compute: pair the three checkpoints' tensors and check they fit.

`plan_merge` turns three opened checkpoints into a `MergePlan`: for every
output tensor, its dtype, shape and the segments of elements that are merged
(``new_base + alpha * (post - base)``) or copied from one checkpoint. It also
decides which non-weight files come from which checkpoint. It reads no tensor
data: every incompatibility is reported here, before the first byte moves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from paramdelta.engine.checkpoint import CONFIG, Checkpoint, Source, TensorRef
from paramdelta.engine.limits import MAX_DONATED_BYTES, check_size
from paramdelta.engine.safetensors_format import ITEMSIZE
from paramdelta.errors import CheckpointError, UsageError

FORMULA = "new_base + alpha * (post - base)"
COMPUTE_DTYPE = "float32"

ROLE_TITLES = {"base": "base", "post": "post", "new_base": "new base"}
ROLES = tuple(ROLE_TITLES)  # the three checkpoints of a merge, in the formula's order

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
COPIED_DTYPES = frozenset({"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})

# --dtype choices, mapped to safetensors dtype names (None: keep the new base's).
DTYPE_CHOICES: dict[str, str | None] = {
    "auto": None,
    "bfloat16": "BF16",
    "float16": "F16",
    "float32": "F32",
}
TORCH_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}

VOCAB_POLICIES = ("error", "shared")

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

# Which checkpoint gives each non-weight file, first role that has it wins.
# config.json describes the architecture being produced: the new base's.
# Tokenizer, chat template and generation defaults are the instruct behaviour
# being transferred: the post model's. Licence files follow the new base.
FILE_DONORS: dict[str, tuple[str, ...]] = {
    CONFIG: ("new_base",),
    "generation_config.json": ("post",),
    "tokenizer.json": ("post",),
    "tokenizer_config.json": ("post",),
    "special_tokens_map.json": ("post",),
    "added_tokens.json": ("post",),
    "tokenizer.model": ("post",),
    "vocab.json": ("post",),
    "merges.txt": ("post",),
    "chat_template.jinja": ("post",),
    "chat_template.json": ("post",),
    "LICENSE": ("new_base", "post"),
    "LICENSE.txt": ("new_base", "post"),
    "LICENSE.md": ("new_base", "post"),
    "USE_POLICY.md": ("new_base", "post"),
    "NOTICE": ("new_base", "post"),
}


@dataclass(frozen=True)
class Segment:
    """A run of ``count`` output elements starting at ``out_start``.

    Each input is (role, tensor, element offset). ``op == "merge"``: the inputs
    are post, base, new_base in that order. ``op == "copy"``: a single input,
    copied (converted if its dtype differs from the output's).
    """

    op: Literal["merge", "copy"]
    out_start: int
    count: int
    inputs: tuple[tuple[str, TensorRef, int], ...]


@dataclass(frozen=True)
class MergeItem:
    name: str
    dtype: str
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for dim in self.shape:
            n *= dim
        return n


@dataclass
class MergePlan:
    items: list[MergeItem]
    alpha: float
    dtype: str  # the --dtype choice
    vocab_policy: str
    files: dict[str, str]  # path -> donor role
    config: dict[str, Any]
    config_changes: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.items)

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
    names = [set(c.tensors) for c in checkpoints]
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
    *,
    alpha: float = 1.0,
    dtype: str = "auto",
    vocab_policy: str = "error",
) -> MergePlan:
    """Pair tensors, check compatibility, and lay out the computation."""
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, not {dtype!r}")
    if vocab_policy not in VOCAB_POLICIES:
        raise UsageError(f"--vocab-policy must be one of {', '.join(VOCAB_POLICIES)}")
    trio = (base, post, new_base)
    check_configs(trio)
    _check_names(trio)

    forced = DTYPE_CHOICES[dtype]
    config = json.loads(json.dumps(new_base.config))
    changes: dict[str, Any] = {}
    items = []
    # Output follows the new base's file order: reads then stream forward.
    order = sorted(new_base.tensors.values(), key=lambda r: (r.file, r.entry.offset))
    for ref_new in order:
        name = ref_new.entry.name
        refs = (base.tensors[name], post.tensors[name], ref_new)
        items.append(_plan_tensor(name, refs, trio, forced, vocab_policy, changes))

    if "vocab_size" in changes:
        _set_config(config, "vocab_size", changes["vocab_size"])
    out_dtypes = {item.dtype for item in items if item.dtype in FLOAT_DTYPES}
    if forced is not None and len(out_dtypes) == 1:
        torch_name = TORCH_DTYPE_NAMES[forced]
        for key in ("torch_dtype", "dtype"):
            if key in config and config[key] != torch_name:
                config[key] = torch_name
                changes[key] = torch_name

    files = {}
    for path, roles in FILE_DONORS.items():
        for role in roles:
            donor = next(c for c in trio if c.role == role)
            if path in donor.files:
                size = donor.source.size(path)
                check_size(size, MAX_DONATED_BYTES, f"{donor.where}/{path}", "a copied file")
                files[path] = role
                break
    return MergePlan(
        items=items,
        alpha=alpha,
        dtype=dtype,
        vocab_policy=vocab_policy,
        files=files,
        config=config,
        config_changes=changes,
    )


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
    vocab_policy: str,
    changes: dict[str, Any],
) -> MergeItem:
    base, post, new = refs
    dtypes = [r.dtype for r in refs]
    if all(d in COPIED_DTYPES for d in dtypes):
        # Integer buffers (position ids, masks) are not weights: take the new base's.
        if len({r.shape for r in refs}) != 1:
            _shape_mismatch(name, refs, trio)
        segment = Segment("copy", 0, new.entry.numel, (("new_base", new, 0),))
        return MergeItem(name, new.dtype, new.shape, (segment,))
    for ref, checkpoint in zip(refs, trio, strict=True):
        if ref.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{checkpoint.where}: tensor {name!r} has dtype {ref.dtype}, which cannot be"
                " merged (quantized or mixed with integer tensors); use unquantized checkpoints"
            )
    out_dtype = forced or new.dtype

    if base.shape == post.shape == new.shape:
        merged = Segment("merge", 0, new.entry.numel, _merge_inputs(refs, 0))
        return MergeItem(name, out_dtype, new.shape, (merged,))

    rows = _vocab_rows(refs, trio)
    if rows is None:
        _shape_mismatch(name, refs, trio)
    if vocab_policy == "error":
        shown = ", ".join(f"{_title(c.role)} {n}" for c, n in zip(trio, rows, strict=True))
        raise CheckpointError(
            f"vocabulary size differs in tensor {name!r} ({shown} rows); pass"
            " --vocab-policy shared to merge the shared rows and keep the post model's extra rows"
        )
    # "shared": the output serves the post model's tokenizer, so it has the
    # post model's rows; rows all three share are merged, the rest come from post.
    row = new.entry.numel // rows[2]
    shared = min(rows)
    out_rows = rows[1]
    changes["vocab_size"] = out_rows
    segments = [Segment("merge", 0, shared * row, _merge_inputs(refs, 0))]
    if out_rows > shared:
        extra = (out_rows - shared) * row
        segments.append(Segment("copy", shared * row, extra, (("post", post, shared * row),)))
    return MergeItem(name, out_dtype, (out_rows, *new.shape[1:]), tuple(segments))


def _merge_inputs(
    refs: tuple[TensorRef, TensorRef, TensorRef], first: int
) -> tuple[tuple[str, TensorRef, int], ...]:
    base, post, new = refs
    return (("post", post, first), ("base", base, first), ("new_base", new, first))


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
