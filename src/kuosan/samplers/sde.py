"""Reverse-time SDE samplers of Score SDE (book §4.3; Song et al. 2021, arXiv:2011.13456): Euler-Maruyama on
the reverse SDE, the reverse-diffusion predictor, and predictor-corrector sampling.

Reverse SDE (book eq. 4.33, Score SDE eq. 6):   dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw-bar,
with score = -eps/sigma(t), integrated backwards from ts[0] to ts[-1].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, noise, report, schedule
from .langevin import langevin_corrector

__all__ = ["sample_euler_maruyama", "sample_reverse_diffusion", "sample_pc", "reverse_diffusion_coefficients"]


def _check_finite(name: str, **coefs: torch.Tensor) -> None:
    for what, v in coefs.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} needs a finite {what} at every grid time; this process's SDE is singular on the "
                             "grid (rectified flow at t = 1, where alpha = 0): start the grid below t_max")


@torch.no_grad()
def sample_euler_maruyama(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE (book eq. 4.33; Score SDE eq. 6), dt = t_i - t_{i+1} > 0:
    x_{i+1} = x_i - [f(t_i) x_i - g^2(t_i) score_i] dt + g(t_i) sqrt(dt) z."""
    p, t64, n = denoiser.process, ts.to("cpu", torch.float64), len(ts) - 1
    f, g2, sig = p.f(t64[:-1]), p.g2(t64[:-1]), p.sigma(t64[:-1])
    _check_finite("euler-maruyama", **{"f(t)": f, "g(t)^2": g2})
    dt = (t64[:-1] - t64[1:]).tolist()
    f, g2, sig = f.tolist(), g2.tolist(), sig.tolist()
    model = Model(denoiser, ts, x, kinds=("eps", "x0"), cond=cond)
    for i in range(n):
        eps = model.eps(x, i)  # score = -eps / sigma
        x = (1 - f[i] * dt[i]) * x - (g2[i] * dt[i] / sig[i]) * eps + math.sqrt(g2[i] * dt[i]) * noise(x, generator)
        report(callback, i, ts[i + 1], x, None)
    return model.x0(x, n) if denoise else x


def reverse_diffusion_coefficients(process, ts: Tensor) -> tuple[list[float], list[float], list[float]]:
    """Score SDE eq. 45-46 from the discretised forward process x_t = a x_s + b z (a, b^2 = process.transition(s, t)):
    x_s = (2 - a) x_t + b^2 score + b z. Returns (2 - a, b^2 / sigma_t on -eps, b) per step."""
    t64 = ts.to("cpu", torch.float64)
    a, b2 = process.transition(t64[1:], t64[:-1])
    sig = process.sigma(t64[:-1])
    if (a == 0).any():
        raise ValueError("reverse diffusion needs alpha_{t|s} > 0 on the grid; at alpha(t) = 0 (rectified flow at "
                         "t = 1) its step (2 - alpha_{t|s}) x is meaningless: start the grid below t_max")
    return (2 - a).tolist(), (b2 / sig).tolist(), b2.sqrt().tolist()


@torch.no_grad()
def sample_reverse_diffusion(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Reverse-diffusion predictor (Score SDE eq. 46; App. E): x_s = (2 - a) x_t + b^2 score + b z
    with a = alpha_{t|s}, b^2 = sigma_{t|s}^2 (VP: 2 - sqrt(1 - beta_i), beta_i; VE: 1, sigma_i^2 - sigma_{i-1}^2)."""
    n = len(ts) - 1
    c_x, c_eps, c_z = reverse_diffusion_coefficients(denoiser.process, ts)
    model = Model(denoiser, ts, x, kinds=("eps", "x0"), cond=cond)
    for i in range(n):
        x = c_x[i] * x - c_eps[i] * model.eps(x, i) + c_z[i] * noise(x, generator)
        report(callback, i, ts[i + 1], x, None)
    return model.x0(x, n) if denoise else x


@torch.no_grad()
def sample_pc(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    snr: float = 0.16,
    n_corrector: int = 1,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Predictor-corrector sampling (Score SDE Algorithms 2-5): a reverse-diffusion predictor step to t_{i+1},
    then `n_corrector` Langevin corrector steps at t_{i+1} with signal-to-noise ratio `snr` and
    alpha_i = alpha_{t_i|t_{i+1}}^2 (1 for VE, 1 - beta_i for VP). Costs 1 + n_corrector evaluations a step."""
    p, n = denoiser.process, len(ts) - 1
    c_x, c_eps, c_z = reverse_diffusion_coefficients(p, ts)
    t64 = ts.to("cpu", torch.float64)
    a2 = (p.transition(t64[1:], t64[:-1])[0] ** 2).tolist()
    sigma = schedule(p, ts).sigma
    model = Model(denoiser, ts, x, kinds=("eps", "x0"), cond=cond)
    for i in range(n):
        x = c_x[i] * x - c_eps[i] * model.eps(x, i) + c_z[i] * noise(x, generator)
        x = langevin_corrector(model, x, i + 1, sigma[i + 1], snr, a2[i], n_corrector, generator)
        report(callback, i, ts[i + 1], x, None)
    return model.x0(x, n) if denoise else x
