import json
from dataclasses import replace
from datetime import datetime, timezone

from paramdelta.engine.recipe import Recipe
from paramdelta.hub.client import RepoFiles
from paramdelta.hub.sources import provenance
from paramdelta.pipeline.lineage import (
    build_record,
    compare,
    decode,
    encode,
    output_differences,
    source_entry,
)

SHAS = {"base": "a" * 40, "post": "b" * 40, "new_base": "c" * 40}
REPOS = {"base": "org/base", "post": "org/post", "new_base": "org/new"}
RECIPE = Recipe()
READ = ["config.json", "model.safetensors"]


def _listing(role, sha=None, **content):
    files = {
        "README.md": f"blob:readme-{role}",
        "config.json": f"blob:config-{role}",
        "model.safetensors": f"sha256:weights-{role}",
        **content,
    }
    files = {path: cid for path, cid in files.items() if cid is not None}
    return RepoFiles(
        REPOS[role],
        "main",
        sha or SHAS[role],
        dict.fromkeys(files, 1),
        {"license": "apache-2.0"},
        files,
    )


LISTINGS = {role: _listing(role) for role in SHAS}


def _record(listings=LISTINGS, recipe=RECIPE):
    return build_record(
        target="t",
        checkpoints={
            role: source_entry(role, provenance(repo), READ) for role, repo in listings.items()
        },
        recipe=recipe,
        files={"config.json": "new_base"},
        output={"repo": "me/out"},
        written_dtype="bfloat16",
        ci_run_url="https://github.test/o/r/actions/runs/1",
        created_at=datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc),
    )


def test_record_round_trips_with_content_ids_and_licences():
    record = _record()
    assert decode(encode(record)) == record
    assert record["created_at"] == "2026-11-23T12:00:00Z"
    assert record["tool"]["name"] == "paramdelta-bot"
    assert [c["role"] for c in record["checkpoints"]] == ["base", "post", "new_base"]
    assert record["checkpoints"][2] == {
        "role": "new_base",
        "repo": "org/new",
        "revision": "main",
        "sha": "c" * 40,
        "license": "apache-2.0",
        "files": {
            "config.json": "blob:config-new_base",
            "model.safetensors": "sha256:weights-new_base",
        },
    }
    assert record["recipe"]["formula"] == "new_base + alpha * (post - base)"
    assert record["recipe"]["compute_dtype"] == "float32"
    assert (record["recipe"]["dtype"], record["recipe"]["requested_dtype"]) == ("bfloat16", "auto")


def test_untrusted_card_data_keeps_only_licence_strings():
    repo = replace(
        LISTINGS["post"], card_data={"license": ["x"], "license_name": "acme", "eval": 1}
    )
    entry = source_entry("post", provenance(repo), READ)
    assert "license" not in entry and entry["license_name"] == "acme" and "eval" not in entry


def test_decode_rejects_what_it_does_not_understand():
    assert decode(None) is None
    assert decode(b"not json") is None
    assert decode(b"[]") is None
    assert decode(json.dumps({"schema_version": 99}).encode()) is None


def test_a_current_record_and_a_missing_one():
    assert compare(_record(), LISTINGS, RECIPE) == ([], [])
    assert compare(None, LISTINGS, RECIPE).reasons == ["no lineage record in the output repo"]


def test_a_commit_that_changes_no_file_the_merge_read_is_not_a_new_release():
    readme_only = {
        **LISTINGS,
        "new_base": _listing("new_base", "d" * 40, **{"README.md": "blob:new"}),
    }
    assert compare(_record(), readme_only, RECIPE) == (
        [],
        ["upstream moved, content unchanged (new base org/new moved ccccccc -> ddddddd)"],
    )


def test_changed_weights_are_a_new_release():
    weights = {
        **LISTINGS,
        "new_base": _listing("new_base", "d" * 40, **{"model.safetensors": "sha256:v2"}),
    }
    assert compare(_record(), weights, RECIPE).reasons == [
        "new base org/new moved ccccccc -> ddddddd: model.safetensors changed"
    ]


def test_going_from_one_file_to_shards_is_a_change():
    sharded = {
        **LISTINGS,
        "base": _listing("base", "e" * 40, **{"model.safetensors.index.json": "blob:i"}),
    }
    assert compare(_record(), sharded, RECIPE).reasons == [
        "base org/base moved aaaaaaa -> eeeeeee: model.safetensors.index.json changed"
    ]


def test_a_record_without_content_ids_falls_back_to_the_commit():
    old = _record()
    for checkpoint in old["checkpoints"]:
        del checkpoint["files"]
    moved = {**LISTINGS, "post": _listing("post", "f" * 40)}
    assert compare(old, moved, RECIPE).reasons == ["post org/post moved bbbbbbb -> fffffff"]


def test_a_file_another_checkpoint_would_now_give_is_a_change():
    record = _record()
    record["recipe"]["file_donors"] = {"config.json": "new_base"}
    licensed = {**LISTINGS, "new_base": _listing("new_base", "d" * 40, LICENSE="blob:l")}
    assert compare(record, licensed, RECIPE).reasons == [
        "LICENSE would now come from new base (was nowhere)"
    ]


def test_a_changed_licence_is_a_change_of_the_card():
    relicensed = {
        **LISTINGS,
        "post": replace(_listing("post", "9" * 40), card_data={"license": "mit"}),
    }
    assert compare(_record(), relicensed, RECIPE).reasons == [
        "post licence changed: apache-2.0 -> mit"
    ]


def test_renames_and_recipe_changes():
    renamed = {**LISTINGS, "new_base": replace(LISTINGS["new_base"], repo_id="org/newer")}
    assert compare(_record(), renamed, RECIPE).reasons == [
        "new base is now org/newer (was org/new)"
    ]
    assert compare(_record(), LISTINGS, RECIPE._replace(alpha=0.5)).reasons == [
        "recipe alpha changed: 1.0 -> 0.5"
    ]
    assert compare(_record(), LISTINGS, RECIPE._replace(dtype="float16")).reasons == [
        "recipe dtype changed: 'auto' -> 'float16'"
    ]
    before_requested_dtype = _record()
    del before_requested_dtype["recipe"]["requested_dtype"]
    before_requested_dtype["recipe"]["dtype"] = "auto"
    assert compare(before_requested_dtype, LISTINGS, RECIPE) == ([], [])


def test_the_output_weights_must_be_the_ones_the_record_names():
    record = _record()
    record["output"]["files"] = {
        "model.safetensors": ["sha256:" + "1" * 64],
        "model.safetensors.index.json": ["sha256:" + "2" * 64, "blob:" + "3" * 40],
    }
    listed = {
        "model.safetensors": "sha256:" + "1" * 64,
        "model.safetensors.index.json": "blob:" + "3" * 40,
        "README.md": "blob:" + "4" * 40,
    }
    listing = RepoFiles("me/out", "main", "f" * 40, dict.fromkeys(listed, 1), {}, listed)
    assert output_differences(record, listing) == []
    assert output_differences(None, listing) == []  # `compare` says it
    older = _record()
    assert output_differences(older, listing) == [
        "the lineage record does not name the output's weights (an older record?)"
    ]
    other = replace(listing, content={**listed, "model.safetensors": "sha256:" + "9" * 64})
    assert output_differences(record, other) == [
        "model.safetensors in the output is not the file its lineage record names"
    ]
