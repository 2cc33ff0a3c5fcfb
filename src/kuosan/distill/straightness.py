"""Straightness of a flow (Liu et al. 2022, arXiv:2209.03003, §2.2, "straightness" S(Z)), for any Denoiser.

    S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ_u/du ||^2 du        (0 iff every path is a straight line at constant speed)

Any process x_t = alpha x0 + sigma eps is a rectified flow in the coordinates y = x / (alpha + sigma),
s = sigma / (alpha + sigma): y = (1 - s) x0 + s eps, and its probability-flow ODE (book eq. 4.40) becomes
dy/ds = E[eps - x0 | y] = (y - x0_hat) / s. So one function measures the teacher's PF-ODE (EDM, VP, ...) and a
rectified-flow student alike: the ODE is integrated in s from the prior (s_a at t_max) to s_b at t_min by the
explicit midpoint rule on a uniform grid, u = (s_a - s) / (s_a - s_b), and the integral is the midpoint sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser

__all__ = ["Straightness", "straightness", "rf_coordinates"]


@dataclass
class Straightness:
    S: float  # Liu et al.'s S(Z): mean over samples of the squared norm (summed over dimensions)
    relative: float  # S / E||Z_1 - Z_0||^2 (scale-free: 0 straight, ~1 when the speed is far off the chord)
    chord: float  # E||Z_1 - Z_0||^2
    x0: Tensor  # the trajectories' endpoints in data space (at t_min)


def rf_coordinates(process: Any, t: Tensor) -> tuple[Tensor, Tensor]:
    """(s, alpha + sigma) at process times t: y = x / (alpha + sigma) is the rectified-flow point at time s."""
    a, sig = process.alpha(t), process.sigma(t)
    return sig / (a + sig), a + sig


def _time_of_s(process: Any, s: Tensor) -> Tensor:
    """Process time of RF time s (log-SNR log((1 - s) / s) through the process's inverse)."""
    return process.t_of_log_snr(torch.log1p(-s) - torch.log(s))


@torch.no_grad()
def straightness(
    denoiser: Denoiser,
    x_T: Tensor,
    steps: int = 100,
    cond: dict[str, Any] | None = None,
) -> Straightness:
    """S(Z) of denoiser's PF-ODE from x_T (at process.t_max) to process.t_min, `steps` midpoint steps (2 NFE each)."""
    p = denoiser.process
    t_ends = torch.tensor([p.t_max, p.t_min], dtype=torch.float64)
    s_ends, scale = rf_coordinates(p, t_ends)
    s_a, s_b = float(s_ends[0]), float(s_ends[1])
    y = x_T.double() / scale[0]
    ss = torch.linspace(s_a, s_b, steps + 1, dtype=torch.float64)
    y0, speeds = y.clone(), []

    def dyds(y: Tensor, s: Tensor) -> Tensor:
        t = _time_of_s(p, s.reshape(1)).expand(len(y))
        _, k = rf_coordinates(p, t[:1])
        x = (y * k).to(x_T.dtype)
        x0 = denoiser.x0(x, t, **(cond or {})).double()
        return (y - x0) / s

    for i in range(steps):
        h = ss[i + 1] - ss[i]
        mid = ss[i] + h / 2
        v_mid = dyds(y + h / 2 * dyds(y, ss[i]), mid)
        speeds.append(v_mid)
        y = y + h * v_mid
    chord = y - y0  # Z_1 - Z_0
    span = s_b - s_a
    flat = lambda v: v.flatten(1).pow(2).sum(1)  # noqa: E731
    S = torch.stack([flat(chord - span * v) for v in speeds]).mean(0).mean()  # midpoint rule in u, mean over Z
    c = flat(chord).mean()
    x_end = y * scale[1]
    return Straightness(float(S), float(S / c), float(c), x_end.to(x_T.dtype))
