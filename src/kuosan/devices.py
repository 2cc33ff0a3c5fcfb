"""Which torch device a run uses: one function, below everything that loads or trains a model."""

from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto" = this process's GPU if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev
