"""Deterministic tiny Llama-shaped checkpoints, written with the reference safetensors writer.

Used by the tests, the benchmarks and `paramdelta demo`. A "trio" is three
related checkpoints like the real use case: a base, a post-trained model
(base + a delta) and a newer base (base + a different change).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file


def llama_config(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vocab_size: int = 256,
    tie_word_embeddings: bool = False,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": hidden_size // num_attention_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def config_for_size(
    target_bytes: int,
    dtype: torch.dtype = torch.bfloat16,
    *,
    dims: tuple[int, int, int] = (2048, 5632, 32000),
    min_layers: int = 1,
) -> dict[str, Any]:
    """A Llama config whose weights take about ``target_bytes`` (benchmarks); ``dims``:
    hidden size, intermediate size, vocabulary."""
    hidden, intermediate, vocab = dims
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_layer = (4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden) * itemsize
    fixed = (2 * vocab * hidden + hidden) * itemsize
    layers = max(min_layers, round((target_bytes - fixed) / per_layer))
    return llama_config(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=vocab,
        dtype=dtype,
    )


def tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Llama parameter names and shapes, in the order transformers saves them."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes[p + "self_attn.q_proj.weight"] = (h, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    return shapes


# Greedy generation of the tiny models steps through the vocabulary: after token i comes
# i + NEXT_TOKEN_STEP (wrapping around, never to a special token), see `random_state_dict`.
NEXT_TOKEN_STEP = 7
FIRST_PLAIN_TOKEN = 3  # ids 0-2 are the special tokens <unk>, <s> (bos) and </s> (eos)


def random_state_dict(
    config: Mapping[str, Any],
    *,
    seed: int,
    dtype: torch.dtype = torch.bfloat16,
    scale: float = 0.02,
) -> dict[str, torch.Tensor]:
    """Random weights, except that the LM head's rows are the embeddings, shifted.

    With random weights alone, greedy generation soon repeats one token or a short
    cycle (the residual stream is mostly the input token's embedding, so the next
    token is a fixed function of the last one). With row i + NEXT_TOKEN_STEP of the
    LM head equal to embedding i, the likeliest next token after i is
    i + NEXT_TOKEN_STEP: text that moves on, like a real model's, and a model that
    a huge --alpha visibly breaks.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in tensor_shapes(config).items():
        if len(shape) == 1:  # norms sit around 1.0, like real ones
            t = 1.0 + scale * torch.randn(shape, generator=generator)
        else:
            t = scale * torch.randn(shape, generator=generator)
        state[name] = t.to(dtype)
    head = state.get("lm_head.weight")
    plain = config["vocab_size"] - FIRST_PLAIN_TOKEN
    if head is not None and plain > 0:
        ids = torch.arange(FIRST_PLAIN_TOKEN, config["vocab_size"])
        after = FIRST_PLAIN_TOKEN + (ids - FIRST_PLAIN_TOKEN + NEXT_TOKEN_STEP) % plain
        head[after] = state["model.embed_tokens.weight"][ids]
    return state


