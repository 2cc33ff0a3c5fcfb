"""Classifier-free guidance on a class-conditional run: class accuracy and FD for every (sampler, w, x0 clipping).

    .venv/bin/python benchmarks/guidance.py runs/digits-cond                        # the issue's goal, then the table
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--samplers", default="dpmpp-2m,dpmpp-2m-sde,dpmpp-3m,unipc,ddim,euler,heun,ddpm")
    ap.add_argument("--w", default="1,3,5,8")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--clip", default="clip,none,dynamic", help="x0 clipping settings to compare")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    pipe = kuosan.load(args.run, device="cpu")
    if pipe.num_classes is None:
        raise SystemExit(f"{args.run} is unconditional: classifier-free guidance needs a class-conditional run")
    ref = build_reference(pipe.config, pipe.data_shape, seed=args.seed, class_names=pipe.class_names)
    print(f"{args.run}: step {pipe.step}, {pipe.num_classes} classes; judge: {ref.classifier_name}; "
          f"{args.n} samples per cell, {args.nfe} NFE, seed {args.seed}")
    floor = quality(ref.heldout, ref)["fd"]
    print(f"held-out real data FD {floor:.3f}\n")

    def cell(method: str, w: float, clip: str) -> dict:
        den = pipe.model(w, clip)
        t0 = time.process_time()
        x, _ = draw_samples(den, (args.n, *pipe.data_shape), method, args.nfe, seed=args.seed,
                            num_classes=pipe.num_classes, progress=False)
        q = quality(x, ref)
        return {"acc": accuracy(x, ref, pipe.num_classes), "fd": q["fd"], "cpu": time.process_time() - t0}

    ws = [float(v) for v in args.w.split(",")]
    goal = {w: cell("dpmpp-2m", w, "clip") for w in (1.0, 3.0)}
    ratio = goal[3.0]["fd"] / goal[1.0]["fd"]
    print(f"goal: dpmpp-2m {args.nfe} NFE, x0 clipped: w = 3 accuracy {goal[3.0]['acc']:.3f} (>= 0.99: "
          f"{'met' if goal[3.0]['acc'] >= 0.99 else 'NOT met'}), FD {goal[3.0]['fd']:.2f} = {ratio:.2f} x "
          f"FD at w = 1 ({goal[1.0]['fd']:.2f}; <= 2x: {'met' if ratio <= 2 else 'NOT met'})\n")

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
