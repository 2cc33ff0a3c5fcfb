"""kuosan's DDPM U-Net (nets/unet.py) as diffusers' UNet2DModel: the config that rebuilds the same layers and the
state dict that fills them (DDPM, Ho et al. 2020, arXiv:2006.11239, App. B; docs/interop.md has the table).

    conv_in                         -> conv_in
    time.mlp.0 / .2                 -> time_embedding.linear_1 (its columns rotated, see below) / .linear_2
    label.table                     -> class_embedding (num_class_embeds = num_classes + 1, the null class last)
    down[k] = [ResBlock(, Attn)]    -> down_blocks[level].resnets[j] (, .attentions[j]); [Downsample] -> .downsamplers.0
    mid = [ResBlock, Attn, ResBlock] -> mid_block.resnets.0, .attentions.0, .resnets.1
    up[k]                           -> up_blocks[levels - 1 - level] likewise; [Upsample] -> .upsamplers.0
    out.0 (GroupNorm), conv_out     -> conv_norm_out, conv_out
    ResBlock norm1 conv1 emb norm2 conv2 skip -> norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
    Attention norm, qkv (split in 3), proj    -> group_norm, to_q/to_k/to_v, to_out.0

Time: kuosan embeds [cos(a_k), sin(a_k)], a_k = time_scale t w_k, w_k = 10000^(-k/half); UNet2DModel embeds its
index s as [cos(s w_k), sin(s w_k)] (flip_sin_to_cos, freq_shift 0). With t = (s+1)/N and time_scale = N,
a_k = s w_k + w_k: a rotation by w_k of each (cos, sin) pair, folded exactly into linear_1's weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nets.embeddings import SinusoidalFeatures
from ..nets.unet import Attention, Downsample, UNet, Upsample

__all__ = ["unet2d_config", "unet2d_state_dict", "rotate_time_features"]


class Unmappable(ValueError):
    """A kuosan U-Net option UNet2DModel cannot express; the message says which and why."""


def _levels(net: UNet) -> tuple[int, list[bool]]:
    """(num_res_blocks, per level: whether its down blocks attend), read from the built network."""
    n_down = len(net.down) - (net.levels - 1)
    nrb = n_down // net.levels
    attn, stages = [], iter(net.down)
    for level in range(net.levels):
        blocks = [next(stages) for _ in range(nrb)]
        attn.append(any(isinstance(m, Attention) for b in blocks for m in b))
        if level < net.levels - 1:
            next(stages)
    return nrb, attn


def _groups(net: UNet) -> int:
    counts = sorted({(m.num_channels, m.num_groups) for m in net.modules() if isinstance(m, nn.GroupNorm)})
    groups = {g for _, g in counts}
    if len(groups) != 1:
        table = ", ".join(f"{c} ch: {g}" for c, g in counts)
        raise Unmappable(f"its GroupNorms have different group counts per width ({table}) and UNet2DModel has one "
                         "norm_num_groups; train with net.groups set to a count that divides every width (e.g. "
                         f"--set net.groups={min(groups)}) to export")
    return groups.pop()


def _heads(net: UNet) -> int | None:
    """attention_head_dim for UNet2DModel: None = one head everywhere (kuosan's default), else channels per head."""
    layers = [m for m in net.modules() if isinstance(m, Attention)]
    dims = {m.qkv.in_features // m.heads for m in layers if m.heads > 1}
    if all(m.heads == 1 for m in layers):
        return None
    if len(dims) != 1 or any(m.heads == 1 and m.qkv.in_features != next(iter(dims)) for m in layers):
        raise Unmappable("its attention layers use different channels per head; UNet2DModel has one attention_head_dim")
    return dims.pop()


def unet2d_config(net: UNet, n_train: int, image_size: int) -> dict[str, Any]:
    """UNet2DModel keyword arguments that rebuild `net`'s layers, or Unmappable naming what has no counterpart."""
    feats = net.time.features
    if not isinstance(feats, SinusoidalFeatures):
        raise Unmappable("its time embedding is 'fourier' (random Gaussian frequencies); UNet2DModel's positional "
                         "embedding has fixed frequencies 10000^(-k/half)")
    half = feats.w.numel()
    scale = float(feats.w[0])
    expect = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half) * scale
    if abs(scale - n_train) > 1e-6 * n_train or not torch.allclose(feats.w, expect, rtol=1e-6):
        raise Unmappable(f"its time_scale {scale:g} differs from the process's N = {n_train}: UNet2DModel embeds the "
                         f"index i = N t - 1 at frequencies 10000^(-k/half), which match kuosan's time_scale t only "
                         "when time_scale = N")
    if net.conv_in.out_channels != net.time.mlp[0].in_features or net.channel_mults[0] != 1:
        raise Unmappable(f"channel_mults {net.channel_mults} start at {net.channel_mults[0]}, not 1: UNet2DModel's "
                         "conv_in and time features have the first level's width")
    if net.out_channels not in (net.in_channels, 2 * net.in_channels):
        raise Unmappable(f"out_channels {net.out_channels} is neither in_channels nor twice it")
    nrb, attn = _levels(net)
    base = net.conv_in.out_channels
    groups = _groups(net)
    first = net.down[0][0]
    return {
        "sample_size": image_size, "in_channels": net.in_channels, "out_channels": net.out_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 0, "flip_sin_to_cos": True,
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        "block_out_channels": tuple(base * m for m in net.channel_mults), "layers_per_block": nrb,
        "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv",
        "dropout": float(first.dropout.p) if isinstance(first.dropout, nn.Dropout) else 0.0, "act_fn": "silu",
        "attention_head_dim": _heads(net), "norm_num_groups": groups, "attn_norm_num_groups": groups,
        "norm_eps": first.norm1.eps, "resnet_time_scale_shift": "scale_shift" if first.scale_shift else "default",
        "add_attention": True, "class_embed_type": None,
        "num_class_embeds": None if net.label is None else net.label.num_classes + 1,
    }


def rotate_time_features(weight: Tensor, w: Tensor) -> Tensor:
    """linear_1's weight W (out, 2 half) acting on [cos(s w), sin(s w)] as kuosan's acts on [cos((s+1) w),
    sin((s+1) w)]: cos(b + w) = cos b cos w - sin b sin w, sin(b + w) = sin b cos w + cos b sin w, so
    W'_cos = W_cos cos w + W_sin sin w and W'_sin = W_sin cos w - W_cos sin w (float64, then W's dtype)."""
    half = w.numel()
    wc, ws = weight[:, :half].double(), weight[:, half:].double()
    c, s = torch.cos(w.double()), torch.sin(w.double())
    return torch.cat([wc * c + ws * s, ws * c - wc * s], dim=1).to(weight.dtype)


def _res(prefix: str, block: nn.Module) -> dict[str, Tensor]:
    names = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
             "skip": "conv_shortcut"}
    out = {}
    for ours, theirs in names.items():
        layer = getattr(block, ours)
        if isinstance(layer, nn.Identity):
            continue
        out[f"{prefix}.{theirs}.weight"], out[f"{prefix}.{theirs}.bias"] = layer.weight, layer.bias
    return out


