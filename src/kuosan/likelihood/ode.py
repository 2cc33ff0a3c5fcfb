"""Exact log-likelihood through the probability-flow ODE and the instantaneous change of variables.

The PF-ODE dx/dt = v(x, t) = f(t) x - 1/2 g(t)^2 score(x, t) (book eq. 4.40) carries p_t to p_t' for every t,
and along its trajectories d log p_t(x_t) / dt = -div v(x_t, t) (Chen et al. 2018, arXiv:1806.07366, Thm. 1).
Integrating x and the divergence together from t_0 up to T:

    log p_{t_0}(x) = log p_T(x_T) + int_{t_0}^{T} div v(x_t, t) dt            (Song et al. 2021, eq. 39-40)

with log p_T the process prior (book §4.3.2). The answer is the density of the model's marginal at the start
time t_0 = t_min: the data density itself only where the process reaches alpha = 1, sigma = 0 (VP, sub-VP and
DiscreteVP as t_min -> 0; Score SDE evaluates at t_min = 1e-5). VE never reaches sigma = 0, so there it is the
data smoothed by N(0, sigma_min^2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from .divergence import draw_probes, velocity_and_divergence

if TYPE_CHECKING:
    from ..denoiser import Denoiser
    from ..processes.base import Process

__all__ = ["ode_nll", "METHODS", "TABLEAUS"]

Rhs = Callable[[float, Tensor], tuple[Tensor, Tensor]]  # (s, x) -> (dx/ds, d delta/ds)


class Tableau(NamedTuple):
    """Butcher tableau of an explicit Runge-Kutta method: stages at s + c_i h, weights a_ij, b_i."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]


