"""Objectives: a target network that follows the online weights, frozen teachers, label dropout, and a
killed run with a target that resumes bit for bit."""

from __future__ import annotations

import functools

import pytest
import torch

from kuosan.config import config_dict, parse_config
from kuosan.registry import Dataset, build_denoiser, build_network, net_arguments
from kuosan.rng import seed_init
from kuosan.train import DenoisingObjective, Objective, build_loss, find_checkpoint, fit, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_config(**train):
    base = {"steps": 12, "batch_size": 32, "lr": 1e-3, "warmup": 3, "ckpt_every": 4, "log_every": 2,
            "progress": False, "tensorboard": False}
    return parse_config({"name": "toy", "process": {"kind": "vp"}, "net": {"kind": "mlp", "hidden": 32, "depth": 2},
                         "train": {**base, **train}})


class SelfDistillation(Objective):
    """A stand-in for consistency distillation's shape: a frozen teacher, an EMA target inside the loss.
    loss = |D_online(x_t) - teacher(x_t)|^2 + |D_online(x_t) - sg(D_target(x_t))|^2 at random t."""

    kind = "self-distillation"

    def __init__(self, cfg, net, teacher, target_decay=0.9):
        super().__init__(net)
        self.cfg = cfg
        self.add_frozen("teacher", teacher)
        self.add_target("target", target_decay)

    def loss(self, batch, generator):
        x0 = batch["x0"]
        online = build_denoiser(self.cfg, self.model)
        t = torch.rand(len(x0), generator=generator, dtype=torch.float64) * 0.9 + 0.05
        x_t = online.process.q_sample(x0, t, torch.randn(x0.shape, generator=generator)) if hasattr(
            online.process, "q_sample") else x0 + t[:, None].float() * torch.randn(x0.shape, generator=generator)
        out = online(x_t, t)
        with torch.no_grad():
            want_teacher = self.frozen["teacher"](x_t, t.float())
            want_target = self.targets["target"].module(x_t, t.float())
        return ((out - want_teacher) ** 2 + (out - want_target) ** 2).mean(1)


def _run(cfg, run_dir, data, *, resume=False, callback=None, decay=0.9):
    seed_init(cfg.train.seed)
    net = build_network(cfg, (2,))
    torch.manual_seed(123)
    teacher = build_network(cfg, (2,))
    meta = {"config": config_dict(cfg), "data_shape": [2], "net": {"kind": "mlp", **net_arguments(cfg, (2,))}}
    obj = SelfDistillation(cfg, net, teacher, decay)
    return fit(obj, data, cfg.train, run_dir, resume=resume, callback=callback, meta=meta), obj


class Crash(Exception):
    pass


