"""A merge of tiny vision-language trios (Gemma 3, Qwen2-VL, Llava) made with transformers:
bit-exact and complete, the processor from the post model, the card and delta rows of a VLM."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.delta import PROJECTOR, VISION, group_of
from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.stages import preflight
from paramdelta.pipeline.check import drawn_image
from paramdelta.pipeline.publish import merge_to_directory
from paramdelta.testing.checkpoints import load_tensors, mismatched_tensors, reference_merge

pytest.importorskip("transformers")
pytest.importorskip("PIL")  # the image processors' backend without torchvision

from vlm import FAMILIES, make_vlm_trio

pytestmark = pytest.mark.slow  # transformers builds the models

ARCHITECTURES = {
    "gemma3": "Gemma3ForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
}
# What each family's processor saves besides the tokenizer (transformers 5; Qwen2-VL
# without torchvision: the older names, written by hand).
PROCESSOR_FILES = {
    "gemma3": {"processor_config.json", "chat_template.jinja"},
    "qwen2_vl": {
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "chat_template.json",
    },
    "llava": {"processor_config.json", "chat_template.jinja"},
}


LAYER_TENSORS = {"gemma3": 13, "qwen2_vl": 12, "llava": 9}


@pytest.fixture(scope="module", params=FAMILIES)
def merged(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    trio = make_vlm_trio(root / "in", request.param)
    sources = {role: LocalSource(path) for role, path in trio.items()}
    plan = preflight(sources, Recipe())
    result = merge_to_directory(plan, sources, root / "out", Runtime(progress=False))
    return request.param, trio, result


def test_every_tensor_is_the_formula_bit_for_bit_vision_tower_included(merged):
    _family, trio, result = merged
    base, post, new = (load_tensors(trio[role]) for role in ("base", "post", "new_base"))
    out = load_tensors(result.out_dir)
    assert mismatched_tensors(out, reference_merge(base, post, new)) == []
    vision = [name for name in new if group_of(name) in (VISION, PROJECTOR)]
    # mergekit has dropped vision weights from VLM merges: every one of them is here.
    assert vision and set(vision) <= set(out)
    assert {group_of(name) for name in vision} == {VISION, PROJECTOR}
    assert set(out) == set(new)


def test_the_processor_comes_from_the_post_model(merged):
    family, trio, result = merged
    donors = result.files
    for name in PROCESSOR_FILES[family] | {"tokenizer.json", "tokenizer_config.json"}:
        assert donors[name] == "post", name
        assert (result.out_dir / name).read_bytes() == (trio["post"] / name).read_bytes()
    template = PROCESSOR_FILES[family] & {"chat_template.jinja", "chat_template.json"}
    assert "the post model's chat template" in (result.out_dir / template.pop()).read_text()
    assert donors["config.json"] == "new_base"


def test_the_delta_report_has_vision_tower_and_projector_rows(merged):
    family, trio, result = merged
    record = json.loads((result.out_dir / "paramdelta.json").read_text())
    rows = {row["layer"]: row for row in record["delta"]["layers"]}
    names = list(load_tensors(trio["new_base"]))
    for group in (VISION, PROJECTOR):
        assert rows[group]["tensors"] == sum(group_of(n) == group for n in names)
        assert rows[group]["post_delta_norm"] > 0 and rows[group]["base_update_norm"] > 0
    # The language model's two layers hold only its own tensors: Llama's 9, Qwen2's 3 biases
    # more, Gemma 3's 4 more norms (2 sandwich norms, the query's and the key's).
    assert rows[0]["tensors"] == rows[1]["tensors"] == LAYER_TENSORS[family]
    assert [row["layer"] for row in record["delta"]["layers"]][:3] == [
        VISION,
        PROJECTOR,
        "embeddings",
    ]
    card = (result.out_dir / "README.md").read_text()
    assert f"| {VISION} | {rows[VISION]['tensors']} | " in card
    assert f"| {PROJECTOR} | {rows[PROJECTOR]['tensors']} | " in card


def test_the_card_and_record_follow_the_architecture(merged):
    family, _trio, result = merged
    record = json.loads((result.out_dir / "paramdelta.json").read_text())
    assert record["output"]["architecture"] == {
        "model_type": family,
        "architectures": [ARCHITECTURES[family]],
        "vision_config": True,
    }
    card = ModelCard((result.out_dir / "README.md").read_text())
    assert card.data.pipeline_tag == "image-text-to-text"
    assert "from transformers import AutoModelForImageTextToText, AutoProcessor\n" in card.text
    assert "AutoModelForCausalLM" not in card.text


IMAGE_URL = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/bee.jpg"


def test_the_cards_use_snippet_runs_against_the_merged_model(merged, tmp_path):
    """The card's "Use" block, run with the installed transformers, on the output folder and
    a local picture instead of the repo id and the image URL (offline)."""
    family, _trio, result = merged
    if family == "qwen2_vl" and importlib.util.find_spec("torchvision") is None:
        pytest.skip("transformers builds Qwen2-VL's video processor with torchvision")
    from PIL import Image

    card = (result.out_dir / "README.md").read_text()
    (snippet,) = re.findall(r"## Use\n\n```python\n(.*?)```", card, re.DOTALL)
    name = f'"{result.out_dir.name}"'  # the card names the output folder
    assert snippet.count(name) == 2 and snippet.count(IMAGE_URL) == 1
    Image.fromarray(drawn_image()).save(tmp_path / "picture.png")
    snippet = snippet.replace(name, repr(str(result.out_dir)))
    snippet = snippet.replace(IMAGE_URL, str(tmp_path / "picture.png"))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-c", snippet], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()  # the decoded reply of the (random, tiny) model
