"""`data.classes`: keep only some classes' examples of a labelled data set (for fine-tuning on one digit)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import DataError

__all__ = ["keep_classes"]


def keep_classes(
    x: Tensor, y: Tensor, classes: Sequence[int], num_classes: int | None, what: str
) -> tuple[Tensor, Tensor]:
    """The rows of (x, y) whose label is one of `classes`; labels keep their indices (no renumbering), so a
    conditional network keeps its class embedding. A class outside 0 .. num_classes - 1 is a DataError."""
    if num_classes is None:
        raise DataError(f"data.classes={list(classes)}: {what} has no classes (labelled data only)")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise DataError(f"data.classes: {bad[0]} is not a class of {what} (valid: 0..{num_classes - 1})")
    keep = torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype))
    return x[keep], y[keep]
