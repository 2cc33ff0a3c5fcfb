"""The CUDA path: the same numbers on a GPU as on the CPU, bf16 autocast training, bit-exact resume there too.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
`python -m pytest tests/test_cuda.py`. Each test compares the GPU with the CPU or with itself, never with a
stored figure: the samplers' deterministic paths must agree with the CPU to float32 rounding (TF32 off), a
checkpoint written on the GPU must load on the CPU, and a killed bf16 run must resume bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_train import Crash, assert_same_checkpoint, crash_after, toy_config, toy_data
from test_train import run as train_run

import kuosan
from kuosan.config import parse_config
from kuosan.nets import UNet
from kuosan.processes import DiscreteVP
from kuosan.train import train_from_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls and convolutions, so GPU-vs-CPU differences are rounding, not TF32's 10-bit mantissa."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def unet_denoiser(device: torch.device) -> kuosan.Denoiser:
    torch.manual_seed(0)
    net = UNet(1, 16, (1, 2), 1, (4,), groups=8, image_size=8).to(device).eval()
    return kuosan.Denoiser(net, DiscreteVP.linear(1000), prediction="eps")


@pytest.mark.parametrize("method", ["ddim", "dpmpp-2m", "dpmpp-3m", "unipc", "heun", "dpm-solver-3"])
def test_deterministic_samplers_agree_with_the_cpu(method):
    """The same network, start and grid on both devices: the endpoints agree to float32 rounding."""
    x_T = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = kuosan.sample(unet_denoiser(torch.device("cpu")), x_T, method=method, nfe=10)
        gpu = kuosan.sample(unet_denoiser(CUDA), x_T.to(CUDA), method=method, nfe=10)
    assert gpu.device.type == "cuda" and torch.isfinite(gpu).all()
    err = (gpu.cpu() - cpu).abs().max().item()
    assert err < 2e-3 * cpu.abs().max().item(), (method, err)


@pytest.mark.parametrize("method", ["ddpm", "euler-maruyama", "ancestral-sde"])
def test_stochastic_samplers_run_with_a_cuda_generator(method):
    """Noise drawn on the device from a CUDA generator: finite, and the same seed gives the same samples."""
    model = unet_denoiser(CUDA)
    x_T = torch.randn(8, 1, 8, 8, device=CUDA, generator=torch.Generator(CUDA).manual_seed(2))
    with torch.no_grad():
        a, b = (kuosan.sample(model, x_T, method=method, nfe=20, generator=torch.Generator(CUDA).manual_seed(3))
                for _ in range(2))
    assert a.device.type == "cuda" and torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_exact_mixture_denoiser_on_the_gpu_matches_the_cpu():
    """kuosan.analytic's exact mixture as a model on the GPU: the probability-flow endpoint agrees with the CPU's."""
    from conftest import mixture_2d

    gmm = mixture_2d()
    proc = kuosan.processes.VP()
    x_T = proc.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = kuosan.sample(gmm.denoiser(proc, "eps"), x_T, method="dpmpp-2m", nfe=20)
    gmm_gpu = kuosan.analytic.GaussianMixture(gmm.weights.to(CUDA), gmm.means.to(CUDA), gmm.covariances.to(CUDA))
    gpu = kuosan.sample(gmm_gpu.denoiser(proc, "eps"), x_T.to(CUDA), method="dpmpp-2m", nfe=20)
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-9


def cuda_config(**train):
    return toy_config(device="cuda", **train)


def test_bf16_training_on_cuda_resumes_bit_for_bit(tmp_path):
    """bf16 autocast on the GPU; a run killed at step 7 (last checkpoint 4) resumes to the same weights,
    EMA and optimizer state as the uninterrupted run."""
    cfg, data = cuda_config(bf16=True), toy_data(200, 0)
    full = train_run(cfg, tmp_path / "full", data)
    with pytest.raises(Crash):
        train_run(cfg, tmp_path / "killed", data, callback=crash_after(7))
    resumed = train_run(cfg, tmp_path / "killed", data, resume=True)
    assert full.step == resumed.step == 12
    assert_same_checkpoint(tmp_path / "full", tmp_path / "killed")


def test_bf16_loss_tracks_the_float32_loss(tmp_path):
    """The same 40 steps in float32 and under bf16 autocast: the losses agree to bf16's precision on average."""
    data = toy_data(2000, 0)
    losses = {}
    for bf16 in (False, True):
        seen = []
        train_run(cuda_config(bf16=bf16, steps=40, ckpt_every=0), tmp_path / str(bf16), data,
                  callback=lambda step, loss, seen=seen: seen.append(loss))
        losses[bf16] = torch.tensor(seen)
    assert torch.isfinite(losses[True]).all()
    rel = ((losses[True] - losses[False]).abs() / losses[False]).mean().item()
    assert rel < 0.05, rel


def test_a_run_trained_on_cuda_loads_and_samples_on_the_cpu(tmp_path):
    cfg, data = cuda_config(steps=8, ckpt_every=0), toy_data(200, 0)
    result = train_run(cfg, tmp_path, data)
    pipe = kuosan.load(result.checkpoint, device="cpu")
    assert next(pipe.denoiser.net.parameters()).device.type == "cpu"
    x = pipe.generate(16, method="dpmpp-2m", nfe=10, seed=0)
    assert x.device.type == "cpu" and torch.isfinite(x).all()
    on_gpu = kuosan.load(result.checkpoint, device="cuda").generate(16, method="dpmpp-2m", nfe=10, seed=0)
    assert on_gpu.device.type == "cuda" and torch.isfinite(on_gpu).all()


def test_unet_trains_on_cuda_with_bf16_through_the_loop(tmp_path):
    """The digits-sized U-Net, not only the toy MLP: 30 bf16 steps of `train_from_config` (the CLI's path) on the
    GPU lower the logged loss and leave a run that loads."""
    cfg = parse_config({
        "name": "unet-cuda", "out_dir": str(tmp_path), "process": {"kind": "discretevp"}, "data": {"kind": "digits"},
        "net": {"kind": "unet", "base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
                "attention_resolutions": [4]},
        "train": {"steps": 30, "batch_size": 64, "lr": 2e-3, "warmup": 0, "ckpt_every": 0, "log_every": 5,
                  "progress": False, "tensorboard": False, "device": "cuda", "bf16": True},
    })
    train_from_config(cfg, log=None)
    seen = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(seen) == 6 and seen[-1] < 0.7 * seen[0], seen
    assert kuosan.load(tmp_path, device="cpu").generate(4, method="ddim", nfe=5, seed=0).isfinite().all()
