"""Inpainting with a latent run (docs/latent.md): held-out 28x28 MNIST digits with the top or the left half known,
filled through the run's latent space (Pipeline.inpaint: latent cells held at the input's encoding, decoded, the
known pixels pasted back), judged by the shipped MNIST classifier.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_inpaint.py runs/mnist-ldm --n 200
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_inpaint.py runs/mnist-ldm --n 16 --quick   # a smoke run

Columns: `agree` = fraction of completions the classifier labels as the original digit (the model is given the
true label, guidance w; w = 1 is the conditional model alone); `known` = max |result - input| on the known pixels
(must be 0); `s` = wall seconds for the n images. References: the classifier on the intact digits and on the known
half with the rest blanked to the background (-1).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

import kuosan
from kuosan.data.mnist import load_mnist
from kuosan.eval.features import mnist_classifier


def half(keep: str) -> Tensor:
    """The (28, 28) mask that keeps the top or the left half (1 = known)."""
    m = torch.zeros(28, 28)
    if keep == "top":
        m[:14] = 1
    else:
        m[:, :14] = 1
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=200, help="held-out digits (the first n of the 500)")
    ap.add_argument("--quick", action="store_true", help="one sampler, one w, the top half only")
    ap.add_argument("--picture", default=None, help="write input | result rows of the first 8 digits at w = 2")
    args = ap.parse_args()
    pipe = kuosan.load(args.run, device="cpu")
    x, y = load_mnist("heldout")
    x, y = x[: args.n], y[: args.n]
    clf = mnist_classifier()

    def agree(images: Tensor) -> float:
        with torch.no_grad():
            return float((clf(images).argmax(1) == y).float().mean())

    print(f"{args.run}: {args.n} held-out MNIST digits; classifier on the intact digits: {agree(x):.3f}")
    samplers = [("dpmpp-2m", 20)] if args.quick else [("dpmpp-2m", 20), ("ddpm", 100)]
    rows = []
    for keep in ("top",) if args.quick else ("top", "left"):
        m = half(keep)
        print(f"keep {keep}: the known half alone (rest blanked): {agree(x * m + (m - 1)):.3f}")
        for w in (2.0,) if args.quick else (1.0, 2.0):
            for method, nfe in samplers:
                t = time.perf_counter()
                out = pipe.inpaint(x, m, method=method, nfe=nfe, labels=y, guidance=w, seed=0)
                secs = time.perf_counter() - t
                known = float((out - x)[..., m.bool()].abs().max())
                print(f"  w = {w:g}  {method:9s} {nfe:4d} NFE   agree {agree(out):.3f}   known {known:.1e}   "
                      f"{secs:6.1f} s")
                if method == "dpmpp-2m" and w == 2.0:
                    rows += [x[:8] * m + (m - 1), out[:8]]
    if args.picture:
        from kuosan.pictures import save_grid

        save_grid(torch.cat(rows), args.picture, nrow=8, scale=4)
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
