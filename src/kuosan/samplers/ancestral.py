"""Ancestral sampling: x_s ~ N(mu(x_t, x0_theta), sigma_ts^2 I) down a grid, the DDPM sampler (book Algorithm 2,
eq. 4.13; Ho et al. 2020, arXiv:2006.11239, Algorithm 2) on any process and any grid.

The mean is the posterior mean of q(x_s | x_t, x0) at x0 = x0_theta(x_t, t) (book eqs. 4.9-4.11). With
x0_theta from Tweedie's formula this is exactly Score SDE's ancestral sampling (Song et al. 2021,
arXiv:2011.13456, App. F, eq. 47; book eq. 4.31): mu = (x_t + sigma_{t|s}^2 score) / alpha_{t|s}.
The variance is a choice (DDPM §3.2): the posterior variance beta-tilde (exact when x0 is known; eq. 47 for
VE) or the forward transition variance beta = sigma_{t|s}^2 (DDPM's sigma_t^2 = beta_t; eq. 47 for VP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import Process
from .common import Callback, Model, noise, report
from .dpm_solver import posterior_coefficients

__all__ = ["sample_ancestral", "beta", "beta_tilde", "VARIANCES"]


def beta_tilde(process: Process, s: Tensor, t: Tensor) -> Tensor:
    """Posterior variance beta-tilde_{t|s} = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (book eq. 4.11, DDPM eq. 7)."""
    return posterior_coefficients(process, s, t)[2]


def beta(process: Process, s: Tensor, t: Tensor) -> Tensor:
    """Forward transition variance beta_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 (DDPM's sigma_t^2 = beta_t)."""
    return process.transition(s, t)[1]


VARIANCES: dict[str, Callable[[Process, Tensor, Tensor], Tensor]] = {"beta_tilde": beta_tilde, "beta": beta}


@torch.no_grad()
def sample_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    variance: str = "beta_tilde",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """DDPM ancestral sampling (book Algorithm 2, eq. 4.13): x_s = c_xt x_t + c_x0 x0_theta(x_t, t) + std z,
    std^2 = VARIANCES[variance](s, t); the final step to t = 0 is the noise-free x0 prediction."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {sorted(VARIANCES)}")
    p, t64, n = denoiser.process, ts.to("cpu", torch.float64), len(ts) - 1
    c_xt, c_x0, _ = posterior_coefficients(p, t64[1:], t64[:-1])
    std = VARIANCES[variance](p, t64[1:], t64[:-1]).clamp(min=0).sqrt()
    model = Model(denoiser, ts, x, kinds=("x0",), cond=cond)
    c_xt, c_x0, std = c_xt.tolist(), c_x0.tolist(), std.tolist()
    for i in range(n):
        x0 = model.x0(x, i)
        x = c_xt[i] * x + c_x0[i] * x0 + std[i] * noise(x, generator)
        report(callback, i, ts[i + 1], x, x0)
    return model.x0(x, n) if denoise else x

