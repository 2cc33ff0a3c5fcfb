"""Counter-based randomness: every random draw of step n comes from generators seeded by (seed, n, rank).

Nothing random is carried from one step to the next, so the RNG state of a run *is* (seed, step): resuming
from a checkpoint at step k replays steps k+1, k+2, ... bit for bit, data order included.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["STREAMS", "derive_seed", "step_generator", "batch_indices", "seed_everything", "seed_init"]

STREAMS = {"data": 0, "noise": 1, "torch": 2, "init": 3, "dataset": 4}  # independent streams per step


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (NumPy's SeedSequence hash; distinct keys give independent streams)."""
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return ((int(hi) << 32) | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF


def step_generator(
    seed: int, step: int, stream: str, rank: int = 0, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of one (seed, step, stream, rank)."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, step, STREAMS[stream], rank))


def seed_everything(seed: int, step: int, rank: int = 0) -> None:
    """Seed torch's global RNGs for step `step` (dropout and anything else that draws without a generator)."""
    torch.manual_seed(derive_seed(seed, step, STREAMS["torch"], rank))


def seed_init(seed: int) -> None:
    """Seed torch's global RNGs before building the network, so its initial weights follow from `seed`."""
    torch.manual_seed(derive_seed(seed, 0, STREAMS["init"]))


def batch_indices(n_data: int, batch_size: int, step: int, seed: int) -> Tensor:
    """The global batch of `step`: positions step*B ... step*B + B - 1 of an endless stream of epochs, each
    epoch a fresh permutation of range(n_data) seeded by (seed, epoch). Every example is seen once per epoch."""
    start = step * batch_size
    pos = torch.arange(start, start + batch_size)
    epochs = pos // n_data
    out = torch.empty(batch_size, dtype=torch.long)
    for e in torch.unique(epochs).tolist():
        sel = epochs == e
        out[sel] = _epoch_permutation(n_data, seed, e)[pos[sel] % n_data]
    return out


@lru_cache(maxsize=4)
def _epoch_permutation(n_data: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n_data, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, STREAMS["data"])))
