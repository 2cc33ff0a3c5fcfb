"""ControlNet runs as pipelines (Zhang et al. 2023, arXiv:2302.05543; book §4.8.2.1): a control run is its base
run's U-Net, locked, plus the trained branch; sampling passes the condition image as cond["control"].

    pipe = kuosan.load("runs/digits-control")                  # base (EMA) + branch (EMA)
    c = kuosan.control.condition("edges", images)              # conditions of real images (or drawn by hand)
    x = pipe.generate(len(c), method="dpmpp-2m", nfe=20, control=c, seed=0)
    kuosan sample runs/digits-control --control edges.npy      # .npy / .npz (key "control") / a PNG

`control` holds one condition image per sample, or one for all; a condition of the wrong shape names both shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .data.conditions import CONDITIONS, condition, condition_channels

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .config import RunConfig
    from .pipeline import Pipeline

__all__ = ["CONDITIONS", "condition", "condition_channels", "control_images", "load_control", "read_control"]


def load_control(ckpt: Checkpoint, cfg: RunConfig, ema: bool, device: torch.device) -> Pipeline:
    """The Pipeline of a control run: the base run (cfg.base, EMA weights) under the branch of `ckpt` (its EMA
    weights unless ema=False), as one ControlledUNet; pipe.control_shape is the condition image's (C, H, W)."""
    from .nets.control import ControlBranch, ControlledUNet
    from .pipeline import Pipeline, load
    from .registry import build_denoiser

    base_dir = Path(cfg.base)
    if not base_dir.exists():
        raise FileNotFoundError(f"{ckpt.path}: its base run {base_dir} does not exist (moved or deleted?)")
    base = load(base_dir, ema=True, device=device).denoiser.net
    st = ckpt.state.get("objective", {})
    if "branch" not in st:
        raise ValueError(f"{ckpt.path}: a control run's checkpoint records its branch; this one does not")
    branch = ControlBranch(base, **st["branch"])
    branch.load_state_dict(ckpt.ema if ema and ckpt.ema is not None else ckpt.weights)
    net = ControlledUNet(base, branch).to(device).eval().requires_grad_(False)
    pipe = Pipeline(build_denoiser(cfg, net), cfg, ckpt, device=device)
    pipe.control_shape = (branch.cond_channels, *pipe.data_shape[1:])
    pipe.control_kind = st.get("condition")
    return pipe


def control_images(pipe: Pipeline, control: Any, n: int) -> Tensor:
    """control as an (n, C, H, W) float32 tensor on the pipeline's device: n images, or one (with or without
    the batch dimension) for all n; anything else is a ValueError naming both shapes."""
    shape = getattr(pipe, "control_shape", None)
    if shape is None:
        raise ValueError(f"{pipe.run_dir} is not a control run (objective {pipe.config.objective.kind!r}): it "
                         "takes no control images")
    c = torch.as_tensor(control, dtype=torch.float32)
    if c.ndim == len(shape):
        c = c[None]
    if c.ndim != len(shape) + 1 or tuple(c.shape[1:]) != tuple(shape) or c.shape[0] not in (1, n):
        raise ValueError(f"control images of shape {tuple(c.shape)} do not fit {pipe.run_dir}: for n={n} it "
                         f"takes shape {(n, *shape)} (or one image {tuple(shape)})")
    return c.expand(n, *shape).to(pipe.device)


def read_control(path: str | Path, pipe: Pipeline) -> Tensor:
    """Condition images from a file: .npy, .npz (array "control", or its only array) as they are; an image file
    (PNG, JPEG) as one condition, its pixels mapped to the condition's range ([0, 1] for edges, [-1, 1] for
    lowres), no resizing. Shapes are checked by control_images."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control file {path} does not exist")
    if path.suffix == ".npy":
        return torch.as_tensor(np.load(path, allow_pickle=False), dtype=torch.float32)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "control" not in keys and len(keys) != 1:
                raise ValueError(f"{path} holds arrays {keys}; name the condition images 'control'")
            return torch.as_tensor(z["control" if "control" in keys else keys[0]], dtype=torch.float32)
    return _read_control_image(path, pipe)


def _read_control_image(path: Path, pipe: Pipeline) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    kind, shape = getattr(pipe, "control_kind", None), getattr(pipe, "control_shape", None)
    if kind not in ("edges", "lowres") or shape is None:
        raise ValueError(f"an image file gives edges or lowres conditions; {pipe.run_dir} takes {kind!r}: "
                         "give its condition images as .npy / .npz")
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L" if shape[0] == 1 else "RGB"), dtype=np.float32) / 255.0  # [0, 1]
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read control image {path}: {err}") from None
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    c = torch.from_numpy(a.copy())
    return c if kind == "edges" else c * 2 - 1
