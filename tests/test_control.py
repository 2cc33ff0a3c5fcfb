"""ControlNet (Zhang et al. 2023, arXiv:2302.05543): zero-initialised control is the base model bit for bit, the
U-Net without control is the pre-ControlNet U-Net, residual shapes, the conditions' closed forms, a CLI training of
a control run on a base trained here, and that the condition changes (and, trained longer, steers) the samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import kuosan
from kuosan.cli import app
from kuosan.data import load_digits
from kuosan.data.conditions import box_mask, condition, condition_channels, edges, lowres, lowres_of, mask
from kuosan.nets import UNet
from kuosan.nets.control import ControlBranch, ControlledUNet, residual_shapes
from kuosan.nets.embeddings import embed
from kuosan.nets.unet import Upsample

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

LAYOUTS = [  # (UNet kwargs, image side)
    ({"base_channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,)}, 8),
    ({"base_channels": 8, "channel_mults": (1, 2, 2), "num_res_blocks": 2, "attention_resolutions": (8,),
      "num_classes": 10, "scale_shift": True}, 16),
    ({"base_channels": 8, "channel_mults": None, "num_res_blocks": 1, "attention_resolutions": None,
      "learn_sigma": True, "in_channels": 3}, 12),
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def random_unet(kw: dict, side: int, seed: int = 0) -> UNet:
    """A U-Net whose every parameter (zero-initialised ones included) is random, so no output is trivially 0."""
    torch.manual_seed(seed)
    net = UNet(image_size=side, **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def inputs(net: UNet, side: int, b: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, net.in_channels, side, side, generator=g)
    t = torch.rand(b, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (b,), generator=g) if net.label is not None else None
    return x, t, y


def reference_forward(net: UNet, x, t, y=None):
    """UNet.forward as it was before the control path (kuosan before issue 14), line for line."""
    emb = F.silu(embed(t, y, x, net.time, net.label))
    h = net.conv_in(x)
    hs = [h]
    for stage in net.down:
        for layer in stage:
            h = layer(h, emb)
        hs.append(h)
    for layer in net.mid:
        h = layer(h, emb)
    for stage in net.up:
        if not isinstance(stage[0], Upsample):
            h = torch.cat([h, hs.pop()], dim=1)
        for layer in stage:
            h = layer(h, emb)
    return net.conv_out(net.out(h))


# --- the network ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,side", LAYOUTS)
def test_zero_initialised_control_is_the_base_bit_for_bit(kw, side):
    base = random_unet(kw, side)
    branch = ControlBranch(base, cond_channels=2)
    x, t, y = inputs(base, side)
    c = torch.randn(x.shape[0], 2, side, side)
    with torch.no_grad():
        assert torch.equal(ControlledUNet(base, branch)(x, t, y, control=c), base(x, t, y))
        assert all(torch.equal(r, torch.zeros_like(r)) for r in branch(x, t, y, c))
        assert torch.equal(ControlledUNet(base, branch)(x, t, y), base(x, t, y))  # control=None: the base
        branch.zero_mid.bias.fill_(1e-3)  # the test can fail: one nonzero zero-conv changes the output
        assert not torch.equal(ControlledUNet(base, branch)(x, t, y, control=c), base(x, t, y))


def test_branch_is_a_trainable_copy_of_the_encoder():
    """The copy starts from the base's weights (the paper's initialisation), is trainable, and owns its tensors."""
    base = random_unet(*LAYOUTS[0]).requires_grad_(False)
    branch = ControlBranch(base, 1)
    for name, p in base.state_dict().items():
        if name.split(".")[0] in ("time", "label", "conv_in", "down", "mid"):
            assert torch.equal(branch.state_dict()[name], p), name
    assert all(p.requires_grad for p in branch.parameters()) and branch.training
    branch.conv_in.weight.data.add_(1.0)
    assert not torch.equal(branch.conv_in.weight, base.conv_in.weight)


@pytest.mark.parametrize("kw,side", LAYOUTS)
def test_unet_without_control_is_unchanged_bit_for_bit(kw, side):
    net = random_unet(kw, side)
    x, t, y = inputs(net, side)
    with torch.no_grad():
        out = net(x, t, y)
        assert torch.equal(out, reference_forward(net, x, t, y))
        zeros = [torch.zeros(s) for s in residual_shapes(net, x)]
        assert torch.equal(net(x, t, y, control=zeros), out)


@pytest.mark.parametrize("kw,side", LAYOUTS)
def test_branch_residuals_match_the_skips_and_middle(kw, side):
    base = random_unet(kw, side)
    x, t, y = inputs(base, side)
    res = ControlBranch(base, 1)(x, t, y, torch.zeros(x.shape[0], 1, side, side))
    shapes = residual_shapes(base, x)
    n_skips = 1 + len(base.down)
    assert [tuple(r.shape) for r in res] == shapes and len(shapes) == n_skips + 1
    with pytest.raises(ValueError, match="control residuals must have shapes"):
        base(x, t, y, control=res[:-1])


def test_residuals_reach_the_right_places():
    """A residual on the middle block only changes the output as adding it to the middle output by hand does."""
    base = random_unet(*LAYOUTS[0])
    x, t, _ = inputs(base, 8)
    shapes = residual_shapes(base, x)
    r = torch.randn(shapes[-1])
    ctl = [torch.zeros(s) for s in shapes[:-1]] + [r]
    hook = base.mid[-1].register_forward_hook(lambda _m, _i, o: o + r)
    with torch.no_grad():
        by_hand = base(x, t)
        hook.remove()
        assert torch.allclose(base(x, t, control=ctl), by_hand, atol=1e-6)


# --- conditions -------------------------------------------------------------------------------------------
def test_edges_of_a_step_and_of_a_constant():
    """A vertical 0 -> 1 step between columns 3 and 4: Sobel gives 1/2 at columns 3 and 4, 0 elsewhere."""
    x = -torch.ones(2, 1, 8, 8)
    x[0, :, :, 4:] = 1.0
    e = edges(x)
    assert e.shape == (2, 1, 8, 8) and set(e.unique().tolist()) <= {0.0, 1.0}
    want = torch.zeros(8, 8)
    want[:, 3:5] = 1
    assert torch.equal(e[0, 0], want) and e[1].sum() == 0
    assert edges(x * 0.6).sum() == 16  # a 0.2 -> 0.8 step: magnitude 0.3 >= 1/4 (an edge: contrast >= 1/2)
    assert edges(x * 0.4).sum() == 0  # a 0.3 -> 0.7 step: magnitude 0.2 < 1/4


def test_lowres_is_blockwise_constant_and_keeps_its_downsample():
    x, _ = load_digits("test")
    c = lowres(x[:16])
    assert c.shape == x[:16].shape and c.min() >= -1 and c.max() <= 1
    assert torch.equal(lowres_of(c), lowres_of(x[:16]))
    assert torch.equal(c[:, :, 0::2, 0::2], c[:, :, 1::2, 1::2])
    assert torch.allclose(lowres_of(x[:1])[0, 0, 0, 0], x[0, 0, :2, :2].mean())


def test_mask_hides_one_half_side_box_and_keeps_the_rest():
    x, _ = load_digits("test")
    g = torch.Generator().manual_seed(0)
    c = mask(x[:32], g)
    assert c.shape == (32, 2, 8, 8)
    m = c[:, 1:]
    assert torch.equal((1 - m).sum((1, 2, 3)), torch.full((32,), 16.0))  # one 4x4 box hidden per image
    assert torch.equal(c[:, :1], x[:32] * m)
    assert torch.equal(box_mask((32, 1, 8, 8), torch.Generator().manual_seed(0)), m)  # from the generator only
    assert len({tuple(b.flatten().tolist()) for b in m}) > 5  # positions vary


def test_condition_dispatch_channels_and_unknown_kind():
    x = torch.zeros(2, 3, 8, 8)
    for kind in ("edges", "lowres", "mask"):
        assert condition(kind, x, torch.Generator()).shape[1] == condition_channels(kind, 3)
    with pytest.raises(ValueError, match="unknown condition 'depth'; choose one of edges, lowres, mask"):
        condition("depth", x)
    with pytest.raises(ValueError, match=r"\(batch, C, H, W\)"):
        edges(torch.zeros(8, 8))


def test_branch_rejects_a_condition_of_the_wrong_shape():
    base = random_unet(*LAYOUTS[0])
    x, t, _ = inputs(base, 8)
    with pytest.raises(ValueError, match=r"shape \(3, 1, 8, 8\) for x of shape \(3, 1, 8, 8\); got \(3, 2, 8, 8\)"):
        ControlBranch(base, 1)(x, t, None, torch.zeros(3, 2, 8, 8))


# --- a control run through the CLI ------------------------------------------------------------------------
FAST = ["--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.threads=1",
        "--set", "train.warmup=0", "--set", "train.ckpt_every=0", "--set", "train.sample_every=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional base (20 steps) and a lowres control run on it (40 steps at lr 5e-3), by the CLI."""
    root = tmp_path_factory.mktemp("control")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = invoke("train", "digits-cond", "--out", root / "base", "--set", "train.steps=20",
                     "--set", "train.batch_size=16", "--set", "net.base_channels=16", *FAST)
        assert res.exit_code == 0, res.output
        res = invoke("train", "digits-control", "--out", root / "ctl", "--set", f"base={root / 'base'}",
                     "--set", "objective.condition=lowres", "--set", "train.steps=40", "--set", "train.lr=5e-3",
                     "--set", "train.batch_size=32", *FAST)
        assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(n)
    return root


