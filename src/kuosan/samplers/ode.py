"""Probability-flow ODE solvers (book eq. 4.40; Song et al. 2021, arXiv:2011.13456, eq. 13):
Euler, Heun with and without churn (Karras et al. 2022, arXiv:2206.00364, Algorithms 1-2) and adaptive RK45.

Euler and Heun integrate EDM's form of the ODE: with x~ = x/alpha and s = sigma/alpha = e^{-lambda},

    dx~/ds = (x~ - D(x~, s)) / s = eps(x, t)                                  (EDM eq. 4 with s(t) = alpha)

whose solutions are straight lines wherever the x0 prediction D is constant, so Euler here is DDIM (and
DPM-Solver-1) exactly. RK45 integrates the same ODE in the angle theta = atan(sigma/alpha), where
y = x / sqrt(alpha^2 + sigma^2) obeys dy/dtheta = cos(theta) eps - sin(theta) x0 (the "v" of Salimans & Ho
2022) on a bounded interval even when alpha(t_max) = 0 (rectified flow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import BudgetExceeded, Callback, Model, noise, report, schedule

__all__ = ["sample_euler", "sample_heun", "sample_heun_churn", "sample_rk45", "heun_orders"]


def heun_orders(budget: int, infinite_start: bool = False) -> list[int]:
    """Heun steps (2 evaluations) for `budget` evaluations; an odd one out, and a start at alpha = 0 (s = inf),
    become Euler steps (1 evaluation) at the start, where the trajectory is straightest in s."""
    lead = [1] if infinite_start and budget > 0 else []
    rest = budget - len(lead)
    return lead + [1] * (rest % 2) + [2] * (rest // 2)


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """Euler on dx~/ds = eps (EDM Algorithm 1 without the Heun correction): x~_{i+1} = x~_i + (s_{i+1} - s_i) eps_i,
    written as x_{i+1} = sigma_{i+1}/sigma_i x_i + (alpha_{i+1} - sigma_{i+1} alpha_i / sigma_i) x0_i (= DDIM)."""
    sch, n = schedule(denoiser.process, ts, cache), len(ts) - 1
    model = Model(denoiser, ts, x, kinds=("x0",), cond=cond, cache=cache)
    for i in range(n):
        q = sch.sigma[i + 1] / sch.sigma[i]
        x0 = model.x0(x, i)
        x = q * x + (sch.alpha[i + 1] - q * sch.alpha[i]) * x0
        report(callback, i, ts[i + 1], x, x0)
    return model.x0(x, n) if denoise else x


def heun_step(model: Model, x: Tensor, eps: Tensor, j: int, a: float, b: float) -> Tensor:
    """EDM Algorithm 1, lines 5-8, on x~ = x/alpha: with a = alpha_t/alpha_s and b = alpha_t (s_t - s_s)/2,
    Euler x' = a x + 2b eps(x, s), then x_t = a x + b (eps(x, s) + eps(x', t)) (the trapezoidal rule)."""
    x_euler = torch.add(a * x, eps, alpha=2 * b)
    return torch.add(a * x, eps + model.eps(x_euler, j), alpha=b)


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    orders: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """Heun's second-order method on dx~/ds = eps (EDM Algorithm 1); steps with orders[i] = 1 are Euler.
    The last step to sigma = 0 of EDM is the final denoise."""
    sch, n = schedule(denoiser.process, ts, cache), len(ts) - 1
    orders = list(orders) if orders is not None else [1 if i == 0 and sch.alpha[0] == 0 else 2 for i in range(n)]
    if len(orders) != n or not set(orders) <= {1, 2}:
        raise ValueError(f"need one order in (1, 2) per step: {n} steps, got orders={orders}")
    if sch.alpha[0] == 0 and orders[0] == 2:
        raise ValueError("a Heun step cannot start where alpha = 0 (s = sigma/alpha is infinite); make it Euler")
    model = Model(denoiser, ts, x, kinds=("x0", "eps"), cond=cond, cache=cache)
    for i, k in enumerate(orders):
        x0, eps = model.x0_eps(x, i)
        q = sch.sigma[i + 1] / sch.sigma[i]
        if k == 1:
            x = q * x + (sch.alpha[i + 1] - q * sch.alpha[i]) * x0
        else:
            a = sch.alpha[i + 1] / sch.alpha[i]
            x = heun_step(model, x, eps, i + 1, a, 0.5 * (sch.sigma[i + 1] - a * sch.sigma[i]))
        report(callback, i, ts[i + 1], x, x0)
    return model.x0(x, n) if denoise else x


def churn_gammas(s: Sequence[float], n: int, S_churn: float, S_tmin: float, S_tmax: float) -> list[float]:
    """EDM Algorithm 2, line 4: gamma_i = min(S_churn/N, sqrt(2) - 1) if s_i in [S_tmin, S_tmax] else 0."""
    g = min(S_churn / n, math.sqrt(2) - 1)
    return [g if S_tmin <= si <= S_tmax else 0.0 for si in s[:n]]


@torch.no_grad()
def sample_heun_churn(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    S_churn: float = 40.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, arXiv:2206.00364, Algorithm 2) on x~ = x/alpha, s = sigma/alpha:
    raise the noise s_i -> s^_i = (1 + gamma_i) s_i by adding sqrt(s^_i^2 - s_i^2) S_noise z to x~, then one Heun
    step from s^_i to s_{i+1}. S_tmin, S_tmax are in units of s = sigma/alpha."""
    p, n = denoiser.process, len(ts) - 1
    t64 = ts.to("cpu", torch.float64)
    s = torch.exp(-p.log_snr(t64))  # sigma / alpha
    gam = churn_gammas(s.tolist(), n, S_churn, S_tmin, S_tmax)
    if not math.isfinite(s[0].item()):
        raise ValueError("heun-churn integrates x/alpha and cannot start where alpha(t) = 0 (use t_start < t_max)")
    s_hat = s[:-1] * (1 + torch.tensor(gam, dtype=torch.float64))
    t_hat = torch.where(torch.tensor(gam) > 0, p.t_of_log_snr(-torch.log(s_hat)), t64[:-1])
    times = torch.cat([t64, t_hat])  # model times: the grid, then the raised times t^_i
    model = Model(denoiser, times, x, kinds=("x0", "eps"), cond=cond, cache=cache)
    alpha, al_hat = p.alpha(t64).tolist(), p.alpha(t_hat).tolist()
    s, s_hat = s.tolist(), s_hat.tolist()
    for i in range(n):
        if gam[i] > 0:  # x^ = alpha^ (x/alpha + sqrt(s^^2 - s^2) S_noise z)
            std = al_hat[i] * math.sqrt(s_hat[i] ** 2 - s[i] ** 2) * S_noise
            x = al_hat[i] / alpha[i] * x + std * noise(x, generator)
        x0, eps = model.x0_eps(x, n + 1 + i)
        a = alpha[i + 1] / al_hat[i]
        x = heun_step(model, x, eps, i + 1, a, 0.5 * alpha[i + 1] * (s[i + 1] - s_hat[i]))
        report(callback, i, ts[i + 1], x, x0)
    return model.x0(x, n) if denoise else x


