"""Training-time distributions (book §4.3.4) and their importance weights.

`sample_t(process, n, kind)` returns times t and the density ratio w(t) = p_uniform(t) / p_kind(t), so that

    E_{t ~ p_kind}[ w(t) loss(t) ] = E_{t ~ U}[ loss(t) ]          (the uniform-t objective)

Every proposal density is known exactly (no approximation in w), so the estimate is unbiased on any process:

    uniform     process.sample_t (DiscreteVP: uniform over its N grid times);  w = 1
    importance  p(t) ∝ g(t)^2 / sigma(t)^2, the likelihood-weighting proposal (Song et al. 2021,
                arXiv:2101.09258, §5). Since g^2 / sigma^2 = -2 d lambda/dt it is uniform in the log-SNR lambda;
                it is built numerically (piecewise constant on a fine grid, inverse CDF) for any process.
    lognormal   EDM's ln(sigma/alpha) ~ N(P_mean, P_std^2) (Karras et al. 2022, arXiv:2206.00364, Table 1),
                truncated to the process's range and mapped to t by t_of_log_snr. EDM trains on this
                distribution *as its objective*: `dsm_loss` does not reweight it (see REWEIGHTED).
    logitnormal SD3's logit(t) ~ N(m, s^2) for rectified flow (Esser et al. 2024, arXiv:2403.03206, §3.1, eq. 19,
                m = 0, s = 1). Rectified flow's log-SNR is lambda = log((1 - t)/t) = -logit(t), so this is the
                lognormal kind with P_mean = m, P_std = s, and so defined for every process; not reweighted either.

On a discrete-time process (one exposing `n` and `t_of_index`, like DiscreteVP) the non-uniform kinds draw
grid times with probabilities proportional to the same densities evaluated on the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..processes.base import Process
from ._common import choose, training_grid

__all__ = ["sample_t", "TIME_SAMPLINGS", "REWEIGHTED", "importance_density", "lognormal_density"]

# time samplings whose weight w dsm_loss applies: they estimate the uniform-t objective with less variance
REWEIGHTED: tuple[str, ...] = ("importance",)


def importance_density(process: Process, t: Tensor, **_) -> Tensor:
    """Unnormalised likelihood-weighting proposal g(t)^2 / sigma(t)^2 (Song et al. 2021, arXiv:2101.09258, §5)."""
    return process.g2(t) / process.sigma(t) ** 2


def lognormal_density(process: Process, t: Tensor, P_mean: float = -1.2, P_std: float = 1.2, **_) -> Tensor:
    """Unnormalised density in t of ln(sigma/alpha) ~ N(P_mean, P_std^2) (EDM, arXiv:2206.00364, Table 1).

    With u = ln(sigma/alpha) = -lambda(t):  p(t) = N(u; P_mean, P_std) |du/dt|,  |du/dt| = g^2 / (2 sigma^2).
    """
    z = (-process.log_snr(t) - P_mean) / P_std
    return torch.exp(-0.5 * z**2) * process.g2(t) / (2 * process.sigma(t) ** 2)


def _uniform(process: Process, n: int, generator, dtype, device, **_) -> tuple[Tensor, Tensor]:
    t = process.sample_t(n, generator=generator, dtype=dtype, device=device)
    return t, torch.ones_like(t)


def _on_training_grid(grid: Tensor, density: Tensor, n: int, generator, dtype, device) -> tuple[Tensor, Tensor]:
    """Draw grid times with P(i) = density_i / Z; w = (1/N) / P(i)."""
    Z = density.sum()
    i = torch.multinomial(density / Z, n, replacement=True, generator=generator)
    w = Z / (grid.numel() * density[i])
    return grid[i].to(dtype), w.to(dtype)


def _continuous_grid(process: Process, n_grid: int, device) -> Tensor:
    """Cell edges on [t_min, t_max]: uniform in t, merged with geometric spacing when t_min > 0."""
    t0, t1 = process.t_min, process.t_max
    edges = torch.linspace(t0, t1, n_grid + 1, dtype=torch.float64, device=device)
    if t0 > 0:
        geo = torch.logspace(math.log10(t0), math.log10(t1), n_grid + 1, dtype=torch.float64, device=device)
        edges = torch.unique(torch.cat([edges, geo.clamp(t0, t1)]))
    return edges


def _piecewise_constant(
    process: Process, density_fn: Callable[..., Tensor], n: int, generator, dtype, device, n_grid: int, **kw
) -> tuple[Tensor, Tensor]:
    """Inverse-CDF sampling from the density frozen at cell midpoints; w = (1/(t_max - t_min)) / q(t)."""
    edges = _continuous_grid(process, n_grid, device)
    width = edges[1:] - edges[:-1]
    q = density_fn(process, 0.5 * (edges[1:] + edges[:-1]), **kw)  # (cells,)
    mass = q * width
    Z = mass.sum()
    j = torch.multinomial(mass / Z, n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    t = edges[j] + width[j] * u
    w = Z / ((process.t_max - process.t_min) * q[j])
    return t.to(dtype), w.to(dtype)


def _importance(process: Process, n: int, generator, dtype, device, n_grid: int = 4096, **_) -> tuple[Tensor, Tensor]:
    grid = training_grid(process)
    if grid is not None:
        grid = grid.to(device)
        return _on_training_grid(grid, importance_density(process, grid), n, generator, dtype, device)
    return _piecewise_constant(process, importance_density, n, generator, dtype, device, n_grid)


def _lognormal(
    process: Process, n: int, generator, dtype, device, P_mean: float = -1.2, P_std: float = 1.2, **_
) -> tuple[Tensor, Tensor]:
    """ln(sigma/alpha) = P_mean + P_std z with z a standard normal truncated to [t_min, t_max], by inverse CDF."""
    grid = training_grid(process)
    if grid is not None:
        grid = grid.to(device)
        density = lognormal_density(process, grid, P_mean, P_std)
        return _on_training_grid(grid, density, n, generator, dtype, device)
    ends = torch.tensor([process.t_min, process.t_max], dtype=torch.float64, device=device)
    a, b = torch.special.ndtr((-process.log_snr(ends) - P_mean) / P_std)  # CDF at t_min, t_max
    u = a + (b - a) * torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    lam = -(P_mean + P_std * torch.special.ndtri(u))
    t = process.t_of_log_snr(lam).clamp(process.t_min, process.t_max)
    q = lognormal_density(process, t, P_mean, P_std) / ((b - a) * P_std * math.sqrt(2 * math.pi))
    w = 1 / ((process.t_max - process.t_min) * q)
    return t.to(dtype), w.to(dtype)


TIME_SAMPLINGS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "uniform": _uniform,
    "importance": _importance,
    "lognormal": _lognormal,
    "logitnormal": lambda process, n, generator, dtype, device, P_mean=0.0, P_std=1.0, **_: _lognormal(
        process, n, generator, dtype, device, P_mean, P_std),
}


def sample_t(
    process: Process,
    n: int,
    kind: str = "uniform",
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    **kw,
) -> tuple[Tensor, Tensor]:
    """n training times and their weights w = p_uniform / p_kind (book §4.3.4; Song et al. 2021, arXiv:2101.09258, §5).

    kind: "uniform" | "importance" (t ∝ g^2/sigma^2) | "lognormal" (EDM; keywords P_mean=-1.2, P_std=1.2) |
    "logitnormal" (SD3; the same with P_mean=0, P_std=1 by default).
    "importance" also takes n_grid (cells of its numerical inverse CDF, default 4096).
    Returns t (n,) and w (n,) with E[w loss(t)] = the uniform-t objective.
    """
    sampler = choose(TIME_SAMPLINGS, kind, "time sampling")
    unknown = set(kw) - {"P_mean", "P_std", "n_grid"}
    if unknown:
        raise TypeError(f"sample_t got unexpected keyword(s) {sorted(unknown)}; known: P_mean, P_std, n_grid")
    return sampler(process, n, generator=generator, dtype=dtype, device=device, **kw)
