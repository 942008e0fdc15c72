"""What the docs tests read from the Markdown pages: code blocks, links and the anchors GitHub gives headings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Every page of the documentation (the same list the generator rewrites).
PAGES = [REPO_ROOT / "README.md", REPO_ROOT / "SECURITY.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Block:
    page: Path
    lang: str
    body: str

    def commands(self) -> list[str]:
        """The block's command lines, backslash continuations joined, comment-only lines left out."""
        out: list[str] = []
        for line in self.body.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(" ".join(line.split()))
        return out


def blocks(page: Path) -> list[Block]:
    return [Block(page, m.group("lang"), m.group("body")) for m in _FENCE.finditer(page.read_text())]


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (where links are not links)."""
    text = _FENCE.sub("", text)
    return re.sub(r"(`+).*?\1", "", text, flags=re.S)


def links(page: Path) -> list[str]:
    return [m.group("target") for m in _LINK.finditer(prose(page.read_text()))]


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page: each heading's slug (lower case; punctuation other than `-` and `_`
    dropped; spaces to `-`; a repeated slug gets `-1`, `-2`, …), plus explicit `<a id>`/`<a name>` anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    found.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', text))
    return found
