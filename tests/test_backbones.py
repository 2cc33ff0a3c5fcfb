"""Transformer backbones (U-ViT, DiT, MMDiT): shapes, the zero-initialised output where the paper has one
(adaLN-Zero: DiT §3.2, SD3's MMDiT), U-ViT's long skips and MMDiT's joint attention between the streams."""

from __future__ import annotations

import pytest
import torch

from kuosan.config import parse_config
from kuosan.nets import MMDiT, UViT, build_net
from kuosan.nets.uvit import patchify, unpatchify
from kuosan.registry import build_network

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"hidden": 32, "depth": 3, "heads": 2}


def _randomise_zero_layers(net: torch.nn.Module) -> None:
    """Give the zero-initialised layers random weights, so that every input can reach the output."""
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():
        if not p.abs().sum():
            p.data = torch.randn(p.shape, generator=g) * 0.05


@pytest.mark.parametrize("kind", ["dit", "uvit", "mmdit"])
@pytest.mark.parametrize("classes", [None, 10])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_output_shape(kind, classes, learn_sigma):
    net = build_net(kind, in_channels=3, image_size=8, num_classes=classes, learn_sigma=learn_sigma, **SMALL)
    y = None if classes is None else torch.tensor([0, 9, 10])  # 10 = the null class
    out = net(torch.randn(3, 3, 8, 8), torch.rand(3), y)
    assert out.shape == (3, 6 if learn_sigma else 3, 8, 8)


@pytest.mark.parametrize("kind,zero", [("dit", True), ("mmdit", True), ("uvit", False)])
def test_zero_initialised_output_where_the_paper_has_one(kind, zero):
    net = build_net(kind, in_channels=2, image_size=8, num_classes=10, **SMALL)
    out = net(torch.randn(4, 2, 8, 8), torch.rand(4), torch.arange(4))
    assert (out.abs().max().item() == 0.0) is zero


def test_patchify_is_inverted_by_unpatchify():
    x = torch.randn(2, 3, 8, 8)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 16, 12)
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))  # patch (row 0, col 1)
    assert torch.equal(unpatchify(tokens, 2, 3, 4), x)


def test_uvit_long_skips_carry_the_input_past_the_middle():
    """With the middle block's output replaced by zeros, the output still depends on x only through the skips."""
    net = UViT(1, 8, **{**SMALL, "depth": 5})
    assert sum(b.skip_linear is not None for b in net.out_blocks) == 2 and len(net.in_blocks) == 2
    net.mid_block.forward = lambda h, skip=None: torch.zeros_like(h)
    t = torch.full((2,), 0.5)
    a, b = net(torch.randn(2, 1, 8, 8), t), net(torch.randn(2, 1, 8, 8), t)
    assert (a - b).abs().max() > 1e-3
    for blk in net.out_blocks:  # cut the skips too: now x cannot reach the output
        blk.skip_linear.forward = lambda z: torch.zeros_like(z[..., : z.shape[-1] // 2])
    a, b = net(torch.randn(2, 1, 8, 8), t), net(torch.randn(2, 1, 8, 8), t)
    assert torch.allclose(a, b)


def test_uvit_depth_must_be_odd():
    with pytest.raises(ValueError, match="depth must be odd"):
        UViT(1, 8, depth=4)


def test_mmdit_image_stream_reads_the_context_tokens_through_joint_attention():
    net = MMDiT(1, 8, num_classes=10, **SMALL)
    _randomise_zero_layers(net)
    net.label.table.weight.data.zero_()  # no pooled label vector: the class can only act through attention
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a, b = net(x, t, torch.tensor([3, 3])), net(x, t, torch.tensor([7, 7]))
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(net(x, t, None), net(x, t, torch.tensor([10, 10])))  # y=None is the null class


def test_mmdit_last_block_context_stream_is_pre_only():
    net = MMDiT(1, 8, **SMALL)
    assert [b.ctx.pre_only for b in net.blocks] == [False, False, True]
    assert not hasattr(net.blocks[-1].ctx, "mlp")


@pytest.mark.parametrize("kind", ["uvit", "mmdit"])
def test_config_builds_the_backbone_for_the_data(kind):
    cfg = parse_config({"net": {"kind": kind, "hidden": 32, "depth": 3, "heads": 2}, "data": {"kind": "digits"}})
    net = build_network(cfg, (1, 8, 8), 10)
    assert type(net).__name__ == {"uvit": "UViT", "mmdit": "MMDiT"}[kind]
    assert net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 2])).shape == (2, 1, 8, 8)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="must divide by patch_size"):
        MMDiT(1, 7, patch_size=2)
    net = UViT(1, 8, **SMALL)
    with pytest.raises(ValueError, match=r"U-ViT takes x of shape \(batch, 1, 8, 8\)"):
        net(torch.randn(2, 1, 6, 6), torch.rand(2))
