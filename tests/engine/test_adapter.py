"""A PEFT LoRA adapter as the post model: the delta s·B@A, what is saved, what is refused."""

import logging
import math

import pytest
import torch

from merging import EXPERTS, merge, two_deltas
from paramdelta.engine.adapter import LoraRef
from paramdelta.engine.batches import batch_units
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.delta import group_of
from paramdelta.engine.lora_bands import LoraBands
from paramdelta.engine.recipe import Recipe
from paramdelta.engine.roles import delta_roles
from paramdelta.engine.safetensors_format import read_header
from paramdelta.engine.stages import preflight
from paramdelta.engine.workers import plan_units
from paramdelta.engine.writer import plan_shards
from paramdelta.errors import CheckpointError
from paramdelta.testing.adapters import adapter_config, lora_tensors, peft_adapter, write_adapter
from paramdelta.testing.checkpoints import load_tensors, make_trio, save_checkpoint
from paramdelta.testing.fp8_checkpoints import QUANTIZATION_CONFIG, fp8_state

PREFIX = "base_model.model."


@pytest.fixture
def trio(tmp_path):
    return make_trio(tmp_path / "in")


def _merge(trio, adapter_dir, out, **options):
    sources = {
        "base": LocalSource(trio["base"]),
        "post": LocalSource(adapter_dir),
        "new_base": LocalSource(trio["new_base"]),
    }
    return merge(sources, out, **options)


def _pair(tensors, name):
    module = PREFIX + name.removesuffix(".weight")
    return tensors[f"{module}.lora_B.weight"], tensors[f"{module}.lora_A.weight"]


def _shapes(tensors):
    return {name: t.shape for name, t in tensors.items()}


def max_ulps(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest difference in units in the last place of ``expected``'s dtype."""
    up = torch.nextafter(expected.abs(), torch.full_like(expected, math.inf))
    ulp = (up.float() - expected.abs().float()).clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual.float() - expected.float()).abs() / ulp).max().item()


def test_targeted_weights_are_new_base_plus_s_b_a_and_the_rest_is_the_new_base(tmp_path, trio):
    base = load_tensors(trio["base"])
    tensors = lora_tensors(_shapes(base), r=4)
    write_adapter(tmp_path / "ad", tensors, adapter_config(4, 8))
    _merge(trio, tmp_path / "ad", tmp_path / "out")
    out, new = load_tensors(tmp_path / "out"), load_tensors(trio["new_base"])
    targeted = 0
    for name, merged in out.items():
        if name.rsplit(".", 2)[-2] not in ("q_proj", "v_proj", "down_proj"):
            assert torch.equal(merged, new[name]), name  # Δ = 0: the new base, bit for bit
            continue
        b, a = _pair(tensors, name)
        expected = (new[name].float() + (8 / 4) * (b.float() @ a.float())).to(merged.dtype)
        assert max_ulps(merged, expected) <= 1, name
        targeted += 1
    assert targeted == 6


def test_weight_scales_the_adapters_delta_and_rslora_its_scale(tmp_path, trio):
    base = load_tensors(trio["base"])
    tensors = lora_tensors(_shapes(base), r=4, targets=("o_proj",))
    write_adapter(tmp_path / "ad", tensors, adapter_config(4, 6, use_rslora=True))
    _merge(trio, tmp_path / "ad", tmp_path / "out", alpha=0.5)
    name = "model.layers.1.self_attn.o_proj.weight"
    b, a = _pair(tensors, name)
    new = load_tensors(trio["new_base"])[name]
    expected = (new.float() + 0.5 * ((6 / math.sqrt(4)) * (b.float() @ a.float()))).to(new.dtype)
    assert max_ulps(load_tensors(tmp_path / "out")[name], expected) <= 1


