"""The fake Hub's accounts and discussions API, driven by the real huggingface_hub client."""

from __future__ import annotations

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from paramdelta.testing.hub import AUTHOR

REPO = "org/model"
STRANGER_TOKEN = "hf_stranger_token"


@pytest.fixture
def stranger(fake_hub):
    fake_hub.add_user("mallory", STRANGER_TOKEN)
    return HfApi(endpoint=fake_hub.url, token=STRANGER_TOKEN)


def test_whoami_names_the_account_of_the_token(fake_hub, hf_api, stranger):
    assert hf_api.whoami()["name"] == AUTHOR
    assert stranger.whoami()["name"] == "mallory"
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi(endpoint=fake_hub.url, token="hf_nobody_knows_it").whoami()


def test_pull_requests_are_discussions_with_their_author(fake_hub, hf_api, stranger):
    fake_hub.create_repo(REPO)
    ours = hf_api.create_commit(
        REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="ours", create_pr=True
    )
    theirs = fake_hub.open_pull_request(REPO, {"b.txt": b"b"}, author="mallory", title="theirs")
    found = list(hf_api.get_repo_discussions(REPO))
    assert [(d.num, d.title, d.author, d.status, d.is_pull_request) for d in found] == [
        (theirs, "theirs", "mallory", "open", True),
        (ours.pr_num, "ours", AUTHOR, "open", True),
    ]
    mine = hf_api.get_repo_discussions(
        REPO, author=AUTHOR, discussion_type="pull_request", discussion_status="open"
    )
    assert [d.num for d in mine] == [ours.pr_num]
    assert found[0].git_reference == f"refs/pr/{theirs}"


def test_listings_are_paginated(fake_hub, hf_api, monkeypatch):
    fake_hub.create_repo(REPO)
    for n in range(5):
        fake_hub.open_pull_request(REPO, {f"{n}.txt": b"x"}, author=AUTHOR, title=f"pr {n}")
    monkeypatch.setattr(fake_hub, "page_size", 2)
    assert [d.num for d in hf_api.get_repo_discussions(REPO)] == [5, 4, 3, 2, 1]
    pages = [r for r in fake_hub.requests if r.path.endswith("/discussions")]
    assert [r.query["p"] for r in pages] == ["0", "1", "2"]


def test_closing_with_a_comment_and_commenting(fake_hub, hf_api, stranger):
    fake_hub.create_repo(REPO)
    pr = fake_hub.open_pull_request(REPO, {"a.txt": b"a"}, author=AUTHOR)
    event = hf_api.change_discussion_status(REPO, pr, "closed", comment="Superseded by #2")
    assert (event.type, event.new_status, event.author) == ("status-change", "closed", AUTHOR)
    stranger.comment_discussion(REPO, pr, "why?")
    discussion = fake_hub.discussion(REPO, pr)
    assert discussion.status == "closed"
    assert [(e.type, e.author, e.data.get("latest", {}).get("raw")) for e in discussion.events] == [
        ("comment", AUTHOR, "Superseded by #2"),
        ("status-change", AUTHOR, None),
        ("comment", "mallory", "why?"),
    ]
    assert [d.num for d in hf_api.get_repo_discussions(REPO, discussion_status="open")] == []


def test_only_the_author_or_a_writer_may_close(fake_hub, hf_api, stranger):
    fake_hub.create_repo(REPO)
    ours = fake_hub.open_pull_request(REPO, {"a.txt": b"a"}, author=AUTHOR)
    theirs = fake_hub.open_pull_request(REPO, {"b.txt": b"b"}, author="mallory")
    with pytest.raises(HfHubHTTPError) as e:
        stranger.change_discussion_status(REPO, ours, "closed")
    assert e.value.response.status_code == 403
    stranger.change_discussion_status(REPO, theirs, "closed")
    hf_api.change_discussion_status(REPO, theirs, "open")
    assert fake_hub.discussion(REPO, theirs).status == "open"
