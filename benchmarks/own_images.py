"""Do the samples look like digits? Saturation, range and the shipped classifier's verdict on `kuosan sample` output.

    .venv/bin/python benchmarks/own_images.py runs/demo/samples.npz     # one .npz (array `samples`, opt. `labels`)
    .venv/bin/python benchmarks/own_images.py runs/mnist-ddpm           # every samples*.npz under a run directory
    .venv/bin/python benchmarks/own_images.py --real                    # the 500 held-out MNIST digits: reference
    .venv/bin/python benchmarks/own_images.py --real runs/demo/samples.npz   # both, in one table

Images are (N, 1, 28, 28) (MNIST net) or (N, 1, 8, 8) (digits net) in [-1, 1]. Columns:
  saturated   tiles whose pixel std < 0.05 (flat: a solid tile of any grey) or with more than half their pixels
              above +0.9 (washed out white). The mirror rule (half below -0.9) is left out: it is MNIST's black
              background, 63-95% of every real digit's pixels, and would flag 100% of the real row.
  |x|>1.1     fraction of all pixels beyond +-1.1 (the sampler overshoots the data range).
  recognised  fraction the classifier gives max softmax >= 0.9 (it was trained to stay flat on non-digits).
  label acc   predicted class == requested label, where the .npz has `labels` (class-conditional sampling).
  0 .. 9      histogram of predicted classes, % of the row (mode collapse shows as one tall column).
Runs on the CPU in about a second for 1,000 samples (one thread).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kuosan.eval.features import classify

FLAT_STD = 0.05  # a tile with pixel std below this is flat (real MNIST digits: >= 0.29)
SATURATED = 0.9  # |pixel| beyond this is saturated
OVERSHOOT = 1.1  # |pixel| beyond this is outside the data range
RECOGNISED = 0.9  # max softmax at or above this: the classifier sees a digit


def saturated_tiles(x: Tensor) -> Tensor:
    """(N,) bool: pixel std < FLAT_STD, or more than half the pixels above +SATURATED."""
    flat = x.flatten(1)  # (N, D)
    return (flat.std(1) < FLAT_STD) | ((flat > SATURATED).float().mean(1) > 0.5)


def summarize(name: str, x: Tensor, labels: Tensor | None) -> dict:
    """One table row: n, saturated fraction, overshoot fraction, recognised fraction, label accuracy, histogram."""
    pred, confidence = classify(x)
    return {
        "source": name,
        "n": len(x),
        "saturated": saturated_tiles(x).float().mean().item(),
        "overshoot": (x.abs() > OVERSHOOT).float().mean().item(),
        "recognised": (confidence >= RECOGNISED).float().mean().item(),
        "label_acc": None if labels is None else (pred == labels).float().mean().item(),
        "hist": torch.bincount(pred, minlength=10)[:10].float() / max(len(x), 1),
    }


def load_samples(path: Path) -> tuple[Tensor, Tensor | None]:
    """(samples float32 (N, 1, H, W), labels int64 (N,) or None) from a `kuosan sample` .npz."""
    with np.load(path) as f:
        if "samples" not in f:
            raise SystemExit(f"{path}: no array `samples` (arrays: {', '.join(f.files)})")
        x = torch.from_numpy(f["samples"]).float()
        labels = torch.from_numpy(f["labels"]).long().flatten() if "labels" in f else None
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[-2:] not in ((28, 28), (8, 8)):
        raise SystemExit(f"{path}: samples must be (N, 1, 28, 28) or (N, 1, 8, 8); got {tuple(x.shape)}")
    if labels is not None and len(labels) != len(x):
        raise SystemExit(f"{path}: {len(labels)} labels for {len(x)} samples")
    return x, labels


def npz_files(path: Path) -> list[Path]:
    """The path itself if a file, else every samples*.npz under the run directory."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.rglob("samples*.npz"))
        if found:
            return found
        raise SystemExit(f"{path}: no samples*.npz under it; run `kuosan sample` first")
    raise SystemExit(f"{path}: no such file or directory")


def print_table(rows: list[dict]) -> None:
    width = max(12, *(len(r["source"]) for r in rows))
    head = f"{'source':<{width}} {'n':>6} {'saturated':>9} {'|x|>1.1':>8} {'recognised':>10} {'label acc':>9}"
    print(head + "  " + " ".join(f"{d:>4}" for d in range(10)) + "   (% predicted as each class)")
    for r in rows:
        acc = "-" if r["label_acc"] is None else f"{r['label_acc']:.3f}"
        hist = " ".join(f"{100 * h:4.0f}" for h in r["hist"].tolist())
        print(
            f"{r['source']:<{width}} {r['n']:>6} {r['saturated']:>9.3f} {r['overshoot']:>8.4f} "
            f"{r['recognised']:>10.3f} {acc:>9}  {hist}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", type=Path, help="samples .npz files or run directories")
    p.add_argument("--real", action="store_true", help="add the 500 held-out MNIST digits as the reference row")
    args = p.parse_args()
    if not args.paths and not args.real:
        p.error("give a samples .npz or a run directory, or --real")
    torch.set_num_threads(1)
    rows = []
    if args.real:
        from kuosan.data import load_mnist

        x, y = load_mnist("heldout")
        rows.append(summarize("real heldout", x, y))
    for path in args.paths:
        for f in npz_files(path):
            rows.append(summarize(str(f), *load_samples(f)))
    print_table(rows)


if __name__ == "__main__":
    main()
