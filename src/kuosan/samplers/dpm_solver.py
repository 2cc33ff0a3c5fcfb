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
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, grid_key, memo, noise, report, schedule

__all__ = ["sample_ddim", "sample_dpm_solver", "sample_dpmpp_2s", "posterior_coefficients", "singlestep_orders"]


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
) -> Tensor:
    """DDIM (Song et al. 2021, arXiv:2010.02502, eq. 12 and 16): x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z
    with c^2 = eta^2 times the posterior variance; eta = 0 is deterministic, eta = 1 is DDPM with beta-tilde."""
    p, n = denoiser.process, len(ts) - 1
    sch = schedule(p, ts)
    var = memo(p, "posterior_var", grid_key(ts), lambda: posterior_coefficients(p, sch.t[1:], sch.t[:-1])[2].tolist())
    c2 = [eta**2 * v for v in var]
    model = Model(denoiser, ts, x, cond=cond)
    for i in range(n):
        x0, eps = model.x0_eps(x, i)
        x = sch.alpha[i + 1] * x0 + math.sqrt(max(sch.sigma[i + 1] ** 2 - c2[i], 0.0)) * eps
        if c2[i] > 0:
            x = x + math.sqrt(c2[i]) * noise(x, generator)
        report(callback, i, ts[i + 1], x, x0)
    return model.x0(x, n) if denoise else x


# --- DPM-Solver (noise prediction), Lu et al. 2022, arXiv:2206.00927 ---------------------------------------
def dpm_solver_1(x: Tensor, eps_s: Tensor, c: dict[str, float]) -> Tensor:
    """DPM-Solver-1 (eq. 3.7): x_t = alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps_s."""
    return c["a"] * x - c["sig"] * math.expm1(c["h"]) * eps_s


def dpm_solver_2(model: Model, x: Tensor, eps_s: Tensor, k: Sequence[int], c: dict[str, float]) -> Tensor:
    """DPM-Solver-2 (Algorithm 1, r1 = 1/2):
    u = alpha_s1/alpha_s x - sigma_s1 (e^{r1 h} - 1) eps_s
    x_t = alpha_t/alpha_s x - sigma_t (e^h - 1) eps_s - sigma_t/(2 r1) (e^h - 1) (eps(u, s1) - eps_s)."""
    h, h1, r1 = c["h"], c["h1"], c["h1"] / c["h"]
    u = c["a1"] * x - c["sig1"] * math.expm1(h1) * eps_s
    d1 = model.eps(u, k[1]) - eps_s
    return c["a"] * x - c["sig"] * math.expm1(h) * eps_s - c["sig"] / (2 * r1) * math.expm1(h) * d1


def dpm_solver_3(model: Model, x: Tensor, eps_s: Tensor, k: Sequence[int], c: dict[str, float]) -> Tensor:
    """DPM-Solver-3 (Algorithm 2, r1 = 1/3, r2 = 2/3):
    u1 = alpha_s1/alpha_s x - sigma_s1 (e^{r1 h} - 1) eps_s,                       D1 = eps(u1, s1) - eps_s
    u2 = alpha_s2/alpha_s x - sigma_s2 (e^{r2 h} - 1) eps_s - sigma_s2 r2/r1 ((e^{r2 h} - 1)/(r2 h) - 1) D1
    x_t = alpha_t/alpha_s x - sigma_t (e^h - 1) eps_s - sigma_t/r2 ((e^h - 1)/h - 1) (eps(u2, s2) - eps_s)."""
    h, h1, h2 = c["h"], c["h1"], c["h2"]
    r1, r2 = h1 / h, h2 / h
    u1 = c["a1"] * x - c["sig1"] * math.expm1(h1) * eps_s
    d1 = model.eps(u1, k[1]) - eps_s
    u2 = c["a2"] * x - c["sig2"] * math.expm1(h2) * eps_s - c["sig2"] * r2 / r1 * (math.expm1(h2) / h2 - 1) * d1
    d2 = model.eps(u2, k[2]) - eps_s
    return c["a"] * x - c["sig"] * math.expm1(h) * eps_s - c["sig"] / r2 * (math.expm1(h) / h - 1) * d2