def _attn(prefix: str, layer: Attention) -> dict[str, Tensor]:
    q, k, v = layer.qkv.weight.chunk(3, dim=0)
    qb, kb, vb = layer.qkv.bias.chunk(3, dim=0)
    return {f"{prefix}.group_norm.weight": layer.norm.weight, f"{prefix}.group_norm.bias": layer.norm.bias,
            f"{prefix}.to_q.weight": q, f"{prefix}.to_q.bias": qb, f"{prefix}.to_k.weight": k,
            f"{prefix}.to_k.bias": kb, f"{prefix}.to_v.weight": v, f"{prefix}.to_v.bias": vb,
            f"{prefix}.to_out.0.weight": layer.proj.weight, f"{prefix}.to_out.0.bias": layer.proj.bias}


def _stages(stages: nn.ModuleList, side: str, levels: int) -> dict[str, Tensor]:
    """down/up stages -> down_blocks/up_blocks entries: block index = level (down) or levels - 1 - level (up)."""
    out, block, j = {}, 0, 0
    sampler = "downsamplers" if side == "down" else "upsamplers"
    for stage in stages:
        if isinstance(stage[0], (Downsample, Upsample)):
            out[f"{side}_blocks.{block}.{sampler}.0.conv.weight"] = stage[0].conv.weight
            out[f"{side}_blocks.{block}.{sampler}.0.conv.bias"] = stage[0].conv.bias
            block, j = block + 1, 0
            continue
        out.update(_res(f"{side}_blocks.{block}.resnets.{j}", stage[0]))
        if len(stage) > 1:
            out.update(_attn(f"{side}_blocks.{block}.attentions.{j}", stage[1]))
        j += 1
    if block != levels - 1:
        raise Unmappable(f"found {block + 1} {side} levels, expected {levels}")  # pragma: no cover - UNet builds these
    return out


def unet2d_state_dict(net: UNet) -> dict[str, Tensor]:
    """UNet2DModel parameter name -> tensor (detached copies), for the config of `unet2d_config(net, ...)`."""
    feats = net.time.features
    lin1 = net.time.mlp[0]
    out = {"conv_in.weight": net.conv_in.weight, "conv_in.bias": net.conv_in.bias,
           "time_embedding.linear_1.weight": rotate_time_features(lin1.weight, feats.w / float(feats.w[0])),
           "time_embedding.linear_1.bias": lin1.bias,
           "time_embedding.linear_2.weight": net.time.mlp[2].weight,
           "time_embedding.linear_2.bias": net.time.mlp[2].bias,
           "conv_norm_out.weight": net.out[0].weight, "conv_norm_out.bias": net.out[0].bias,
           "conv_out.weight": net.conv_out.weight, "conv_out.bias": net.conv_out.bias}
    if net.label is not None:
        out["class_embedding.weight"] = net.label.table.weight
    out.update(_stages(net.down, "down", net.levels))
    out.update(_stages(net.up, "up", net.levels))
    out.update(_res("mid_block.resnets.0", net.mid[0]))
    out.update(_attn("mid_block.attentions.0", net.mid[1]))
    out.update(_res("mid_block.resnets.1", net.mid[2]))
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
