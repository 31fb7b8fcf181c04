"""The pre-publish check: does the merged model load, talk and read text as well as its parents?

`run` checks the merged directory before anything is committed, and `paramdelta
check` checks any checkpoint. Each step uses the model as its users will, with
transformers, on the merge's device:

1. the tokenizer and the model load (`AutoTokenizer`, `AutoModelForCausalLM`;
   local files only, no remote code);
2. the chat template renders a fixed conversation (checkdata/conversation.json);
3. greedy generation on fixed prompts (checkdata/prompts.json) gives text: not
   nothing, not only special tokens, not one token repeated;
4. every forward pass gives finite logits;
5. perplexity on fixed texts written for this project (checkdata/texts.json): the
   merged model's is at most ``perplexity_factor`` times the better of the post
   model's and the new base's. Each is measured with the merged model's tokenizer
   (the post model's), and the models are loaded one at a time.

transformers is an optional extra (``paramdelta-bot[check]``): `decide` says,
before the merge, whether the check can run here, and why not. The thresholds
and verdicts are in `paramdelta.pipeline.check_rules`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
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

from paramdelta.engine.checkpoint import Source, open_checkpoint
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

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_NEW_TOKENS = 16
MAX_TEXT_TOKENS = 512


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # untrusted files: any failure to load is the finding
        report.record("tokenizer", False, f"does not load: {_describe(e)}")
        return
    report.record("tokenizer", True, type(tokenizer).__name__)
    templated = _check_chat_template(tokenizer, report)
    model: Any  # transformers' own annotations of .to and .generate do not type-check
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", local_files_only=True)
        model.to(dev).eval()
    except Exception as e:
        report.record("load", False, f"does not load with transformers: {_describe(e)}")
        return
    report.record("load", True, f"{type(model).__name__}, {model.dtype}".replace("torch.", ""))
    texts = [tokenizer(t).input_ids[:MAX_TEXT_TOKENS] for t in check_data("texts")]
    merged, finite = _perplexity(model, texts, dev)
    report.record(
        "logits",
        finite,
        f"on {len(texts)} texts" if finite else "NaN or Inf in the logits of the fixed texts",
    )
    _check_generation(model, tokenizer, templated, dev, report)
    size = _size(model)
    del model
    _release(size)
    measured = {
        role: _reference_perplexity(references[role], texts, dev)
        for role in REFERENCES
        if role in references
    }
    verdict = perplexity_verdict(merged, measured, factor)
    verdict |= {"texts": len(texts), "tokens": sum(len(t) - 1 for t in texts)}
    report.perplexity = verdict
    report.record("perplexity", verdict["passed"], _perplexity_detail(verdict, merged))


def _check_chat_template(tokenizer: PreTrainedTokenizerBase, report: CheckReport) -> bool:
    conversation = check_data("conversation")
    if not getattr(tokenizer, "chat_template", None):
        return report.record("chat_template", False, "the tokenizer has no chat template")
    try:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
    except Exception as e:
        return report.record("chat_template", False, f"does not render: {_describe(e)}")
    if not isinstance(text, str) or conversation[-1]["content"] not in text:
        return report.record(
            "chat_template", False, "the rendered text does not hold the last message"
        )
    detail = f"{len(conversation)} messages, {len(text)} characters"
    return report.record("chat_template", True, detail)


def _check_generation(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    templated: bool,
    dev: torch.device,
    report: CheckReport,
) -> None:
    """Greedy answers to every fixed prompt, in one left-padded batch."""
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops, default=0)
    prompts = check_data("prompts")
    encoded = [_prompt_ids(tokenizer, prompt, templated) for prompt in prompts]
    width = max(map(len, encoded))
    inputs = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=dev)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=dev)
    config = GenerationConfig(
        max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=pad
    )
    output = model.generate(inputs, attention_mask=mask, generation_config=config)
    special = set(tokenizer.all_special_ids)
    for prompt, row in zip(prompts, output[:, width:].tolist(), strict=True):
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        new = row[:end]  # what follows the end of the answer is padding
        answer = str(tokenizer.decode(new, skip_special_tokens=True))
        problem = degeneracy(new, special, answer)
        report.generation.append(
            {"prompt": prompt, "text": answer, "tokens": len(new), "problem": problem}
        )
    bad = [g for g in report.generation if g["problem"]]
    detail = f"{len(report.generation) - len(bad)} of {len(report.generation)} prompts"
    if bad:
        detail += f"; {bad[0]['prompt']!r} gives {bad[0]['problem']}"
    report.record("generation", not bad, detail)


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, templated: bool) -> list[int]:
    """A prompt as the model sees it in a chat: through the chat template, if it renders."""
    if not templated:
        return list(tokenizer(prompt).input_ids)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
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
    source: Source, texts: Sequence[Sequence[int]], dev: torch.device
) -> float | None:
    try:
        model = load_reference(source, dev)
    except Exception:  # a reference that does not load gives no number; the other still counts
        return None
    value, _ = _perplexity(model, texts, dev)
    size = _size(model)
    del model
    _release(size)
    return None if math.isnan(value) else value


def load_reference(source: Source, dev: torch.device) -> Any:
    """A post model or new base straight from its `Source` (local, HF cache or Hub ranges)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    checkpoint = open_checkpoint(source, "reference")
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
    model_class: Any = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    dtype = next(iter(state.values())).dtype if state else torch.float32
    model = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
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
