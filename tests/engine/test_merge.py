import json

import torch

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.merge import merge_to_dir
from paramdelta.engine.options import MergeOptions
from paramdelta.testing.checkpoints import llama_config, load_tensors, make_trio, reference_merge


def _merge(trio, out, **options):
    sources = {role: LocalSource(path) for role, path in trio.items()}
    return merge_to_dir(sources, out, MergeOptions(progress=False, **options))


def test_output_files_and_their_donors(tmp_path):
    trio = make_trio(tmp_path / "in")
    result = _merge(trio, tmp_path / "out")
    out = tmp_path / "out"
    # Besides the files: the marker that lets --overwrite replace this output later.
    assert sorted(p.name for p in out.iterdir()) == sorted([*result.files, ".paramdelta-output"])
    assert json.loads((out / ".paramdelta-output").read_text())["tool"] == "paramdelta-bot"
    assert result.files["model.safetensors"] == "merge"
    assert (out / "config.json").read_bytes() == (trio["new_base"] / "config.json").read_bytes()
    for name in ("tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (trio["post"] / name).read_bytes()
    assert (out / "LICENSE").read_text() == "licence of the new_base model\n"


def test_transformers_loads_the_merged_model(tmp_path):
    from transformers import LlamaForCausalLM

    config = llama_config(tie_word_embeddings=False)
    trio = make_trio(tmp_path / "in", config=config, max_shard_size=50_000)
    _merge(trio, tmp_path / "out", shard_size=60_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()

    model = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    expected = reference_merge(*(load_tensors(trio[r]) for r in ("base", "post", "new_base")))
    loaded = model.state_dict()
    assert set(expected) <= set(loaded)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 5, config["vocab_size"])
    assert torch.isfinite(logits).all()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
