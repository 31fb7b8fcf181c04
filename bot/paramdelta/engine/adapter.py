"""A PEFT LoRA adapter as a delta's post model: ``post - base = s · B @ A`` per target module.

An adapter folder or repo (``adapter_config.json`` + ``adapter_model.safetensors``)
is opened against the delta's base checkpoint (`open_adapter`): every adapter
tensor is mapped from PEFT's name (``base_model.model.<module>.lora_A.weight``)
to the base weight it changes (``<module>.weight``), shapes are checked, and the
result is a post `Checkpoint` whose ``adapter`` field the planner reads
(`adapt_item`): a targeted weight's delta is a `LoraRef` (computed, never read),
a ``modules_to_save`` tensor is a full replacement (its delta ``saved - base`` is
an ordinary one), every other tensor has no delta (the output is the new base's,
bit for bit). ``s = lora_alpha / r``, or ``lora_alpha / √r`` with ``use_rslora``.

The workers compute a chunk's delta in float32 row bands (`LoraBands.fill`):
``s * (B[rows].float() @ A.float())`` straight into the chunk's input buffer,
so the memory bound holds (plus one A in float32 per worker, `scratch_bytes`).
What PEFT can express beyond that (DoRA, trained biases, other PEFT types,
per-module ranks) is refused in one line naming it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from paramdelta.engine.checkpoint import (
    Checkpoint,
    Source,
    TensorRef,
    open_checkpoint,
    read_json,
)
from paramdelta.engine.dtypes import FLOAT_DTYPES
from paramdelta.engine.files import ADAPTER_CONFIG, is_adapter
from paramdelta.engine.limits import MAX_CONFIG_BYTES
from paramdelta.engine.safetensors_format import TensorEntry, read_header
from paramdelta.errors import CheckpointError

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "default"  # PEFT's adapter name, left in some saved names

# adapter_config.json fields that change what the adapter computes beyond s·B@A:
# refused when set (truthy), with what they are.
REFUSED_FIELDS = {
    "use_dora": "DoRA, a learned magnitude per weight",
    "lora_bias": "a trained LoRA bias",
    "fan_in_fan_out": "transposed Conv1D weights",
    "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas",
    "target_parameters": "LoRA on bare parameters",
    "trainable_token_indices": "trainable token rows",
    "layer_replication": "replicated layers",
    "use_qalora": "QALoRA",
    "use_bdlora": "block-diagonal LoRA",
    "alora_invocation_tokens": "activated LoRA",
    "megatron_config": "Megatron-parallel LoRA layers",
}


@dataclass(frozen=True)
class LoraRef:
    """The delta ``scale * B @ A`` of one base weight [out, in]: A [r, in] and B [out, r]."""

    file: str
    a: TensorEntry
    b: TensorEntry
    scale: float
    dtype: ClassVar[str] = "F32"  # what a chunk of it is computed in

    @property
    def shape(self) -> tuple[int, int]:
        return (self.b.shape[0], self.a.shape[1])


@dataclass(frozen=True)
class Adapter:
    """What an adapter changes, by base tensor name."""

    config: Mapping[str, Any]
    scale: float
    lora: Mapping[str, LoraRef]
    saved: Mapping[str, TensorRef]  # modules_to_save: full replacements

    def summary(self) -> dict[str, Any]:
        """What the lineage record and the card say of it."""
        return {
            "peft_type": "LORA",
            "r": self.config["r"],
            "lora_alpha": self.config["lora_alpha"],
            "use_rslora": bool(self.config.get("use_rslora")),
            "scale": self.scale,
            "delta": "scale * lora_B @ lora_A",
            "lora_tensors": len(self.lora),
            "saved_tensors": sorted(self.saved),
        }


def adapter_scale(config: Mapping[str, Any], where: str) -> float:
    """``lora_alpha / r`` (``/ √r`` with use_rslora), after refusing what is not plain LoRA."""
    if (kind := config.get("peft_type")) != "LORA":
        raise CheckpointError(f"{where}: peft_type {kind!r} is not supported (only LORA)")
    for key, what in REFUSED_FIELDS.items():
        if config.get(key):
            raise CheckpointError(f"{where}: {key} ({what}) is not supported")
    if (bias := config.get("bias", "none")) != "none":
        raise CheckpointError(
            f"{where}: bias {bias!r} (trained biases) is not supported, only 'none'"
        )
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, int | float):
        raise CheckpointError(f"{where}: 'r' must be a positive integer and 'lora_alpha' a number")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _base_name(peft_name: str) -> tuple[str, str]:
    """(base tensor name, kind): kind is "A", "B" or "saved"."""
    name = peft_name.removeprefix(PEFT_PREFIX)
    parts = name.split(".")
    if parts[-2:-1] == [ADAPTER_NAME]:  # "...lora_A.default.weight": PEFT left its name in
        parts.pop(-2)
    if len(parts) >= 2 and parts[-2] in ("lora_A", "lora_B"):
        return ".".join([*parts[:-2], parts[-1]]), parts[-2][-1]
    if "modules_to_save" in parts:
        parts.remove("modules_to_save")
    return ".".join(parts), "saved"


def open_post(source: Source, base: Checkpoint, role: str = "post") -> Checkpoint:
    """A delta's post model (``role``: "post", "post[1]", ...): a checkpoint, or an adapter
    on the delta's own ``base``."""
    if is_adapter(source.list_files()):
        return open_adapter(source, base, role)
    return open_checkpoint(source, role)


