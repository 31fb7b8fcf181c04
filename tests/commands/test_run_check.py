"""`run` makes the pre-publish check before it commits: its numbers land in card and lineage,
and a failing check publishes nothing."""

import json
import math
import re
import struct

import pytest

from paramdelta.cli import main
from paramdelta.hub.sources import HEAD_BYTES
from paramdelta.pipeline import check as pre_publish
from paramdelta.rendering import chart
from paramdelta.reporting.results import load_results
from paramdelta.testing.checkpoints import load_tensors, make_trio, save_checkpoint
from paramdelta.testing.seed import publish_folder

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # transformers: the pre-publish check

REPOS = {"base": "org/base", "post": "org/post", "new_base": "org/new-base"}


def _watchlist(tmp_path, **options):
    extra = "".join(f"    {key}: {value}\n" for key, value in options.items())
    path = tmp_path / "watchlist.yaml"
    path.write_text(
        "targets:\n  - name: t\n    base: org/base\n    post: org/post\n"
        f"    new_base: org/new-base\n    output: me/out\n{extra}"
    )
    return path


@pytest.fixture
def trio_dirs(fake_hub, hub_token, tmp_path, monkeypatch):
    """The tiny trio on disk; `seed()` publishes it (after a test has changed it)."""
    monkeypatch.setenv("HF_TOKEN", hub_token)
    local = make_trio(tmp_path / "trio")

    def seed():
        for role, repo in REPOS.items():
            publish_folder(fake_hub, repo, local[role])

    return local, seed


def _run(tmp_path, *args, **options):
    results = tmp_path / "results.json"
    argv = ["run", "--watchlist", str(_watchlist(tmp_path, **options)), "--result-file"]
    code = main([*argv, str(results), *args])
    return code, load_results([results])[0]


def _published(fake_hub):
    record = json.loads(fake_hub.read_file("me/out", "paramdelta.json"))
    card = fake_hub.read_file("me/out", "README.md").decode()
    return record, card


def test_a_proper_merge_passes_and_its_numbers_land_in_card_and_lineage(
    trio_dirs, fake_hub, tmp_path
):
    trio_dirs[1]()
    code, result = _run(tmp_path)
    assert (code, result.status) == (0, "published")
    record, card = _published(fake_hub)

    check = record["check"]
    assert check["status"] == "passed" and check["device"] == "cpu"
    assert [s["step"] for s in check["steps"] if s["passed"]] == [
        "tokenizer",
        "chat_template",
        "load",
        "logits",
        "generation",
        "perplexity",
    ]
    ppl = check["perplexity"]
    assert ppl["passed"] and ppl["factor"] == 3.0 and ppl["ratio"] < 1.1
    assert check["thresholds"] == {
        "perplexity_factor": 3.0,
        "max_new_tokens": 16,
        "max_text_tokens": 512,
    }
    assert result.check == check  # the result file has the same numbers
    assert "## Pre-publish check" in card
    assert f"`cpu` and used it ({check['seconds']} s): **passed**." in card
    assert f"| perplexity | pass | {check['steps'][-1]['detail']} |" in card
    assert f"merged **{ppl['merged']}**, post-trained {ppl['post']}," in card

    delta = record["delta"]
    assert delta["overall"]["tensors"] == 21
    assert delta["overall"]["nonfinite"] == {"post": 0, "base": 0, "new_base": 0, "output": 0}
    assert [g["layer"] for g in delta["layers"]] == ["embeddings", 0, 1, "other", "lm_head"]
    overall = delta["overall"]
    assert (
        f"| **all** | 21 | {overall['post_delta_norm']:.4g} | {overall['base_update_norm']:.4g}"
        f" | {overall['cosine']:.3g} | 0 |"
    ) in card
    assert "| layer 1 | 9 |" in card
    assert f"]({chart.FILENAME})" in card

    png = fake_hub.read_file("me/out", chart.FILENAME)
    assert png == chart.delta_chart(record)  # drawn from the record committed beside it
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (1000, 560)


def _no_repo_left(fake_hub):
    """A run that publishes nothing leaves no repo it created (docs/publishing.md)."""
    assert not fake_hub.repo_exists("me/out")


def test_a_huge_alpha_is_blocked_with_its_numbers(trio_dirs, fake_hub, tmp_path, capsys):
    trio_dirs[1]()
    code, result = _run(tmp_path, alpha=1000)
    assert (code, result.status, result.exit_code) == (9, "check-failed", 9)
    out = capsys.readouterr().out
    assert re.fullmatch(
        r"t: check-failed \(pre-publish check failed: perplexity: merged \S+ is over 3 x 2\d\d\.\d,"
        r" the better of post 2\d\d\.\d, new base 2\d\d\.\d\)\n",
        out,
    )
    assert result.error == out[len("t: check-failed (") : -2]
    assert result.check["perplexity"]["passed"] is False
    assert result.check["perplexity"]["ratio"] is None or result.check["perplexity"]["ratio"] > 3
    _no_repo_left(fake_hub)


def test_a_chat_template_that_does_not_render_blocks_the_publish(trio_dirs, fake_hub, tmp_path):
    local, seed = trio_dirs
    (local["post"] / "chat_template.jinja").write_text("{{ raise_exception('no chat here') }}")
    seed()
    code, result = _run(tmp_path)
    assert (code, result.status) == (9, "check-failed")
    assert result.error == (
        "pre-publish check failed: chat template renders: does not render: TemplateError:"
        " no chat here"
    )
    assert [s["step"] for s in result.check["steps"] if not s["passed"]] == ["chat_template"]
    _no_repo_left(fake_hub)


