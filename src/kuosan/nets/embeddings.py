"""Time and class embeddings shared by every network: t (any float dtype) -> a learned (B, dim) vector.

    sinusoidal:  [cos(s t w_i), sin(s t w_i)],  w_i = 10000^(-i/half)       (Vaswani 2017; DDPM, Ho 2020 App. B)
    fourier:     [cos(2 pi t W_i), sin(2 pi t W_i)],  W_i ~ N(0, scale^2), fixed    (Song 2021, Score SDE)

With the default time scale s = 1000 a time t in [0, 1] spans like DDPM's integer indices; EDM's
c_noise = ln(sigma)/4 (about -1.5..1.1) fits either embedding too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "TIME_EMBEDDINGS",
    "ClassEmbedding",
    "FourierFeatures",
    "GuidanceEmbedding",
    "SinusoidalFeatures",
    "TimeEmbedding",
    "embed",
    "embed_time",
    "guidance",
    "time_features",
]

TIME_EMBEDDINGS = ("sinusoidal", "fourier")


class SinusoidalFeatures(nn.Module):
    """Transformer positional encoding of a continuous time (Vaswani et al. 2017, arXiv:1706.03762, sec. 3.5;
    DDPM, Ho et al. 2020, arXiv:2006.11239, App. B; book sec. 4.1): [cos(s t w), sin(s t w)]."""

    def __init__(self, dim: int, time_scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        half = dim // 2
        w = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("w", w * time_scale, persistent=False)
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        arg = t.to(self.w.dtype)[:, None] * self.w  # (B, half)
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class FourierFeatures(nn.Module):
    """Gaussian Fourier features of t (Tancik et al. 2020, arXiv:2006.10739; as in Score SDE, Song et al. 2021,
    arXiv:2011.13456, App. H; book sec. 4.3): [cos(2 pi t W), sin(2 pi t W)] with W ~ N(0, scale^2) fixed."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale * 2 * math.pi)
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        arg = t.to(self.W.dtype)[:, None] * self.W  # (B, half)
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


def time_features(kind: str, dim: int, time_scale: float = 1000.0) -> nn.Module:
    """The fixed (unlearned) features of t: "sinusoidal" (scaled by time_scale) or "fourier" (of raw t)."""
    if kind == "sinusoidal":
        return SinusoidalFeatures(dim, time_scale)
    if kind == "fourier":
        return FourierFeatures(dim)
    raise ValueError(f"unknown time_embedding {kind!r}; choose one of {', '.join(TIME_EMBEDDINGS)}")


class TimeEmbedding(nn.Module):
    """Fixed features of t followed by Linear-SiLU-Linear (DDPM App. B): (B,) any float dtype -> (B, dim)."""

    def __init__(self, freq_dim: int, dim: int, kind: str = "sinusoidal", time_scale: float = 1000.0):
        super().__init__()
        self.features = time_features(kind, freq_dim, time_scale)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return self.mlp(self.features(t).to(dtype))


class ClassEmbedding(nn.Module):
    """Label embedding with one extra row: label `num_classes` is the null class of classifier-free guidance
    (Ho & Salimans 2022, arXiv:2207.12598, sec. 3.2); y=None means every sample is unconditional."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y.long())


class GuidanceEmbedding(nn.Module):
    """The guidance scale w embedded like the time (LCM, Luo et al. 2023, arXiv:2310.04378, §4.2; book §4.7.1):
    sinusoidal features of w (scale 1000, as diffusers' get_guidance_scale_embedding) -> Linear-SiLU-Linear, the
    last Linear zero-initialised so that a student initialised from its teacher starts as the teacher at every w.
    `scale` multiplies w in the features: 1000 (diffusers) makes most of them oscillate many times over w in [1, 4];
    a small scale (LCM students here: 10) keeps them smooth in w (docs/distill_lcm.md)."""

    def __init__(self, freq_dim: int, dim: int, scale: float = 1000.0):
        super().__init__()
        self.features = SinusoidalFeatures(freq_dim, scale)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, w: Tensor | float | None, x: Tensor) -> Tensor:  # -> (B, dim)
        if w is None:
            raise ValueError("this network embeds the guidance scale (guidance_embedding=True): pass w=")
        w = torch.as_tensor(w, device=x.device)
        return self.mlp(self.features(w.expand(x.shape[0]) if w.ndim == 0 else w).to(x.dtype))


def guidance(guide: GuidanceEmbedding | None, w: Tensor | float | None, x: Tensor) -> Tensor:
    """guide(w): the guidance-scale embedding (B, dim); an error if w is given to a net built without one."""
    if guide is None:
        raise ValueError("a guidance scale w was given but the net was built with guidance_embedding=False")
    return guide(w, x)


def embed_time(t: Tensor | float, x: Tensor, time: TimeEmbedding) -> Tensor:
    """time(t) (B, dim) in x's dtype, t a scalar or (batch,) tensor (anything else is refused by shape)."""
    B = x.shape[0]
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"t must have shape (batch,) = ({B},); got {tuple(t.shape)}")
    return time(t, x.dtype)


def embed(
    t: Tensor, y: Tensor | None, x: Tensor, time: TimeEmbedding, label: ClassEmbedding | None
) -> Tensor:
    """time(t) + label(y): the conditioning vector (B, dim) of every net; checks shapes and misuse of y."""
    B = x.shape[0]
    emb = embed_time(t, x, time)
    if label is not None:
        emb = emb + label(y, B, x.device)
    elif y is not None:
        raise ValueError("class labels y were given but the net was built with num_classes=None")
    return emb
