import fcntl
import hashlib
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from merging import several_reference, two_deltas
from paramdelta.cli import main
from paramdelta.hub.sources import HEAD_BYTES
from paramdelta.testing.checkpoints import (
    llama_config,
    load_tensors,
    make_trio,
    mismatched_tensors,
    random_state_dict,
    reference_merge,
    save_checkpoint,
)
from paramdelta.testing.seed import seed_trio


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
    assert (summary["dtype"], summary["requested_dtype"]) == ("bfloat16", "auto")
    assert summary["alpha"] == 1.0 and summary["device"] == "cpu"
    assert summary["peak_rss_bytes"] > 0 and summary["seconds"] >= 0
    assert summary["shards"] == ["model.safetensors"]
    assert summary["files"]["tokenizer_config.json"] == "post"
    assert summary["delta"]["overall"]["tensors"] == 21
    assert summary["delta"]["overall"]["nonfinite"]["output"] == 0
    assert [g["layer"] for g in summary["delta"]["layers"]] == [
        "embeddings",
        0,
        1,
        "other",
        "lm_head",
    ]
    assert {
        summary["files"][f] for f in ("README.md", "paramdelta.json", "paramdelta-delta.png")
    } == {"result"}
    assert captured.err == ""
    expected = reference_merge(*(load_tensors(trio[r]) for r in ("base", "post", "new_base")))
    assert mismatched_tensors(load_tensors(tmp_path / "out"), expected) == []


def test_merge_human_output(trio, tmp_path, capsys):
    assert main(_argv(trio, tmp_path / "out", "--alpha", "0.5")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"merged 21 tensors (208.62 KiB, bfloat16) into {tmp_path / 'out'} in ")
    # A duration with its unit, at a precision it deserves (never "in 0.0s").
    assert re.match(r"merged .* in (\d+ ms|under 1 ms|\d+\.\d s) \(", out)
    assert "files from the inputs: LICENSE (new_base), chat_template.jinja (post)," in out
    assert re.search(
        r"^delta: \|post - base\| 0\.65\d*, \|new base - base\| 0\.65\d*, cosine 0\.00\d\d$",
        out,
        re.M,
    )
    assert "written for this merge: README.md, paramdelta-delta.png, paramdelta.json\n" in out
    assert (
        "vocabulary: 256 rows in all three: 256 merged, 0 kept from the post model,"
        " 0 dropped from the new base (vocab policy `error`: sizes must match, or the merge stops)\n"
    ) in out


def test_the_output_directory_holds_its_card_and_lineage(trio, tmp_path, capsys):
    """`merge --output` alone makes a complete model folder: `publish` needs nothing else."""
    (trio["new_base"] / "README.md").write_text("---\nlicense: llama3.1\n---\n# a base\n")
    (trio["post"] / "README.md").write_text("---\nlicense: [not, a, string]\n---\n")
    assert main(_argv(trio, tmp_path / "out", "--dtype", "float16")) == 0
    record = json.loads((tmp_path / "out" / "paramdelta.json").read_text())
    by_role = {c["role"]: c for c in record["checkpoints"]}
    assert by_role["post"] == {
        "role": "post",
        "repo": None,
        "revision": None,
        "sha": None,
        "path": str(trio["post"]),
        "files": {},
    }
    assert (record["recipe"]["dtype"], record["recipe"]["requested_dtype"]) == (
        "float16",
        "float16",
    )
    assert record["recipe"]["config_changes"] == {"torch_dtype": "float16"}
    assert record["output"] == {
        "repo": None,
        "directory": "out",
        "architecture": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vision_config": False,
        },
        "tensors": 21,
        "bytes": 213632,
        "shards": ["model.safetensors"],
    }
    card = (tmp_path / "out" / "README.md").read_text()
    # A local input is named by its folder's name, with no link; the output by its own.
    assert str(tmp_path) not in card and "(None)" not in card
    assert "the post-training of\n`post` was transferred onto the newer base\n`new_base`" in card
    assert "| post | `post` (a local directory) | local | - |" in card
    assert "rounded once to the output dtype, float16" in card
    assert "--post post" in card and "--dtype float16" in card and "--output out\n" in card
    assert "\n# out\n" in card
    assert (
        "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'tokenizer = AutoTokenizer.from_pretrained("out")\n'
        'model = AutoModelForCausalLM.from_pretrained("out", dtype="auto")\n'
    ) in card
    assert "merged-model" not in card


