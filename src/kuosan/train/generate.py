"""Generation for training-time previews and the CLI: prior noise at t_max, then kuosan.sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser

__all__ = ["generate"]


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    method: str = "dpmpp-2m",
    nfe: int = 20,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """x_T ~ N(0, prior_std^2 I) of `shape`, then `method` with at most `nfe` network evaluations; options
    (grid, thresholding, a method's own keywords) go to kuosan.sample."""
    from ..samplers import sample

    x_T = denoiser.process.prior_sample(shape, generator=generator, dtype=torch.float32, device=device)
    return sample(denoiser, x_T, method=method, nfe=nfe, generator=generator, cond=cond, **options)
