"""Time grids for the samplers: a default kind per method and process, and the grid a budget allows.

Each method lists the grid kinds it prefers (its paper's first); the first one that suits the process wins:
  * "logsnr" and "karras" need a finite log-SNR at both ends (not rectified flow at t = 1);
  * a grid in t ("uniform", "quadratic") must not leave half of the log-SNR range to one of its ten steps
    (EDM's t = sigma does: a grid uniform in sigma spends almost no steps near the data).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..processes.base import Process
from .common import SamplerCache, memo

__all__ = ["default_grid", "suits", "make_ts"]


def _lam(process: Process, t: float) -> float:
    return process.log_snr(torch.tensor(t, dtype=torch.float64)).item()


def suits(process: Process, kind: str, t_start: float | None = None, t_end: float | None = None) -> bool:
    """Whether a grid of this kind resolves the process between t_start and t_end (see the module docstring)."""
    t0 = process.t_max if t_start is None else t_start
    t1 = process.t_min if t_end is None else t_end
    lam0, lam1 = _lam(process, t0), _lam(process, t1)
    if kind in ("logsnr", "karras"):
        return math.isfinite(lam0) and math.isfinite(lam1)
    if not math.isfinite(lam0):
        return True
    lam = process.log_snr(process.timesteps(10, kind, t_start=t0, t_end=t1))
    return bool((lam[1:] - lam[:-1]).max() < 0.5 * (lam1 - lam0))


def default_grid(
    process: Process, preferences: tuple[str, ...], t_start=None, t_end=None, cache: SamplerCache | None = None
) -> str:
    """The first preferred kind that suits the process, else the last preference (kept in the caller's cache)."""
    return memo(process, "default_grid", (preferences, t_start, t_end),
                lambda: next((k for k in preferences if suits(process, k, t_start, t_end)), preferences[-1]), cache)


def make_ts(
    process: Process,
    grid: str | Tensor,
    n: int,
    *,
    t_start=None,
    t_end=None,
    rho: float = 7.0,
    cache: SamplerCache | None = None,
) -> tuple[Tensor, bool]:
    """A descending float64 grid of n steps (n + 1 times) and whether it ended at sigma = 0.

    A grid that ends where sigma = 0 (DiscreteVP's "leading"/"trailing", or an explicit grid ending at t = 0)
    loses that point: the last step to sigma = 0 is the final denoise, so the grid of a kind is drawn with one
    more point to keep n steps. A grid of a kind is kept in the caller's cache, if any (a copy is returned)."""
    if isinstance(grid, Tensor):
        ts = grid.detach().to("cpu", torch.float64).flatten()
        if ts.numel() < 2 or not (ts[1:] < ts[:-1]).all():
            raise ValueError(f"an explicit grid must be a 1-D descending tensor of at least 2 times, got {grid}")
        return _strip_zero(process, ts, None, n, t_start, t_end, rho)

    def draw() -> tuple[Tensor, bool]:
        ts = process.timesteps(n, grid, t_start=t_start, t_end=t_end, rho=rho)
        return _strip_zero(process, ts, grid, n, t_start, t_end, rho)

    ts, ends_at_zero = memo(process, "grid", (grid, n, t_start, t_end, rho), draw, cache)
    return ts.clone(), ends_at_zero


def _strip_zero(process: Process, ts: Tensor, kind: str | None, n: int, t_start, t_end, rho) -> tuple[Tensor, bool]:
    """Drop a last time where sigma = 0 (redrawing a grid of a kind with one more point)."""
    if process.sigma(ts[-1:]).item() > 0:
        return ts, False
    if kind is not None:
        ts = process.timesteps(n + 1, kind, t_start=t_start, t_end=t_end, rho=rho)
    if ts.numel() < 3:
        raise ValueError("a grid ending at sigma = 0 needs at least one step before it")
    return ts[:-1], True
