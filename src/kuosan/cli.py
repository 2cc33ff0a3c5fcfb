"""The `kuosan` command: train a recipe, sample a checkpoint, inspect one, list recipes, run the demo.

    kuosan train toy2d-ddpm --set train.steps=2000        # a recipe name or a YAML path
    torchrun --nproc_per_node=2 -m kuosan train digits-ddpm
    kuosan sample runs/toy2d-ddpm --method dpmpp-2m --nfe 20 --n 1000
    kuosan info runs/toy2d-ddpm
    kuosan recipes
    kuosan demo                                             # = make demo

Only this module (and serve) reads config files; errors the user can fix are printed as one message.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, load_config

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
# speckles (a few pixels far outside [-1, 1]); the ancestral sampler's fresh noise does not (docs/readme/train.md).
DEMO_SAMPLER = ("ddpm", 100)
# Single-threaded: on a CPU shared with other work, torch's second thread spends its time spin-waiting
# (measured 5x slower per step under load); on an idle 2-core machine it costs little.
DEMO_OVERRIDES = ["train.threads=1"]


# --- recipes ---------------------------------------------------------------------------------------------
def recipe_dirs() -> list[Path]:
    """Where recipes live: kuosan/configs/ inside the package (shipped in the wheel as package data)."""
    here = Path(__file__).resolve().parent
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
    from .data import DataError
    from .train import TrainingDiverged

    return ConfigError, DataError, TrainingDiverged, FileExistsError, FileNotFoundError, ValueError


# --- commands -------------------------------------------------------------------------------------------
@app.command()
def train(
    config: str = typer.Argument(..., help="A recipe name (see `kuosan recipes`) or a YAML config file."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key: --set train.steps=100 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output directory."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default runs/<name>)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable data files instead of failing."),
) -> None:
    """Train a model from a recipe or config (torchrun --nproc_per_node=N -m kuosan train ... for DDP)."""
    from .train import train_from_config

    try:
        overrides = (
            list(set_) + ([f"out_dir={out_dir}"] if out_dir else []) + (["data.skip_bad=true"] if skip_bad else [])
        )
        cfg = load_config(resolve_recipe(config), overrides)
        result = train_from_config(cfg, resume=resume)
    except _expected_errors() as err:
        raise _fail(err) from None
    if int(os.environ.get("RANK", "0")) == 0:
        verb = "interrupted at" if result.interrupted else "trained to"
        out.print(f"{verb} step {result.step}; checkpoint {result.checkpoint}")
        out.print(f"sample it with: kuosan sample {cfg.run_dir}")
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def sample(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    method: str | None = typer.Option(None, help="Sampler (kuosan.samplers.available()); default: the run's."),
    nfe: int | None = typer.Option(None, help="Network evaluations to spend; default: the run's."),
    seed: int = typer.Option(0, help="Seed of the prior noise and any sampler noise."),
    n: int | None = typer.Option(None, "--n", help="Number of samples; default: the run's sample.n."),
    out_path: Path | None = typer.Option(None, "--out", help="PNG path; the .npz goes beside it."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Generate samples: a PNG (image grid, or a scatter plot of 2-D points) and an .npz of the raw samples."""
    try:
        png, npz, x = sample_checkpoint(checkpoint, method, nfe, seed, n, out_path, ema, device)
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {png} and {npz} ({' x '.join(map(str, x.shape))} samples)")


def sample_checkpoint(checkpoint, method, nfe, seed, n, out_path, ema=True, device="auto"):
    """Load a checkpoint, sample it and write the PNG and .npz; returns (png, npz, samples)."""
    import torch

    from .train import generate, load_model, save_npz, save_samples
    from .train.distributed import pick_device

    dev = pick_device(device)
    denoiser, cfg, ckpt = load_model(checkpoint, ema=ema, device=dev)
    method, nfe, n = method or cfg.sample.method, nfe or cfg.sample.nfe, n or cfg.sample.n
    shape = (n, *ckpt.state["data_shape"])
    g = torch.Generator(dev).manual_seed(seed)
    k = ckpt.state.get("num_classes")
    cond = {"y": torch.arange(n, device=dev) % k} if k else None  # class-conditional: the classes in turn
    x = generate(denoiser, shape, method=method, nfe=nfe, generator=g, device=dev, cond=cond)
    png = Path(out_path) if out_path else ckpt.path.parents[1] / f"samples-{method}-{nfe}.png"
    save_samples(x, png, title=f"{cfg.name}: {method}, {nfe} NFE, step {ckpt.step}")
    npz = save_npz(x, png.with_suffix(".npz"), method=method, nfe=nfe, seed=seed, step=ckpt.step)
    return png, npz, x