def test_a_post_model_without_a_tokenizer_is_said_and_the_card_loads_none(trio, tmp_path, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (trio["post"] / name).unlink()
    assert main(_argv(trio, tmp_path / "out")) == 0
    assert capsys.readouterr().err == (
        "paramdelta: warning: the output has no tokenizer (post model post ships none);"
        " AutoTokenizer cannot load it\n"
    )
    card = (tmp_path / "out" / "README.md").read_text()
    use = card[card.index("## Use") : card.index("## Licence")]
    assert use == (
        "## Use\n\n"
        "The output has no tokenizer: the post model `post` ships none. Use the model\n"
        "with the tokenizer it was trained with.\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM\n\n"
        'model = AutoModelForCausalLM.from_pretrained("out", dtype="auto")\n'
        "```\n\n"
    )


def _cli(argv, *, terminal=False, **env):
    """paramdelta in a subprocess; ``terminal``: its stderr is a pseudo-terminal."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"} | env
    command = [sys.executable, "-m", "paramdelta", *argv]
    if not terminal:
        return subprocess.run(command, capture_output=True, text=True, env=env)
    reader, writer = pty.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=writer, text=True, env=env)
    os.close(writer)
    chunks = []
    while True:
        try:
            chunk = os.read(reader, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(reader)
    done.stderr = b"".join(chunks).decode()
    return done


@pytest.mark.slow  # paramdelta in a subprocess
def test_one_progress_bar_on_a_terminal_none_in_a_log(trio, tmp_path):
    shown = _cli(_argv(trio, tmp_path / "a"), terminal=True)
    assert shown.returncode == 0 and "merge: 100%" in shown.stderr
    assert shown.stderr.count("merge: 100%") == 1 and "\x1b[A" not in shown.stderr
    logged = _cli(_argv(trio, tmp_path / "b"))  # a second's merge: no periodic line is due
    assert logged.returncode == 0 and logged.stderr == ""
    as_json = _cli(_argv(trio, tmp_path / "c", "--format", "json"), terminal=True)
    assert as_json.returncode == 0 and as_json.stderr == ""
    quiet = _cli(_argv(trio, tmp_path / "d"), terminal=True, HF_HUB_DISABLE_PROGRESS_BARS="1")
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
    assert (
        capsys.readouterr().err
        == f"paramdelta: error: --post {tmp_path / 'nope'}: no such directory\n"
    )
    trio["post"] = "not a repo"
    assert main(_argv(trio, tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --post 'not a repo' is neither a directory"
        " nor a Hub repo id like org/name[@revision]\n"
    )


def test_a_local_path_with_a_typo_is_no_such_directory_not_a_hub_lookup(
    trio, tmp_path, fake_hub, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    fake_hub.clear_requests()
    trio["post"] = "./in/postt"
    assert main(_argv(trio, tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --post ./in/postt: no such directory (did you mean in/post?)\n"
    )
    # `in/postt` could be a Hub repo id: the Hub is asked, and the error says both.
    trio["post"] = "in/postt"
    assert main(_argv(trio, tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --post in/postt: no such directory (did you mean in/post?), and no Hub repo in/postt\n"
    )
    assert [r.path for r in fake_hub.requests] == ["/api/models/in/postt/revision/main"]


def test_a_full_disk_is_a_file_error_naming_the_file_exit_7(trio, tmp_path, monkeypatch, capsys):
    import errno

    from paramdelta.engine import writer

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.os, "pwrite", full)
    assert main(_argv(trio, tmp_path / "out")) == 7
    err = capsys.readouterr().err
    assert err.startswith(f"paramdelta: error: {tmp_path}/.out.partial-")
    assert err.endswith("/model.safetensors.incomplete: No space left on device\n")
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing half-written is left


def test_an_unreadable_input_is_a_file_error_exit_7(trio, tmp_path, monkeypatch, capsys):
    from paramdelta.engine import checkpoint

    real_open = checkpoint.os.open

    def denied(path, flags, *args):
        if str(path).endswith(".safetensors") and "post" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(checkpoint.os, "open", denied)
    assert main(_argv(trio, tmp_path / "out")) == 7
    err = capsys.readouterr().err
    assert err.startswith(f"paramdelta: error: {trio['post']}/model")
    assert err.endswith(".safetensors: Permission denied\n")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["merge", "--base", "x"])
    assert e.value.code == 2
    assert "the following arguments are required: --new-base" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["merge", "--new-base", "x", "--delta", "a/post", "a/base", "--output", "o"])
    assert e.value.code == 2
    assert "argument --delta: expected 3 arguments" in capsys.readouterr().err


# -- several deltas ------------------------------------------------------------------


def _delta_argv(five, out, *extra, weights=(0.7, -0.3)):
    return [
        "merge",
        "--delta", str(five["post"]), str(five["base"]), str(weights[0]),
        "--delta", str(five["post[1]"]), str(five["base[1]"]), str(weights[1]),
        "--new-base", str(five["new_base"]),
        "--output", str(out),
        *extra,
    ]  # fmt: skip


def test_two_deltas_are_summed_bit_for_bit_and_recorded(tmp_path, capsys):
    five = two_deltas(tmp_path / "in")
    assert main(_delta_argv(five, tmp_path / "out", "--format", "json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["formula"], summary["weights"]) == (
        "new_base + Σ wᵢ·(postᵢ - baseᵢ)",
        [0.7, -0.3],
    )
    assert "alpha" not in summary
    inputs = {role: load_tensors(path) for role, path in five.items()}
    expected = several_reference(inputs, [("post", "base", 0.7), ("post[1]", "base[1]", -0.3)])
    merged = load_tensors(tmp_path / "out")
    assert mismatched_tensors(merged, expected) == []  # 21 of 21 tensors bit-identical
    # Files other than weights from the first delta's post model; config from the new base.
    assert summary["files"]["tokenizer_config.json"] == "post"
    assert summary["files"]["config.json"] == "new_base"

    overall = summary["delta"]["overall"]
    assert [d["post_delta_norm"] for d in overall["deltas"]] == [
        overall["post_delta_norm"],
        pytest.approx(_norm(inputs, "post[1]", "base[1]"), rel=1e-5),
    ]
    assert (
        overall["delta_cosines"][0][0] == 1.0
        and overall["delta_cosines"][0][1] == (overall["delta_cosines"][1][0])
    )
    assert overall["nonfinite"] == dict.fromkeys(
        ("post", "base", "new_base", "output", "post[1]", "base[1]"), 0
    )

    record = json.loads((tmp_path / "out" / "paramdelta.json").read_text())
    assert [c["role"] for c in record["checkpoints"]] == [
        "base", "post", "base[1]", "post[1]", "new_base",
    ]  # fmt: skip
    assert {c["role"]: c["path"] for c in record["checkpoints"]} == {
        role: str(path) for role, path in five.items()
    }
    assert record["recipe"]["weights"] == [0.7, -0.3] and "alpha" not in record["recipe"]
    assert record["recipe"]["deltas"] == [
        {"post": "post", "base": "base", "weight": 0.7},
        {"post": "post[1]", "base": "base[1]", "weight": -0.3},
    ]
    card = (tmp_path / "out" / "README.md").read_text()
    # A local checkpoint is named by its folder's name (its path is one machine's).
    for role, folder in (("post[1]", "post"), ("base[1]", "base")):
        assert five[role].name == folder
        assert f"| {role} | `{folder}` (a local directory) | local | - |" in card
    assert "Θ_out = new base + 0.7·(post − base) − 0.3·(post[1] − base[1])" in card
    assert "  2. weight -0.3: post[1] `post` − base[1] `base`" in card
    assert "--delta post base -0.3 \\\n  --new-base" in card
    assert "| post − base and post[1] − base[1] |" in card


def _norm(inputs, post, base):
    flat = [(inputs[post][n].double() - inputs[base][n].double()).flatten() for n in inputs[post]]
    return float(torch.cat(flat).norm())


def test_the_card_reproduces_the_merge_it_describes(tmp_path, capsys):
    """The card's command, run again, gives the same bytes."""
    five = two_deltas(tmp_path / "in")
    assert main(_delta_argv(five, tmp_path / "a", "--dtype", "float16")) == 0
    card = (tmp_path / "a" / "README.md").read_text()
    command = card.split("```bash\n")[1].split("\n```")[0].replace("\\\n  ", " ")
    argv = command.split()[1:]
    argv[argv.index("--output") + 1] = str(tmp_path / "b")
    # A local checkpoint is named by its folder's name (the card is one machine's no more):
    # each is put back by its path, in the order the card gives them.
    paths = iter(str(five[role]) for role in ("post", "base", "post[1]", "base[1]", "new_base"))
    for i, option in enumerate(list(argv)):
        for k in {"--delta": (1, 2), "--new-base": (1,)}.get(option, ()):
            path = next(paths)
            assert argv[i + k] == Path(path).name
            argv[i + k] = path
    assert main(argv) == 0
    assert mismatched_tensors(load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")) == []


def test_one_delta_flag_is_the_one_delta_merge(trio, tmp_path, capsys):
    argv = [
        "merge", "--delta", str(trio["post"]), str(trio["base"]), "0.5",
        "--new-base", str(trio["new_base"]), "--output", str(tmp_path / "d"), "--format", "json",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["formula"], summary["alpha"]) == ("new_base + alpha * (post - base)", 0.5)
    assert main(_argv(trio, tmp_path / "a", "--alpha", "0.5")) == 0
    assert mismatched_tensors(load_tensors(tmp_path / "d"), load_tensors(tmp_path / "a")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda argv: argv.__setitem__(4, "heavy"),
            "--delta {post} {base} heavy: WEIGHT must be a finite number, not 'heavy'",
        ),
        (
            lambda argv: argv.__setitem__(4, "inf"),
            "--delta {post} {base} inf: WEIGHT must be a finite number, not 'inf'",
        ),
        (
            lambda argv: argv.extend(["--base", "x/y"]),
            "--delta cannot be combined with --base: give every delta as --delta POST BASE"
            " WEIGHT, or one delta as --base/--post/--alpha",
        ),
        (
            lambda argv: argv.extend(["--alpha", "1"]),  # even at its default value
            "--delta cannot be combined with --alpha: give every delta as --delta POST BASE"
            " WEIGHT, or one delta as --base/--post/--alpha",
        ),
        (
            lambda argv: argv.extend(["--post", "x/y", "--alpha", "2"]),
            "--delta cannot be combined with --post/--alpha: give every delta as --delta POST"
            " BASE WEIGHT, or one delta as --base/--post/--alpha",
        ),
    ],
)
def test_bad_deltas_are_usage_errors_exit_2(tmp_path, capsys, change, message):
    five = two_deltas(tmp_path / "in")
    argv = _delta_argv(five, tmp_path / "out")
    change(argv)
    assert main(argv) == 2
    expected = message.format(post=five["post"], base=five["base"])
    assert capsys.readouterr().err == f"paramdelta: error: {expected}\n"
    assert not (tmp_path / "out").exists()


