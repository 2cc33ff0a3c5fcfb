"""The terms of the DDPM variational bound, one copy for the hybrid loss (losses.ddpm) and the likelihood bound
(likelihood.bound) (book §4.1, eq. 3.4; Ho et al. 2020, arXiv:2006.11239, eq. 5; Nichol & Dhariwal 2021,
arXiv:2102.09672, §3):

    L_T     = KL(q(x_N | x_0) || N(0, prior_std^2 I))                  prior_kl
    L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p_theta(x_{i-1} | x_i))      reverse_kl
    L_0     = -log p_theta(x_0 | x_1)                                  DECODERS

on a grid of model times tau_1 < ... < tau_N with the clean data before tau_1 (alpha = 1, sigma = 0).
p_theta's log-variance interpolates log beta_i and log beta~_i (Nichol & Dhariwal eq. 15); the fixed choices
"beta" and "beta_tilde" are that interpolation at v = +1 and v = -1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..processes.base import Process, append_dims
from ._common import sum_flat

__all__ = [
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "prior_kl",
    "step_variances",
    "VARIANCES",
    "interpolated_log_variance",
    "reverse_kl",
    "decoder_nll_discretized",
    "decoder_nll_gaussian",
    "DECODERS",
    "bound_term",
]

_LOG2PI = math.log(2 * math.pi)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (book eq. 3.4).

        KL = 1/2 (logvar2 - logvar1 + e^{logvar1 - logvar2} + (mean1 - mean2)^2 e^{-logvar2} - 1)
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Standard normal CDF Phi(x), exact through erf (the DDPM code used a tanh approximation)."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) per element for 8-bit data scaled to [-1, 1] under a Gaussian discretised into 256 bins
    (Ho et al. 2020, eq. 13): the bin [x - 1/255, x + 1/255], with the edge bins extended to -inf / +inf."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def prior_kl(process: Process, x0: Tensor, t_N: Tensor | float | None = None) -> Tensor:
    """L_T = KL(N(alpha_T x0, sigma_T^2 I) || N(0, prior_std^2 I)) in nats per sample (B,) at T = t_N (default
    t_max) (Ho et al. 2020, arXiv:2006.11239, eq. 5; book §4.1); no parameters, so no gradient."""
    T = process.t_max if t_N is None else t_N
    t = torch.as_tensor(T, dtype=torch.float64, device=x0.device).expand(x0.shape[0])
    alpha, sigma = append_dims(process.alpha(t), x0.ndim), append_dims(process.sigma(t), x0.ndim)
    log_var_prior = torch.full_like(sigma, 2 * math.log(process.prior_std))
    return sum_flat(normal_kl(alpha * x0, 2 * torch.log(sigma), torch.zeros_like(x0), log_var_prior))


def step_variances(process: Process, times: Tensor) -> tuple[Tensor, Tensor]:
    """(beta_i, beta~_i) for every step of the ascending grid tau_1 < ... < tau_N (N,) (Ho et al. eqs. 2 and 7;
    VDM eq. 24): beta_i = sigma^2_{tau_i | tau_{i-1}}, beta~_i = beta_i sigma^2(tau_{i-1}) / sigma^2(tau_i);
    beta_1 = sigma(tau_1)^2 and beta~_1 := beta~_2 (beta~_1 = 0: improved DDPM's clipped value)."""
    t, s = times[1:], times[:-1]
    _, beta = process.transition(s, t)
    beta_tilde = beta * process.sigma(s) ** 2 / process.sigma(t) ** 2
    beta_1 = process.sigma(times[:1]) ** 2
    return torch.cat([beta_1, beta]), torch.cat([beta_tilde[:1], beta_tilde])


# the fixed reverse variances as the value of v in interpolated_log_variance: Sigma = beta (upper), beta~ (lower)
VARIANCES: dict[str, float] = {"beta": 1.0, "beta_tilde": -1.0}


def interpolated_log_variance(log_beta: Tensor, log_beta_tilde: Tensor, v: Tensor) -> Tensor:
    """log Sigma_theta = frac log beta + (1 - frac) log beta~, frac = (v + 1)/2 (Nichol & Dhariwal 2021,
    arXiv:2102.09672, eq. 15); log_beta, log_beta_tilde (B,) float64 per sample, v (B, ...) like x. The result
    keeps float64 so that the KL against log beta~ does not cancel in float32."""
    frac = (v + 1) / 2
    return frac * append_dims(log_beta, v.ndim) + (1 - frac) * append_dims(log_beta_tilde, v.ndim)


def reverse_kl(
    process: Process, x0: Tensor, x_t: Tensor, x0_hat: Tensor, log_var: Tensor, s: Tensor, t: Tensor
) -> Tensor:
    """L_{i-1} = KL(q(x_s | x_t, x0) || N(mu(x_t, x0_hat), e^log_var)) per sample (B,), mu the posterior mean at
    x0 = x0_hat (book eqs. 4.9-4.11; Ho et al. 2020, eqs. 7 and 11)."""
    mean_q, var_q = process.posterior(x_t, x0, s, t)
    mean_p, _ = process.posterior(x_t, x0_hat, s, t)
    log_var_q = append_dims(torch.log(var_q), x0.ndim)
    return sum_flat(normal_kl(mean_q, log_var_q, mean_p, log_var))


def decoder_nll_discretized(x0: Tensor, x0_hat: Tensor, log_var: Tensor) -> Tensor:
    """L_0 = -log p(x0 | x_1) for 8-bit data in [-1, 1], the Gaussian discretised into 256 bins (Ho et al. eq. 13)."""
    return -sum_flat(discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * log_var.expand_as(x0)))


def decoder_nll_gaussian(x0: Tensor, x0_hat: Tensor, log_var: Tensor) -> Tensor:
    """-log N(x0; x0_hat, e^log_var I): L_0 for continuous data, so the bound compares with the exact density."""
    return sum_flat(0.5 * (_LOG2PI + log_var + (x0 - x0_hat) ** 2 * torch.exp(-log_var)))


DECODERS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "discretized": decoder_nll_discretized,
    "gaussian": decoder_nll_gaussian,
}


def bound_term(
    process: Process,
    x0: Tensor,
    x_t: Tensor,
    x0_hat: Tensor,
    log_var: Tensor,
    j: Tensor,
    times: Tensor,
    decoder: str = "discretized",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The bound's term of step j (B,) per sample, given x_t at times[j], the model's x0_hat and log-variance:
    L_0 = DECODERS[decoder] where j = 0, L_j = reverse_kl from times[j] to times[j - 1] elsewhere (dtype: that of
    the terms, float64 with the process's float64 coefficients, unless given)."""
    log_var = log_var.expand_as(x0)
    dec, kl = j == 0, j > 0
    parts = []
    if dec.any():
        parts.append((dec, DECODERS[decoder](x0[dec], x0_hat[dec], log_var[dec])))
    if kl.any():
        s, t = times[j[kl] - 1], times[j[kl]]
        parts.append((kl, reverse_kl(process, x0[kl], x_t[kl], x0_hat[kl], log_var[kl], s, t)))
    if dtype is None:
        dtype = parts[0][1].dtype if len(parts) == 1 else torch.promote_types(parts[0][1].dtype, parts[1][1].dtype)
    out = torch.zeros(x0.shape[0], dtype=dtype, device=x0.device)
    for mask, term in parts:
        out[mask] = term.to(dtype)
    return out
