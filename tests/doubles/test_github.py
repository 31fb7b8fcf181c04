import http.client
import json
from urllib.parse import urlsplit

import pytest
from github import Auth, Github, GithubException, UnknownObjectException

from doubles.github import SECONDARY_RATE_LIMIT, FakeGitHub

TOKEN = "ghs_fake-server-test-token"
REPO = "acme/models"


@pytest.fixture
def fake():
    with FakeGitHub(token=TOKEN) as server:
        server.add_repo(REPO)
        yield server


@pytest.fixture
def gh(fake):
    """PyGithub against the fake: unpaced, no retries, two items a page."""
    with Github(
        auth=Auth.Token(TOKEN),
        base_url=fake.url,
        per_page=2,
        retry=None,
        seconds_between_requests=0,
        seconds_between_writes=0,
    ) as client:
        yield client


def call(fake, method, path, body=None, authorization=f"token {TOKEN}"):
    """One raw request: (status, headers, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(fake.url).port, timeout=5)
    headers = {"Authorization": authorization} if authorization else {}
    try:
        connection.request(method, path, json.dumps(body) if body else None, headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("authorization", [None, "token nope", f"Basic {TOKEN}"])
def test_requests_need_the_token(fake, authorization):
    status, _, payload = call(fake, "GET", f"/repos/{REPO}", authorization=authorization)
    assert (status, payload["message"]) == (401, "Bad credentials")
    assert fake.requests[-1].status == 401
    assert TOKEN not in repr(fake.requests)


def test_bearer_tokens_work_too(fake):
    status, _, payload = call(fake, "GET", f"/repos/{REPO}", authorization=f"Bearer {TOKEN}")
    assert (status, payload["full_name"]) == (200, REPO)


def test_issue_lifecycle_through_pygithub(fake, gh):
    repo = gh.get_repo(REPO)
    assert repo.url == f"{fake.url}/repos/{REPO}"
    with pytest.raises(UnknownObjectException):
        repo.get_label("paramdelta")
    repo.create_label("paramdelta", "5319e7", "bot issues")
    assert repo.get_label("paramdelta").description == "bot issues"
    issue = repo.create_issue(title="broken", body="<!-- marker -->", labels=["paramdelta"])
    assert (issue.number, issue.html_url) == (1, f"{fake.url}/{REPO}/issues/1")
    comment = issue.create_comment("still broken")
    assert comment.html_url.startswith(f"{fake.url}/{REPO}/issues/1#issuecomment-")
    issue.edit(state="closed", state_reason="completed")
    assert issue.state == "closed"
    [stored] = fake.issues(REPO)
    assert (stored.title, stored.body, stored.labels) == (
        "broken",
        "<!-- marker -->",
        ["paramdelta"],
    )
    assert (stored.state, stored.state_reason, stored.comments) == (
        "closed",
        "completed",
        ["still broken"],
    )
    assert fake.labels(REPO) == ["paramdelta"]


def test_issues_filter_by_state_and_label_newest_first_across_pages(fake, gh):
    for n in range(1, 6):
        fake.add_issue(
            REPO, f"bot {n}", labels=["paramdelta"], state="closed" if n == 2 else "open"
        )
    fake.add_issue(REPO, "human", labels=["bug"])
    repo = gh.get_repo(REPO)
    open_bot = repo.get_issues(state="open", labels=["paramdelta"])
    assert [i.title for i in open_bot] == ["bot 5", "bot 4", "bot 3", "bot 1"]
    assert [i.number for i in repo.get_issues(state="all")] == [6, 5, 4, 3, 2, 1]
    pages = [r.query.get("page") for r in fake.requests if r.path.endswith("/issues")]
    assert pages == [None, "2", None, "2", "3"]


def test_pages_are_linked_like_github(fake):
    for n in range(5):
        fake.add_issue(REPO, f"issue {n}")
    _, headers, page = call(fake, "GET", f"/repos/{REPO}/issues?per_page=2&page=2")
    assert [i["number"] for i in page] == [3, 2]
    base = f"{fake.url}/repos/{REPO}/issues?per_page=2"
    assert headers["Link"] == (
        f'<{base}&page=3>; rel="next", <{base}&page=3>; rel="last",'
        f' <{base}&page=1>; rel="first", <{base}&page=1>; rel="prev"'
    )


def test_faults_match_method_and_path_then_run_out(fake):
    fake.faults.add(
        method="POST", path=r"/issues$", status=500, headers={}, body={"message": "x"}, times=2
    )
    fake.faults.add(path=r"/labels/", status=403)
    assert call(fake, "GET", f"/repos/{REPO}/issues")[0] == 200
    statuses = [call(fake, "POST", f"/repos/{REPO}/issues", {"title": "t"})[0] for _ in range(3)]
    assert statuses == [500, 500, 201]
    status, headers, payload = call(fake, "GET", f"/repos/{REPO}/labels/bug")
    assert (status, headers["Retry-After"], payload["message"]) == (403, "0", SECONDARY_RATE_LIMIT)
    assert call(fake, "GET", f"/repos/{REPO}/labels/bug")[0] == 404
    assert [i.title for i in fake.issues(REPO)] == ["t"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/repos/acme/other", None, 404, "Not Found"),
        ("GET", f"/repos/{REPO}/pulls", None, 404, "Not Found"),
        ("GET", f"/repos/{REPO}/issues/9", None, 404, "Not Found"),
        ("POST", f"/repos/{REPO}/issues", {"body": "no title"}, 422, "Validation Failed"),
        ("PATCH", f"/repos/{REPO}/issues/1", {"state": "gone"}, 422, "Validation Failed"),
        ("POST", f"/repos/{REPO}/labels", {"name": "bug"}, 422, "Validation Failed"),
    ],
)
def test_errors_look_like_github(fake, method, path, body, status, message):
    fake.add_issue(REPO, "seed", labels=["bug"])
    got_status, _, payload = call(fake, method, path, body)
    assert (got_status, payload["message"]) == (status, message)


def test_pygithub_sees_errors_as_github_exceptions(fake, gh):
    repo = gh.get_repo(REPO)
    repo.create_label("bug", "ff0000")
    with pytest.raises(GithubException) as e:
        repo.create_label("bug", "ff0000")
    assert e.value.status == 422
    assert e.value.data["errors"] == [
        {"resource": "Label", "field": "name", "code": "already_exists"}
    ]


def test_stop_closes_the_server():
    fake = FakeGitHub().start()
    port = urlsplit(fake.url).port
    fake.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