def perturbed(
    state: Mapping[str, torch.Tensor], *, seed: int, scale: float = 0.002
) -> dict[str, torch.Tensor]:
    """``state`` plus small noise: a fine-tune or a new release of the same base."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: (t.float() + scale * torch.randn(t.shape, generator=generator)).to(t.dtype)
        for name, t in state.items()
    }


def save_checkpoint(
    directory: str | Path,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    max_shard_size: int | str | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write a Hugging Face checkpoint dir: config.json, weights (sharded if asked), extras."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    split = split_torch_state_dict_into_shards(dict(state), max_shard_size=max_shard_size or 10**15)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].contiguous() for n in names}, directory / filename, {"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for name, content in (extra_files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory


# The tiny tokenizer: one token per character, 256 in all, the configs' default vocab_size;
# ids 0-2 are the special tokens the configs name (bos 1, eos 2).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
TOKEN_CHARS = (
    *map(chr, range(32, 127)),  # printable ASCII
    "\n",
    "\t",
    *map(chr, range(0xA1, 0x100)),  # Latin-1
    *map(chr, range(0x100, 0x13D)),  # Latin Extended-A
)


def tokenizer_json(extra_special: Sequence[str] = ()) -> str:
    """A character-level tokenizer.json (WordLevel over characters) for the tiny models.

    Unknown characters become <unk>, and a <s> starts every encoded text, as
    Llama's tokenizer does. ``extra_special``: more special tokens (a vision-language
    model's image tokens), given the ids from 256 on.
    """
    specials = (*SPECIAL_TOKENS, *extra_special)
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *TOKEN_CHARS, *extra_special))}
    special = [
        {
            "id": vocab[token],
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for token in specials
    ]
    bos = {"id": "<s>", "type_id": 0}
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": "[\\s\\S]"},
            "behavior": "Isolated",
            "invert": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    return json.dumps(document) + "\n"


def chat_template(role: str) -> str:
    """A chat template in the usual shape; its comment names the checkpoint it came from."""
    return (
        f"{{#- the {role} model's chat template -#}}\n"
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )


def donor_files(role: str) -> dict[str, str]:
    """Small non-weight files that say which checkpoint they came from, and a real tokenizer."""
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 256,
        "origin": role,
    }
    generation = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": role == "post", "origin": role}
    return {
        "tokenizer.json": tokenizer_json(),
        "tokenizer_config.json": json.dumps(tokenizer_config) + "\n",
        "generation_config.json": json.dumps(generation) + "\n",
        "chat_template.jinja": chat_template(role),
        "LICENSE": f"licence of the {role} model\n",
    }


def make_trio(
    root: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: int | str | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write base, post and new_base checkpoints under ``root``; returns role -> directory."""
    root = Path(root)
    config = dict(config or llama_config(dtype=dtype))
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    base = random_state_dict(config, seed=seed, dtype=dtype)
    states = {
        "base": base,
        "post": perturbed(base, seed=seed + 1),
        "new_base": perturbed(base, seed=seed + 2),
    }
    return {
        role: save_checkpoint(
            root / role,
            state,
            config,
            max_shard_size=max_shard_size,
            extra_files=donor_files(role),
        )
        for role, state in states.items()
    }


def write_raw_safetensors(
    path: str | Path,
    header: Mapping[str, Any] | bytes,
    data: bytes = b"",
    *,
    declared_length: int | None = None,
) -> Path:
    """Write a safetensors file byte by byte, malformed on purpose if asked (tests)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if declared_length is None else declared_length
    path = Path(path)
    path.write_bytes(length.to_bytes(8, "little") + raw + data)
    return path


def load_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint dir, loaded whole with the reference reader (tests only)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def reference_merge(
    base: Mapping[str, torch.Tensor],
    post: Mapping[str, torch.Tensor],
    new_base: Mapping[str, torch.Tensor],
    *,
    alpha: float = 1.0,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The formula, written the obvious way: what every merged tensor must equal bit for bit."""
    out = {}
    for name, n in new_base.items():
        if not n.is_floating_point():
            out[name] = n
            continue
        delta = post[name].float() - base[name].float()
        merged = delta + n.float() if alpha == 1.0 else n.float() + alpha * delta
        out[name] = merged.to(dtype or n.dtype)
    return out


def mismatched_tensors(
    actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> list[str]:
    """Names whose dtype, shape or bits differ (NaN-safe: compares the raw bytes)."""
    names = set(actual) | set(expected)
    return sorted(
        name
        for name in names
        if name not in actual
        or name not in expected
        or actual[name].dtype != expected[name].dtype
        or actual[name].shape != expected[name].shape
        or not torch.equal(_bytes(actual[name]), _bytes(expected[name]))
    )


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)
