"""ControlNet (Zhang et al. 2023, arXiv:2302.05543, sec. 3.1-3.2, eq. 2; book §4.8.2.1) for kuosan's U-Net.

    y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)          (eq. 2)

F(.; Theta) is the locked base U-Net; F(.; Theta_c) a trainable copy of its encoder (time/label embedding, conv_in,
down path, middle block) initialised from the base's weights; Z are zero-initialised convolutions. The condition
image c goes through a small encoder ending in a zero conv and is added to the copy's conv_in features; one zero
1x1 conv per skip connection and one for the middle block give the residuals the base adds to its skips and its
middle output (the official cldm.py layout). At initialisation every Z is 0, so the controlled model *is* the base
model, and the first gradient step already reaches the copy through the zero convs' weights.

    branch = ControlBranch(base, cond_channels=1)
    net = ControlledUNet(base, branch)            # net(x, t, y=None, control=c); control=None: the base alone
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import embed
from .unet import UNet, encode, zero_

__all__ = ["ControlBranch", "ControlledUNet"]


class ConditionEncoder(nn.Module):
    """The condition image's small encoder (the paper's 4-layer E(c), here at the image's own resolution: a
    pixel-space model needs no downsampling): conv3x3-SiLU x 2, then a zero-initialised conv3x3 to the U-Net's
    base width, so its output is 0 at initialisation."""

    def __init__(self, c_in: int, hidden: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU())
        self.zero = zero_(nn.Conv2d(hidden, c_out, 3, padding=1))

    def forward(self, c: Tensor) -> Tensor:  # (B, C_c, H, W) -> (B, base, H, W)
        return self.zero(self.body(c))


class ControlBranch(nn.Module):
    """The trainable half of ControlNet for a kuosan UNet: (x, t, y, c) -> residuals, one per skip (in the order
    the base pushes them: conv_in, then every down stage) and one for the middle block, last.

    Args:
        base: the U-Net to control; its encoder is copied (weights included) and it is not kept.
        cond_channels: channels of the condition image (same H, W as x).
        hint_channels: width of the condition encoder.
    """

    def __init__(self, base: UNet, cond_channels: int, hint_channels: int = 16):
        super().__init__()
        if not isinstance(base, UNet):
            raise TypeError(f"ControlBranch controls a kuosan UNet; got {type(base).__name__}")
        self.cond_channels, self.hint_channels, self.in_channels = cond_channels, hint_channels, base.in_channels
        self.time, self.label = copy.deepcopy(base.time), copy.deepcopy(base.label)
        self.conv_in, self.down, self.mid = (copy.deepcopy(m) for m in (base.conv_in, base.down, base.mid))
        width = base.conv_in.out_channels
        self.hint = ConditionEncoder(cond_channels, hint_channels, width)
        widths = [width] + [_width(stage) for stage in base.down]
        self.zero_convs = nn.ModuleList(zero_(nn.Conv2d(c, c, 1)) for c in widths)
        self.zero_mid = zero_(nn.Conv2d(_width(base.mid), _width(base.mid), 1))
        self.requires_grad_(True).train()  # the copies come from a base that may be frozen and in eval mode

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None, control: Tensor) -> list[Tensor]:
        if control.ndim != 4 or control.shape[0] != x.shape[0] or control.shape[1] != self.cond_channels \
                or control.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the control image must have shape {(x.shape[0], self.cond_channels, *x.shape[-2:])} "
                             f"for x of shape {tuple(x.shape)}; got {tuple(control.shape)}")
        emb = F.silu(embed(t, y, x, self.time, self.label))
        h, hs = encode(self.conv_in(x) + self.hint(control.to(x.dtype)), emb, self.down, self.mid)
        return [z(s) for z, s in zip(self.zero_convs, hs, strict=True)] + [self.zero_mid(h)]


def _width(stage: nn.ModuleList) -> int:
    """Output channels of a U-Net stage (its last conv's out_channels)."""
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class ControlledUNet(nn.Module):
    """base(x, t, y, control=branch(x, t, y, c)): the locked base U-Net with the branch's residuals added;
    control=None runs the base alone. Both are submodules; which are trained is the caller's choice."""

    def __init__(self, base: UNet, branch: nn.Module):
        super().__init__()
        self.base, self.branch = base, branch

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, control: Tensor | None = None) -> Tensor:
        if control is None:
            return self.base(x, t, y)
        return self.base(x, t, y, control=self.branch(x, t, y, control))


def residual_shapes(base: UNet, x: Tensor) -> list[tuple[int, ...]]:
    """The shapes of the base's skips (in push order) and of its middle output for input x: what the branch
    must produce (used by the tests)."""
    shapes: list[tuple[int, ...]] = []  # stages are ModuleLists (never called): hook each one's last layer
    hooks = [base.conv_in.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)))]
    hooks += [stage[-1].register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)))
              for stage in (*base.down, base.mid)]
    try:
        with torch.no_grad():
            base(x, torch.zeros(x.shape[0]))
    finally:
        for h in hooks:
            h.remove()
    return shapes