def test_one_delta_form_needs_base_and_post(trio, tmp_path, capsys):
    argv = ["merge", "--post", str(trio["post"]), "--new-base", str(trio["new_base"])]
    assert main([*argv, "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --base required (or one --delta POST BASE WEIGHT per delta)\n"
    )


def test_a_delta_of_another_architecture_is_named(tmp_path, capsys):
    five = two_deltas(tmp_path / "in")
    config = llama_config()
    config["num_hidden_layers"] = 3
    save_checkpoint(tmp_path / "deep", random_state_dict(config, seed=3), config)
    five["base[1]"] = tmp_path / "deep"
    assert main(_delta_argv(five, tmp_path / "out")) == 3
    assert capsys.readouterr().err == (
        "paramdelta: error: config.json mismatch: num_hidden_layers is"
        " base[1] 3, post[1] 2, new base 2\n"
    )


# -- from and to the Hub (the session's loopback fake Hub) -----------------------------


def _hub_argv(repos, *extra):
    return [
        "merge",
        "--base",
        repos["base"],
        "--post",
        repos["post"],
        "--new-base",
        repos["new_base"],
        *extra,
    ]


@pytest.mark.parametrize("mode", [[], ["--stream"]], ids=["download", "stream"])
def test_merge_from_hub_is_bit_exact_with_the_local_merge(hub_trio, tmp_path, capsys, mode):
    assert main(_argv(hub_trio.local, tmp_path / "local")) == 0
    assert main(_hub_argv(hub_trio.repos, "--output", str(tmp_path / "remote"), *mode)) == 0
    assert (
        mismatched_tensors(load_tensors(tmp_path / "remote"), load_tensors(tmp_path / "local"))
        == []
    )
    for name in ("config.json", "tokenizer_config.json", "model.safetensors"):
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_stream_mode_stores_no_inputs(hub_trio, tmp_path, monkeypatch):
    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    assert main(_hub_argv(hub_trio.repos, "--output", str(tmp_path / "out"), "--stream")) == 0
    assert not list(hf_home.rglob("*.safetensors"))


def test_download_mode_fills_the_hf_cache_once(hub_trio, fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(_hub_argv(hub_trio.repos, "--output", str(tmp_path / "a"))) == 0
    cached = {p.name for p in (tmp_path / "cache").rglob("*.safetensors")}
    assert len(cached) == len(
        {p.name for d in hub_trio.local.values() for p in d.glob("*.safetensors")}
    )
    blobs = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("blobs/*")}
    fake_hub.clear_requests()
    assert main(_hub_argv(hub_trio.repos, "--output", str(tmp_path / "b"))) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("blobs/*")} == blobs
    shards = [p for d in hub_trio.local.values() for p in d.glob("*.safetensors")]
    assert fake_hub.weight_bytes_served() == sum(min(p.stat().st_size, HEAD_BYTES) for p in shards)


