"""LoRA (Hu et al. 2021, arXiv:2106.09685): the layers against W x + (alpha / r) B A x written out, identity at
init, merge / unmerge / scale, parity with peft, adapter files, data.classes, `kuosan finetune`, load, resume."""

from __future__ import annotations

import copy
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from typer.testing import CliRunner

import kuosan
from kuosan.cli import app
from kuosan.config import ConfigError, DigitsData, Toy2dData, parse_config
from kuosan.data import DataError
from kuosan.nets import MLP, DiT, UNet
from kuosan.nets.lora import DEFAULT_TARGETS, LoraLayer, inject_lora, load_adapter, read_adapter, save_adapter
from kuosan.registry import build_data
from kuosan.rng import seed_init
from kuosan.train import build_objective, find_checkpoint, fit, load_checkpoint, run_meta, train_from_config
from kuosan.train.finetune import finetune_config, load_base

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
U = 2.0**-24  # float32 unit roundoff


def trained(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, as after training (fresh U-Nets and DiTs output exactly 0: zero-init layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def nets() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """A small U-Net, DiT and MLP (random weights) with an input each: (x, t, y)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(3, 1, 8, 8, generator=g)
    t, y = torch.rand(3, generator=g), torch.tensor([0, 2, 3])
    return {
        "unet": (trained(UNet(1, 8, image_size=8, num_res_blocks=1, num_classes=4)), (img, t, y)),
        "dit": (trained(DiT(1, 8, patch_size=2, hidden=16, depth=2, heads=2, num_classes=4)), (img, t, y)),
        "mlp": (trained(MLP(2, hidden=16, depth=2)), (torch.randn(3, 2, generator=g), t)),
    }


def randomize(adapter, seed=0, std=0.1):
    """Give every B (and A) random values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("kind", ["unet", "dit", "mlp"])
def test_lora_at_init_is_the_base_model_bit_for_bit(kind):
    net, inputs = nets()[kind]
    base = copy.deepcopy(net)
    want = base(*inputs)
    adapter = inject_lora(net, rank=2)
    assert torch.equal(net(*inputs), want) and torch.equal(adapter(*inputs), want)
    layers = adapter.layers()
    assert layers and all(any(p == t or p.endswith("." + t) for t in DEFAULT_TARGETS[type(base).__name__])
                          for p in layers)
    # only the factors train, and they are what the adapter holds
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.parameters()} and len(trainable) == 2 * len(layers)
    randomize(adapter)  # the test can fail: a non-zero B changes the output
    assert not torch.allclose(net(*inputs), want)


def test_a_lora_linear_is_w_x_plus_alpha_over_r_b_a_x():
    """Hu et al. eq. 3 written out in float64, and its merged weight W + (alpha / r) B A."""
    lin = nn.Linear(5, 7).double()
    W, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    holder = nn.Sequential(lin)
    adapter = inject_lora(holder, rank=3, alpha=6.0, targets=["0"])
    randomize(adapter)
    A, B = adapter.layers()["0"].lora.lora_A.weight, adapter.layers()["0"].lora.lora_B.weight
    x = torch.randn(4, 5, dtype=torch.float64)
    want = x @ (W + 2.0 * B @ A).T + b
    torch.testing.assert_close(holder(x), want, rtol=1e-12, atol=1e-12)
    adapter.merge()
    torch.testing.assert_close(holder[0].base_layer.weight, W + 2.0 * B @ A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv", [dict(kernel_size=1), dict(kernel_size=3, padding=1),
                                  dict(kernel_size=3, stride=2, padding=1)])
