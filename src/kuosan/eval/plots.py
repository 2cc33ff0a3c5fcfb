"""The report's pictures: quality against NFE (one line per sampler) and a sample sheet per sampler."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..pictures import save_figure

__all__ = ["plot_metric_vs_nfe", "plot_sample_sheet", "plot_fd_vs_accuracy"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_nfe(
    results: list[dict],
    path: str | Path,
    metric: str = "fd",
    floor: float | None = None,
    title: str = "",
    ylabel: str = "Frechet distance (digits features)",
) -> Path:
    """`metric` against NFE, log x (and log y), one line per sampler; the real-data floor as a dashed line."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=100)
    for sampler in dict.fromkeys(r["sampler"] for r in results):
        rows = sorted((r for r in results if r["sampler"] == sampler), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rows], [r[metric] for r in rows], "o-", ms=4, label=sampler)
    if floor is not None:
        ax.axhline(floor, color="0.4", ls="--", lw=1, label="held-out real data")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfes = sorted({r["nfe"] for r in results})
    ax.set_xticks(nfes, [str(k) for k in nfes], minor=False)
    ax.set_xticks([], minor=True)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_fd_vs_accuracy(results: list[dict], path: str | Path, floor: float | None = None, title: str = "") -> Path:
    """The guidance trade-off (Ho & Salimans 2022, arXiv:2207.12598, Fig. 2): FD (log y) against class accuracy,
    one line per sampler and NFE through the guidance scales, each point labelled with its w."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=100)
    rows = [r for r in results if r.get("accuracy") is not None and r.get("guidance") is not None]
    for key in dict.fromkeys((r["method"], r["nfe"]) for r in rows):
        line = sorted((r for r in rows if (r["method"], r["nfe"]) == key), key=lambda r: r["guidance"])
        acc, fd = [r["accuracy"] for r in line], [r["fd"] for r in line]
        ax.plot(acc, fd, "o-", ms=4, label=f"{key[0]}, {key[1]} NFE")
        for r in line:
            ax.annotate(f"w={r['guidance']:g}", (r["accuracy"], r["fd"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    if floor is not None:
        ax.axhline(floor, color="0.4", ls="--", lw=1, label="held-out real data")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("class accuracy (samples judged to be the requested class)")
    ax.set_ylabel("Frechet distance")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def _image_row(x: Tensor, pad: int = 1) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> one (H, N*(W+pad)-pad, C) float image in [0, 1], white gaps."""
    x = (x.detach().float().cpu().clamp(-1, 1) + 1) / 2
    n, c, h, w = x.shape
    row = torch.ones(c, h, n * (w + pad) - pad)
    for i in range(n):
        row[:, :, i * (w + pad) : i * (w + pad) + w] = x[i]
    return row.permute(1, 2, 0)


def plot_sample_sheet(samples: dict[int, Tensor], path: str | Path, title: str = "", per_row: int = 16) -> Path:
    """One row of samples per NFE (images), or one scatter panel per NFE (2-D points); same seed in every row."""
    plt = _pyplot()
    nfes = sorted(samples)
    points = next(iter(samples.values())).ndim == 2
    if points:
        fig, axes = plt.subplots(1, len(nfes), figsize=(2.2 * len(nfes), 2.4), dpi=100, squeeze=False)
        for ax, nfe in zip(axes[0], nfes, strict=True):
            p = samples[nfe].detach().float().cpu().numpy()
            ax.scatter(p[:, 0], p[:, 1], s=0.5)
            ax.set_title(f"NFE {nfe}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    else:
        fig, axes = plt.subplots(len(nfes), 1, figsize=(per_row * 0.45, 0.55 * len(nfes) + 0.4), dpi=100,
                                 squeeze=False)
        for ax, nfe in zip(axes[:, 0], nfes, strict=True):
            img = _image_row(samples[nfe][:per_row])
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_ylabel(f"{nfe}", rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
