"""FP8 block-scaled checkpoints (DeepSeek-V3's layout): which tensors are, and which are refused.

A weight ``w`` of dtype F8_E4M3 and shape [rows, cols] comes with a float32
``w_scale_inv`` of shape [ceil(rows/128), ceil(cols/128)]; its value is
``q.float() * scale_inv[block]`` (the last block of a row or column may be
partial). config.json says ``quantization_config: {quant_method: "fp8", fmt:
"e4m3", weight_block_size: [128, 128]}``. Every other quantization is refused
by name: its tensors are not weights a delta can be taken of.

Kept free of torch, like the rest of the planning (`paramdelta.engine.fp8` computes).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from paramdelta.engine.checkpoint import CONFIG, Checkpoint, TensorRef
from paramdelta.errors import CheckpointError

BLOCK = 128
FP8 = "F8_E4M3"
SCALE_SUFFIX = "_scale_inv"
METHOD = "fp8"


class BlockScaled(NamedTuple):
    """How an FP8 tensor is merged: each input's scales, and the output's scale tensor.

    ``scales`` is parallel to the segment's inputs (new base, then each post and
    base): a scale tensor, or None for an input stored in a float dtype.
    ``out_scale`` names the output's ``<name>_scale_inv`` when the output is FP8.
    """

    scales: tuple[TensorRef | None, ...]
    out_scale: str | None


def blocks(n: int) -> int:
    return -(-n // BLOCK)


def scale_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return (blocks(shape[0]), blocks(shape[1]))


def check_quantization(checkpoint: Checkpoint) -> bool:
    """True if ``checkpoint`` says it is FP8 block-scaled; refuse every other quantization."""
    where = f"{checkpoint.where}/{CONFIG}"
    config = checkpoint.config.get("quantization_config")
    text = checkpoint.config.get("text_config")
    if config is None and isinstance(text, dict):
        config = text.get("quantization_config")
    if config is None:
        return False
    method = config.get("quant_method") if isinstance(config, dict) else None
    if method != METHOD:
        raise CheckpointError(
            f"{where}: quantization_config.quant_method {method!r} is not supported: only"
            " unquantized and FP8 block-scaled (fp8, e4m3, 128x128) checkpoints can be merged"
        )
    fmt = config.get("fmt", "e4m3")
    block = config.get("weight_block_size")
    if fmt != "e4m3" or block != [BLOCK, BLOCK]:
        raise CheckpointError(
            f"{where}: FP8 quantization_config with fmt {fmt!r} and weight_block_size"
            f" {block!r} is not supported: only fmt 'e4m3' with weight_block_size [128, 128]"
        )
    return True


def split_scales(checkpoint: Checkpoint) -> tuple[Checkpoint, dict[str, TensorRef]]:
    """The checkpoint without its scale tensors, and each FP8 weight's scale tensor by name."""
    quantized = check_quantization(checkpoint)
    scales: dict[str, TensorRef] = {}
    for name, ref in checkpoint.tensors.items():
        if ref.dtype != FP8:
            continue
        scale = checkpoint.tensors.get(name + SCALE_SUFFIX)
        if not quantized or scale is None or len(ref.shape) != 2:
            raise CheckpointError(
                f"{checkpoint.where}: tensor {name!r} has dtype {FP8}, which can be merged only"
                f" as a 2-D weight with a {name + SCALE_SUFFIX!r} tensor and a"
                " quantization_config of quant_method 'fp8'"
            )
        if scale.dtype != "F32" or scale.shape != scale_shape(ref.shape):
            raise CheckpointError(
                f"{checkpoint.where}: tensor {name + SCALE_SUFFIX!r} is {scale.dtype}"
                f" {list(scale.shape)}, not F32 {list(scale_shape(ref.shape))} (one float32"
                f" scale per {BLOCK}x{BLOCK} block of {name!r})"
            )
        scales[name] = scale
    if not scales:
        return checkpoint, scales
    scale_names = {name + SCALE_SUFFIX for name in scales}
    tensors = {n: r for n, r in checkpoint.tensors.items() if n not in scale_names}
    return dataclasses.replace(checkpoint, tensors=tensors), scales


def output_config(config: dict[str, Any], fp8_out: bool) -> dict[str, Any]:
    """The config changes an output needs: a float output drops ``quantization_config``."""
    if fp8_out or "quantization_config" not in config:
        return {}
    del config["quantization_config"]
    return {"quantization_config": None}
