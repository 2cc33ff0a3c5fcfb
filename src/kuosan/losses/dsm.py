"""Denoising score matching in all its book forms (chapter 4): one function per weighting.

With x_t = alpha x0 + sigma eps and the model's output converted exactly to whatever the weighting compares
(predictions.py), every weighting is the same regression of E[eps | x_t] times a weight of t alone. Writing
e(t) = ||eps_hat - eps||^2 / D (the per-dimension "simple" error; s = sigma/alpha, ' = d/dt, D = dims):

    weighting    per-sample loss                                        = e(t) x
    simple       mean_dims ||eps_hat - eps||^2          (eq. 4.14)      1
    sigma2       1/2 sigma^2 mean_dims ||s_hat - grad log q||^2         1/2
    likelihood   1/2 g^2 sum_dims ||s_hat - grad log q||^2 (eq. 4.34)   D g^2 / (2 sigma^2)
    x0           mean_dims ||x0_hat - x0||^2                            s^2
    edm          lambda(s) mean_dims ||x0_hat - x0||^2                  (s^2 + sigma_data^2) / sigma_data^2
    v            mean_dims ||v_hat - v||^2                              ((alpha^2 + sigma^2) / alpha)^2
    velocity     mean_dims ||u_hat - (alpha' x0 + sigma' eps)||^2       (sigma' - alpha' sigma / alpha)^2

where grad log q = grad_x log q(x_t | x0) = -eps / sigma. So "sigma2" IS "simple" (halved); "x0" is "simple"
with weight SNR^-1; "v" is "simple" with weight (1 + SNR^-1) for VP; "velocity" on rectified flow is "simple"
with weight 1/(1-t)^2. All share one minimiser, the exact denoiser; they differ in how they spread model
capacity over t. Every form averages over dimensions except "likelihood", which SUMS (and keeps the 1/2), so
that (t_max - t_min) E_{t ~ U}[loss] is J_DSM(theta; g^2), the score part of the continuous-time bound on
-log p (Song et al. 2021, arXiv:2101.09258, Thm 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..denoiser import Denoiser, EDMPrecond
from ..predictions import Coefficients, from_x0_eps, to_x0_eps
from ..processes.base import as_time
from ._common import choose, mean_flat, sum_flat
from .times import REWEIGHTED, TIME_SAMPLINGS, sample_t

__all__ = [
    "DSMTerms",
    "WEIGHTINGS",
    "dsm_loss",
    "loss_simple",
    "loss_sigma2",
    "loss_likelihood",
    "loss_x0",
    "loss_edm",
    "loss_v",
    "loss_velocity",
]


class DSMTerms(NamedTuple):
    """One noised batch and the model's raw output on it: what every weighting reads."""

    out: Tensor  # raw model output of kind `prediction`, (B, ...)
    prediction: str
    x_t: Tensor  # alpha x0 + sigma eps
    x0: Tensor
    eps: Tensor
    t: Tensor  # (B,), the process's own precision
    c: Coefficients  # alpha, sigma, alpha', sigma' broadcast to x
    denoiser: Denoiser

    def predicted(self, kind: str) -> Tensor:
        """The model's output expressed as `kind` (exact conversion given x_t; no conversion when it matches)."""
        if kind == self.prediction:
            return self.out
        x0_hat, eps_hat = to_x0_eps(self.prediction, self.out, self.x_t, self.c)
        return from_x0_eps(kind, x0_hat, eps_hat, self.x_t, self.c)

    def target(self, kind: str) -> Tensor:
        """The regression target of `kind` computed from the true (x0, eps)."""
        return from_x0_eps(kind, self.x0, self.eps, self.x_t, self.c)


def loss_simple(d: DSMTerms) -> Tensor:
    """L_simple = ||eps_theta(x_t, t) - eps||^2 (Ho et al. 2020, arXiv:2006.11239, eq. 14; book eq. 4.14)."""
    return mean_flat((d.predicted("eps") - d.eps) ** 2)


def loss_sigma2(d: DSMTerms) -> Tensor:
    """1/2 sigma^2 ||s_theta - grad log q(x_t|x0)||^2 (Song & Ermon 2019, arXiv:1907.05600, eqs. 5-6, lambda =
    sigma^2; book eqs. 4.26-4.27)."""
    return 0.5 * mean_flat(d.c.sigma**2 * (d.predicted("score") - d.target("score")) ** 2)