def test_revisions_are_pinned_before_reading(hub_trio, fake_hub, tmp_path, monkeypatch):
    """A push to a source repo mid-merge does not leak into the result."""
    from paramdelta.hub.client import Hub

    real = Hub.read_into
    pushed = []
    shard = next(hub_trio.local["new_base"].glob("*.safetensors"))

    def push_then_read(self, repo_id, sha, path, offset, view):
        if not pushed:
            pushed.append(
                fake_hub.commit(
                    hub_trio.repos["new_base"],
                    {shard.name: (hub_trio.local["post"] / shard.name).read_bytes()},
                )
            )
        real(self, repo_id, sha, path, offset, view)

    monkeypatch.setattr(Hub, "read_into", push_then_read)
    assert main(_hub_argv(hub_trio.repos, "--output", str(tmp_path / "out"), "--stream")) == 0
    assert pushed and fake_hub.head(hub_trio.repos["new_base"]) == pushed[0]
    expected = reference_merge(
        *(load_tensors(hub_trio.local[r]) for r in ("base", "post", "new_base"))
    )
    assert mismatched_tensors(load_tensors(tmp_path / "out"), expected) == []


def test_preflight_fails_before_any_weight_bytes(fake_hub, tmp_path, capsys):
    from paramdelta.testing.seed import publish_folder

    config = llama_config()
    for seed, role in enumerate(("base", "post", "new_base")):
        state = random_state_dict(config, seed=seed)
        if role == "new_base":
            state["model.norm.weight"] = torch.ones(32, dtype=torch.bfloat16)
        publish_folder(fake_hub, f"org/{role}", save_checkpoint(tmp_path / role, state, config))
    fake_hub.clear_requests()
    repos = {r: f"org/{r}" for r in ("base", "post", "new_base")}
    assert main(_hub_argv(repos, "--output", str(tmp_path / "out"))) == 3
    assert capsys.readouterr().err == (
        "paramdelta: error: shape mismatch for tensor 'model.norm.weight':"
        " base [64], post [64], new base [32]\n"
    )
    asked = [
        (r.path.split("/")[2], r.range)
        for r in fake_hub.requests
        if r.server == "hub" and r.method == "GET" and r.path.endswith(".safetensors")
    ]
    sizes = {role: (tmp_path / role / "model.safetensors").stat().st_size for role in repos}
    # Each header read remotely, in one request for its first 100 kB; nothing more.
    assert sorted(asked) == sorted(
        (role, f"bytes=0-{min(size, HEAD_BYTES) - 1}") for role, size in sizes.items()
    )
    assert fake_hub.weight_bytes_served() == sum(min(s, HEAD_BYTES) for s in sizes.values())
    assert not (tmp_path / "out").exists()


