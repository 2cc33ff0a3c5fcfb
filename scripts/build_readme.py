"""Build README.md from docs/readme/: a head, one section per component (written by its builder), a tail.

    python scripts/build_readme.py      # after editing any docs/readme/*.md
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["head", "foundation", "chapter3", "losses", "samplers", "likelihood", "nets_data", "throughput", "train",
            "eval", "eval_report", "tail"]
SKIP_IN_CONTENTS = {"Two commands", "The API in one screen", "Contents"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def build() -> str:
    text = "".join((ROOT / "docs" / "readme" / f"{name}.md").read_text().strip() + "\n\n" for name in SECTIONS)
    text = text.replace("](../img/", "](docs/img/")
    heads = [h for h in re.findall(r"^## (.+)$", text, flags=re.M) if h not in SKIP_IN_CONTENTS]
    toc = "\n".join(f"{i}. [{h.strip('`')}](#{slug(h)})" for i, h in enumerate(heads, 1))
    return re.sub(r"## Contents\n\n(?:\d+\. .*\n)+", "## Contents\n\n" + toc + "\n", text).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "README.md").write_text(build())
    print("README.md written")
