"""Training speed options (kuosan.train.speed): the fused AdamW step is Algorithm 2 of Loshchilov & Hutter, and
train.compile trains through torch.compile while checkpoints, EMA and kuosan.load see the plain network."""

from __future__ import annotations

import math

import pytest
import torch

import kuosan
from kuosan.checkpoint import load_checkpoint, optimizer_state
from kuosan.config import parse_config
from kuosan.train import speed, train_from_config

pytestmark = pytest.mark.usefixtures("one_thread")


def adamw_reference(theta, grads, lr, betas, eps, weight_decay):
    """AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101, Algorithm 2, torch's bias-corrected form), step by step."""
    m, v = torch.zeros_like(theta, dtype=torch.float64), torch.zeros_like(theta, dtype=torch.float64)
    theta = theta.double()
    for n, g in enumerate(grads, start=1):
        g = g.double()
        theta = theta * (1 - lr * weight_decay)  # decoupled weight decay
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** n), v / (1 - betas[1] ** n)
        theta = theta - lr * m_hat / (v_hat.sqrt() + eps)
    return theta


def test_fused_adamw_is_algorithm_2():
    """speed.adamw fuses the step on CPU, and five steps of it match the closed-form AdamW recursion."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, 3, generator=gen))
    grads = [torch.randn(7, 3, generator=gen) for _ in range(5)]
    want = adamw_reference(p.detach().clone(), grads, 1e-2, (0.9, 0.999), 1e-8, 0.1)
    opt = speed.adamw([{"params": [p]}], lr=1e-2, weight_decay=0.1)
    assert opt.param_groups[0]["fused"] is True
    for g in grads:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_adamw_falls_back_where_no_fused_kernel():
    """Parameters on a device without torch's fused kernel (here meta) get its default implementation."""
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert speed.adamw([{"params": [p]}], lr=1e-3).param_groups[0]["fused"] is None


def digits_config(out, **train):
    return parse_config({
        "name": "speed", "out_dir": str(out), "data": {"kind": "digits"},
        "net": {"kind": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1},
        "train": {"steps": 3, "batch_size": 16, "threads": 1, "ckpt_every": 0, "progress": False,
                  "tensorboard": False, **train},
    })


def trained(cfg):
    result = train_from_config(cfg, log=None)
    return result, load_checkpoint(cfg.out_dir)


def test_compiled_training_saves_the_plain_network(tmp_path, monkeypatch):
    """train.compile=true trains through torch.compile (here with its eager backend: dynamo's graph capture and
    wrapper, no code generation), and the checkpoint is the plain run's: the same keys (no `_orig_mod.`),
    the same weights, EMA and optimizer moments, loadable by kuosan.load."""
    calls = []

    def eager_compile(model, **kw):
        calls.append(model)
        return torch_compile(model, backend="eager", **kw)

    torch_compile = torch.compile
    monkeypatch.setattr(speed.torch, "compile", eager_compile)
    plain_result, plain = trained(digits_config(tmp_path / "plain"))
    assert not calls
    result, ckpt = trained(digits_config(tmp_path / "compiled", compile=True))
    assert len(calls) == 1 and isinstance(calls[0], torch.nn.Module)
    assert ckpt.weights.keys() == plain.weights.keys() and ckpt.ema.keys() == plain.ema.keys()
    assert not any("_orig_mod" in k for k in (*ckpt.weights, *ckpt.ema))
    for got, want in ((ckpt.weights, plain.weights), (ckpt.ema, plain.ema)):
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    assert result.loss == pytest.approx(plain_result.loss, rel=1e-5)
    assert optimizer_state(ckpt)["param_groups"][0]["fused"] is True
    x = kuosan.load(tmp_path / "compiled", device="cpu").generate(2, method="ddim", nfe=2)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.slow
def test_inductor_compiled_training_matches_the_plain_run(tmp_path):
    """The real thing (inductor, gcc): a compiled 3-step run ends at the plain run's loss and weights up to
    float rounding of fused kernels, with the plain run's state-dict keys; its checkpoint loads and samples."""
    plain_result, plain = trained(digits_config(tmp_path / "plain"))
    result, ckpt = trained(digits_config(tmp_path / "compiled", compile=True))
    assert ckpt.weights.keys() == plain.weights.keys()
    assert math.isclose(result.loss, plain_result.loss, rel_tol=1e-3)
    for k in plain.weights:
        torch.testing.assert_close(ckpt.weights[k], plain.weights[k], rtol=1e-3, atol=1e-4, msg=k)
    x = kuosan.load(tmp_path / "compiled", device="cpu").generate(2, method="ddim", nfe=2)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_compile_is_off_by_default():
    assert parse_config({}).train.compile is False


def toy_config(out, **train):
    return parse_config({
        "name": "toy", "out_dir": str(out), "data": {"kind": "toy2d"}, "net": {"kind": "mlp", "hidden": 32, "depth": 2},
        "train": {"steps": 8, "batch_size": 32, "lr": 1e-3, "ckpt_every": 4, "threads": 1, "progress": False,
                  "tensorboard": False, **train},
    })


def test_a_run_from_before_fusing_resumes_with_its_own_adamw(tmp_path, monkeypatch):
    """A checkpoint written by torch's default AdamW (fused=None in its param groups) resumes, under today's
    fused default, with the default implementation: the resumed run ends bit for bit where the unfused run does."""
    fused_adamw = speed.adamw
    with monkeypatch.context() as m:
        m.setattr(speed, "adamw", lambda groups, **kw: torch.optim.AdamW(list(groups), **kw))
        m.setattr("kuosan.train.loop.adamw", lambda groups, **kw: torch.optim.AdamW(list(groups), **kw))
        train_from_config(toy_config(tmp_path / "old"), log=None)
        train_from_config(toy_config(tmp_path / "killed", steps=4), log=None)
    assert speed.adamw is fused_adamw
    train_from_config(toy_config(tmp_path / "killed"), resume=True, log=None)
    old, resumed = load_checkpoint(tmp_path / "old"), load_checkpoint(tmp_path / "killed")
    assert resumed.step == old.step == 8
    assert optimizer_state(resumed)["param_groups"][0]["fused"] is None
    for k in old.weights:
        assert torch.equal(resumed.weights[k], old.weights[k]), k
    fresh = train_from_config(toy_config(tmp_path / "new"), log=None).checkpoint
    assert optimizer_state(load_checkpoint(fresh))["param_groups"][0]["fused"] is True