def test_a_failed_check_leaves_an_output_repo_that_was_there_as_it_was(
    trio_dirs, fake_hub, tmp_path
):
    trio_dirs[1]()
    fake_hub.create_repo("me/out")
    fake_hub.commit("me/out", {"NOTES.md": b"mine"})
    head = fake_hub.head("me/out")
    code, result = _run(tmp_path, alpha=1000)
    assert (code, result.status) == (9, "check-failed")
    assert fake_hub.head("me/out") == head and fake_hub.read_file("me/out", "NOTES.md") == b"mine"


def test_a_post_model_without_a_tokenizer_blocks_the_publish_in_plain_words(
    trio_dirs, fake_hub, tmp_path
):
    local, seed = trio_dirs
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (local["post"] / name).unlink()
    seed()
    code, result = _run(tmp_path)
    assert (code, result.status) == (9, "check-failed")
    assert result.error == (
        "pre-publish check failed: tokenizer loads: the output has no tokenizer"
        " (post model org/post ships none)"
    )
    _no_repo_left(fake_hub)


def test_a_merge_whose_output_holds_nan_publishes_nothing(trio_dirs, fake_hub, tmp_path):
    local, seed = trio_dirs
    post = load_tensors(local["post"])
    post["model.layers.0.mlp.down_proj.weight"][3, 4] = math.nan
    config = json.loads((local["post"] / "config.json").read_text())
    save_checkpoint(local["post"], post, config)
    seed()
    code, result = _run(tmp_path)
    assert (code, result.status, result.exit_code) == (3, "failed", 3)
    assert result.error.startswith(
        "merged tensor 'model.layers.0.mlp.down_proj.weight' is not finite: 1 NaN and 0 Inf"
    )
    assert result.error.endswith("(the inputs hold them there: post 1 NaN/0 Inf)")
    _no_repo_left(fake_hub)


def test_auto_says_why_it_did_not_check_in_log_lineage_and_card(
    trio_dirs, fake_hub, tmp_path, monkeypatch, capsys
):
    trio_dirs[1]()
    monkeypatch.setattr(pre_publish, "free_memory", lambda device: 1000)
    code, result = _run(tmp_path)
    assert (code, result.status) == (0, "published")
    reason = "214 kB model, 1.0 kB free on cpu"
    assert capsys.readouterr().out.splitlines()[1] == (
        f"  pre-publish check: not checked: {reason}"
    )
    record, card = _published(fake_hub)
    assert record["check"] == {
        "status": "not-checked",
        "reason": reason,
        "device": None,
        "seconds": 0.0,
        "steps": [],
        "generation": [],
        "perplexity": None,
        "thresholds": {},
    }
    assert f"Not checked: {reason}." in card
    assert "## Delta report" in card  # measured in the merge pass all the same


def test_check_on_fails_before_merging_when_it_cannot_run(
    trio_dirs, fake_hub, tmp_path, monkeypatch
):
    trio_dirs[1]()
    monkeypatch.setattr(pre_publish, "transformers_installed", lambda: False)
    fake_hub.clear_requests()
    code, result = _run(tmp_path, check="on")
    assert (code, result.status) == (9, "check-failed")
    assert result.error == (
        "pre-publish check cannot run (check: on): transformers is not installed"
        " (pip install 'paramdelta-bot[check]')"
    )
    # headers only (the first HEAD_BYTES of each input, as `plan` reads them): nothing merged
    assert fake_hub.weight_bytes_served() == 3 * HEAD_BYTES
    assert not fake_hub.repo_exists("me/out")


def test_the_watchlist_turns_it_off_and_the_command_line_wins(trio_dirs, fake_hub, tmp_path):
    trio_dirs[1]()
    assert _run(tmp_path, "--check", "on", check="off")[1].check["status"] == "passed"
    fake_hub.commit("org/new-base", {"NOTES.md": b"a new commit, so the target is pending"})
    code, result = _run(tmp_path, check="off", alpha=0.5)
    assert (code, result.check["status"], result.check["reason"]) == (
        0,
        "not-checked",
        "the check is off",
    )
    assert "Not checked: the check is off." in _published(fake_hub)[1]


def test_a_perplexity_factor_in_the_watchlist_sets_the_threshold(trio_dirs, fake_hub, tmp_path):
    trio_dirs[1]()
    code, result = _run(tmp_path, perplexity_factor=0.5)
    assert (code, result.status) == (9, "check-failed")
    assert result.check["perplexity"]["factor"] == 0.5
    assert " is over 0.5 x " in result.error


def test_a_dry_run_card_says_nothing_was_checked(trio_dirs, fake_hub, tmp_path):
    trio_dirs[1]()
    code, result = _run(tmp_path, "--dry-run", "--workdir", str(tmp_path / "dry"))
    assert (code, result.status) == (0, "dry-run")
    card = (tmp_path / "dry" / "t" / "README.md").read_text()
    assert "## Pre-publish check\n\nNot checked: dry run, nothing was merged.\n" in card
    assert "## Delta report" not in card  # measured by a merge, and nothing was merged
