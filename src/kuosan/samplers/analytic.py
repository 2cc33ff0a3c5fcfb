"""Analytic-DPM: the optimal reverse variance in closed form (Bao et al. 2022, arXiv:2201.06503, Theorem 1).

For the DDIM family q_lam(x_s | x_t, x0) = N(alpha_s x0 + sqrt(sigma_s^2 - lam^2) (x_t - alpha_t x0)/sigma_t, lam^2 I)
with x0 = x0_theta(x_t), the KL-optimal isotropic reverse variance is (eq. 7, written for any grid s < t)

    sigma*^2 = lam^2 + (sigma_t / alpha_{t|s} - sqrt(sigma_s^2 - lam^2))^2 (1 - Gamma_t),
    Gamma_t  = E_{q(x_t)} ||eps_theta(x_t, t)||^2 / d                       (eq. 8: a moment of the model)

lam^2 = beta-tilde gives Analytic-DDPM, lam^2 = eta^2 beta-tilde (eta = 0 by default) Analytic-DDIM.
Gamma_t is estimated once by Monte-Carlo on data (`estimate_gamma`): a precomputation with its own network
calls, outside the sampling budget `nfe`, and reusable for every grid (it is interpolated in log-SNR). The
caller holds the table and passes it as `gamma=`; nothing is cached here (`data=` re-estimates on every call),
so a table estimated before the data or the network changed is the caller's to replace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, SamplerCache, noise, report
from .dpm_solver import posterior_coefficients

__all__ = ["GammaTable", "estimate_gamma", "optimal_variance", "sample_analytic_ddpm", "sample_analytic_ddim"]

_LAM_CLIP = 50.0  # log-SNR beyond which Gamma is flat (alpha = 0 or sigma = 0 in float64)


@dataclass(frozen=True)
class GammaTable:
    """Gamma_t = E ||eps_theta(x_t, t)||^2 / d at knot times, interpolated linearly in log-SNR."""

    t: Tensor  # (K,) float64 knot times
    gamma: Tensor  # (K,) float64 estimates
    process: str  # repr of the process it was estimated under

    def at(self, process, t: Tensor) -> Tensor:
        """Gamma at times t (float64), interpolated in lambda between the knots, clamped outside."""
        if repr(process) != self.process:
            raise ValueError(f"this Gamma table was estimated under {self.process}, not {process!r}")
        lam_k = process.log_snr(self.t).clamp(-_LAM_CLIP, _LAM_CLIP).numpy()
        lam = process.log_snr(t.to(torch.float64)).clamp(-_LAM_CLIP, _LAM_CLIP).numpy()
        order = np.argsort(lam_k)
        return torch.from_numpy(np.interp(lam, lam_k[order], self.gamma.numpy()[order]))


@torch.no_grad()
def estimate_gamma(
    denoiser: Denoiser,
    data: Tensor,
    ts: Tensor | None = None,
    *,
    n_knots: int = 64,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
    cond: dict[str, Any] | None = None,
) -> GammaTable:
    """Monte-Carlo Gamma_t = mean over data x0 and eps of ||eps_theta(alpha_t x0 + sigma_t eps, t)||^2 / d
    (Analytic-DPM eq. 8) at the times ts (default: n_knots times uniform in log-SNR over the process).
    Costs ceil(len(data) / batch_size) network calls per knot, counted in denoiser.nfe."""
    p = denoiser.process
    if ts is None:
        kind = "logsnr" if math.isfinite(_lam(p, p.t_max)) else "uniform"
        ts = p.timesteps(n_knots - 1, kind)
    ts = ts.to("cpu", torch.float64)
    d = data[0].numel()
    gam = []
    for t in ts:
        total = 0.0
        for x0 in data.split(batch_size):
            x_t, _ = p.marginal_sample(x0, t.to(x0.device).expand(x0.shape[0]), generator=generator)
            kw = {k: v[: x0.shape[0]] for k, v in (cond or {}).items()}
            e = denoiser.eps(x_t, t.to(x0.device).expand(x0.shape[0]), **kw)
            total += e.double().flatten(1).square().sum().item()
        gam.append(total / (len(data) * d))
    return GammaTable(ts, torch.tensor(gam, dtype=torch.float64), repr(p))


def _lam(process, t: float) -> float:
    return process.log_snr(torch.tensor(t, dtype=torch.float64)).item()


def optimal_variance(process, s: Tensor, t: Tensor, lam2: Tensor, gamma: Tensor) -> Tensor:
    """Analytic-DPM Theorem 1 (eq. 7) on a grid: sigma*^2 = lam^2 + (sigma_t/alpha_{t|s} - sqrt(sigma_s^2 - lam^2))^2
    (1 - Gamma_t), with Gamma clamped to [0, 1] (the bounds of Theorem 2)."""
    a_ts = process.transition(s, t)[0]
    gap = process.sigma(t) / a_ts - torch.sqrt((process.sigma(s) ** 2 - lam2).clamp(min=0))
    return lam2 + gap.square() * (1 - gamma.clamp(0, 1))


def _sample_analytic(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    gamma: GammaTable,
    eta2: float | None,
    generator,
    callback,
    denoise,
    cond,
    cache: SamplerCache | None,
) -> Tensor:
    """x_s = alpha_s x0 + sqrt(sigma_s^2 - lam^2) eps + sigma* z (the DDIM-family mean, the optimal variance)."""
    p, t64, n = denoiser.process, ts.to("cpu", torch.float64), len(ts) - 1
    s, t = t64[1:], t64[:-1]
    if (p.alpha(t) == 0).any():
        raise ValueError("Analytic-DPM's variance needs alpha(t) > 0 on the grid (sigma_t/alpha_{t|s} is infinite at "
                         "alpha = 0, rectified flow at t = 1): start the grid below t_max")
    post = posterior_coefficients(p, s, t)[2]
    lam2 = post if eta2 is None else eta2 * post
    std = optimal_variance(p, s, t, lam2, gamma.at(p, t)).sqrt().tolist()
    c_x0 = p.alpha(s).tolist()
    c_eps = torch.sqrt((p.sigma(s) ** 2 - lam2).clamp(min=0)).tolist()
    model = Model(denoiser, ts, x, cond=cond, cache=cache)
    for i in range(n):
        x0, eps = model.x0_eps(x, i)
        x = c_x0[i] * x0 + c_eps[i] * eps + std[i] * noise(x, generator)
        report(callback, i, ts[i + 1], x, x0)
    return model.x0(x, n) if denoise else x


def _gamma_table(denoiser: Denoiser, gamma: GammaTable | None, data: Tensor | None, generator) -> GammaTable:
    """The caller's table; else one estimated afresh on `data` (every call: no cache); else an error saying how."""
    if gamma is not None:
        return gamma
    if data is None:
        raise ValueError("Analytic-DPM needs its Gamma_t table: estimate it once with "
                         "gamma = kuosan.samplers.estimate_gamma(denoiser, x0_data) and pass gamma=gamma")
    return estimate_gamma(denoiser, data, generator=generator)