def test_modules_to_save_replace_the_base_tensor(tmp_path, trio):
    base, new = load_tensors(trio["base"]), load_tensors(trio["new_base"])
    saved = base["lm_head.weight"].float() + 0.01  # saved in float32, as PEFT often does
    tensors = {**lora_tensors(_shapes(base), targets=("q_proj",)), f"{PREFIX}lm_head.weight": saved}
    write_adapter(tmp_path / "ad", tensors, adapter_config(4, 8, modules_to_save=["lm_head"]))
    _merge(trio, tmp_path / "ad", tmp_path / "out")
    delta = saved - base["lm_head.weight"].float()
    expected = (delta + new["lm_head.weight"].float()).to(torch.bfloat16)
    assert torch.equal(load_tensors(tmp_path / "out")["lm_head.weight"], expected)


def test_names_with_peft_adapter_name_map_like_saved_ones(tmp_path, trio):
    base = load_tensors(trio["base"])
    plain = lora_tensors(_shapes(base), targets=("k_proj",))
    named = {n.replace(".weight", ".default.weight"): t for n, t in plain.items()}
    saved = {f"{PREFIX}model.norm.modules_to_save.default.weight": base["model.norm.weight"] * 2}
    write_adapter(tmp_path / "a", plain, adapter_config(4, 8))
    write_adapter(tmp_path / "b", {**named, **saved}, adapter_config(4, 8))
    _merge(trio, tmp_path / "a", tmp_path / "out_a")
    _merge(trio, tmp_path / "b", tmp_path / "out_b")
    a, b = load_tensors(tmp_path / "out_a"), load_tensors(tmp_path / "out_b")
    assert all(torch.equal(a[n], b[n]) for n in a if n != "model.norm.weight")
    new = load_tensors(trio["new_base"])["model.norm.weight"]
    norm = base["model.norm.weight"]
    expected = ((norm * 2).float() - norm.float() + new.float()).to(torch.bfloat16)
    assert torch.equal(b["model.norm.weight"], expected)


@pytest.mark.parametrize(("first", "count"), [(0, 700), (37, 450), (130, 20), (899, 1)])
def test_a_chunk_of_the_delta_is_that_slice_of_s_b_a(tmp_path, first, count):
    # Rows of 100 elements: chunks start and end inside rows, or within one row.
    a, b = torch.randn(3, 100, dtype=torch.bfloat16), torch.randn(9, 3, dtype=torch.bfloat16)
    write_adapter(tmp_path, {"x.lora_A.weight": a, "x.lora_B.weight": b}, adapter_config(3, 3))
    header = open_checkpoint_entries(tmp_path)
    lora = LoraRef(
        "adapter_model.safetensors", header["x.lora_A.weight"], header["x.lora_B.weight"], 0.75
    )
    buffer = bytearray(4 * count)
    LoraBands().fill(LocalSource(tmp_path), lora, first, memoryview(buffer))
    expected = (0.75 * (b.float() @ a.float())).view(-1)[first : first + count]
    assert torch.equal(torch.frombuffer(buffer, dtype=torch.float32), expected)


def open_checkpoint_entries(folder):
    source = LocalSource(folder)
    name = "adapter_model.safetensors"
    header = read_header(lambda o, n: source.read(name, o, n), source.size(name), name)
    return {e.name: e for e in header.tensors}


def test_files_come_from_the_adapter_where_it_has_them_else_from_the_base(tmp_path, trio):
    base = load_tensors(trio["base"])
    tokenizer = {"tokenizer_config.json": '{"adapter": true}\n'}
    write_adapter(tmp_path / "ad", lora_tensors(_shapes(base)), adapter_config(4, 8), tokenizer)
    result = _merge(trio, tmp_path / "ad", tmp_path / "out")
    assert result.files["tokenizer_config.json"] == "post"
    assert result.files["tokenizer.json"] == "base"
    assert result.files["generation_config.json"] == "base"
    assert (tmp_path / "out/tokenizer_config.json").read_text() == '{"adapter": true}\n'
    assert result.plan.read["post"] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
    ]