def loss_likelihood(d: DSMTerms) -> Tensor:
    """1/2 g(t)^2 sum_dims ||s_theta - grad log q(x_t|x0)||^2, likelihood weighting (Song et al. 2021,
    arXiv:2101.09258, Thm 1; book eq. 4.34 with lambda = g^2)."""
    g2 = d.denoiser.process.g2(d.t).to(d.x0.dtype)
    return 0.5 * g2 * sum_flat((d.predicted("score") - d.target("score")) ** 2)


def loss_x0(d: DSMTerms) -> Tensor:
    """||x0_theta(x_t, t) - x0||^2, data prediction (Ho et al. 2020, arXiv:2006.11239, §3.2, "predicting x0")."""
    return mean_flat((d.predicted("x0") - d.x0) ** 2)


def _sigma_data(d: DSMTerms) -> float:
    if d.denoiser.precond is not None:
        return d.denoiser.precond.sigma_data
    return float(getattr(d.denoiser.process, "sigma_data", 0.5))


def loss_edm(d: DSMTerms) -> Tensor:
    """lambda(s) ||D_theta - x0||^2, lambda = (s^2 + sigma_data^2) / (s sigma_data)^2 with s = sigma/alpha
    (Karras et al. 2022, arXiv:2206.00364, eq. 8 and Table 1)."""
    process = d.denoiser.process
    s = torch.exp(-process.log_snr(d.t))  # sigma / alpha, (B,)
    precond = d.denoiser.precond or EDMPrecond(_sigma_data(d))
    return precond.loss_weight(s).to(d.x0.dtype) * mean_flat((d.predicted("x0") - d.x0) ** 2)


def loss_v(d: DSMTerms) -> Tensor:
    """||v_theta - (alpha eps - sigma x0)||^2 (Salimans & Ho 2022, arXiv:2202.00512, §4 and App. D)."""
    return mean_flat((d.predicted("v") - d.target("v")) ** 2)


def loss_velocity(d: DSMTerms) -> Tensor:
    """||u_theta - (alpha' x0 + sigma' eps)||^2, conditional flow matching with a Gaussian path (Lipman et al. 2022,
    arXiv:2210.02747, Thm 3); on rectified flow the target is eps - x0 (Liu et al. 2022, arXiv:2209.03003, eq. 1)."""
    return mean_flat((d.predicted("velocity") - d.target("velocity")) ** 2)


WEIGHTINGS: dict[str, Callable[[DSMTerms], Tensor]] = {
    "simple": loss_simple,
    "sigma2": loss_sigma2,
    "likelihood": loss_likelihood,
    "x0": loss_x0,
    "edm": loss_edm,
    "v": loss_v,
    "velocity": loss_velocity,
}


def _batch_time(t: Tensor | float, x0: Tensor) -> Tensor:
    """(B,) float times on x0's device; python floats and integer tensors become float64."""
    t = as_time(t).to(x0.device)
    return t.expand(x0.shape[0]) if t.ndim == 0 else t


def dsm_loss(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    weighting: str = "simple",
    t: Tensor | float | None = None,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    **cond: Any,
) -> Tensor:
    """Per-sample weighted denoising score matching loss (B,) (Vincent 2011; book eqs. 4.14, 4.26, 4.34).

    x_t = alpha(t) x0 + sigma(t) eps with one network evaluation; the caller takes the mean. When t is None
    it is drawn by `sample_t(process, B, time_sampling)`; for the reweighted samplings ("importance") the
    loss is multiplied by the importance weight, so its mean still estimates the uniform-t objective, while
    "lognormal" (EDM's p_train) is used as is. `noise` fixes eps; `cond` goes to the network.
    """
    weight_fn = choose(WEIGHTINGS, weighting, "weighting")
    choose(TIME_SAMPLINGS, time_sampling, "time sampling")
    w = None
    if t is None:
        t, w = sample_t(denoiser.process, x0.shape[0], time_sampling, generator, device=x0.device)
        w = w if time_sampling in REWEIGHTED else None
    t = _batch_time(t, x0)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    c = denoiser.coefficients(x0, t)
    x_t = c.alpha * x0 + c.sigma * eps
    out = denoiser(x_t, t, **cond)
    loss = weight_fn(DSMTerms(out, denoiser.prediction, x_t, x0, eps, t, c, denoiser))
    return loss if w is None else loss * w.to(loss.dtype)
