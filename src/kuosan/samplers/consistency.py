"""Multistep consistency sampling (Song et al. 2023, arXiv:2303.01469, Alg. 1; book §4.7): a consistency function
f(x_t, t) maps any point of a probability-flow trajectory to its endpoint, so one evaluation gives a sample and
each further evaluation re-noises that sample to a lower noise level and maps it back.

    x <- f(x_T, tau_0);   for tau_1 > ... > tau_{K-1}:  x_tau ~ q(x_tau | x_{t_min} = x),  x <- f(x_tau, tau)

The re-noising step is the forward transition from t_min (where f's output lives: the boundary condition
f(x, t_min) = x) to tau: x_tau = alpha_{tau|t_min} x + sigma_{tau|t_min} z. Under EDM (alpha = 1, sigma = t) this
is CM's x + sqrt(tau^2 - eps^2) z exactly; on DDPM processes it is LCM's multistep rule (Luo et al. 2023,
arXiv:2310.04378, Alg. 3) up to the noise at t_min, which LCM neglects. The grid's n + 1 times are the n
evaluation times and t_min, so `nfe` evaluations take an (nfe + 1)-point grid and no final denoise.

`gamma` < 1 is TCD's strategic stochastic sampling (Zheng et al. 2024, arXiv:2402.19159, §3.3, Alg. 4): each
re-noising starts from a DDIM step of the student's own (x0, eps) to the intermediate time s = (1 - gamma) tau
(+ gamma t_min) instead of from t_min, so only the part of the noise between s and tau is fresh; gamma = 1 is
the rule above (bit for bit), gamma = 0 deterministic DDIM on the student's x0 predictions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, noise, report

__all__ = ["sample_consistency", "restart_grid"]


@torch.no_grad()
def sample_consistency(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = False,
    cond: dict[str, Any] | None = None,
    cache=None,
    tau: float | None = None,
    gamma: float = 1.0,
) -> Tensor:
    """CM Alg. 1 over the evaluation times ts[0] > ... > ts[n-1] (ts[n] is the endpoint t_min, not evaluated):
    one evaluation per time; `denoise` is ignored (every evaluation already returns the endpoint x0).

    tau: the noise level s = sigma/alpha of the second evaluation (CM Alg. 1's tau_1, which CM picks by a search
    on FID: sigma = 0.821 for its CIFAR-10 CD model), the later ones on the Karras grid (rho 7) from tau down to
    ts[n]; None: the grid as given. A distilled student's tuned value: docs/distill_consistency.md.
    gamma: the share of each re-noising drawn fresh (TCD's stochasticity, module docstring), in [0, 1]."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"consistency sampler: gamma (the fresh share of each re-noising, TCD) must lie in [0, 1]; "
                         f"got {gamma}")
    p, n = denoiser.process, len(ts) - 1
    ts64 = ts.to("cpu", torch.float64)
    if tau is not None and n >= 2:
        ts64 = restart_grid(p, ts64, tau)
    tcd = gamma < 1.0
    model = Model(denoiser, ts64[:n], x, kinds=("x0", "eps") if tcd else ("x0",), cond=cond, cache=cache)
    x0, eps = model.x0_eps(x, 0) if tcd else (model.x0(x, 0), None)
    report(callback, 0, ts64[1], x, x0)
    t_end = ts64[n : n + 1].clamp_min(p.t_min)
    for i in range(1, n):
        if tcd:  # TCD Alg. 4: the DDIM point x_s of the student's (x0, eps) at s = (1 - gamma) tau + gamma t_min
            s = (1 - gamma) * ts64[i : i + 1] + gamma * t_end
            start, x_s = s, p.alpha(s).item() * x0 + p.sigma(s).item() * eps
        else:
            start, x_s = t_end, x0
        a, var = p.transition(start, ts64[i : i + 1])
        x = (a.item() * x_s + var.clamp_min(0).sqrt().item() * noise(x0, generator)).to(x0.dtype)
        x0, eps = model.x0_eps(x, i) if tcd else (model.x0(x, i), None)
        report(callback, i, ts64[i + 1], x, x0)
    return x0


def restart_grid(process, ts: Tensor, tau: float) -> Tensor:
    """The grid [ts[0], t(tau), ..., ts[-1]] of as many points as ts: the first evaluation at ts[0], then the
    Karras grid (EDM eq. 5, rho 7) from the level tau = sigma/alpha down to ts[-1]; float64."""
    lo, hi = (float(torch.exp(-process.log_snr(ts[[i]].to(torch.float64)))) for i in (-1, 0))
    if not lo < tau < hi:
        raise ValueError(f"consistency sampler: tau (a noise level sigma/alpha) must lie strictly between the grid's "
                         f"ends {lo:.4g} and {hi:.4g}; got {tau}")
    t_tau = float(process.t_of_log_snr(-torch.log(torch.tensor([tau], dtype=torch.float64))))
    rest = process.timesteps(len(ts) - 2, "karras", t_start=t_tau, t_end=float(ts[-1]))
    return torch.cat([ts[:1].to(torch.float64), rest.to(torch.float64)])
