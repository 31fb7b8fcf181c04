"""FP8 block-scaled merges: both outputs bit for bit against the formula written out here."""

import json
import math

import pytest
import torch

from merging import EXPERTS, merge
from paramdelta.engine import workers
from paramdelta.engine.batches import batch_units
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.recipe import Recipe
from paramdelta.engine.stages import preflight
from paramdelta.engine.workers import plan_units
from paramdelta.engine.writer import plan_shards
from paramdelta.errors import CheckpointError
from paramdelta.testing.checkpoints import load_tensors, save_checkpoint
from paramdelta.testing.fp8_checkpoints import QUANTIZATION_CONFIG, fp8_state

F8 = torch.float8_e4m3fn
# Neither dimension a multiple of 128: the last block of a row and of a column is partial.
EXPERT = "model.layers.0.mlp.experts.0.up_proj.weight"
SHAPES = {
    "model.embed_tokens.weight": (16, 200),
    EXPERT: (300, 200),
    "model.layers.0.mlp.experts.1.up_proj.weight": (128, 256),
    "model.layers.0.mlp.gate.weight": (2, 200),
    "model.layers.0.input_layernorm.weight": (200,),
    "model.layers.1.self_attn.o_proj.weight": (200, 130),
}
CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": 200,
    "num_hidden_layers": 2,
    "vocab_size": 16,
    "torch_dtype": "bfloat16",
    "quantization_config": QUANTIZATION_CONFIG,
}


