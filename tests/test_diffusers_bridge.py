"""The diffusers bridge (docs/interop.md): a local diffusers directory as a kuosan Denoiser (`kuosan.from_diffusers`)
and a kuosan U-Net run as a DDPMPipeline directory (`kuosan export RUN --format diffusers`). The references are
diffusers' own UNet2DModel and DDIMScheduler loop on randomly initialised tiny models; nothing is downloaded."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import kuosan
from kuosan.checkpoint import load_checkpoint, save_checkpoint
from kuosan.cli import app
from kuosan.export.unet_diffusers import Unmappable, unet2d_config
from kuosan.nets.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Every parameter (zero-initialised output layers included) random, so that outputs depend on all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))
    return module


def tiny_unet2d(**kw) -> diffusers.UNet2DModel:
    args = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, attention_head_dim=None, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return randomize_(diffusers.UNet2DModel(**{**args, **kw}))


def diffusers_dir(root, unet, **scheduler):
    """A DDPMPipeline-style directory: unet/ and scheduler/ (a DDIMScheduler config)."""
    unet.save_pretrained(root / "unet")
    diffusers.DDIMScheduler(**{"clip_sample": False, **scheduler}).save_pretrained(root / "scheduler")
    return root


# --- import: kuosan.from_diffusers --------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction, clip", [("epsilon", False), ("v_prediction", False), ("epsilon", True)])
def test_ddim_on_imported_model_equals_diffusers_ddim_loop(tmp_path, prediction, clip):
    """kuosan's ddim on the "leading" grid = diffusers' DDIMScheduler loop (eta = 0, set_alpha_to_one) on the same
    UNet2DModel and x_T. clip_sample: kuosan re-derives eps from the clipped x0, diffusers' DDIM does so with
    use_clipped_model_output=True (its default False pairs the clipped x0 with the unclipped eps)."""
    unet = tiny_unet2d()
    root = diffusers_dir(tmp_path, unet, prediction_type=prediction, clip_sample=clip)
    model = kuosan.from_diffusers(root)
    assert model.prediction == {"epsilon": "eps", "v_prediction": "v"}[prediction]
    assert (model.clip_x0 is not None) == clip
    x_T = 2 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    n = 10
    ref = diffusers.DDIMScheduler.from_pretrained(root / "scheduler")
    ref.set_timesteps(n)
    x = x_T
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        ours = kuosan.sample(model, x_T, "ddim", nfe=None, grid=model.process.timesteps(n, "leading"))
    assert model.nfe == n
    # a random net's x0 = (x - sigma eps) / alpha reaches |x0| ~ 200 (alpha(t_901) = 0.02): float32 rounding of
    # both loops then differs by ~1e-7 relative; with clip_sample the samples stay in [-1, 1]
    scale = max(1.0, float(x.abs().max()))
    assert (ours - x).abs().max() < 1e-5 * scale, ((ours - x).abs().max(), scale)
    assert x.abs().max() > 0.1  # not a trivially small output
    if clip:
        assert x.abs().max() <= 1 + 1e-6


def test_imported_alpha_bar_is_the_schedulers_and_time_is_the_fractional_index(tmp_path):
    """alpha(t_i)^2 = alphas_cumprod[i] at t_i = (i+1)/N, for each beta_schedule; the UNet sees i = N t - 1."""
    unet = tiny_unet2d()
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        root = diffusers_dir(tmp_path / schedule, unet, beta_schedule=schedule, beta_start=0.0002, beta_end=0.03)
        model = kuosan.from_diffusers(root)
        ref = diffusers.DDIMScheduler.from_pretrained(root / "scheduler").alphas_cumprod.double()
        i = torch.arange(1000, dtype=torch.float64)
        abar = model.process.alpha(model.process.t_of_index(i)) ** 2
        torch.testing.assert_close(abar, ref, rtol=1e-4, atol=0)  # diffusers: float32 cumprod of 1000 terms
    trained = torch.linspace(1e-3, 0.05, 50, dtype=torch.float64)
    root = diffusers_dir(tmp_path / "trained", unet, num_train_timesteps=50, trained_betas=trained.tolist())
    model = kuosan.from_diffusers(root)
    torch.testing.assert_close(model.process.betas, trained, rtol=0, atol=0)
    assert torch.allclose(model.time_input(torch.tensor([0.02, 0.5, 0.51, 1.0], dtype=torch.float64)),
                          torch.tensor([0.0, 24.0, 24.5, 49.0], dtype=torch.float64), atol=1e-12)


def test_class_labels_reach_num_class_embeds(tmp_path):
    unet = tiny_unet2d(num_class_embeds=4)
    model = kuosan.from_diffusers(diffusers_dir(tmp_path, unet))
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    t = torch.tensor([0.05, 0.3, 0.6, 1.0], dtype=torch.float64)
    with torch.no_grad():
        ours = model.eps(x, t, y=y)
        theirs = unet(x, t * 1000 - 1, class_labels=y).sample
        other = model.eps(x, t, y=(y + 1) % 4)
    assert (ours - theirs).abs().max() < 1e-6
    assert (ours - other).abs().max() > 1e-2  # the label matters
    x0 = kuosan.sample(model, torch.randn(4, 1, 8, 8), "dpmpp-2m", nfe=4, cond={"y": y})
    assert x0.shape == (4, 1, 8, 8) and x0.isfinite().all()
    with pytest.raises(ValueError, match="class-conditional .*4 class embeddings.*cond=\\{'y'"):
        model.eps(x, t)


def test_ode_nll_runs_on_an_imported_model(tmp_path):
    model = kuosan.from_diffusers(diffusers_dir(tmp_path, tiny_unet2d(sample_size=4, block_out_channels=(4, 4),
                                                                      norm_num_groups=2)))
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    nll = kuosan.likelihood.ode_nll(model, x, method="heun", steps=6)
    assert nll.shape == (2,) and nll.isfinite().all()


def test_bad_diffusers_directories_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler/scheduler_config.json nor .*scheduler_config.json"):
        kuosan.from_diffusers(tmp_path)
    root = diffusers_dir(tmp_path / "ok", tiny_unet2d())
    cfg_path = root / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for cls, why in [("UNet2DConditionModel", "needs text embeddings"), ("Transformer2DModel", "not supported")]:
        cfg_path.write_text(json.dumps({**cfg, "_class_name": cls}))
        with pytest.raises(ValueError, match=f"unet/config.json: .*{cls}.*{why}"):
            kuosan.from_diffusers(root)
    cfg_path.write_text(json.dumps({**cfg, "time_embedding_type": "fourier"}))
    with pytest.raises(ValueError, match="time_embedding_type 'fourier' is not supported"):
        kuosan.from_diffusers(root)
    cfg_path.write_text(json.dumps(cfg))
    sched_path = root / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text())
    for key, value in [("beta_schedule", "sigmoid"), ("prediction_type", "score")]:
        sched_path.write_text(json.dumps({**sched, key: value}))
        with pytest.raises(ValueError, match=f"scheduler_config.json: {key} '{value}' is not supported"):
            kuosan.from_diffusers(root)
    sched_path.write_text(json.dumps({**sched, "rescale_betas_zero_snr": True}))
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        kuosan.from_diffusers(root)


# --- export: kuosan export RUN --format diffusers ------------------------------------------------------------------
TINY = ["--set", "net.base_channels=8", "--set", "net.groups=4", "--set", "train.steps=2", "--set",
        "train.batch_size=8", "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set",
        "train.ckpt_every=0", "--set", "train.sample_every=0", "--set", "train.threads=1"]


def randomized_run(root, recipe, *sets):
    """A tiny trained run whose weights (raw and EMA) are then overwritten with random values, saved as a
    newer checkpoint: a few training steps leave the zero-initialised output layers near zero."""
    res = invoke("train", recipe, "--out", root, *TINY, *sets)
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(root)
    weights = {k: v.clone() for k, v in ckpt.weights.items()}
    g = torch.Generator().manual_seed(3)
    for v in weights.values():
        if v.is_floating_point():
            v.copy_(0.2 * torch.randn(v.shape, generator=g))
    state = {k: v for k, v in ckpt.state.items() if k not in ("optimizer", "step", "modules")}
    save_checkpoint(root / "checkpoints", ckpt.step + 1, weights=weights, ema=weights, optimizer=None, state=state)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bridge")
    return {"eps": randomized_run(base / "eps", "digits-ddpm"),
            "cond-v": randomized_run(base / "cond-v", "digits-cond", "--set", "prediction=v", "--set",
                                     "net.scale_shift=true", "--set", "process.schedule=cosine"),
            "hybrid": randomized_run(base / "hybrid", "digits-ddpm", "--set", "loss.kind=hybrid")}


@pytest.mark.parametrize("name", ["eps", "cond-v"])
def test_exported_unet2dmodel_returns_the_runs_output_at_every_index(runs, tmp_path, name):
    """DDPMPipeline.from_pretrained loads the export; its UNet2DModel at index i = the run's U-Net at (i+1)/N."""
    out = tmp_path / "exp"
    res = invoke("export", runs[name], "--format", "diffusers", "--out", out)
    assert res.exit_code == 0, res.output
    pipe = kuosan.load(runs[name])
    dpipe = diffusers.DDPMPipeline.from_pretrained(out)
    sched = dpipe.scheduler.config
    assert sched.prediction_type == {"eps": "epsilon", "cond-v": "v_prediction"}[name] and sched.clip_sample
    torch.testing.assert_close(dpipe.scheduler.alphas_cumprod.double(), pipe.denoiser.process.alphas_cumprod,
                               rtol=1e-4, atol=0)
    idx = torch.tensor([0, 1, 37, 250, 500, 998, 999], dtype=torch.float64)
    x = torch.randn(len(idx), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = None if pipe.num_classes is None else torch.arange(len(idx)) % (pipe.num_classes + 1)  # null class too
    with torch.no_grad():
        ours = pipe.denoiser.net(x, (idx + 1) / 1000, y)
        theirs = dpipe.unet(x, idx, class_labels=y).sample
    assert ours.abs().max() > 0.1
    assert (ours - theirs).abs().max() < 1e-4, (ours - theirs).abs().max()
    if pipe.num_classes is None:  # diffusers' own sampler runs on it
        img = dpipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                    output_type="np").images
        assert img.shape == (2, 8, 8, 1)


