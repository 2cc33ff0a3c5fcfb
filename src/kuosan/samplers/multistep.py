"""Multistep DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095): data-prediction exponential integrators that
reuse the x0 predictions of earlier steps instead of evaluating inside the step, so every step costs one
evaluation. With m_j the x0 prediction at grid point j and h_i = lam_{i+1} - lam_i,

    x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) m_i + (finite-difference corrections in lambda)

Each step is a linear combination x_{i+1} = A_i x_i + sum_j B_ij m_{i-j} (+ C_i z for the SDE solver) whose
float64 coefficients are computed once per grid, so the loop is a handful of tensor operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, Schedule, noise, report, schedule

__all__ = ["sample_dpmpp_2m", "sample_dpmpp_3m", "sample_dpmpp_2m_sde", "multistep_orders", "dpmpp_1", "dpmpp_2m",
           "dpmpp_3m", "dpmpp_sde"]


def dpmpp_1(s: Schedule, i: int) -> tuple[float, list[float]]:
    """DPM-Solver++(1) = DDIM (arXiv:2211.01095, eq. 10): x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} phi_1 m_i,
    phi_1 = e^{-h} - 1."""
    h = s.lam[i + 1] - s.lam[i]
    return s.sigma[i + 1] / s.sigma[i], [-s.alpha[i + 1] * math.expm1(-h)]


def dpmpp_2m(s: Schedule, i: int) -> tuple[float, list[float]]:
    """DPM-Solver++(2M) (arXiv:2211.01095, Algorithm 2): D = (1 + 1/(2r)) m_i - 1/(2r) m_{i-1}, r = h_{i-1}/h_i,
    x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) D."""
    h, h0 = s.lam[i + 1] - s.lam[i], s.lam[i] - s.lam[i - 1]
    a, (b,) = dpmpp_1(s, i)
    c = b / (2 * h0 / h)
    return a, [b + c, -c]


def dpmpp_3m(s: Schedule, i: int) -> tuple[float, list[float]]:
    """DPM-Solver++(3M) (arXiv:2211.01095, §3.3: the third-order Taylor expansion of x0 in lambda):
        r0 = h_{i-1}/h, r1 = h_{i-2}/h, D1_0 = (m_i - m_{i-1})/r0, D1_1 = (m_{i-1} - m_{i-2})/r1,
        D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1) ~ h x0',   D2 = 2 (D1_0 - D1_1)/(r0 + r1) ~ h^2 x0'',
        x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha phi_1 m_i + alpha phi_2 D1 - alpha phi_3 D2,
        phi_1 = e^{-h} - 1, phi_2 = phi_1/h + 1, phi_3 = phi_2/h - 1/2.
    The reference code (and diffusers) divides D2 by (r0 + r1) without the factor 2, which halves the x0''
    term and leaves the method second order; with it the step is exact for x0 quadratic in lambda."""
    lam, alpha = s.lam, s.alpha[i + 1]
    h, r0, r1 = lam[i + 1] - lam[i], lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
    r0, r1 = r0 / h, r1 / h
    phi_1 = math.expm1(-h)
    phi_2 = phi_1 / h + 1
    phi_3 = phi_2 / h - 0.5
    # D1_0, D1_1 and then D1, D2 as coefficients on (m_i, m_{i-1}, m_{i-2})
    d10, d11 = [1 / r0, -1 / r0, 0.0], [0.0, 1 / r1, -1 / r1]
    diff = [u - v for u, v in zip(d10, d11, strict=True)]
    d1 = [u + r0 / (r0 + r1) * v for u, v in zip(d10, diff, strict=True)]
    d2 = [2 * v / (r0 + r1) for v in diff]
    b = [alpha * phi_2 * u - alpha * phi_3 * v for u, v in zip(d1, d2, strict=True)]
    b[0] -= alpha * phi_1
    return s.sigma[i + 1] / s.sigma[i], b


def dpmpp_sde(s: Schedule, i: int, order: int, eta: float = 1.0) -> tuple[float, list[float], float]:
    """SDE-DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095, App. on SDE solvers; eta = 1) and the family between
    it and the ODE: with h = lam_{i+1} - lam_i and k = 1 + eta, the exact solution of

        x_{i+1} = sigma_{i+1}/sigma_i e^{-eta h} x_i + alpha_{i+1} int_0^h k e^{-k u} x0(lam_{i+1} - u) du
                  + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z

    for x0 constant (order 1: x0 = m_i, weight alpha (1 - e^{-k h})) or linear in lambda through m_{i-1} and m_i
    (order 2, slope D1 = (m_i - m_{i-1}) h/h_{i-1}, weight alpha (1 - (1 - e^{-k h})/(k h))). eta scales the
    noise injected per unit of log-SNR: eta = 0 is the probability-flow ODE (order 1 = DDIM), eta = 1 the reverse
    SDE, whose first-order step is DDPM's ancestral step with the posterior variance beta-tilde. Returns
    (A, [B_i, B_{i-1}], C): x_{i+1} = A x_i + B . m + C z."""
    h, k = s.lam[i + 1] - s.lam[i], 1.0 + eta
    alpha, sigma = s.alpha[i + 1], s.sigma[i + 1]
    one_minus = -math.expm1(-k * h)  # 1 - e^{-k h}
    a, b, c = sigma / s.sigma[i] * math.exp(-eta * h), [alpha * one_minus], sigma * math.sqrt(-math.expm1(-2 * eta * h))
    if order == 1:
        return a, b, c
    w = alpha * (1 - one_minus / (k * h)) * h / (s.lam[i] - s.lam[i - 1])
    return a, [b[0] + w, -w], c


_UPDATES = {1: dpmpp_1, 2: dpmpp_2m, 3: dpmpp_3m}


def multistep_orders(s: Schedule, order: int, lower_order_final: bool = True) -> list[int]:
    """Order of each step: warm up from order 1 (only earlier points with a finite log-SNR count as history);
    with `lower_order_final` and fewer than 15 steps, the last step is at most second order (DPM-Solver++ §3.3)."""
    n = len(s.lam) - 1
    first = 0 if math.isfinite(s.lam[0]) else 1  # a point at lambda = -inf (alpha = 0) is no history
    orders = [max(1, min(order, i + 1 - first)) for i in range(n)]
    if lower_order_final and n < 15 and n > 0:
        orders[-1] = min(orders[-1], 2)
    return orders


def _sample_multistep(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    order: int,
    *,
    lower_order_final: bool,
    clip_x0: Callable[[Tensor], Tensor] | None,
    callback: Callback | None,
    denoise: bool,
    cond: dict[str, Any] | None,
    cache=None,
    eta: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The multistep loop: one x0 evaluation per grid point; the last one is the final denoise.
    eta=None: the ODE solvers; a number: dpmpp_sde with that eta, fresh noise from `generator` every step."""
    s, n = schedule(denoiser.process, ts, cache), len(ts) - 1
    orders = multistep_orders(s, order, lower_order_final)
    if eta is None:
        steps = [(*_UPDATES[k](s, i), 0.0) for i, k in enumerate(orders)]
    else:
        steps = [dpmpp_sde(s, i, k, eta) for i, k in enumerate(orders)]
    model = Model(denoiser, ts, x, kinds=("x0",), cond=cond, cache=cache)
    clip = clip_x0 or (lambda v: v)
    history: list[Tensor] = []  # m_i, m_{i-1}, ... newest first
    for i, (a, b, c) in enumerate(steps):
        history = [clip(model.x0(x, i))] + history[: order - 1]
        x = _combine(a, x, b, history)
        if c > 0:
            x = torch.add(x, noise(x, generator), alpha=c)
        report(callback, i, ts[i + 1], x, history[0])
    return clip(model.x0(x, n)) if denoise else x


