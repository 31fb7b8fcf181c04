"""`paramdelta check DIR|org/name[@rev]`: exit 0 when it passes, 8 with one line when not."""

import contextlib
import io
import json

import pytest

from merging import merge
from paramdelta.cli import main
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.pipeline import check as pre_publish
from paramdelta.rendering.card import render_card
from paramdelta.testing.checkpoints import make_trio

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # transformers: the pre-publish check


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    local = make_trio(root / "in")
    sources = {role: LocalSource(path) for role, path in local.items()}
    merge(sources, root / "merged")
    merge(sources, root / "broken", alpha=100.0)
    return local, root / "merged", root / "broken"


def test_a_good_checkpoint_passes(trio, capsys):
    local, merged, _ = trio
    argv = [
        "check",
        str(merged),
        "--post",
        str(local["post"]),
        "--new-base",
        str(local["new_base"]),
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "pass  tokenizer loads: TokenizersBackend",
        "pass  chat template renders: 4 messages, 209 characters",
        "pass  model loads: LlamaForCausalLM, bfloat16",
        "pass  logits are finite: on 7 texts",
        "pass  greedy generation gives text: 4 of 4 prompts",
    ]
    assert lines[5].startswith("pass  perplexity: merged 2")
    assert lines[6] == "      'Write one sentence about the sea.' -> 'ELSZahov}¤«²¹ÀÇÎ'"
    assert lines[-1].startswith("pre-publish check passed in ")


def test_a_failing_checkpoint_exits_8_with_one_line(trio, capsys):
    local, _, broken = trio
    argv = ["check", str(broken), "--post", str(local["post"]), "--format", "json"]
    assert main(argv) == 9
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["status"] == "failed"
    assert set(report["perplexity"]) >= {"merged", "post", "better", "ratio", "factor"}
    assert "new_base" not in report["perplexity"]  # only the post model was given
    (line,) = captured.err.splitlines()
    assert line.startswith("paramdelta: error: pre-publish check failed: perplexity: merged ")
    assert line.endswith(", the better of post " + f"{report['perplexity']['post']:.4g}")


