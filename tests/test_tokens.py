import pytest

from paramdelta import tokens
from paramdelta.errors import UsageError
from paramdelta.tokens import TOKEN_ENV_VARS, hub_token, read_token_file, redact, register, shorten


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """A registry of its own for each test: what one registers does not leak into the next."""
    monkeypatch.setattr(tokens, "_registered", set())
    for name in (*TOKEN_ENV_VARS, "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


def test_a_registered_secret_is_redacted_wherever_it_appears():
    assert register("hf_abcdef123") == "hf_abcdef123"
    assert redact("token hf_abcdef123, again hf_abcdef123.") == "token ***, again ***."
    assert redact("hf_abcdef12") == "hf_abcdef12"  # a different string: left alone


def test_short_or_empty_values_are_returned_but_not_registered():
    assert register("abcde") == "abcde"  # five characters: an ordinary word would vanish
    assert register("") == "" and register(None) is None
    assert redact("abcde is a word") == "abcde is a word"
    register("abcdef")  # six: registered
    assert redact("abcdef is a secret") == "*** is a secret"


def test_the_longer_of_two_overlapping_secrets_goes_first():
    register("hf_secret")
    register("hf_secret_and_more")
    assert redact("a hf_secret_and_more b hf_secret") == "a *** b ***"


@pytest.mark.parametrize("name", TOKEN_ENV_VARS)
def test_every_token_variable_is_redacted_without_registration(monkeypatch, name):
    monkeypatch.setenv(name, "env-held-secret")
    assert redact("sent env-held-secret") == "sent ***"
    monkeypatch.setenv(name, "short")  # too short to redact
    assert redact("sent short") == "sent short"


def test_other_variables_are_not_secrets(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT_SECRETISH", "not-a-token-value")
    assert redact("not-a-token-value") == "not-a-token-value"


def test_shorten_redacts_before_it_cuts():
    secret = register("hf_0123456789abcdef")
    text = "x" * 10 + secret + "y" * 10  # 39 characters; the cut at 20 falls inside the token
    assert shorten(text, 20) == "xxxxxxxxxx***yyyyyy…"
    assert shorten(text, 20, keep="end") == "…xxxxxx***yyyyyyyyyy"
    assert len(shorten(text, 20)) == 20


def test_shorten_keeps_short_text_whole_and_marks_a_cut():
    assert shorten("abc", 3) == "abc"
    assert shorten("abcd", 3) == "ab…"
    assert shorten("abcd", 3, keep="end") == "…cd"


def test_a_token_file_is_stripped_and_registered(tmp_path):
    path = tmp_path / "token"
    path.write_text("  hf_from_a_token_file\n")
    assert read_token_file(path) == "hf_from_a_token_file"
    assert redact("hf_from_a_token_file") == "***"
    assert hub_token(str(path)) == "hf_from_a_token_file"


def test_a_missing_or_empty_token_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as e:
        read_token_file(tmp_path / "absent")
    assert str(e.value) == f"--token-file {tmp_path / 'absent'}: No such file or directory"
    (tmp_path / "blank").write_text(" \n\t\n")
    with pytest.raises(UsageError) as e:
        read_token_file(tmp_path / "blank")
    assert str(e.value) == f"--token-file {tmp_path / 'blank'}: file is empty"
    with pytest.raises(UsageError) as e:
        read_token_file(tmp_path)
    assert str(e.value) == f"--token-file {tmp_path}: Is a directory"


def test_the_hub_token_comes_from_the_file_then_trusted_publishing_then_hf_token(
    tmp_path, monkeypatch
):
    path = tmp_path / "token"
    path.write_text("hf_file_token_wins")
    monkeypatch.setenv("HF_TOKEN", "hf_environment_token")
    monkeypatch.setenv("HF_OIDC_RESOURCE", "me/model")
    assert hub_token(str(path)) == "hf_file_token_wins"
    assert hub_token() is True  # huggingface_hub exchanges the OIDC token per request
    monkeypatch.delenv("HF_OIDC_RESOURCE")
    assert hub_token() == "hf_environment_token"
    assert tokens._registered == {"hf_file_token_wins", "hf_environment_token"}
    monkeypatch.delenv("HF_TOKEN")
    assert hub_token() is None  # no saved login in the tests' HF_HOME


def test_the_github_token_is_github_token_else_gh_token_and_registered(monkeypatch):
    assert tokens.github_token() is None
    monkeypatch.setenv("GH_TOKEN", "ghp_the_cli_token")
    assert tokens.github_token() == "ghp_the_cli_token"
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_the_jobs_token")
    assert tokens.github_token() == "ghs_the_jobs_token"
    assert tokens._registered == {"ghp_the_cli_token", "ghs_the_jobs_token"}
    monkeypatch.setenv("GITHUB_TOKEN", "")  # set but empty: the next source
    assert tokens.github_token() == "ghp_the_cli_token"