def _combine(a: float, x: Tensor, b: Sequence[float], ms: Sequence[Tensor]) -> Tensor:
    """a x + sum_j b_j ms_j."""
    out = a * x
    for bj, mj in zip(b, ms, strict=False):
        out = torch.add(out, mj, alpha=bj)
    return out


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    lower_order_final: bool = True,
    clip_x0: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2): second order, one evaluation a step."""
    return _sample_multistep(denoiser, x, ts, 2, cache=cache, lower_order_final=lower_order_final, clip_x0=clip_x0,
                             callback=callback, denoise=denoise, cond=cond)


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    lower_order_final: bool = True,
    clip_x0: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, arXiv:2211.01095, §3.3): third order, one evaluation a step, warmed up
    with orders 1 and 2 (the start, at high noise, is nearly linear in lambda: the warm-up costs no order)."""
    return _sample_multistep(denoiser, x, ts, 3, cache=cache, lower_order_final=lower_order_final, clip_x0=clip_x0,
                             callback=callback, denoise=denoise, cond=cond)


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    eta: float = 1.0,
    lower_order_final: bool = True,
    clip_x0: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095; `dpmpp_sde`): a stochastic multistep solver of
    the reverse SDE, second order in the drift, one evaluation a step. eta in [0, 1] (default 1, the reverse
    SDE) sets how much noise is re-injected; with eta = 1 and first-order steps it is DDPM ancestral sampling."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta} must lie in [0, 1] (0: probability-flow ODE, 1: reverse SDE)")
    return _sample_multistep(denoiser, x, ts, 2, cache=cache, lower_order_final=lower_order_final, clip_x0=clip_x0,
                             callback=callback, denoise=denoise, cond=cond, eta=eta, generator=generator)
