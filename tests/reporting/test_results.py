import dataclasses
import json

import pytest

from paramdelta.errors import UsageError
from paramdelta.reporting.results import STATUSES, load_results, write_results
from paramdelta.tokens import register

from .records import LLAMA, failed, published, quiet

TOKEN = "ghs_report-test-token"


def test_results_round_trip_through_a_file(tmp_path):
    results = [failed(), published("qwen-2.5-7b-instruct"), quiet("up-to-date")]
    write_results(tmp_path / "results.json", results)
    data = json.loads((tmp_path / "results.json").read_text())
    assert list(data) == ["results"]
    assert data["results"][0] == {
        "target": LLAMA,
        "status": "failed",
        "output_repo": None,
        "new_base_repo": "meta-llama/Llama-3.1-8B",
        "new_base_sha": "a" * 40,
        "url": None,
        "error": "HubError: 503 from the Hub",
        "exit_code": 4,
        "duration_s": 12.5,
        "check": None,
    }
    assert load_results([tmp_path / "results.json"]) == results
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


def test_write_results_scrubs_tokens(tmp_path):
    secret = register("hf_write-results-secret")
    write_results(tmp_path / "r.json", [failed(error=f"401 for token {secret}")])
    assert load_results([tmp_path / "r.json"])[0].error == "401 for token ***"


def test_load_results_reads_every_json_below_a_directory(tmp_path):
    # download-artifact's layout: one directory per artifact
    write_results(tmp_path / "artifacts" / "result-b" / "r.json", [published("b")])
    write_results(tmp_path / "artifacts" / "result-a" / "r.json", [failed("a")])
    (tmp_path / "artifacts" / "result-a" / "merge.log").write_text("not a result")
    (tmp_path / "artifacts" / "empty").mkdir()
    assert [r.target for r in load_results([tmp_path / "artifacts"])] == ["a", "b"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"exit_code": None}, "field 'exit_code' must be an integer, not None"),
        ({"exit_code": True}, "field 'exit_code' must be an integer, not True"),
        ({"duration_s": "1s"}, "field 'duration_s' must be a number, not '1s'"),
        ({"url": 3}, "field 'url' must be a string or null, not 3"),
        (
            {"status": "ok"},
            "field 'status' must be one of published, pr-opened, in-review, up-to-date, dry-run,"
            " failed, check-failed, planned, staged, not 'ok'",
        ),
        ({"error": None}, "field 'error' must be set when status is 'failed' or 'check-failed'"),
    ],
)
def test_bad_records_name_the_file_and_the_field(tmp_path, change, message):
    record = {**failed().to_dict(), **change}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": [published().to_dict(), record]}))
    with pytest.raises(UsageError) as e:
        load_results([path])
    assert str(e.value) == f"{path}: results[1]: {message}"


def test_a_missing_field_is_named(tmp_path):
    record = published().to_dict()
    del record["new_base_sha"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": [record]}))
    with pytest.raises(UsageError, match=r"r\.json: results\[0\]: missing field 'new_base_sha'$"):
        load_results([path])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON: Expecting property name enclosed in double quotes"),
        ("[]", 'expected an object {"results": [...]}'),
        ('{"results": {}}', 'expected an object {"results": [...]}'),
        ('{"results": [], "version": 1}', "unknown field 'version'"),
        ('{"results": [3]}', "results[0]: expected an object, not int"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(UsageError) as e:
        load_results([path])
    assert str(e.value).startswith(f"{path}: {message}")


def test_a_missing_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.json: no such file or directory"):
        load_results([tmp_path / "nope.json"])


def test_the_schema_lists_every_status():
    from paramdelta.reporting.results import _validator

    status = _validator().schema["$defs"]["result"]["properties"]["status"]
    assert tuple(status["enum"]) == STATUSES
    assert status["description"] == f"one of {', '.join(STATUSES)}"


def test_a_check_failed_result_keeps_the_checks_numbers(tmp_path):
    check = {
        "status": "failed",
        "reason": "perplexity: merged 1168 is over 3 x 258.5, the better of post 260.7, new base 258.5",
        "device": "cpu",
        "seconds": 1.2,
        "steps": [
            {"step": "perplexity", "passed": False, "detail": "merged 1168 is over 3 x 258.5"}
        ],
        "generation": [],
        "perplexity": {"merged": 1168.4, "post": 260.69, "new_base": 258.51, "ratio": 4.5195},
    }
    result = dataclasses.replace(
        failed(error=f"pre-publish check failed: {check['reason']}"),
        status="check-failed",
        exit_code=9,
        check=check,
    )
    write_results(tmp_path / "r.json", [result])
    assert load_results([tmp_path / "r.json"]) == [result]


def test_a_check_of_unknown_status_is_refused(tmp_path):
    record = {**published().to_dict(), "check": {"status": "maybe"}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": [record]}))
    with pytest.raises(UsageError) as refused:
        load_results([path])
    assert str(refused.value) == (
        f"{path}: results[0]: field 'check' must be one of passed, failed, not-checked, not 'maybe'"
    )
