"""The DDPM variational bound on -log p(x_0) (Ho et al. 2020, arXiv:2006.11239, eq. 5; book §4.1):

    L = L_T + sum_{i=2}^{N} L_{i-1} + L_0
    L_T     = KL(q(x_N | x_0) || N(0, prior_std^2 I))                  prior term, no network
    L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p_theta(x_{i-1} | x_i)),    x_i ~ q(x_i | x_0), one draw per term
    L_0     = -log p_theta(x_0 | x_1)                                  decoder

on a grid of model times tau_1 < ... < tau_N with the clean data before tau_1 (alpha = 1, sigma = 0). A
DiscreteVP's grid is its training times tau_i = i/N; any other process takes an explicit `times` (then the bound
is that of the N-step discretisation of the process on this grid). p_theta(x_{i-1} | x_i) = q(x_{i-1} | x_i,
x0_theta(x_i)) in its mean (book eq. 4.11 with the predicted x0), with variance
    "beta_tilde": the posterior variance beta~_i (lower bound on the optimal one),
    "beta":       the forward variance sigma^2_{tau_i | tau_{i-1}} = beta_i (upper),
    learned:      exp(v log beta_i + (1 - v) log beta~_i), v = (out + 1)/2 (Nichol & Dhariwal 2021, arXiv:2102.09672,
                  eq. 15), when the Denoiser was built with learned_variance=True.
At i = 1, beta~_1 = 0 and the decoder uses beta~_2 (improved DDPM's clipped log-variance) or beta_1 = sigma(tau_1)^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..losses.vlb import discretized_gaussian_log_likelihood, normal_kl
from ..processes.base import append_dims

if TYPE_CHECKING:
    from ..denoiser import Denoiser
    from ..processes.base import Process

__all__ = [
    "DECODERS",
    "VARIANCES",
    "ddpm_times",
    "step_variances",
    "prior_kl",
    "reverse_kl",
    "decoder_nll_discretized",
    "decoder_nll_gaussian",
    "vlb_term",
    "ddpm_vlb",
]

_LOG2PI = math.log(2 * math.pi)


def ddpm_times(process: Process) -> Tensor:
    """tau_1 < ... < tau_N, the N training times of a discrete process (DiscreteVP: i/N), ascending float64."""
    n = getattr(process, "n", None)
    if n is None:
        raise ValueError(f"{process!r} has no discrete training grid; pass times=... (ascending, ending at t_max)")
    return process.timesteps(n, "trailing")[:-1].flip(0)


def step_variances(process: Process, times: Tensor) -> tuple[Tensor, Tensor]:
    """(beta_i, beta~_i) for every step of the grid (N,): beta_1 = sigma(tau_1)^2, beta~_1 := beta~_2 (clipped)."""
    t, s = times[1:], times[:-1]
    _, beta = process.transition(s, t)
    beta_tilde = beta * process.sigma(s) ** 2 / process.sigma(t) ** 2  # posterior variance (VDM eq. 24)
    beta_1 = process.sigma(times[:1]) ** 2
    return torch.cat([beta_1, beta]), torch.cat([beta_tilde[:1], beta_tilde])


def _upper(log_beta: Tensor, log_beta_tilde: Tensor) -> Tensor:
    return log_beta


def _lower(log_beta: Tensor, log_beta_tilde: Tensor) -> Tensor:
    return log_beta_tilde


VARIANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"beta": _upper, "beta_tilde": _lower}


# --- the three kinds of term ------------------------------------------------------------------------
def prior_kl(process: Process, x0: Tensor, t_N: Tensor | float) -> Tensor:
    """L_T = KL(N(alpha_N x0, sigma_N^2 I) || N(0, prior_std^2 I)) in nats per sample (Ho et al. 2020, eq. 5)."""
    t = torch.as_tensor(t_N, dtype=torch.float64, device=x0.device).expand(x0.shape[0])
    a, s = append_dims(process.alpha(t), x0.ndim), append_dims(process.sigma(t), x0.ndim)
    log_var_prior = torch.full_like(s, 2 * math.log(process.prior_std))
    return normal_kl(a * x0, 2 * torch.log(s), torch.zeros_like(x0), log_var_prior).flatten(1).sum(1)


def reverse_kl(
    process: Process, x0: Tensor, x_t: Tensor, x0_hat: Tensor, log_var: Tensor, s: Tensor, t: Tensor
) -> Tensor:
    """L_{i-1} = KL(q(x_s | x_t, x0) || N(mu(x_t, x0_hat), e^log_var)) per sample (book eq. 4.9-4.11; Ho eq. 8)."""
    mean_q, var_q = process.posterior(x_t, x0, s, t)
    mean_p, _ = process.posterior(x_t, x0_hat, s, t)
    log_var_q = append_dims(torch.log(var_q), x0.ndim)
    return normal_kl(mean_q, log_var_q, mean_p, log_var).flatten(1).sum(1)


def decoder_nll_discretized(x0: Tensor, x0_hat: Tensor, log_var: Tensor) -> Tensor:
    """L_0 = -log p(x0 | x_1) for 8-bit data in [-1, 1], the Gaussian discretised into 256 bins (Ho et al. eq. 13)."""
    ll = discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * log_var.expand_as(x0))
    return -ll.flatten(1).sum(1)


def decoder_nll_gaussian(x0: Tensor, x0_hat: Tensor, log_var: Tensor) -> Tensor:
    """-log N(x0; x0_hat, e^log_var I): L_0 for continuous data, so the bound compares with the exact density."""
    nll = 0.5 * (_LOG2PI + log_var + (x0 - x0_hat) ** 2 * torch.exp(-log_var))
    return nll.flatten(1).sum(1)


DECODERS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "discretized": decoder_nll_discretized,
    "gaussian": decoder_nll_gaussian,
}


# --- one term, and the sum ------------------------------------------------------------------------------
def _reverse_x0_and_log_var(
    model: Denoiser, x_t: Tensor, t: Tensor, j: Tensor, betas: tuple[Tensor, Tensor], variance: str
) -> tuple[Tensor, Tensor]:
    """x0_theta(x_t, t) and the log-variance of p_theta for step j (per sample), from one network evaluation."""
    beta, beta_tilde = betas
    log_b, log_bt = append_dims(torch.log(beta[j]), x_t.ndim), append_dims(torch.log(beta_tilde[j]), x_t.ndim)
    if model.learned_variance:
        x0_hat, _, v = model.predict_with_variance(x_t, t)
        frac = (v + 1) / 2
        return x0_hat, frac * log_b + (1 - frac) * log_bt
    x0_hat, _ = model.predict(x_t, t)
    return x0_hat, VARIANCES[variance](log_b, log_bt).to(x0_hat.dtype)


def vlb_term(
    model: Denoiser,
    x0: Tensor,
    j: Tensor,
    times: Tensor,
    *,
    variance: str = "beta_tilde",
    decoder: str = "discretized",
    betas: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The term of step j (B,) per sample: L_0 (decoder) where j = 0, L_j = KL(q(x_{j-1}|x_j, x0) || p) elsewhere.

    betas: step_variances(process, times), computed once by the caller that sums many terms.
    """
    process = model.process
    t = times[j]
    x_t, _ = process.marginal_sample(x0, t, generator)
    betas = step_variances(process, times) if betas is None else betas
    x0_hat, log_var = _reverse_x0_and_log_var(model, x_t, t, j, betas, variance)
    log_var = log_var.expand_as(x0)
    out = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    dec, kl = j == 0, j > 0
    if dec.any():
        out[dec] = DECODERS[decoder](x0[dec], x0_hat[dec], log_var[dec]).to(torch.float64)
    if kl.any():
        s = times[j[kl] - 1]
        out[kl] = reverse_kl(process, x0[kl], x_t[kl], x0_hat[kl], log_var[kl], s, t[kl]).to(torch.float64)
    return out