def test_control_run_saves_only_the_branch_and_takes_the_base_sections(runs):
    pipe = kuosan.load(runs / "ctl")
    base = kuosan.load(runs / "base")
    assert pipe.control_shape == (1, 8, 8) and pipe.control_kind == "lowres"
    assert pipe.config.base == (runs / "base").resolve() and pipe.config.net == base.config.net
    assert pipe.config.process == base.config.process and pipe.config.data == base.config.data
    saved = set(pipe.checkpoint.weights)
    assert saved == set(pipe.denoiser.net.branch.state_dict()) and not any(k.startswith("up.") for k in saved)
    # the locked base is the base run's EMA network, untouched by the control training
    for k, v in base.denoiser.net.state_dict().items():
        assert torch.equal(pipe.denoiser.net.base.state_dict()[k], v), k


def test_condition_changes_the_samples_after_training(runs):
    """ControlNet issue #373: a pixel-space ControlNet on an unconditional U-Net ignored its condition. Here the
    same noise and labels under two different conditions (each image's lowres swapped with another's) must give
    samples that differ by more than one 8-bit grey level (2/255) per pixel on average: what an ignored condition
    (or the untrained branch, whose difference is exactly 0, checked too) cannot do. Measured: ~0.04 after these
    40 steps."""
    pipe = kuosan.load(runs / "ctl")
    x, y = load_digits("test")
    c = condition("lowres", x[:16])
    a = pipe.generate(16, nfe=10, labels=y[:16], control=c, seed=0)
    b = pipe.generate(16, nfe=10, labels=y[:16], control=c.flip(0), seed=0)
    assert (a - b).abs().mean() > 2 / 255
    assert torch.equal(a, pipe.generate(16, nfe=10, labels=y[:16], control=c, seed=0))  # same inputs: same samples
    untrained = ControlledUNet(pipe.denoiser.net.base, ControlBranch(pipe.denoiser.net.base, 1)).eval()
    fresh = kuosan.load(runs / "ctl")
    fresh.denoiser = fresh.denoiser.replace()
    fresh.denoiser.fn = fresh.denoiser.net = untrained
    ua = fresh.generate(16, nfe=10, labels=y[:16], control=c, seed=0)
    assert torch.equal(ua, fresh.generate(16, nfe=10, labels=y[:16], control=c.flip(0), seed=0))
    assert torch.equal(ua, kuosan.load(runs / "base").generate(16, nfe=10, labels=y[:16], seed=0))


