"""The Hub's rate limits: requests pace themselves within a quota; a 429 is waited out."""

import logging
import time

import pytest

from paramdelta.errors import HubError
from paramdelta.hub.client import Hub, reset_client


@pytest.fixture(autouse=True)
def fresh_pacer():
    """The pacer is the process's: each test starts with no quota known and leaves none
    behind, and the next Hub reads PARAMDELTA_HUB_MAX_RATE_WAIT again."""
    reset_client()
    yield
    reset_client()


@pytest.fixture
def repo(fake_hub):
    fake_hub.create_repo("org/model")
    fake_hub.commit("org/model", {"config.json": b"{}"})
    return "org/model"


@pytest.mark.slow  # waits out real windows and lifetimes
def test_requests_wait_for_the_window_instead_of_meeting_429s(
    fake_hub, hub_token, repo, caplog, monkeypatch
):
    """What `plan` over many targets does: more requests than the quota, none refused."""
    # caplog listens on the root logger, which `main()` (in an earlier test) cuts us off from.
    monkeypatch.setattr(logging.getLogger("paramdelta"), "propagate", True)
    fake_hub.rate_limits.configure(api=3, window=1)
    hub = Hub(token=hub_token, endpoint=fake_hub.url)
    waits: list[float] = []
    hub.pacer.sleep = lambda seconds: (waits.append(seconds), time.sleep(seconds))
    with caplog.at_level(logging.WARNING, "paramdelta.hub"):
        shas = {hub.repo_files(repo).sha for _ in range(7)}
    assert shas == {fake_hub.head(repo)}
    assert fake_hub.rate_limits.refused == 0
    assert len(waits) == 2 and all(1.0 < w <= 2.0 for w in waits)
    assert "Hub rate limit: the 'api' quota is spent; the window resets in 1 s: waiting" in (
        caplog.text
    )
    assert hub.pacer.waited == pytest.approx(sum(waits))


def test_a_429_with_ratelimit_headers_is_waited_out(fake_hub, hub_token, repo):
    hub = Hub(token=hub_token, endpoint=fake_hub.url)
    waits: list[float] = []
    hub.sleep = hub.pacer.sleep = waits.append  # Hub._retry's waits, and the pacer's
    fake_hub.faults.add(
        path="/api/models/org/model",
        status=429,
        headers={
            "RateLimit": '"api";r=0;t=7',
            "RateLimit-Policy": '"fixed window";"api";q=5;w=300',
        },
    )
    assert hub.repo_files(repo).sha == fake_hub.head(repo)
    assert waits == [pytest.approx(8.0, abs=0.1)]  # the reset and a second: not 1, 2, 4 ... s


def test_a_reset_beyond_the_bound_fails_at_once(fake_hub, hub_token, repo, monkeypatch):
    monkeypatch.setenv("PARAMDELTA_HUB_MAX_RATE_WAIT", "60")
    hub = Hub(token=hub_token, endpoint=fake_hub.url)
    hub.sleep = hub.pacer.sleep = lambda seconds: pytest.fail("no wait beyond the bound")
    fake_hub.faults.add(
        path="/api/models/org/model",
        status=429,
        headers={"RateLimit": '"api";r=0;t=250'},
        body='{"error": "you have reached your \'api\' rate limit. Retry after 250 seconds"}',
    )
    with pytest.raises(HubError) as e:
        hub.repo_files(repo)
    assert str(e.value) == (
        "org/model@main: HTTP 429: you have reached your 'api' rate limit. Retry after 250 seconds"
    )
    # Once the quota is known to be spent, the next request is not even sent.
    reset_client()  # a new pacer (the 429 above left the 'api' quota spent for 250 s)
    hub = Hub(token=hub_token, endpoint=fake_hub.url)
    fake_hub.rate_limits.configure(api=1, window=200)
    hub.repo_files(repo)
    fake_hub.clear_requests()
    with pytest.raises(HubError) as e:
        hub.repo_files(repo)
    assert str(e.value) == (
        "Hub rate limit: the 'api' quota is spent; the window resets in 200 s,"
        " more than PARAMDELTA_HUB_MAX_RATE_WAIT=60 s allows; try again later"
    )
    assert fake_hub.requests == []
