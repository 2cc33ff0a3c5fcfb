"""Pieces of the DDPM variational bound (book §4.1, eq. 3.4; Ho et al. 2020 eq. 5; Nichol & Dhariwal 2021 §3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..processes.base import Process, append_dims
from ._common import sum_flat

__all__ = ["normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "prior_kl"]


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


def prior_kl(process: Process, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x0) || N(0, prior_std^2 I)) in nats per sample (B,) (Ho et al. 2020, arXiv:2006.11239,
    eq. 5; book §4.1). q(x_T | x0) = N(alpha_T x0, sigma_T^2 I) at T = t_max; no parameters, so no gradient."""
    T = torch.full((x0.shape[0],), process.t_max, dtype=torch.float64, device=x0.device)
    mean = append_dims(process.alpha(T).to(x0.dtype), x0.ndim) * x0
    logvar = append_dims(2 * torch.log(process.sigma(T)).to(x0.dtype), x0.ndim)
    prior_logvar = torch.full_like(x0, 2 * math.log(process.prior_std))
    return sum_flat(normal_kl(mean, logvar.expand_as(x0), torch.zeros_like(x0), prior_logvar))
