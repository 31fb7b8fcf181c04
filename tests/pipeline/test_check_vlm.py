"""The pre-publish check of tiny vision-language merges: the processor, an image turn,
generation from an image the check draws, perplexity through the language model."""

import importlib.util
import math

import pytest
from safetensors.torch import save_file

from merging import merge
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.delta import PROJECTOR, VISION, group_of
from paramdelta.pipeline.check import IMAGE_PROMPT, run_check
from paramdelta.testing.checkpoints import load_tensors

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from vlm import make_vlm_trio

pytestmark = pytest.mark.slow  # transformers: the pre-publish check

NO_TORCHVISION = importlib.util.find_spec("torchvision") is None
FAMILIES = [
    "gemma3",
    "llava",
    pytest.param(
        "qwen2_vl",
        marks=pytest.mark.skipif(
            NO_TORCHVISION, reason="transformers builds Qwen2-VL's video processor with torchvision"
        ),
    ),
]
ARCHITECTURES = {
    "gemma3": "Gemma3ForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}
PROCESSORS = {
    "gemma3": "Gemma3Processor (Gemma3ImageProcessorPil)",
    "llava": "LlavaProcessor (LlavaImageProcessorPil)",
    "qwen2_vl": "Qwen2VLProcessor (Qwen2VLImageProcessorPil)",
}


def _merged(family, tmp_path):
    trio = make_vlm_trio(tmp_path / "in", family)
    sources = {role: LocalSource(path) for role, path in trio.items()}
    out = merge(sources, tmp_path / "out").out_dir
    return trio, out


@pytest.mark.parametrize("family", FAMILIES)
def test_an_honest_vlm_merge_passes(family, tmp_path):
    trio, out = _merged(family, tmp_path)
    references = {role: LocalSource(trio[role]) for role in ("post", "new_base")}
    report = run_check(out, references, device="cpu")
    assert report.status == "passed", report.reason
    steps = {s.step: s.detail for s in report.steps}
    assert list(steps) == [
        "processor",
        "chat_template",
        "load",
        "logits",
        "generation",
        "image_generation",
        "perplexity",
    ]
    assert steps["processor"] == PROCESSORS[family]
    assert steps["chat_template"].startswith("4 messages, ")
    assert steps["chat_template"].endswith(" characters, one image")
    assert steps["load"] == f"{ARCHITECTURES[family]}, bfloat16"
    assert steps["image_generation"].startswith("16 tokens from pixel values of shape 1x3x28x28")
    image = report.generation[-1]
    assert image["prompt"] == f"[a 32x32 image] {IMAGE_PROMPT}" and image["problem"] is None
    assert len(report.generation) == 5
    ppl = report.perplexity
    # Both references load with the image-text-to-text class and read the texts too.
    assert ppl["post"] is not None and ppl["new_base"] is not None
    assert 200 < ppl["merged"] < 300 and ppl["ratio"] < 1.1 and ppl["passed"] is True


def test_a_vlm_without_its_processor_files_fails_on_the_processor(tmp_path):
    _trio, out = _merged("llava", tmp_path)
    (out / "processor_config.json").unlink()
    report = run_check(out, {}, device="cpu")
    assert report.status == "failed"
    assert [s.step for s in report.steps] == ["processor"]
    assert report.reason.startswith(
        "processor loads: does not load: OSError: Can't load image processor for "
    )


def test_a_processor_that_is_only_a_tokenizer_fails(tmp_path, monkeypatch):
    """AutoProcessor falls back to the tokenizer for a model type it has no processor for."""
    import transformers

    _trio, out = _merged("llava", tmp_path)
    monkeypatch.setattr(
        transformers.AutoProcessor, "from_pretrained", transformers.AutoTokenizer.from_pretrained
    )
    report = run_check(out, {}, device="cpu")
    assert [s.step for s in report.steps] == ["processor"]
    assert report.reason == (
        "processor loads: AutoProcessor gives a TokenizersBackend, not a processor with an"
        " image processor and a tokenizer (processor_config.json or preprocessor_config.json"
        " missing?)"
    )


def test_an_image_turn_the_processor_cannot_take_fails_the_chat_template(tmp_path):
    _trio, out = _merged("llava", tmp_path)
    # A template that drops the image part: the text holds no <image> for the one image.
    template = (out / "chat_template.jinja").read_text().replace("<image>", "")
    (out / "chat_template.jinja").write_text(template)
    report = run_check(out, {}, device="cpu")
    assert report.status == "failed"
    assert report.reason.startswith(
        "chat template renders: the image turn does not suit the processor: "
    )
    steps = {s.step: s.passed for s in report.steps}
    assert steps["chat_template"] is False and steps["load"] is True
    assert steps["image_generation"] is False  # asked through the same template


@pytest.mark.skipif(not NO_TORCHVISION, reason="the failure without torchvision")
def test_without_torchvision_a_qwen2_vl_check_says_so_at_the_processor(tmp_path):
    _trio, out = _merged("qwen2_vl", tmp_path)
    report = run_check(out, {}, device="cpu")
    assert [s.step for s in report.steps] == ["processor"]
    assert report.reason.startswith(
        "processor loads: does not load: ImportError: Qwen2VLVideoProcessor requires the"
        " Torchvision library"
    )


def _rewrite_weights(directory, change):
    tensors = load_tensors(directory)
    change(tensors)
    save_file(tensors, directory / "model.safetensors", {"format": "pt"})


def test_a_merge_that_dropped_the_vision_tower_fails_to_load(tmp_path):
    """As mergekit has done: transformers would fill the tower with random weights."""
    _trio, out = _merged("llava", tmp_path)

    def drop_vision(tensors):
        for name in [n for n in tensors if group_of(n) in (VISION, PROJECTOR)]:
            del tensors[name]

    _rewrite_weights(out, drop_vision)
    report = run_check(out, {}, device="cpu")
    assert report.status == "failed"
    assert report.reason.startswith(
        "model loads: 43 weight(s) of LlavaForConditionalGeneration not in the checkpoint: "
        "model.multi_modal_projector.linear_1.bias, model.multi_modal_projector.linear_1.weight,"
        " model.multi_modal_projector.linear_2.bias ..."
    )
    assert [s.step for s in report.steps][-1] == "load"


def test_nan_in_the_projector_fails_only_the_image_answer(tmp_path):
    _trio, out = _merged("llava", tmp_path)

    def poison(tensors):
        tensors["multi_modal_projector.linear_2.weight"][0, 0] = math.nan

    _rewrite_weights(out, poison)
    report = run_check(out, {}, device="cpu")
    assert report.status == "failed"
    steps = {s.step: s.passed for s in report.steps}
    assert steps == steps | {"logits": True, "generation": True, "image_generation": False}
    # NaN logits: greedy decoding picks id 0, <unk>.
    assert report.reason == "greedy generation from an image gives text: gives only special tokens"
