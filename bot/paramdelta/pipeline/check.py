"""The pre-publish check: does the merged model load, talk and read text as well as its parents?

`run` checks the merged directory before anything is committed, and `paramdelta
check` checks any checkpoint. Each step uses the model as its users will, with
transformers, on the merge's device:

1. the tokenizer and the model load (`AutoTokenizer`, `AutoModelForCausalLM`;
   local files only, no remote code), with every weight the architecture has;
2. the chat template renders a fixed conversation (checkdata/conversation.json);
3. greedy generation on fixed prompts (checkdata/prompts.json) gives text: not
   nothing, not only special tokens, not one token repeated;
4. every forward pass gives finite logits;
5. perplexity on fixed texts written for this project (checkdata/texts.json): the
   merged model's is at most ``perplexity_factor`` times the better of the post
   model's and the new base's. Each is measured with the merged model's tokenizer
   (the post model's), and the models are loaded one at a time.

A vision-language model (`paramdelta.rendering.model_kind`) is used as its users
use it: `AutoProcessor` and `AutoModelForImageTextToText` load it; the
processor's chat template renders the conversation with an image in its last
turn, and the processor must take that text with one image (its image tokens
match); the prompts are answered as text-only chat turns, and one more greedy
answer comes from a small image the check draws itself (`drawn_image`); the
perplexity of the texts is read through its language model (token ids only).

transformers is an optional extra (``paramdelta-bot[check]``): `decide` says,
before the merge, whether the check can run here, and why not. The thresholds
and verdicts are in `paramdelta.pipeline.check_rules`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from paramdelta.engine.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter
from paramdelta.engine.checkpoint import Source, open_checkpoint
from paramdelta.engine.files import has_tokenizer, no_tokenizer
from paramdelta.engine.kernel import TORCH_DTYPES
from paramdelta.engine.roles import ROLE_TITLES
from paramdelta.engine.workers import resolve_device
from paramdelta.errors import CheckError, UsageError
from paramdelta.pipeline.check_rules import (
    DEFAULT_PERPLEXITY_FACTOR,
    INSTALL_HINT,
    MODES,
    REFERENCES,
    CheckReport,
    degeneracy,
    memory_reason,
    perplexity_verdict,
)
from paramdelta.rendering.model_kind import ModelKind, kind_of

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

MAX_NEW_TOKENS = 16
MAX_TEXT_TOKENS = 512
IMAGE_SIZE = 32  # the drawn image's pixels a side: the processor resizes it to its own
IMAGE_PROMPT = "Describe this image in one sentence."


@cache
def check_data(name: str) -> Any:
    """One of the fixed inputs shipped with the package (checkdata/NAME.json)."""
    text = resources.files("paramdelta").joinpath(f"checkdata/{name}.json").read_text("utf-8")
    return json.loads(text)


# -- whether the check can run here -------------------------------------------------------


def free_memory(device: torch.device) -> int:
    """Bytes free for a model on ``device``: the GPU's free memory, or the host's available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def transformers_installed() -> bool:
    return importlib.util.find_spec("transformers") is not None


def unavailable(model_bytes: int, device: str) -> str | None:
    """None if the check can run here on a model of ``model_bytes``, else why not."""
    if not transformers_installed():
        return f"transformers is not installed ({INSTALL_HINT})"
    dev = resolve_device(device)
    return memory_reason(model_bytes, free_memory(dev), str(dev))