def test_merge_and_push_makes_one_commit(hub_trio, fake_hub, tmp_path, capsys):
    before = len(fake_hub.commits(hub_trio.repos["base"]))
    argv = _hub_argv(
        hub_trio.repos, "--push-to", "me/merged", "--shard-size", "60KB", "--format", "json"
    )
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    commits = fake_hub.commits("me/merged")
    assert len(commits) == 2  # the repo's initial .gitattributes commit, then ours
    assert summary["published"]["commit_sha"] == commits[0].oid == fake_hub.head("me/merged")
    files = set(fake_hub.list_files("me/merged")) - {".gitattributes"}
    assert files == set(summary["files"])
    assert "model.safetensors.index.json" in files and len(summary["shards"]) > 1
    with_index = {}
    for shard in summary["shards"]:
        (tmp_path / "dl").mkdir(exist_ok=True)
        (tmp_path / "dl" / shard).write_bytes(fake_hub.read_file("me/merged", shard))
        with_index.update(load_tensors(tmp_path / "dl"))
    expected = reference_merge(
        *(load_tensors(hub_trio.local[r]) for r in ("base", "post", "new_base"))
    )
    assert mismatched_tensors(with_index, expected) == []
    assert len(fake_hub.commits(hub_trio.repos["base"])) == before


def _content_id(data: bytes, lfs: bool) -> str:
    """The id the Hub lists: an LFS file's sha256, else the git blob id (computed here)."""
    if lfs:
        return f"sha256:{hashlib.sha256(data).hexdigest()}"
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data)  # noqa: S324 - git's id, not security
    return f"blob:{blob.hexdigest()}"


