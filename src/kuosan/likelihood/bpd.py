"""Bits per dimension of 8-bit data through the PF-ODE, with uniform dequantisation (Score SDE's convention).

An 8-bit vector x in {0..255}^D gets u ~ U[0, 1)^D and the model sees y = lo + a (x + u) with a = (hi - lo)/256,
so y fills the data range. For any density p_c on [0, 256)^D, P(x) = int_bin p_c >= exp E_u log p_c(x + u)
(Jensen; Theis et al. 2016, arXiv:1511.01844, §3.1), and p_c(x + u) = p_model(y) a^D. Hence

    -log P(x) <= E_u[-log p_model(y)] - D log a,          bits/dim = nats / (D ln 2)

(Song et al. 2021, arXiv:2011.13456, App. D.2 and their `likelihood.py`: data (255 x/255 + u)/256 scaled to
[-1, 1] and an offset of 7 bits; here -D log a is that offset in nats for any range; book §4.3.2).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .ode import ode_nll

if TYPE_CHECKING:
    from ..denoiser import Denoiser

__all__ = ["dequantize", "bits_per_dim"]


def dequantize(
    x_uint8: Tensor,
    generator: torch.Generator | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, float]:
    """y = lo + a (x + u), u ~ U[0, 1)^D, a = (hi - lo)/256; returns (y, log a), the log-Jacobian per dimension."""
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    dtype = dtype or torch.get_default_dtype()
    u = torch.rand(x_uint8.shape, generator=generator, dtype=torch.float64, device=x_uint8.device)
    a = (hi - lo) / 256
    return (lo + a * (x_uint8.to(torch.float64) + u)).to(dtype), math.log(a)


def bits_per_dim(
    model: Denoiser,
    x_uint8: Tensor,
    *,
    n_dequant: int = 1,
    generator: torch.Generator | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype | None = None,
    **ode_kw,
) -> Tensor:
    """Upper bound on -log2 P(x) / D per sample (B,) for 8-bit x, averaged over n_dequant draws of u
    (Song et al. 2021, arXiv:2011.13456, App. D.2; book §4.3.2).

    Args:
        model: a Denoiser trained on data in `data_range`.
        x_uint8: integers in 0..255, (B, ...), any integer or float dtype.
        n_dequant: draws of the dequantisation noise u averaged per sample.
        generator: draws u (and Hutchinson probes, when asked for through ode_kw).
        dtype: dtype of the model's input y (default torch's default dtype).
        ode_kw: passed to `ode_nll` (divergence, method, rtol, atol, t_min, ...).
    """
    if n_dequant < 1:
        raise ValueError(f"need n_dequant >= 1, got {n_dequant}")
    D = x_uint8[0].numel()
    nats = torch.zeros(x_uint8.shape[0], dtype=torch.float64, device=x_uint8.device)
    for _ in range(n_dequant):
        y, log_a = dequantize(x_uint8, generator, data_range, dtype)
        nats = nats + ode_nll(model, y, generator=generator, **ode_kw) - D * log_a
    return nats / n_dequant / (D * math.log(2))
