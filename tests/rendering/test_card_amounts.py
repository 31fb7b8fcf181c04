"""The card says sizes and counts with their units: "449.25 KiB in 2 shards", not
"460032 bytes in 2 shard(s)"."""

from paramdelta.pipeline.lineage import sample_record
from paramdelta.rendering.card import render_card


def _output_line(**output):
    record = sample_record()
    record["output"] |= output
    (line,) = [x for x in render_card(record).splitlines() if x.startswith("- Output:")]
    return line


def test_the_output_line_names_its_size_and_shards_in_words():
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert _output_line(tensors=291, bytes=460032, shards=shards) == (
        "- Output: 291 tensors, 449.25 KiB in 2 shards"
    )
    assert _output_line(tensors=1, bytes=16 * 2**30, shards=["model.safetensors"]) == (
        "- Output: 1 tensor, 16.00 GiB in 1 shard"
    )
