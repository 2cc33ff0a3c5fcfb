"""Diffusion Transformer, DiT (Peebles & Xie 2023, arXiv:2212.09748, sec. 3.2 and Fig. 3; book ch. 6):
patchify, transformer blocks conditioned by adaLN-Zero, a final adaLN layer, unpatchify."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ClassEmbedding, TimeEmbedding, embed

__all__ = ["DiT", "sincos_pos_embed_2d"]


def sincos_pos_embed_2d(dim: int, side: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE, He et al. 2021, arXiv:2111.06377), (side^2, dim):
    half the channels encode the row, half the column, each as [sin(pos w), cos(pos w)], w = 10000^(-i/(dim/4))."""
    if dim % 4:
        raise ValueError(f"DiT hidden={dim} must be a multiple of 4 for the 2-D position embedding")
    w = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def one_axis(p: Tensor) -> Tensor:
        arg = p.reshape(-1, 1) * w  # (side^2, dim/4)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (1 + scale) + shift, with one (shift, scale) per sample broadcast over the tokens."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"DiT hidden={dim} must divide by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d)
        return self.proj(a.transpose(1, 2).reshape(B, T, D))


class DiTBlock(nn.Module):
    """x + gate_msa * Attn(adaLN(x)), then x + gate_mlp * MLP(adaLN(x)); the six vectors come from c
    through a zero-initialised linear layer, so every block starts as the identity (adaLN-Zero, sec. 3.2)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:  # x (B, T, D), c (B, D) after SiLU
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiT(nn.Module):
    """DiT: x (B, C, H, W), t (B,), y (B,) or None -> (B, C or 2C, H, W).

    Args:
        in_channels, image_size: the input; image_size must divide by patch_size.
        patch_size: p, each p x p patch is one token. hidden, depth, heads: the transformer.
        num_classes: class conditioning (label num_classes = null class). learn_sigma: output 2C channels.
        time_embedding, time_scale: as every kuosan net ("sinusoidal" of time_scale * t, or "fourier").
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden: int = 256,
        depth: int = 6,
        heads: int = 4,
        num_classes: int | None = None,
        learn_sigma: bool = False,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1000.0,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must divide by patch_size={patch_size}")
        self.in_channels, self.image_size, self.p = in_channels, image_size, patch_size
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patchify = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_pos_embed_2d(hidden, image_size // patch_size), persistent=False)
        self.time = TimeEmbedding(256, hidden, time_embedding, time_scale)
        self.label = ClassEmbedding(num_classes, hidden) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_final = nn.Linear(hidden, 2 * hidden)
        self.linear_final = nn.Linear(hidden, patch_size**2 * self.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (official code `initialize_weights`): Xavier-uniform linears and patch
        embedding, N(0, 0.02) time MLP and label table, and zero adaLN modulations and final linear."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.weight.shape[0], -1))
        nn.init.zeros_(self.patchify.bias)
        for lin in (self.time.mlp[0], self.time.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.label is not None:
            nn.init.normal_(self.label.table.weight, std=0.02)
        for lin in [b.adaLN for b in self.blocks] + [self.adaLN_final, self.linear_final]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, T, p*p*C) tokens -> (B, C, H, W) image."""
        B, p, C = x.shape[0], self.p, self.out_channels
        s = int(math.isqrt(x.shape[1]))
        x = x.reshape(B, s, s, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, s, p, s, p)
        return x.reshape(B, C, s * p, s * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            want = (self.in_channels, self.image_size, self.image_size)
            raise ValueError(f"DiT takes x of shape (batch, {', '.join(map(str, want))}); got {tuple(x.shape)}")
        c = F.silu(embed(t, y, x, self.time, self.label))  # (B, D)
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos  # (B, T, D)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.adaLN_final(c).chunk(2, dim=1)
        return self.unpatchify(self.linear_final(modulate(self.norm_final(h), shift, scale)))