def test_a_different_base_named_by_the_adapter_is_a_warning(tmp_path, trio, caplog):
    base = load_tensors(trio["base"])
    config = adapter_config(4, 8, base_model_name_or_path="org/other-base")
    write_adapter(tmp_path / "ad", lora_tensors(_shapes(base)), config)
    with caplog.at_level(logging.WARNING):
        _merge(trio, tmp_path / "ad", tmp_path / "out")
    assert caplog.messages == [
        f"the adapter says its base is org/other-base, but this merge's base is {trio['base']}:"
        f" the delta is applied to {trio['base']}"
    ]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"use_dora": True}, "use_dora (DoRA, a learned magnitude per weight) is not supported"),
        ({"bias": "lora_only"}, "bias 'lora_only' (trained biases) is not supported, only 'none'"),
        ({"bias": "all"}, "bias 'all' (trained biases) is not supported, only 'none'"),
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported (only LORA)"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out (transposed Conv1D weights) is not supported"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern (per-module ranks) is not supported"),
    ],
)
def test_what_is_not_plain_lora_is_refused_naming_it(tmp_path, trio, fields, problem):
    base = load_tensors(trio["base"])
    write_adapter(tmp_path / "ad", lora_tensors(_shapes(base)), adapter_config(4, 8, **fields))
    with pytest.raises(CheckpointError) as e:
        _merge(trio, tmp_path / "ad", tmp_path / "out")
    assert str(e.value) == f"post: {tmp_path / 'ad'}/adapter_config.json: {problem}"
    assert not (tmp_path / "out").exists()


def test_adapter_tensors_the_base_lacks_or_that_do_not_fit_are_refused(tmp_path, trio):
    where = f"post: {tmp_path / 'ad'}/adapter_model.safetensors"
    cases = {
        f"{PREFIX}model.layers.7.mlp.up_proj.lora_A.weight": (
            torch.zeros(4, 64),
            f"{where}: tensor 'base_model.model.model.layers.7.mlp.up_proj.lora_A.weight'"
            " maps to 'model.layers.7.mlp.up_proj.weight', which the base does not have",
        ),
        f"{PREFIX}model.layers.0.mlp.up_proj.lora_A.weight": (
            torch.zeros(4, 64),
            f"{where}: 'model.layers.0.mlp.up_proj.weight' has lora_A but no lora_B",
        ),
    }
    for name, (tensor, message) in cases.items():
        write_adapter(tmp_path / "ad", {name: tensor}, adapter_config(4, 8))
        with pytest.raises(CheckpointError) as e:
            _merge(trio, tmp_path / "ad", tmp_path / "out")
        assert str(e.value) == message
    wrong = {
        f"{PREFIX}model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 64),
        f"{PREFIX}model.layers.0.mlp.up_proj.lora_B.weight": torch.zeros(64, 4),
    }
    write_adapter(tmp_path / "ad", wrong, adapter_config(4, 8))
    with pytest.raises(CheckpointError) as e:
        _merge(trio, tmp_path / "ad", tmp_path / "out")
    assert str(e.value) == (
        f"{where}: B @ A of 'model.layers.0.mlp.up_proj.weight' would be [64, 64],"
        " the base tensor is [128, 64]"
    )


def test_the_delta_report_measures_the_adapters_delta(tmp_path, trio):
    base = load_tensors(trio["base"])
    tensors = lora_tensors(_shapes(base), targets=("q_proj",))
    write_adapter(tmp_path / "ad", tensors, adapter_config(4, 8))
    result = _merge(trio, tmp_path / "ad", tmp_path / "out")
    name = "model.layers.0.self_attn.q_proj.weight"
    b, a = _pair(tensors, name)
    moments = result.stats.delta.tensors[name]
    assert moments.post_sq == pytest.approx(((2.0 * (b.float() @ a.float())) ** 2).sum().item())
    update = load_tensors(trio["new_base"])[name].float() - base[name].float()
    assert moments.update_sq == pytest.approx((update**2).sum().item())
    assert result.stats.delta.tensors["model.norm.weight"].elements == 0  # no delta there


