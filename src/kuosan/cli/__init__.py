"""The `kuosan` command: train a recipe, sample a checkpoint, inspect one, list recipes, run the demo.

    kuosan train toy2d-ddpm --set train.steps=2000        # a recipe name or a YAML path
    torchrun --nproc_per_node=2 -m kuosan train digits-ddpm
    kuosan sample runs/toy2d-ddpm --method dpmpp-2m --nfe 20 --n 1000
    kuosan info runs/toy2d-ddpm
    kuosan tune-steps runs/toy2d-ddpm --method dpmpp-2m --nfe 10   # a grid fitted to the model (LD3)
    kuosan edit runs/digits-ddpm --inpaint digits.npz --mask top-half   # or --img2img x.png --strength 0.6
    kuosan export runs/digits-ddpm --format diffusers --out out/ddpm-diffusers   # docs/interop.md
    kuosan recipes
    kuosan demo                                             # = make demo

The commands live in runs.py, sampling.py and tools.py. Only this package (and serve) reads config files;
errors the user can fix are printed as one message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..config import ConfigError, load_config

app = typer.Typer(
    name="kuosan",
    help="Diffusion models as the book AIGC 扩散模型 lays them out: train, sample, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

# The demo's sampler: DDPM ancestral sampling (book Algorithm 2) on a 100-step subgrid, about a second for 64
# digits. On this small, briefly trained U-Net the PF-ODE solvers (DDIM, DPM-Solver++ 2M at 20 NFE) leave
# speckles (a few pixels far outside [-1, 1]); the ancestral sampler's fresh noise does not (docs/training.md).
DEMO_SAMPLER = ("ddpm", 100)
# Single-threaded: on a CPU shared with other work, torch's second thread spends its time spin-waiting
# (measured 5x slower per step under load); on an idle 2-core machine it costs little.
DEMO_OVERRIDES = ["train.threads=1"]


# --- recipes ---------------------------------------------------------------------------------------------
def recipe_dirs() -> list[Path]:
    """Where recipes live: kuosan/configs/ inside the package (shipped in the wheel as package data)."""
    here = Path(__file__).resolve().parents[1]  # kuosan/
    return [d for d in (here / "configs",) if d.is_dir()]


def recipe_files() -> dict[str, Path]:
    """Recipe name -> YAML file (first directory wins)."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path as given, or the file of a recipe name ("digits-ddpm")."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    recipes = recipe_files()
    if p.stem in recipes and p.suffix in ("", ".yaml"):
        found = recipes[p.stem]
        return found.relative_to(Path.cwd()) if found.is_relative_to(Path.cwd()) else found
    raise ConfigError(
        f"{name_or_path!r} is neither a config file nor a recipe; recipes: {', '.join(recipes) or '(none)'}"
    )


def recipe_header(path: Path) -> dict[str, str]:
    """The leading comment of a recipe: its first line is the title, then "key: value" lines (book: §4.1)."""
    info: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        key, sep, value = text.partition(":")
        if "title" not in info:
            info["title"] = text
        elif sep and key.strip().isidentifier():
            info[key.strip()] = value.strip()
    return info


# --- errors ---------------------------------------------------------------------------------------------
def _fail(err: BaseException, code: int = 1) -> typer.Exit:
    """Print an expected error as one message (KUOSAN_DEBUG=1 re-raises it with its traceback)."""
    if os.environ.get("KUOSAN_DEBUG"):
        raise err
    console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True)
    return typer.Exit(code)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from ..data import DataError
    from ..train import TrainingDiverged

    return ConfigError, DataError, TrainingDiverged, FileExistsError, FileNotFoundError, ValueError, ImportError


# --- commands -------------------------------------------------------------------------------------------
def _resolve_run_config(config: str | None, overrides: list[str], out_dir: Path | None, resume: bool):
    """The config to train: the recipe's with overrides; when resuming a run that has a saved config, that config
    (only train.steps and other RESUMABLE_KEYS may change, and a recipe given must agree with it)."""
    from ..config import RESUMABLE_KEYS, ConfigError, config_dict

    saved = out_dir / "config.yaml" if out_dir is not None else None
    if resume and saved is not None and saved.is_file():
        for item in overrides:
            key = item.partition("=")[0].strip()
            if not key.startswith(RESUMABLE_KEYS):
                keys = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)
                raise ConfigError(f"--set {key}: a resumed run keeps its saved config ({saved}); only {keys} may "
                                  "change. Train into a new --out to change anything else")
        cfg = load_config(saved, overrides).model_copy(update={"out_dir": out_dir})
        if config is not None:  # the recipe may change what a resumed run may change (train.steps, ...), no more
            recipe_cfg = load_config(resolve_recipe(config), overrides)
            differ = sorted(_diff(config_dict(recipe_cfg), config_dict(cfg)))
            if differ:
                raise ConfigError(f"{config} differs from the run's saved config {saved} in {', '.join(differ[:6])}; "
                                  f"resume with `kuosan train --resume --out {out_dir}` (no recipe) to continue the "
                                  "run as it was, or train into a new --out")
            return recipe_cfg.model_copy(update={"out_dir": out_dir, "name": cfg.name})
        return cfg
    if config is None:
        if resume and out_dir is not None:
            raise ConfigError(f"{out_dir} holds no config.yaml: it is not a kuosan run (or was never started)")
        raise ConfigError("give a recipe or config file (see `kuosan recipes`), or --resume --out RUN")
    return load_config(resolve_recipe(config), [*overrides, *([f"out_dir={out_dir}"] if out_dir else [])])


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two config trees differ, ignoring the keys a resumed run may change."""
    from ..config import RESUMABLE_KEYS

    if prefix.startswith(RESUMABLE_KEYS) or prefix == "name":
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b))
                for k in _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)]
    return [] if a == b else [prefix]


def main() -> None:  # pragma: no cover - `python -m kuosan`
    app(prog_name="kuosan")


# the commands register themselves on `app` (imported last: they import app and the helpers above)
from . import runs, sampling, tools  # noqa: E402, F401
from .sampling import class_major, parse_floats, parse_interval, sample_run  # noqa: E402, F401
