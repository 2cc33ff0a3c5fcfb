"""The import rule (STYLE.md rule 1, docs/architecture.md): imports flow one way, so no module imports a
layer above it. Read from the source with ast, including imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kuosan"

# layer -> the kuosan top-level modules it must never import (directly or inside a function)
FORBIDDEN = {
    "processes": {"denoiser", "losses", "samplers", "likelihood", "nets", "data", "registry", "pipeline", "train",
                  "eval", "cli"},
    "predictions": {"denoiser", "losses", "samplers", "likelihood", "registry", "pipeline", "train", "eval", "cli"},
    "denoiser": {"losses", "samplers", "likelihood", "registry", "pipeline", "train", "eval", "cli"},
    "guidance": {"losses", "samplers", "likelihood", "nets", "data", "registry", "checkpoint", "pipeline", "train",
                 "eval", "cli"},  # classifier guidance: denoiser, processes, predictions only
    "losses": {"registry", "pipeline", "train", "eval", "cli"},
    "samplers": {"registry", "pipeline", "train", "eval", "cli"},
    "likelihood": {"registry", "pipeline", "train", "eval", "cli"},
    "nets": {"processes", "predictions", "denoiser", "losses", "samplers", "likelihood", "registry", "pipeline",
             "train", "eval", "cli"},  # no diffusion math in networks
    "data": {"denoiser", "losses", "samplers", "likelihood", "registry", "pipeline", "train", "eval", "cli"},
    "checkpoint": {"registry", "pipeline", "train", "eval", "cli"},
    "registry": {"pipeline", "train", "eval", "cli"},
    "pipeline": {"train", "eval", "cli"},
    "control": {"train", "eval", "cli"},  # ControlNet runs as pipelines (beside pipeline.py)
    "edit": {"train", "eval", "cli"},  # pipeline layer: Pipeline.img2img / inpaint delegate to it
    "edit_files": {"train", "cli"},  # the edit command's files (layer 6, beside cli)
    "eval": {"train", "cli"},
    "train": {"eval", "cli"},
}


def kuosan_imports(path: Path) -> set[str]:
    """The kuosan top-level modules a file imports (absolute `kuosan.x` or relative `..x` / `.x`)."""
    rel = path.relative_to(SRC).parts
    depth = len(rel) - 1  # package depth of the file below kuosan/
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("kuosan.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("kuosan."):
                found.add(node.module.split(".")[1])
            elif node.level and node.level == depth + 1:  # relative to the kuosan package itself
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found |= {a.name for a in node.names}
            elif node.level and node.level <= depth:  # inside the file's own top-level package
                found.add(rel[0])
    return found


def layer_files(layer: str) -> list[Path]:
    p = SRC / layer
    return sorted(p.rglob("*.py")) if p.is_dir() else [SRC / f"{layer}.py"]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(layer):
    bad = {str(f.relative_to(SRC)): sorted(kuosan_imports(f) & FORBIDDEN[layer]) for f in layer_files(layer)}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_the_rule_can_fail(tmp_path, monkeypatch):
    """The scanner sees relative imports inside functions (e.g. eval reaching into train)."""
    fake = SRC / "eval" / "_probe_import_rule.py"
    fake.write_text("def f():\n    from ..train import fit\n    from kuosan.cli import app\n")
    try:
        assert {"train", "cli"} <= kuosan_imports(fake)
    finally:
        fake.unlink()
