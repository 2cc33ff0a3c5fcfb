"""Training speed without changing the math: fused AdamW steps, and torch.compile of the online network (opt-in).

    opt = adamw(groups, lr=..., weight_decay=...)        # one fused kernel per step where torch has one
    model = compiled(dist.wrap(net), enabled=opts.compile)  # what the objective calls; `net` stays plain

Measured on the digits U-Net beside diffusers' UNet2DModel in docs/benchmarks.md ("Training throughput").
The EMA, the checkpoints and resume see only the plain `net`: torch.compile wraps a module in one whose
state-dict keys gain `_orig_mod.`, so the wrapper is only what the loss calls, never what is saved.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["FUSED_DEVICES", "adamw", "compiled"]

FUSED_DEVICES = ("cpu", "cuda")  # torch's fused AdamW kernels kuosan uses (CPU since torch 2.4)


def adamw(groups: Iterable[dict[str, Any]], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101, Algorithm 2), fused into one kernel per step when every
    parameter is a float tensor on a device with torch's fused kernel; torch's default implementation otherwise.

    The fused step is the same update (rounding may differ in the last bit); a checkpoint keeps the choice in
    its param_groups, so a run written before fusing resumes with its own implementation, bit for bit."""
    groups = list(groups)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile(model) (inductor; the first steps pay the compile time, minutes on a slow CPU) when enabled,
    else model itself. The result shares model's parameters; save and average `model`, never the result."""
    return torch.compile(model) if enabled else model
