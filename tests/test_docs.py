"""The documentation's links: every relative link of README.md and docs/*.md (pages added
later included) leads to a file of the repository, and an anchor to a heading of it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)  # code blocks: examples, not links
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercased, punctuation dropped, spaces to
    hyphens, a repeated one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(_prose(text)):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    targets = [a or b for a, b in LINK.findall(_prose(page.read_text(encoding="utf-8")))]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:


def broken(page: Path) -> list[str]:
    problems = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            problems.append(f"{page.name}: {link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
            problems.append(f"{page.name}: {link}: no such heading")
    return problems


def test_the_readme_links_every_docs_page():
    linked = {Path(link.partition("#")[0]).name for link in relative_links(ROOT / "README.md")}
    assert {page.name for page in PAGES[1:]} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading(page):
    assert broken(page) == []


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# A page\n\n## Some `code`: here\n\n## Twice\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#some-code-here) [ok](other.md#twice-1) [web](https://x.org/y)\n"
        "```\n[in code](gone.md)\n```\n"
        "[gone](gone.md) [no heading](other.md#nowhere) [self](#a-page)\n"
    )
    assert broken(page) == [
        "page.md: gone.md: no such file",
        "page.md: other.md#nowhere: no such heading",
        "page.md: #a-page: no such heading",
    ]


def test_the_readme_is_a_users_page_and_the_reference_lives_in_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260  # a pitch, quick starts, exit codes and links
    sections = re.findall(r"^##+ (.+)$", _prose(readme), re.M)
    assert sections[:5] == [
        "Try it",
        "Quick start",
        "Merge local checkpoints",
        "Merge from and publish to the Hub",
        "Keep targets current: a watchlist and the Action",
    ]
    assert {"Exit codes", "Documentation"} <= set(sections)
    assert "<!-- ci: demo -->" in readme and "<!-- ci: test -->" in readme
    pages = ("merging", "watchlist", "check-and-delta", "action", "card-and-lineage")
    for page in (*pages, "performance", "code-map"):
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