@torch.no_grad()
def sample_analytic_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    gamma: GammaTable | None = None,
    data: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache: SamplerCache | None = None,
) -> Tensor:
    """Analytic-DDPM (Bao et al. 2022, arXiv:2201.06503, eq. 7 with lam^2 = beta-tilde): the DDPM posterior mean
    and the optimal variance sigma*^2 >= beta-tilde. gamma = estimate_gamma(denoiser, x0_data), estimated once by the
    caller; data=x0_data instead re-estimates it on every call (its own network calls, outside the budget)."""
    table = _gamma_table(denoiser, gamma, data, generator)
    return _sample_analytic(denoiser, x, ts, table, None, generator, callback, denoise, cond, cache)


@torch.no_grad()
def sample_analytic_ddim(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    eta: float = 0.0,
    gamma: GammaTable | None = None,
    data: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache: SamplerCache | None = None,
) -> Tensor:
    """Analytic-DDIM (Bao et al. 2022, arXiv:2201.06503, eq. 7 with lam^2 = eta^2 beta-tilde, eta = 0 by default):
    the DDIM mean plus the optimal variance, which is small but not zero at eta = 0. gamma and data as in
    sample_analytic_ddpm."""
    table = _gamma_table(denoiser, gamma, data, generator)
    return _sample_analytic(denoiser, x, ts, table, eta**2, generator, callback, denoise, cond, cache)
