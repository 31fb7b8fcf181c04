import json
import os
import struct
import subprocess
import sys

import pytest
import torch

from paramdelta.cli import main
from paramdelta.testing.checkpoints import (
    llama_config,
    load_tensors,
    make_trio,
    mismatched_tensors,
    random_state_dict,
    reference_merge,
    save_checkpoint,
)


@pytest.fixture
def trio(tmp_path):
    return make_trio(tmp_path / "in")


def _argv(trio, out, *extra):
    return [
        "merge",
        "--base", str(trio["base"]),
        "--post", str(trio["post"]),
        "--new-base", str(trio["new_base"]),
        "--output", str(out),
        *extra,
    ]  # fmt: skip


def test_merge_json_output(trio, tmp_path, capsys):
    assert main(_argv(trio, tmp_path / "out", "--format", "json")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["output"] == str(tmp_path / "out")
    assert summary["tensors"] == 21
    assert summary["bytes"] == sum(t.nbytes for t in load_tensors(tmp_path / "out").values())
    assert summary["dtype"] == "auto" and summary["alpha"] == 1.0 and summary["device"] == "cpu"
    assert summary["peak_rss_bytes"] > 0 and summary["seconds"] >= 0
    assert summary["shards"] == ["model.safetensors"]
    assert summary["files"]["tokenizer_config.json"] == "post"
    assert captured.err == ""
    expected = reference_merge(*(load_tensors(trio[r]) for r in ("base", "post", "new_base")))
    assert mismatched_tensors(load_tensors(tmp_path / "out"), expected) == []


def test_merge_human_output(trio, tmp_path, capsys):
    assert main(_argv(trio, tmp_path / "out", "--alpha", "0.5")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"merged 21 tensors (208.62 KiB) into {tmp_path / 'out'} in ")
    assert "files from the inputs: LICENSE (new_base), chat_template.jinja (post)," in out


def _cli(argv):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    return subprocess.run(
        [sys.executable, "-m", "paramdelta", *argv], capture_output=True, text=True, env=env
    )


def test_progress_bar_shown_on_stderr_unless_disabled(trio, tmp_path):
    shown = _cli(_argv(trio, tmp_path / "a"))
    assert shown.returncode == 0 and "merge: 100%" in shown.stderr
    as_json = _cli(_argv(trio, tmp_path / "b", "--format", "json"))
    assert as_json.returncode == 0 and as_json.stderr == ""
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    quiet = subprocess.run(
        [sys.executable, "-m", "paramdelta", *_argv(trio, tmp_path / "c")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""


def _first_shard(path):
    return path / "model.safetensors"


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def _set(name, key, value):
    return lambda h: h[name].__setitem__(key, value)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _huge_header(path):
    path.write_bytes(struct.pack("<Q", 1 << 40) + path.read_bytes()[8:])


def _header_past_end(path):
    path.write_bytes(struct.pack("<Q", path.stat().st_size) + path.read_bytes()[8:])


def _not_utf8(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:9] + b"\xff" + raw[10:])


def _not_json(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"#" + raw[9:])


def _overlap(h):
    h["model.norm.weight"]["data_offsets"] = [0, 128]


def _gap(path):
    """Insert two undescribed bytes before the second tensor, shifting the rest."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    second = sorted(v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")[1]
    for key, value in header.items():
        if key != "__metadata__" and value["data_offsets"][0] >= second:
            value["data_offsets"] = [o + 2 for o in value["data_offsets"]]
    new = json.dumps(header).encode()
    data = raw[8 + n :]
    path.write_bytes(struct.pack("<Q", len(new)) + new + data[:second] + b"\0\0" + data[second:])


CORRUPTIONS = {
    "truncated": (_truncate, "ends at byte"),
    "header too large": (
        _huge_header,
        "header length 1099511627776 exceeds the 100000000-byte limit",
    ),
    "header past end": (_header_past_end, "runs past the end of the"),
    "non-utf8 header": (_not_utf8, "header is not valid UTF-8"),
    "non-json header": (_not_json, "header is not valid JSON"),
    "unknown dtype": (
        lambda p: _rewrite_header(p, _set("model.norm.weight", "dtype", "Q8")),
        "tensor 'model.norm.weight': unknown or unsupported dtype 'Q8'",
    ),
    "size mismatch": (
        lambda p: _rewrite_header(p, _set("model.norm.weight", "shape", [65])),
        "tensor 'model.norm.weight': shape [65] of BF16 needs 130 bytes but data_offsets span 128",
    ),
    "offsets outside": (
        lambda p: _rewrite_header(
            p, _set("model.norm.weight", "data_offsets", [10**9, 10**9 + 128])
        ),
        "past its end",
    ),
    "overlap": (lambda p: _rewrite_header(p, _overlap), "overlap"),
    "gap": (_gap, "gap of 2 bytes after tensor"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_checkpoint_is_a_one_line_error_with_exit_3(trio, tmp_path, capsys, kind):
    corrupt, fragment = CORRUPTIONS[kind]
    corrupt(_first_shard(trio["post"]))
    assert main(_argv(trio, tmp_path / "out")) == 3
    captured = capsys.readouterr()
    prefix = f"paramdelta: error: post: {trio['post']}/model.safetensors: "
    assert captured.err.startswith(prefix)
    assert fragment in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_incompatible_checkpoints_exit_3(tmp_path, capsys):
    config = llama_config()
    paths = {}
    for seed, role in enumerate(("base", "post", "new_base")):
        state = random_state_dict(config, seed=seed)
        if role == "new_base":
            state["model.norm.weight"] = torch.ones(32, dtype=torch.bfloat16)
        paths[role] = save_checkpoint(tmp_path / role, state, config)
    assert main(_argv(paths, tmp_path / "out")) == 3
    assert capsys.readouterr().err == (
        "paramdelta: error: shape mismatch for tensor 'model.norm.weight':"
        " base [64], post [64], new base [32]\n"
    )
    assert not (tmp_path / "out").exists()


def test_pickle_checkpoint_exit_3(trio, tmp_path, capsys):
    (trio["base"] / "model.safetensors").unlink()
    (trio["base"] / "pytorch_model.bin").write_bytes(b"\x80\x04never unpickled")
    assert main(_argv(trio, tmp_path / "out")) == 3
    assert "only pickle weights (pytorch_model.bin)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha", "nan"], "paramdelta: error: --alpha must be a finite number, not nan\n"),
        (
            ["--shard-size", "huge"],
            "paramdelta: error: --shard-size: expected a size like 5GB or 512MiB, not 'huge'\n",
        ),
        (
            ["--device", "cuda"],
            "paramdelta: error: --device cuda: no CUDA device is available (use --device cpu)\n",
        ),
    ],
)
def test_usage_errors_exit_2(trio, tmp_path, capsys, extra, message):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(_argv(trio, tmp_path / "out", *extra)) == 2
    assert capsys.readouterr().err == message


def test_missing_input_directory_exit_2(trio, tmp_path, capsys):
    trio["post"] = tmp_path / "nope"
    assert main(_argv(trio, tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: --post '{tmp_path / 'nope'}' is neither a directory"
        " nor a Hub repo id like org/name[@revision]\n"
    )


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["merge", "--base", "x"])
    assert e.value.code == 2
    assert (
        "the following arguments are required: --post, --new-base"
        in capsys.readouterr().err
    )
