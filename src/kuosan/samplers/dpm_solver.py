"""DDIM and the singlestep DPM-Solvers: exponential integrators of the probability-flow ODE in the half
log-SNR lambda = log(alpha/sigma) (Lu et al. 2022, arXiv:2206.00927; Lu et al. 2022, arXiv:2211.01095).

The linear part of the PF-ODE (book eq. 4.40) is solved exactly; only the network term is approximated:

    noise prediction (DPM-Solver eq. 3.4):    x_t = alpha_t/alpha_s x_s - alpha_t int_{lam_s}^{lam_t} e^{-lam} eps dlam
    data prediction (DPM-Solver++ eq. 9):     x_t = sigma_t/sigma_s x_s + sigma_t int_{lam_s}^{lam_t} e^{lam} x0 dlam

A k-th order solver Taylor-expands eps (or x0) in lambda with k - 1 extra evaluations inside the step.
Order 1 of either form is DDIM with eta = 0. h = lam_t - lam_s > 0 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, SamplerCache, grid_key, memo, noise, report, schedule

__all__ = ["sample_ddim", "sample_ddim_x0", "sample_dpm_solver", "sample_dpmpp_2s", "posterior_coefficients",
           "singlestep_orders"]


def posterior_coefficients(process, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(c_xt, c_x0, var) of q(x_s | x_t, x0) = N(c_xt x_t + c_x0 x0, var) (book eqs. 4.9-4.11), from
    process.posterior applied to the basis (x_t, x0) = (1, 0) and (0, 1)."""
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    c_xt, var = process.posterior(one, zero, s, t)
    c_x0, _ = process.posterior(zero, one, s, t)
    return c_xt, c_x0, var


def singlestep_orders(budget: int, order: int, infinite_start: bool = False) -> list[int]:
    """Per-step orders spending `budget` evaluations: order-k steps, then one lower-order step for the rest
    (DPM-Solver §3.4); a start at lambda = -inf (alpha = 0) allows only order 1 there."""
    orders = [1] if infinite_start and budget > 0 else []
    rest = budget - len(orders)
    orders += [order] * (rest // order) + ([rest % order] if rest % order else [])
    return orders


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache: SamplerCache | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, arXiv:2010.02502, eq. 12 and 16): x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z
    with c^2 = eta^2 times the posterior variance; eta = 0 is deterministic, eta = 1 is DDPM with beta-tilde."""
    p, n = denoiser.process, len(ts) - 1
    sch = schedule(p, ts, cache)
    var = memo(p, "posterior_var", grid_key(sch.t),
               lambda: posterior_coefficients(p, sch.t[1:], sch.t[:-1])[2].tolist(), cache)
    c2 = [eta**2 * v for v in var]
    model = Model(denoiser, ts, x, cond=cond, cache=cache)
    for i in range(n):
        x0, eps = model.x0_eps(x, i)
        x = sch.alpha[i + 1] * x0 + math.sqrt(max(sch.sigma[i + 1] ** 2 - c2[i], 0.0)) * eps
        if c2[i] > 0:
            x = x + math.sqrt(c2[i]) * noise(x, generator)
        report(callback, i, ts[i + 1], x, x0)
    return model.x0(x, n) if denoise else x


def sample_ddim_x0(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = False,
    cond: dict[str, Any] | None = None,
    cache: SamplerCache | None = None,
) -> Tensor:
    """DDIM whose last step lands on x0 (Salimans & Ho 2022, arXiv:2202.00512, Alg. 2: the grid t_i = i/N ends at
    t = 0): the grid's last time (t_min) stands for sigma = 0, so n steps cost n evaluations and return the x0
    predicted at ts[-2]; a progressive-distillation student's sampler (kuosan.distill.progressive)."""
    return sample_ddim(denoiser, x, ts[:-1], generator=generator, callback=callback, denoise=True, cond=cond,
                       cache=cache)


# --- the coefficients of one singlestep ----------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """A point m of a singlestep that starts at s, in float64: h = lambda_m - lambda_s and the schedule at m."""

    h: float
    alpha: float  # alpha_m
    sigma: float  # sigma_m
    alpha_ratio: float  # alpha_m / alpha_s (inf where alpha_s = 0)
    sigma_ratio: float  # sigma_m / sigma_s


@dataclass(frozen=True)
class Singlestep:
    """One step s -> t: its end t and its k - 1 inner points (s1, s2) at lambda_s + r h."""

    t: Node
    inner: tuple[Node, ...] = ()