def test_push_to_commits_the_card_and_lineage_with_the_weights(
    fake_hub, hub_token, tmp_path, monkeypatch, capsys
):
    """merge --push-to is a complete publish: licence, attribution, record; `plan` reads it."""
    monkeypatch.setenv("HF_TOKEN", hub_token)
    repos = {
        "base": "meta-llama/Meta-Llama-3-8B",
        "post": "meta-llama/Meta-Llama-3-8B-Instruct",
        "new_base": "meta-llama/Llama-3.1-8B",
    }
    licences = {"base": "llama3", "post": "llama3", "new_base": "llama3.1"}
    shas = seed_trio(fake_hub, tmp_path / "trio", repos, licenses=licences, max_shard_size=60_000)
    out = "me/Llama-3.1-8B-Instruct-ParamDelta"
    assert main(_hub_argv(repos, "--push-to", out)) == 0
    capsys.readouterr()
    (ours, _) = fake_hub.commits(out)
    assert set(ours.changed) == {
        "README.md", "paramdelta.json", "paramdelta-delta.png", "model.safetensors", "config.json",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
        "LICENSE",
    }  # fmt: skip

    card = ModelCard(fake_hub.read_file(out, "README.md").decode())
    assert card.data.license == "llama3.1"
    assert card.data.base_model == [repos["new_base"], repos["post"], repos["base"]]
    assert card.text.rstrip().endswith("Built with Llama.")

    record = json.loads(fake_hub.read_file(out, "paramdelta.json"))
    assert (record["target"], record["output"]["repo"]) == (None, out)
    for checkpoint in record["checkpoints"]:
        repo = repos[checkpoint["role"]]
        assert checkpoint["sha"] == shas[checkpoint["role"]]
        assert checkpoint["license"] == licences[checkpoint["role"]]
        for path, cid in checkpoint["files"].items():
            data = fake_hub.read_file(repo, path)
            assert cid == _content_id(data, path.endswith(".safetensors")), path
    by_role = {c["role"]: sorted(c["files"]) for c in record["checkpoints"]}
    shards = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert by_role["base"] == sorted(["config.json", "model.safetensors.index.json", *shards])
    assert "chat_template.jinja" in by_role["post"] and "LICENSE" in by_role["new_base"]
    assert "README.md" in record["recipe"]["skipped_files"]

    # A watchlist pointed at this repo finds the record and nothing to do.
    watchlist = tmp_path / "w.yaml"
    watchlist.write_text(
        f"targets:\n  - {{name: t, base: {repos['base']}, post: {repos['post']},"
        f" new_base: {repos['new_base']}, output: {out}}}\n"
    )
    assert main(["plan", "--watchlist", str(watchlist)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 of 1 targets pending"


def test_push_as_pull_request_leaves_main_alone(hub_trio, fake_hub, capsys):
    fake_hub.create_repo("me/merged")
    main_before = fake_hub.head("me/merged")
    assert main(_hub_argv(hub_trio.repos, "--push-to", "me/merged", "--pr")) == 0
    out = capsys.readouterr().out
    (pr,) = fake_hub.pull_requests("me/merged")
    assert f"opened pull request {fake_hub.url}/me/merged/discussions/{pr.num}" in out
    assert fake_hub.head("me/merged") == main_before
    assert "config.json" in fake_hub.list_files("me/merged", pr.ref)


@pytest.fixture
def ctrl_c_during_upload(monkeypatch):
    """Ctrl-C while the first shard uploads (as KeyboardInterrupt reaches the main thread)."""
    from paramdelta.hub.client import Hub

    def interrupted(self, repo_id, operations, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Hub, "preupload", interrupted)


def test_ctrl_c_during_push_leaves_no_repo_it_created(
    hub_trio, fake_hub, ctrl_c_during_upload, capsys
):
    assert main(_hub_argv(hub_trio.repos, "--push-to", "me/merged")) == 130
    assert "interrupted (SIGINT)" in capsys.readouterr().err
    assert not fake_hub.repo_exists("me/merged")


def test_ctrl_c_during_push_leaves_a_repo_that_was_there_untouched(
    hub_trio, fake_hub, ctrl_c_during_upload
):
    fake_hub.create_repo("me/merged")
    head = fake_hub.head("me/merged")
    assert main(_hub_argv(hub_trio.repos, "--push-to", "me/merged")) == 130
    assert fake_hub.repo_exists("me/merged") and fake_hub.head("me/merged") == head


def test_a_repo_created_meanwhile_by_someone_else_is_not_deleted(hub_trio, fake_hub, monkeypatch):
    """Only a repo that still holds nothing but the initial commit is deleted."""
    from paramdelta.hub.client import Hub

    def someone_commits_then_ctrl_c(self, repo_id, operations, **kwargs):
        fake_hub.commit(repo_id, {"NOTES.md": b"mine"})
        raise KeyboardInterrupt

    monkeypatch.setattr(Hub, "preupload", someone_commits_then_ctrl_c)
    assert main(_hub_argv(hub_trio.repos, "--push-to", "me/merged")) == 130
    assert fake_hub.read_file("me/merged", "NOTES.md") == b"mine"


def test_a_concurrent_change_to_the_output_is_exit_5(hub_trio, fake_hub, capsys, monkeypatch):
    from paramdelta.hub.publisher import Publisher

    fake_hub.create_repo("me/merged")
    real_commit = Publisher.commit

    def someone_pushes_first(self, directory, extra_files=None):
        fake_hub.commit("me/merged", {"NOTES.md": b"mine"})
        return real_commit(self, directory, extra_files)

    monkeypatch.setattr(Publisher, "commit", someone_pushes_first)
    head_files = None
    assert main(_hub_argv(hub_trio.repos, "--push-to", "me/merged")) == 5
    head_files = fake_hub.list_files("me/merged")
    assert head_files == [".gitattributes", "NOTES.md"]
    assert capsys.readouterr().err.startswith(
        "paramdelta: error: output repo me/merged changed during publish (main is no longer at "
    )


def test_a_failure_before_the_commit_changes_nothing_and_a_rerun_completes(
    hub_trio, fake_hub, capsys
):
    argv = _hub_argv(hub_trio.repos, "--push-to", "me/merged", "--shard-size", "60KB")
    fake_hub.faults.add(method="POST", path="/api/models/me/merged/commit/", status=500, times=1)
    assert main(argv) == 4
    assert "me/merged: HTTP 500" in capsys.readouterr().err
    assert not fake_hub.repo_exists("me/merged")  # the run created it: it goes again
    stored = fake_hub.xet_stored_bytes
    assert main(argv) == 0
    assert fake_hub.xet_stored_bytes == stored  # every shard was already stored: nothing re-sent
    assert fake_hub.xet_uploads >= 4 and fake_hub.lfs_bytes_uploaded == 0
    assert "model-00001-of-00004.safetensors" in fake_hub.list_files("me/merged")


def test_transient_hub_errors_on_reads_are_retried(hub_trio, fake_hub, tmp_path, monkeypatch):
    monkeypatch.setattr("paramdelta.hub.client.Hub.sleep", lambda self, s: None, raising=False)
    monkeypatch.setattr("time.sleep", lambda s: None)
    fake_hub.faults.add(method="GET", path="/api/models/org/post", status=503, times=2)
    fake_hub.faults.add(
        method="GET",
        path=".safetensors",
        server="blobs",
        status=429,
        headers={"Retry-After": "0"},
        times=3,
    )
    assert main(_hub_argv(hub_trio.repos, "--output", str(tmp_path / "out"), "--stream")) == 0
    statuses = [r.status for r in fake_hub.requests]
    assert statuses.count(503) == 2 and statuses.count(429) == 3


def test_the_token_never_appears_in_any_output(
    hub_trio, fake_hub, hub_token, tmp_path, capfd, monkeypatch
):
    token_file = tmp_path / "token"
    token_file.write_text(hub_token + "\n")
    runs = [
        _hub_argv(
            hub_trio.repos,
            "--output",
            str(tmp_path / "a"),
            "--token-file",
            str(token_file),
            "--format",
            "json",
        ),
        _hub_argv(hub_trio.repos, "--push-to", "me/x", "--token-file", str(token_file)),
        _hub_argv(
            {**hub_trio.repos, "post": "org/missing"},
            "--output",
            str(tmp_path / "b"),
            "--token-file",
            str(token_file),
        ),
    ]
    codes = [main(argv) for argv in runs]
    assert codes == [0, 0, 4]
    monkeypatch.setenv("HF_TOKEN", hub_token)
    monkeypatch.setenv("PARAMDELTA_HUB_RETRIES", "0")
    fake_hub.faults.add(
        method="POST", path="/api/repos/create", status=500, body=f"echo {hub_token}"
    )
    assert main(_hub_argv(hub_trio.repos, "--push-to", "me/y")) == 4
    captured = capfd.readouterr()
    assert hub_token not in captured.out + captured.err
    assert "***" in captured.err


def test_config_and_generation_config_agree_on_token_ids_in_the_output(trio, tmp_path, capsys):
    """An instruct model stops on more tokens than its base: config.json follows it."""
    generation = {"bos_token_id": 1, "eos_token_id": [2, 9], "do_sample": True}
    (trio["post"] / "generation_config.json").write_text(json.dumps(generation))
    assert main(_argv(trio, tmp_path / "out")) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    shipped = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert shipped == generation
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, [2, 9])
    assert (
        config["hidden_size"]
        == json.loads((trio["new_base"] / "config.json").read_text())["hidden_size"]
    )
    record = json.loads((tmp_path / "out" / "paramdelta.json").read_text())
    assert record["recipe"]["config_changes"] == {"eos_token_id": [2, 9]}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`config.json` is the new base's, with `eos_token_id` = `[2, 9]`:" in card


@pytest.fixture
def mount_point(tmp_path, monkeypatch):
    """An empty directory that behaves as a mount point (a Docker volume as --output):
    os.path.ismount says so, and the kernel refuses to rename it or to replace it."""
    import errno
    from pathlib import Path

    point = tmp_path / "volume"
    point.mkdir()
    real_ismount, real_rename, real_os_replace = os.path.ismount, os.rename, os.replace

    def busy(src, dst):
        if point in (Path(src).absolute(), Path(dst).absolute()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))

    def rename(src, dst, **kwargs):
        busy(src, dst)
        return real_rename(src, dst, **kwargs)

    def replace(src, dst, **kwargs):
        busy(src, dst)
        return real_os_replace(src, dst, **kwargs)

    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == point or real_ismount(p))
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return point


