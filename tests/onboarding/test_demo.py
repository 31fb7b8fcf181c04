import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from paramdelta.cli import main
from paramdelta.onboarding import demo as demo_module
from paramdelta.onboarding.demo import OUTPUT, REPOS
from paramdelta.testing.checkpoints import load_tensors


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One `paramdelta demo` (no --keep: about 12 s) that every demo test reads.

    The command removes its work directory at the end, and leaves nothing in the temp
    directory (here one of its own); what the tests read of the published files is copied
    before the command removes it.
    """
    root = tmp_path_factory.mktemp("demo")
    workdir, kept, temp = root / "work", root / "kept", root / "temp"
    temp.mkdir()
    seen = []
    real_run_demo = demo_module.run_demo

    def run_demo_and_copy(where, say=print):
        report = real_run_demo(where, say)
        shutil.copytree(where / "published", kept / "published")
        seen.append(report)
        return report

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(demo_module, "default_workdir", lambda: workdir)
        patch.setattr(demo_module, "run_demo", run_demo_and_copy)
        patch.setattr(tempfile, "tempdir", str(temp))
        code = main(["demo"])
        left_in_temp = sorted(p.name for p in temp.iterdir())
    [report] = seen
    printed = stdout.getvalue().splitlines()
    yield SimpleNamespace(
        code=code,
        workdir=workdir,
        printed=printed,
        left_in_temp=left_in_temp,
        transcript="\n".join(printed[:-2]),  # what run_demo said, before the command's last lines
        # The report, pointing at the copy of the published files.
        report=dataclasses.replace(
            report, workdir=kept, card_path=kept / "published" / "README.md"
        ),
    )


@pytest.mark.slow
def test_the_demo_runs_the_whole_cycle(demo):
    report = demo.report

    # Two runs (the README-only commit made none), two commits on top of the repo's initial one.
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
    published = load_tensors(report.workdir / "published")
    assert len(published) == 21
    assert json.loads((report.workdir / "published" / "paramdelta.json").read_text()) == record
    transcript = demo.transcript
    for step in ("1. plan", "2. run", "3. plan again", "4. plan", "5. plan", "6. run"):
        assert f"==> {step}" in transcript
    assert "0 of 1 targets pending" in transcript
    # The README-only commit leaves the target up to date; the new weights do not.
    assert (
        f"up-to-date (new base {REPOS['new_base']}@{report.readme_commit[:7]}): upstream moved,"
        f" content unchanged (new base {REPOS['new_base']} moved {report.seeded['new_base'][:7]}"
        f" -> {report.readme_commit[:7]})"
    ) in transcript
    assert (
        f"new base {REPOS['new_base']} moved {report.seeded['new_base'][:7]} -> {report.new_base_v2[:7]}:"
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


@pytest.mark.slow
def test_the_cards_usage_snippet_runs_against_the_merged_demo_model(demo, fake_hub, tmp_path):
    """The "Use" block of the published card, run verbatim with the installed transformers."""
    report = demo.report
    card = report.card_path.read_text()
    (snippet,) = re.findall(r"## Use\n\n```python\n(.*?)```", card, re.DOTALL)
    assert f'from_pretrained("{OUTPUT}"' in snippet
    published = report.workdir / "published"
    fake_hub.create_repo(OUTPUT)
    fake_hub.commit(OUTPUT, {p.name: p for p in published.iterdir()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_TOKEN")}
    env |= {"HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-c", snippet], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()  # the decoded reply of the (random, tiny) model
    assert any(r.path.endswith("/model.safetensors") for r in fake_hub.requests)


@pytest.mark.slow
def test_the_demo_leaves_nothing_behind_without_keep(demo):
    """Without --keep, neither its work directory nor anything else stays in the temp dir."""
    assert demo.code == 0
    assert not demo.workdir.exists()
    assert demo.left_in_temp == []
    last = demo.printed[-1]
    assert last.startswith("Demo finished in ") and last.endswith(
        ". Its files are removed: pass --keep to keep them, the model card it published among them."
    )
