"""UniPC: a unified predictor-corrector for diffusion ODEs (Zhao et al. 2023, arXiv:2302.04867), data
prediction with B(h) = e^{-h} - 1 ("bh2"). With m_j the x0 predictions (newest m_0 at the step start s),
r_k = (lam_{s_k} - lam_s)/h and D_k = (m_k - m_0)/r_k:

    UniP-p (eq. 8):  x_t = sigma_t/sigma_s x_s - alpha_t phi_1 m_0 - alpha_t B(h) sum_{k<p} a_k D_k
    UniC-p (eq. 9):  x_t^c = sigma_t/sigma_s x_s - alpha_t phi_1 m_0
                             - alpha_t B(h) (sum_{k<p} a^c_k D_k + a^c_p (m_t - m_0))

where m_t is the x0 prediction at the predicted x_t: the evaluation the next step needs anyway, so the
corrector is free and lifts the order from p to p + 1. The weights a solve R a = g (Algorithm 1/2 of the paper),
R_ik = r_k^(i-1), g_i = h phi_{i+1}(h) i! / B(h).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import Callback, Model, Schedule, grid_key, memo, report, schedule
from .multistep import _combine, multistep_orders

__all__ = ["sample_unipc", "unipc_coefficients"]


def _rho(rks: list[float], h: float, order: int, corrector: bool) -> list[float]:
    """Weights a (predictor: the p - 1 history terms) or a^c (corrector: those and the new point)."""
    hh = -h  # data prediction integrates e^{-h}
    h_phi_k, fact = math.expm1(hh) / hh - 1, 1
    b_h = math.expm1(hh)
    g = []
    for i in range(1, order + 1):
        g.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    if not corrector:
        if order == 2:
            return [0.5]  # the paper's simplified UniP-2
        R = np.array([[r ** (i - 1) for r in rks] for i in range(1, order)])
        return np.linalg.solve(R, np.array(g[:-1])).tolist() if order > 1 else []
    if order == 1:
        return [0.5]
    R = np.array([[r ** (i - 1) for r in rks + [1.0]] for i in range(1, order + 1)])
    return np.linalg.solve(R, np.array(g)).tolist()


def unipc_coefficients(s: Schedule, i: int, order: int) -> tuple[float, list[float], list[float], float]:
    """Step i -> i+1 of UniPC-`order` as linear combinations: x_pred = A x + sum_j P_j m_j and
    x_corr = A x + sum_j C_j m_j + C_new m_new (m_0 = m_i, m_1 = m_{i-1}, ...)."""
    h = s.lam[i + 1] - s.lam[i]
    alpha = s.alpha[i + 1]
    a = s.sigma[i + 1] / s.sigma[i]
    base = -alpha * math.expm1(-h)  # the DDIM term on m_0
    b_h = math.expm1(-h)
    rks = [(s.lam[i - k] - s.lam[i]) / h for k in range(1, order)]
    rho_p, rho_c = _rho(rks, h, order, corrector=False), _rho(rks, h, order, corrector=True)
    P = [base] + [0.0] * (order - 1)
    for k, (r, rho) in enumerate(zip(rks, rho_p, strict=False), start=1):
        P[k] -= alpha * b_h * rho / r
        P[0] += alpha * b_h * rho / r
    C = [base] + [0.0] * (order - 1)
    for k, (r, rho) in enumerate(zip(rks, rho_c[:-1], strict=True), start=1):
        C[k] -= alpha * b_h * rho / r
        C[0] += alpha * b_h * rho / r
    C_new = -alpha * b_h * rho_c[-1]
    C[0] -= C_new
    return a, P, C, C_new


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 2,
    corrector: bool = True,
    lower_order_final: bool = True,
    clip_x0: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    cond: dict[str, Any] | None = None,
    cache=None,
) -> Tensor:
    """UniPC-p (Zhao et al. 2023, arXiv:2302.04867, Algorithms 1-3): UniP-p predictor and UniC-p corrector,
    order p + 1 at one evaluation a step (p = `order`, default 2: third order).

    The corrector also acts at the last grid point, where the final denoise evaluates m_n at the predicted
    x_n: the output is m_n + (x_n^c - x_n)/alpha_n, D linearised with d eps/dx = 0 (error O(sigma_n^2))."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    p, n = denoiser.process, len(ts) - 1
    s = schedule(p, ts, cache)
    steps = memo(p, "unipc", (grid_key(ts), order, lower_order_final), lambda: [
        unipc_coefficients(s, i, k) for i, k in enumerate(multistep_orders(s, order, lower_order_final))], cache)
    model = Model(denoiser, ts, x, kinds=("x0",), cond=cond, cache=cache)
    clip = clip_x0 or (lambda v: v)
    history = [clip(model.x0(x, 0))]  # m_i, m_{i-1}, ... newest first
    x_pred = x
    for i, (a, P, C, C_new) in enumerate(steps):
        x_pred = _combine(a, x, P, history)
        if not denoise and i == n - 1:
            x = x_pred
            break
        m_new = clip(model.x0(x_pred, i + 1))
        x = torch.add(_combine(a, x, C, history), m_new, alpha=C_new) if corrector else x_pred
        history = [m_new] + history[: order - 1]
        report(callback, i, ts[i + 1], x, history[0])
    if not denoise:
        return x
    return history[0] + (x - x_pred) / s.alpha[n] if corrector else history[0]
