"""Every link in README.md and docs/*.md resolves inside the repository (issue 13 item 8).

A user has the repository and nothing else: a relative link must name a file or folder in it, an
anchor (``file.md#heading``) a heading of that file, and no page may send the reader to the design
and research notes of the project's workspace (``research/…``, ``DESIGN.md``, ``STYLE.md``,
``../shared/``), which users do not have. Links inside fenced code blocks are not links.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
WORKSPACE_NOTES = re.compile(r"(?<![\w.-])research/\S|\bDESIGN\.md\b|\bSTYLE\.md\b|\.\./shared/")


def _text(page: Path) -> str:
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def _links(page: Path) -> list[str]:
    return LINK.findall(_text(page))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces → ``-``."""
    heading = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _text(page), re.M)}


def _resolve(page: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = target.partition("#")
    return ((page.parent / path).resolve() if path else page), anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not files of ours
            continue
        path, anchor = _resolve(page, target)
        if not path.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_sends_the_reader_to_workspace_notes(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    found = [f"{number}: {line.strip()}" for number, line in enumerate(lines, 1) if WORKSPACE_NOTES.search(line)]
    assert not found, f"{page.relative_to(ROOT)} cites notes users do not have; copy the fact or cite the paper: {found}"


def test_the_checks_see_links_anchors_and_notes(tmp_path):
    """The parser finds what it must: a link with a title, an anchor, a fenced block skipped."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A heading: `code` here\n[a](other.md#a-heading-code-here \"title\") ![i](img.png)\n"
        "```\n[not](a-link.md)\n```\nsee research/methods.md\n",
        encoding="utf-8",
    )
    assert _links(page) == ["other.md#a-heading-code-here", "img.png"]
    assert _anchors(page) == {"a-heading-code-here"}
    assert WORKSPACE_NOTES.search(page.read_text()) and not WORKSPACE_NOTES.search("form (shared/per-layer)")
