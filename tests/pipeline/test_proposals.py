"""The bot's own pull requests, against the fake Hub (whole runs: tests/hostile/test_pull_requests.py)."""

import json
import logging

import pytest

from paramdelta.hub.client import Hub
from paramdelta.hub.publisher import PublishResult
from paramdelta.pipeline.proposals import Proposal, close_superseded, own_proposals
from paramdelta.testing.hub import AUTHOR

REPO = "me/out"


def _record(target):
    return json.dumps({"schema_version": 1, "tool": "paramdelta-bot", "target": target}).encode()


@pytest.fixture
def hub(fake_hub, hub_token):
    client = Hub(token=hub_token, endpoint=fake_hub.url)
    client.sleep = lambda seconds: None
    return client


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def warnings():
    """What proposals logs, whether or not `main` has stopped "paramdelta" propagating."""
    logger = logging.getLogger("paramdelta.pipeline.proposals")
    handler = _Records()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def out(fake_hub):
    fake_hub.create_repo(REPO)
    fake_hub.commit(REPO, {"paramdelta.json": _record("t"), "README.md": b"# out"})
    return fake_hub


def _open(fake_hub, files, author=AUTHOR, delete=()):
    return fake_hub.open_pull_request(
        REPO, files, author=author, title="ParamΔ merge", delete=delete
    )


def _new(number, fake_hub):
    url = f"{fake_hub.url}/{REPO}/discussions/{number}"
    return PublishResult(REPO, "main", ["model.safetensors"], pr_url=url, pr_number=number)


def _status(fake_hub, number):
    return fake_hub.discussion(REPO, number).status


def test_own_proposals_are_the_bots_open_pull_requests_newest_first(hub, out):
    first = _open(out, {"paramdelta.json": _record("t")})
    _open(out, {"paramdelta.json": _record("t")}, author="mallory")
    closed = _open(out, {"paramdelta.json": _record("t")})
    out.discussions.change_status(REPO, closed, AUTHOR, "closed")
    last = _open(out, {"paramdelta.json": _record("t"), "x.txt": b"x"})

    proposals = own_proposals(hub, REPO)
    assert [p.number for p in proposals] == [last, first]
    assert [p.files.sha for p in proposals] == [
        out.head(REPO, f"refs/pr/{last}"),
        out.head(REPO, f"refs/pr/{first}"),
    ]
    assert "x.txt" in proposals[0].files.sizes and "x.txt" not in proposals[1].files.sizes
    assert [p.number for p in own_proposals(hub, REPO, limit=1)] == [last]


def test_a_proposal_names_its_ref_and_its_page(hub):
    proposal = Proposal(12, None)
    assert proposal.ref == "refs/pr/12"
    assert proposal.url(hub, "org/x") == f"{hub.endpoint}/org/x/discussions/12"


def test_a_proposal_whose_ref_is_gone_has_no_files(hub, out):
    number = _open(out, {"paramdelta.json": _record("t")})
    del out.store.get(REPO).refs[f"refs/pr/{number}"]
    assert own_proposals(hub, REPO) == [Proposal(number, None)]


def test_without_a_token_or_a_repo_there_are_none(hub, out):
    _open(out, {"paramdelta.json": _record("t")})
    assert own_proposals(Hub(token=None, endpoint=out.url), REPO) == []
    assert own_proposals(hub, "me/no-such-repo") == []


def test_only_the_bots_other_proposals_of_the_same_target_are_closed(hub, out, warnings):
    old = _open(out, {"paramdelta.json": _record("t")})
    strangers = _open(out, {"paramdelta.json": _record("t")}, author="mallory")
    other_target = _open(out, {"paramdelta.json": _record("u")})
    no_record = _open(out, {"x.txt": b"x"}, delete=["paramdelta.json"])  # main's record: gone
    not_a_record = _open(out, {"paramdelta.json": b'{"schema_version": 99, "target": "t"}'})
    ref_gone = _open(out, {"paramdelta.json": _record("t")})
    del out.store.get(REPO).refs[f"refs/pr/{ref_gone}"]
    older = _open(out, {"paramdelta.json": _record("t")})
    new = _open(out, {"paramdelta.json": _record("t")})

    assert close_superseded(hub, REPO, "t", _new(new, out)) == [older, old]
    url = f"{out.url}/{REPO}/discussions/{new}"
    for number in (older, old):
        events = out.discussion(REPO, number).events
        assert [(e.type, e.author) for e in events] == [
            ("comment", AUTHOR),
            ("status-change", AUTHOR),
        ]
        assert events[0].data["latest"]["raw"] == (
            f"Superseded by #{new} ({url}), a merge of newer inputs."
        )
    for number in (strangers, other_target, no_record, not_a_record, ref_gone, new):
        assert _status(out, number) == "open", number
    assert warnings.records == []


def test_a_proposal_that_cannot_be_closed_is_a_warning(hub, out, warnings):
    stuck = _open(out, {"paramdelta.json": _record("t")})
    old = _open(out, {"paramdelta.json": _record("t")})
    new = _open(out, {"paramdelta.json": _record("t")})
    out.faults.add(method="POST", path=f"/discussions/{old}/status$", status=403)

    assert close_superseded(hub, REPO, "t", _new(new, out)) == [stuck]
    assert (_status(out, old), _status(out, stuck), _status(out, new)) == ("open", "closed", "open")
    assert [(r.levelno, r.getMessage()) for r in warnings.records] == [
        (
            logging.WARNING,
            f"could not close refs/pr/{old}: {REPO}#{old}: HTTP 403: not authorised"
            " (check HF_TOKEN or --token-file)",
        )
    ]
