import contextlib
import hashlib
import io
import json
import time

import pytest
from huggingface_hub import ModelCard

from paramdelta.cli import main
from paramdelta.testing.checkpoints import make_trio


@pytest.fixture
def merged(tmp_path):
    """A directory to publish: what `paramdelta merge --output` writes."""
    trio = make_trio(tmp_path / "trio", max_shard_size=60_000)
    out = tmp_path / "merged"
    argv = ["merge", "--output", str(out), "--shard-size", "60KB"]
    for role, path in trio.items():
        argv += [f"--{role.replace('_', '-')}", str(path)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return out


def _published(merged):
    """What a publish of a merged folder commits: all but the writer's output marker."""
    return sorted(p.name for p in merged.iterdir() if p.name != ".paramdelta-output")


@pytest.fixture
def token(hub_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub_token)
    return hub_token


def test_publish_is_one_commit_of_every_file(merged, fake_hub, token, capsys):
    assert (
        main(["publish", str(merged), "--repo", "me/model", "--private", "--format", "json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    files = _published(merged)
    assert (result["files"], result["skipped"]) == (files, [])  # the output marker stays local
    (ours, _initial) = fake_hub.commits("me/model")
    assert result["commit_sha"] == ours.oid
    assert ours.title == "Upload ParamΔ merge"
    assert sorted(fake_hub.list_files("me/model")) == sorted([".gitattributes", *files])
    assert {"README.md", "paramdelta.json", "model.safetensors.index.json"} <= set(files)
    for name in set(files) - {"README.md", "paramdelta.json"}:
        assert fake_hub.read_file("me/model", name) == (merged / name).read_bytes()
    assert fake_hub.store.get("me/model").private

    # The record and card now name the repo they were published to.
    local = json.loads((merged / "paramdelta.json").read_text())
    record = json.loads(fake_hub.read_file("me/model", "paramdelta.json"))
    assert local["output"]["repo"] is None and "files" not in local["output"]
    # ... and the content of the weights committed beside it, as the Hub may list them.
    weights = {
        name: [f"sha256:{hashlib.sha256((merged / name).read_bytes()).hexdigest()}"]
        for name in files
        if name.endswith(".safetensors")
    }
    index = (merged / "model.safetensors.index.json").read_bytes()
    git_blob = hashlib.sha1(b"blob %d\0" % len(index) + index)  # noqa: S324 - git's blob id
    weights["model.safetensors.index.json"] = [
        f"sha256:{hashlib.sha256(index).hexdigest()}",
        f"blob:{git_blob.hexdigest()}",
    ]
    output = {**local["output"], "repo": "me/model", "files": weights}
    # A local input leaves the machine by its folder's name: the path stays in DIR's record.
    assert [c["path"] for c in local["checkpoints"]] == [
        str(merged.parent / "trio" / role) for role in ("base", "post", "new_base")
    ]
    named = [{**c, "path": c["path"].rpartition("/")[2]} for c in local["checkpoints"]]
    assert record == {**local, "checkpoints": named, "output": output}
    card = ModelCard(fake_hub.read_file("me/model", "README.md").decode())
    assert str(merged.parent) not in card.content
    assert card.text.lstrip().startswith("# me/model\n")
    assert 'AutoTokenizer.from_pretrained("me/model")' in card.text


def test_publish_needs_the_record_merge_writes(merged, tmp_path, capsys):
    plain = make_trio(tmp_path / "plain")["new_base"]
    assert main(["publish", str(plain), "--repo", "me/x"]) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: {plain}: no paramdelta.json; `publish` takes a directory written"
        " by `paramdelta merge --output`, which records the merge's lineage there\n"
    )
    (merged / "model-00002-of-00004.safetensors").unlink()
    assert main(["publish", str(merged), "--repo", "me/x", "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: {merged / 'paramdelta.json'}: names the shard"
        f" model-00002-of-00004.safetensors, which {merged} does not have\n"
    )


def test_publishing_an_output_without_a_tokenizer_says_so(tmp_path, fake_hub, capsys):
    trio = make_trio(tmp_path / "trio")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (trio["post"] / name).unlink()
    argv = ["merge", "--output", str(tmp_path / "out")]
    for role, path in trio.items():
        argv += [f"--{role.replace('_', '-')}", str(path)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["publish", str(tmp_path / "out"), "--repo", "me/x", "--dry-run"]) == 0
    assert capsys.readouterr().err == (
        "paramdelta: warning: the output has no tokenizer (post model post ships none);"
        " AutoTokenizer cannot load it\n"
    )


def test_publish_as_pull_request(merged, fake_hub, token, capsys):
    fake_hub.create_repo("me/model")
    head = fake_hub.head("me/model")
    assert (
        main(["publish", str(merged), "--repo", "me/model", "--pr", "--commit-message", "Try this"])
        == 0
    )
    (pr,) = fake_hub.pull_requests("me/model")
    assert capsys.readouterr().out == (
        f"opened pull request {fake_hub.url}/me/model/discussions/1 ({len(_published(merged))} files)\n"
    )
    assert (pr.ref, pr.title) == ("refs/pr/1", "Try this")
    assert fake_hub.head("me/model") == head


@pytest.mark.parametrize("pr", [False, True])
def test_publishing_the_same_files_again_commits_nothing(merged, fake_hub, token, capsys, pr):
    """No empty commit, no empty pull request, and no claim of either: the user is told so."""
    assert main(["publish", str(merged), "--repo", "me/model"]) == 0
    head = fake_hub.head("me/model")
    capsys.readouterr()
    fake_hub.clear_requests()

    again = ["publish", str(merged), "--repo", "me/model", *(["--pr"] if pr else [])]
    assert main(again) == 0
    out, err = capsys.readouterr()
    files = len(_published(merged))
    assert out == (
        f"me/model@main is already up to date, nothing committed"
        f" (its {files} files are the same: {fake_hub.url}/me/model/commit/{head})\n"
    )
    assert "No files have been modified" not in err
    assert fake_hub.head("me/model") == head and len(fake_hub.commits("me/model")) == 2
    assert fake_hub.pull_requests("me/model") == []
    sent = {(r.method, r.path.rsplit("/", 2)[-2]) for r in fake_hub.requests}
    assert not sent & {("POST", "preupload"), ("POST", "commit")}  # nothing uploaded either

    assert main([*again, "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["up_to_date"], result["commit_sha"], result["pr_url"]) == (True, head, None)


def test_a_changed_file_is_committed_again(merged, fake_hub, token, capsys):
    assert main(["publish", str(merged), "--repo", "me/model"]) == 0
    (merged / "config.json").write_text('{"model_type": "llama", "changed": true}\n')
    capsys.readouterr()
    assert main(["publish", str(merged), "--repo", "me/model"]) == 0
    ours = fake_hub.commits("me/model")[0]
    assert capsys.readouterr().out.startswith("published ")
    assert ours.oid == fake_hub.head("me/model") and len(fake_hub.commits("me/model")) == 3
    assert b'"changed": true' in fake_hub.read_file("me/model", "config.json")


def test_dry_run_sends_nothing(merged, fake_hub, capsys):
    fake_hub.clear_requests()
    assert main(["publish", str(merged), "--repo", "me/model", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"would commit {len(out) - 1} files to me/model@main:"
    assert "  config.json" in out and "  README.md" in out and "  paramdelta.json" in out
    assert fake_hub.requests == []


def test_usage_errors(merged, tmp_path, capsys):
    assert main(["publish", str(merged), "--repo", "not-a-repo"]) == 2
    assert (
        capsys.readouterr().err
        == "paramdelta: error: --repo 'not-a-repo': expected a Hub repo id like org/name\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["publish", str(empty), "--repo", "me/x"]) == 2
    assert (
        capsys.readouterr().err
        == f"paramdelta: error: {empty}: not a directory with files to publish\n"
    )


def test_bad_token_is_exit_4_and_never_printed(merged, fake_hub, tmp_path, capfd):
    token_file = tmp_path / "token"
    token_file.write_text("hf_not_the_right_one_123\n")
    assert (
        main(["publish", str(merged), "--repo", "me/model", "--token-file", str(token_file)]) == 4
    )
    captured = capfd.readouterr()
    assert (
        captured.err
        == "paramdelta: error: me/model: HTTP 401: not authorised (check HF_TOKEN or --token-file)\n"
    )
    assert "hf_not_the_right_one_123" not in captured.out + captured.err


def test_trusted_publishing_needs_no_stored_token(
    merged, fake_hub, oidc_id_token, monkeypatch, capfd
):
    """HF_OIDC_RESOURCE + the CI's OIDC id token: huggingface_hub exchanges it for a Hub token."""
    fake_hub.create_repo("me/model")  # trusted publishers write to an existing repo
    fake_hub.trust_publisher("me/model")
    monkeypatch.setenv("HF_OIDC_RESOURCE", "me/model")
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", oidc_id_token)
    assert main(["publish", str(merged), "--repo", "me/model"]) == 0
    assert "config.json" in fake_hub.list_files("me/model")
    assert any(r.path == "/oauth/token" for r in fake_hub.requests)
    captured = capfd.readouterr()
    assert oidc_id_token not in captured.out + captured.err


@pytest.mark.slow  # waits out real windows and lifetimes
def test_a_publish_outliving_its_trusted_publishing_token_still_commits(
    merged, fake_hub, oidc_id_token, monkeypatch
):
    """Tokens of one second, uploads of more: each request sends a token of its moment."""
    import huggingface_hub._commit_api
    import huggingface_hub.utils._auth

    fake_hub.create_repo("me/model")
    fake_hub.trust_publisher("me/model")
    monkeypatch.setattr(fake_hub.credentials, "lifetime", 1)
    monkeypatch.setattr(huggingface_hub.utils._auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("HF_OIDC_RESOURCE", "me/model")
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", oidc_id_token)
    real = huggingface_hub._commit_api._upload_files

    def slow(**kwargs):
        real(**kwargs)
        time.sleep(0.8 * len(kwargs["additions"]))  # slow transfers: tokens expire meanwhile

    monkeypatch.setattr(huggingface_hub._commit_api, "_upload_files", slow)
    start = time.monotonic()
    assert main(["publish", str(merged), "--repo", "me/model"]) == 0
    assert time.monotonic() - start > 2 * (1 + fake_hub.credentials.LEEWAY)
    # the weights and donated files as merged (card and record are rendered again for the repo)
    for name in set(_published(merged)) - {"README.md", "paramdelta.json"}:
        assert fake_hub.read_file("me/model", name) == (merged / name).read_bytes()
    exchanges = [r.status for r in fake_hub.requests if r.path == "/oauth/token"]
    assert len(exchanges) >= 3 and set(exchanges) == {200}
    assert not [r for r in fake_hub.requests if r.status == 401]
    assert fake_hub.lfs_bytes_uploaded == 0


def test_a_refused_token_exchange_is_a_one_line_hub_error(
    merged, fake_hub, oidc_id_token, capfd, monkeypatch
):
    import huggingface_hub.utils._auth

    fake_hub.create_repo("me/model")  # no trusted publisher configured for it
    monkeypatch.setattr(huggingface_hub.utils._auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("HF_OIDC_RESOURCE", "me/model")
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", oidc_id_token)
    assert main(["publish", str(merged), "--repo", "me/model"]) == 4
    assert capfd.readouterr().err == (
        "paramdelta: error: me/model: trusted publishing (HF_OIDC_RESOURCE=me/model): the Hub"
        " refused the token exchange (HTTP 400: invalid_grant: no trusted publisher is"
        " configured for me/model)\n"
    )
