import json
import uuid

import pytest

from paramdelta.errors import UsageError
from paramdelta.reporting import github_actions

FIXED_UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")
DELIMITER = f"ghadelimiter_{FIXED_UUID}"


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """A runner's files, empty, and a predictable delimiter."""
    files = {"output": tmp_path / "output", "summary": tmp_path / "summary"}
    for path in files.values():
        path.touch()
    monkeypatch.setenv("GITHUB_OUTPUT", str(files["output"]))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(files["summary"]))
    monkeypatch.setattr(github_actions, "uuid4", lambda: FIXED_UUID)
    return files


def test_set_output_uses_the_heredoc_form_for_multi_line_json(runner):
    pending = json.dumps([{"target": "llama", "sha": "abc"}, {"target": "qwen"}], indent=1)
    github_actions.set_output("pending", pending)
    github_actions.set_output("pending-count", "2")
    expected = (
        f"pending<<{DELIMITER}\n"
        '[\n {\n  "target": "llama",\n  "sha": "abc"\n },\n {\n  "target": "qwen"\n }\n]\n'
        f"{DELIMITER}\n"
        f"pending-count<<{DELIMITER}\n"
        "2\n"
        f"{DELIMITER}\n"
    )
    assert runner["output"].read_bytes() == expected.encode()


def test_set_output_refuses_a_value_holding_the_delimiter(runner):
    with pytest.raises(ValueError, match="contains the delimiter"):
        github_actions.set_output("summary", f"text\n{DELIMITER}\nmore")
    assert runner["output"].read_bytes() == b""


def test_append_summary_appends_a_line_ending(runner):
    github_actions.append_summary("| a |\n| - |")
    github_actions.append_summary("done\n")
    assert runner["summary"].read_text() == "| a |\n| - |\ndone\n"


@pytest.mark.parametrize("missing", ["GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"])
def test_require_runner_files(runner, monkeypatch, missing):
    github_actions.require_runner_files()
    monkeypatch.delenv(missing)
    with pytest.raises(UsageError) as e:
        github_actions.require_runner_files()
    assert str(e.value) == f"--github: {missing} is not set (not running in GitHub Actions?)"


def test_set_output_outside_actions_is_a_usage_error():
    with pytest.raises(UsageError, match="GITHUB_OUTPUT is not set"):
        github_actions.set_output("summary", "x")


@pytest.mark.parametrize(
    ("server", "attempt", "expected"),
    [
        ("https://github.com", "1", "https://github.com/acme/models/actions/runs/42"),
        ("https://ghe.example/", "", "https://ghe.example/acme/models/actions/runs/42"),
        ("https://github.com", "3", "https://github.com/acme/models/actions/runs/42/attempts/3"),
    ],
)
def test_run_url(monkeypatch, server, attempt, expected):
    monkeypatch.setenv("GITHUB_SERVER_URL", server)
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    monkeypatch.setenv("GITHUB_RUN_ATTEMPT", attempt)
    assert github_actions.run_url() == expected
    monkeypatch.delenv("GITHUB_RUN_ID")
    assert github_actions.run_url() is None


def test_outputs_and_summary_are_redacted(runner, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_runner-secret-token")
    github_actions.set_output("summary", "failed: ghs_runner-secret-token refused")
    github_actions.append_summary("| x | ghs_runner-secret-token |")
    assert (
        runner["output"].read_text() == f"summary<<{DELIMITER}\nfailed: *** refused\n{DELIMITER}\n"
    )
    assert runner["summary"].read_text() == "| x | *** |\n"
