"""Chapter 3 companion: Brownian motion, OU and geometric Brownian motion, Euler-Maruyama vs Milstein.

    python examples/chapter3_sde.py --out runs/chapter3

Writes four PNGs (matplotlib, Agg backend) and prints their paths. Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from kuosan.analytic.stochastic import (
    GeometricBrownianMotion,
    OrnsteinUhlenbeck,
    brownian_path,
    euler_maruyama,
    milstein,
    quadratic_variation,
)

F64 = torch.float64


def plot_brownian(plt, out: Path, g: torch.Generator) -> Path:
    """Sample paths inside the +-sqrt(t), +-2 sqrt(t) bands, and [W]_T -> T as the grid refines."""
    T = 1.0
    times, W = brownian_path(20, 500, T, generator=g, dtype=F64)
    fig, (ax, ax_qv) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(times, W[..., 0].T, lw=0.7, alpha=0.8)
    for k, alpha in ((1, 0.25), (2, 0.12)):
        ax.fill_between(times, -k * times.sqrt(), k * times.sqrt(), color="grey", alpha=alpha, lw=0)
    ax.set(title="Brownian paths, bands ±√t and ±2√t", xlabel="t", ylabel="W_t")
    steps = np.array([4, 16, 64, 256, 1024, 4096])
    qv = [quadratic_variation(brownian_path(200, int(n), T, generator=g, dtype=F64)[1])[:, 0] for n in steps]
    means, stds = [float(q.mean()) for q in qv], [float(q.std()) for q in qv]
    ax_qv.errorbar(steps, means, yerr=stds, fmt="o-", capsize=3)
    ax_qv.axhline(T, color="k", ls="--", label="T")
    ax_qv.set(xscale="log", title="quadratic variation [W]_T: mean ± std over 200 paths", xlabel="steps")
    ax_qv.legend()
    return save(fig, out / "brownian.png")


def plot_ou(plt, out: Path, g: torch.Generator) -> Path:
    """OU paths from spread-out starts entering the stationary band m ± 2 sqrt(sigma^2 / (2 mu))."""
    ou = OrnsteinUhlenbeck(mu=1.0, sigma=0.8, m=0.5)
    x0 = torch.linspace(-3.0, 4.0, 12, dtype=F64)[:, None]  # (12, 1)
    times, path = euler_maruyama(ou.sde(), x0, 0.0, 5.0, 500, g, return_path=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(times, path[..., 0].T, lw=0.7)
    std = math.sqrt(ou.stationary_var)
    ax.axhspan(ou.m - 2 * std, ou.m + 2 * std, color="tab:orange", alpha=0.2, label="m ± 2√(σ²/2μ)")
    for start in (-3.0, 4.0):
        x = torch.tensor(start, dtype=F64)
        mean, sd = ou.mean(x, times), ou.std(x, times)
        ax.plot(times, mean, "k--", lw=1)
        ax.fill_between(times, mean - 2 * sd, mean + 2 * sd, color="k", alpha=0.07, lw=0)
    ax.set(title="Ornstein-Uhlenbeck: closed-form mean ± 2 std (dashed, grey)", xlabel="t", ylabel="X_t")
    ax.legend(loc="upper right")
    return save(fig, out / "ou.png")


def plot_gbm(plt, out: Path, g: torch.Generator) -> Path:
    """GBM paths by Euler-Maruyama; the Monte-Carlo mean of 5000 paths vs x0 e^{mu t}."""
    gbm = GeometricBrownianMotion(mu=0.8, sigma=0.6)
    x0 = torch.ones(5000, 1, dtype=F64)
    times, path = euler_maruyama(gbm.sde(), x0, 0.0, 2.0, 400, g, return_path=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(times, path[:25, :, 0].T, lw=0.6, alpha=0.7)
    ax.plot(times, path[..., 0].mean(dim=0), "b", lw=2, label="mean of 5000 EM paths")
    ax.plot(times, gbm.mean(torch.tensor(1.0, dtype=F64), times), "k--", lw=2, label=r"$x_0 e^{\mu t}$")
    median = torch.exp((gbm.mu - gbm.sigma**2 / 2) * times)
    ax.plot(times, median, "r:", lw=2, label=r"median $x_0 e^{(\mu - \sigma^2/2) t}$")
    ax.set(yscale="log", title="geometric Brownian motion", xlabel="t", ylabel="X_t")
    ax.legend(loc="upper left")
    return save(fig, out / "gbm.png")


def plot_strong_order(plt, out: Path, g: torch.Generator) -> Path:
    """E|X_N - X_T| on GBM for Euler-Maruyama and Milstein, same Brownian increments, vs step size."""
    gbm, T, n_fine = GeometricBrownianMotion(mu=1.0, sigma=1.0), 1.0, 1024
    _, W = brownian_path(4000, n_fine, T, generator=g, dtype=F64)
    x0 = torch.ones(4000, 1, dtype=F64)
    exact = x0 * torch.exp((gbm.mu - gbm.sigma**2 / 2) * T + gbm.sigma * W[:, -1])
    steps = np.array([8, 16, 32, 64, 128, 256, 512, 1024])
    dts = T / steps
    errors = {}
    for name, solver in (("Euler-Maruyama", euler_maruyama), ("Milstein", milstein)):
        errors[name] = []
        for n in steps:
            dW = W[:, :: n_fine // n].diff(dim=1)  # the fine increments summed in blocks
            x_N = solver(gbm.sde(), x0, 0.0, T, int(n), dW=dW)
            errors[name].append(float((x_N - exact).abs().mean()))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for (name, err), marker in zip(errors.items(), "os", strict=True):
        slope = np.polyfit(np.log(dts), np.log(err), 1)[0]
        ax.loglog(dts, err, marker + "-", label=f"{name} (slope {slope:.2f})")
    for order, ls in ((0.5, ":"), (1.0, "--")):
        reference = errors["Euler-Maruyama"][0] * (dts / dts[0]) ** order
        ax.loglog(dts, reference, "k" + ls, lw=1, label=f"$dt^{{{order}}}$")
    ax.set(title="strong error on GBM (μ=1, σ=1, T=1)", xlabel="dt", ylabel="E|X_N - X_T|")
    ax.legend()
    return save(fig, out / "strong_order.png")


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/chapter3"), help="folder for the PNGs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    for plot in (plot_brownian, plot_ou, plot_gbm, plot_strong_order):
        print(f"wrote {plot(plt, args.out, g)}")
        plt.close("all")


if __name__ == "__main__":
    main()
