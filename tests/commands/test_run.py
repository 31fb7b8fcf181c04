import json
import re

import pytest
import torch
from huggingface_hub import ModelCard

from paramdelta.cli import main
from paramdelta.reporting.results import load_results
from paramdelta.testing.checkpoints import (
    donor_files,
    llama_config,
    load_tensors,
    mismatched_tensors,
    random_state_dict,
    reference_merge,
    save_checkpoint,
)
from paramdelta.testing.seed import publish_folder

WATCHLIST = """\
targets:
  - name: good
    base: org/base
    post: org/post
    new_base: org/new-base
    output: me/good
    tags: [chat]
  - name: broken
    base: nobody/missing
    post: org/post
    new_base: org/new-base
    output: me/broken
"""


@pytest.fixture
def watchlist(hub_trio, tmp_path):
    path = tmp_path / "watchlist.yaml"
    path.write_text(WATCHLIST)
    return path


def _download(fake_hub, repo, directory):
    directory.mkdir()
    for name in fake_hub.list_files(repo):
        (directory / name).write_bytes(fake_hub.read_file(repo, name))
    return directory


def test_run_publishes_one_commit_and_isolates_failures(
    watchlist, hub_trio, fake_hub, tmp_path, capsys
):
    results = tmp_path / "results.json"
    assert main(["run", "--watchlist", str(watchlist), "--result-file", str(results)]) == 4
    out = capsys.readouterr().out.splitlines()
    commits = fake_hub.commits("me/good")
    assert out[0] == f"good: published ({fake_hub.url}/me/good/commit/{commits[0].oid})"
    assert re.fullmatch(
        r"  pre-publish check: passed in [\d.]+ s on cpu \(perplexity 2\d\d\.\d+, 1\.\d+ x the"
        r" better reference, at most 3\.0\)",
        out[1],
    )
    assert out[2:] == [
        "broken: failed (nobody/missing@main: repository not found (or private, and the token cannot see it))",
    ]
    assert len(commits) == 2  # the repo's initial commit, then ours with everything
    files = set(fake_hub.list_files("me/good"))
    assert {
        "README.md",
        "paramdelta.json",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "paramdelta-delta.png",
    } <= files

    record = json.loads(fake_hub.read_file("me/good", "paramdelta.json"))
    assert {c["role"]: c["sha"] for c in record["checkpoints"]} == hub_trio.shas
    assert record["output"]["repo"] == "me/good" and record["target"] == "good"

    card = ModelCard(fake_hub.read_file("me/good", "README.md").decode())
    assert card.data.base_model == ["org/new-base", "org/post", "org/base"]
    assert card.data.base_model_relation == "merge"
    assert card.data.tags == ["merge", "paramdelta", "chat"]

    merged = load_tensors(_download(fake_hub, "me/good", tmp_path / "good"))
    expected = reference_merge(
        *(load_tensors(hub_trio.local[r]) for r in ("base", "post", "new_base"))
    )
    assert mismatched_tensors(merged, expected) == []

    good, broken = load_results([results])
    assert (good.status, good.exit_code, good.new_base_sha) == (
        "published",
        0,
        hub_trio.shas["new_base"],
    )
    assert (broken.status, broken.exit_code) == ("failed", 4)
    assert not fake_hub.repo_exists("me/broken")


def test_a_second_run_with_nothing_changed_does_nothing(watchlist, fake_hub, capsys):
    assert main(["run", "--watchlist", str(watchlist), "--target", "good"]) == 0
    capsys.readouterr()
    commits = len(fake_hub.commits("me/good"))
    fake_hub.clear_requests()
    assert main(["run", "--watchlist", str(watchlist), "--target", "good"]) == 0
    assert capsys.readouterr().out == "nothing to do: 1 target up to date\n"
    assert len(fake_hub.commits("me/good")) == commits
    assert fake_hub.weight_bytes_served() == 0


