import pytest

from paramdelta.rendering import markdown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain text (retried 5 times)", "plain text (retried 5 times)"),
        ("a|b\n\n# heading", "a\\|b # heading"),
        (
            "![img](https://e.test/i.png) <b>&amp;",
            "!\\[img\\](https://e.test/i.png) \\<b\\>\\&amp;",
        ),
        ("`code` *em* _em_ ~~s~~ \\", "\\`code\\` \\*em\\* \\_em\\_ \\~\\~s\\~\\~ \\\\"),
        (None, "-"),
    ],
)
def test_text_cannot_make_markup(value, shown):
    assert markdown.text(value) == shown


def test_code_spans_hold_any_backticks():
    assert markdown.code("org/name@abc") == "`org/name@abc`"
    assert markdown.code("a`b") == "``a`b``"
    assert markdown.code("`x`\nnext") == "`` `x` next ``"


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "https://x.test/a) [b](https://evil.test", "https://x.test/ a", None],
)
def test_only_plain_http_urls_become_links(url):
    assert markdown.link("commit", url) == ("-" if url is None else "commit")


def test_a_plain_url_is_linked():
    url = "https://huggingface.co/acme/m/commit/c0ffee"
    assert markdown.link("commit", url) == f"[commit]({url})"
    assert markdown.url(url) == url
