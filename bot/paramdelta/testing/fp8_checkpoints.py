"""FP8 block-scaled and DeepSeek-V3-shaped checkpoints, tiny, for tests and benchmarks.

`fp8_state` quantizes a state dict as DeepSeek ships it (2-D projection weights in
F8_E4M3 with a float32 ``<name>_scale_inv`` per 128x128 block; embeddings, norms,
router gates and the LM head unquantized). `deepseek_tensors` lays out the Hub's
tensor names of a DeepSeek-V3 checkpoint (one tensor per expert and projection),
and `write_generated` writes such a checkpoint fast: ~95k tensors in seconds,
every shard's data a slice of one generated buffer.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from paramdelta.engine.dtypes import ITEMSIZE
from paramdelta.engine.fp8 import quantize
from paramdelta.engine.fp8_layout import SCALE_SUFFIX, scale_shape
from paramdelta.engine.safetensors_format import INDEX, encode_header, shard_filename

QUANTIZATION_CONFIG = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "activation_scheme": "dynamic",
    "weight_block_size": [128, 128],
}
# What DeepSeek keeps unquantized: embeddings, norms, the router, the LM head.
UNQUANTIZED = re.compile(r"embed|norm|lm_head|\.gate\.|\.gate$|bias")


def fp8_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every 2-D projection weight in FP8 e4m3 and its block scales."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.dim() != 2 or UNQUANTIZED.search(name):
            out[name] = tensor
            continue
        q, scale = quantize(tensor.float())
        out[name] = q
        out[name + SCALE_SUFFIX] = scale
    return out


def deepseek_config(
    *,
    layers: int = 61,
    experts: int = 256,
    hidden: int = 32,
    moe_intermediate: int = 16,
    dense_layers: int = 3,
    vocab: int = 256,
) -> dict[str, Any]:
    """A DeepSeek-V3 config.json (its field names and quantization), at tiny dimensions."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "moe_intermediate_size": moe_intermediate,
        "num_hidden_layers": layers,
        "first_k_dense_replace": dense_layers,
        "n_routed_experts": experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": min(8, experts),
        "n_group": 1,
        "topk_group": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "q_lora_rank": hidden // 2,
        "kv_lora_rank": hidden // 2,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 8,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "quantization_config": dict(QUANTIZATION_CONFIG),
    }


def deepseek_tensors(
    config: Mapping[str, Any], *, fp8: bool = True, fused_experts: bool = False
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor of a DeepSeek-V3 checkpoint, as the Hub names them.

    ``fp8=False``: the same names and shapes in bf16 (a scale tensor then is a tiny bf16
    tensor like any other): a trio the old engine merges too, for comparisons.
    ``fused_experts``: each layer's experts as one tensor per projection (the same bytes
    in a few tensors, the benchmarks' yardstick).
    """
    h, v = config["hidden_size"], config["vocab_size"]
    mi, di = config["moe_intermediate_size"], config["intermediate_size"]
    q_rank, kv_rank = config["q_lora_rank"], config["kv_lora_rank"]
    heads = config["num_attention_heads"]
    qk = config["qk_rope_head_dim"] + config["qk_nope_head_dim"]
    rope, vd = config["qk_rope_head_dim"], config["v_head_dim"]
    out: list[tuple[str, str, tuple[int, ...]]] = [("model.embed_tokens.weight", "BF16", (v, h))]

    def weight(name: str, shape: tuple[int, int]) -> None:
        out.append((name, "F8_E4M3" if fp8 else "BF16", shape))
        out.append((name + SCALE_SUFFIX, "F32" if fp8 else "BF16", scale_shape(shape)))

    def mlp(prefix: str, inter: int) -> None:
        weight(prefix + "down_proj.weight", (h, inter))
        weight(prefix + "gate_proj.weight", (inter, h))
        weight(prefix + "up_proj.weight", (inter, h))

    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out.append((p + "input_layernorm.weight", "BF16", (h,)))
        if layer < config["first_k_dense_replace"]:
            mlp(p + "mlp.", di)
        else:
            if fused_experts:
                mlp(p + "mlp.experts.", mi * config["n_routed_experts"])
            for e in range(0 if fused_experts else config["n_routed_experts"]):
                mlp(f"{p}mlp.experts.{e}.", mi)
            out.append(
                (p + "mlp.gate.e_score_correction_bias", "F32", (config["n_routed_experts"],))
            )
            out.append((p + "mlp.gate.weight", "BF16", (config["n_routed_experts"], h)))
            mlp(p + "mlp.shared_experts.", mi * config["n_shared_experts"])
        out.append((p + "post_attention_layernorm.weight", "BF16", (h,)))
        out.append((p + "self_attn.kv_a_layernorm.weight", "BF16", (kv_rank,)))
        weight(p + "self_attn.kv_a_proj_with_mqa.weight", (kv_rank + rope, h))
        weight(p + "self_attn.kv_b_proj.weight", (heads * (qk - rope + vd), kv_rank))
        weight(p + "self_attn.o_proj.weight", (h, heads * vd))
        out.append((p + "self_attn.q_a_layernorm.weight", "BF16", (q_rank,)))
        weight(p + "self_attn.q_a_proj.weight", (q_rank, h))
        weight(p + "self_attn.q_b_proj.weight", (heads * qk, q_rank))
    out.append(("model.norm.weight", "BF16", (h,)))
    out.append(("lm_head.weight", "BF16", (v, h)))
    return out


def _pool(dtype: str, nbytes: int, generator: torch.Generator) -> memoryview:
    """``nbytes`` of finite values of ``dtype``: small weights, FP8 of any finite byte."""
    if dtype == "F8_E4M3":  # every byte but the two NaNs 0x7f and 0xff
        raw = torch.randint(0, 254, (nbytes,), dtype=torch.int16, generator=generator)
        return memoryview((raw + (raw >= 0x7F)).to(torch.uint8).numpy().tobytes())
    torch_dtype = {"BF16": torch.bfloat16, "F32": torch.float32}[dtype]
    n = nbytes // ITEMSIZE[dtype]
    values = 0.01 + 0.01 * torch.rand(n, generator=generator)
    return memoryview(values.to(torch_dtype).view(torch.uint8).numpy().tobytes())


def write_generated(
    directory: str | Path,
    tensors: Sequence[tuple[str, str, tuple[int, ...]]],
    config: Mapping[str, Any],
    *,
    shards: int,
    seed: int,
) -> Path:
    """Write a checkpoint of random (finite) tensors in ``shards`` shards, in seconds."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    sizes = [ITEMSIZE[d] * _numel(s) for _, d, s in tensors]
    total = sum(sizes)
    generator = torch.Generator().manual_seed(seed)
    data = bytearray(_pool("F8_E4M3", total, generator))
    pools = {d: _pool(d, total, generator) for d in ("BF16", "F32")}
    cursor = 0
    for (_, dtype, _), size in zip(tensors, sizes, strict=True):
        if dtype in pools:
            data[cursor : cursor + size] = pools[dtype][cursor : cursor + size]
        cursor += size
    cuts = [len(tensors) * i // shards for i in range(shards + 1)]
    groups = [tensors[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    weight_map, cursor = {}, 0
    for number, group in enumerate(groups, start=1):
        name = shard_filename(number, len(groups))
        prefix, spans = encode_header(group, {"format": "pt"})
        end = cursor + max((e for _, e in spans.values()), default=0)
        with (directory / name).open("wb") as f:
            f.write(prefix)
            f.write(memoryview(data)[cursor:end])
        cursor = end
        weight_map.update(dict.fromkeys(spans, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX).write_text(json.dumps(index))
    return directory


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n
