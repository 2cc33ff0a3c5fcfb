"""`kuosan train`, `resume`, `finetune`, `distill`, `info`, `recipes` and `demo`: making and inspecting runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.table import Table

from ..config import ConfigError, load_config
from . import (
    DEMO_OVERRIDES,
    DEMO_SAMPLER,
    _diff,
    _expected_errors,
    _fail,
    _resolve_run_config,
    app,
    out,
    recipe_files,
    recipe_header,
    resolve_recipe,
)


@app.command()
def train(
    config: str | None = typer.Argument(None, help="A recipe name (see `kuosan recipes`) or a YAML config file; "
                                        "omit it with --resume --out RUN to continue a run with its saved config."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key: --set train.steps=100 (repeatable); "
                                   "a whole section: --set 'data={kind: folder, root: DIR}'."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default runs/<name>)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable or mismatched images (listed in the "
                                  "run's skipped_files.txt) instead of failing on the first."),
) -> None:
    """Train a model from a recipe or config (torchrun --nproc_per_node=N -m kuosan train ... for DDP)."""
    try:
        cfg = _resolve_run_config(config, [*set_, *(["data.skip_bad=true"] if skip_bad else [])], out_dir, resume)
        from ..train import train_from_config

        result = train_from_config(cfg, resume=resume, log=lambda s: out.print(s, markup=False, highlight=False))
    except _expected_errors() as err:
        raise _fail(err) from None
    if int(os.environ.get("RANK", "0")) == 0:
        verb = "interrupted at" if result.interrupted else "trained to"
        out.print(f"{verb} step {result.step}; checkpoint {result.checkpoint}")
        use = {"classifier": f"guide a run with it: kuosan sample RUN --classifier {cfg.run_dir}",
               "autoencoder": "an autoencoder: the first stage of a latent diffusion run (its latent scale is in "
                              "each checkpoint's state.json)"}.get(cfg.objective.kind,
                                                                   f"sample it with: kuosan sample {cfg.run_dir}")
        more = f"; continue it with: kuosan train --resume --out {cfg.run_dir}" if result.interrupted else ""
        out.print(use + more)
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def resume(
    run: Path = typer.Argument(..., help="A run directory written by `kuosan train`."),
    set_: list[str] = typer.Option([], "--set", "-s", help="e.g. --set train.steps=4000 to train longer."),
) -> None:
    """Continue a stopped or finished run with its saved config (= kuosan train --resume --out RUN)."""
    train(None, set_, True, run, False)


def _report(result, done: str, extra: str, then: str) -> None:
    """What a finetune / distill run ended with; exit status 130 when it was interrupted (a checkpoint was saved)."""
    out.print(f"{'interrupted at' if result.interrupted else done} step {result.step}; checkpoint "
              f"{result.checkpoint}{extra}")
    out.print(then)
    if result.interrupted:
        raise typer.Exit(130)


def _same_settings(cfg, done: str, options: str, verb: str) -> None:
    """--resume of a finetune / distill run: its saved config must be the one these options make (train.steps and
    the like may differ only through `kuosan resume RUN --set ...`)."""
    from ..config import config_dict

    if not (cfg.run_dir / "config.yaml").is_file():
        return
    differ = sorted(_diff(config_dict(cfg), config_dict(load_config(cfg.run_dir / "config.yaml"))))
    if differ:
        raise ConfigError(f"{cfg.run_dir} was {done} with other settings ({', '.join(differ[:6])}): resume with "
                          f"the same {options} (or `kuosan resume {cfg.run_dir}`), or {verb} into a new --out")


@app.command()
def finetune(
    base_run: Path = typer.Argument(..., help="The run to adapt (a run or checkpoint directory)."),
    lora: int = typer.Option(..., "--lora", help="LoRA rank r (Hu et al. 2021): factors B (out x r) A (r x in)."),
    alpha: float | None = typer.Option(None, "--alpha", help="LoRA alpha; the update is scaled by alpha / r "
                                       "(default alpha = r)."),
    targets: str | None = typer.Option(None, "--targets", help="Comma-separated layer names, e.g. qkv,proj "
                                       "(default: the network's, see docs/finetune.md)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key, e.g. --set data.classes=[3] "
                                   "--set train.steps=500 (repeatable)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default runs/<base name>-lora<r>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the fine-tuning run in --out."),
) -> None:
    """Fine-tune a trained run with LoRA: only low-rank factors train; the run holds the adapter alone."""
    try:
        from ..train import train_from_config
        from ..train.finetune import finetune_config, write_adapter

        names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
        cfg = finetune_config(base_run, lora, alpha, names, set_, out_dir)
        if resume:
            _same_settings(cfg, "fine-tuned", "--lora / --alpha / --targets / --set", "fine-tune")
        result = train_from_config(cfg, resume=resume, log=lambda s: out.print(s, markup=False, highlight=False))
        adapter = write_adapter(cfg.run_dir)
    except _expected_errors() as err:
        raise _fail(err) from None
    _report(result, "fine-tuned to", f"; adapter {adapter}", f"sample it with: kuosan sample {cfg.run_dir}")


@app.command()
def distill(
    method: str = typer.Argument(..., help="progressive | consistency | lcm | reflow (docs/distill.md)."),
    teacher: Path = typer.Argument(..., help="The teacher run (a run or checkpoint directory)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key, e.g. --set train.steps=500 "
                                   "(repeatable); the method's own keys are under objective.*"),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default runs/<teacher>-<method>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the distillation run in --out."),
    rounds: int | None = typer.Option(None, "--rounds", help="progressive: halvings of the step count "
                                      "(= --set objective.rounds=K)."),
    w_min: float | None = typer.Option(None, "--w-min", help="lcm: smallest guidance scale drawn (objective.w_min)."),
    w_max: float | None = typer.Option(None, "--w-max", help="lcm: largest guidance scale drawn (objective.w_max)."),
    skip: int | None = typer.Option(None, "--skip", help="lcm: skipping interval k in teacher steps "
                                    "(objective.skip)."),
) -> None:
    """Distil a trained run into a few-step student: an ordinary run that `kuosan sample` samples with its own
    sampler and step count."""
    try:
        from ..distill import distill_config
        from ..train import train_from_config

        shortcuts = {"rounds": (rounds, "progressive"), "w_min": (w_min, "lcm"), "w_max": (w_max, "lcm"),
                     "skip": (skip, "lcm")}
        for key, (value, owner) in shortcuts.items():
            if value is not None and method != owner:
                raise ConfigError(f"--{key.replace('_', '-')} is an option of `kuosan distill {owner}`, not {method}")
        shortcut_sets = [f"objective.{k}={v}" for k, (v, _) in shortcuts.items() if v is not None]
        cfg = distill_config(method, teacher, [*shortcut_sets, *set_], out_dir)
        if resume:
            _same_settings(cfg, "distilled", "--set", "distil")
        result = train_from_config(cfg, resume=resume, log=lambda s: out.print(s, markup=False, highlight=False))
    except _expected_errors() as err:
        raise _fail(err) from None
    _report(result, "distilled to", "", f"sample it with: kuosan sample {cfg.run_dir}  (default: {cfg.sample.method}, "
            f"{cfg.sample.nfe} NFE)")


@app.command()
def info(checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory.")) -> None:
    """What a checkpoint holds: step, objective, network and parameter count, EMA, process, data, the config."""
    import yaml

    from ..checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(checkpoint)
    except _expected_errors() as err:
        raise _fail(err) from None
    st = ckpt.state
    cfg = st.get("config") or {}
    n_params = sum(v.numel() for v in ckpt.weights.values())
    obj = st.get("objective") or {"kind": "denoising"}
    targets = ", ".join(f"target {k} (EMA {v['decay']}, {v['updates']} updates)"
                        for k, v in obj.get("targets", {}).items())
    classes = st.get("num_classes")
    rows = [
        ("checkpoint", str(ckpt.path)),
        ("step", f"{ckpt.step} of {cfg.get('train', {}).get('steps', '?')}"),
        ("objective", f"{obj['kind']}" + (f", p_uncond {cfg.get('objective', {}).get('p_uncond')}"
                                          if classes and obj["kind"] == "denoising" else "")
         + (f"; {targets}" if targets else "")),
        ("network", f"{st.get('net', {}).get('kind', '?')}, {n_params:,} parameters ({len(ckpt.weights)} tensors)"),
        (
            "ema",
            f"yes, {st.get('ema_updates', '?')} updates, decay {cfg.get('train', {}).get('ema_decay', '?')}"
            if ckpt.ema is not None
            else "no",
        ),
        ("process", str(cfg.get("process", {}))),
        ("prediction", f"{cfg.get('prediction') or 'default'}, precondition {cfg.get('precondition', 'none')}"),
        ("data", f"{cfg.get('data', {}).get('kind', '?')}, sample shape {st.get('data_shape')}"
         + (f", {classes} classes" if classes else "")
         + (f", {len(st['skipped_files'])} files skipped" if st.get("skipped_files") else "")),
        ("sampling", f"{cfg.get('sample', {}).get('method')} ({cfg.get('sample', {}).get('nfe')} NFE), "
         f"clip_x0 {cfg.get('sample', {}).get('clip_x0', 'none')}"),
        ("seed / processes", f"{st.get('seed')} / {st.get('world_size', 1)}"),
        ("optimizer", "saved" if st.get("optimizer") else "not saved"),
        ("files", ", ".join(f"{f.name} ({f.stat().st_size / 1e6:.2f} MB)" for f in sorted(ckpt.path.iterdir()))),
    ]
    if "lora" in obj:  # a LoRA run: the adapter's settings and the base it adapts (network row = the factors)
        lo, bs = obj["lora"], obj.get("base", {})
        rows.insert(3, ("lora", f"rank {lo['rank']}, alpha {lo['alpha']:g}, {len(lo['layers'])} layers "
                                f"({', '.join(lo['targets'])}); base {bs.get('path')} (step {bs.get('step')})"))
    if obj.get("teacher"):  # a distilled student (kuosan.distill): the run it learned from
        te = obj["teacher"]
        rows.insert(3, ("teacher", f"{te.get('path')} (step {te.get('step')}, objective {te.get('kind')})"))
    if st.get("autoencoder"):  # a latent run (kuosan.latent): the autoencoder it carries
        ae = st["autoencoder"]
        rows.insert(3, ("autoencoder", f"images {tuple(ae['image_shape'])} -> latents {tuple(ae['latent_shape'])}, "
                                       f"scale {ae['scale']:.4g}, from {ae.get('source') or '?'}"))
    for k, v in rows:
        out.print(f"{k + ':':<18}{v}", highlight=False, markup=False)
    out.print("config:")
    out.print(yaml.safe_dump(cfg, sort_keys=False), highlight=False, markup=False)


@app.command()
def recipes() -> None:
    """The recipes: one YAML per book model, with its book section and the command that trains it."""
    t = Table(title="kuosan recipes: kuosan train RECIPE [--set key=value]", title_justify="left")
    t.add_column("recipe", no_wrap=True)
    t.add_column("book", no_wrap=True)
    t.add_column("model", overflow="fold")
    for name, path in recipe_files().items():
        h = recipe_header(path)
        t.add_row(name, h.get("book", "").split(" (")[0], h.get("title", "").split(":")[0])
    out.print(t)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Where the run and the samples go."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key of the digits-ddpm recipe."),
    fresh: bool = typer.Option(False, "--fresh", help="Retrain even if a finished demo run is there."),
) -> None:
    """Train the digits-ddpm recipe on the CPU (a few minutes), sample 64 digits, save a grid and the raw samples."""
    import shutil

    from ..train import find_checkpoint, train_from_config
    from .sampling import sample_run

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
            result = train_from_config(cfg, resume=step >= 0, log=None)  # a demo stopped half-way continues
            if result.interrupted:
                raise typer.Exit(130)
        t1 = time.perf_counter()
        method, nfe = DEMO_SAMPLER
        png, npz, x = sample_run(out_dir, method, nfe, 0, cfg.sample.n, out_dir / "samples.png",
                                 title=f"kuosan demo: digits DDPM, {method} ({nfe} NFE)")
    except _expected_errors() as err:
        raise _fail(err) from None
    t2 = time.perf_counter()
    if not done:
        out.print(f"trained in {t1 - t0:.0f} s")
    out.print(f"sampled {x.shape[0]} digits with {method} ({nfe} NFE) in {t2 - t1:.1f} s")
    out.print(f"samples: {png} (grid) and {npz} ({' x '.join(map(str, x.shape))} raw samples)")


def _finished_step(run_dir: Path) -> int:
    from ..train import find_checkpoint

    try:
        return int(find_checkpoint(run_dir).name.removeprefix("step-"))
    except (FileNotFoundError, ValueError):
        return -1
