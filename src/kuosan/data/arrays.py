"""A .npy / .npz array as a float32 tensor, checked: (N, D) vectors or (N, C, H, W) images in [-1, 1].

    x = load_array("data.npz", key="x")

uint8 images are mapped 0..255 -> [-1, 1]; float images must already lie in [-1, 1]; NHWC arrays with
C in {1, 3} are transposed to NCHW (with a warning). Every problem raises DataError naming the file.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

__all__ = ["VECTOR_LIMIT", "load_array"]

VECTOR_LIMIT = 100.0  # |x| above this in (N, D) data means it was not standardised (the prior is N(0, I))
_IMAGE_TOL = 1e-3  # float images may overshoot [-1, 1] by rounding


def _read(path: Path, key: str | None) -> np.ndarray:
    """The array stored in a .npy, or the one picked from a .npz (key, else the only one, else "x"/"arr_0")."""
    if not path.is_file():
        raise DataError(f"array file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot read array file {path}: {err}") from err
    if isinstance(data, np.ndarray):
        if key is not None:
            raise DataError(f"{path} is a .npy holding one array; key={key!r} only applies to .npz files")
        return data
    with data:
        keys = list(data.keys())
        if key is None:
            key = keys[0] if len(keys) == 1 else next((k for k in ("x", "arr_0") if k in keys), None)
            if key is None:
                raise DataError(f"{path} holds arrays {keys}; pick one with key=...")
        if key not in keys:
            raise DataError(f"{path} has no array {key!r}; it holds {keys}")
        try:
            return data[key]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"cannot read array {key!r} of {path}: {err}") from err


def _to_nchw(a: np.ndarray, path: Path) -> np.ndarray:
    """Images as NCHW: an NHWC array (last axis 1 or 3, second not) is transposed, with a warning."""
    if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        warnings.warn(f"{path}: shape {a.shape} read as NHWC and transposed to NCHW", stacklevel=3)
        return a.transpose(0, 3, 1, 2)
    if a.shape[1] not in (1, 3):
        raise DataError(f"{path}: images of shape {a.shape} need 1 or 3 channels (NCHW or NHWC)")
    return a


def _check_range(x: Tensor, path: Path) -> None:
    """NaN/inf anywhere, images outside [-1, 1], or vectors beyond +-VECTOR_LIMIT are errors."""
    bad = ~torch.isfinite(x)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} NaN/inf value(s) of {x.numel()}")
    lo, hi = x.min().item(), x.max().item()
    if x.ndim == 4 and (lo < -1 - _IMAGE_TOL or hi > 1 + _IMAGE_TOL):
        raise DataError(f"{path}: float images must lie in [-1, 1] (or be uint8 0..255); found min {lo:.4g}, "
                        f"max {hi:.4g}" + (" - for [0, 1] data pass 2x - 1" if lo >= 0 and hi <= 1 else ""))
    if x.ndim == 2 and max(-lo, hi) > VECTOR_LIMIT:
        raise DataError(f"{path}: vectors reach min {lo:.4g}, max {hi:.4g}; standardise them to about unit scale "
                        f"(|x| <= {VECTOR_LIMIT:g}) first")


def load_array(path: str | Path, key: str | None = None) -> Tensor:
    """float32 (N, D) vectors or (N, C, H, W) images in [-1, 1] from a .npy/.npz file (see the module doc)."""
    path = Path(path)
    a = _read(path, key)
    if a.ndim not in (2, 4):
        raise DataError(f"{path}: array of shape {a.shape} must be 2-D (N, D) vectors or 4-D (N, C, H, W) images")
    if a.shape[0] == 0:
        raise DataError(f"{path}: the array is empty, shape {a.shape}")
    if a.ndim == 4:
        a = _to_nchw(a, path)
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)).float() / 127.5 - 1.0
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{path}: dtype {a.dtype} is neither uint8 (0..255) nor floating point")
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    _check_range(x, path)
    return x
