"""Tiny PEFT LoRA adapters for the trio's base: written by hand (fast) or made by peft.

`write_adapter` writes the files PEFT's ``save_pretrained`` writes, with PEFT's
tensor names, so engine tests need neither transformers nor peft;
`peft_adapter` makes one with peft itself (slow tests, the benchmark).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from paramdelta.engine.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX

TARGETS = ("q_proj", "v_proj", "down_proj")
# Every linear layer of a Llama block: what adapters trained with target_modules="all-linear" hold.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def adapter_config(r: int, lora_alpha: float, **fields: Any) -> dict[str, Any]:
    """adapter_config.json as PEFT writes it for plain LoRA (its fields that matter here)."""
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": list(TARGETS),
        "modules_to_save": None,
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "task_type": "CAUSAL_LM",
        **fields,
    }


def lora_tensors(
    shapes: Mapping[str, Sequence[int]],
    *,
    r: int = 4,
    targets: Sequence[str] = TARGETS,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """Random lora_A/lora_B pairs, PEFT-named, for every base weight (name -> shape) whose
    module is a target."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        module = name.removesuffix(".weight")
        if len(shape) != 2 or module.rsplit(".", 1)[-1] not in targets:
            continue
        out, inp = shape
        prefix = PEFT_PREFIX + module
        tensors[f"{prefix}.lora_A.weight"] = (0.1 * torch.randn(r, inp, generator=generator)).to(
            dtype
        )
        tensors[f"{prefix}.lora_B.weight"] = (0.1 * torch.randn(out, r, generator=generator)).to(
            dtype
        )
    return tensors


def write_adapter(
    directory: str | Path,
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({n: t.contiguous() for n, t in tensors.items()}, directory / ADAPTER_WEIGHTS)
    for name, content in (extra_files or {}).items():
        (directory / name).write_text(content)
    return directory


def peft_adapter(
    directory: str | Path,
    base_dir: str | Path,
    *,
    r: int = 4,
    lora_alpha: int = 8,
    targets: Sequence[str] = TARGETS,
    modules_to_save: Sequence[str] | None = None,
    use_rslora: bool = False,
    seed: int = 0,
) -> Path:
    """An adapter made by peft (LoraConfig + get_peft_model on the base, save_pretrained), with
    random B as well as A so that its delta is not zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=list(targets),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        use_rslora=use_rslora,
        init_lora_weights=False,  # random A and B
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(0.3)  # a delta the size of a fine-tune's, not of the weights
            elif "modules_to_save" in name:
                param.add_(0.01 * torch.randn_like(param))
    peft_model.save_pretrained(str(directory))
    return Path(directory)
