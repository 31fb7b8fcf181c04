"""What `report` believes, unit by unit (through `paramdelta report`: tests/hostile/test_report.py)."""

import pytest

from paramdelta.reporting.collect import NO_RESULT, collect
from paramdelta.reporting.results import TargetResult, write_results

TARGETS = ("good", "victim")


def _result(target, status, **fields):
    defaults = {"exit_code": 4, "error": "boom"} if status == "failed" else {"exit_code": 0}
    return TargetResult(target=target, status=status, **({"duration_s": 1.0} | defaults | fields))


def _write(folder, *records, name="result.json"):
    path = folder / name
    write_results(path, records)
    return path


def test_a_merge_jobs_artifact_cannot_say_planned(tmp_path):
    file = _write(tmp_path / "paramdelta-result-good", _result("good", "planned"))
    assert collect([tmp_path], TARGETS) == (
        [],
        [f"{file}: results[0]: a merge job's artifact cannot say 'planned'; ignored"],
    )


@pytest.mark.parametrize("status", ["up-to-date", "in-review", "planned"])
def test_the_plans_artifact_may_say_what_is_up_to_date_in_review_or_planned(tmp_path, status):
    _write(tmp_path / "paramdelta-result-plan", _result("good", status))
    collected = collect([tmp_path], TARGETS)
    assert collected.ignored == []
    assert [(r.target, r.status) for r in collected.results] == [
        ("good", "failed" if status == "planned" else status)
    ]


def test_a_file_outside_the_artifact_layout_may_speak_for_any_target(tmp_path):
    """Result files passed by hand (not the example workflow's artifacts) are taken as they are."""
    file = _write(
        tmp_path / "downloads",
        _result("good", "failed"),
        _result("victim", "dry-run"),
        _result("stranger", "failed"),
    )
    collected = collect([file], TARGETS)
    assert [(r.target, r.status) for r in collected.results] == [
        ("good", "failed"),
        ("victim", "dry-run"),
    ]
    assert collected.ignored == [
        f"{file}: results[2]: target 'stranger' is not in the watchlist; ignored"
    ]


def test_the_nearest_artifact_folder_is_the_speaker(tmp_path):
    outer = tmp_path / "paramdelta-result-plan" / "paramdelta-result-victim"
    file = _write(outer, _result("victim", "failed"), _result("good", "failed"))
    collected = collect([tmp_path], TARGETS)
    assert [r.target for r in collected.results] == ["victim"]  # the plan could not say 'failed'
    assert collected.ignored == [
        f"{file}: results[1]: the artifact of target 'victim' cannot speak for 'good'; ignored"
    ]


def test_a_file_named_directly_still_speaks_for_its_artifact(tmp_path):
    file = _write(tmp_path / "paramdelta-result-good", _result("victim", "up-to-date"))
    assert collect([file], TARGETS).ignored == [
        f"{file}: results[0]: the artifact of target 'good' cannot speak for 'victim'; ignored"
    ]


def test_a_planned_target_nobody_reported_on_fails_keeping_what_the_plan_knew(tmp_path):
    planned = _result(
        "victim",
        "planned",
        output_repo="me/victim",
        new_base_repo="org/new",
        new_base_sha="c" * 40,
        duration_s=2.5,
    )
    _write(tmp_path / "paramdelta-result-plan", planned)
    assert collect([tmp_path], TARGETS).results == [
        TargetResult(
            target="victim",
            status="failed",
            output_repo="me/victim",
            new_base_repo="org/new",
            new_base_sha="c" * 40,
            error=NO_RESULT,
            exit_code=8,
            duration_s=2.5,
        )
    ]


def test_a_merge_jobs_result_replaces_what_the_plan_said(tmp_path):
    _write(
        tmp_path / "paramdelta-result-plan",
        _result("good", "planned"),
        _result("victim", "planned"),
    )
    _write(tmp_path / "paramdelta-result-victim", _result("victim", "dry-run"))
    # The plan's file read after the leg's does not take the leg's word back either.
    _write(tmp_path / "paramdelta-result-good", _result("good", "up-to-date"), name="a.json")
    collected = collect([tmp_path], TARGETS)
    assert [(r.target, r.status, r.exit_code) for r in collected.results] == [
        ("good", "up-to-date", 0),
        ("victim", "dry-run", 0),
    ]
    assert collected.ignored == []
    again = collect(
        [tmp_path / "paramdelta-result-victim", tmp_path / "paramdelta-result-plan"], TARGETS
    )
    assert [(r.target, r.status) for r in again.results] == [
        ("victim", "dry-run"),
        ("good", "failed"),
    ]


def test_no_paths_no_results(tmp_path):
    assert collect([], TARGETS) == ([], [])
    (tmp_path / "empty").mkdir()
    assert collect([tmp_path / "empty"], TARGETS) == ([], [])


def test_an_ignored_record_is_named_by_its_index_in_the_file(tmp_path):
    file = _write(
        tmp_path / "paramdelta-result-good",
        _result("good", "up-to-date"),
        _result("good", "failed"),
        _result("victim", "failed"),
    )
    assert collect([tmp_path], TARGETS).ignored == [
        f"{file}: results[2]: the artifact of target 'good' cannot speak for 'victim'; ignored"
    ]
