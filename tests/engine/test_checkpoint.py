import errno
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from paramdelta.engine.checkpoint import LocalSource, open_checkpoint
from paramdelta.errors import CheckpointError, LocalFileError
from paramdelta.testing.checkpoints import (
    llama_config,
    random_state_dict,
    save_checkpoint,
    write_raw_safetensors,
)


@pytest.fixture
def sharded(tmp_path):
    config = llama_config()
    state = random_state_dict(config, seed=0)
    return save_checkpoint(tmp_path / "ckpt", state, config, max_shard_size=40_000), state


def _open(path):
    return open_checkpoint(LocalSource(path), "post")


def test_opens_a_sharded_checkpoint(sharded):
    path, state = sharded
    ckpt = _open(path)
    assert set(ckpt.tensors) == set(state)
    assert ckpt.config["model_type"] == "llama"
    ref = ckpt.tensors["model.norm.weight"]
    raw = (path / ref.file).read_bytes()[ref.entry.offset : ref.entry.offset + ref.entry.nbytes]
    assert raw == state["model.norm.weight"].view(torch.int16).numpy().tobytes()


def test_opens_a_single_file_checkpoint(tmp_path):
    config = llama_config(tie_word_embeddings=True)
    path = save_checkpoint(tmp_path / "c", random_state_dict(config, seed=1), config)
    ckpt = _open(path)
    assert {r.file for r in ckpt.tensors.values()} == {"model.safetensors"}
    assert "lm_head.weight" not in ckpt.tensors


def test_local_source_reads_ranges(tmp_path):
    (tmp_path / "f").write_bytes(bytes(range(100)))
    source = LocalSource(tmp_path)
    assert source.read("f", 10, 5) == bytes([10, 11, 12, 13, 14])
    view = memoryview(bytearray(4))
    source.read_into("f", 96, view)
    assert bytes(view) == bytes([96, 97, 98, 99])
    with pytest.raises(CheckpointError, match="file ended at byte 100 while reading"):
        source.read_into("f", 98, memoryview(bytearray(4)))
    source.close()


def _index(path):
    return json.loads((path / "model.safetensors.index.json").read_text())


def _write_index(path, doc):
    (path / "model.safetensors.index.json").write_text(json.dumps(doc))


def test_index_pointing_at_a_missing_shard(sharded):
    path, _ = sharded
    doc = _index(path)
    doc["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"  # no such file
    _write_index(path, doc)
    with pytest.raises(CheckpointError) as e:
        _open(path)
    assert str(e.value) == (
        f"post: {path}/model.safetensors.index.json: tensor 'model.norm.weight'"
        " points at missing shard 'model-00009-of-00009.safetensors'"
    )


def test_index_missing_an_entry(sharded):
    path, _ = sharded
    doc = _index(path)
    shard = doc["weight_map"].pop("model.norm.weight")
    _write_index(path, doc)
    with pytest.raises(CheckpointError) as e:
        _open(path)
    assert str(e.value) == (
        f"post: {path}/{shard}: has tensor 'model.norm.weight' but the index does not list it"
    )


def test_index_naming_the_wrong_shard(sharded):
    path, _ = sharded
    doc = _index(path)
    shard = doc["weight_map"]["model.norm.weight"]
    other = next(s for s in doc["weight_map"].values() if s != shard)
    doc["weight_map"]["model.norm.weight"] = other
    _write_index(path, doc)
    with pytest.raises(CheckpointError) as e:
        _open(path)
    assert str(e.value) == (
        f"post: {path}/{shard}: has tensor 'model.norm.weight' but the index says {other}"
    )


def test_index_listing_a_tensor_no_shard_has(sharded):
    path, _ = sharded
    doc = _index(path)
    shard = doc["weight_map"]["model.norm.weight"]
    doc["weight_map"]["ghost.weight"] = shard
    _write_index(path, doc)
    with pytest.raises(CheckpointError) as e:
        _open(path)
    assert str(e.value) == (
        f"post: {path}/model.safetensors.index.json: lists tensor 'ghost.weight' in"
        f" {shard}, but that shard does not contain it"
    )


def test_index_with_a_duplicate_entry(sharded):
    path, _ = sharded
    text = (path / "model.safetensors.index.json").read_text()
    text = text.replace(
        '"weight_map": {',
        '"weight_map": {"model.norm.weight": "model-00001-of-00006.safetensors", ',
        1,
    )
    (path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CheckpointError) as e:
        _open(path)
    assert str(e.value) == (
        f"post: {path}/model.safetensors.index.json: key 'model.norm.weight' appears twice"
    )


def test_tensor_in_two_shards(tmp_path):
    path = tmp_path / "c"
    path.mkdir()
    (path / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, path / "a.safetensors")
    save_file({"w": torch.zeros(2), "v": torch.zeros(2)}, path / "b.safetensors")
    _write_index(path, {"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}})
    with pytest.raises(CheckpointError) as e:
        _open(path)
    assert str(e.value) == f"post: {path}: tensor 'w' is in both a.safetensors and b.safetensors"


def test_index_shard_outside_the_directory(sharded):
    path, _ = sharded
    doc = _index(path)
    doc["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    _write_index(path, doc)
    with pytest.raises(CheckpointError, match=r"not a \.safetensors file next to the index"):
        _open(path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_refuses_pickle_checkpoints_without_loading_them(tmp_path, name):
    path = tmp_path / "c"
    path.mkdir()
    (path / "config.json").write_text("{}")
    # Not a valid pickle either: proves nothing tries to unpickle it.
    (path / name).write_bytes(b"\x80\x04 this would run code if unpickled")
    with pytest.raises(CheckpointError) as e:
        _open(path)
    assert str(e.value) == (
        f"post: {path}: only pickle weights ({name}); paramdelta never unpickles"
        " (it can run arbitrary code): convert the checkpoint to safetensors"
    )


def test_missing_config(tmp_path):
    write_raw_safetensors(tmp_path / "model.safetensors", {})
    with pytest.raises(CheckpointError) as e:
        _open(tmp_path)
    assert str(e.value) == f"post: {tmp_path}: config.json is missing"


def test_config_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{'single': quotes}")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        _open(tmp_path)


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as e:
        _open(tmp_path)
    assert (
        str(e.value)
        == f"post: {tmp_path}: no model.safetensors or model.safetensors.index.json found"
    )


def test_shards_without_index(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    with pytest.raises(
        CheckpointError, match=r"safetensors shards without model\.safetensors\.index\.json"
    ):
        _open(tmp_path)


def test_header_errors_name_the_checkpoint_and_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    write_raw_safetensors(tmp_path / "model.safetensors", b"{oops")
    with pytest.raises(CheckpointError) as e:
        _open(tmp_path)
    assert str(e.value).startswith(f"post: {tmp_path}/model.safetensors: header is not valid JSON")


def test_a_failed_read_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "w.bin").write_bytes(bytes(16))
    source = LocalSource(tmp_path)
    source.read("w.bin", 0, 4)  # opened: the failure below is the read's, not the open's

    def failing(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises(LocalFileError) as e:
        source.read("w.bin", 4, 4)
    assert str(e.value) == f"{tmp_path / 'w.bin'}: Input/output error"
    source.close()
