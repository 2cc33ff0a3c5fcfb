"""The handwritten digits that ship with scikit-learn (1797 8x8 grey images, 16 grey levels): the built-in
image data set, no download needed (UCI optical recognition of handwritten digits, Alpaydin & Kaynak 1998)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "load_digits"]

DIGITS_SPLIT_SEED = 0  # the fixed permutation behind the train/test split
DIGITS_TEST_FRACTION = 0.2  # the last 20% of that permutation is the test split


@lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor]:
    """All 1797 digits as float32 (N, 1, 8, 8) in [-1, 1] and int64 labels, in scikit-learn's order."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # grey levels 0..16 -> [-1, 1]
    return x, torch.as_tensor(d.target, dtype=torch.int64)


def load_digits(split: str = "all", size: int = 8) -> tuple[Tensor, Tensor]:
    """Digits as (images float32 (N, 1, size, size) in [-1, 1], labels int64 (N,)).

    split: "all" (1797, scikit-learn's order), "train" (first 80% of a fixed permutation, seed 0: 1438) or
    "test" (the remaining 359). size != 8 resizes bilinearly (align_corners=False), which keeps [-1, 1].
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test'; got {split!r}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels; got {size}")
    x, y = _digits()
    if split != "all":
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
        n_test = round(DIGITS_TEST_FRACTION * len(x))
        idx = perm[: len(x) - n_test] if split == "train" else perm[len(x) - n_test :]
        x, y = x[idx], y[idx]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.clone(), y.clone()
