"""Held-out likelihood for a report: bits/dim through the probability-flow ODE and the DDPM bound (stub)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["heldout_nll"]


def heldout_nll(denoiser: Any, x: Tensor, cfg: Any, *, seed: int = 0, vlb: bool = True) -> dict[str, Any]:
    raise NotImplementedError("kuosan.likelihood is not there yet")
