"""Flow samplers: integrate the velocity dx/dt = u(x, t) = alpha'(t) x0 + sigma'(t) eps in the process time t
(rectified flow, Liu et al. 2022, arXiv:2209.03003, eq. 1; flow matching, Lipman et al. 2022, arXiv:2210.02747).

For rectified flow (alpha = 1 - t, sigma = t) the velocity is eps - x0 and the paths are straight lines
when the data is a point; for any other process u is the same probability-flow drift (book eq. 4.40)
written in t, so these samplers run everywhere (grids uniform in t suit rectified flow).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, report

__all__ = ["sample_flow_euler", "sample_flow_midpoint"]


@torch.no_grad()
def sample_flow_euler(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """Euler in t (rectified flow, arXiv:2209.03003, §2.1 sampling): x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i)."""
    t, n = ts.to("cpu", torch.float64).tolist(), len(ts) - 1
    model = Model(denoiser, ts, x, kinds=("velocity", "x0"), cond=cond, cache=cache)
    for i in range(n):
        x = torch.add(x, model.velocity(x, i), alpha=t[i + 1] - t[i])
        report(callback, i, ts[i + 1], x, None)
    return model.x0(x, n) if denoise else x


@torch.no_grad()
def sample_flow_midpoint(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """Explicit midpoint rule in t (second order, two evaluations a step):
    x_mid = x_i + dt/2 u(x_i, t_i),  x_{i+1} = x_i + dt u(x_mid, t_i + dt/2)."""
    t64, n = ts.to("cpu", torch.float64), len(ts) - 1
    times = torch.cat([t64, 0.5 * (t64[1:] + t64[:-1])])  # grid, then midpoints
    model = Model(denoiser, times, x, kinds=("velocity", "x0"), cond=cond, cache=cache)
    t = t64.tolist()
    for i in range(n):
        dt = t[i + 1] - t[i]
        x_mid = torch.add(x, model.velocity(x, i), alpha=dt / 2)
        x = torch.add(x, model.velocity(x_mid, n + 1 + i), alpha=dt)
        report(callback, i, ts[i + 1], x, None)
    return model.x0(x, n) if denoise else x
