"""A noise-conditional classifier p_phi(y | x_t, t) (Dhariwal & Nichol 2021, arXiv:2105.05233, §4.1): logits of
the class of a noisy sample, for classifier guidance. No diffusion math: it sees (x, t) and returns logits.

    images   conv_in -> [ResBlock x num_res_blocks, Downsample] per level -> ResBlock   (the U-Net's encoder half)
             -> GroupNorm, SiLU, mean over positions, Linear -> (B, num_classes)
    vectors  Linear -> residual MLP blocks (time embedding added inside) -> LayerNorm, SiLU, Linear
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import TimeEmbedding, embed
from .mlp import ResidualMLPBlock
from .unet import Downsample, ResBlock, norm_groups, resolve_layout

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """x (B, C, H, W) or (B, dim), t (B,) -> logits (B, num_classes).

    Args:
        num_classes: number of classes (at least 2).
        in_channels, image_size: image input (the U-Net encoder body); dim: vector input (the MLP body).
        base_channels, channel_mults (None: automatic from image_size, as the U-Net), num_res_blocks, groups,
            dropout: the image body, as in kuosan.nets.UNet.
        hidden, depth: the vector body's width and residual blocks.
        time_embedding, time_scale: as every kuosan net ("sinusoidal" of time_scale * t, or "fourier").
    """

    def __init__(
        self,
        num_classes: int | None,
        in_channels: int | None = None,
        image_size: int | None = None,
        dim: int | None = None,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] | None = None,
        num_res_blocks: int = 1,
        groups: int | None = None,
        dropout: float = 0.0,
        hidden: int = 128,
        depth: int = 3,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1000.0,
    ):
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2; got {num_classes} (train it on labelled data, "
                             "e.g. data.conditional=true)")
        if (dim is None) == (in_channels is None):
            raise ValueError(f"give either dim (vectors) or in_channels (images); got dim={dim}, "
                             f"in_channels={in_channels}")
        self.num_classes, self.dim, self.in_channels = num_classes, dim, in_channels
        if dim is not None:
            self.time = TimeEmbedding(hidden, hidden, time_embedding, time_scale)
            self.inp = nn.Linear(dim, hidden)
            self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden) for _ in range(depth))
            self.head = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, num_classes))
            return
        channel_mults, _ = resolve_layout(image_size, channel_mults, ())
        self.channel_mults = channel_mults
        emb_dim = 4 * base_channels
        self.time = TimeEmbedding(base_channels, emb_dim, time_embedding, time_scale)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, ch = nn.ModuleList(), base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, base_channels * mult, emb_dim, groups, dropout, False))
                ch = base_channels * mult
            if level < len(channel_mults) - 1:
                self.down.append(Downsample(ch))
        self.mid = ResBlock(ch, ch, emb_dim, groups, dropout, False)
        self.head = nn.Sequential(nn.GroupNorm(norm_groups(ch, groups), ch), nn.SiLU())
        self.linear = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.dim is not None:
            if x.ndim != 2 or x.shape[1] != self.dim:
                raise ValueError(f"Classifier(dim={self.dim}) takes x of shape (batch, {self.dim}); got "
                                 f"{tuple(x.shape)}")
            emb = F.silu(embed(t, None, x, self.time, None))
            h = self.inp(x)
            for block in self.blocks:
                h = block(h, emb)
            return self.head(h)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Classifier takes x of shape (batch, {self.in_channels}, H, W); got {tuple(x.shape)}")
        emb = F.silu(embed(t, None, x, self.time, None))
        h = self.conv_in(x)
        for layer in self.down:
            h = layer(h, emb)
        h = self.head(self.mid(h, emb))
        return self.linear(h.mean(dim=(2, 3)))
