"""The book's digits models on one table: DDPM, NCSN, Score SDE (VP, predictor-corrector) and EDM.

Each recipe (src/kuosan/configs/digits-*.yaml) is trained into <runs>/<recipe> unless a checkpoint with at least the
requested steps is already there, then sampled with its own sampler (the paper's: DDPM ancestral 1000,
annealed Langevin, PC, Heun 35) and with DPM-Solver++(2M) at 20 NFE, and scored with the shipped digits
feature network against the training split (FD, improved precision/recall with k = 3), timed per 1000
samples, and (--nll) given held-out bits/dim through the probability-flow ODE.

    .venv/bin/python benchmarks/book_models.py                          # full recipes (long on 2 CPU cores)
    .venv/bin/python benchmarks/book_models.py --steps 300 --n 500 --runs runs/bench-quick   # quick look
    .venv/bin/python benchmarks/book_models.py --recipes digits-ddpm,digits-edm --nll --nll-n 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import kuosan
from kuosan.cli import resolve_recipe
from kuosan.config import load_config
from kuosan.eval.evaluate import build_reference, draw_samples, quality
from kuosan.eval.report import machine_info
from kuosan.eval.reporting import markdown_table
from kuosan.train import find_checkpoint, train_from_config

RECIPES = ("digits-ddpm", "digits-ncsn", "digits-sde-vp", "digits-edm")
MODEL_NAMES = {"digits-ddpm": "DDPM", "digits-ncsn": "NCSN", "digits-sde-vp": "Score SDE (VP)", "digits-edm": "EDM"}


def trained_run(recipe: str, runs: Path, steps: int | None, nfe: int | None, threads: int) -> tuple[Path, float | None]:
    """The run directory of `recipe`, trained to `steps` (the recipe's own by default) if it is not already;
    nfe (quick runs) also cuts the end-of-training preview sampling."""
    run_dir = runs / recipe
    overrides = [f"out_dir={run_dir}"] + [f"train.steps={steps}"] * bool(steps) + [f"sample.nfe={nfe}"] * bool(nfe)
    cfg = load_config(resolve_recipe(recipe), overrides + ["train.progress=false", f"train.threads={threads}"])
    try:
        done = int(find_checkpoint(run_dir).name.removeprefix("step-")) >= cfg.train.steps
    except (FileNotFoundError, ValueError):
        done = False
    if done:
        return run_dir, None
    start = time.perf_counter()
    train_from_config(cfg, resume=True)
    return run_dir, time.perf_counter() - start


def measure(run_dir: Path, samplers: list[tuple[str | None, int | None]], n: int, nll_n: int, seed: int) -> list:
    """Rows of the table for one trained run: one per sampler, the held-out bits/dim on each."""
    pipe = kuosan.load(run_dir, device="cpu")
    # x0 unclipped, as the table in docs/evaluation.md was measured (images now clip by default: sample.clip_x0)
    denoiser, cfg, ckpt = pipe.model(clip_x0="none"), pipe.config, pipe.checkpoint
    shape = (n, *pipe.data_shape)
    ref = build_reference(cfg, tuple(shape[1:]), seed=seed)
    bpd = None
    if nll_n:
        from kuosan.eval.nll import heldout_nll

        bpd = heldout_nll(denoiser, ref.heldout[:nll_n], ref.levels, seed=seed, vlb=False).get("ode_bpd")
    rows = []
    for method, nfe in samplers:
        method, nfe = method or cfg.sample.method, nfe or cfg.sample.nfe
        try:
            x, timing = draw_samples(denoiser, shape, method, nfe, seed=seed)
        except ValueError as err:
            print(f"  {cfg.name} {method} {nfe}: skipped ({err})")
            continue
        q = quality(x, ref)
        rows.append({"recipe": cfg.name, "model": MODEL_NAMES.get(cfg.name, cfg.name), "step": ckpt.step,
                     "sampler": method, "nfe": nfe, **timing, **q, "bpd": bpd})
        print(f"  {cfg.name:>14s} {method:>10s} NFE {nfe:5d}: FD {q['fd']:.3f} P {q['precision']:.2f} "
              f"R {q['recall']:.2f} {timing['seconds_per_1000']:.1f} s/1000", flush=True)
    return rows


def _f3(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def table(rows: list[dict], floor: dict) -> str:
    """One markdown table; a model's bits/dim (a property of the model, not of its sampler) on its first row."""
    body, seen = [], set()
    for r in rows:
        bpd = "" if r["model"] in seen else _f3(r["bpd"])
        seen.add(r["model"])
        body.append([r["model"], r["step"], r["sampler"], r["nfe_used"], f"{r['fd']:.3f}", _f3(r["fd_inf"]),
                     f"{r['precision']:.2f}",
                     f"{r['recall']:.2f}", bpd, f"{r['seconds_per_1000']:.1f}"])
    body.append(["held-out real digits", "", "", "", f"{floor['fd']:.3f}", _f3(floor["fd_inf"]),
                 f"{floor['precision']:.2f}",
                 f"{floor['recall']:.2f}", "", ""])
    header = ["model", "steps", "sampler", "NFE", "FD", "FD_inf", "precision", "recall", "bits/dim (ODE)", "s / 1000"]
    return markdown_table(header, body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where runs are found or trained")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: each recipe's own)")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    p.add_argument("--nfe", type=int, default=None, help="override the recipes' own NFE (quick runs)")
    p.add_argument("--fast", default="dpmpp-2m:20", help="an extra sampler:nfe row per model ('' for none)")
    p.add_argument("--nll", action="store_true", help="held-out bits/dim through the PF-ODE (Hutchinson)")
    p.add_argument("--nll-n", type=int, default=128, help="held-out digits for --nll")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for training and sampling")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    samplers: list[tuple[str | None, int | None]] = [(None, args.nfe)]
    if args.fast:
        name, _, k = args.fast.partition(":")
        samplers.append((name, int(k)))
    rows, floor = [], None
    for recipe in args.recipes.split(","):
        run_dir, seconds = trained_run(recipe, args.runs, args.steps, args.nfe, args.threads)
        how = f"trained in {seconds:.0f} s" if seconds else "loaded"
        print(f"{recipe}: {how} from {run_dir}", flush=True)
        rows += measure(run_dir, samplers, args.n, args.nll_n if args.nll else 0, args.seed)
        if floor is None:
            pipe = kuosan.load(run_dir, device="cpu")
            ref = build_reference(pipe.config, pipe.data_shape, seed=args.seed)
            floor = quality(ref.heldout, ref)
    m = machine_info()
    print(f"\n{args.n} samples per row; features: shipped digits classifier; machine: {m['cpu_count']} CPUs, "
          f"{m['torch_threads']} torch threads, load average {m['load_average_1min']} (pid {os.getpid()})\n")
    print(table(rows, floor))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "floor": floor, "machine": m}, indent=2) + "\n")


if __name__ == "__main__":
    main()