TABLEAUS: dict[str, Tableau] = {
    "euler": Tableau((0.0,), ((),), (1.0,)),
    "heun": Tableau((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "rk4": Tableau((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}
METHODS: tuple[str, ...] = ("rk45", *TABLEAUS)


# --- the integration variable ---------------------------------------------------------------------
class TimeChange(NamedTuple):
    """Integrate in s instead of t: t = t_of_s(s), dt/ds = dt_ds(t); s runs upwards from s0 to s1."""

    s0: float
    s1: float
    t_of_s: Callable[[Tensor], Tensor]
    dt_ds: Callable[[Tensor], Tensor]


def time_change(process: Process, variable: str, t0: float, t1: float) -> TimeChange:
    """s = t, or s = -lambda(t) = log(sigma/alpha) with dt/ds = 2 sigma^2 / g^2 (as dlambda/dt = -g^2 / (2 sigma^2)).

    In s = -lambda equal steps are equal factors of the noise-to-signal ratio, the natural scale near the data
    (DPM-Solver, arXiv:2206.00927, §3.1); for VE, t is already log sigma up to a constant factor.
    """
    if variable == "t":
        return TimeChange(t0, t1, lambda s: s, torch.ones_like)
    if variable == "logsnr":
        lam = process.log_snr(torch.tensor([t0, t1], dtype=torch.float64))
        if not torch.isfinite(lam).all():
            raise ValueError(
                f"{process!r}: the log-SNR is infinite at t={t0 if not torch.isfinite(lam[0]) else t1}; "
                "pass t_min/t_max inside the range or time_variable='t'"
            )
        return TimeChange(
            float(-lam[0]),
            float(-lam[1]),
            lambda s: process.t_of_log_snr(-s),
            lambda t: 2 * process.sigma(t) ** 2 / process.g2(t),
        )
    raise ValueError(f"unknown time_variable {variable!r}; choose 't' or 'logsnr'")


def pf_ode_rhs(model: Denoiser, tc: TimeChange, batch: int, probes: Tensor | None) -> Rhs:
    """(s, x) -> (v dt/ds, div v dt/ds): the PF-ODE (book eq. 4.40) and the growth of delta = log p_t0 - log p_t."""

    def rhs(s: float, x: Tensor) -> tuple[Tensor, Tensor]:
        t = tc.t_of_s(torch.tensor(s, dtype=torch.float64, device=x.device)).expand(batch)
        v, div = velocity_and_divergence(model, x, t, probes)
        k = tc.dt_ds(t)  # (B,)
        return v * k.to(v.dtype).reshape((-1,) + (1,) * (x.ndim - 1)), div.to(torch.float64) * k

    return rhs


# --- solvers ----------------------------------------------------------------------------------------
def rk_step(rhs: Rhs, s: float, x: Tensor, h: float, tableau: Tableau) -> tuple[Tensor, Tensor]:
    """One explicit Runge-Kutta step of the pair (x, delta): returns x(s + h) and the increment of delta."""
    ks: list[tuple[Tensor, Tensor]] = []
    for c, a in zip(tableau.c, tableau.a, strict=True):
        x_i = x
        for a_ij, (dx_j, _) in zip(a, ks, strict=False):
            x_i = x_i + h * a_ij * dx_j
        ks.append(rhs(s + c * h, x_i))
    dx = sum(b_i * dx_i for b_i, (dx_i, _) in zip(tableau.b, ks, strict=True))
    dd = sum(b_i * dd_i for b_i, (_, dd_i) in zip(tableau.b, ks, strict=True))
    return x + h * dx, h * dd


def solve_fixed(rhs: Rhs, x: Tensor, s0: float, s1: float, steps: int, tableau: Tableau) -> tuple[Tensor, Tensor]:
    """x(s1) and int_{s0}^{s1} d delta with `steps` equal steps of an explicit Runge-Kutta method."""
    if steps < 1:
        raise ValueError(f"need steps >= 1, got {steps}")
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    h = (s1 - s0) / steps
    for n in range(steps):
        x, d_delta = rk_step(rhs, s0 + n * h, x, h, tableau)
        delta = delta + d_delta
    return x, delta


def solve_rk45(rhs: Rhs, x: Tensor, s0: float, s1: float, rtol: float, atol: float) -> tuple[Tensor, Tensor]:
    """The same with adaptive Dormand-Prince RK45 (scipy.integrate.solve_ivp) on the flattened float64 state."""
    shape, n = x.shape, x.numel()

    def fun(s: float, y: np.ndarray) -> np.ndarray:
        x_s = torch.from_numpy(y[:n]).reshape(shape).to(x.dtype).to(x.device)
        dx, dd = rhs(s, x_s)
        return np.concatenate([dx.detach().cpu().double().flatten().numpy(), dd.detach().cpu().numpy()])

    y0 = np.concatenate([x.detach().cpu().double().flatten().numpy(), np.zeros(shape[0])])
    sol = solve_ivp(fun, (s0, s1), y0, method="RK45", t_eval=[s1], rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"RK45 failed to integrate the probability-flow ODE: {sol.message}")
    y = torch.from_numpy(sol.y[:, -1])
    return y[:n].reshape(shape).to(x.dtype).to(x.device), y[n:].to(x.device)


# --- the likelihood ---------------------------------------------------------------------------------
def ode_nll(
    model: Denoiser,
    x: Tensor,
    divergence: str = "exact",
    *,
    n_probes: int = 1,
    probe: str = "rademacher",
    method: str = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    t_max: float | None = None,
    time_variable: str = "logsnr",
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """-log p_{t_min}(x) in nats per sample (B,) through the PF-ODE (Song et al. 2021, arXiv:2011.13456, eq. 39-40;
    book §4.3.2).

    Args:
        model: a Denoiser; its `nfe` counts the evaluations spent (rk45: about 6 per accepted step).
        x: data (B, ...) in the model's input range; its dtype is the dtype the model is run in.
        divergence: "exact" (autograd, one backward pass per dimension: small D) or "hutchinson".
        n_probes, probe: Hutchinson probes per sample, "rademacher" (default, as Score SDE) or "gaussian", averaged;
            drawn once per solve. Rademacher's eps_i^2 = 1 makes the estimate exact on the diagonal of dv/dx, so
            the large isotropic part of the PF-ODE Jacobian adds no variance (benchmarks/likelihood.py).
        method: "rk45" (adaptive, rtol/atol) or a fixed-step "euler" | "heun" | "rk4" with `steps` steps.
        t_min, t_max: integration range (default the process's); the result is the density at t_min.
        time_variable: integrate in "logsnr" (s = -lambda(t), the default) or in "t". In s the VP-type ODE
            dx/ds = -sigma^2 (x + score) has no f(t), so DiscreteVP's piecewise-constant beta leaves no kinks.
        prior_log_prob: log p_T(x_T) per sample; default the process prior N(0, prior_std^2 I).
        generator: draws the Hutchinson probes.
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"unknown divergence {divergence!r}; choose 'exact' or 'hutchinson'")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    process = model.process
    t0 = process.t_min if t_min is None else float(t_min)
    t1 = process.t_max if t_max is None else float(t_max)
    if not t1 > t0:
        raise ValueError(f"need t_max > t_min, got t_min={t0}, t_max={t1}")
    probes = None if divergence == "exact" else draw_probes(x, n_probes, probe, generator)
    tc = time_change(process, time_variable, t0, t1)
    rhs = pf_ode_rhs(model, tc, x.shape[0], probes)
    if method == "rk45":
        x_T, delta = solve_rk45(rhs, x, tc.s0, tc.s1, rtol, atol)
    else:
        x_T, delta = solve_fixed(rhs, x, tc.s0, tc.s1, steps, TABLEAUS[method])
    log_p_T = (prior_log_prob or process.prior_log_prob)(x_T.to(torch.float64))
    return -(log_p_T + delta)
