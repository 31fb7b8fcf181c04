"""The check's rules, with constructed numbers: memory, perplexity, degenerate text, modes."""

import math

import pytest

from paramdelta.errors import CheckError, UsageError
from paramdelta.pipeline import check
from paramdelta.pipeline.check_rules import (
    CheckReport,
    degeneracy,
    memory_reason,
    perplexity_verdict,
    size_text,
)

GB = 10**9


@pytest.mark.parametrize(
    ("model", "free", "reason"),
    [
        (16 * GB, 14 * GB, "16 GB model, 14 GB free on cuda:0"),
        (16 * GB, 20 * GB, None),  # 1.25 x 16 GB fits in 20 GB exactly
        (16 * GB, 19_999_999_999, "16 GB model, 20 GB free on cuda:0"),
        (8_030_000_000, 9 * GB, "8.0 GB model, 9.0 GB free on cuda:0"),
        (213_632, 100, "214 kB model, 100 B free on cuda:0"),
    ],
)
def test_a_model_fits_when_a_quarter_more_than_its_size_is_free(model, free, reason):
    assert memory_reason(model, free, "cuda:0") == reason


def test_sizes_read_like_the_hubs():
    assert [size_text(n) for n in (999, 1_500, 350_000_000, 16.06e9, 1.2e12)] == [
        "999 B",
        "1.5 kB",
        "350 MB",
        "16 GB",
        "1.2 TB",
    ]


def test_auto_says_why_it_does_not_check_and_on_refuses(monkeypatch):
    monkeypatch.setattr(check, "free_memory", lambda device: 14 * GB)
    assert check.decide("auto", 16 * GB, "cpu") == "16 GB model, 14 GB free on cpu"
    assert check.decide("auto", 1 * GB, "cpu") is None
    assert check.decide("off", 1 * GB, "cpu") == "the check is off"
    with pytest.raises(CheckError) as refused:
        check.decide("on", 16 * GB, "cpu")
    assert str(refused.value) == (
        "pre-publish check cannot run (check: on): 16 GB model, 14 GB free on cpu"
    )
    assert refused.value.exit_code == 9
    with pytest.raises(UsageError, match="--check must be one of auto, on, off, not 'maybe'"):
        check.decide("maybe", 1, "cpu")


def test_without_transformers_auto_skips_and_on_refuses(monkeypatch):
    monkeypatch.setattr(check, "transformers_installed", lambda: False)
    reason = "transformers is not installed (pip install 'paramdelta-bot[check]')"
    assert check.decide("auto", 1, "cpu") == reason
    with pytest.raises(CheckError, match=r"cannot run \(check: on\): transformers is not"):
        check.decide("on", 1, "cpu")


def test_the_host_reports_the_memory_it_has_available():
    free = check.free_memory(check.resolve_device("cpu"))
    assert 0 < free < 2**50


@pytest.mark.parametrize(
    ("merged", "post", "new_base", "factor", "better", "ratio", "passed"),
    [
        (9.0, 8.0, 6.0, 3.0, 6.0, 1.5, True),  # within 3x the new base's
        (18.0, 8.0, 6.0, 3.0, 6.0, 3.0, True),  # exactly at the factor
        (18.1, 8.0, 6.0, 3.0, 6.0, 3.0167, False),
        (5.0, 8.0, 6.0, 1.0, 6.0, 0.83333, True),  # better than both
        (20.0, None, 6.0, 3.0, 6.0, 3.3333, False),  # post could not be measured
        (9.0, 8.0, math.inf, 3.0, 8.0, 1.125, True),  # a reference that overflows is ignored
        (math.inf, 8.0, 6.0, 3.0, 6.0, None, False),  # not finite: None, JSON has no Inf
        (math.nan, 8.0, 6.0, 3.0, 6.0, None, False),
        (9.0, None, None, 3.0, None, None, False),  # nothing to compare with: not a pass
    ],
)
def test_the_merged_perplexity_is_compared_with_the_better_reference(
    merged, post, new_base, factor, better, ratio, passed
):
    verdict = perplexity_verdict(merged, {"post": post, "new_base": new_base}, factor)
    assert verdict["better"] == better
    assert verdict["ratio"] == (ratio if ratio is None else pytest.approx(ratio, rel=1e-4))
    assert verdict["passed"] is passed
    assert verdict["factor"] == factor


def test_without_references_a_finite_perplexity_passes_alone():
    assert perplexity_verdict(12.0, {}, 3.0) == {
        "merged": 12.0,
        "better": None,
        "ratio": None,
        "factor": 3.0,
        "passed": True,
    }
    assert perplexity_verdict(math.nan, {}, 3.0)["passed"] is False


SPECIAL = {0, 1, 2}


@pytest.mark.parametrize(
    ("tokens", "text", "problem"),
    [
        ([40, 47, 54, 61, 2], "ELSZ", None),
        ([7], "4", None),  # a one-token answer is an answer
        ([], "", "no tokens"),
        ([2], "", "only special tokens"),
        ([1, 0, 2], "", "only special tokens"),
        ([3, 3, 2], "  ", "only whitespace"),
        ([33] * 16, ">" * 16, "one token repeated (16 of 16 are token 33)"),
        ([40] + [33] * 15, "E" + ">" * 15, "one token repeated (15 of 16 are token 33)"),
        ([40, 41, 33, 33, 33, 33], "EF>>>>", None),
    ],
)
def test_degenerate_answers(tokens, text, problem):
    assert degeneracy(tokens, SPECIAL, text) == problem


def test_a_failed_report_is_one_line_with_its_numbers():
    report = CheckReport(device="cpu")
    report.record("tokenizer", True, "TokenizersBackend")
    report.record("chat_template", False, "does not render: TemplateError: no | way")
    report.record("perplexity", False, "merged 900 is over 3 x 10")
    error = report.error()
    assert str(error) == (
        "pre-publish check failed: chat template renders: does not render: TemplateError: no | way"
        " (and 1 more failed step(s))"
    )
    assert error.exit_code == 9
    assert error.details == report.to_dict()
    assert error.details["status"] == "failed"
