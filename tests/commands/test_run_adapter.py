"""`plan` and `run` of a watchlist target whose post model is a PEFT adapter repo."""

import json

import pytest
import torch
from huggingface_hub import ModelCard

from paramdelta.cli import main
from paramdelta.testing.adapters import adapter_config, lora_tensors, write_adapter
from paramdelta.testing.checkpoints import load_tensors
from paramdelta.testing.seed import publish_folder

WATCHLIST = """\
targets:
  - name: adapted
    base: org/base
    post: org/adapter
    new_base: org/new-base
    output: me/adapted
"""


@pytest.fixture
def adapter(hub_trio, fake_hub, tmp_path):
    base = load_tensors(hub_trio.local["base"])
    tensors = lora_tensors({n: t.shape for n, t in base.items()}, targets=("q_proj",))
    folder = write_adapter(tmp_path / "adapter", tensors, adapter_config(4, 8))
    return tensors, publish_folder(fake_hub, "org/adapter", folder)


@pytest.mark.slow  # the pre-publish check loads transformers
def test_run_publishes_the_adapter_merged_onto_the_new_base(
    hub_trio, adapter, fake_hub, tmp_path, capsys
):
    tensors, sha = adapter
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text(WATCHLIST)
    assert main(["plan", "--watchlist", str(watchlist)]) == 0
    assert capsys.readouterr().out.startswith("adapted: pending")
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    assert capsys.readouterr().out.startswith("adapted: published")

    record = json.loads(fake_hub.read_file("me/adapted", "paramdelta.json"))
    post = next(c for c in record["checkpoints"] if c["role"] == "post")
    assert (post["repo"], post["sha"]) == ("org/adapter", sha)
    assert sorted(post["files"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (
        record["recipe"]["file_donors"]["tokenizer.json"] == "base"
    )  # the adapter has none: its base's
    assert main(["plan", "--watchlist", str(watchlist)]) == 0  # the adapter's donors are stable
    assert capsys.readouterr().out.startswith("adapted: up-to-date")
    assert record["recipe"]["adapter"] == {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": False,
        "scale": 2.0,
        "delta": "scale * lora_B @ lora_A",
        "lora_tensors": 2,
        "saved_tensors": [],
    }
    card = ModelCard(fake_hub.read_file("me/adapted", "README.md").decode())
    assert "org/adapter" in card.data.base_model
    assert (
        "- The post model is a LoRA adapter on the base: `post - base = scale * lora_B @ lora_A`"
        " on 2 tensors, scale = lora_alpha / r = 8 / 4 = 2.0; every other tensor is the new"
        " base's\n"
    ) in card.text
    assert f"| post | [org/adapter]({fake_hub.url}/org/adapter) | `main` | [`{sha[:12]}`]" in (
        card.text
    )

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(
        fake_hub.read_file("me/adapted", "model.safetensors")
    )
    merged, new = load_tensors(folder), load_tensors(hub_trio.local["new_base"])
    for name, value in merged.items():
        module = "base_model.model." + name.removesuffix(".weight")
        if f"{module}.lora_A.weight" not in tensors:
            assert torch.equal(value, new[name]), name
            continue
        b, a = tensors[f"{module}.lora_B.weight"], tensors[f"{module}.lora_A.weight"]
        expected = (new[name].float() + 2.0 * (b.float() @ a.float())).to(value.dtype)
        assert (value.float() - expected.float()).abs().max() <= (
            expected.float().abs() / 128
        ).max()
