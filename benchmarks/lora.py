"""LoRA fine-tuning of the digits U-Net onto one digit (issue 14): adapter size, fine-tuning time, and the share
of samples the shipped digits classifier calls that digit, before and after.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora.py                          # base /work/runs/digits-ddpm
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora.py --digits 3,7 --rank 4 --set train.steps=200

Each digit is one `kuosan finetune BASE --lora RANK --set data.classes=[D] --set train.threads=1` run (the
in-process equivalent: finetune_config + train_from_config), timed by wall clock and by this process's CPU time
(one torch thread: CPU seconds = seconds of one core). Samples: --n of them from the base and from each
fine-tuned run with the same sampler and seeds; "before" / "after" is the fraction the classifier
(kuosan.eval.features.classify) labels D. A 64-sample grid of every fine-tuned run is written beside it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

import kuosan
from kuosan.eval.features import classify
from kuosan.pictures import save_samples
from kuosan.train import find_checkpoint, train_from_config
from kuosan.train.finetune import finetune_config, write_adapter

GOALS = "goals: adapter <= 10% of the base weights, fine-tuning <= 300 s of one core, after >= 90%"


def fractions(x: torch.Tensor) -> torch.Tensor:
    """(10,) share of the samples the shipped digits classifier puts in each class."""
    labels, _ = classify(x)
    return torch.bincount(labels, minlength=10).double() / len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=Path("/work/runs/digits-ddpm"))
    ap.add_argument("--digits", default="3,7")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--method", default="dpmpp-2m")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-lora"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="further overrides, e.g. train.steps=200")
    args = ap.parse_args()
    torch.set_num_threads(1)

    base = kuosan.load(args.base, device="cpu")
    before = fractions(base.generate(args.n, args.method, args.nfe, seed=0))
    base_file = find_checkpoint(args.base) / "weights.safetensors"
    rows = []
    for d in (int(k) for k in args.digits.split(",")):
        out = args.out / f"digit{d}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = finetune_config(args.base, args.rank, overrides=[f"data.classes=[{d}]", "train.threads=1",
                                                               "train.progress=false", "train.tensorboard=false",
                                                               *args.sets], out_dir=out)
        wall, cpu = time.perf_counter(), time.process_time()
        train_from_config(cfg, log=None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        adapter = write_adapter(out)
        pipe = kuosan.load(out, device="cpu")
        x = pipe.generate(args.n, args.method, args.nfe, seed=0)
        after = fractions(x)
        save_samples(x[:64], out / "samples.png", title=f"LoRA r={args.rank} on digit {d}: {args.method} "
                     f"({args.nfe} NFE)")
        n_params = sum(p.numel() for p in pipe.lora.parameters())
        rows.append((d, n_params, adapter.stat().st_size, cfg.train.steps, cfg.train.batch_size, wall, cpu,
                     before[d].item(), after[d].item(), out / "samples.png"))

    print(f"base {args.base} (step {base.step}), {base_file.stat().st_size / 1e3:.1f} kB weights "
          f"({sum(p.numel() for p in base.denoiser.net.parameters()):,} parameters); rank {args.rank}, "
          f"{args.n} samples, {args.method} {args.nfe} NFE, torch threads 1")
    print("| digit | LoRA parameters | adapter file | / base weights | steps x batch | wall s | CPU s | before "
          "| after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d, n_params, size, steps, batch, wall, cpu, b, a, _ in rows:
        print(f"| {d} | {n_params:,} | {size / 1e3:.1f} kB | {100 * size / base_file.stat().st_size:.1f}% | "
              f"{steps} x {batch} | {wall:.0f} | {cpu:.0f} | {100 * b:.1f}% | {100 * a:.1f}% |")
    print(GOALS)
    print("grids: " + ", ".join(str(r[-1]) for r in rows))


if __name__ == "__main__":
    main()
