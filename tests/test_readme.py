"""README.md is generated, short, and every relative link in it and in docs/*.md points to something that exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 250
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MEASURED = re.compile(r"<!--\s*MEASURED:(.*?)-->", re.S)


def _build_module():
    spec = importlib.util.spec_from_file_location("build_readme", ROOT / "scripts" / "build_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+?)#*\s*$", FENCE.sub("", text), flags=re.M)}


def links(text: str) -> list[str]:
    """Link targets outside code blocks and inline code."""
    return LINK.findall(INLINE_CODE.sub("", FENCE.sub("", text)))


def test_readme_is_built_from_its_sources():
    built = _build_module().build()
    current = (ROOT / "README.md").read_text(encoding="utf-8")
    assert current == built, "README.md differs from its sources: run `python scripts/build_readme.py`"


def test_readme_is_short():
    n = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}): move detail to a docs/ page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Files and heading anchors. A missing file is allowed only while a `<!-- MEASURED: ... -->` placeholder
    in the same page names it (a figure another measurement will produce)."""
    text = page.read_text(encoding="utf-8")
    pending = " ".join(MEASURED.findall(text))
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            if path not in pending and str(dest.relative_to(ROOT)) not in pending:
                broken.append(f"{target}: no such file")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n  " + "\n  ".join(broken)


def test_the_link_checker_can_fail(tmp_path):
    """The checks above see a missing file, a missing anchor, and skip code."""
    (tmp_path / "a.md").write_text("# Top\n\n## A `b` c\n")
    text = "[x](a.md#a-b-c) [y](a.md#nope) [z](missing.png) `[q](in-code.md)`\n```\n[r](fenced.md)\n```\n"
    found = links(text)
    assert found == ["a.md#a-b-c", "a.md#nope", "missing.png"]
    assert anchors((tmp_path / "a.md").read_text()) == {"top", "a-b-c"}