def test_a_readme_only_commit_upstream_is_not_merged_again(watchlist, hub_trio, fake_hub, capsys):
    assert main(["run", "--watchlist", str(watchlist), "--target", "good"]) == 0
    commits = len(fake_hub.commits("me/good"))
    moved = fake_hub.commit("org/new-base", {"README.md": b"# new wording\n"})
    fake_hub.commit("org/post", {"README.md": b"# post, reworded\n"})
    capsys.readouterr()
    fake_hub.clear_requests()
    assert main(["plan", "--watchlist", str(watchlist), "--target", "good"]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[0]
        .endswith(f"(new base org/new-base moved {hub_trio.shas['new_base'][:7]} -> {moved[:7]})")
    )
    assert main(["run", "--watchlist", str(watchlist), "--target", "good"]) == 0
    assert capsys.readouterr().out == "nothing to do: 1 target up to date\n"
    assert len(fake_hub.commits("me/good")) == commits
    assert fake_hub.weight_bytes_served() == 0


def test_dry_run_renders_the_card_and_publishes_nothing(watchlist, fake_hub, tmp_path, capsys):
    workdir = tmp_path / "dry"
    assert (
        main(
            [
                "run",
                "--watchlist",
                str(watchlist),
                "--target",
                "good",
                "--dry-run",
                "--workdir",
                str(workdir),
                "--format",
                "json",
            ]
        )
        == 0
    )
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["status"] == "dry-run"
    card = workdir / "good" / "README.md"
    assert result["url"] == card.as_uri()
    assert ModelCard(card.read_text()).data.base_model_relation == "merge"
    assert not fake_hub.repo_exists("me/good")
    # Headers only: one read of each shard's first bytes, nothing else of the weights.
    reads = [r for r in fake_hub.requests if r.server == "hub" and r.path.endswith(".safetensors")]
    assert reads and all(r.range.startswith("bytes=0-") for r in reads)
    assert len(reads) == len({r.path for r in reads})
    assert fake_hub.xet_token_requests() == 0