# --- DPM-Solver++ (data prediction), Lu et al. 2022, arXiv:2211.01095 ---------------------------------------
def dpmpp_2s(model: Model, x: Tensor, x0_s: Tensor, k: Sequence[int], c: dict[str, float], clip) -> Tensor:
    """DPM-Solver++(2S) (Algorithm 1, r = 1/2): u = sigma_s1/sigma_s x - alpha_s1 (e^{-r h} - 1) x0_s,
    D = (1 - 1/(2r)) x0_s + 1/(2r) x0(u, s1), x_t = sigma_t/sigma_s x - alpha_t (e^{-h} - 1) D."""
    h, r = c["h"], c["h1"] / c["h"]
    u = c["q1"] * x - c["alp1"] * math.expm1(-c["h1"]) * x0_s
    d = (1 - 1 / (2 * r)) * x0_s + 1 / (2 * r) * clip(model.x0(u, k[1]))
    return c["q"] * x - c["alp"] * math.expm1(-h) * d


_R = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}  # inner points at lam_s + r h (DPM-Solver's r1, r2)


def _singlestep_plan(process, ts: Tensor, orders: Sequence[int]) -> tuple[Tensor, list[list[int]], list[dict]]:
    """Model times (the grid, then every step's inner points at lam_s + r h), each step's indices into them
    [s, s1, s2] and its float64 coefficients: suffix "" for the step's end t, "1" / "2" for s1 / s2."""
    return memo(process, "singlestep", (grid_key(ts), tuple(orders)), lambda: _plan(process, ts, orders))


def _plan(process, ts: Tensor, orders: Sequence[int]) -> tuple[Tensor, list[list[int]], list[dict]]:
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

    def rel(i: int, m: int, tag: str) -> dict[str, float]:
        return {f"h{tag}": al.lam[m] - al.lam[i], f"a{tag}": _ratio(al.alpha, i, m), f"sig{tag}": al.sigma[m],
                f"q{tag}": al.sigma[m] / al.sigma[i], f"alp{tag}": al.alpha[m]}

    coef = []
    for i, idx in enumerate(index):
        c = rel(i, i + 1, "")
        for j, m in enumerate(idx[1:], start=1):
            c.update(rel(i, m, str(j)))
        coef.append(c)
    return times, index, coef


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
) -> Tensor:
    """Singlestep DPM-Solver-1/2/3 in noise prediction (Lu et al. 2022, arXiv:2206.00927, eq. 3.7, Algorithms 1-2);
    step i has order orders[i] (default 3 everywhere) and costs that many evaluations."""
    n, p = len(ts) - 1, denoiser.process
    orders = list(orders) if orders is not None else [3] * n
    if len(orders) != n or not set(orders) <= {1, 2, 3}:
        raise ValueError(f"need one order in (1, 2, 3) per step: {n} steps, got orders={orders}")
    if p.alpha(ts[:1].to(torch.float64)).item() == 0:
        raise ValueError("DPM-Solver in noise prediction integrates x/alpha and cannot start where alpha(t) = 0; "
                         "use dpmpp-* (data prediction), ddim or a flow sampler")
    times, index, coef = _singlestep_plan(p, ts, orders)
    model = Model(denoiser, times, x, kinds=("eps", "x0"), cond=cond)
    for i, k in enumerate(orders):
        eps_s = model.eps(x, index[i][0])
        if k == 1:
            x = dpm_solver_1(x, eps_s, coef[i])
        else:
            x = (dpm_solver_2 if k == 2 else dpm_solver_3)(model, x, eps_s, index[i], coef[i])
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
) -> Tensor:
    """DPM-Solver++(2S), singlestep data prediction (Lu et al. 2022, arXiv:2211.01095, Algorithm 1); order-1
    steps (orders[i] = 1) are DDIM. `clip_x0` (e.g. dynamic thresholding) acts on every x0 prediction."""
    n, p = len(ts) - 1, denoiser.process
    orders = list(orders) if orders is not None else [1 if i == 0 and math.isinf(_lam0(p, ts)) else 2 for i in range(n)]
    if len(orders) != n or not set(orders) <= {1, 2}:
        raise ValueError(f"need one order in (1, 2) per step: {n} steps, got orders={orders}")
    clip = clip_x0 or (lambda v: v)
    times, index, coef = _singlestep_plan(p, ts, orders)
    model = Model(denoiser, times, x, kinds=("x0",), cond=cond)
    for i, k in enumerate(orders):
        c = coef[i]
        x0_s = clip(model.x0(x, index[i][0]))
        if k == 1:
            x = c["q"] * x - c["alp"] * math.expm1(-c["h"]) * x0_s
        else:
            x = dpmpp_2s(model, x, x0_s, index[i], c, clip)
        report(callback, i, ts[i + 1], x, x0_s)
    return clip(model.x0(x, n)) if denoise else x


def _lam0(process, ts: Tensor) -> float:
    return process.log_snr(ts[:1].to("cpu", torch.float64)).item()
