"""Control conditions computed from the images themselves, for ControlNet (Zhang et al. 2023, arXiv:2302.05543,
sec. 4; book §4.8.2.1): each maps a batch x0 (B, C, H, W) in [-1, 1] to a condition image of the same side.

    c = condition("edges", x0)                      # (B, 1, H, W) in {0, 1}: thresholded Sobel magnitude
    c = condition("lowres", x0)                     # (B, C, H, W) in [-1, 1]: box-downsampled by 2, then upsampled
    c = condition("mask", x0, generator=g)          # (B, C + 1, H, W): the image outside a random box, and the mask

The paper trains on Canny edges, depth, segmentation, ... drawn by fixed detectors from the training images; these
are the detectors that make sense on 8x8 and 28x28 grey digits, in pure torch so they run inside the training step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CONDITIONS", "EDGE_THRESHOLD", "LOWRES_FACTOR", "condition", "condition_channels", "edges", "lowres",
           "lowres_of", "mask"]

CONDITIONS = ("edges", "lowres", "mask")
# A full black-to-white step gives the two pixels beside it a Sobel magnitude of 1/2 (below): an edge is at least
# half that. On the 8x8 digits 47% of the training pixels are edges at 1/4 (25 / 15 / 38% at 0.1 / 0.2 / 0.3).
EDGE_THRESHOLD = 0.25
LOWRES_FACTOR = 2  # 8x8 -> 4x4, 28x28 -> 14x14


def _images(x: Tensor) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"conditions take images (batch, C, H, W); got shape {tuple(x.shape)}")
    return x


def sobel_magnitude(x: Tensor) -> Tensor:
    """|grad u| by the Sobel operator on u = (x + 1) / 2 in [0, 1], channels averaged: (B, C, H, W) -> (B, 1, H, W).

    gx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] / 8 (and gy its transpose) estimates du/dx per pixel, so a
    0 -> 1 step gives 1/2 on each side of it; replicate padding puts no edge at the border."""
    u = (_images(x).mean(1, keepdim=True) + 1) / 2
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=u.dtype, device=u.device) / 8
    g = F.conv2d(F.pad(u, (1, 1, 1, 1), mode="replicate"), torch.stack([k, k.T])[:, None])  # (B, 2, H, W)
    return g.norm(dim=1, keepdim=True)


def edges(x: Tensor, threshold: float = EDGE_THRESHOLD) -> Tensor:
    """Edge map (B, 1, H, W) in {0, 1}: 1 where the Sobel magnitude is at least `threshold` (a Canny-like map
    without thinning and hysteresis, which on 8x8 images would leave a pixel or two)."""
    return (sobel_magnitude(x) >= threshold).to(x.dtype)


def lowres_of(x: Tensor, factor: int = LOWRES_FACTOR) -> Tensor:
    """The low-resolution image itself: means over factor x factor boxes, (B, C, H / factor, W / factor)."""
    x = _images(x)
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"lowres needs H and W divisible by {factor}; got {tuple(x.shape)}")
    return F.avg_pool2d(x, factor)


def lowres(x: Tensor, factor: int = LOWRES_FACTOR) -> Tensor:
    """Low-resolution image (B, C, H, W) in [-1, 1]: box means over factor x factor blocks, each repeated over its
    block (nearest upsampling), so lowres_of(lowres(x)) == lowres_of(x) exactly (SR3's task, Saharia et al. 2021,
    arXiv:2104.07636, with the conditioning image given to ControlNet)."""
    return F.interpolate(lowres_of(x, factor), scale_factor=factor, mode="nearest")


def box_mask(shape: tuple[int, ...], generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> Tensor:
    """(B, 1, H, W) in {0, 1}: 0 inside one random box per image of side H/2 x W/2 at a uniform position (hidden),
    1 elsewhere (known), as `Pipeline.inpaint`'s mask (1 = known)."""
    B, _, H, W = shape
    h, w = max(1, H // 2), max(1, W // 2)
    top = torch.randint(0, H - h + 1, (B,), generator=generator, device=device)
    left = torch.randint(0, W - w + 1, (B,), generator=generator, device=device)
    rows, cols = torch.arange(H, device=device), torch.arange(W, device=device)
    inside_r = (rows >= top[:, None]) & (rows < top[:, None] + h)  # (B, H)
    inside_c = (cols >= left[:, None]) & (cols < left[:, None] + w)  # (B, W)
    return (~(inside_r[:, :, None] & inside_c[:, None, :]))[:, None].float()


def mask(x: Tensor, generator: torch.Generator | None = None, m: Tensor | None = None) -> Tensor:
    """Masked image (B, C + 1, H, W): channels 0..C-1 the image where known and 0 in the hidden box, channel C the
    mask m in {0, 1} (1 = known), so a 0 pixel that is known can be told from a hidden one; m is drawn by
    box_mask unless given."""
    x = _images(x)
    m = box_mask(tuple(x.shape), generator, x.device).to(x.dtype) if m is None else m.to(x)
    return torch.cat([x * m, m], dim=1)


def condition_channels(kind: str, channels: int) -> int:
    """Channels of the condition `kind` for images of `channels` channels."""
    return {"edges": 1, "lowres": channels, "mask": channels + 1}[_known(kind)]


def _known(kind: str) -> str:
    if kind not in CONDITIONS:
        raise ValueError(f"unknown condition {kind!r}; choose one of {', '.join(CONDITIONS)}")
    return kind


def condition(kind: str, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The condition `kind` ("edges" | "lowres" | "mask") of images x (B, C, H, W) in [-1, 1]; only "mask" draws
    random numbers (from `generator`)."""
    if _known(kind) == "edges":
        return edges(x)
    if kind == "lowres":
        return lowres(x)
    return mask(x, generator)