def test_a_target_network_follows_the_online_weights_by_its_own_ema():
    cfg = toy_config()
    net = build_network(cfg, (2,))
    obj = Objective(net)
    tgt = obj.add_target("target", 0.75)
    before = [p.clone() for p in tgt.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    obj.after_step()
    for b, p_t, p in zip(before, tgt.module.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p_t, 0.75 * b + 0.25 * p)  # no warm-up: the target's own rate from step 1
    assert not any(p.requires_grad for p in tgt.module.parameters())


def test_frozen_modules_are_not_trained(tmp_path):
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    cfg = toy_config(steps=3, ckpt_every=0)
    _, obj = _run(cfg, tmp_path, data)
    teacher = obj.frozen["teacher"]
    torch.manual_seed(123)
    fresh = build_network(cfg, (2,))
    for a, b in zip(teacher.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    ckpt = load_checkpoint(tmp_path)
    assert set(ckpt.modules) == {"target_target"}  # targets are saved, teachers are not
    assert ckpt.state["objective"]["kind"] == "self-distillation"
    assert ckpt.state["objective"]["targets"]["target"] == {"decay": 0.9, "updates": 3}


def test_a_killed_run_with_a_target_network_resumes_bit_for_bit(tmp_path):
    cfg = toy_config()
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    full, _ = _run(cfg, tmp_path / "full", data)

    def die(step, loss):
        if step == 7:
            raise Crash

    with pytest.raises(Crash):
        _run(cfg, tmp_path / "killed", data, callback=die)
    assert find_checkpoint(tmp_path / "killed").name == "step-00000004"
    resumed, _ = _run(cfg, tmp_path / "killed", data, resume=True)
    assert full.step == resumed.step == 12
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "killed")
    for got, want in ((a.weights, b.weights), (a.ema, b.ema), (a.modules["target_target"], b.modules["target_target"])):
        for k in got:
            assert torch.equal(got[k], want[k]), k
    assert a.state["objective"] == b.state["objective"]
    # the target really differs from the EMA and from the online weights (else the test could not fail)
    k = next(iter(a.weights))
    assert not torch.equal(a.modules["target_target"][k], a.weights[k])
    assert not torch.equal(a.modules["target_target"][k], a.ema[k])


def test_resume_without_the_target_in_the_checkpoint_is_refused(tmp_path):
    from kuosan.train import DenoisingObjective

    cfg = toy_config(steps=2, ckpt_every=0)
    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    net = build_network(cfg, (2,))
    meta = {"config": config_dict(cfg), "data_shape": [2], "net": {"kind": "mlp", **net_arguments(cfg, (2,))}}
    fit(DenoisingObjective(net, functools.partial(build_denoiser, cfg), build_loss(cfg.loss)), data, cfg.train,
        tmp_path, meta=meta)
    with pytest.raises(ValueError, match="no target network 'target'"):
        _run(toy_config(steps=4, ckpt_every=0), tmp_path, data, resume=True)


def test_label_dropout_replaces_labels_by_the_null_class_at_rate_p_uncond():
    cfg = toy_config()
    obj = DenoisingObjective(build_network(cfg, (2,), 10), functools.partial(build_denoiser, cfg),
                             build_loss(cfg.loss), p_uncond=0.25, null_class=10)
    y = torch.randint(0, 10, (40_000,), generator=torch.Generator().manual_seed(0))
    out = obj.drop_labels(y, torch.Generator().manual_seed(1))
    dropped = out == 10
    assert abs(dropped.float().mean().item() - 0.25) < 0.01  # binomial s.e. 0.002
    assert torch.equal(out[~dropped], y[~dropped])
    with pytest.raises(ValueError, match="null class"):
        DenoisingObjective(build_network(cfg, (2,)), functools.partial(build_denoiser, cfg), build_loss(cfg.loss),
                           p_uncond=0.1)


def test_the_loss_sees_dropped_labels_and_the_data_rows(tmp_path):
    """The denoising objective passes (x0, y) rows of the Dataset, y dropped to the null class at p_uncond."""
    seen = []

    def loss_fn(den, x0, generator=None, y=None):
        seen.append((x0.clone(), y.clone()))
        return den(x0, torch.full((len(x0),), 0.5, dtype=torch.float64), y=y).square().mean(1)

    cfg = toy_config(steps=1, batch_size=64, ckpt_every=0)
    x = torch.arange(128, dtype=torch.float32)[:, None].repeat(1, 2)
    ds = Dataset(x, torch.arange(128) % 4, 4)
    net = build_network(cfg, (2,), 4)
    obj = DenoisingObjective(net, functools.partial(build_denoiser, cfg), loss_fn, p_uncond=0.5, null_class=4)
    meta = {"config": config_dict(cfg), "data_shape": [2], "num_classes": 4,
            "net": {"kind": "mlp", **net_arguments(cfg, (2,), 4)}}
    fit(obj, ds, cfg.train, tmp_path, meta=meta)
    x0, y = seen[0]
    rows = x0[:, 0].long()
    kept = y != 4
    assert torch.equal(y[kept], rows[kept] % 4) and 10 < int((~kept).sum()) < 54


class TwoRates(SelfDistillation):
    """SelfDistillation whose first layer trains at `scale` times train.lr (Objective.param_groups)."""

    scale = 1.0

    def param_groups(self):
        first = list(self.net.parameters())[:2]
        rest = [p for p in self.net.parameters() if all(p is not q for q in first)]
        return [{"params": rest}, {"params": first, "lr_scale": self.scale}]


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_param_groups_scale_the_learning_rate_per_group(tmp_path, scale):
    """Adam's first step moves every parameter with |grad| >> eps by lr (its m/sqrt(v) = sign(grad)): the group
    with lr_scale k moves by k lr (k = 0: not at all), the others by lr (warm-up: lr/3 at step 0)."""
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    cfg = toy_config(steps=1, ckpt_every=0)
    seed_init(cfg.train.seed)
    net = build_network(cfg, (2,))
    torch.manual_seed(123)
    teacher = build_network(cfg, (2,))
    before = [p.detach().clone() for p in net.parameters()]
    obj = TwoRates(cfg, net, teacher)
    obj.scale = scale
    meta = {"config": config_dict(cfg), "data_shape": [2], "net": {"kind": "mlp", **net_arguments(cfg, (2,))}}
    fit(obj, data, cfg.train, tmp_path, meta=meta)
    moves = [(p.detach() - b).abs().max().item() for p, b in zip(net.parameters(), before, strict=True)]
    lr0 = cfg.train.lr / 3
    assert moves[0] == pytest.approx(scale * lr0, rel=1e-3, abs=1e-12)
    assert max(moves[2:]) == pytest.approx(lr0, rel=1e-3)
