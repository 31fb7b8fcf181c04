"""A tiny DeepSeek-V3 trio (transformers' own config, the Hub's tensor names, FP8 experts)."""

import json

import pytest
import torch

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.fp8 import expand
from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.stages import merge_to_dir
from paramdelta.testing.checkpoints import load_tensors
from paramdelta.testing.fp8_checkpoints import (
    QUANTIZATION_CONFIG,
    deepseek_tensors,
    write_generated,
)

ROLES = ("base", "post", "new_base")


@pytest.fixture
def deepseek_trio(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.DeepseekV3Config(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    ).to_dict()
    config |= {
        "architectures": ["DeepseekV3ForCausalLM"],
        "quantization_config": QUANTIZATION_CONFIG,
    }
    tensors = deepseek_tensors(config)
    return {
        role: LocalSource(write_generated(tmp_path / role, tensors, config, shards=3, seed=seed))
        for seed, role in enumerate(ROLES)
    }


@pytest.mark.slow
def test_tiny_deepseek_v3_merges_and_loads_in_transformers(deepseek_trio, tmp_path):
    from transformers import DeepseekV3ForCausalLM

    runtime = Runtime(progress=False)
    as_bf16 = merge_to_dir(deepseek_trio, tmp_path / "bf16", Recipe(dtype="bfloat16"), runtime)
    as_fp8 = merge_to_dir(deepseek_trio, tmp_path / "fp8", Recipe(), runtime)

    model, info = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "bf16", output_loading_info=True)
    assert not any(info.values()), info  # every expert found under its Hub name
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    assert "quantization_config" not in json.loads((tmp_path / "bf16" / "config.json").read_text())

    # The FP8 output keeps the layout; dequantized, it is the float merge within its error.
    fp8, bf16 = load_tensors(tmp_path / "fp8"), load_tensors(tmp_path / "bf16")
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    scale = fp8[name + "_scale_inv"]
    back = fp8[name].float() * expand(scale, *fp8[name].shape)
    assert torch.allclose(back, bf16[name].float(), rtol=0.07, atol=1e-3)
    layers = {g["layer"]: g for g in as_fp8.stats.delta.summary()["layers"]}
    assert layers[1]["experts"] == 4 and 0 < layers[1]["requant_error"] < 0.05
    assert "requant_error" not in as_bf16.stats.delta.summary()["overall"]
