"""Small helpers shared by the loss modules: reductions over the non-batch dimensions, registry lookup,
and the discrete training grid of a DDPM-like process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor

from ..processes.base import Process

V = TypeVar("V")


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one: (B, ...) -> (B,)."""
    return x.flatten(1).mean(1)


def sum_flat(x: Tensor) -> Tensor:
    """Sum over every dimension but the batch one: (B, ...) -> (B,)."""
    return x.flatten(1).sum(1)


def choose(registry: Mapping[str, V], name: str, what: str) -> V:
    """registry[name], or a ValueError that lists the choices."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {list(registry)}")
    return registry[name]


def training_steps(process: Process) -> int | None:
    """N when the process trains on a discrete grid t_i = (i+1)/N (DDPM), else None.

    A process is discrete when it exposes its number of training steps `n` and `t_of_index(i)` (as
    DiscreteVP does); the loss code asks the interface, never the class.
    """
    n = getattr(process, "n", None)
    return n if isinstance(n, int) and callable(getattr(process, "t_of_index", None)) else None


def training_grid(process: Process) -> Tensor | None:
    """The N training times t_i = (i+1)/N of a discrete-time process (float64), else None."""
    n = training_steps(process)
    return None if n is None else process.t_of_index(torch.arange(n, dtype=torch.float64)).to(torch.float64)


def require_training_grid(process: Process, who: str) -> int:
    """N of a discrete-time process, or a ValueError saying `who` needs one."""
    n = training_steps(process)
    if n is None:
        raise ValueError(
            f"{who} needs a discrete-time (DDPM-like) process exposing `n` training steps and `t_of_index(i)` "
            f"(e.g. kuosan.processes.DiscreteVP); got {process!r}"
        )
    return n