@app.command()
def info(checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory.")) -> None:
    """What a checkpoint holds: step, network and parameter count, EMA, process, data, the full config."""
    import yaml

    from .train import load_checkpoint

    try:
        ckpt = load_checkpoint(checkpoint)
    except _expected_errors() as err:
        raise _fail(err) from None
    st = ckpt.state
    cfg = st.get("config") or {}
    n_params = sum(v.numel() for v in ckpt.weights.values())
    rows = [
        ("checkpoint", str(ckpt.path)),
        ("step", f"{ckpt.step} of {cfg.get('train', {}).get('steps', '?')}"),
        ("network", f"{st.get('net', {}).get('kind', '?')}, {n_params:,} parameters ({len(ckpt.weights)} tensors)"),
        (
            "ema",
            f"yes, {st.get('ema_updates', '?')} updates, decay {cfg.get('train', {}).get('ema_decay', '?')}"
            if ckpt.ema is not None
            else "no",
        ),
        ("process", str(cfg.get("process", {}))),
        ("prediction", f"{cfg.get('prediction') or 'default'}, precondition {cfg.get('precondition', 'none')}"),
        ("data", f"{cfg.get('data', {}).get('kind', '?')}, sample shape {st.get('data_shape')}"),
        ("seed / processes", f"{st.get('seed')} / {st.get('world_size', 1)}"),
        ("optimizer", "saved" if st.get("optimizer") else "not saved"),
        ("files", ", ".join(f"{f.name} ({f.stat().st_size / 1e6:.2f} MB)" for f in sorted(ckpt.path.iterdir()))),
    ]
    for k, v in rows:
        out.print(f"{k + ':':<18}{v}", highlight=False, markup=False)
    out.print("config:")
    out.print(yaml.safe_dump(cfg, sort_keys=False), highlight=False, markup=False)


@app.command()
def recipes() -> None:
    """The recipes: one YAML per book model, with its book section and the command that trains it."""
    t = Table(title="kuosan recipes")
    t.add_column("recipe", no_wrap=True)
    t.add_column("book")
    t.add_column("model")
    t.add_column("command", no_wrap=True)
    for name, path in recipe_files().items():
        h = recipe_header(path)
        t.add_row(name, h.get("book", ""), h.get("title", "").split(":")[0], f"kuosan train {name}")
    out.print(t)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Where the run and the samples go."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key of the digits-ddpm recipe."),
    fresh: bool = typer.Option(False, "--fresh", help="Retrain even if a finished demo run is there."),
) -> None:
    """Train the digits-ddpm recipe on the CPU (a few minutes), sample 64 digits, save a grid and the raw samples."""
    import shutil

    from .train import find_checkpoint, train_from_config

    try:
        cfg = load_config(resolve_recipe("digits-ddpm"), [*DEMO_OVERRIDES, *set_, f"out_dir={out_dir}"])
        if fresh:
            shutil.rmtree(out_dir, ignore_errors=True)
        step = _finished_step(out_dir)
        done = step >= cfg.train.steps
        t0 = time.perf_counter()
        if done:
            out.print(f"{find_checkpoint(out_dir)} is already trained to {cfg.train.steps} steps (--fresh retrains)")
        else:
            out.print(f"training digits-ddpm ({cfg.train.steps} steps) into {out_dir} ...")
            result = train_from_config(cfg, resume=step >= 0)  # a demo stopped half-way continues
            if result.interrupted:
                raise typer.Exit(130)
        t1 = time.perf_counter()
        method, nfe = DEMO_SAMPLER
        png, npz, x = sample_checkpoint(out_dir, method, nfe, 0, cfg.sample.n, out_dir / "samples.png")
    except _expected_errors() as err:
        raise _fail(err) from None
    t2 = time.perf_counter()
    if not done:
        out.print(f"trained in {t1 - t0:.0f} s")
    out.print(f"sampled {x.shape[0]} digits with {method} ({nfe} NFE) in {t2 - t1:.1f} s")
    out.print(f"samples: {png} (grid) and {npz} ({' x '.join(map(str, x.shape))} raw samples)")


def _finished_step(run_dir: Path) -> int:
    from .train import find_checkpoint

    try:
        return int(find_checkpoint(run_dir).name.removeprefix("step-"))
    except (FileNotFoundError, ValueError):
        return -1


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    samplers: str = typer.Option(
        "dpmpp-2m,ddim,ddpm",
        help="Comma-separated samplers (kuosan.samplers.available()), each optionally with options: "
        "unipc:grid=uniform, ddim:eta=1.0, dpmpp-2m:thresholding=true.",
    ),
    nfe: str = typer.Option("5,10,20,50,1000", help="Comma-separated NFE budgets."),
    nfe_for: list[str] = typer.Option([], "--nfe-for", help="Budgets of one sampler: --nfe-for dpmpp-2m=5,10,20."),
    n: int = typer.Option(1000, "--n", help="Samples per sampler and NFE."),
    nll: bool = typer.Option(False, "--nll", help="Add held-out bits/dim: PF-ODE (Hutchinson) and the DDPM bound."),
    nll_n: int | None = typer.Option(None, "--nll-n", help="Held-out samples for --nll (default: all)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default <run>/eval)."),
    inception: Path | None = typer.Option(None, "--inception", help="Local FID Inception weights (pytorch-fid)."),
    seed: int = typer.Option(0, help="Seed of the prior noise, sampler noise and probes."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Sample quality against NFE (FD, KID, precision/recall) per sampler: report.md/json, plot, sample sheets."""
    from .eval.report import run_eval

    try:
        budgets = {"*": nfe, **dict(item.rsplit("=", 1) for item in nfe_for)}
        nfes = {s.strip(): [int(k) for k in v.split(",") if k.strip()] for s, v in budgets.items()}
        run_eval(checkpoint, [s.strip() for s in samplers.split(",") if s.strip()], nfes, n, nll, out_dir,
                 nll_n=nll_n, inception=inception, seed=seed, ema=ema, device=device,
                 log=lambda line: out.print(line, markup=False, highlight=False))
    except (*_expected_errors(), ImportError) as err:
        raise _fail(err) from None


def main() -> None:  # pragma: no cover - `python -m kuosan`
    app(prog_name="kuosan")
