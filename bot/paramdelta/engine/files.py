"""Which checkpoint gives each non-weight file of the output, and why the rest is left out.

Every file of every input falls under exactly one rule, the first whose glob
matches its path: a rule names the roles that may give the file (the first of
them that has it wins) or, with no roles, leaves the file out on purpose. The
last rule catches everything else, so no file is ever skipped without a reason
that the log, the lineage record and the card can show.

Why these donors: config.json describes the architecture being produced (the
new base's), and model code goes with it; the tokenizer, chat template,
processor and generation defaults are the instruct behaviour being transferred
(the post model's, and the output's vocabulary follows them); licence files
follow the new base, else the post model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from paramdelta.engine.checkpoint import CONFIG, PICKLE_SUFFIXES
from paramdelta.engine.safetensors_format import INDEX, SINGLE_FILE

LINEAGE_FILE = "paramdelta.json"
CARD_FILE = "README.md"
GENERATION_CONFIG = "generation_config.json"
ADAPTER_CONFIG = "adapter_config.json"  # a PEFT adapter (`paramdelta.engine.adapter`)
RESULT_FILES = "result"  # the origin of the files made from a merge's result: card, record


class FileRule(NamedTuple):
    pattern: str  # fnmatch glob on the repo path ("*" also matches "/")
    donors: tuple[str, ...]  # roles in order of preference; () leaves the file out
    why: str


_POST_FILES = (
    (GENERATION_CONFIG, "the post model's generation defaults"),
    ("tokenizer.json", "the post model's tokenizer"),
    ("tokenizer_config.json", "the post model's tokenizer"),
    ("special_tokens_map.json", "the post model's tokenizer"),
    ("added_tokens.json", "the post model's tokenizer"),
    ("tokenizer.model", "the post model's tokenizer"),
    ("tokenizer.model.v*", "the post model's tokenizer (Mistral format)"),
    ("tekken.json", "the post model's tokenizer (Mistral format)"),
    ("vocab.json", "the post model's tokenizer"),
    ("vocab.txt", "the post model's tokenizer"),
    ("merges.txt", "the post model's tokenizer"),
    ("spiece.model", "the post model's tokenizer"),
    ("chat_template.jinja", "the post model's chat template"),
    ("chat_template.json", "the post model's chat template"),
    ("additional_chat_templates/*", "the post model's chat templates"),
    ("preprocessor_config.json", "the post model's processor"),
    ("processor_config.json", "the post model's processor"),
    ("video_preprocessor_config.json", "the post model's processor"),
    ("audio_tokenizer_config.json", "the post model's processor"),
)
# The files that hold a tokenizer's vocabulary: without one of them AutoTokenizer cannot load
# the output (a tokenizer_config.json alone names a class, not a vocabulary).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer.model.v*",
    "tekken.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
_LICENCE_FILES = ("LICENSE", "LICENSE.*", "LICENCE", "LICENCE.*", "USE_POLICY.md", "NOTICE*")

RULES: tuple[FileRule, ...] = (
    FileRule(CONFIG, ("new_base",), "the architecture produced"),
    *(FileRule(pattern, ("post",), why) for pattern, why in _POST_FILES),
    *(FileRule(p, ("new_base", "post"), "the licence terms") for p in _LICENCE_FILES),
    FileRule("original/*", (), "the native-format release, not produced"),
    FileRule("params.json", (), "Mistral's native-format config, for weights not produced"),
    FileRule("*.py", ("new_base",), "model code, named by config.json's auto_map"),
    FileRule(CARD_FILE, (), "replaced by the model card"),
    FileRule(LINEAGE_FILE, (), "replaced by this merge's lineage record"),
    FileRule(".gitattributes", (), "the Hub keeps its own"),
    FileRule("*.safetensors", (), "weights the merge does not read (not in the index)"),
    *(FileRule(f"*{s}", (), "pickle: never read or copied") for s in PICKLE_SUFFIXES),
    FileRule("*.bin.index.json", (), "index of pickle weights: not used"),
    FileRule("*.gguf", (), "a quantized export: not produced"),
    # A processor with a second tokenizer saves it in a folder named after it (after the
    # pickle rules: a pickle in that folder is still never copied).
    FileRule("*_tokenizer/*", ("post",), "the post model's processor (its second tokenizer)"),
    FileRule("*", (), "no rule for this file: not copied"),
)


def rule_for(path: str) -> FileRule:
    return next(rule for rule in RULES if fnmatch.fnmatchcase(path, rule.pattern))


def has_tokenizer(paths: Iterable[str]) -> bool:
    """Whether a checkpoint with these files has a tokenizer that transformers can load."""
    return any(fnmatch.fnmatchcase(p, pattern) for p in paths for pattern in TOKENIZER_FILES)


def no_tokenizer(post: str) -> str:
    """What `merge`, `publish` and the check say of an output without a tokenizer."""
    return f"the output has no tokenizer (post model {post} ships none)"


def is_adapter(files: Iterable[str]) -> bool:
    """An adapter folder: adapter_config.json and no full checkpoint beside it."""
    top = {f for f in files if "/" not in f}
    return ADAPTER_CONFIG in top and not {SINGLE_FILE, INDEX, CONFIG} & top


def file_donors(listings: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """path -> the role that gives it, from each role's file list (no file is read).

    Depends on the listings only, so `plan` can tell from the Hub's file lists
    alone whether a merge would now take its files from elsewhere. A post model
    that is an adapter gives what its folder has, its base the rest of the post
    model's files (an adapter has its base's tokenizer unless it ships its own).
    Only the first delta's post ("post") and base ("base") donate: a later delta's
    checkpoints ("post[1]", ...) give no file, adapter or not.
    """
    have = {role: set(files) for role, files in listings.items()}
    if is_adapter(have.get("post", ())) and "base" in have:
        own = have["post"]
        donors = file_donors({**have, "post": own | have["base"]})
        return {p: "base" if r == "post" and p not in own else r for p, r in donors.items()}
    donors = {}
    for path in sorted(set().union(*have.values())):
        donor = next((r for r in rule_for(path).donors if path in have.get(r, ())), None)
        if donor is not None:
            donors[path] = donor
    return donors


def skipped_files(
    listings: Mapping[str, Iterable[str]], donors: Mapping[str, str], merged: Iterable[str]
) -> dict[str, str]:
    """path -> why it is not in the output: each input file neither donated nor ``merged``.

    ``merged``: the weight files the merge reads (shards and index).
    """
    have = {role: set(files) for role, files in listings.items()}
    used = {*donors, *merged}
    skipped = {}
    for path in sorted(set().union(*have.values()) - used):
        rule = rule_for(path)
        why = rule.why
        if rule.donors:  # a donated kind of file, but no donor has it
            only = " or the ".join(r.replace("_", " ") for r in rule.donors)
            why = f"{why}: taken from the {only} only, which has none"
        skipped[path] = why
    return skipped
