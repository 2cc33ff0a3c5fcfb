"""The DDPM U-Net (Ho et al. 2020, arXiv:2006.11239, App. B; book sec. 4.1), kept lean for CPU training.

    conv_in -> [ResBlock (+ Attention)] x num_res_blocks, Downsample   per level (none after the last)
            -> ResBlock, Attention, ResBlock                           the middle
            -> [ResBlock(cat skip) (+ Attention)] x (num_res_blocks + 1), Upsample   per level, reversed
            -> GroupNorm, SiLU, conv_out

Every ResBlock adds the embedding of t (and of the class y) through its own projection, as a bias or
(scale_shift=True, Nichol & Dhariwal 2021, arXiv:2102.09672, sec. 3) as a FiLM scale and shift.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ClassEmbedding, GuidanceEmbedding, TimeEmbedding, embed, guidance

__all__ = ["UNet"]


MAX_GROUPS, MIN_GROUP_WIDTH = 32, 4  # automatic GroupNorm: at most 32 groups of at least 4 channels
MAX_LEVELS, MIN_HALVED_SIDE, MIN_ATTENTION_SIDE = 4, 8, 7  # automatic layout from image_size


def auto_groups(channels: int) -> int:
    """The largest divisor g <= 32 of channels with >= 4 channels per group (1 below 8 channels).

    One channel per group is instance norm: it erases each channel's mean, so a net cannot see an image's
    overall brightness."""
    return max(g for g in range(1, MAX_GROUPS + 1) if channels % g == 0 and (g == 1 or channels >= MIN_GROUP_WIDTH * g))


def norm_groups(channels: int, groups: int | None) -> int:
    """The largest group count <= groups that divides channels (GroupNorm needs a divisor); None = auto_groups."""
    if groups is None:
        return auto_groups(channels)
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def auto_sides(image_size: int) -> tuple[int, ...]:
    """Feature-map sides of the automatic layout: halve while the side is even and >= 8, at most 4 levels."""
    sides = [image_size]
    while len(sides) < MAX_LEVELS and sides[-1] % 2 == 0 and sides[-1] >= MIN_HALVED_SIDE:
        sides.append(sides[-1] // 2)
    return tuple(sides)


def resolve_layout(
    image_size: int | None, channel_mults: tuple[int, ...] | None, attention_resolutions: tuple[int, ...] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(channel_mults, attention_resolutions) with None filled in from image_size, checked against its levels."""
    if image_size is None:
        if attention_resolutions:
            raise ValueError(
                f"attention_resolutions={tuple(attention_resolutions)} are feature-map sides: pass image_size "
                "(the input side) so they can be placed, or attention_resolutions=()"
            )
        return (1, 2, 2) if channel_mults is None else tuple(channel_mults), ()
    if channel_mults is None:
        channel_mults = (1,) + (2,) * (len(auto_sides(image_size)) - 1)
    levels = len(channel_mults)
    if image_size % 2 ** (levels - 1):
        raise ValueError(
            f"image_size={image_size} does not divide by 2^{levels - 1}, as channel_mults={tuple(channel_mults)} "
            f"({levels} levels) needs; pass channel_mults=None to fit the levels to the image"
        )
    sides = [image_size // 2**level for level in range(levels)]
    if attention_resolutions is None:
        # one attention level, the smallest side >= 7 (28 -> 7, 32 -> 8): self-attention over <= 64 tokens per
        # image when the image is small, its cost (quadratic in the side^2) kept low for CPU training
        return tuple(channel_mults), (min((s for s in sides if s >= MIN_ATTENTION_SIDE), default=sides[-1]),)
    unmatched = [r for r in attention_resolutions if r not in sides]
    where = f"this {image_size}x{image_size} U-Net; its levels are {', '.join(map(str, sides))}"
    if unmatched and len(unmatched) == len(attention_resolutions):
        raise ValueError(f"attention_resolutions {list(attention_resolutions)} matches no level of {where}; "
                         "give one of those sides, or None (null in YAML) for the automatic choice")
    if unmatched:
        warnings.warn(f"attention_resolutions {unmatched} match no level of {where}; they get no attention",
                      stacklevel=3)
    return tuple(channel_mults), tuple(attention_resolutions)


def warn_single_channel_groups(net: nn.Module, groups: int) -> None:
    """Warn when an explicit `groups` leaves any GroupNorm with one channel per group (instance norm)."""
    widths = sorted({m.num_channels for m in net.modules() if isinstance(m, nn.GroupNorm)
                     and m.num_groups == m.num_channels})
    if widths:
        w = widths[0]
        warnings.warn(
            f"groups={groups} makes GroupNorm one channel per group at width(s) {', '.join(map(str, widths))} "
            "(instance norm: it erases each channel's mean, so the net cannot see an image's overall brightness); "
            f"pass groups=None (automatic, >= 4 channels per group: {auto_groups(w)} groups at width {w})",
            stacklevel=3,
        )


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias, as DDPM does for the last conv of each residual branch."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def encode(h: Tensor, emb: Tensor, down: nn.ModuleList, mid: nn.ModuleList) -> tuple[Tensor, list[Tensor]]:
    """The down path and the middle block from the input conv's output h: (middle output, the skips in push
    order: h, then each stage's output). Shared by the U-Net and its ControlNet copy (nets/control.py)."""
    hs = [h]
    for stage in down:
        for layer in stage:
            h = layer(h, emb)
        hs.append(h)
    for layer in mid:
        h = layer(h, emb)
    return h, hs


class ResBlock(nn.Module):
    """GN-SiLU-conv, + projection of emb, GN-SiLU-dropout-conv (zero-init), + skip (1x1 conv if widths differ)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int | None, dropout: float, scale_shift: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        self.norm2 = nn.GroupNorm(norm_groups(c_out, groups), c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = zero_(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.scale_shift = scale_shift

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # x (B, C_in, H, W), emb (B, E) after SiLU
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + e)
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class Attention(nn.Module):
    """Self-attention over the H*W positions (DDPM App. B): GN, one fused qkv projection, SDPA, zero-init output.

    Positions go last-but-one, (B, HW, C), so the projections are plain matmuls and SDPA gets contiguous heads
    (on CPU a 1x1 convolution costs several times the same matmul).
    """

    def __init__(self, channels: int, groups: int | None, head_dim: int | None):
        super().__init__()
        self.heads = channels // head_dim if head_dim else 1
        if channels % self.heads:
            raise ValueError(f"attention_head_dim={head_dim} must divide the {channels} channels")
        self.norm = nn.GroupNorm(norm_groups(channels, groups), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(h).reshape(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        a = self.proj(a.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + a.transpose(1, 2).reshape(B, C, H, W)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accept qkv/proj weights stored as 1x1 convolutions (C_out, C_in, 1, 1), as in diffusers-style U-Nets
        and kuosan checkpoints written before the projections became Linear: the same numbers, squeezed."""
        for name in ("qkv.weight", "proj.weight"):
            w = state_dict.get(prefix + name)
            if w is not None and w.dim() == 4 and w.shape[2:] == (1, 1):
                state_dict[prefix + name] = w[:, :, 0, 0]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Downsample(nn.Module):
    """3x3 conv with stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM U-Net: x (B, C, H, W), t (B,), y (B,) or None -> (B, C or 2C, H, W).

    Args:
        in_channels: image channels (1 grey, 3 RGB); base_channels: width of the first level.
        channel_mults: width of each level as a multiple of base_channels; H and W must divide by
            2^(levels - 1). None = automatic from image_size (below); (1, 2, 2) without image_size.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides (pixels) that get self-attention; needs image_size. A side
            that is no level's is a ValueError if none matches, a warning if some do. None = automatic (below).
        dropout: inside every residual block. num_classes: class conditioning (label num_classes = null).
        learn_sigma: output 2 * in_channels (prediction, then the variance interpolation).
        time_embedding: "sinusoidal" | "fourier"; time_scale multiplies t in the sinusoidal one.
        groups: GroupNorm groups, lowered to a divisor of each width; a value that leaves some GroupNorm one
            channel per group (instance norm, blind to overall brightness) warns. None = automatic: per width,
            the largest divisor <= 32 with >= 4 channels per group (32 ch -> 8, 64 -> 16, 128+ -> 32).
        image_size: the input side. scale_shift: FiLM conditioning (improved DDPM) instead of an added bias.
        attention_head_dim: channels per head; None = one head per attention layer (DDPM).
        guidance_embedding: embed a guidance scale w (forward's `w`) and add it to the time embedding (LCM students,
            kuosan.distill.lcm; zero-initialised: the net starts as one without it); guidance_scale multiplies w in
            its sinusoidal features.

    The automatic layout (channel_mults / attention_resolutions = None, image_size given): levels halve while
    the side is even and >= 8, at most 4 levels, so odd sides end the descent and skips always match
    (8 -> 8, 4; 12 -> 12, 6; 28 -> 28, 14, 7; 32 -> 32, 16, 8, 4; 64 -> 64, 32, 16, 8); channel_mults =
    (1, 2, ..., 2), one per level; attention at one level, the smallest side >= 7 (8 -> 8, 16 -> 8, 28 -> 7,
    32 -> 8; the bottom level if none is that large), none without image_size (the middle block always
    attends). Explicit values are used as given; with image_size, one that 2^(levels - 1) does not divide is a
    ValueError at construction.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] | None = None,
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] | None = None,
        dropout: float = 0.0,
        num_classes: int | None = None,
        learn_sigma: bool = False,
        time_embedding: str = "sinusoidal",
        groups: int | None = None,
        image_size: int | None = None,
        scale_shift: bool = False,
        attention_head_dim: int | None = None,
        time_scale: float = 1000.0,
        guidance_embedding: bool = False,
        guidance_scale: float = 1000.0,
    ):
        super().__init__()
        channel_mults, attention_resolutions = resolve_layout(image_size, channel_mults, attention_resolutions)
        self.channel_mults, self.attention_resolutions, self.groups = channel_mults, attention_resolutions, groups
        self.in_channels, self.levels = in_channels, len(channel_mults)
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        emb_dim = 4 * base_channels
        self.time = TimeEmbedding(base_channels, emb_dim, time_embedding, time_scale)
        self.label = ClassEmbedding(num_classes, emb_dim) if num_classes else None
        self.guide = GuidanceEmbedding(base_channels, emb_dim, guidance_scale) if guidance_embedding else None

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, groups, dropout, scale_shift)

        def attn(c: int, level: int) -> list[nn.Module]:
            side = image_size // 2**level if image_size else None
            return [Attention(c, groups, attention_head_dim)] if side in attention_resolutions else []

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, skips, ch = nn.ModuleList(), [base_channels], base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, base_channels * mult), *attn(base_channels * mult, level)]))
                ch = base_channels * mult
                skips.append(ch)
            if level < self.levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), Attention(ch, groups, attention_head_dim), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([res(ch + skips.pop(), base_channels * mult),
                                              *attn(base_channels * mult, level)]))
                ch = base_channels * mult
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
        self.out = nn.Sequential(nn.GroupNorm(norm_groups(ch, groups), ch), nn.SiLU())
        self.conv_out = zero_(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        if groups is not None:
            warn_single_channel_groups(self, groups)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, control: list[Tensor] | None = None,
                w: Tensor | float | None = None) -> Tensor:
        """control: ControlNet residuals (nets/control.py), one per skip in push order then the middle's, added to
        the skips and the middle output; None leaves the forward pass untouched."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet takes x of shape (batch, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if x.shape[-1] % 2 ** (self.levels - 1) or x.shape[-2] % 2 ** (self.levels - 1):
            raise ValueError(f"H and W must divide by 2^{self.levels - 1} ({self.levels} levels); got {tuple(x.shape)}")
        emb = embed(t, y, x, self.time, self.label)  # (B, 4 * base)
        if self.guide is not None or w is not None:  # LCM's guidance-scale embedding, added like the time's
            emb = emb + guidance(self.guide, w, x)
        emb = F.silu(emb)
        h, hs = encode(self.conv_in(x), emb, self.down, self.mid)
        if control is not None:
            h, hs = self._add_control(h, hs, control)
        for stage in self.up:
            if not isinstance(stage[0], Upsample):
                h = torch.cat([h, hs.pop()], dim=1)
            for layer in stage:
                h = layer(h, emb)
        return self.conv_out(self.out(h))

    def _add_control(self, h: Tensor, hs: list[Tensor], control: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """(middle + control[-1], [skip_i + control[i]]): ControlNet's residuals (Zhang et al. 2023,
        arXiv:2302.05543, eq. 2), checked against the skips' shapes."""
        want = [tuple(s.shape) for s in (*hs, h)]
        if [tuple(c.shape) for c in control] != want:
            raise ValueError(f"control residuals must have shapes {want}; got {[tuple(c.shape) for c in control]}")
        return h + control[-1], [s + c for s, c in zip(hs, control[:-1], strict=True)]
