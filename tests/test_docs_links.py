"""Every relative link in the README and docs/ leads to a file that exists, and a link to a
section (`file.md#anchor`) to a heading that exists, by GitHub's rule for heading anchors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "export" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of `page`'s headings (outside code blocks); repeats get -1, -2, ..."""
    found: set[str] = set()
    repeats: dict[str, int] = {}
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.*)", line)):
            s = slug(m.group(1))
            n = repeats.get(s, 0)
            repeats[s] = n + 1
            found.add(f"{s}-{n}" if n else s)
    return found


def test_slug_follows_githubs_rule() -> None:
    assert slug("How much of the oracle is attainable (`scripts/ceiling.py`)") == (
        "how-much-of-the-oracle-is-attainable-scriptsceilingpy"
    )
    assert slug("The demo (`make demo`, seed 0)") == "the-demo-make-demo-seed-0"
    assert anchors(ROOT / "docs" / "results.md") >= {"the-demo-make-demo-seed-0"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"