@pytest.mark.slow
def test_an_adapter_made_by_peft_merges_like_peft_and_like_the_formula(tmp_path, trio):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = peft_adapter(tmp_path / "ad", trio["base"], r=8, lora_alpha=16)
    _merge(trio, adapter, tmp_path / "out")
    out, new = load_tensors(tmp_path / "out"), load_tensors(trio["new_base"])
    tensors = load_tensors(adapter)
    model = AutoModelForCausalLM.from_pretrained(trio["new_base"], dtype=torch.bfloat16)
    peft_merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    for name, merged in out.items():
        if f"{PREFIX}{name.removesuffix('.weight')}.lora_A.weight" not in tensors:
            assert torch.equal(merged, new[name]), name
            continue
        b, a = _pair(tensors, name)
        expected = (new[name].float() + 2.0 * (b.float() @ a.float())).to(merged.dtype)
        assert max_ulps(merged, expected) <= 1, name
        assert max_ulps(merged, peft_merged[name]) <= 1, name


@pytest.mark.parametrize("position", [0, 1])
def test_an_adapter_as_one_of_two_deltas_is_exact_and_its_gram_rows_are_s_b_a(tmp_path, position):
    """``new_base + 0.7·(post₀ - base₀) - 0.3·(post₁ - base₁)`` with one post an adapter on
    its own delta's base: bit for bit the float32 formula with that delta s·B@A (zero where
    the adapter has no pair), and the delta report's rows are those values."""
    five = two_deltas(tmp_path / "in")
    post_role, base_role = delta_roles(position)
    inputs = {role: load_tensors(path) for role, path in five.items()}
    tensors = lora_tensors(_shapes(inputs[base_role]), r=4, seed=3)
    write_adapter(tmp_path / "ad", tensors, adapter_config(4, 8))
    sources = {role: LocalSource(path) for role, path in five.items()}
    sources[post_role] = LocalSource(tmp_path / "ad")
    result = merge(sources, tmp_path / "out", weights=(0.7, -0.3))
    # The record's and card's adapter summary is the first delta's post's.
    summary = result.plan.adapter
    assert (summary["r"], summary["scale"]) == (4, 2.0) if position == 0 else summary is None

    def delta(i, name):
        post, base = delta_roles(i)
        if i != position:
            return inputs[post][name].float() - inputs[base][name].float()
        if f"{PREFIX}{name.removesuffix('.weight')}.lora_A.weight" not in tensors:
            return torch.zeros_like(inputs[base][name], dtype=torch.float32)
        b, a = _pair(tensors, name)
        return 2.0 * (b.float() @ a.float())

    out = load_tensors(tmp_path / "out")
    for name, merged in out.items():
        acc = inputs["new_base"][name].float()
        for i, weight in enumerate((0.7, -0.3)):
            acc = acc + weight * delta(i, name)
        assert torch.equal(merged, acc.to(merged.dtype)), name
    # Small units are merged in batches whose moments are booked under one tensor of the
    # layer (`engine.batches`): compare the sums per layer, which stay exact.
    expected: dict[object, torch.Tensor] = {}
    measured: dict[object, list[float]] = {}
    elements: dict[object, list[int]] = {}
    for name, moments in result.stats.delta.tensors.items():
        new = inputs["new_base"][name].double()
        rows = torch.stack(
            [
                row.double().flatten()
                for i, base in enumerate(("base", "base[1]"))
                for row in (delta(i, name), new - inputs[base][name].double())
            ]
        )
        group = group_of(name)
        expected[group] = expected.get(group, 0) + rows @ rows.T
        gram = measured.setdefault(group, [0.0] * 16)
        for k, value in enumerate(moments.gram or [0.0] * 16):
            gram[k] += value
        counts = elements.setdefault(group, [0, 0])
        counts[0] += moments.elements
        counts[1] += out[name].numel()
    for group, gram in measured.items():
        assert gram == pytest.approx(expected[group].flatten().tolist(), rel=1e-5, abs=1e-6)
        # Merged, all of it: a tensor the adapter leaves has a zero row beside the other delta.
        assert elements[group][0] == elements[group][1], group
    targeted = [n for n in out if f"{PREFIX}{n.removesuffix('.weight')}.lora_A.weight" in tensors]
    assert len(targeted) == 6


