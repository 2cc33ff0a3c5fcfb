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

The terms are kuosan.losses.vlb's (one copy, shared with the hybrid training loss); this module draws x_t,
evaluates the network and sums.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..losses._common import training_grid
from ..losses.vlb import (
    DECODERS,
    VARIANCES,
    bound_term,
    decoder_nll_discretized,
    decoder_nll_gaussian,
    interpolated_log_variance,
    prior_kl,
    reverse_kl,
    step_variances,
)

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


def ddpm_times(process: Process) -> Tensor:
    """tau_1 < ... < tau_N, the N training times of a discrete process (DiscreteVP: i/N), ascending float64."""
    times = training_grid(process)
    if times is None:
        raise ValueError(f"{process!r} has no discrete training grid; pass times=... (ascending, ending at t_max)")
    return times


def _reverse_x0_and_log_var(
    model: Denoiser, x_t: Tensor, t: Tensor, j: Tensor, betas: tuple[Tensor, Tensor], variance: str
) -> tuple[Tensor, Tensor]:
    """x0_theta(x_t, t) and the log-variance of p_theta for step j (per sample), from one network evaluation."""
    if model.learned_variance:
        x0_hat, _, v = model.predict_with_variance(x_t, t)
    else:
        x0_hat, _ = model.predict(x_t, t)
        v = torch.full_like(x0_hat, VARIANCES[variance])
    beta, beta_tilde = betas
    return x0_hat, interpolated_log_variance(torch.log(beta[j]), torch.log(beta_tilde[j]), v)


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
    return bound_term(process, x0, x_t, x0_hat, log_var, j, times, decoder, dtype=torch.float64)


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