def decide(mode: str, size: int, device: str) -> str | None:
    """Before merging: None to run the check, else the reason it is skipped.

    ``auto`` skips a check that cannot run here; ``on`` makes that an error
    (raised now, before the merge); ``off`` always skips.
    """
    if mode not in MODES:
        raise UsageError(f"--check must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return "the check is off"
    reason = unavailable(size, device)
    if reason is not None and mode == "on":
        raise CheckError(f"pre-publish check cannot run (check: on): {reason}")
    return reason


# -- running it --------------------------------------------------------------------------


def run_check(
    model_dir: Path,
    references: Mapping[str, Source],
    *,
    device: str = "auto",
    perplexity_factor: float = DEFAULT_PERPLEXITY_FACTOR,
) -> CheckReport:
    """Check the checkpoint in ``model_dir``; ``references`` (post, new base) for perplexity."""
    started = time.perf_counter()
    dev = resolve_device(device)
    thresholds = {
        "perplexity_factor": perplexity_factor,
        "max_new_tokens": MAX_NEW_TOKENS,
        "max_text_tokens": MAX_TEXT_TOKENS,
    }
    report = CheckReport(device=str(dev), thresholds=thresholds)
    with _quiet_transformers(), torch.inference_mode():
        _check(model_dir, references, dev, perplexity_factor, report)
    report.seconds = time.perf_counter() - started
    return report


def _check(
    model_dir: Path,
    references: Mapping[str, Source],
    dev: torch.device,
    factor: float,
    report: CheckReport,
) -> None:
    import transformers

    kind = kind_of(_config(model_dir))
    loaded = _load_inputs(model_dir, kind, references, report)
    if loaded is None:
        return
    tokenizer, processor = loaded
    templated = _check_chat_template(tokenizer, processor, report)
    model: Any  # transformers' own annotations of .to and .generate do not type-check
    try:
        model_class = getattr(transformers, kind.model_class)
        model, info = model_class.from_pretrained(
            model_dir, dtype="auto", local_files_only=True, output_loading_info=True
        )
        model.to(dev).eval()
    except Exception as e:
        report.record("load", False, f"does not load with transformers: {_describe(e)}")
        return
    # transformers fills a weight the checkpoint lacks with random values and loads on:
    # a merge that dropped weights (a VLM's vision tower) would otherwise pass.
    if missing := sorted(info.get("missing_keys") or ()):
        detail = f"{len(missing)} weight(s) of {type(model).__name__} not in the checkpoint"
        report.record(
            "load", False, f"{detail}: {', '.join(missing[:3])}{' ...' * (len(missing) > 3)}"
        )
        return
    report.record("load", True, f"{type(model).__name__}, {model.dtype}".replace("torch.", ""))
    texts = [tokenizer(t).input_ids[:MAX_TEXT_TOKENS] for t in check_data("texts")]
    merged, finite = _perplexity(model, texts, dev)
    report.record(
        "logits",
        finite,
        f"on {len(texts)} texts" if finite else "NaN or Inf in the logits of the fixed texts",
    )
    _check_generation(model, tokenizer, processor, templated, dev, report)
    if processor is not None:
        _check_image_generation(model, processor, dev, report)
    size = _size(model)
    del model
    _release(size)
    measured = {
        role: _reference_perplexity(references[role], texts, dev, references.get("base"))
        for role in REFERENCES
        if role in references
    }
    verdict = perplexity_verdict(merged, measured, factor)
    verdict |= {"texts": len(texts), "tokens": sum(len(t) - 1 for t in texts)}
    report.perplexity = verdict
    report.record("perplexity", verdict["passed"], _perplexity_detail(verdict, merged))


def _tokenizer_problem(model_dir: Path, references: Mapping[str, Source], e: Exception) -> str:
    """Why the tokenizer does not load: no tokenizer files, said plainly (transformers' own
    message is about converting a slow tokenizer), else transformers' message."""
    if has_tokenizer(p.name for p in model_dir.iterdir()):
        return f"does not load: {_describe(e)}"
    post = references.get("post")
    if post is None or has_tokenizer(post.list_files()):
        return "the output has no tokenizer"
    return no_tokenizer(post.provenance.name)


def _config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict; {} if it does not read (loading the model then says why)."""
    try:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _load_inputs(
    model_dir: Path, kind: ModelKind, references: Mapping[str, Source], report: CheckReport
) -> tuple[PreTrainedTokenizerBase, ProcessorMixin | None] | None:
    """The tokenizer, and a vision-language model's processor; None (recorded) if not loaded."""
    from transformers import AutoProcessor, AutoTokenizer

    step = "processor" if kind.vision else "tokenizer"
    try:  # untrusted files: any failure to load is the finding
        loader: Any = AutoProcessor if kind.vision else AutoTokenizer
        loaded: Any = loader.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:
        report.record(step, False, _tokenizer_problem(model_dir, references, e))
        return None
    if not kind.vision:
        report.record(step, True, type(loaded).__name__)
        return loaded, None
    if getattr(loaded, "image_processor", None) is None or loaded.tokenizer is None:
        report.record(
            step,
            False,
            f"{kind.processor_class} gives a {type(loaded).__name__}, not a processor with"
            " an image processor and a tokenizer (processor_config.json or"
            " preprocessor_config.json missing?)",
        )
        return None
    report.record(step, True, f"{type(loaded).__name__} ({type(loaded.image_processor).__name__})")
    return loaded.tokenizer, loaded


def drawn_image() -> Any:
    """A small picture made here, four coloured quarters: no file, no network."""
    import numpy as np

    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    half = IMAGE_SIZE // 2
    image[:half, :half] = (200, 30, 30)
    image[:half, half:] = (30, 160, 60)
    image[half:, :half] = (40, 60, 200)
    image[half:, half:] = (240, 220, 40)
    return image


def _user_turn(text: str, parts: bool, image: bool = False) -> dict[str, Any]:
    """A chat message: plain content for a tokenizer's template, typed parts for a processor's."""
    if not parts:
        return {"role": "user", "content": text}
    content = [{"type": "image"}] * image + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def _check_chat_template(
    tokenizer: PreTrainedTokenizerBase, processor: ProcessorMixin | None, report: CheckReport
) -> bool:
    conversation = check_data("conversation")
    owner: Any = processor if processor is not None else tokenizer
    if not getattr(owner, "chat_template", None):
        what = "processor" if processor is not None else "tokenizer"
        return report.record("chat_template", False, f"the {what} has no chat template")
    messages = conversation
    if processor is not None:  # the same turns as typed parts, an image in the last one
        messages = [
            {**_user_turn(m["content"], True, image=i == len(conversation) - 1), "role": m["role"]}
            for i, m in enumerate(conversation)
        ]
    try:
        text = owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:
        return report.record("chat_template", False, f"does not render: {_describe(e)}")
    if not isinstance(text, str) or conversation[-1]["content"] not in text:
        return report.record(
            "chat_template", False, "the rendered text does not hold the last message"
        )
    detail = f"{len(conversation)} messages, {len(text)} characters"
    if processor is not None:
        try:  # the processor checks that the text's image tokens match the images
            processor(text=[text], images=[drawn_image()], return_tensors="pt")
        except Exception as e:
            return report.record(
                "chat_template",
                False,
                f"the image turn does not suit the processor: {_describe(e)}",
            )
        detail += ", one image"
    return report.record("chat_template", True, detail)


class _Greedy:
    """Greedy decoding settings for a model and tokenizer, and how its answers are read."""

    def __init__(self, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
        from transformers import GenerationConfig

        eos = model.generation_config.eos_token_id
        self.stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else min(self.stops, default=0)
        self.config = GenerationConfig(
            max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=self.pad
        )
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)

    def answer(self, prompt: str, row: list[int]) -> dict[str, Any]:
        end = next((i + 1 for i, token in enumerate(row) if token in self.stops), len(row))
        new = row[:end]  # what follows the end of the answer is padding
        text = str(self.tokenizer.decode(new, skip_special_tokens=True))
        problem = degeneracy(new, self.special, text)
        return {"prompt": prompt, "text": text, "tokens": len(new), "problem": problem}


def _check_generation(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    processor: ProcessorMixin | None,
    templated: bool,
    dev: torch.device,
    report: CheckReport,
) -> None:
    """Greedy answers to every fixed prompt, in one left-padded batch."""
    greedy = _Greedy(model, tokenizer)
    prompts = check_data("prompts")
    encoded = [_prompt_ids(tokenizer, processor, prompt, templated) for prompt in prompts]
    width = max(map(len, encoded))
    pad = greedy.pad
    inputs = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=dev)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=dev)
    output = model.generate(inputs, attention_mask=mask, generation_config=greedy.config)
    for prompt, row in zip(prompts, output[:, width:].tolist(), strict=True):
        report.generation.append(greedy.answer(prompt, row))
    bad = [g for g in report.generation if g["problem"]]
    detail = f"{len(report.generation) - len(bad)} of {len(report.generation)} prompts"
    if bad:
        detail += f"; {bad[0]['prompt']!r} gives {bad[0]['problem']}"
    report.record("generation", not bad, detail)


