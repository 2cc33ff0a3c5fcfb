"""The pieces of the consistency-model losses (book §4.7, eqs. 4.41-4.44): distances, the noise-level
discretisation, the improved-CT schedule of N and of the levels, and ECT's shrinking dt.

    d = distance("pseudo-huber", f_online, f_target, c=pseudo_huber_c(64))          # (B,)
    ts = karras_levels(process, n=18)                                                 # t_1 < ... < t_N
    n = ict_n(step, total, 10, 1280)                                                  # iCT eq. 8
    p = lognormal_level_probs(levels(process, ts), -1.1, 2.0)                         # iCT §3.5

Every noise level here is the process-independent s = sigma/alpha = exp(-lambda) (EDM's sigma; under EDM s = t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..processes.base import Process

__all__ = ["l2_distance", "pseudo_huber", "pseudo_huber_c", "distance", "karras_levels", "levels", "ict_n",
           "lognormal_level_probs", "ict_weight", "ect_ratio"]


def l2_distance(x: Tensor, y: Tensor) -> Tensor:
    """Squared L2 distance of CM (Song et al. 2023, arXiv:2303.01469, §3, d(x, y) = ||x - y||_2^2), averaged over
    the non-batch dimensions as in the paper's code (mean_flat), so its scale does not grow with the image size."""
    return (x - y).pow(2).flatten(1).mean(1)


def pseudo_huber(x: Tensor, y: Tensor, c: float) -> Tensor:
    """Pseudo-Huber metric (Song & Dhariwal 2023, arXiv:2310.14189, §3.3): d(x, y) = sqrt(||x - y||_2^2 + c^2) - c
    with the full (summed) squared norm; ~ ||x - y||^2 / (2c) near 0 and ~ ||x - y|| far away."""
    sq = (x - y).pow(2).flatten(1).sum(1)
    return torch.sqrt(sq + c * c) - c


def pseudo_huber_c(dim: int) -> float:
    """iCT's constant c = 0.00054 sqrt(d) for data of d numbers (arXiv:2310.14189, §3.3)."""
    return 0.00054 * math.sqrt(dim)


def distance(kind: str, x: Tensor, y: Tensor, c: float | None = None) -> Tensor:
    """(B,) distance of kind "l2" or "pseudo-huber" (c default: pseudo_huber_c of one example's size)."""
    if kind == "l2":
        return l2_distance(x, y)
    if kind == "pseudo-huber":
        return pseudo_huber(x, y, pseudo_huber_c(x[0].numel()) if c is None else c)
    raise ValueError(f"unknown consistency distance {kind!r}; choose 'l2' or 'pseudo-huber'")


def karras_levels(process: Process, n: int, rho: float = 7.0) -> Tensor:
    """The N = n ascending process times t_1 = t_min < ... < t_N = t_max of CM's discretisation (CM §4, after
    eq. 5: t_i = (eps^(1/rho) + (i-1)/(N-1) (T^(1/rho) - eps^(1/rho)))^rho in EDM units), i.e. the process's own
    Karras grid (EDM eq. 5) of n - 1 steps, reversed."""
    if n < 2:
        raise ValueError(f"a consistency discretisation needs N >= 2 levels; got {n}")
    return process.timesteps(n - 1, "karras", rho=rho).flip(0)


def levels(process: Process, ts: Tensor) -> Tensor:
    """s = sigma/alpha = exp(-lambda(t)) at the process times ts (float64)."""
    return torch.exp(-process.log_snr(ts.to(torch.float64)))


def ict_n(step: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential curriculum (Song & Dhariwal 2023, arXiv:2310.14189, eq. 8 / §3.4):
    N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2 floor(s1/s0) + 1))."""
    k_prime = max(math.floor(total / (math.log2(math.floor(s1 / s0)) + 1)), 1)
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_level_probs(s: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """iCT's discrete log-normal over the pairs (s_i, s_{i+1}) of ascending levels s (arXiv:2310.14189, §3.5):
    p(s_i) ∝ erf((ln s_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((ln s_i - P_mean) / (sqrt 2 P_std)); (N-1,)."""
    cdf = torch.erf((torch.log(s.to(torch.float64)) - p_mean) / (math.sqrt(2) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return p / p.sum()


def ict_weight(s_lo: Tensor, s_hi: Tensor) -> Tensor:
    """iCT's weighting lambda(s_i) = 1 / (s_{i+1} - s_i) (arXiv:2310.14189, §3.4)."""
    return 1.0 / (s_hi - s_lo)


def ect_ratio(s: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """ECT's mapping r = s (1 - q^-(stage+1) n(s)), n(s) = 1 + k sigmoid(-b s), clamped at 0 (Geng et al. 2024,
    arXiv:2406.14548, §3.3 and their `t_to_r_sigmoid`): dt = s - r shrinks by q each stage, ECT's continuous-time
    limit of doubling N."""
    adj = 1 + k * torch.sigmoid(-b * s)
    return (s * (1 - adj / q ** (stage + 1))).clamp_min(0)