@pytest.mark.parametrize("name, method", [("eps", "ddim"), ("eps", "dpmpp-2m"), ("eps", "ddpm"), ("cond-v", "unipc"),
                                          ("hybrid", "ddpm")])
def test_export_then_import_samples_like_the_run(runs, tmp_path, name, method):
    """The issue's goal: kuosan.load(run) and kuosan.from_diffusers(export of run) give the same samples for the
    same noise and sampler (x0 clipping of the run = clip_sample of the export)."""
    out = tmp_path / "exp"
    kuosan.export.export_run(runs[name], out)
    pipe, model = kuosan.load(runs[name]), kuosan.from_diffusers(out)
    assert model.learned_variance == (name == "hybrid")  # variance_type learned_range: 2C output channels
    cond = None if pipe.num_classes is None else {"y": torch.tensor([0, 3, 9, 5])}
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    a = kuosan.sample(pipe.model(), x_T, method, nfe=10, cond=cond, generator=torch.Generator().manual_seed(5))
    b = kuosan.sample(model, x_T, method, nfe=10, cond=cond, generator=torch.Generator().manual_seed(5))
    assert (a - b).abs().max() < 1e-4, (a - b).abs().max()
    assert a.std() > 0.1


def test_ode_nll_of_the_export_is_the_runs(runs, tmp_path):
    out = tmp_path / "exp"
    kuosan.export.export_run(runs["eps"], out)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = {"divergence": "hutchinson", "method": "heun", "steps": 4}
    a = kuosan.likelihood.ode_nll(kuosan.load(runs["eps"]).denoiser, x, generator=torch.Generator().manual_seed(1),
                                  **kw)
    b = kuosan.likelihood.ode_nll(kuosan.from_diffusers(out, clip=False), x,
                                  generator=torch.Generator().manual_seed(1), **kw)
    assert a.isfinite().all() and (a - b).abs().max() < 1e-3 * a.abs().max(), (a, b)