def test_a_published_merge_is_checked_against_the_models_its_lineage_names(
    hub_trio, fake_hub, tmp_path, capsys
):
    (tmp_path / "watchlist.yaml").write_text(
        "targets:\n  - name: t\n    base: org/base\n    post: org/post\n"
        "    new_base: org/new-base\n    output: me/out\n    check: off\n"
    )
    assert main(["run", "--watchlist", str(tmp_path / "watchlist.yaml")]) == 0
    capsys.readouterr()
    fake_hub.clear_requests()
    assert main(["check", "me/out", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "passed"
    assert report["perplexity"]["post"] and report["perplexity"]["new_base"]
    # the references were read by ranges from the commits paramdelta.json pins
    record = json.loads(fake_hub.read_file("me/out", "paramdelta.json"))
    pins = {c["role"]: c["sha"] for c in record["checkpoints"]}
    read = {
        r.path.split("/resolve/")[1].split("/")[0]
        for r in fake_hub.requests
        if "/resolve/" in r.path and not r.path.startswith("/me/out")
    }
    assert read == {pins["post"], pins["new_base"]}


def test_a_checkpoint_with_no_references_is_measured_not_compared(trio, capsys):
    _, merged, _ = trio
    assert main(["check", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "pass  perplexity: 2" in out
    assert ", not compared (no post model or new base given)" in out


def test_without_transformers_the_check_cannot_run(trio, monkeypatch, capsys):
    monkeypatch.setattr(pre_publish, "transformers_installed", lambda: False)
    assert main(["check", str(trio[1])]) == 9
    assert capsys.readouterr().err == (
        "paramdelta: error: pre-publish check cannot run: transformers is not installed"
        " (pip install 'paramdelta-bot[check]')\n"
    )


@pytest.mark.parametrize("factor", ["0", "-1", "nan", "inf"])
def test_a_bad_factor_is_a_usage_error(trio, factor, capsys):
    assert main(["check", str(trio[1]), "--perplexity-factor", factor]) == 2
    assert "--perplexity-factor must be a finite number above 0" in capsys.readouterr().err


def test_a_missing_repo_is_a_hub_error(fake_hub, capsys):
    assert main(["check", "nobody/missing"]) == 4
    assert "nobody/missing@main: repository not found" in capsys.readouterr().err


@pytest.fixture
def local_merge(tmp_path, monkeypatch):
    """`merge ... --output out1` from inputs named relative to here, as a user types it."""
    monkeypatch.chdir(tmp_path)
    make_trio("ck")
    argv = ["merge", "--base", "ck/base", "--post", "ck/post", "--new-base", "ck/new_base"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--output", "out1"]) == 0
    return tmp_path


def test_a_local_merge_is_checked_against_the_folders_its_record_names(
    local_merge, monkeypatch, capsys
):
    monkeypatch.chdir(local_merge / "ck")  # the record's folders are found from anywhere
    assert main(["check", str(local_merge / "out1"), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "passed"
    assert report["perplexity"]["post"] > 0 and report["perplexity"]["new_base"] > 0


def test_a_local_input_that_is_not_there_is_named_with_the_flag_to_pass(local_merge, capsys):
    ck = local_merge / "ck"
    (ck / "post").rename(ck / "post-moved")
    assert main(["check", "out1"]) == 2
    post_gone = (
        f"out1/paramdelta.json: the post model was read from {ck / 'post'}, which is not here;"
        " pass --post DIR"
    )
    assert capsys.readouterr().err == f"paramdelta: error: {post_gone}\n"
    assert main(["check", "out1", "--format", "json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"status": "error", "error": post_gone, "exit_code": 2}
    assert err == f"paramdelta: error: {post_gone}\n"
    (ck / "new_base").rename(ck / "new-base-moved")
    assert main(["check", "out1", "--post", "ck/post-moved"]) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: out1/paramdelta.json: the new base was read from {ck / 'new_base'},"
        " which is not here; pass --new-base DIR\n"
    )
    assert main(["check", "out1"]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: out1/paramdelta.json: the post model and new base were read from"
        f" {ck / 'post'} and {ck / 'new_base'}, which are not here;"
        " pass --post DIR and --new-base DIR\n"
    )


def test_an_output_without_a_tokenizer_is_said_plainly(tmp_path, capsys):
    local = make_trio(tmp_path / "in")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (local["post"] / name).unlink()
    merge({role: LocalSource(path) for role, path in local.items()}, tmp_path / "out")
    argv = ["check", str(tmp_path / "out"), "--post", str(local["post"])]
    assert main(argv) == 9
    out, err = capsys.readouterr()
    detail = "the output has no tokenizer (post model post ships none)"
    assert out.splitlines()[0] == f"FAIL  tokenizer loads: {detail}"
    assert err == f"paramdelta: error: pre-publish check failed: tokenizer loads: {detail}\n"


def test_record_puts_the_check_into_the_record_and_card_that_publish_ships(
    local_merge, fake_hub, hub_token, monkeypatch, capsys
):
    before = json.loads((local_merge / "out1" / "paramdelta.json").read_text())
    assert "check" not in before
    assert main(["check", "out1", "--record", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    record = json.loads((local_merge / "out1" / "paramdelta.json").read_text())
    assert record == {**before, "check": report}  # as `run` records its pre-publish check
    card = (local_merge / "out1" / "README.md").read_text()
    assert card == render_card(record, hub_url=fake_hub.url)  # the card run would render
    assert f"`cpu` and used it ({report['seconds']} s): **passed**." in card
    assert f"| perplexity | pass | {report['steps'][-1]['detail']} |" in card

    monkeypatch.setenv("HF_TOKEN", hub_token)
    assert main(["publish", "out1", "--repo", "me/checked"]) == 0
    published = json.loads(fake_hub.read_file("me/checked", "paramdelta.json"))
    assert published["check"] == report
    assert "**passed**" in fake_hub.read_file("me/checked", "README.md").decode()


def test_record_needs_a_directory_that_merge_wrote(tmp_path, capsys):
    plain = make_trio(tmp_path / "in")["post"]
    assert main(["check", "org/model", "--record"]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --record: org/model is not a local directory; --record writes"
        " into a directory written by `paramdelta merge --output`\n"
    )
    assert main(["check", str(plain), "--record"]) == 2
    assert capsys.readouterr().err.startswith(f"paramdelta: error: {plain}: no paramdelta.json;")
