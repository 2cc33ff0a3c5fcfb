"""The DDPM variational bound with a learned variance and the hybrid loss (Nichol & Dhariwal 2021,
arXiv:2102.09672, §3.1; Ho et al. 2020, arXiv:2006.11239, eq. 5; book §4.1).

Training index i in {0..N-1} is the book's step i+1, at t_i = (i+1)/N; its predecessor is t_{i-1} = i/N
(t = 0 is the clean data). Everything comes from the process interface at those two times:

    beta_i        = sigma^2_{t_i | t_{i-1}}                       (the transition variance; 1 - alpha_i for DDPM)
    beta~_i       = beta_i sigma^2(t_{i-1}) / sigma^2(t_i)        (posterior variance, Ho eq. 7)
    L_{i}         = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))      for i > 0
    L_0           = -log p_theta(x0 | x_1), Gaussian discretised into 256 bins (Ho eq. 13)

The terms themselves live in losses/vlb.py, shared with kuosan.likelihood.ddpm_vlb; this module picks the
training times and the network's variance output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import Process
from ._common import mean_flat, require_training_grid, training_grid
from .vlb import bound_term, interpolated_log_variance, step_variances

__all__ = ["ddpm_log_betas", "ddpm_posterior_logvar_learned", "vlb_term", "hybrid_loss"]


def _grid(process: Process, device) -> Tensor:
    """The training times t_i = (i+1)/N, i = 0..N-1, as float64 (N,) (the bound's tau_1 < ... < tau_N)."""
    return training_grid(process).to(device)  # type: ignore[union-attr]


def ddpm_log_betas(process: Process, t_index: Tensor) -> tuple[Tensor, Tensor]:
    """(log beta_i, log beta~_i clipped) as float64 (B,) (Ho et al. 2020, eqs. 2 and 7), from vlb.step_variances.

    beta~_0 = 0, so at i = 0 the clipped value beta~_1 is used, as in the improved-DDPM code.
    """
    require_training_grid(process, "the DDPM variational bound")
    i = torch.as_tensor(t_index)
    beta, beta_tilde = step_variances(process, _grid(process, i.device))
    return torch.log(beta)[i], torch.log(beta_tilde)[i]


def ddpm_posterior_logvar_learned(process: Process, t_index: Tensor, v: Tensor) -> Tensor:
    """log Sigma_theta = frac log beta_t + (1 - frac) log beta~_t with frac = (v + 1)/2 (Nichol & Dhariwal 2021,
    arXiv:2102.09672, eq. 15); v is the network's raw output in [-1, 1] units, shaped like x."""
    return interpolated_log_variance(*ddpm_log_betas(process, t_index), v)


def _vlb_from_prediction(
    process: Process, x0: Tensor, x_t: Tensor, x0_hat: Tensor, v: Tensor, t_index: Tensor
) -> Tensor:
    """L_i in nats per sample (B,): the Gaussian KL for i > 0, the discretised decoder NLL for i = 0."""
    times = _grid(process, x0.device)
    beta, beta_tilde = step_variances(process, times)
    log_var = interpolated_log_variance(torch.log(beta)[t_index], torch.log(beta_tilde)[t_index], v)
    return bound_term(process, x0, x_t, x0_hat, log_var, t_index, times, "discretized")


def _noised(denoiser: Denoiser, x0: Tensor, t: Tensor, noise: Tensor | None, generator) -> tuple[Tensor, Tensor]:
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    c = denoiser.coefficients(x0, t)
    return c.alpha * x0 + c.sigma * eps, eps


def _predict(denoiser: Denoiser, x_t: Tensor, t: Tensor, cond: dict, fixed_v: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x0_hat, eps_hat, v): v from the network when it learns its variance, else the constant fixed_v."""
    if denoiser.learned_variance:
        return denoiser.predict_with_variance(x_t, t, **cond)
    x0_hat, eps_hat = denoiser.predict(x_t, t, **cond)
    return x0_hat, eps_hat, torch.full_like(x_t, fixed_v)


def vlb_term(
    denoiser: Denoiser,
    x0: Tensor,
    t_index: Tensor,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    stop_grad_mean: bool = False,
    fixed_v: float = 1.0,
    **cond: Any,
) -> Tensor:
    """L_{t-1} of the DDPM bound at training indices t_index (B,), in nats per sample (Ho et al. 2020, eq. 5;
    Nichol & Dhariwal 2021, §3.1): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for i > 0, -log p(x0|x_1) at i = 0.

    x0 must be scaled to [-1, 1] (8-bit data) for the i = 0 decoder. A model without a learned variance uses
    v = fixed_v (1: Sigma = beta, Ho's choice; -1: Sigma = beta~). stop_grad_mean detaches the mean (the hybrid
    loss's stop-gradient, §3.1), so the term trains only the variance.
    """
    require_training_grid(denoiser.process, "vlb_term")
    t_index = torch.as_tensor(t_index, device=x0.device)
    t = _grid(denoiser.process, x0.device)[t_index]
    x_t, _ = _noised(denoiser, x0, t, noise, generator)
    x0_hat, _, v = _predict(denoiser, x_t, t, cond, fixed_v)
    if stop_grad_mean:
        x0_hat = x0_hat.detach()
    return _vlb_from_prediction(denoiser.process, x0, x_t, x0_hat, v, t_index)


def hybrid_loss(
    denoiser: Denoiser,
    x0: Tensor,
    lam: float = 0.001,
    *,
    t_index: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    **cond: Any,
) -> Tensor:
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 16), per sample (B,).

    One network evaluation. As in the paper's code, L_vlb = N L_{t-1} in bits per dimension (its one-sample
    estimate under uniform t), with the mean stop-gradiented so it trains only the variance; L_simple is the
    per-dimension mean. t_index defaults to uniform on {0..N-1}.
    """
    N = require_training_grid(denoiser.process, "hybrid_loss")
    if not denoiser.learned_variance:
        raise ValueError("hybrid_loss trains a learned variance: build the Denoiser with learned_variance=True")
    if t_index is None:
        t_index = torch.randint(0, N, (x0.shape[0],), generator=generator, device=x0.device)
    t_index = torch.as_tensor(t_index, device=x0.device)
    t = _grid(denoiser.process, x0.device)[t_index]
    x_t, eps = _noised(denoiser, x0, t, noise, generator)
    x0_hat, eps_hat, v = denoiser.predict_with_variance(x_t, t, **cond)
    l_simple = mean_flat((eps_hat - eps) ** 2)
    l_t = _vlb_from_prediction(denoiser.process, x0, x_t, x0_hat.detach(), v, t_index)
    bits_per_dim = l_t / (x0[0].numel() * math.log(2))
    return l_simple + lam * N * bits_per_dim
