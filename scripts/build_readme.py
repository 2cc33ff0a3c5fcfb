"""Build README.md from its sources in docs/readme/ and two tables generated from the code.

    python scripts/build_readme.py           # write README.md (after editing docs/readme/*.md, a recipe or a sampler)
    python scripts/build_readme.py --check   # exit 1 when README.md differs from what the sources build

The sources are written with links relative to the repository root (README.md's own place). A line
`<!-- table: recipes -->` becomes the recipes table, read from the headers of src/kuosan/configs/*.yaml exactly
as `kuosan recipes` reads them; `<!-- table: samplers -->` becomes the samplers table, read from
`kuosan.samplers.METHODS`. Neither table can drift from the code: tests/test_readme.py fails when README.md
is stale. Everything else (how each component works, measured tables) lives in docs/*.md, one page per component.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "docs" / "readme"
SECTIONS = ["head", "quickstart", "api", "tables", "layout"]
MAX_LINES = 250


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)])


def recipes_table() -> str:
    """One row per shipped recipe: name, book section, model and paper from its leading comment (the model is
    the title up to its first colon, as `kuosan recipes` prints it)."""
    from kuosan.cli import recipe_files, recipe_header

    rows = []
    for name, path in recipe_files().items():
        h = recipe_header(path)
        rows.append([f"`{name}`", h.get("book", ""), h.get("title", "").split(":")[0], h.get("paper", "")])
    return _table(["recipe", "book", "model", "paper"], rows)


def samplers_table() -> str:
    """One row per registered sampler: paper, book, convergence order, NFE per step, preferred grids."""
    from kuosan.samplers import METHODS

    rows = [
        [f"`{name}`", m.paper, m.book, "stochastic" if m.order is None else str(m.order), m.cost, ", ".join(m.grids)]
        for name, m in METHODS.items()
    ]
    return _table(["method", "paper", "book", "order", "NFE / step", "grids (preferred first)"], rows)


TABLES: dict[str, Callable[[], str]] = {"recipes": recipes_table, "samplers": samplers_table}


def _fill(match: re.Match[str]) -> str:
    name = match.group(1)
    if name not in TABLES:
        raise KeyError(f"docs/readme: unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]()


def build() -> str:
    """The README text: the sources in SECTIONS order, blank-line separated, tables filled in."""
    text = "\n\n".join((SOURCES / f"{name}.md").read_text(encoding="utf-8").strip() for name in SECTIONS)
    text = re.sub(r"^<!-- table: ([\w-]+) -->$", _fill, text, flags=re.M)
    return text.rstrip() + "\n"


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    text = build()
    n = text.count("\n")
    if n > MAX_LINES:
        print(f"README.md would be {n} lines (at most {MAX_LINES}): move detail to docs/", file=sys.stderr)
    if "--check" in argv:
        current = readme.read_text(encoding="utf-8") if readme.exists() else ""
        if current == text:
            print(f"README.md is up to date ({n} lines)")
            return 0 if n <= MAX_LINES else 1
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "README.md", "built", lineterm="", n=1)
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        print("README.md is out of date: run `python scripts/build_readme.py`", file=sys.stderr)
        return 1
    readme.write_text(text, encoding="utf-8")
    print(f"README.md written ({n} lines)")
    return 0 if n <= MAX_LINES else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
