"""U-ViT (Bao et al. 2023, arXiv:2209.12152, §3 and Fig. 1; book §4.8.1): a ViT whose inputs are all tokens —
the time, the class label and the image patches — with long skip connections between shallow and deep blocks
(h_deep <- Linear([h_deep, h_shallow]), §3.1), and a 3x3 convolution after unpatchifying (§3.1, "the extra
convolutional block")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dit import SelfAttention, sincos_pos_embed_2d
from .embeddings import ClassEmbedding, TimeEmbedding, embed_time

__all__ = ["UViT", "patchify", "unpatchify"]


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C) tokens, row-major over the patches."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, H/p, W/p, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: Tensor, p: int, channels: int, side: int) -> Tensor:
    """The inverse of patchify for a square image of `side` patches a side: (B, T, p*p*C) -> (B, C, H, W)."""
    B = x.shape[0]
    x = x.reshape(B, side, side, p, p, channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, side, p, side, p)
    return x.reshape(B, channels, side * p, side * p)


class Block(nn.Module):
    """Pre-LN transformer block; with `skip`, the long skip's Linear([x, skip]) first (U-ViT §3.1, Fig. 1)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, skip: bool):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """U-ViT: x (B, C, H, W), t (B,), y (B,) or None -> (B, C or 2C, H, W).

    Tokens: [time, (label), patches] + learned positions; depth = 2k + 1 blocks: k "in" blocks whose outputs are
    kept, one middle block, k "out" blocks each taking the matching "in" output as a long skip (last in, first
    out). The time token is kuosan's TimeEmbedding (U-ViT's `mlp_time_embed` variant); the label token's table has
    the null class (label num_classes) for classifier-free guidance.

    Args:
        in_channels, image_size, patch_size: the input (image_size divisible by patch_size).
        hidden, depth (odd), heads, mlp_ratio: the transformer. num_classes: class tokens. learn_sigma: 2C out.
        conv_out: the final 3x3 convolution. time_embedding, time_scale: as every kuosan net.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden: int = 256,
        depth: int = 7,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        learn_sigma: bool = False,
        conv_out: bool = True,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1000.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must divide by patch_size={patch_size}")
        if depth % 2 != 1:
            raise ValueError(f"U-ViT depth must be odd (k in-blocks, a middle block, k out-blocks); got {depth}")
        self.in_channels, self.image_size, self.p = in_channels, image_size, patch_size
        self.side = image_size // patch_size
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.extras = 2 if num_classes else 1
        self.patch_embed = nn.Linear(patch_size**2 * in_channels, hidden)
        self.time = TimeEmbedding(256, hidden, time_embedding, time_scale)
        self.label = ClassEmbedding(num_classes, hidden) if num_classes else None
        self.pos = nn.Parameter(torch.zeros(1, self.extras + self.side**2, hidden))
        k = depth // 2
        self.in_blocks = nn.ModuleList(Block(hidden, heads, mlp_ratio, skip=False) for _ in range(k))
        self.mid_block = Block(hidden, heads, mlp_ratio, skip=False)
        self.out_blocks = nn.ModuleList(Block(hidden, heads, mlp_ratio, skip=True) for _ in range(k))
        self.norm = nn.LayerNorm(hidden)
        self.decoder = nn.Linear(hidden, patch_size**2 * self.out_channels)
        self.conv = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1) if conv_out else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: truncated-normal(0.02) linears and position embedding, zero biases,
        LayerNorm (1, 0); the position embedding starts from the 2-D sine-cosine one for the patches."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            nn.init.trunc_normal_(self.pos, std=0.02)
            if self.pos.shape[-1] % 4 == 0:
                self.pos[0, self.extras :] = sincos_pos_embed_2d(self.pos.shape[-1], self.side)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"U-ViT takes x of shape (batch, {', '.join(map(str, want))}); got {tuple(x.shape)}")
        B = x.shape[0]
        tokens = [embed_time(t, x, self.time)[:, None]]  # (B, 1, D)
        if self.label is not None:
            tokens.append(self.label(y, B, x.device)[:, None].to(x.dtype))
        elif y is not None:
            raise ValueError("class labels y were given but the net was built with num_classes=None")
        h = torch.cat([*tokens, self.patch_embed(patchify(x, self.p))], dim=1) + self.pos
        skips = []
        for block in self.in_blocks:
            h = block(h)
            skips.append(h)
        h = self.mid_block(h)
        for block in self.out_blocks:
            h = block(h, skips.pop())
        out = unpatchify(self.decoder(self.norm(h))[:, self.extras :], self.p, self.out_channels, self.side)
        return out if self.conv is None else self.conv(out)
