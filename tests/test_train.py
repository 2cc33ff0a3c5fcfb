"""The training loop: it learns, resumes bit for bit, stops on NaN, saves on SIGTERM, never unpickles."""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import signal

import pytest
import torch
from safetensors.torch import load_file

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.config import config_dict, parse_config
from kuosan.eval.metrics import sliced_wasserstein
from kuosan.pipeline import generate
from kuosan.registry import build_denoiser, build_network, net_arguments
from kuosan.rng import batch_indices, seed_init
from kuosan.train import (
    DenoisingObjective,
    TrainingDiverged,
    build_loss,
    ema_decay,
    find_checkpoint,
    fit,
    learning_rate,
    load_checkpoint,
    optimizer_state,
)
from kuosan.train.ema import EMA

MIXTURE = GaussianMixture(
    weights=[0.5, 0.5],
    means=[[-1.5, 0.0], [1.5, 0.5]],
    variances=[[[0.05, 0.0], [0.0, 0.05]], [[0.05, 0.0], [0.0, 0.05]]],
)


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_data(n: int, seed: int) -> torch.Tensor:
    return MIXTURE.sample(n, generator=torch.Generator().manual_seed(seed)).float()


def toy_config(**train):
    base = {"steps": 12, "batch_size": 32, "lr": 1e-3, "warmup": 3, "ckpt_every": 4, "log_every": 2,
            "progress": False, "tensorboard": False}
    return parse_config({
        "name": "toy",
        "process": {"kind": "vp"},
        "net": {"kind": "mlp", "hidden": 32, "depth": 2},
        "train": {**base, **train},
        "sample": {"method": "ddpm", "nfe": 100, "n": 500},
    })


def run(cfg, run_dir, data, *, resume=False, callback=None, loss_fn=None):
    """What train_from_config does, with the data and loss given (the meta lets kuosan.load rebuild the net)."""
    seed_init(cfg.train.seed)
    net = build_network(cfg, (2,))
    meta = {"config": config_dict(cfg), "data_shape": [2], "net": {"kind": "mlp", **net_arguments(cfg, (2,))}}
    objective = DenoisingObjective(net, functools.partial(build_denoiser, cfg), loss_fn or build_loss(cfg.loss))
    return fit(objective, data, cfg.train, run_dir, resume=resume, callback=callback, meta=meta, sample=cfg.sample)


def assert_same_checkpoint(a, b):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step
    for got, want in ((ca.weights, cb.weights), (ca.ema, cb.ema)):
        assert got.keys() == want.keys()
        for k in got:
            assert torch.equal(got[k], want[k]), k
    oa, ob = optimizer_state(ca), optimizer_state(cb)
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][k]), (i, k)


# --- it learns -------------------------------------------------------------------------------------------
def test_toy_model_learns_the_mixture(tmp_path):
    """After a few hundred steps the samples' sliced Wasserstein distance to fresh data is a fraction of the
    untrained network's, and near the distance between two samples of the data itself."""
    cfg = toy_config(steps=400, batch_size=256, lr=3e-3, warmup=50, ckpt_every=0, ema_decay=0.99, log_every=100)
    data, held_out = toy_data(20000, 0), toy_data(2000, 1)
    result = run(cfg, tmp_path, data)
    trained = kuosan.load(result.checkpoint, device="cpu").denoiser  # EMA weights, from the checkpoint alone
    seed_init(cfg.train.seed)
    untrained = build_denoiser(cfg, build_network(cfg, (2,)))

    def sw(den):
        x = generate(den, (2000, 2), method="ddpm", nfe=200, generator=torch.Generator().manual_seed(5))
        return sliced_wasserstein(x, held_out)

    floor = sliced_wasserstein(toy_data(2000, 2), held_out)  # two samples of the data itself
    prior = sliced_wasserstein(torch.randn(2000, 2, generator=torch.Generator().manual_seed(3)), held_out)
    before, after = sw(untrained), sw(trained)
    print(f"SW untrained {before:.3f}, prior {prior:.3f}, trained {after:.3f}, data-vs-data {floor:.3f}")
    assert after < 0.1 * before and after < 0.5 * prior, (after, before, prior)
    assert after < 2 * floor, (after, floor)


# --- resume ----------------------------------------------------------------------------------------------
class Crash(Exception):
    """Stands in for a kill -9: raised from inside the loop, nothing gets saved."""


def crash_after(step_to_die: int):
    def callback(step, loss):
        if step == step_to_die:
            raise Crash

    return callback


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    cfg, data = toy_config(), toy_data(200, 0)
    full = run(cfg, tmp_path / "full", data)
    with pytest.raises(Crash):
        run(cfg, tmp_path / "killed", data, callback=crash_after(7))  # checkpoints at 4; steps 5-7 are lost
    assert find_checkpoint(tmp_path / "killed").name == "step-00000004"
    resumed = run(cfg, tmp_path / "killed", data, resume=True)  # a fresh network and optimizer, as a new process
    assert full.step == resumed.step == 12
    assert_same_checkpoint(tmp_path / "full", tmp_path / "killed")


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(tmp_path):
    cfg, data = toy_config(), toy_data(200, 0)
    run(cfg, tmp_path / "full", data)

    def terminate(step, loss):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = run(cfg, tmp_path / "stopped", data, callback=terminate)
    assert stopped.interrupted and stopped.step == 6
    assert find_checkpoint(tmp_path / "stopped").name == "step-00000006"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop gives the handlers back
    run(cfg, tmp_path / "stopped", data, resume=True)
    assert_same_checkpoint(tmp_path / "full", tmp_path / "stopped")