def test_export_refusals(runs, tmp_path):
    res = invoke("export", runs["eps"], "--format", "onnx", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "onnx is not built yet" in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    res = invoke("export", runs["eps"], "--format", "diffusers", "--out", tmp_path / "full")
    assert res.exit_code == 1 and "exists and is not empty" in res.output
    res = invoke("export", runs["eps"], "--format", "tar")
    assert res.exit_code == 1 and "unknown export format 'tar'" in res.output
    tree = {"name": "toy", "process": {"kind": "vp"}, "net": {"kind": "mlp", "hidden": 8, "depth": 1},
            "data": {"kind": "toy2d", "name": "moons", "n": 64},
            "train": {"steps": 1, "batch_size": 8, "ckpt_every": 0, "progress": False, "tensorboard": False}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(tree))
    assert invoke("train", tmp_path / "toy.yaml", "--out", tmp_path / "toy").exit_code == 0
    res = invoke("export", tmp_path / "toy", "--format", "diffusers")
    assert res.exit_code == 1 and "net kind 'mlp' has no diffusers UNet2DModel counterpart" in res.output


def test_unet_options_without_a_unet2dmodel_counterpart_are_refused():
    with pytest.raises(Unmappable, match=r"different group counts per width \(8 ch: 2, 16 ch: 4.*net.groups=2"):
        unet2d_config(UNet(1, 8, (1, 2), 1, (4,), image_size=8), 1000, 8)  # automatic groups: 4 channels each
    with pytest.raises(Unmappable, match="time_scale 1000 differs from the process's N = 100"):
        unet2d_config(UNet(1, 8, (1, 2), 1, (4,), groups=4, image_size=8), 100, 8)
    with pytest.raises(Unmappable, match="'fourier'"):
        unet2d_config(UNet(1, 8, (1, 2), 1, (4,), groups=4, image_size=8, time_embedding="fourier"), 1000, 8)
    with pytest.raises(Unmappable, match=r"channel_mults \(2, 2\) start at 2"):
        unet2d_config(UNet(1, 8, (2, 2), 1, (4,), groups=4, image_size=8), 1000, 8)


def test_cli_samples_a_diffusers_directory(tmp_path):
    """`kuosan sample DIR` on a diffusers directory: kuosan's sampler on from_diffusers(DIR), labels per class."""
    root = diffusers_dir(tmp_path / "d", tiny_unet2d(num_class_embeds=3), clip_sample=True)
    res = invoke("sample", root, "--method", "ddim", "--nfe", "4", "--n", "6", "--out", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    got = np.load(tmp_path / "s.npz")
    assert got["samples"].shape == (6, 1, 8, 8) and list(got["labels"]) == [0, 0, 1, 1, 2, 2]
    model = kuosan.from_diffusers(root)
    g = torch.Generator().manual_seed(0)
    x_T = model.process.prior_sample((6, 1, 8, 8), generator=g, dtype=torch.float32)
    with torch.no_grad():
        ref = kuosan.sample(model, x_T, "ddim", 4, generator=g, cond={"y": torch.tensor([0, 0, 1, 1, 2, 2])})
    assert np.abs(got["samples"] - ref.numpy()).max() < 1e-6
    res = invoke("sample", root, "--guidance", "2", "--out", tmp_path / "g.png")
    assert res.exit_code == 1 and "guidance: not available for a diffusers directory" in res.output