# --- DPM-Solver (noise prediction), Lu et al. 2022, arXiv:2206.00927 ---------------------------------------
def dpm_solver_1(x: Tensor, eps_s: Tensor, step: Singlestep) -> Tensor:
    """DPM-Solver-1 (eq. 3.7): x_t = alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps_s."""
    t = step.t
    return t.alpha_ratio * x - t.sigma * math.expm1(t.h) * eps_s


def dpm_solver_2(model: Model, x: Tensor, eps_s: Tensor, k: Sequence[int], step: Singlestep) -> Tensor:
    """DPM-Solver-2 (Algorithm 1, r1 = 1/2):
    u = alpha_s1/alpha_s x - sigma_s1 (e^{r1 h} - 1) eps_s
    x_t = alpha_t/alpha_s x - sigma_t (e^h - 1) eps_s - sigma_t/(2 r1) (e^h - 1) (eps(u, s1) - eps_s)."""
    t, (s1,) = step.t, step.inner
    h, r1 = t.h, s1.h / t.h
    u = s1.alpha_ratio * x - s1.sigma * math.expm1(s1.h) * eps_s
    d1 = model.eps(u, k[1]) - eps_s
    return t.alpha_ratio * x - t.sigma * math.expm1(h) * eps_s - t.sigma / (2 * r1) * math.expm1(h) * d1


def dpm_solver_3(model: Model, x: Tensor, eps_s: Tensor, k: Sequence[int], step: Singlestep) -> Tensor:
    """DPM-Solver-3 (Algorithm 2, r1 = 1/3, r2 = 2/3):
    u1 = alpha_s1/alpha_s x - sigma_s1 (e^{r1 h} - 1) eps_s,                       D1 = eps(u1, s1) - eps_s
    u2 = alpha_s2/alpha_s x - sigma_s2 (e^{r2 h} - 1) eps_s - sigma_s2 r2/r1 ((e^{r2 h} - 1)/(r2 h) - 1) D1
    x_t = alpha_t/alpha_s x - sigma_t (e^h - 1) eps_s - sigma_t/r2 ((e^h - 1)/h - 1) (eps(u2, s2) - eps_s)."""
    t, (s1, s2) = step.t, step.inner
    h, h1, h2 = t.h, s1.h, s2.h
    r1, r2 = h1 / h, h2 / h
    u1 = s1.alpha_ratio * x - s1.sigma * math.expm1(h1) * eps_s
    d1 = model.eps(u1, k[1]) - eps_s
    u2 = s2.alpha_ratio * x - s2.sigma * math.expm1(h2) * eps_s - s2.sigma * r2 / r1 * (math.expm1(h2) / h2 - 1) * d1
    d2 = model.eps(u2, k[2]) - eps_s
    return t.alpha_ratio * x - t.sigma * math.expm1(h) * eps_s - t.sigma / r2 * (math.expm1(h) / h - 1) * d2


# --- DPM-Solver++ (data prediction), Lu et al. 2022, arXiv:2211.01095 ---------------------------------------
def dpmpp_1s(x: Tensor, x0_s: Tensor, step: Singlestep) -> Tensor:
    """DPM-Solver++(1) (eq. 9 at first order; DDIM): x_t = sigma_t/sigma_s x_s - alpha_t (e^{-h} - 1) x0_s."""
    t = step.t
    return t.sigma_ratio * x - t.alpha * math.expm1(-t.h) * x0_s


def dpmpp_2s(model: Model, x: Tensor, x0_s: Tensor, k: Sequence[int], step: Singlestep, clip) -> Tensor:
    """DPM-Solver++(2S) (Algorithm 1, r = 1/2): u = sigma_s1/sigma_s x - alpha_s1 (e^{-r h} - 1) x0_s,
    D = (1 - 1/(2r)) x0_s + 1/(2r) x0(u, s1), x_t = sigma_t/sigma_s x - alpha_t (e^{-h} - 1) D."""
    t, (s1,) = step.t, step.inner
    h, r = t.h, s1.h / t.h
    u = s1.sigma_ratio * x - s1.alpha * math.expm1(-s1.h) * x0_s
    d = (1 - 1 / (2 * r)) * x0_s + 1 / (2 * r) * clip(model.x0(u, k[1]))
    return t.sigma_ratio * x - t.alpha * math.expm1(-h) * d


_R = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}  # inner points at lam_s + r h (DPM-Solver's r1, r2)


def _singlestep_plan(
    process, ts: Tensor, orders: Sequence[int], cache: SamplerCache | None = None
) -> tuple[Tensor, list[list[int]], list[Singlestep]]:
    """Model times (the grid, then every step's inner points at lam_s + r h), each step's indices into them
    [s, s1, s2] and its float64 coefficients (kept in the caller's cache, if any)."""
    return memo(process, "singlestep", (grid_key(ts), tuple(orders)), lambda: _plan(process, ts, orders), cache)