def open_adapter(source: Source, base: Checkpoint, role: str = "post") -> Checkpoint:
    """The post checkpoint an adapter makes of ``base``; every check, no tensor data read."""
    where = f"{role}: {source.label}"
    files = source.list_files()
    config = read_json(source, ADAPTER_CONFIG, MAX_CONFIG_BYTES, f"{where}/{ADAPTER_CONFIG}")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}/{ADAPTER_CONFIG}: not a JSON object")
    scale = adapter_scale(config, f"{where}/{ADAPTER_CONFIG}")
    if ADAPTER_WEIGHTS not in files:
        raise CheckpointError(f"{where}: {ADAPTER_WEIGHTS} is missing")
    _check_base(config, base)
    weights = f"{where}/{ADAPTER_WEIGHTS}"
    header = read_header(
        functools.partial(source.read, ADAPTER_WEIGHTS), source.size(ADAPTER_WEIGHTS), weights
    )
    pairs: dict[str, dict[str, TensorEntry]] = {}
    saved: dict[str, TensorRef] = {}
    for entry in header.tensors:
        name, kind = _base_name(entry.name)
        target = base.tensors.get(name)
        if target is None:
            raise CheckpointError(
                f"{weights}: tensor {entry.name!r} maps to {name!r}, which the base does not have"
            )
        if entry.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{weights}: tensor {entry.name!r} has dtype {entry.dtype}")
        if kind == "saved":
            if entry.shape != target.shape:
                raise CheckpointError(
                    f"{weights}: tensor {entry.name!r} has shape {list(entry.shape)},"
                    f" base {name!r} {list(target.shape)}"
                )
            saved[name] = TensorRef(ADAPTER_WEIGHTS, entry)
        else:
            pairs.setdefault(name, {})[kind] = entry
    lora = {name: _lora_ref(name, pair, base, scale, weights) for name, pair in pairs.items()}
    adapter = Adapter(config, scale, lora, saved)
    return Checkpoint(
        role,
        source,
        json.loads(json.dumps(base.config)),  # an adapter has the base's architecture
        {**base.tensors, **saved},
        files,
        adapter=adapter,
    )


def _lora_ref(
    name: str, pair: Mapping[str, TensorEntry], base: Checkpoint, scale: float, where: str
) -> LoraRef:
    for kind in "AB":
        if kind not in pair:
            have = "B" if kind == "A" else "A"
            raise CheckpointError(f"{where}: {name!r} has lora_{have} but no lora_{kind}")
    a, b = pair["A"], pair["B"]
    target = base.tensors[name].shape
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
        raise CheckpointError(
            f"{where}: {a.name!r} {list(a.shape)} and {b.name!r} {list(b.shape)}"
            " are not a LoRA pair (A [r, in], B [out, r])"
        )
    if (b.shape[0], a.shape[1]) != target:
        raise CheckpointError(
            f"{where}: B @ A of {name!r} would be {[b.shape[0], a.shape[1]]},"
            f" the base tensor is {list(target)}"
        )
    return LoraRef(ADAPTER_WEIGHTS, a, b, scale)


def _check_base(config: Mapping[str, Any], base: Checkpoint) -> None:
    """The delta's base is the adapter's base; a different name in the adapter is a warning."""
    named = config.get("base_model_name_or_path")
    provenance = base.source.provenance
    ours = provenance.repo or (str(provenance.path) if provenance.path else base.source.label)
    if named and named != ours:
        log.warning(
            "the adapter says its base is %s, but this merge's base is %s:"
            " the delta is applied to %s",
            named,
            ours,
            ours,
        )


def scratch_bytes(lora: Iterable[LoraRef]) -> int:
    """What one worker holds beyond its chunk buffers: the largest A and two rows, in float32."""
    return max((4 * (r.a.numel + 2 * r.shape[1]) for r in lora), default=0)