def ddpm_vlb(
    denoiser: Denoiser,
    x: Tensor,
    *,
    times: Tensor | None = None,
    n_timesteps: int | None = None,
    variance: str = "beta_tilde",
    decoder: str = "discretized",
    bits: bool = True,
    x_is_uint8: bool = False,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_T + sum_i L_{i-1} + L_0 per sample (B,), in bits/dim or nats (Ho et al. 2020, arXiv:2006.11239, eq. 5;
    Nichol & Dhariwal 2021, arXiv:2102.09672, §3 "calc_bpd_loop"; book §4.1).

    Args:
        denoiser: a Denoiser (with learned_variance=True its variance output is used; `variance` is then ignored).
        x: data (B, ...); 8-bit values scaled to [-1, 1] as x/127.5 - 1, or raw 0..255 with x_is_uint8=True.
        times: ascending model times tau_1 < ... < tau_N (default: a DiscreteVP's training times i/N).
        n_timesteps: None sums all N terms; else n of them uniformly without replacement per sample, times N/n
            (unbiased). L_T, which needs no network, is always exact.
        variance: "beta_tilde" (posterior, default) or "beta" (forward) for the reverse steps.
        decoder: "discretized" (8-bit data) or "gaussian" (continuous density; compares with ode_nll / log p).
        bits: bits per dimension (nats / (D ln 2)) when True, else nats per sample.
        dtype: dtype of the scaled 8-bit data (default torch's default dtype).
        generator: draws x_t for every term and the subsample.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {sorted(VARIANCES)}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    process = denoiser.process
    if x_is_uint8:
        x = x.to(dtype or torch.get_default_dtype()) / 127.5 - 1
    times = (ddpm_times(process) if times is None else torch.as_tensor(times, dtype=torch.float64)).to(x.device)
    if times.ndim != 1 or not (times[1:] > times[:-1]).all():
        raise ValueError("times must be a 1-D ascending grid tau_1 < ... < tau_N")
    B, N = x.shape[0], times.numel()
    total = prior_kl(process, x, times[-1]).to(torch.float64)
    kw = dict(variance=variance, decoder=decoder, betas=step_variances(process, times), generator=generator)
    if n_timesteps is None:
        for j in range(N):
            total = total + vlb_term(denoiser, x, torch.full((B,), j, device=x.device), times, **kw)
    else:
        if not 1 <= n_timesteps <= N:
            raise ValueError(f"need 1 <= n_timesteps <= N={N}, got {n_timesteps}")
        picks = torch.rand(B, N, generator=generator, device=x.device).argsort(1)[:, :n_timesteps]  # no repeats
        for k in range(n_timesteps):
            total = total + (N / n_timesteps) * vlb_term(denoiser, x, picks[:, k], times, **kw)
    return total / (x[0].numel() * math.log(2)) if bits else total