MOE_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 16}


def _moe_trio(tmp_path, quantized=()):
    """bf16 checkpoints of EXPERTS; the roles in ``quantized`` FP8 block-scaled."""
    paths = {}
    for seed, role in enumerate(("base", "post", "new_base")):
        g = torch.Generator().manual_seed(seed)
        state = {
            n: (0.05 * torch.randn(s, generator=g)).to(torch.bfloat16) for n, s in EXPERTS.items()
        }
        config = dict(MOE_CONFIG)
        if role in quantized:
            state, config["quantization_config"] = fp8_state(state), QUANTIZATION_CONFIG
        paths[role] = save_checkpoint(tmp_path / role, state, config)
    return paths


def test_units_of_an_adapters_delta_are_not_batched_and_merge_to_the_formula(tmp_path):
    trio = _moe_trio(tmp_path / "in")
    tensors = lora_tensors(EXPERTS, targets=("gate_proj", "up_proj"))
    write_adapter(tmp_path / "ad", tensors, adapter_config(4, 8))
    sources = {
        "base": LocalSource(trio["base"]),
        "post": LocalSource(tmp_path / "ad"),
        "new_base": LocalSource(trio["new_base"]),
    }
    plan = preflight(sources, Recipe())
    units = plan_units(plan, plan_shards(plan.items, plan.recipe.shard_size), sources, 1 << 19)
    batched = batch_units(units, 1 << 17)
    computed = [u for u in batched if u.computed]
    # s·B@A is computed per tensor, not read back to back: each of the 32 stays a unit alone,
    # while the 16 untargeted down_proj (copies of the new base) are joined, one batch a layer.
    assert (len(computed), {len(u.parts) for u in computed}) == (32, {0})
    assert sorted(len(u.parts) for u in batched if not u.computed) == [8, 8]
    result = _merge(trio, tmp_path / "ad", tmp_path / "out")
    out, new = load_tensors(tmp_path / "out"), load_tensors(trio["new_base"])
    for name, merged in out.items():
        if "down_proj" in name:
            assert torch.equal(merged, new[name]), name  # Δ = 0: the new base, bit for bit
            continue
        b, a = _pair(tensors, name)
        expected = (new[name].float() + (8 / 4) * (b.float() @ a.float())).to(merged.dtype)
        assert max_ulps(merged, expected) <= 1, name
    assert result.stats.delta.summary()["layers"][0]["experts"] == 8


@pytest.mark.parametrize(
    ("quantized", "role", "tensor"),
    [
        (("base", "new_base"), "base", "model.layers.0.mlp.experts.0.down_proj.weight"),
        (("new_base",), "new_base", "model.layers.0.mlp.experts.0.down_proj.weight"),
    ],
)
def test_an_adapter_with_fp8_weights_is_refused_in_one_line(tmp_path, quantized, role, tensor):
    trio = _moe_trio(tmp_path / "in", quantized)
    write_adapter(tmp_path / "ad", lora_tensors(EXPERTS), adapter_config(4, 8))
    with pytest.raises(CheckpointError) as error:
        _merge(trio, tmp_path / "ad", tmp_path / "out")
    assert str(error.value) == (
        f"{role}: {trio[role]}: tensor {tensor!r} is an FP8 block-scaled weight and the post"
        " model is a LoRA adapter: an adapter cannot be merged with FP8 weights;"
        " use unquantized (e.g. bf16) base and new base checkpoints"
    )
    assert not (tmp_path / "out").exists()
