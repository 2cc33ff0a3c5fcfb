"""Train the digits feature network behind kuosan's Frechet distance, KID and precision/recall on digits.

    .venv/bin/python scripts/train_feature_net.py        # ~1 min of one CPU core; writes src/kuosan/assets/

A small CNN classifier (kuosan.eval.features.DigitsFeatureNet) trained on the train split of
kuosan.data.load_digits (1438 images) with fixed seed 0, random 1-pixel shifts and light Gaussian pixel noise
(so that slightly imperfect samples still land on sensible features); tested on the held-out split (359).
Writes digits_features.safetensors and digits_features.json (accuracy, feature dimension, recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from kuosan.data import load_digits
from kuosan.eval.features import DIGITS_INFO, DIGITS_WEIGHTS, DigitsFeatureNet


def augment(x: torch.Tensor, g: torch.Generator, noise: float) -> torch.Tensor:
    """Random shift by up to one pixel (background -1 fills in) plus N(0, noise^2) pixel noise."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # (B, 1, 10, 10)
    dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
    x = padded[..., dy : dy + 8, dx : dx + 8]
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@torch.no_grad()
def accuracy(net: DigitsFeatureNet, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net.eval()(x).argmax(1) == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=DIGITS_WEIGHTS.parent)
    args = p.parse_args()

    torch.set_num_threads(1)  # small convolutions: one thread is as fast and the run is reproducible
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x_train, y_train = load_digits("train")
    x_test, y_test = load_digits("test")
    net = DigitsFeatureNet(width=args.width, feature_dim=args.feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(x_train), generator=g).split(64):
            loss = F.cross_entropy(net(augment(x_train[idx], g, args.noise)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  test accuracy {accuracy(net, x_test, y_test):.4f}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out / DIGITS_WEIGHTS.name))
    info = {
        "test_accuracy": accuracy(net, x_test, y_test),
        "train_accuracy": accuracy(net, x_train, y_train),
        "feature_dim": args.feature_dim,
        "width": args.width,
        "n_params": sum(p.numel() for p in net.parameters()),
        "data": "kuosan.data.load_digits: train split (1438) for training, test split (359) held out",
        "recipe": f"AdamW lr 2e-3 wd 1e-4, cosine, batch 64, {args.epochs} epochs, 1-pixel shifts, noise {args.noise}",
        "seed": args.seed,
        "train_seconds_wall": round(seconds, 1),
        "train_seconds_cpu": round(cpu_seconds, 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "script": "scripts/train_feature_net.py",
        "torch": torch.__version__,
    }
    (args.out / DIGITS_INFO.name).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
