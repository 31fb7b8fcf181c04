import json

import pytest

from paramdelta.cli import main

WATCHLIST = """\
targets:
  - name: good
    base: org/base
    post: org/post
    new_base: org/new-base
    output: me/good
  - name: broken
    base: nobody/missing
    post: org/post
    new_base: org/new-base
    output: me/broken
  - name: paused
    base: org/base
    post: org/post
    new_base: org/new-base
    output: me/off
    enabled: false
"""


@pytest.fixture
def watchlist(hub_trio, tmp_path):
    path = tmp_path / "watchlist.yaml"
    path.write_text(WATCHLIST)
    return path


def test_json_is_the_matrix_of_pending_targets(watchlist, hub_trio, capsys):
    assert main(["plan", "--watchlist", str(watchlist), "--format", "json"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    assert [(m["target"], m["status"]) for m in matrix] == [
        ("good", "pending"),
        ("broken", "error"),
    ]
    good = matrix[0]
    assert good["output_repo"] == "me/good"
    assert good["new_base"] == f"org/new-base@{hub_trio.shas['new_base']}"
    assert good["reasons"] == ["no lineage record in the output repo"]
    assert (
        matrix[1]["error"]
        == "nobody/missing@main: repository not found (or private, and the token cannot see it)"
    )


def test_human_output(watchlist, hub_trio, capsys):
    assert main(["plan", "--watchlist", str(watchlist), "--target", "good"]) == 0
    assert capsys.readouterr().out == (
        f"good: pending (new base org/new-base@{hub_trio.shas['new_base'][:7]}):"
        " no lineage record in the output repo\n1 of 1 targets pending\n"
    )


def test_github_outputs_and_summary(watchlist, hub_trio, tmp_path, monkeypatch, capsys):
    output, summary = tmp_path / "out", tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["plan", "--watchlist", str(watchlist), "--github", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    lines = output.read_text().splitlines()
    # name<<delimiter / value / delimiter, twice
    assert lines[0].startswith("pending<<ghadelimiter_") and lines[2] == lines[0].split("<<")[1]
    assert json.loads(lines[1]) == printed
    assert lines[3].startswith("pending-count<<") and lines[4] == "2"
    table = summary.read_text()
    assert table.startswith("### ParamΔ plan\n")
    assert (
        f"| good | pending | `org/new-base@{hub_trio.shas['new_base'][:7]}` | me/good | no lineage record in the output repo |"
        in table
    )
    assert "| paused | disabled | - | - | enabled: false |" in table


def test_github_outside_actions_is_a_usage_error(watchlist, capsys):
    assert main(["plan", "--watchlist", str(watchlist), "--github"]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --github: GITHUB_OUTPUT is not set (not running in GitHub Actions?)\n"
    )


def test_unknown_target_and_bad_watchlist(watchlist, tmp_path, capsys):
    assert main(["plan", "--watchlist", str(watchlist), "--target", "nope"]) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: {watchlist}: no target named 'nope' (targets: good, broken, paused)\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: []\n")
    assert main(["plan", "--watchlist", str(bad)]) == 2
    assert capsys.readouterr().err == f"paramdelta: error: {bad}:1: targets: must not be empty\n"


def test_result_file_says_what_is_done_and_what_is_planned(watchlist, hub_trio, tmp_path, capsys):
    from paramdelta.reporting.results import load_results

    assert main(["run", "--watchlist", str(watchlist), "--target", "good"]) == 0
    results = tmp_path / "results" / "plan.json"
    assert main(["plan", "--watchlist", str(watchlist), "--result-file", str(results)]) == 0
    good, broken = load_results([results])  # the disabled target has none
    assert (good.target, good.status, good.output_repo) == ("good", "up-to-date", "me/good")
    assert good.new_base_sha == hub_trio.shas["new_base"]
    # Its matrix leg will report on it; if none does, `report` says so.
    assert (broken.target, broken.status) == ("broken", "planned")
    assert capsys.readouterr().out.endswith("0 of 3 targets pending, 1 could not be resolved\n")


def test_licence_warnings_are_shown(hub_trio, tmp_path, capsys):
    path = tmp_path / "llama.yaml"
    path.write_text(
        "targets:\n  - {name: l, base: org/base, post: org/post, new_base: meta-llama/Llama-3.1-8B,"
        " output: me/Instruct}\n"
    )
    main(["plan", "--watchlist", str(path)])
    assert capsys.readouterr().err.startswith(
        f"{path}:2: warning: targets[0].output: Llama licence: the name of a model built with Llama"
        " must begin with 'Llama'; 'Instruct' does not\n"
    )


FAN_OUT = WATCHLIST.replace("    output: me/good\n", "    output: me/good\n    legs: 3\n")


def test_a_target_with_legs_is_one_matrix_entry_per_leg(hub_trio, tmp_path, monkeypatch, capsys):
    path = tmp_path / "watchlist.yaml"
    path.write_text(FAN_OUT)
    assert main(["plan", "--watchlist", str(path), "--format", "json"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    plain = json.loads(json.dumps(matrix[0]))
    del plain["leg"], plain["legs"]
    assert [(m["target"], m.get("leg"), m.get("legs")) for m in matrix] == [
        ("good", 1, 3),
        ("good", 2, 3),
        ("good", 3, 3),
        ("broken", None, None),  # other targets as they were
    ]
    assert all(
        {k: v for k, v in m.items() if k not in ("leg", "legs")} == plain for m in matrix[:3]
    )

    output = tmp_path / "out"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    assert main(["plan", "--watchlist", str(path), "--github", "--format", "json"]) == 0
    capsys.readouterr()
    lines = output.read_text().splitlines()
    fan_out = json.loads(
        lines[lines.index(next(x for x in lines if x.startswith("fan-out<<"))) + 1]
    )
    assert len(fan_out) == 1 and fan_out[0]["target"] == "good" and fan_out[0]["legs"] == 3
    # The plain workflow's list: each target once, the fan-out target as one whole merge.
    targets = json.loads(
        lines[lines.index(next(x for x in lines if x.startswith("targets<<"))) + 1]
    )
    assert [t["target"] for t in targets] == ["good", "broken"] and targets[0] == plain
    assert fan_out[0]["staging_branch"].startswith("paramdelta-staging/good-")


def test_legs_must_be_a_whole_number_of_at_least_one(tmp_path, capsys):
    path = tmp_path / "watchlist.yaml"
    path.write_text(FAN_OUT.replace("legs: 3", "legs: 0"))
    assert main(["plan", "--watchlist", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: {path}:7: targets[0].legs: 0 is not a whole number of at least 1\n"
    )
