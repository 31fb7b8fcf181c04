import json

from huggingface_hub import ModelCard

from paramdelta.bot.demo import OUTPUT, REPOS, run_demo
from paramdelta.cli import main
from paramdelta.testing.checkpoints import load_tensors


def test_the_demo_runs_the_whole_cycle(tmp_path):
    said: list[str] = []
    report = run_demo(tmp_path, said.append)

    # Two runs, two commits on top of the repo's initial one.
    assert len(report.output_commits) == 3
    record = report.lineage
    by_role = {c["role"]: c for c in record["checkpoints"]}
    assert {role: c["repo"] for role, c in by_role.items()} == REPOS
    assert by_role["base"]["sha"] == report.seeded["base"]
    assert by_role["post"]["sha"] == report.seeded["post"]
    assert by_role["new_base"]["sha"] == report.new_base_v2 != report.seeded["new_base"]

    card = ModelCard(report.card_path.read_text())
    assert card.data.base_model == [REPOS["new_base"], REPOS["post"], REPOS["base"]]
    assert card.data.base_model_relation == "merge"
    assert card.data.license == "llama3.1"
    assert "Built with Llama." in card.text

    assert report.mismatched == [] and report.tensors_checked == 21
    published = load_tensors(tmp_path / "published")
    assert len(published) == 21
    assert json.loads((tmp_path / "published" / "paramdelta.json").read_text()) == record
    transcript = "\n".join(said)
    for step in ("1. plan", "2. run", "3. plan again", "4. plan", "5. run"):
        assert f"==> {step}" in transcript
    assert "0 of 1 targets pending" in transcript
    assert (
        f"new base {REPOS['new_base']} moved {report.seeded['new_base'][:7]} -> {report.new_base_v2[:7]}"
        in transcript
    )
    assert f"{OUTPUT} now has 3 commits" in transcript

    # Both runs were checked before they committed; the second one's verdict and delta
    # report are in the record the demo shows.
    assert record["check"]["status"] == "passed"
    assert transcript.count("pre-publish check: passed in ") == 2
    assert "  pass  perplexity: merged " in transcript
    assert (
        f"  all              21 {record['delta']['overall']['post_delta_norm']:>12.4g}"
        in transcript
    )
    assert "## Pre-publish check" in card.text and "## Delta report" in card.text
    assert "paramdelta-delta.png" in report.output_files


def test_the_demo_command_refuses_a_non_empty_workdir(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"paramdelta: error: --workdir {tmp_path}: directory is not empty\n"
    )