def _check_image_generation(
    model: Any, processor: ProcessorMixin, dev: torch.device, report: CheckReport
) -> None:
    """A greedy answer about `drawn_image`, asked through the processor's chat template."""
    greedy = _Greedy(model, processor.tokenizer)
    messages = [_user_turn(IMAGE_PROMPT, True, image=True)]
    try:
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[drawn_image()], return_tensors="pt")
    except Exception as e:
        detail = f"the processor does not take the image: {_describe(e)}"
        report.record("image_generation", False, detail)
        return
    # The pixels in the model's dtype (BatchFeature casts only its floating tensors).
    inputs = inputs.to(dev).to(model.dtype)
    try:  # the vision tower and projector run only here
        output = model.generate(**inputs, generation_config=greedy.config)
    except Exception as e:
        report.record("image_generation", False, f"fails: {_describe(e)}")
        return
    width = inputs["input_ids"].shape[1]
    answer = greedy.answer(
        f"[a {IMAGE_SIZE}x{IMAGE_SIZE} image] {IMAGE_PROMPT}", output[0, width:].tolist()
    )
    report.generation.append(answer)
    shape = "x".join(map(str, inputs["pixel_values"].shape))
    if answer["problem"]:
        detail = f"gives {answer['problem']}"
    else:
        detail = f"{answer['tokens']} tokens from pixel values of shape {shape}"
    report.record("image_generation", not answer["problem"], detail)


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    processor: ProcessorMixin | None,
    prompt: str,
    templated: bool,
) -> list[int]:
    """A prompt as the model sees it in a chat: through the chat template, if it renders
    (a vision-language model's processor's, with the prompt as a text part)."""
    if not templated:
        return list(tokenizer(prompt).input_ids)
    owner: Any = processor if processor is not None else tokenizer
    text = owner.apply_chat_template(
        [_user_turn(prompt, processor is not None)], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _perplexity(
    model: Any, texts: Sequence[Sequence[int]], dev: torch.device
) -> tuple[float, bool]:
    """exp(mean next-token negative log-likelihood) over the texts; were all logits finite?"""
    nll, count, finite = 0.0, 0, True
    rows = int(model.get_input_embeddings().num_embeddings)
    for ids in texts:
        if max(ids) >= rows:
            return math.nan, finite  # the tokenizer's ids do not fit this model
        inputs = torch.tensor([ids], device=dev)
        logits = model(inputs).logits[0, :-1].float()
        finite = finite and bool(torch.isfinite(logits).all())
        nll += float(torch.nn.functional.cross_entropy(logits, inputs[0, 1:], reduction="sum"))
        count += len(ids) - 1
    mean = nll / max(count, 1)
    if math.isnan(mean):
        return math.nan, finite
    return (math.exp(mean) if mean < 700 else math.inf), finite


def _reference_perplexity(
    source: Source, texts: Sequence[Sequence[int]], dev: torch.device, base: Source | None
) -> float | None:
    try:
        model = load_reference(source, dev, base)
    except ReferenceSkipped as e:
        log.warning("%s", e)
        return None
    except Exception:  # a reference that does not load gives no number; the other still counts
        return None
    value, _ = _perplexity(model, texts, dev)
    size = _size(model)
    del model
    _release(size)
    return None if math.isnan(value) else value


class ReferenceSkipped(Exception):
    """A reference that is not measured here, and why (one line for the log)."""


def load_reference(source: Source, dev: torch.device, base: Source | None = None) -> Any:
    """A post model or new base straight from its `Source` (local, HF cache or Hub ranges);
    a post model that is a PEFT adapter: the adapter applied to its ``base``."""
    from transformers import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
        AutoConfig,
    )

    if is_adapter(source.list_files()):
        return _adapter_on_base(source, dev, base)
    checkpoint = open_checkpoint(source, "reference")
    vision = kind_of(checkpoint.config).vision
    settings = dict(checkpoint.config)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    state = {}
    for name, ref in checkpoint.tensors.items():
        data = bytearray(ref.entry.nbytes)
        if data:
            source.read_into(ref.file, ref.entry.offset, memoryview(data))
            tensor = torch.frombuffer(data, dtype=TORCH_DTYPES[ref.dtype]).reshape(ref.shape)
        else:
            tensor = torch.empty(ref.shape, dtype=TORCH_DTYPES[ref.dtype])
        state[name] = tensor.to(dev)
    mapping = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING if vision else MODEL_FOR_CAUSAL_LM_MAPPING
    model_class: Any = mapping[type(config)]
    dtype = next(iter(state.values())).dtype if state else torch.float32
    model = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    return model.to(dev).eval()