@torch.no_grad()
def sample_rk45(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "RK45",
    max_nfe: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """Adaptive Runge-Kutta (Dormand-Prince 5(4), scipy.integrate.solve_ivp; Score SDE §4.3) on the PF-ODE in
    theta = atan(sigma/alpha): dy/dtheta = cos(theta) eps - sin(theta) x0 with y = x/sqrt(alpha^2 + sigma^2),
    from ts[0] to ts[-1] (inner grid points are ignored). Uses as many evaluations as the tolerances need;
    raises BudgetExceeded past `max_nfe` evaluations on the ODE (the final denoise is one more)."""
    from scipy.integrate import solve_ivp

    p, shape, dtype, dev = denoiser.process, x.shape, x.dtype, x.device
    t_ends = ts[[0, -1]].to("cpu", torch.float64)
    al, sg = p.alpha(t_ends), p.sigma(t_ends)
    theta, r = torch.atan2(sg, al).tolist(), torch.hypot(al, sg).tolist()
    start = denoiser.nfe

    def v(th: float, y: np.ndarray) -> np.ndarray:
        if max_nfe is not None and denoiser.nfe - start >= max_nfe:
            raise BudgetExceeded(f"rk45 needs more than {max_nfe} evaluations at rtol={rtol}, atol={atol}")
        t = p.t_of_log_snr(torch.tensor([-math.log(math.tan(th))], dtype=torch.float64))
        rt = torch.hypot(p.alpha(t), p.sigma(t)).item()
        xt = torch.from_numpy(y).to(dev, dtype).reshape(shape) * rt
        x0, eps = denoiser.predict(xt, t.to(dev).expand(shape[0]), **(cond or {}))
        return (math.cos(th) * eps - math.sin(th) * x0).to(torch.float64).flatten().cpu().numpy()

    y0 = (x / r[0]).to(torch.float64).flatten().cpu().numpy()
    sol = solve_ivp(v, (theta[0], theta[1]), y0, method=solver, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"rk45 failed: {sol.message}")
    x = torch.from_numpy(sol.y[:, -1]).to(dev, dtype).reshape(shape) * r[1]
    report(callback, 0, ts[-1], x, None)
    return denoiser.x0(x, ts[-1].to(dev, torch.float64).expand(shape[0]), **(cond or {})) if denoise else x
