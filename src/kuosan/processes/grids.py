"""Time grids for reverse-time solvers: the grid matters as much as the solver's order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import Process

__all__ = ["GRID_KINDS", "make_grid", "grid_time"]

GRID_KINDS = ("uniform", "logsnr", "karras", "quadratic")


def _finite_log_snr(proc: Process, t0: float, t1: float) -> tuple[Tensor, Tensor]:
    lam = proc.log_snr(torch.tensor([t0, t1], dtype=torch.float64))
    if not torch.isfinite(lam).all():
        raise ValueError(
            f"{proc!r}: log-SNR is infinite at t={t0 if not torch.isfinite(lam[0]) else t1}; a grid uniform in "
            "log-SNR or Karras sigma needs finite end points (pass t_start/t_end inside, or use kind='uniform')"
        )
    return lam[0], lam[1]


def _uniform(proc: Process, u: Tensor, t0: float, t1: float, rho: float) -> Tensor:
    """Uniform in t (DDPM/DDIM, Score SDE)."""
    return t0 + (t1 - t0) * u


def _logsnr(proc: Process, u: Tensor, t0: float, t1: float, rho: float) -> Tensor:
    """Uniform in lambda = log(alpha/sigma) (DPM-Solver, arXiv:2206.00927, §3.3 "time_uniform_logSNR")."""
    lam0, lam1 = _finite_log_snr(proc, t0, t1)
    t = proc.t_of_log_snr(lam0 + (lam1 - lam0) * u)
    t[0], t[-1] = t0, t1
    return t


def _karras(proc: Process, u: Tensor, t0: float, t1: float, rho: float) -> Tensor:
    """EDM grid (Karras et al. 2022, arXiv:2206.00364, eq. 5) on s = sigma/alpha = exp(-lambda)."""
    lam0, lam1 = _finite_log_snr(proc, t0, t1)
    s0, s1 = torch.exp(-lam0), torch.exp(-lam1)
    s = (s0 ** (1 / rho) + u * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
    t = proc.t_of_log_snr(-torch.log(s))
    t[0], t[-1] = t0, t1
    return t


def _quadratic(proc: Process, u: Tensor, t0: float, t1: float, rho: float) -> Tensor:
    """Uniform in sqrt(t) (DPM-Solver's "time_quadratic", DDIM §D.2 quadratic skip)."""
    a, b = t0**0.5, t1**0.5
    return (a + (b - a) * u) ** 2


_GRIDS = {"uniform": _uniform, "logsnr": _logsnr, "karras": _karras, "quadratic": _quadratic}


def make_grid(
    proc: Process, n: int, kind: str, t0: float, t1: float, *, rho: float = 7.0, dtype=torch.float64
) -> Tensor:
    """n+1 descending times from t0 to t1 of the given kind."""
    if n < 1:
        raise ValueError(f"a time grid needs n >= 1 steps, got n={n}")
    if not t0 > t1:
        raise ValueError(f"a reverse-time grid runs downwards: got t_start={t0} <= t_end={t1}")
    if kind not in _GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; choose one of {sorted(_GRIDS)}")
    u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    t = _GRIDS[kind](proc, u, float(t0), float(t1), rho)
    t[0], t[-1] = t0, t1  # exact end points (t0 + (t1 - t0) * 1 need not round to t1)
    return t.to(dtype)


def grid_time(proc: Process, u: float, kind: str, t0: float, t1: float, *, rho: float = 7.0) -> float:
    """The time a fraction u in [0, 1] of the way from t0 to t1 along a grid of this kind (its own parameter:
    t, lambda, sigma^(1/rho) or sqrt(t)); u = i/n gives make_grid's t_i, u = 0 and 1 give t0 and t1 exactly."""
    if kind not in _GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; choose one of {sorted(_GRIDS)}")
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"a grid fraction must lie in [0, 1]; got {u}")
    if u in (0.0, 1.0):
        return float(t0 if u == 0.0 else t1)
    return float(_GRIDS[kind](proc, torch.tensor([0.0, u, 1.0], dtype=torch.float64), float(t0), float(t1), rho)[1])
