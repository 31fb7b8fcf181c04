"""The file rules on their own (the merge plan's use of them: tests/engine/test_merge_plan.py)."""

import pytest

from paramdelta.engine.files import (
    RULES,
    TOKENIZER_FILES,
    file_donors,
    has_tokenizer,
    rule_for,
    skipped_files,
)


def test_every_rule_can_match_a_file():
    """No rule is shadowed by an earlier one: each pattern's own instance falls under it."""
    for rule in RULES:
        assert rule_for(rule.pattern.replace("*", "x")) is rule, rule.pattern


def test_the_last_rule_catches_everything():
    assert RULES[-1].pattern == "*" and RULES[-1].donors == ()
    assert rule_for("").why == rule_for("weird/é name").why == "no rule for this file: not copied"


@pytest.mark.parametrize(
    ("path", "donors", "why"),
    [
        ("config.json", ("new_base",), "the architecture produced"),
        ("sub/config.json", (), "no rule for this file: not copied"),  # exact names: top level
        ("modeling_llama.py", ("new_base",), "model code, named by config.json's auto_map"),
        ("src/deep/configuration.py", ("new_base",), "model code, named by config.json's auto_map"),
        ("additional_chat_templates/tool_use.jinja", ("post",), "the post model's chat templates"),
        ("tokenizer.model.v7", ("post",), "the post model's tokenizer (Mistral format)"),
        ("LICENSE.txt", ("new_base", "post"), "the licence terms"),
        ("NOTICE.md", ("new_base", "post"), "the licence terms"),
        ("license", (), "no rule for this file: not copied"),  # the globs are case-sensitive
        # the first rule wins: a native-format weight is the release's, not an unread index entry
        ("original/consolidated.00.safetensors", (), "the native-format release, not produced"),
        ("original/tokenizer.model", (), "the native-format release, not produced"),
        ("paramdelta.json", (), "replaced by this merge's lineage record"),
        (".gitattributes", (), "the Hub keeps its own"),
        ("pytorch_model.bin.index.json", (), "index of pickle weights: not used"),
        ("model-q4_k_m.gguf", (), "a quantized export: not produced"),
        ("optimizer.pt", (), "pickle: never read or copied"),
        ("training_args.bin", (), "pickle: never read or copied"),
        ("rng_state.pth", (), "pickle: never read or copied"),
        ("model.ckpt", (), "pickle: never read or copied"),
        ("data.pkl", (), "pickle: never read or copied"),
        ("data.pickle", (), "pickle: never read or copied"),
        ("model.safetensors.index.json", (), "no rule for this file: not copied"),  # merged
        # What a vision-language model's processor saves (transformers 4 and 5 names).
        ("processor_config.json", ("post",), "the post model's processor"),
        ("preprocessor_config.json", ("post",), "the post model's processor"),
        ("video_preprocessor_config.json", ("post",), "the post model's processor"),
        ("chat_template.json", ("post",), "the post model's chat template"),
        ("audio_tokenizer_config.json", ("post",), "the post model's processor"),
        (
            "qformer_tokenizer/tokenizer.json",
            ("post",),
            "the post model's processor (its second tokenizer)",
        ),
        ("qformer_tokenizer/training_args.bin", (), "pickle: never read or copied"),
    ],
)
def test_rule_for(path, donors, why):
    rule = rule_for(path)
    assert (rule.donors, rule.why) == (donors, why)


def test_the_first_listed_donor_that_has_the_file_gives_it():
    listings = {
        "base": ["config.json", "LICENSE", "tokenizer.json", "modeling_x.py"],
        "post": ["config.json", "LICENSE", "tokenizer.json", "modeling_x.py", "NOTICE"],
        "new_base": ["config.json", "LICENSE", "USE_POLICY.md"],
    }
    assert file_donors(listings) == {
        "LICENSE": "new_base",
        "NOTICE": "post",  # the new base has none: the post model's
        "USE_POLICY.md": "new_base",
        "config.json": "new_base",
        "tokenizer.json": "post",
    }  # modeling_x.py: model code goes with config.json, the new base's, which has none


def test_file_donors_is_sorted_and_takes_any_iterable():
    donors = file_donors({"post": iter(["vocab.json", "merges.txt"]), "new_base": ("config.json",)})
    assert list(donors) == ["config.json", "merges.txt", "vocab.json"]
    assert file_donors({}) == {} and file_donors({"base": []}) == {}


def test_every_file_not_used_is_skipped_with_its_reason():
    listings = {
        "base": ["config.json", "model.safetensors", "tokenizer.model", "NOTICE", "README.md"],
        "post": ["config.json", "model.safetensors", "tokenizer.json", "modeling_x.py"],
        "new_base": ["config.json", "model.safetensors", "model.bin", "notes.txt"],
    }
    donors = file_donors(listings)
    assert donors == {"config.json": "new_base", "tokenizer.json": "post"}
    assert skipped_files(listings, donors, ["model.safetensors"]) == {
        "NOTICE": "the licence terms: taken from the new base or the post only, which has none",
        "README.md": "replaced by the model card",
        "model.bin": "pickle: never read or copied",
        "modeling_x.py": (
            "model code, named by config.json's auto_map: taken from the new base only,"
            " which has none"
        ),
        "notes.txt": "no rule for this file: not copied",
        "tokenizer.model": "the post model's tokenizer: taken from the post only, which has none",
    }


def test_the_merged_weights_are_neither_donated_nor_skipped():
    listings = {"new_base": ["model.safetensors.index.json", "model-00001-of-00001.safetensors"]}
    merged = ["model.safetensors.index.json", "model-00001-of-00001.safetensors"]
    assert skipped_files(listings, file_donors(listings), merged) == {}
    assert skipped_files(listings, {}, []) == {
        "model-00001-of-00001.safetensors": "weights the merge does not read (not in the index)",
        "model.safetensors.index.json": "no rule for this file: not copied",
    }


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["config.json", "tokenizer.json"], True),
        (["tokenizer_config.json", "tokenizer.model.v3"], True),
        (["vocab.json", "merges.txt"], True),
        (["tekken.json"], True),
        # a tokenizer_config.json names a class; without a vocabulary there is nothing to load
        (["config.json", "tokenizer_config.json", "special_tokens_map.json"], False),
        (["chat_template.jinja", "original/tokenizer.model"], False),
        ([], False),
    ],
)
def test_has_tokenizer(files, expected):
    assert has_tokenizer(files) is expected


def test_every_tokenizer_file_is_one_the_output_takes_from_the_post_model():
    for pattern in TOKENIZER_FILES:
        assert rule_for(pattern.replace("*", "3")).donors == ("post",), pattern