def test_guidance_gives_the_uncond_branch_the_same_control(runs):
    """Classifier-free guidance under control: out_u + w (out_c - out_u) with the control image in both branches;
    w = 1 is the conditional model exactly, and w = 2 differs from it."""
    pipe = kuosan.load(runs / "ctl")
    x, y = load_digits("test")
    c = condition("lowres", x[:8])
    plain = pipe.generate(8, nfe=6, labels=y[:8], control=c, seed=0)
    assert torch.equal(pipe.generate(8, nfe=6, labels=y[:8], control=c, seed=0, guidance=1.0), plain)
    guided = pipe.generate(8, nfe=6, labels=y[:8], control=c, seed=0, guidance=2.0, batch_size=3)
    assert guided.shape == plain.shape and torch.isfinite(guided).all() and not torch.equal(guided, plain)
    den = pipe.model(2.0, control=c)
    assert torch.equal(den.uncond["control"], c) and int(den.uncond["y"]) == 10


def test_sample_cli_with_control_files(runs, tmp_path):
    x, _ = load_digits("test")
    c = condition("lowres", x[:5]).numpy()
    np.save(tmp_path / "c.npy", c)
    res = invoke("sample", runs / "ctl", "--control", tmp_path / "c.npy", "--nfe", "4", "--out", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "s.npz")
    assert z["samples"].shape == (5, 1, 8, 8) and np.array_equal(z["control"], c)
    np.savez(tmp_path / "two.npz", a=c, b=c)
    res = invoke("sample", runs / "ctl", "--control", tmp_path / "two.npz", "--nfe", "4")
    assert res.exit_code == 1 and "holds arrays ['a', 'b']; name the condition images 'control'" in res.output
    from PIL import Image

    Image.fromarray(((c[0, 0] + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "c.png")
    res = invoke("sample", runs / "ctl", "--control", tmp_path / "c.png", "--nfe", "4", "--n", "3",
                 "--out", tmp_path / "p.png")
    assert res.exit_code == 0, res.output
    got = np.load(tmp_path / "p.npz")["control"]
    assert got.shape == (1, 8, 8) and np.abs(got - c[0]).max() <= 1 / 255  # one image, 8-bit round trip


def test_bad_control_inputs_name_the_shapes_and_runs(runs, tmp_path):
    pipe = kuosan.load(runs / "ctl")
    with pytest.raises(ValueError, match=r"control images of shape \(4, 2, 8, 8\) do not fit .* for n=4 it takes "
                                         r"shape \(4, 1, 8, 8\) \(or one image \(1, 8, 8\)\)"):
        pipe.generate(4, nfe=2, control=torch.zeros(4, 2, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(3, 1, 8, 8\) .* for n=4"):
        pipe.generate(4, nfe=2, control=torch.zeros(3, 1, 8, 8))
    assert pipe.generate(4, nfe=2, control=torch.zeros(1, 8, 8)).shape == (4, 1, 8, 8)  # one image for all
    with pytest.raises(ValueError, match="is not a control run .* takes no control images"):
        kuosan.load(runs / "base").generate(2, nfe=2, control=torch.zeros(2, 1, 8, 8))


def test_bad_bases_are_named(runs, tmp_path):
    res = invoke("train", "digits-control", "--out", tmp_path / "a", "--set", f"base={tmp_path / 'nowhere'}")
    assert res.exit_code == 1 and f"base run {tmp_path / 'nowhere'} does not exist" in res.output
    res = invoke("train", "digits-control", "--out", tmp_path / "b")
    assert res.exit_code == 1 and "--set base=RUN" in res.output
    res = invoke("train", "toy2d-ddpm", "--out", tmp_path / "mlp", "--set", "train.steps=2", "--set", "data.n=64",
                 "--set", "train.batch_size=8", *FAST)
    assert res.exit_code == 0, res.output
    res = invoke("train", "digits-control", "--out", tmp_path / "c", "--set", f"base={tmp_path / 'mlp'}")
    assert res.exit_code == 1 and "ControlNet controls a U-Net" in res.output and "net kind 'mlp'" in res.output
    res = invoke("train", "digits-control", "--out", tmp_path / "d", "--set", f"base={runs / 'ctl'}")
    assert res.exit_code == 1 and "is itself an adapter run (objective 'control'" in res.output


@pytest.mark.slow
def test_trained_control_follows_its_edges(tmp_path):
    """Trained longer (a 16-channel base 400 steps, the edges branch 400 steps), samples follow their own edge map:
    per image, the F1 of the sample's edges with its own condition beats the F1 with another image's condition
    (the same noise, the conditions shuffled), by more than 3 standard errors of the paired differences over 64
    images (a one-sided test at about p = 0.001 that the branch ignores the condition)."""
    common = [*FAST, "--set", "train.batch_size=64", "--set", "train.steps=400"]
    res = invoke("train", "digits-ddpm", "--out", tmp_path / "base", "--set", "net.base_channels=16", *common)
    assert res.exit_code == 0, res.output
    res = invoke("train", "digits-control", "--out", tmp_path / "ctl", "--set", f"base={tmp_path / 'base'}",
                 *common)
    assert res.exit_code == 0, res.output
    pipe = kuosan.load(tmp_path / "ctl")
    x, _ = load_digits("test")
    c = condition("edges", x[:64])
    other = c.roll(1, 0)
    s = pipe.generate(64, nfe=20, control=c, seed=0)
    e = edges(s)

    def f1(ref):
        return 2 * (e * ref).sum((1, 2, 3)) / (e.sum((1, 2, 3)) + ref.sum((1, 2, 3))).clamp(min=1)

    d = f1(c) - f1(other)
    assert d.mean() > 3 * d.std() / len(d) ** 0.5, (d.mean(), d.std())


def test_control_run_resumes_bit_for_bit(runs, tmp_path):
    """4 steps straight = 2 steps + resume to 4 (branch weights and EMA), with the mask condition's random boxes
    drawn from the step generator (constant learning rate: a cosine schedule depends on train.steps)."""
    opts = [*FAST, "--set", f"base={runs / 'base'}", "--set", "objective.condition=mask", "--set",
            "train.schedule=constant", "--set", "train.batch_size=8"]
    assert invoke("train", "digits-control", "--out", tmp_path / "a", "--set", "train.steps=4", *opts).exit_code == 0
    assert invoke("train", "digits-control", "--out", tmp_path / "b", "--set", "train.steps=2", *opts).exit_code == 0
    assert invoke("train", "--resume", "--out", tmp_path / "b", "--set", "train.steps=4").exit_code == 0
    a, b = kuosan.load(tmp_path / "a").checkpoint, kuosan.load(tmp_path / "b").checkpoint
    assert a.step == b.step == 4
    assert all(torch.equal(a.weights[k], b.weights[k]) and torch.equal(a.ema[k], b.ema[k]) for k in a.weights)
