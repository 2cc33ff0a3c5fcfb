"""Does a ControlNet follow its condition? Trains digits-control on a base run per condition (unless the run is
there) and compares, for held-out test digits, samples under control with the base's samples from the same noise.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/control.py --base /work/runs/digits-ddpm --out runs/control \\
        --conditions edges,lowres,mask --n 500

Per condition (computed from each of the n test digits, kuosan.data.load_digits("test"), which holds 359) and model:
  edge F1 / IoU  of the sample's edge map (kuosan.data.conditions.edges) with the test digit's edge map, per image,
                 averaged (edges: the condition itself)
  lowres MSE     of the sample's 2x2 box means with the test digit's (lowres: the condition itself)
  known MSE      on the pixels the mask keeps (mask runs only)
  same digit     fraction the shipped digits classifier (kuosan.eval.features.classify) labels as the test digit's
                 label, the source of the condition; 10% is chance
The rows "test digits" (the sources themselves: the ceiling) and "base, no control" (the same noise without the
branch: the floor) frame each controlled row. Sampling: dpmpp-2m, 20 NFE, seed 0, x0 clipped, EMA weights.
Training time: wall clock and the child process's CPU time (user + system) of `kuosan train`.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

import kuosan
from kuosan.data import load_digits
from kuosan.data.conditions import box_mask, condition, edges, lowres_of, mask
from kuosan.eval.features import classify
from kuosan.pictures import save_grid


def edge_scores(x: Tensor, c_edges: Tensor) -> tuple[float, float]:
    """(mean F1, mean IoU) of edges(x) against the edge maps c_edges, per image; an image where both are empty
    counts 1."""
    e = edges(x)
    tp = (e * c_edges).sum((1, 2, 3))
    both = e.sum((1, 2, 3)) + c_edges.sum((1, 2, 3))
    union = both - tp
    f1 = torch.where(both > 0, 2 * tp / both.clamp(min=1), torch.ones_like(tp))
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.ones_like(tp))
    return f1.mean().item(), iou.mean().item()


def scores(x: Tensor, src: Tensor, labels: Tensor, m: Tensor | None) -> dict[str, float]:
    f1, iou = edge_scores(x, edges(src))
    row = {"edge F1": f1, "edge IoU": iou, "lowres MSE": (lowres_of(x) - lowres_of(src)).pow(2).mean().item()}
    if m is not None:
        row["known MSE"] = ((x - src).pow(2) * m).sum().item() / m.sum().item()
    row["same digit"] = (classify(x)[0] == labels).float().mean().item()
    return row


def train(kind: str, base: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """`kuosan train digits-control` into `out` at the recipe's defaults; (wall s, CPU s of the child)."""
    cmd = [str(Path(sys.executable).with_name("kuosan")), "train", "digits-control", "--out", str(out),
           "--set", f"base={base}", "--set", f"objective.condition={kind}", "--set", "train.progress=false", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=Path("/work/runs/digits-ddpm"))
    ap.add_argument("--out", type=Path, default=Path("runs/control"), help="control runs go to OUT/<condition>")
    ap.add_argument("--conditions", default="edges,lowres,mask")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra --set for training")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = load_digits("test")
    if args.n > len(x):
        print(f"the digits test split holds {len(x)} images: using all of them, not {args.n}")
    x, y = x[: args.n], y[: args.n]
    args.n = len(x)
    base = kuosan.load(args.base, device="cpu")
    sample = dict(method="dpmpp-2m", nfe=args.nfe, seed=0)
    x_base = base.generate(args.n, **sample)
    lines = ["| condition | model | train wall / CPU s | edge F1 | edge IoU | lowres MSE | known MSE | same digit |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in [k.strip() for k in args.conditions.split(",") if k.strip()]:
        run = args.out / kind
        timing = "(existing run)"
        if not (run / "checkpoints" / "latest").exists():
            wall, cpu = train(kind, args.base.resolve(), run, [f"--set={e}" for e in args.extra])
            timing = f"{wall:.0f} / {cpu:.0f}"
        g = torch.Generator().manual_seed(0)
        m = box_mask(tuple(x.shape), g) if kind == "mask" else None
        c = mask(x, m=m) if kind == "mask" else condition(kind, x)
        pipe = kuosan.load(run, device="cpu")
        t0 = time.perf_counter()
        x_ctl = pipe.generate(args.n, control=c, **sample)
        t_sample = time.perf_counter() - t0
        for name, imgs, tm in (("test digits", x, ""), ("base, no control", x_base, ""),
                               (f"controlled ({pipe.step} steps)", x_ctl, timing)):
            r = scores(imgs, x, y, m)
            known = f"{r['known MSE']:.4f}" if "known MSE" in r else "-"
            lines.append(f"| {kind} | {name} | {tm} | {r['edge F1']:.3f} | {r['edge IoU']:.3f} | "
                         f"{r['lowres MSE']:.4f} | {known} | {r['same digit']:.3f} |")
        print(f"{kind}: sampled {args.n} controlled digits in {t_sample:.1f} s", flush=True)
        k = 16  # picture: rows = test digit, condition (first channel, [0, 1] maps shown as [-1, 1]), controlled, base
        shown = c[:k, :1] * 2 - 1 if kind == "edges" else c[:k, :1]
        png = save_grid(torch.cat([x[:k], shown, x_ctl[:k], x_base[:k]]), args.out / f"{kind}.png", k)
        print(f"{kind}: picture {png} (rows: test digit, condition, controlled sample, base sample)", flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
