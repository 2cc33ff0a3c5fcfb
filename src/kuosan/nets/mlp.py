"""A time-embedded residual MLP for toy 2-D and tabular data (book sec. 4.1 toy experiments)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .embeddings import ClassEmbedding, TimeEmbedding, embed

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
    ):
        super().__init__()
        self.dim, self.out_mult = dim, out_mult
        self.time = TimeEmbedding(hidden, hidden, time_embedding, time_scale)
        self.label = ClassEmbedding(num_classes, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, out_mult * dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP(dim={self.dim}) takes x of shape (batch, {self.dim}); got {tuple(x.shape)}")
        emb = torch.nn.functional.silu(embed(t, y, x, self.time, self.label))  # (B, hidden)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