def _adapter_on_base(adapter: Source, dev: torch.device, base: Source | None) -> Any:
    """PEFT's own forward (peft is optional: imported only here)."""
    if importlib.util.find_spec("peft") is None:
        raise ReferenceSkipped(
            "peft is not installed: the post model (an adapter on its base) is not measured"
        )
    if base is None:
        raise ReferenceSkipped("the adapter's base is not known: the post model is not measured")
    from peft import PeftModel

    folder = adapter.local([ADAPTER_CONFIG, ADAPTER_WEIGHTS]).directory
    assert folder is not None  # a local source is a folder
    model = PeftModel.from_pretrained(load_reference(base, dev), str(folder))
    return model.to(dev).eval()


def _perplexity_detail(verdict: Mapping[str, Any], merged: float) -> str:
    shown = ", ".join(
        f"{ROLE_TITLES[role]} {_number(verdict[role])}" for role in REFERENCES if role in verdict
    )
    if not shown:
        return f"{_number(merged)}, not compared (no post model or new base given)"
    if verdict["better"] is None:
        return f"merged {_number(merged)}; no reference could be measured ({shown})"
    relation = "within" if verdict["passed"] else "over"
    return (
        f"merged {_number(merged)} is {relation} {verdict['factor']:g} x"
        f" {_number(verdict['better'])}, the better of {shown}"
    )


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _describe(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _size(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _release(size: int) -> None:
    """Give a dropped model's memory back before the next one loads.

    A full garbage collection costs a noticeable fraction of a second in a large
    process; only a large model's memory is worth it.
    """
    if size < 1 << 28:
        return
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and advice (generation flags, weights) are noise here."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