def _plan(process, ts: Tensor, orders: Sequence[int]) -> tuple[Tensor, list[list[int]], list[Singlestep]]:
    sch, n = schedule(process, ts), len(ts) - 1
    inner, index = [], []
    for i, k in enumerate(orders):
        h = sch.lam[i + 1] - sch.lam[i]
        if k > 1 and not math.isfinite(h):
            raise ValueError(f"an order-{k} step cannot start at t={float(ts[i]):g}, where the log-SNR is infinite")
        index.append([i] + [n + 1 + len(inner) + j for j in range(k - 1)])
        inner += [sch.lam[i] + r * h for r in _R[k]]
    times = torch.cat([ts.to("cpu", torch.float64), process.t_of_log_snr(torch.tensor(inner, dtype=torch.float64))])
    al = schedule(process, times)

    def node(i: int, m: int) -> Node:
        return Node(h=al.lam[m] - al.lam[i], alpha=al.alpha[m], sigma=al.sigma[m],
                    alpha_ratio=_ratio(al.alpha, i, m), sigma_ratio=al.sigma[m] / al.sigma[i])

    steps = [Singlestep(node(i, i + 1), tuple(node(i, m) for m in idx[1:])) for i, idx in enumerate(index)]
    return times, index, steps


def _ratio(v: list[float], i: int, m: int) -> float:
    return v[m] / v[i] if v[i] != 0 else math.inf


@torch.no_grad()
def sample_dpm_solver(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    orders: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache: SamplerCache | None = None,
) -> Tensor:
    """Singlestep DPM-Solver-1/2/3 in noise prediction (Lu et al. 2022, arXiv:2206.00927, eq. 3.7, Algorithms 1-2);
    step i has order orders[i] (default 3 everywhere) and costs that many evaluations."""
    n, p = len(ts) - 1, denoiser.process
    orders = list(orders) if orders is not None else [3] * n
    if len(orders) != n or not set(orders) <= {1, 2, 3}:
        raise ValueError(f"need one order in (1, 2, 3) per step: {n} steps, got orders={orders}")
    if schedule(p, ts[:1], cache).alpha[0] == 0:
        raise ValueError("DPM-Solver in noise prediction integrates x/alpha and cannot start where alpha(t) = 0; "
                         "use dpmpp-* (data prediction), ddim or a flow sampler")
    times, index, steps = _singlestep_plan(p, ts, orders, cache)
    model = Model(denoiser, times, x, kinds=("eps", "x0"), cond=cond, cache=cache)
    for i, k in enumerate(orders):
        eps_s = model.eps(x, index[i][0])
        if k == 1:
            x = dpm_solver_1(x, eps_s, steps[i])
        else:
            x = (dpm_solver_2 if k == 2 else dpm_solver_3)(model, x, eps_s, index[i], steps[i])
        report(callback, i, ts[i + 1], x, None)
    return model.x0(x, n) if denoise else x


@torch.no_grad()
def sample_dpmpp_2s(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    orders: Sequence[int] | None = None,
    clip_x0: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache: SamplerCache | None = None,
) -> Tensor:
    """DPM-Solver++(2S), singlestep data prediction (Lu et al. 2022, arXiv:2211.01095, Algorithm 1); order-1
    steps (orders[i] = 1) are DDIM. `clip_x0` (e.g. dynamic thresholding) acts on every x0 prediction."""
    n, p = len(ts) - 1, denoiser.process
    lam0 = schedule(p, ts[:1], cache).lam[0]
    orders = list(orders) if orders is not None else [1 if i == 0 and math.isinf(lam0) else 2 for i in range(n)]
    if len(orders) != n or not set(orders) <= {1, 2}:
        raise ValueError(f"need one order in (1, 2) per step: {n} steps, got orders={orders}")
    clip = clip_x0 or (lambda v: v)
    times, index, steps = _singlestep_plan(p, ts, orders, cache)
    model = Model(denoiser, times, x, kinds=("x0",), cond=cond, cache=cache)
    for i, k in enumerate(orders):
        x0_s = clip(model.x0(x, index[i][0]))
        if k == 1:
            x = dpmpp_1s(x, x0_s, steps[i])
        else:
            x = dpmpp_2s(model, x, x0_s, index[i], steps[i], clip)
        report(callback, i, ts[i + 1], x, x0_s)
    return clip(model.x0(x, n)) if denoise else x

