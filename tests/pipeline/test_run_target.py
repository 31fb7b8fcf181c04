"""One target's run: every way it can end becomes a result, and the check decides the commit."""

import errno

import pytest

from paramdelta.engine.merge_plan import Vocabulary, VocabularyError
from paramdelta.errors import CheckError, HubError
from paramdelta.hub.client import RepoFiles
from paramdelta.pipeline.plan import TargetPlan
from paramdelta.pipeline.run_target import (
    VOCAB_FIX,
    RunOptions,
    check_staged,
    commit_message,
    failure,
)
from paramdelta.pipeline.watchlist import RepoRef, Target

SHAS = {"base": "a" * 40, "post": "b" * 40, "new_base": "c" * 40}
REPOS = {"base": "org/base", "post": "org/post", "new_base": "org/new"}


def _plan(**target_fields):
    target = Target(
        name="t",
        base=RepoRef("org/base"),
        post=RepoRef("org/post"),
        new_base=RepoRef("org/new"),
        output="me/out",
        **target_fields,
    )
    checkpoints = {
        role: RepoFiles(REPOS[role], "main", SHAS[role], {}, {})
        for role in ("base", "post", "new_base")
    }
    return TargetPlan(target, "pending", checkpoints=checkpoints, output_repo="me/out")


def test_a_failed_check_is_check_failed_with_its_numbers():
    details = {"status": "failed", "steps": []}
    result = failure("t", _plan(), CheckError("pre-publish check failed: perplexity", details), 2.0)
    assert (result.status, result.exit_code, result.error) == (
        "check-failed",
        9,
        "pre-publish check failed: perplexity",
    )
    assert result.check == details
    assert (result.new_base_repo, result.new_base_sha) == ("org/new", "c" * 40)
    assert result.duration_s == 2.0


def test_a_vocabulary_mismatch_names_the_watchlist_fix():
    shared = Vocabulary.shared_rows("shared", {"base": 256, "post": 260, "new_base": 256})
    result = failure("t", _plan(), VocabularyError("lm_head.weight", shared))
    assert result.status == "failed" and result.exit_code == 3
    assert result.error.startswith("vocabulary size differs in tensor 'lm_head.weight'")
    assert f"; {VOCAB_FIX} to merge the 256 rows all three share" in result.error
    assert VocabularyError.FLAG not in result.error  # `run` takes no --vocab-policy


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (HubError("org/new@main: 503"), 4, "org/new@main: 503"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/x"),
            7,
            "/out/x: No space left on device",
        ),
        (
            RuntimeError("boom"),
            1,
            "unexpected RuntimeError: boom (a bug; set PARAMDELTA_DEBUG=1 for a traceback)",
        ),
        (KeyboardInterrupt(), 130, "interrupted (SIGINT)"),
    ],
)
def test_any_other_ending_is_failed_with_its_exit_code(error, code, message):
    result = failure("t", _plan(), error)
    assert (result.status, result.exit_code, result.error) == ("failed", code, message)


def test_a_target_without_a_plan_is_named_alone():
    result = failure("broken", None, HubError("org/new: 401"))
    assert (result.target, result.status, result.exit_code, result.new_base_repo) == (
        "broken",
        "failed",
        4,
        None,
    )


def test_a_skipped_check_says_why_and_loads_nothing():
    report = check_staged(None, _plan(), RunOptions(), "transformers is not installed")
    assert report.to_dict()["status"] == "not-checked"
    assert report.reason == "transformers is not installed"


def test_the_commit_message_names_the_post_model_and_the_new_base_commit():
    assert commit_message(_plan()) == "ParamΔ: org/post onto org/new@ccccccc"