def test_training_into_an_existing_run_needs_resume(tmp_path):
    cfg, data = toy_config(steps=2, ckpt_every=0), toy_data(100, 0)
    run(cfg, tmp_path, data)
    with pytest.raises(FileExistsError, match="--resume"):
        run(cfg, tmp_path, data)


def test_resume_with_another_seed_is_refused(tmp_path):
    data = toy_data(100, 0)
    run(toy_config(steps=2), tmp_path, data)
    with pytest.raises(ValueError, match="seed 0"):
        run(toy_config(steps=4, seed=1), tmp_path, data, resume=True)


# --- NaN ------------------------------------------------------------------------------------------------
def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg, data = toy_config(ckpt_every=3), toy_data(200, 0)
    calls = {"n": 0}
    base = build_loss(cfg.loss)

    def poisoned(denoiser, x0, **kw):
        calls["n"] += 1
        loss = base(denoiser, x0, **kw)
        return loss * math.nan if calls["n"] == 8 else loss

    with pytest.raises(TrainingDiverged) as e:
        run(cfg, tmp_path, data, loss_fn=poisoned)
    msg = str(e.value)
    assert "the loss is nan at step 8" in msg and "checkpoints/step-00000006 (step 6)" in msg, msg
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 6 and all(torch.isfinite(v).all() for v in ckpt.weights.values())
    assert not (tmp_path / "checkpoints" / "step-00000008").exists()


def test_nan_before_any_checkpoint_says_so(tmp_path):
    cfg = toy_config(ckpt_every=0)

    def nan_loss(denoiser, x0, **kw):
        return torch.full((x0.shape[0],), math.inf, requires_grad=True)

    with pytest.raises(TrainingDiverged, match=r"inf at step 1; .*no checkpoint had been written yet"):
        run(cfg, tmp_path, toy_data(100, 0), loss_fn=nan_loss)


# --- checkpoints: safetensors + JSON only, atomic ----------------------------------------------------
def test_checkpoints_never_go_through_pickle(tmp_path, monkeypatch):
    cfg, data = toy_config(steps=4, ckpt_every=2), toy_data(100, 0)
    run(cfg, tmp_path, data)
    ckpt_dir = find_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "ema.safetensors", "optimizer.safetensors", "state.json", "weights.safetensors"]
    json.loads((ckpt_dir / "state.json").read_text())  # plain JSON
    plain = load_file(str(ckpt_dir / "weights.safetensors"))  # readable by safetensors alone

    def no_pickle(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    den = kuosan.load(tmp_path, ema=False, device="cpu").denoiser
    for k, v in den.net.state_dict().items():
        assert torch.equal(v, plain[k])
    run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 6})}), tmp_path, data, resume=True)
    assert load_checkpoint(tmp_path).step == 6


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from kuosan import checkpoint as ck

    cfg, data = toy_config(steps=8, ckpt_every=2, keep=2), toy_data(100, 0)
    real, calls = ck.save_file, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # the 3rd checkpoint's first file (3 files per checkpoint)
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(ck, "save_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        run(cfg, tmp_path, data)
    assert load_checkpoint(tmp_path).step == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000002", "step-00000004"]


def test_old_checkpoints_are_pruned(tmp_path):
    run(toy_config(steps=10, ckpt_every=2, keep=2), tmp_path, toy_data(100, 0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000008", "step-00000010"]


# --- the pieces ---------------------------------------------------------------------------------------------
def test_ema_warmup_schedule():
    assert ema_decay(0.999, 0) == pytest.approx(1 / 10)
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 10_000) == 0.999
    assert ema_decay(0.9, 5, warmup=False) == 0.9


def test_ema_update_is_the_moving_average():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, decay=0.5, warmup=True)
    expected = 1.0
    for n, w in enumerate([3.0, -1.0, 2.0, 5.0]):
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update(net)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
        assert ema.module.weight.item() == pytest.approx(expected)
    assert ema.updates == 4


def test_learning_rate_warmup_and_cosine():
    o = toy_config(lr=1.0, warmup=4, steps=14, schedule="cosine").train
    assert [learning_rate(o, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(o, 9) == pytest.approx(0.5)  # half-way through the cosine
    assert learning_rate(o, 14) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(toy_config(lr=2.0, warmup=0).train, 100) == 2.0


def test_batches_visit_every_example_once_per_epoch():
    n, b = 10, 4
    stream = torch.cat([batch_indices(n, b, step, seed=3) for step in range(5)])  # 20 = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # each epoch its own permutation
    assert torch.equal(batch_indices(n, b, 3, seed=3), stream[12:16])  # a step's batch depends on (seed, step) only
    assert not torch.equal(batch_indices(n, b, 3, seed=4), stream[12:16])


def test_bf16_autocast_trains(tmp_path):
    result = run(toy_config(steps=3, bf16=True, ckpt_every=0), tmp_path, toy_data(100, 0))
    assert math.isfinite(result.loss)
    assert all(v.dtype == torch.float32 for v in load_checkpoint(tmp_path).weights.values())
