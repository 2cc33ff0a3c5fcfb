"""Held-out likelihood for a report: bits/dim through the probability-flow ODE and the DDPM variational bound.

Images: the data are taken as 8-bit. The digits' 17 grey levels k = 0..16 live in [-1, 1] as k/8 - 1; they
map to the 8-bit value round(255 k / 16) = round((x + 1) 127.5), so 17 of the 256 levels are used and both
numbers below are bits per dimension of those 8-bit images (comparable with the 8-bit convention of the
papers, not with a 17-level model of the digits, which would be log2(256/16) = 4 bits/dim lower per pixel bin).

    ode_bpd: uniform dequantisation + PF-ODE density (Song et al. 2021, arXiv:2011.13456, App. D.2),
             Hutchinson's trace estimator with one Gaussian probe (Grathwohl et al. 2019, arXiv:1810.01367).
    vlb_bpd: L_T + sum L_{t-1} + L_0 with the discretised Gaussian decoder (Ho et al. 2020, arXiv:2006.11239,
             eq. 5 and 13), for processes with a discrete training grid (DiscreteVP).

Low-dimensional data (no quantisation): the exact NLL in nats per sample by the ODE (exact divergence) and
the bound with a Gaussian decoder.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

__all__ = ["heldout_nll", "to_uint8"]


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> 0..255: round((x + 1) * 127.5); the digit grey level k (x = k/8 - 1) becomes round(255 k/16)."""
    return ((x.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _mean_se(v: Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0


def _timed(fn, model) -> tuple[Tensor, int, float]:
    """fn() with the model's evaluation count and wall-clock seconds."""
    model.reset_nfe()
    start = time.perf_counter()
    out = fn()
    return out, model.nfe, time.perf_counter() - start


def heldout_nll(
    denoiser: Any,
    x: Tensor,
    levels: int | None = 256,
    *,
    seed: int = 0,
    vlb: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> dict[str, Any]:
    """Held-out likelihood of `x` (in the model's range) under `denoiser`: a dict of means, standard errors,
    evaluations and seconds (see module docstring). levels: grey levels of image data (None: continuous)."""
    from ..likelihood import bits_per_dim, ddpm_vlb, ode_nll

    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"n": len(x)}
    if levels is None:
        nll, nfe, sec = _timed(lambda: ode_nll(denoiser, x, "exact", rtol=rtol, atol=atol), denoiser)
        out["data"] = "continuous; NLL in nats per sample at the process's t_min"
        out["ode_nll"], out["ode_nll_se"] = _mean_se(nll)
        out["ode_nfe"], out["ode_seconds"] = nfe, round(sec, 1)
        bound_kw: dict[str, Any] = {"decoder": "gaussian", "bits": False}
        key = "vlb_nll"
    else:
        x8 = to_uint8(x)
        out["data"] = (f"{levels} grey levels mapped to 8 bits by round((x + 1) 127.5); bits/dim of the 8-bit images"
                       if levels != 256 else "8-bit images; bits/dim")
        bpd, nfe, sec = _timed(lambda: bits_per_dim(denoiser, x8, divergence="hutchinson", generator=g,
                                                    dtype=x.dtype, rtol=rtol, atol=atol), denoiser)
        out["ode_bpd"], out["ode_bpd_se"] = _mean_se(bpd)
        out["ode_nfe"], out["ode_seconds"] = nfe, round(sec, 1)
        x = x8.to(x.dtype) / 127.5 - 1  # what the discretised decoder's bins are centred on
        bound_kw, key = {"decoder": "discretized", "bits": True}, "vlb_bpd"
    if vlb:
        try:
            bound, nfe, sec = _timed(lambda: ddpm_vlb(denoiser, x, generator=g, **bound_kw), denoiser)
        except ValueError as err:  # no discrete training grid: the bound is DDPM's, not this process's
            out["vlb_note"] = str(err).splitlines()[0]
        else:
            out[key], out[key + "_se"] = _mean_se(bound)
            out["vlb_nfe"], out["vlb_seconds"] = nfe, round(sec, 1)
            ode = bpd if levels is not None else nll
            out["ode_minus_vlb"], out["ode_minus_vlb_se"] = _mean_se(ode.cpu().double() - bound.cpu().double())
    return out
