"""Every relative link and anchor of the docs resolves; the pages speak of the product, never of work items."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from .markdown import PAGES, REPO_ROOT, anchors, links


def _broken(page: Path) -> list[str]:
    found = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path)).resolve() if path else page
        if not resolved.exists():
            found.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved.read_text())):
            found.append(f"{target}: no such anchor")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert _broken(page) == []


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {target.partition("#")[0] for target in links(REPO_ROOT / "README.md")}
    for page in PAGES[2:]:
        assert str(page.relative_to(REPO_ROOT)) in linked, page.name


def test_github_anchor_rules() -> None:
    text = "# Isolation's cost\n## `sidecar run` and [links](x.md)\n## Notes\n## Notes\n```\n# not a heading\n```\n"
    assert anchors(text) == {"isolations-cost", "sidecar-run-and-links", "notes", "notes-1"}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [gone](missing.md) [bad](#nowhere) `[code](no.md)`\n")
    assert _broken(page) == ["missing.md: no such file", "#nowhere: no such anchor"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_pages_name_no_work_item(page: Path) -> None:
    """A reader cannot see the tracker: "the issue's target" must be said as what the product aims at."""
    hits = re.findall(r"[^.\n]*\b(?:the issue|issue's|issue \d+|of the issue|issues? #?\d+)\b[^.\n]*", page.read_text(),
                      re.I)
    assert hits == []
