"""Classifier-free guidance on a class-conditional run: class accuracy and FD for every (sampler, w, x0 clipping).

    .venv/bin/python benchmarks/guidance.py runs/digits-cond                        # the issue's goal, then the table
    .venv/bin/python benchmarks/guidance.py runs/digits-cond --goal-only --interval 0.5,1
    .venv/bin/python benchmarks/guidance.py runs/digits-cond --w 1,3,5,8 --nfe 20 --samplers dpmpp-2m,ddim,unipc

Accuracy: the fraction of samples the shipped classifier (digits 8x8 / MNIST 28x28; the exact posterior for the
conditional toy mixture) judges to be the requested class (classes in turn, i mod K). FD: in the same
classifier's features against the training data. Same seed, hence the same prior draws, in every cell.
The goal (issue "conditional generation and guidance"): with DPM-Solver++(2M) at 20 NFE, w = 3 gives >= 99%
accuracy while FD stays within 2x of w = 1.
"""

from __future__ import annotations

import argparse
import time

import torch

import kuosan
from kuosan.eval.evaluate import build_reference, draw_samples, quality
from kuosan.eval.report import accuracy


def measure(pipe, ref, method: str, w: float, clip: str, n: int, nfe: int, seed: int, interval) -> dict:
    """Accuracy and FD of n samples of `method` at guidance w (interval: (lo, hi), None, or "run")."""
    den = pipe.model(w, clip, guidance_interval=interval)
    t0 = time.process_time()
    x, _ = draw_samples(den, (n, *pipe.data_shape), method, nfe, seed=seed, num_classes=pipe.num_classes,
                        progress=False)
    return {"acc": accuracy(x, ref, pipe.num_classes), "fd": quality(x, ref)["fd"], "cpu": time.process_time() - t0}


def goal(pipe, ref, args) -> None:
    """The issue's goal at DPM-Solver++(2M), 20 NFE, x0 clipped: w = 3 against w = 1, plain CFG and with the run's
    guidance interval, over several seeds (FD of 500 samples moves by 2x between seeds at w = 1)."""
    iv = tuple(map(float, args.interval.split(","))) if args.interval else pipe.config.sample.guidance_interval
    variants = {"plain CFG": None, **({f"interval ({iv[0]:g}, {iv[1]:g}]": iv} if iv else {})}
    print(f"goal: dpmpp-2m 20 NFE, x0 clipped, {args.goal_n} samples per seed; w = 3 accuracy >= 0.99 and "
          "FD(w = 3) <= 2 FD(w = 1)")
    print("| seed | w = 1 acc / FD | " + " | ".join(f"w = 3, {k}: acc / FD (ratio)" for k in variants) + " |")
    print("|" + "---|" * (2 + len(variants)))
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    for seed in map(int, args.goal_seeds.split(",")):
        one = measure(pipe, ref, "dpmpp-2m", 1.0, "clip", args.goal_n, 20, seed, None)
        cells = []
        for k, interval in variants.items():
            r = measure(pipe, ref, "dpmpp-2m", 3.0, "clip", args.goal_n, 20, seed, interval)
            ratios[k].append(r["fd"] / one["fd"])
            cells.append(f"{r['acc']:.4f} / {r['fd']:.2f} ({ratios[k][-1]:.2f}x)")
        print(f"| {seed} | {one['acc']:.4f} / {one['fd']:.2f} | " + " | ".join(cells) + " |", flush=True)
    for k, rs in ratios.items():
        print(f"{k}: FD ratio mean {sum(rs) / len(rs):.2f} over seeds {args.goal_seeds}")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--samplers", default="dpmpp-2m,dpmpp-2m-sde,dpmpp-3m,unipc,ddim,euler,heun,ddpm")
    ap.add_argument("--w", default="1,3,5,8")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--clip", default="clip,none,dynamic", help="x0 clipping settings to compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--goal-n", type=int, default=2000, help="samples per seed for the goal line")
    ap.add_argument("--goal-seeds", default="0,1,2")
    ap.add_argument("--goal-only", action="store_true")
    ap.add_argument("--interval", default=None, help="LO,HI: the guidance interval of the goal line (default: the "
                    "run's sample.guidance_interval)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    pipe = kuosan.load(args.run, device="cpu")
    if pipe.num_classes is None:
        raise SystemExit(f"{args.run} is unconditional: classifier-free guidance needs a class-conditional run")
    ref = build_reference(pipe.config, pipe.data_shape, seed=args.seed, class_names=pipe.class_names)
    print(f"{args.run}: step {pipe.step}, {pipe.num_classes} classes; judge: {ref.classifier_name}; "
          f"{args.n} samples per cell, {args.nfe} NFE, seed {args.seed}")
    floor = quality(ref.heldout, ref)["fd"]
    print(f"held-out real data FD {floor:.3f} ({len(ref.heldout)} held-out samples)\n")

    def cell(method: str, w: float, clip: str) -> dict:
        return measure(pipe, ref, method, w, clip, args.n, args.nfe, args.seed, "run")

    ws = [float(v) for v in args.w.split(",")]
    goal(pipe, ref, args)
    if args.goal_only:
        return

    header = "| sampler | clip_x0 | " + " | ".join(f"w={w:g} acc / FD" for w in ws) + " |"
    print(header)
    print("|" + "---|" * (2 + len(ws)))
    for method in args.samplers.split(","):
        for clip in args.clip.split(","):
            cells = []
            for w in ws:
                try:
                    r = cell(method, w, clip)
                    cells.append(f"{r['acc']:.3f} / {r['fd']:.2f}")
                except ValueError as err:
                    cells.append(f"({str(err).splitlines()[0][:40]})")
            print(f"| {method} | {clip} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
