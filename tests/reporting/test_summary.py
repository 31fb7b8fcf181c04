from dataclasses import replace

from paramdelta.reporting.results import TargetResult
from paramdelta.reporting.summary import summary_markdown

from .records import failed, published, quiet

RUN = "https://github.com/acme/models/actions/runs/7"


def test_summary_markdown():
    results = [
        published(),
        failed("qwen|chat", error="HubError: 503 from the Hub\n  (retried 5 times)"),
        quiet("up-to-date"),
        TargetResult(
            target="gemma",
            status="pr-opened",
            output_repo="acme/gemma",
            new_base_repo="google/gemma-2-9b",
            new_base_sha="c" * 40,
            url="https://huggingface.co/acme/gemma/discussions/3",
            exit_code=0,
            duration_s=3725,
        ),
        TargetResult(
            target="phi",
            status="dry-run",
            new_base_repo="microsoft/phi-4",
            exit_code=0,
            duration_s=1,
        ),
    ]
    assert summary_markdown(results, run_url=RUN) == (
        "### ParamΔ merges\n"
        "\n"
        "| target | new base | status | link | duration |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| llama-3.1-8b-instruct | meta-llama/Llama-3.1-8B@bbbbbbb | published"
        " | [commit](https://huggingface.co/acme/Llama-3.1-8B-Instruct-ParamDelta/commit/c0ffee)"
        " | 2m 05s |\n"
        "| qwen\\|chat | meta-llama/Llama-3.1-8B@aaaaaaa | failed (exit 4) | - | 12.5s |\n"
        "| mistral | - | up to date | - | 0.4s |\n"
        "| gemma | google/gemma-2-9b@ccccccc | PR opened"
        " | [pull request](https://huggingface.co/acme/gemma/discussions/3) | 1h 02m |\n"
        "| phi | microsoft/phi-4 | dry run | - | 1.0s |\n"
        "\n"
        "Errors:\n"
        "\n"
        "- **qwen\\|chat**: HubError: 503 from the Hub (retried 5 times)\n"
        "\n"
        "5 targets: 1 published, 1 PR opened, 1 up to date, 1 dry run, 1 failed."
        " [Workflow run](https://github.com/acme/models/actions/runs/7)\n"
    )


def test_summary_markdown_of_nothing():
    assert summary_markdown([]) == "### ParamΔ merges\n\n0 targets.\n"


def test_a_blocked_publish_counts_as_a_failure():
    blocked = TargetResult(
        target="t",
        status="check-failed",
        error="pre-publish check failed: perplexity: merged 900 is over 3 x 10",
        exit_code=9,
        duration_s=2,
    )
    text = summary_markdown([blocked, published()])
    assert "| t | - | check failed (exit 9) | - | 2.0s |" in text
    assert "- **t**: pre-publish check failed: perplexity: merged 900 is over 3 x 10\n" in text
    assert text.endswith("2 targets: 1 published, 1 check failed.\n")


def test_untrusted_text_shows_as_text():
    hostile = failed(error="tensor 'w<img src=x onerror=alert(1)>' [click](https://evil.test) `x`")
    link = replace(published("gemma"), url="javascript:alert(1)//https://x")
    text = summary_markdown([hostile, link])
    assert (
        "- **llama-3.1-8b-instruct**: tensor 'w\\<img src=x onerror=alert(1)\\>'"
        " \\[click\\](https://evil.test) \\`x\\`\n"
    ) in text
    assert "| gemma | meta-llama/Llama-3.1-8B@bbbbbbb | published | commit | 2m 05s |" in text
