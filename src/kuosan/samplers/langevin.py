"""Langevin dynamics with the learned score: NCSN's annealed Langevin sampler (book §4.2; Song & Ermon 2019,
arXiv:1907.05600, Algorithm 1) and the Langevin corrector of predictor-corrector sampling (Song et al. 2021,
arXiv:2011.13456, Algorithms 4-5).

One Langevin step towards p_t:  x <- x + delta/2 score(x, t) + sqrt(delta) z,  z ~ N(0, I).
The score is -eps/sigma(t) for any process, so both samplers run on every process (the levels sigma_i of
NCSN become sigma(t_i); for alpha = 1 processes they are exactly NCSN's noise scales).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, noise, report, schedule

__all__ = ["sample_ald", "langevin_corrector"]


def langevin_corrector(
    model: Model, x: Tensor, j: int, sigma: float, snr: float, alpha: float, n_steps: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Langevin corrector (Score SDE Algorithms 4-5): n_steps of x <- x + delta g + sqrt(2 delta) z with
    g = score(x, t_j) and delta = 2 alpha (snr ||z|| / ||g||)^2 (alpha = 1 for VE, 1 - beta_i for VP).

    As in the reference code, ||z|| and ||g|| are per-sample norms averaged over the batch: a per-sample
    ratio explodes wherever the score vanishes (at the modes), which in low dimensions happens often."""
    for _ in range(n_steps):
        g = model.eps(x, j) * (-1 / sigma)
        z = noise(x, generator)
        ratio = z.flatten(1).norm(dim=1).mean() / g.flatten(1).norm(dim=1).mean()
        delta = 2 * alpha * (snr * ratio) ** 2
        x = x + delta * g + (2 * delta).sqrt() * z
    return x


@torch.no_grad()
def sample_ald(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    T: int = 100,
    eps: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, arXiv:1907.05600, Algorithm 1): at each level t_i of ts,
    T steps of Langevin dynamics with step delta_i = eps sigma_i^2 / sigma_L^2 (L = len(ts) levels).

    eps defaults to 0.2 sigma_L^2 (the paper's 2e-5 at sigma_L = 0.01). Costs len(ts) * T evaluations."""
    sch = schedule(denoiser.process, ts)
    sigma_L = sch.sigma[-1]
    eps = 0.2 * sigma_L**2 if eps is None else eps
    model = Model(denoiser, ts, x, kinds=("eps", "x0"), cond=cond)
    for i, sigma_i in enumerate(sch.sigma):
        delta = eps * sigma_i**2 / sigma_L**2
        for _ in range(T):
            score = model.eps(x, i) * (-1 / sigma_i)
            x = x + (delta / 2) * score + math.sqrt(delta) * noise(x, generator)
        report(callback, i, ts[i], x, None)
    return model.x0(x, len(ts) - 1) if denoise else x