def test_github_outputs(watchlist, hub_trio, fake_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.test")
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    assert main(["run", "--watchlist", str(watchlist), "--target", "good", "--github"]) == 0
    lines = (tmp_path / "out").read_text().splitlines()
    assert lines[0].startswith("published<<")
    (published,) = json.loads(lines[1])
    assert published["target"] == "good" and published["status"] == "published"
    assert "| good |" in (tmp_path / "summary.md").read_text()
    record = json.loads(fake_hub.read_file("me/good", "paramdelta.json"))
    assert record["ci_run_url"] == "https://github.test/o/r/actions/runs/42"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_device_and_memory_are_checked_before_the_watchlist_is_read(tmp_path, capsys):
    missing = str(tmp_path / "no-such-watchlist.yaml")
    assert main(["run", "--watchlist", missing, "--device", "cuda"]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --device cuda: no CUDA device is available (use --device cpu)\n"
    )
    assert main(["run", "--watchlist", missing, "--max-memory", "lots"]) == 2
    assert "--max-memory: expected a size like 5GB or 512MiB, not 'lots'" in capsys.readouterr().err


def test_a_target_in_review_is_said_to_be_in_review(hub_trio, fake_hub, tmp_path, capsys):
    path = tmp_path / "pr.yaml"
    path.write_text(WATCHLIST.split("  - name: broken")[0].replace("tags: [chat]", "publish: pr"))
    assert main(["run", "--watchlist", str(path)]) == 0
    assert capsys.readouterr().out.startswith(
        f"good: pr-opened ({fake_hub.url}/me/good/discussions/1"
    )
    assert main(["run", "--watchlist", str(path)]) == 0
    assert capsys.readouterr().out == "nothing to do: 1 target in review\n"
    assert len(fake_hub.pull_requests("me/good")) == 1


def test_a_target_switched_from_pr_to_commit_closes_its_pull_request(
    hub_trio, fake_hub, tmp_path, capsys
):
    path = tmp_path / "w.yaml"
    good = WATCHLIST.split("  - name: broken")[0]
    path.write_text(good.replace("tags: [chat]", "publish: pr"))
    assert main(["run", "--watchlist", str(path)]) == 0
    (ours,) = fake_hub.pull_requests("me/good")
    strangers = fake_hub.open_pull_request(
        "me/good",
        {"paramdelta.json": fake_hub.read_file("me/good", "paramdelta.json", ours.ref)},
        author="mallory",
    )
    capsys.readouterr()

    path.write_text(good.replace("tags: [chat]", "publish: commit"))
    assert main(["run", "--watchlist", str(path)]) == 0
    sha = fake_hub.head("me/good")
    commit_url = f"{fake_hub.url}/me/good/commit/{sha}"
    assert capsys.readouterr().out.startswith(f"good: published ({commit_url})")
    assert "paramdelta.json" in fake_hub.list_files("me/good")
    closed = fake_hub.discussion("me/good", ours.num)
    assert closed.status == "closed"
    assert [(e.type, e.data.get("status")) for e in closed.events] == [
        ("comment", None),
        ("status-change", "closed"),
    ]
    assert closed.events[0].data["latest"]["raw"] == (
        f"Superseded by commit {sha[:7]} ({commit_url}), committed directly to main."
    )
    assert fake_hub.discussion("me/good", strangers).status == "open"  # not the bot's


def test_ctrl_c_during_the_upload_leaves_no_output_repo(hub_trio, fake_hub, tmp_path, monkeypatch):
    from paramdelta.hub.client import Hub

    def interrupted(self, repo_id, operations, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Hub, "preupload", interrupted)
    path = tmp_path / "w.yaml"
    path.write_text(WATCHLIST.split("  - name: broken")[0])
    assert main(["run", "--watchlist", str(path), "--check", "off"]) == 130
    assert not fake_hub.repo_exists("me/good")


GROWN = """\
targets:
  - name: grown
    base: org/base
    post: org/post
    new_base: org/new-grown
    output: me/grown
"""


@pytest.fixture
def grown_vocabulary(hub_trio, fake_hub, tmp_path):
    """A new base whose vocabulary grew (Mistral 32000 -> 32768, in miniature: 256 -> 260)."""
    config = llama_config(vocab_size=260)
    state = random_state_dict(config, seed=5)
    folder = save_checkpoint(tmp_path / "grown", state, config, extra_files=donor_files("new_base"))
    publish_folder(fake_hub, "org/new-grown", folder)
    path = tmp_path / "grown.yaml"
    path.write_text(GROWN)
    return path


def test_a_vocabulary_mismatch_names_the_watchlist_key(grown_vocabulary, fake_hub, capsys):
    assert main(["run", "--watchlist", str(grown_vocabulary)]) == 3
    assert capsys.readouterr().out == (
        "grown: failed (vocabulary size differs in tensor 'lm_head.weight' (base 256, post 256,"
        " new base 260 rows); set `vocab_policy: shared` on the target in the watchlist to merge"
        " the 256 rows all three share and drop the new base's 4 extra rows)\n"
    )
    assert not fake_hub.repo_exists("me/grown")


def test_the_rows_dropped_are_stated_in_log_lineage_and_card(grown_vocabulary, fake_hub, capsys):
    grown_vocabulary.write_text(GROWN + "    vocab_policy: shared\n")
    assert main(["run", "--watchlist", str(grown_vocabulary)]) == 0
    stated = (
        "base 256, post 256, new base 260 rows; output 256 rows: 256 merged, 0 kept from the post model,"
        " 4 dropped from the new base (vocab policy `shared`: the rows all three share are merged)"
    )
    err = capsys.readouterr().err.splitlines()
    assert f"grown: vocabulary: {stated}" in err
    assert (
        "grown: left out: .gitattributes (the Hub keeps its own), README.md (replaced by the model card)"
        in err
    )
    record = json.loads(fake_hub.read_file("me/grown", "paramdelta.json"))
    assert record["vocabulary"]["dropped_from_new_base"] == 4
    assert record["recipe"]["config_changes"] == {"vocab_size": 256}
    assert record["recipe"]["skipped_files"] == {
        ".gitattributes": "the Hub keeps its own",
        "README.md": "replaced by the model card",
    }
    card = fake_hub.read_file("me/grown", "README.md").decode()
    assert f"- Vocabulary: {stated}" in card
    assert "- `README.md`: replaced by the model card" in card
    config = json.loads(fake_hub.read_file("me/grown", "config.json"))
    assert config["vocab_size"] == 256


TWO_DELTAS = """\
targets:
  - name: mix
    deltas:
      - {post: org/post, base: org/base, weight: 0.7}
      - {post: org/post-math, base: org/base-math, weight: 0.3}
    new_base: org/new-base
    output: me/mix
"""


@pytest.fixture
def two_delta_watchlist(hub_trio, fake_hub, tmp_path):
    """The trio on the Hub, a second delta (another seed) beside it, and a target summing both."""
    from paramdelta.testing.checkpoints import make_trio

    second = make_trio(tmp_path / "second", seed=7, max_shard_size=60_000)
    shas = {
        "post[1]": publish_folder(fake_hub, "org/post-math", second["post"]),
        "base[1]": publish_folder(fake_hub, "org/base-math", second["base"]),
    }
    path = tmp_path / "watchlist.yaml"
    path.write_text(TWO_DELTAS)
    local = hub_trio.local | {"post[1]": second["post"], "base[1]": second["base"]}
    return path, local, hub_trio.shas | shas


def test_a_two_delta_target_is_merged_checked_recorded_and_planned(
    two_delta_watchlist, fake_hub, capsys
):
    watchlist, local, shas = two_delta_watchlist
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mix: published") and "pre-publish check: passed" in out[1]

    published = _download(fake_hub, "me/mix", local["post"].parent.parent / "published")
    inputs = {role: load_tensors(path) for role, path in local.items()}
    merged = load_tensors(published)
    exact = 0
    for name, tensor in merged.items():  # the formula, literally
        acc = inputs["new_base"][name].float()
        for post, base, w in (("post", "base", 0.7), ("post[1]", "base[1]", 0.3)):
            acc = acc + w * (inputs[post][name].float() - inputs[base][name].float())
        exact += torch.equal(tensor, acc.to(tensor.dtype))
    assert (exact, len(merged)) == (21, 21)

    record = json.loads((published / "paramdelta.json").read_text())
    assert {c["role"]: c["sha"] for c in record["checkpoints"]} == shas  # 2N+1 = 5 commits
    assert all(c["files"] for c in record["checkpoints"])  # with the content ids read
    assert record["recipe"]["weights"] == [0.7, 0.3]
    # The check compares with the first delta's post model and the new base.
    assert set(record["check"]["perplexity"]) >= {"merged", "post", "new_base"}
    card = ModelCard((published / "README.md").read_text())
    assert card.data.base_model == [
        "org/new-base", "org/post", "org/base", "org/post-math", "org/base-math",
    ]  # fmt: skip
    assert "| post[1] | [org/post-math]" in card.text

    # Up to date; a README edit to a later delta changes nothing; its weights do.
    assert main(["plan", "--watchlist", str(watchlist)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 of 1 targets pending"
    fake_hub.commit("org/post-math", {"README.md": b"# reworded\n"})
    assert main(["plan", "--watchlist", str(watchlist)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 of 1 targets pending"
    moved = fake_hub.commit("org/base-math", {"model.safetensors.index.json": b"{}\n"})
    assert main(["plan", "--watchlist", str(watchlist)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 of 1 targets pending"
    assert (
        f"base[1] org/base-math moved {shas['base[1]'][:7]} -> {moved[:7]}:"
        " model.safetensors.index.json changed"
    ) in lines[0]