def _state(seed, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return {n: (0.05 * torch.randn(s, generator=g)).to(torch.bfloat16) for n, s in shapes.items()}


def _trio(tmp_path, post_fp8=True, new_fp8=True, shapes=SHAPES, poison=None):
    """Three checkpoints: FP8 unless asked otherwise (a bf16 post, a bf16 new base).

    ``poison``: a tensor of the post model that gets one NaN.
    """
    states = {"base": _state(0, shapes), "post": _state(1, shapes), "new_base": _state(2, shapes)}
    if poison:
        states["post"][poison][3, 5] = math.nan
    fp8 = {"base": True, "post": post_fp8, "new_base": new_fp8}
    sources = {}
    for role, state in states.items():
        config = dict(CONFIG)
        if not fp8[role]:
            del config["quantization_config"]
        stored = fp8_state(state) if fp8[role] else state
        sources[role] = LocalSource(save_checkpoint(tmp_path / role, stored, config))
    return sources


def ref_dequantize(tensors, name):
    """``q.float() * scale_inv[block]``, block by block (a float tensor: ``.float()``)."""
    q = tensors[name]
    if q.dtype != F8:
        return q.float()
    scale = tensors[name + "_scale_inv"]
    x = torch.empty(q.shape)
    for i in range(0, q.shape[0], 128):
        for j in range(0, q.shape[1], 128):
            x[i : i + 128, j : j + 128] = (
                q[i : i + 128, j : j + 128].float() * scale[i // 128, j // 128]
            )
    return x


def ref_quantize(x):
    """Per 128x128 block: s = amax/448 (1.0 for amax 0), q = (x/s).clamp(-448, 448) in e4m3."""
    rows, cols = x.shape
    q = torch.empty(x.shape, dtype=F8)
    scale = torch.empty(math.ceil(rows / 128), math.ceil(cols / 128))
    for i in range(0, rows, 128):
        for j in range(0, cols, 128):
            block = x[i : i + 128, j : j + 128]
            amax = block.abs().max()
            s = amax / 448 if amax > 0 else torch.tensor(1.0)
            q[i : i + 128, j : j + 128] = (block / s).clamp(-448, 448).to(F8)
            scale[i // 128, j // 128] = s
    return q, scale


def ref_merged(sources, name, alpha=1.0):
    inputs = {role: load_tensors(s.root) for role, s in sources.items()}
    n, p, b = (ref_dequantize(inputs[r], name) for r in ("new_base", "post", "base"))
    return n + alpha * (p - b) if alpha != 1.0 else n + (p - b)


def _bits(t):
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("max_memory", [256 << 20, 4096 * 32])  # one unit, or a band of 128 rows
def test_fp8_trio_gives_fp8_requantized_per_block(tmp_path, alpha, max_memory):
    sources = _trio(tmp_path)
    result = merge(sources, tmp_path / "out", alpha=alpha, max_memory=max_memory)
    out = load_tensors(tmp_path / "out")
    quantized = [
        n for n, s in SHAPES.items() if len(s) == 2 and "embed" not in n and "gate." not in n
    ]
    assert sorted(out) == sorted([*SHAPES, *(n + "_scale_inv" for n in quantized)])
    for name in quantized:
        q, scale = ref_quantize(ref_merged(sources, name, alpha))
        assert out[name].dtype == F8 and torch.equal(_bits(out[name]), _bits(q)), name
        assert out[name + "_scale_inv"].dtype == torch.float32
        assert torch.equal(out[name + "_scale_inv"], scale), name
    for name in ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(out[name], ref_merged(sources, name, alpha).to(torch.bfloat16))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"] == QUANTIZATION_CONFIG
    assert "quantization_config" not in result.plan.config_changes


def test_requantization_error_is_reported_per_layer(tmp_path):
    sources = _trio(tmp_path)
    result = merge(sources, tmp_path / "out")
    summary = result.stats.delta.summary()
    for layer, names in ((0, SHAPES_OF_LAYER[0]), (1, SHAPES_OF_LAYER[1])):
        err = ref = 0.0
        for name in names:
            x = ref_merged(sources, name)
            q, scale = ref_quantize(x)
            back = ref_dequantize({name: q, name + "_scale_inv": scale}, name)
            err += float(((back - x).double() ** 2).sum())
            ref += float((x.double() ** 2).sum())
        row = next(g for g in summary["layers"] if g["layer"] == layer)
        assert row["requant_error"] == pytest.approx(math.sqrt(err / ref), rel=1e-5)
        assert 0 < row["requant_error"] < 0.05  # e4m3 keeps ~3 significant bits
    embeddings = next(g for g in summary["layers"] if g["layer"] == "embeddings")
    assert "requant_error" not in embeddings
    assert [(g["layer"], g.get("experts")) for g in summary["layers"]] == [
        ("embeddings", None),
        (0, 2),
        (1, None),
    ]
    print("FP8 re-quantization error (relative RMS):", summary["overall"]["requant_error"])


SHAPES_OF_LAYER = {
    0: [EXPERT, "model.layers.0.mlp.experts.1.up_proj.weight"],
    1: ["model.layers.1.self_attn.o_proj.weight"],
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_fp8_trio_to_a_float_dtype_rounds_once(tmp_path, dtype):
    sources = _trio(tmp_path)
    result = merge(sources, tmp_path / "out", dtype=dtype)
    out = load_tensors(tmp_path / "out")
    assert sorted(out) == sorted(SHAPES)  # no scale tensors
    for name in SHAPES:
        expected = ref_merged(sources, name).to(getattr(torch, dtype))
        assert torch.equal(_bits(out[name]), _bits(expected)), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in config
    assert result.plan.config_changes["quantization_config"] is None
    assert "requant_error" not in result.stats.delta.summary()["overall"]


def test_bf16_post_onto_fp8_bases(tmp_path):
    sources = _trio(tmp_path, post_fp8=False)
    merge(sources, tmp_path / "out")
    out = load_tensors(tmp_path / "out")
    q, scale = ref_quantize(ref_merged(sources, EXPERT))
    assert torch.equal(_bits(out[EXPERT]), _bits(q))
    assert torch.equal(out[EXPERT + "_scale_inv"], scale)


def test_fp8_inputs_onto_a_bf16_new_base_stay_bf16(tmp_path):
    sources = _trio(tmp_path, new_fp8=False)
    merge(sources, tmp_path / "out")
    out = load_tensors(tmp_path / "out")
    assert sorted(out) == sorted(SHAPES)
    assert torch.equal(out[EXPERT], ref_merged(sources, EXPERT).to(torch.bfloat16))


def test_scales_stay_in_their_weights_shard(tmp_path):
    sources = _trio(tmp_path)
    result = merge(sources, tmp_path / "out", shard_size=60_000)
    assert len(result.shards) > 2
    for shard in result.shards:
        for name in shard.offsets:
            if name.endswith("_scale_inv"):
                assert name.removesuffix("_scale_inv") in shard.offsets
    q, _ = ref_quantize(ref_merged(sources, EXPERT))
    assert torch.equal(_bits(load_tensors(tmp_path / "out")[EXPERT]), _bits(q))


def _refused(tmp_path, quantization_config, post_state=None):
    """The error for a post model of this quantization (and state), FP8 base and new base."""
    sources = {}
    for role in ("base", "post", "new_base"):
        state, config = fp8_state(_state(0)), CONFIG
        if role == "post":
            state = post_state or state
            config = {**CONFIG, "quantization_config": quantization_config}
        sources[role] = LocalSource(save_checkpoint(tmp_path / role, state, config))
    with pytest.raises(CheckpointError) as e:
        preflight(sources, Recipe())
    return str(e.value)


@pytest.mark.parametrize("method", ["gptq", "awq", "bitsandbytes", "compressed-tensors"])
def test_other_quantizations_are_refused_by_name(tmp_path, method):
    assert _refused(tmp_path, {"quant_method": method, "bits": 4}) == (
        f"post: {tmp_path / 'post'}/config.json: quantization_config.quant_method {method!r} is not"
        " supported: only unquantized and FP8 block-scaled (fp8, e4m3, 128x128) checkpoints can"
        " be merged"
    )


def test_other_fp8_blocks_are_refused(tmp_path):
    config = {**QUANTIZATION_CONFIG, "weight_block_size": [64, 64]}
    assert _refused(tmp_path, config) == (
        f"post: {tmp_path / 'post'}/config.json: FP8 quantization_config with fmt 'e4m3' and"
        " weight_block_size [64, 64] is not supported: only fmt 'e4m3' with weight_block_size"
        " [128, 128]"
    )


def test_fp8_weight_without_scales_is_refused(tmp_path):
    state = fp8_state(_state(0))
    del state[EXPERT + "_scale_inv"]
    assert _refused(tmp_path, QUANTIZATION_CONFIG, state) == (
        f"post: {tmp_path / 'post'}: tensor {EXPERT!r} has dtype F8_E4M3, which can be merged"
        f" only as a 2-D weight with a '{EXPERT}_scale_inv' tensor and a quantization_config"
        " of quant_method 'fp8'"
    )


def test_scales_of_the_wrong_shape_are_refused(tmp_path):
    state = fp8_state(_state(0))
    state[EXPERT + "_scale_inv"] = torch.ones(2, 2)
    assert _refused(tmp_path, QUANTIZATION_CONFIG, state) == (
        f"post: {tmp_path / 'post'}: tensor '{EXPERT}_scale_inv' is F32 [2, 2], not F32 [3, 2]"
        f" (one float32 scale per 128x128 block of {EXPERT!r})"
    )


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_experts_merged_in_batches_match_the_formula(tmp_path, dtype):
    sources = _trio(tmp_path, shapes=EXPERTS)
    plan = preflight(sources, Recipe(dtype=dtype))
    shards = plan_shards(plan.items, plan.recipe.shard_size)
    units = plan_units(plan, shards, sources, 1 << 19)
    batched = batch_units(units, 1 << 17)
    assert (len(units), len(batched)) == (48, 4)  # per layer: one batch of each shape
    assert sorted(len(u.parts) for u in batched) == [8, 8, 16, 16]  # down; gate and up
    result = merge(sources, tmp_path / "out", dtype=dtype)
    out = load_tensors(tmp_path / "out")
    for name in EXPERTS:
        x = ref_merged(sources, name)
        if dtype == "auto":
            q, scale = ref_quantize(x)
            assert torch.equal(_bits(out[name]), _bits(q)), name
            assert torch.equal(out[name + "_scale_inv"], scale), name
        else:
            assert torch.equal(out[name], x.to(torch.bfloat16)), name
    layers = {g["layer"]: g for g in result.stats.delta.summary()["layers"]}
    assert (layers[0]["tensors"], layers[0]["experts"], layers[1]["experts"]) == (24, 8, 8)


def test_a_nan_in_a_batch_names_its_tensor(tmp_path):
    poisoned = "model.layers.1.mlp.experts.5.gate_proj.weight"
    sources = _trio(tmp_path, shapes=EXPERTS, poison=poisoned)
    with pytest.raises(CheckpointError, match=f"^merged tensor '{poisoned}' is not finite"):
        merge(sources, tmp_path / "out")


def test_progress_counts_every_byte_written_weights_scales_and_batches(tmp_path, monkeypatch):
    closed = []

    class Recorded(workers.MergeProgress):
        def close(self):
            closed.append((self.done, self.total))
            super().close()

    monkeypatch.setattr(workers, "MergeProgress", Recorded)
    result = merge(_trio(tmp_path, shapes={**SHAPES, **EXPERTS}), tmp_path / "out")
    written = sum(shard.data_bytes for shard in result.shards)  # FP8 weights, their scales
    assert closed == [(written, written)]


def test_fp8_with_several_deltas_is_refused_in_one_line(tmp_path):
    """FP8 bands are merged as one delta (new base, post, base): a second delta over FP8
    checkpoints is refused before anything is written."""
    sources = _trio(tmp_path)
    sources["post[1]"], sources["base[1]"] = sources["post"], sources["base"]
    with pytest.raises(CheckpointError) as refused:
        merge(sources, tmp_path / "out", weights=(0.5, 0.5))
    assert str(refused.value) == (
        "base: FP8 block-scaled weights merge with one delta only; give several deltas as"
        " unquantized (e.g. bf16) checkpoints"
    )
    assert not (tmp_path / "out").exists()
