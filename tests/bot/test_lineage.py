import json
from datetime import datetime, timezone

from paramdelta.bot.lineage import build_record, decode, differences, encode

CHECKPOINTS = {
    "base": {"repo": "org/base", "revision": "main", "sha": "a" * 40},
    "post": {"repo": "org/post", "revision": "v1", "sha": "b" * 40},
    "new_base": {"repo": "org/new", "revision": "main", "sha": "c" * 40},
}
RECIPE = {"alpha": 1.0, "dtype": "auto", "vocab_policy": "error"}


def _record(**overrides):
    return build_record(
        target="t",
        checkpoints=overrides.get("checkpoints", CHECKPOINTS),
        recipe=overrides.get("recipe", RECIPE),
        files={"config.json": "new_base"},
        output={"repo": "me/out"},
        ci_run_url="https://github.test/o/r/actions/runs/1",
        created_at=datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc),
    )


def test_record_round_trips():
    record = _record()
    assert decode(encode(record)) == record
    assert record["created_at"] == "2026-11-23T12:00:00Z"
    assert record["tool"]["name"] == "paramdelta-bot"
    assert [c["role"] for c in record["checkpoints"]] == ["base", "post", "new_base"]
    assert record["recipe"]["formula"] == "new_base + alpha * (post - base)"
    assert record["recipe"]["compute_dtype"] == "float32"


def test_decode_rejects_what_it_does_not_understand():
    assert decode(None) is None
    assert decode(b"not json") is None
    assert decode(b"[]") is None
    assert decode(json.dumps({"schema_version": 99}).encode()) is None


def test_differences():
    record = _record()
    assert differences(record, CHECKPOINTS, RECIPE) == []
    moved = {**CHECKPOINTS, "new_base": {**CHECKPOINTS["new_base"], "sha": "d" * 40}}
    assert differences(record, moved, RECIPE) == ["new base org/new moved ccccccc -> ddddddd"]
    renamed = {
        **CHECKPOINTS,
        "new_base": {"repo": "org/newer", "revision": "main", "sha": "e" * 40},
    }
    assert differences(record, renamed, RECIPE) == ["new base is now org/newer (was org/new)"]
    assert differences(record, CHECKPOINTS, {**RECIPE, "alpha": 0.5}) == [
        "recipe alpha changed: 1.0 -> 0.5"
    ]
    assert differences(None, CHECKPOINTS, RECIPE) == ["no lineage record in the output repo"]


def test_the_output_weights_must_be_the_ones_the_record_names():
    from paramdelta.bot.lineage import output_differences
    from paramdelta.hub.client import RepoFiles

    record = _record()
    record["output"]["files"] = {
        "model.safetensors": {"sha256": "1" * 64},
        "model.safetensors.index.json": {"sha256": "2" * 64, "git_oid": "3" * 40},
    }
    files = ["model.safetensors", "model.safetensors.index.json", "README.md"]
    listing = RepoFiles(
        "me/out",
        "main",
        "f" * 40,
        dict.fromkeys(files, 1),
        {},
        {"model.safetensors": "1" * 64},
        {"model.safetensors.index.json": "3" * 40, "README.md": "4" * 40},
    )
    assert output_differences(record, listing) == []
    assert output_differences(None, listing) == []  # `differences` says it
    older = _record()
    assert output_differences(older, listing) == [
        "the lineage record does not name the output's weights (an older record?)"
    ]
    other = RepoFiles(**{**listing.__dict__, "lfs_sha256": {"model.safetensors": "9" * 64}})
    assert output_differences(record, other) == [
        "model.safetensors in the output is not the file its lineage record names"
    ]
