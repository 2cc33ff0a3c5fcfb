"""A held-out split that is really held out: deterministic, stratified by label, for folders and arrays.

    train_idx, heldout_idx = heldout_split(ds.labels, fraction=0.1, seed=0)   # stratified by label
    train_idx, heldout_idx = heldout_split(len(x))                            # plain random split
    x_train, x_heldout = x[train_idx], x[heldout_idx]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["heldout_split"]


def _quotas(counts: Tensor, k: int) -> Tensor:
    """Per-class held-out counts summing to k, proportional to counts (largest remainder, ties to the lower class)."""
    exact = counts.double() * (k / counts.sum().item())
    quota = exact.floor().long()
    order = torch.argsort(quota.double() - exact, stable=True)  # largest fractional part first
    quota[order[: k - int(quota.sum())]] += 1
    return quota


def heldout_split(labels_or_n: Tensor | np.ndarray | Sequence[int] | int, fraction: float = 0.1,
                  seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train_idx, heldout_idx): int64 index tensors that partition range(n), each in a seeded random order.

    round(fraction * n) items are held out, at least 1 and at most n - 1. Given labels (any integers, shape (n,)),
    every label is held out in proportion to its count (largest remainder), so a class of 500 with fraction 0.1
    gives exactly 50. The same (labels_or_n, fraction, seed) always gives the same split (torch's CPU generator).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie strictly between 0 and 1; got {fraction}")
    labels = None if isinstance(labels_or_n, (int, np.integer)) else torch.as_tensor(np.asarray(labels_or_n))
    if labels is not None and (labels.ndim != 1 or labels.is_floating_point() or labels.is_complex()):
        raise ValueError(f"labels must be a 1-D integer sequence; got {labels.dtype} of shape {tuple(labels.shape)}")
    n = int(labels_or_n) if labels is None else len(labels)
    if n < 2:
        raise ValueError(f"a held-out split needs at least 2 items; got {n}")
    k = min(n - 1, max(1, round(fraction * n)))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    if labels is None:
        return perm[k:].clone(), perm[:k].clone()
    _, cls = torch.unique(labels, return_inverse=True)  # (n,) class index 0..C-1
    cls = cls[perm]
    counts = torch.bincount(cls)
    quota = _quotas(counts, k)
    order = torch.argsort(cls, stable=True)  # by class, permuted order kept within each class
    rank = torch.empty_like(cls)
    rank[order] = torch.arange(n) - (counts.cumsum(0) - counts)[cls[order]]  # position within its class
    held = rank < quota[cls]
    train, heldout = perm[~held], perm[held]  # a fresh shuffle of each: the quota fills unevenly along perm
    return train[torch.randperm(len(train), generator=g)], heldout[torch.randperm(k, generator=g)]