def test_a_lora_conv_is_the_conv_with_kernel_w_plus_alpha_over_r_b_a(conv):
    layer = nn.Conv2d(3, 5, **conv).double()
    W, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    holder = nn.Sequential(layer)
    adapter = inject_lora(holder, rank=2, alpha=1.0, targets=["0"])
    randomize(adapter)
    f = adapter.layers()["0"].lora
    A, B = f.lora_A.weight, f.lora_B.weight[:, :, 0, 0]  # (r, in, k, k), (out, r)
    kernel = W + 0.5 * torch.einsum("or,rihw->oihw", B, A)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = F.conv2d(x, kernel, b, stride=layer.stride, padding=layer.padding)
    torch.testing.assert_close(holder(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["unet", "dit", "mlp"])
def test_merge_then_unmerge_restores_the_weights(kind):
    """Merged outputs equal unmerged ones; unmerging restores every weight to |error| <= u (|W| + |W + dW|)
    (u = 2^-24: one rounding in the add, one in the subtract; dW is computed identically both times)."""
    net, inputs = nets()[kind]
    adapter = inject_lora(net, rank=2, alpha=3.0)
    randomize(adapter, std=0.3)
    w0 = {p: m.base_layer.weight.detach().clone() for p, m in adapter.layers().items()}
    unmerged = net(*inputs)
    adapter.merge()
    assert adapter.merged
    merged_w = {p: m.base_layer.weight.detach().clone() for p, m in adapter.layers().items()}
    torch.testing.assert_close(net(*inputs), unmerged, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(merged_w[p], w0[p]) for p in w0)  # the merge did something
    adapter.unmerge()
    for p, m in adapter.layers().items():
        err = (m.base_layer.weight - w0[p]).abs()
        assert (err <= U * (w0[p].abs() + merged_w[p].abs()) * 1.001).all(), p
    torch.testing.assert_close(net(*inputs), unmerged, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge", [False, True])
def test_scale_zero_is_the_base_and_a_half_halves_the_update(merge):
    net, (x, t) = nets()["mlp"]
    base = copy.deepcopy(net)
    adapter = inject_lora(net, rank=2)
    randomize(adapter, std=0.5)
    full = net(x, t)
    if merge:
        adapter.merge()
    adapter.set_scale(0.0)
    out0 = net(x, t)
    if merge:
        torch.testing.assert_close(out0, base(x, t), rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(out0, base(x, t))
    # the update is linear in the scale in each layer: check one layer's output against its closed form
    adapter.set_scale(0.5)
    layer = adapter.layers()["blocks.0.fc1"]
    h = torch.randn(4, 16)
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    if merge:
        assert layer.merged
        W = W - 0.5 * layer.lora.delta_weight()
    torch.testing.assert_close(layer(h), h @ (W + 0.5 * layer.lora.delta_weight()).T + b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full, out0)


@pytest.mark.parametrize("kind", ["unet", "dit", "mlp"])
def test_same_factors_same_outputs_and_keys_as_peft(kind):
    peft = pytest.importorskip("peft")
    net, inputs = nets()[kind]
    twin = copy.deepcopy(net)
    adapter = inject_lora(net, rank=3, alpha=5.0)
    randomize(adapter, std=0.2)
    pm = peft.get_peft_model(twin, peft.LoraConfig(r=3, lora_alpha=5.0, target_modules=list(adapter.targets)))
    ours = adapter.state_dict()
    assert set(peft.get_peft_model_state_dict(pm)) == set(ours)  # the same layers, peft's key names
    result = peft.set_peft_model_state_dict(pm, ours)
    assert not result.unexpected_keys
    torch.testing.assert_close(pm(*inputs), net(*inputs), rtol=1e-5, atol=1e-6)
    with pm.disable_adapter():  # peft saw the factors: without them it computes something else
        assert not torch.allclose(pm(*inputs), net(*inputs))


def test_adapter_file_holds_only_the_factors_with_peft_names_and_metadata(tmp_path):
    net, inputs = nets()["unet"]
    other = copy.deepcopy(net)
    adapter = inject_lora(net, rank=2, alpha=4.0)
    randomize(adapter)
    path = save_adapter(adapter, tmp_path / "a.safetensors", base="runs/x")
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(adapter.state_dict()) and len(keys) == 2 * len(adapter.layers())
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert meta["rank"] == "2" and float(meta["alpha"]) == 4.0 and meta["base"] == "runs/x"
    assert meta["targets"].split(",") == list(DEFAULT_TARGETS["UNet"])
    loaded = load_adapter(other, path)
    assert torch.equal(other(*inputs), net(*inputs))
    assert loaded.rank == 2 and loaded.alpha == 4.0


def test_an_adapter_for_another_base_is_refused_naming_the_layer_and_shapes(tmp_path):
    torch.manual_seed(0)
    adapter = inject_lora(UNet(1, 8, image_size=8, num_res_blocks=1), rank=2)
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"LoRA layer 'down\.0\.0\.conv1' factor lora_A has shape \(2, 8, 3, 3\), "
                                         r"this base network needs \(2, 16, 3, 3\)"):
        load_adapter(UNet(1, 16, image_size=8, num_res_blocks=1), path)
    with pytest.raises(ValueError, match="LoRA target 'qkv' matches no layer of this MLP"):
        load_adapter(MLP(2, hidden=8), path)
    tensors, _ = read_adapter(path)
    assert all(k.split(".")[-2] in ("lora_A", "lora_B") for k in tensors)


def test_bad_targets_are_named():
    with pytest.raises(ValueError, match=r"LoRA target '[\w.]*mlp' is a Sequential"):
        inject_lora(DiT(1, 8, hidden=16, depth=1, heads=2), 2, targets=["mlp"])
    with pytest.raises(ValueError, match="already carries LoRA"):
        net = MLP(2, hidden=8)
        inject_lora(net, 2)
        inject_lora(net, 2)
    assert isinstance(dict(MLP(2, hidden=8).named_modules())["blocks.0.fc1"], nn.Linear)
    assert isinstance(net.blocks[0].fc1, LoraLayer)


# --- data.classes ------------------------------------------------------------------------------------------
def test_data_classes_keeps_those_digits_with_their_labels():
    full = build_data(DigitsData(conditional=True))
    sub = build_data(DigitsData(conditional=True, classes=[3, 5]))
    keep = (full.labels == 3) | (full.labels == 5)
    assert torch.equal(sub.x, full.x[keep]) and torch.equal(sub.labels, full.labels[keep])
    assert sub.num_classes == 10 and set(sub.heldout_labels.tolist()) == {3, 5}
    assert len(sub.heldout) == int(((full.heldout_labels == 3) | (full.heldout_labels == 5)).sum())
    uncond = build_data(DigitsData(classes=[3]))
    assert uncond.labels is None and torch.equal(uncond.x, full.x[full.labels == 3])
    from kuosan.eval.evaluate import _real_data  # `kuosan eval` compares against those classes only

    train, held, _ = _real_data(DigitsData(classes=[3]), 0)
    assert torch.equal(train, uncond.x) and torch.equal(held, full.heldout[full.heldout_labels == 3])


def test_data_classes_on_the_conditional_toy_mixture_and_bad_values():
    sub = build_data(Toy2dData(name="gmm", n=400, conditional=True, classes=[1]))
    assert sub.num_classes == 4 and set(sub.labels.tolist()) == {1} and 0 < len(sub.x) < 400
    with pytest.raises(DataError, match=r"data.classes: 7 is not a class .* \(valid: 0..3\)"):
        build_data(Toy2dData(name="gmm", n=50, conditional=True, classes=[7]))
    with pytest.raises(ConfigError, match=r"data.classes: 12 is not a class; .* in 0..9"):
        parse_config({"data": {"kind": "digits", "classes": [12]}})
    with pytest.raises(ValueError, match="needs data.name=gmm"):
        build_data(Toy2dData(name="moons", n=50, classes=[0]))


def test_data_classes_on_an_image_folder(tmp_path):
    from PIL import Image

    for c, n in (("cat", 3), ("dog", 2)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / c / f"{i}.png")
    ds = build_data(parse_config({"data": {"kind": "folder", "root": str(tmp_path), "heldout": 0,
                                           "classes": [1]}}).data)
    assert len(ds.x) == 2 and set(ds.labels.tolist()) == {1} and ds.num_classes == 2
    with pytest.raises(DataError, match=r"valid: 0..1"):
        build_data(parse_config({"data": {"kind": "folder", "root": str(tmp_path), "classes": [2]}}).data)


# --- runs: finetune, load, sample, resume --------------------------------------------------------------------
TINY = ["net.base_channels=8", "train.steps=8", "train.batch_size=32", "train.progress=false",
        "train.tensorboard=false", "train.threads=1", "train.ckpt_every=0"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "base"
    res = invoke("train", "digits-ddpm", "--out", out, *[a for s in TINY for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    return out


def test_finetune_cli_load_sample_info(base_run, tmp_path):
    ft = tmp_path / "ft"
    res = invoke("finetune", base_run, "--lora", "2", "--targets", "qkv,conv1", "--out", ft, "--set",
                 "data.classes=[3]", "--set", "train.steps=4", "--set", "train.progress=false",
                 "--set", "train.tensorboard=false", "--set", "train.batch_size=16")
    assert res.exit_code == 0, res.output
    assert "fine-tuned to step 4" in res.output and "kept" in res.output
    ckpt = load_checkpoint(ft)
    assert set(ckpt.weights) == set(ckpt.ema) and all(".lora_" in k for k in ckpt.weights)
    rec = ckpt.state["objective"]
    assert rec["kind"] == "lora" and rec["base"]["path"] == str(base_run.resolve())
    assert rec["base"]["net"] == load_checkpoint(base_run).state["net"] and rec["lora"]["targets"] == ["qkv", "conv1"]
    assert ckpt.config["data"]["classes"] == [3] and ckpt.config["train"]["lr"] == 3e-3
    assert (ft / "adapter.safetensors").is_file()

    pipe, base = kuosan.load(ft, device="cpu"), kuosan.load(base_run, device="cpu")
    x = pipe.generate(6, method="ddim", nfe=4, seed=1)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()
    assert not torch.equal(x, base.generate(6, method="ddim", nfe=4, seed=1))  # the factors were trained
    pipe.lora.set_scale(0.0)
    assert torch.equal(pipe.generate(6, method="ddim", nfe=4, seed=1), base.generate(6, method="ddim", nfe=4, seed=1))
    pipe.lora.set_scale(1.0)
    pipe.lora.merge()
    torch.testing.assert_close(pipe.generate(6, method="ddim", nfe=4, seed=1), x, rtol=1e-4, atol=1e-4)

    res = invoke("info", ft)
    assert res.exit_code == 0 and "rank 2, alpha 2" in res.output and str(base_run.resolve()) in res.output
    res = invoke("sample", ft, "--method", "ddim", "--nfe", "3", "--n", "4", "--out", tmp_path / "s.png")
    assert res.exit_code == 0 and (tmp_path / "s.png").is_file()

    # --resume continues with the same settings (train.steps may grow); other settings are refused
    same = ["--lora", "2", "--targets", "qkv,conv1", "--out", ft, "--set", "data.classes=[3]", "--set",
            "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.batch_size=16"]
    res = invoke("finetune", base_run, *same, "--set", "train.steps=6", "--resume")
    assert res.exit_code == 0 and "fine-tuned to step 6" in res.output, res.output
    res = invoke("finetune", base_run, *same[:-2], "--set", "train.batch_size=8", "--resume")
    assert res.exit_code == 1 and "train.batch_size" in res.output


def test_a_missing_or_other_base_is_refused(base_run, tmp_path):
    res = invoke("finetune", tmp_path / "nowhere", "--lora", "2")
    assert res.exit_code == 1 and "base run" in res.output and "nowhere" in res.output
    copy_ = tmp_path / "base"
    shutil.copytree(base_run, copy_)
    cfg = finetune_config(copy_, 2, overrides=TINY[1:] + ["train.steps=2", f"out_dir={tmp_path / 'ft'}"])
    train_from_config(cfg, log=None)
    shutil.rmtree(copy_)
    with pytest.raises(FileNotFoundError, match=f"base run {re.escape(str(copy_))} is missing"):
        kuosan.load(tmp_path / "ft", device="cpu")
    # another network at the base's path: refused naming a layer and both shapes
    res = invoke("train", "digits-ddpm", "--out", copy_, *[a for s in TINY for a in ("--set", s)],
                 "--set", "net.base_channels=16")
    assert res.exit_code == 0, res.output
    with pytest.raises(ValueError, match=r"LoRA layer 'down\.0\.0\.conv1' factor lora_A has shape \(2, 8, 3, 3\), "
                                         r"this base network needs \(2, 16, 3, 3\)"):
        kuosan.load(tmp_path / "ft", device="cpu")
    with pytest.raises(ValueError, match=r"data has shape \(1, 16, 16\) but base run"):
        train_from_config(finetune_config(base_run, 2, overrides=["data.size=16", *TINY[1:],
                                                       f"out_dir={tmp_path / 'ft16'}"]), log=None)


class Crash(Exception):
    pass


def _fit_lora(cfg, run_dir, *, resume=False, callback=None):
    data = build_data(cfg.data, cfg.train.seed)
    seed_init(cfg.train.seed)
    obj = build_objective(cfg, load_base(cfg), data)
    return fit(obj, data, cfg.train, run_dir, meta=run_meta(cfg, data, obj.adapter.net), resume=resume,
               callback=callback), obj


def test_a_killed_lora_run_resumes_bit_for_bit_and_the_base_stays_frozen(base_run, tmp_path):
    cfg = finetune_config(base_run, 2, overrides=["train.steps=6", "train.ckpt_every=3", "train.batch_size=16",
                                                  "train.progress=false", "train.tensorboard=false"])
    full, obj = _fit_lora(cfg, tmp_path / "full")
    base_sd = kuosan.load(base_run, device="cpu").denoiser.net.state_dict()
    for path, layer in obj.adapter.layers().items():  # the base weights did not move
        assert torch.equal(layer.base_layer.weight, base_sd[path + ".weight"]), path

    def die(step, loss):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        _fit_lora(cfg, tmp_path / "killed", callback=die)
    assert find_checkpoint(tmp_path / "killed").name == "step-00000003"
    resumed, _ = _fit_lora(cfg, tmp_path / "killed", resume=True)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "killed")
    assert full.step == resumed.step == 6
    for got, want in ((a.weights, b.weights), (a.ema, b.ema)):
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got)
    k = next(k for k in a.weights if "lora_B" in k)
    assert a.weights[k].abs().sum() > 0 and not torch.equal(a.weights[k], a.ema[k])  # trained; EMA differs


def test_a_conditional_base_keeps_its_classes_and_label_dropout(tmp_path):
    base = tmp_path / "cond"
    res = invoke("train", "digits-cond", "--out", base, *[a for s in TINY for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    cfg = finetune_config(base, 2, overrides=["data.classes=[3]", "train.steps=2", "train.batch_size=16",
                                              "train.progress=false", "train.tensorboard=false"],
                          out_dir=tmp_path / "ft")
    assert cfg.objective.p_uncond == load_checkpoint(base).config["objective"]["p_uncond"] > 0
    _, obj = _fit_lora(cfg, cfg.run_dir)
    assert obj.p_uncond == cfg.objective.p_uncond and obj.null_class == 10  # the base's null class
    pipe = kuosan.load(cfg.run_dir, device="cpu")
    assert pipe.num_classes == 10
    x = pipe.generate(4, method="ddim", nfe=3, labels=3, guidance=2.0)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
