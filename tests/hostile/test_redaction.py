"""Attack: a token the bot holds, echoed by the Hub in an error, straddles a length limit.

The Hub's error text used to be cut to 300 characters before redaction, so the
first 32 characters of a 34-character token leaked into stderr, the result
file, GITHUB_OUTPUT and the job summary.
"""

import json

from paramdelta.cli import main

from .helpers import target, write_watchlist


def _prefixes(token: str) -> list[str]:
    return [token[:n] for n in range(6, len(token) + 1)]


def test_a_token_straddling_the_cut_leaks_nowhere(
    hub_trio, fake_hub, hub_token, tmp_path, monkeypatch, capsys
):
    watchlist = write_watchlist(tmp_path, target("good", "me/good"))
    outputs, summary = tmp_path / "outputs", tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    # The Hub's message quotes the token across character 300, where the bot cuts messages.
    message = "x" * (300 - len(hub_token) // 2) + hub_token + " was refused"
    fake_hub.faults.add(
        method="GET",
        path="^/api/models/org/new-base",
        status=422,
        body=json.dumps({"error": message}),
    )
    results = tmp_path / "result.json"
    code = main(["run", "--watchlist", str(watchlist), "--result-file", str(results), "--github"])

    assert code == 4
    printed = capsys.readouterr()
    record = json.loads(results.read_text())["results"][0]
    assert record["status"] == "failed" and record["error"].startswith(
        "org/new-base@main: HTTP 422"
    )
    assert "xxx*** was refu" in record["error"]  # redacted, then cut
    written = [
        printed.out,
        printed.err,
        results.read_text(),
        outputs.read_text(),
        summary.read_text(),
    ]
    for text in written:
        assert not any(prefix in text for prefix in _prefixes(hub_token)), text
