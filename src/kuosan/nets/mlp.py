"""A time-embedded residual MLP for toy 2-D and tabular data (book sec. 4.1 toy experiments)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .embeddings import ClassEmbedding, GuidanceEmbedding, TimeEmbedding, embed, guidance

__all__ = ["MLP"]


class ResidualMLPBlock(nn.Module):
    """h + W2 SiLU(W1 LN(h) + E emb): a pre-norm residual block with the conditioning added inside."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(torch.nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb)))


class MLP(nn.Module):
    """Residual MLP: x (B, dim), t (B,) -> (B, out_mult * dim); out_mult=2 for a learned variance.

    Args:
        dim: features per sample (2 for toy 2-D data).
        hidden: width of every layer; depth: number of residual blocks.
        time_embedding: "sinusoidal" (of time_scale * t) or "fourier" (Gaussian Fourier features of t).
        num_classes: class conditioning; label `num_classes` is the null class (classifier-free guidance).
        out_mult: output channels per input feature (1, or 2 for [prediction, variance]).
        guidance_embedding: embed a guidance scale w (forward's `w`) into the time embedding (LCM students);
            guidance_scale multiplies w in its sinusoidal features.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        time_embedding: str = "sinusoidal",
        num_classes: int | None = None,
        out_mult: int = 1,
        time_scale: float = 1000.0,
        guidance_embedding: bool = False,
        guidance_scale: float = 1000.0,
    ):
        super().__init__()
        self.dim, self.out_mult = dim, out_mult
        self.time = TimeEmbedding(hidden, hidden, time_embedding, time_scale)
        self.label = ClassEmbedding(num_classes, hidden) if num_classes else None
        self.guide = GuidanceEmbedding(hidden, hidden, guidance_scale) if guidance_embedding else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, out_mult * dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, w: Tensor | float | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP(dim={self.dim}) takes x of shape (batch, {self.dim}); got {tuple(x.shape)}")
        emb = embed(t, y, x, self.time, self.label)  # (B, hidden)
        if self.guide is not None or w is not None:  # LCM's guidance-scale embedding, added like the time's
            emb = emb + guidance(self.guide, w, x)
        emb = torch.nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
