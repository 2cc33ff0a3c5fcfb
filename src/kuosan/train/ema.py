"""Exponential moving average of the weights, with warm-up (Polyak averaging; DDPM, arXiv:2006.11239, App. B)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(decay: float, n: int, warmup: bool = True) -> float:
    """Decay of update n (0-based): min(decay, (1 + n) / (10 + n)) with warm-up, so early averages forget the
    random initialisation quickly (the TensorFlow ExponentialMovingAverage num_updates rule); else `decay`."""
    return min(decay, (1 + n) / (10 + n)) if warmup else decay


class EMA:
    """A frozen copy of `net` whose parameters follow theta_ema <- d theta_ema + (1 - d) theta; buffers are copied."""

    def __init__(self, net: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> float:
        """One EMA step towards `net`'s current weights; returns the decay used."""
        d = ema_decay(self.decay, self.updates, self.warmup)
        ema_p = [p for p in self.module.parameters()]
        net_p = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(ema_p, net_p, 1.0 - d)  # ema + (1 - d) (theta - ema)
        for b_ema, b in zip(self.module.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1
        return d
