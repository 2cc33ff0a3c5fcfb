"""Pictures of samples for train previews, the CLI and eval: an image grid (PIL) for (N, C, H, W) data,
a scatter plot (matplotlib) for 2-D points."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid", "save_grid", "save_scatter", "save_samples", "save_figure", "save_npz"]


def image_grid(x: Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one uint8 (rows*(H+pad)+pad, cols*(W+pad)+pad, C) mosaic, nrow per row."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def save_grid(x: Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid, each pixel enlarged `scale` times (nearest)."""
    from PIL import Image

    arr = image_grid(x, nrow)
    scale = scale or max(1, 32 // x.shape[-1])  # small images (8x8 digits) get enlarged to ~32 px
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_scatter(x: Tensor, path: str | Path, reference: Tensor | None = None, title: str | None = None) -> Path:
    """Scatter plot of (N, 2) points (reference data in grey behind them when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=1, c="0.8", label="data")
    p = x.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=1, c="C0", label="samples")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def save_samples(
    x: Tensor, path: str | Path, reference: Tensor | None = None, title: str | None = None, nrow: int | None = None
) -> Path:
    """A grid for images (N, C, H, W) with nrow images per row, a scatter plot for 2-D points (N, 2)."""
    if x.ndim == 4:
        return save_grid(x, path, nrow)
    if x.ndim == 2 and x.shape[1] == 2:
        return save_scatter(x, path, reference, title)
    raise ValueError(f"cannot draw samples of shape {tuple(x.shape)}: need (N, C, H, W) images or (N, 2) points")


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure laid out tightly, written to `path` (parents created) and closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_npz(x: Tensor, path: str | Path, **extra: np.ndarray) -> Path:
    """The raw samples as float32 array `samples` (N x C x H x W for images) in a compressed .npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, samples=x.detach().float().cpu().numpy(), **extra)
    return path