def _a_finished_output(out):
    from paramdelta.pipeline.publish import read_record

    names = sorted(p.name for p in out.iterdir())
    assert ".paramdelta-output" in names and not [n for n in names if ".partial-" in n]
    assert read_record(out)["output"]["shards"] == ["model.safetensors"]  # `publish` takes it
    return names


def test_an_empty_mount_point_as_output_is_filled_in_place(trio, tmp_path, mount_point, capsys):
    assert main(_argv(trio, mount_point)) == 0
    assert f"into {mount_point} in " in capsys.readouterr().out
    names = _a_finished_output(mount_point)
    assert {"README.md", "paramdelta.json", "model.safetensors", "config.json"} <= set(names)
    expected = reference_merge(*(load_tensors(trio[r]) for r in ("base", "post", "new_base")))
    assert mismatched_tensors(load_tensors(mount_point), expected) == []

    # Again, into the same mount point: only --overwrite replaces it, in place too.
    assert main(_argv(trio, mount_point)) == 2
    assert "directory is not empty (pass --overwrite to replace it)" in capsys.readouterr().err
    assert main(_argv(trio, mount_point, "--alpha", "0.5", "--overwrite")) == 0
    assert _a_finished_output(mount_point) == names
    assert json.loads((mount_point / "paramdelta.json").read_text())["recipe"]["alpha"] == 0.5


