"""MMDiT, the multimodal diffusion transformer of Stable Diffusion 3 (Esser et al. 2024, arXiv:2403.03206, §4 and
Fig. 2; book §6.2): two token streams — image patches and a context — with their own weights (adaLN modulation,
qkv, output projection, MLP) that meet in one joint attention over the concatenated tokens. Here the context is the
class label, embedded as a few tokens (SD3's text tokens), and the pooled vector that drives adaLN is
time embedding + label embedding (SD3's pooled text vector + time). adaLN-Zero throughout (DiT's initialisation):
every block starts as the identity and the output is zero."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dit import modulate, sincos_pos_embed_2d
from .embeddings import ClassEmbedding, TimeEmbedding, embed
from .uvit import patchify, unpatchify

__all__ = ["MMDiT"]


class StreamIn(nn.Module):
    """One stream's half of an MMDiT block before attention: adaLN(c) -> LN -> modulate -> qkv (with RMS-normed
    q, k: SD3 §5.3.2). `pre_only` (the context stream of the last block): keys and values only, no output path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, pre_only: bool = False):
        super().__init__()
        self.heads, self.pre_only = heads, pre_only
        self.adaLN = nn.Linear(dim, (2 if pre_only else 6) * dim)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        d = dim // heads
        self.q_norm = nn.RMSNorm(d, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(d, eps=1e-6) if qk_norm else nn.Identity()
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            hidden = int(dim * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def qkv_of(self, h: Tensor, c: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, ...]]:
        """(q, k, v) each (B, heads, T, d), and the modulation vectors kept for `out`."""
        mods = self.adaLN(c).chunk(2 if self.pre_only else 6, dim=1)
        B, T, D = h.shape
        q, k, v = self.qkv(modulate(self.norm1(h), mods[0], mods[1])).reshape(B, T, 3, self.heads, D // self.heads
                                                                              ).permute(2, 0, 3, 1, 4)
        return (self.q_norm(q), self.k_norm(k), v), mods

    def out(self, h: Tensor, attn: Tensor, mods: tuple[Tensor, ...]) -> Tensor:
        """h + gate_msa * proj(attn), then h + gate_mlp * MLP(adaLN(h)) (DiT block, per stream)."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = h + gate_msa[:, None] * self.proj(attn)
        return h + gate_mlp[:, None] * self.mlp(modulate(self.norm2(h), shift_mlp, scale_mlp))


class MMDiTBlock(nn.Module):
    """Both streams' qkv, one attention over [context; image] tokens, each stream's own output path (Fig. 2b)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, last: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MMDiT hidden={dim} must divide by heads={heads}")
        self.x = StreamIn(dim, heads, mlp_ratio, qk_norm)
        self.ctx = StreamIn(dim, heads, mlp_ratio, qk_norm, pre_only=last)

    def forward(self, x: Tensor, ctx: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        (qx, kx, vx), mx = self.x.qkv_of(x, c)
        (qc, kc, vc), mc = self.ctx.qkv_of(ctx, c)
        a = F.scaled_dot_product_attention(torch.cat([qc, qx], 2), torch.cat([kc, kx], 2), torch.cat([vc, vx], 2))
        a = a.transpose(1, 2).flatten(2)  # (B, Tc + Tx, D)
        n = ctx.shape[1]
        x = self.x.out(x, a[:, n:], mx)
        return x, ctx if self.ctx.pre_only else self.ctx.out(ctx, a[:, :n], mc)


class MMDiT(nn.Module):
    """MMDiT: x (B, C, H, W), t (B,), y (B,) or None -> (B, C or 2C, H, W).

    Args:
        in_channels, image_size, patch_size: the input. hidden, depth, heads, mlp_ratio: the transformer.
        num_classes: labels become `context_tokens` context tokens (the null class num_classes too); without
            classes the context is `context_tokens` learned tokens. qk_norm: RMSNorm on queries and keys (SD3 §5.3.2).
        learn_sigma: 2C output channels. time_embedding, time_scale: as every kuosan net.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        context_tokens: int = 4,
        qk_norm: bool = True,
        learn_sigma: bool = False,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1000.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must divide by patch_size={patch_size}")
        self.in_channels, self.image_size, self.p = in_channels, image_size, patch_size
        self.side, self.hidden, self.n_ctx = image_size // patch_size, hidden, context_tokens
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_embed = nn.Linear(patch_size**2 * in_channels, hidden)
        self.register_buffer("pos", sincos_pos_embed_2d(hidden, self.side), persistent=False)
        self.time = TimeEmbedding(256, hidden, time_embedding, time_scale)
        self.label = ClassEmbedding(num_classes, hidden) if num_classes else None  # pooled vector
        self.context = (ClassEmbedding(num_classes, context_tokens * hidden) if num_classes  # context tokens
                        else None)
        self.context_const = nn.Parameter(torch.zeros(1, context_tokens, hidden)) if not num_classes else None
        self.context_pos = nn.Parameter(torch.zeros(1, context_tokens, hidden))
        self.blocks = nn.ModuleList(MMDiTBlock(hidden, heads, mlp_ratio, qk_norm, last=i == depth - 1)
                                    for i in range(depth))
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_final = nn.Linear(hidden, 2 * hidden)
        self.linear_final = nn.Linear(hidden, patch_size**2 * self.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's initialisation (adaLN-Zero): Xavier-uniform linears, N(0, 0.02) embeddings, zero adaLN
        modulations and final linear (so the network's output starts at zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time.mlp[0], self.time.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for table in (self.label, self.context):
            if table is not None:
                nn.init.normal_(table.table.weight, std=0.02)
        for p in (self.context_const, self.context_pos):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        for lin in [m.adaLN for b in self.blocks for m in (b.x, b.ctx)] + [self.adaLN_final, self.linear_final]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"MMDiT takes x of shape (batch, {', '.join(map(str, want))}); got {tuple(x.shape)}")
        B = x.shape[0]
        c = F.silu(embed(t, y, x, self.time, self.label))  # (B, D): time + pooled label
        if self.context is not None:
            ctx = self.context(y, B, x.device).reshape(B, self.n_ctx, self.hidden)
        else:
            ctx = self.context_const.expand(B, -1, -1)
        ctx = ctx.to(x.dtype) + self.context_pos
        h = self.patch_embed(patchify(x, self.p)) + self.pos
        for block in self.blocks:
            h, ctx = block(h, ctx, c)
        shift, scale = self.adaLN_final(c).chunk(2, dim=1)
        return unpatchify(self.linear_final(modulate(self.norm_final(h), shift, scale)), self.p, self.out_channels,
                          self.side)