def test_a_mount_point_never_looks_finished_before_it_is(trio, mount_point, monkeypatch, capsys):
    """The marker goes in first and the record last: interrupted before the record, the
    folder is no output `publish` takes, and a re-run (with --overwrite) finishes it."""
    from pathlib import Path

    from paramdelta.errors import UsageError
    from paramdelta.pipeline.publish import read_record

    moved = []
    replace = os.replace

    def interrupted_before_the_record(src, dst, **kwargs):
        if Path(dst).name == "paramdelta.json":
            raise KeyboardInterrupt
        moved.append(Path(dst).name)
        return replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", interrupted_before_the_record)
    assert main(_argv(trio, mount_point)) == 130
    assert moved[0] == ".paramdelta-output" and "model.safetensors" in moved
    assert not (mount_point / "paramdelta.json").exists()
    assert not [p for p in mount_point.iterdir() if ".partial-" in p.name]
    with pytest.raises(UsageError, match=r"no paramdelta\.json"):
        read_record(mount_point)

    monkeypatch.setattr(os, "replace", replace)
    assert main(_argv(trio, mount_point, "--overwrite")) == 0
    _a_finished_output(mount_point)


def _unshare_works():
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.slow  # a subprocess in its own mount namespace
@pytest.mark.skipif(not _unshare_works(), reason="no unprivileged mount namespaces here")
def test_merge_into_a_real_mount_point(trio, tmp_path):
    """A tmpfs mounted on an empty --output (the kernel's EBUSY, not a simulation)."""
    point = tmp_path / "volume"
    point.mkdir()
    argv = " ".join(_argv(trio, point)[1:])
    script = (
        f"mount -t tmpfs none {point} && {sys.executable} -m paramdelta merge {argv} >/dev/null"
        f" && ls -A {point}"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    names = done.stdout.split()
    assert {".paramdelta-output", "paramdelta.json", "README.md", "model.safetensors"} <= set(names)
    assert not [n for n in names if ".partial-" in n or ".upload-" in n]


def test_push_with_a_local_copy_on_a_mount_point(hub_trio, fake_hub, mount_point, capsys):
    argv = _hub_argv(hub_trio.repos, "--push-to", "me/merged", "--output", str(mount_point))
    assert main(argv) == 0
    names = _a_finished_output(mount_point)
    assert not [n for n in names if n.startswith(".paramdelta-upload-")]  # staging removed
    assert fake_hub.read_file("me/merged", "model.safetensors") == (
        (mount_point / "model.safetensors").read_bytes()
    )


def test_a_missing_delta_checkpoint_names_its_delta(tmp_path, capsys):
    five = two_deltas(tmp_path / "in")
    five["base[1]"] = tmp_path / "nope"
    assert main(_delta_argv(five, tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: --delta 2 BASE {tmp_path / 'nope'}: no such directory\n"
    )


def test_an_adapter_as_the_first_delta_is_recorded_and_written_out(tmp_path, capsys):
    from paramdelta.testing.adapters import adapter_config, lora_tensors, write_adapter

    five = two_deltas(tmp_path / "in")
    shapes = {name: t.shape for name, t in load_tensors(five["base"]).items()}
    five["post"] = write_adapter(tmp_path / "lora", lora_tensors(shapes), adapter_config(4, 8))
    assert main(_delta_argv(five, tmp_path / "out")) == 0
    record = json.loads((tmp_path / "out" / "paramdelta.json").read_text())
    assert (record["recipe"]["adapter"]["scale"], record["recipe"]["weights"]) == (2.0, [0.7, -0.3])
    post = next(c for c in record["checkpoints"] if c["role"] == "post")
    assert post["path"] == str(tmp_path / "lora")
    # The adapter ships no tokenizer: the first delta's base gives it.
    assert record["recipe"]["file_donors"]["tokenizer_config.json"] == "base"
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "- The post model is a LoRA adapter on the base: `post - base = scale * lora_B @ lora_A`"
        " on 6 tensors, scale = lora_alpha / r = 8 / 4 = 2.0; its delta is zero on every other"
        " tensor\n" in card
    )
    assert "  1. weight 0.7: post `lora` − base `base`" in card
