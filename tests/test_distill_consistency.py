"""Consistency models (kuosan.distill.consistency, kuosan.losses.consistency): the boundary condition, the
distances and schedules against hand-computed numbers, CD's solver step against the exact ODE step, CD of an
exact mixture teacher and CT of a Gaussian approaching the exact endpoint map, and `kuosan distill consistency`
end to end (sample, load, resume, bad input)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROCESS_IDS, make_process, mixture_2d
from typer.testing import CliRunner

from kuosan.analytic import Gaussian
from kuosan.cli import app
from kuosan.denoiser import Denoiser
from kuosan.distill.consistency import ConsistencyObjective
from kuosan.losses.consistency import (
    distance,
    ect_ratio,
    ict_n,
    ict_weight,
    karras_levels,
    l2_distance,
    levels,
    lognormal_level_probs,
    pseudo_huber,
    pseudo_huber_c,
)
from kuosan.nets import build_net
from kuosan.processes import EDM
from kuosan.samplers import sample
from kuosan.train.ema import EMA

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def mlp(seed: int = 0, dtype=F64):
    torch.manual_seed(seed)
    return build_net("mlp", dim=2, hidden=64, depth=2, time_embedding="fourier").to(dtype)


# --- the boundary condition (book eq. 4.43) ------------------------------------------------------------------
@pytest.mark.parametrize("name", PROCESS_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_student_is_the_identity_at_t_min_exactly(name, dtype):
    """f(x, t_min) = x / alpha(t_min) bit for bit (the x0 of a noise-free x; = x where alpha(t_min) = 1), whatever F
    outputs; just above t_min it is not."""
    p = make_process(name)
    net = mlp(dtype=dtype)
    with torch.no_grad():
        for q in net.parameters():
            q.normal_(0, 3)  # a large, arbitrary F
    den = Denoiser(net, p, precondition="consistency")
    x = torch.randn(16, 2, dtype=dtype, generator=torch.Generator().manual_seed(0))
    t = torch.full((16,), p.t_min, dtype=F64)
    a = p.alpha(t[:1]).to(dtype)
    with torch.no_grad():
        f = den.x0(x, t)
        assert torch.equal(f, x / a)
        if float(p.alpha(t[:1])) == 1.0:
            assert torch.equal(f, x)
        t_up = p.t_of_log_snr(p.log_snr(t) - 0.5)
        assert not torch.allclose(den.x0(x, t_up), x / a, atol=1e-3)


# --- distances and schedules against hand-computed numbers ---------------------------------------------------
def test_distances_against_hand_computed_numbers():
    x = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert l2_distance(x, y).tolist() == [12.5, 0.0]  # mean of (9, 16)
    assert pseudo_huber(x, y, 1.0).tolist() == pytest.approx([math.sqrt(26) - 1, 0.0])
    assert pseudo_huber_c(64) == pytest.approx(0.00432)
    c = pseudo_huber_c(2)
    assert distance("pseudo-huber", x, y)[0].item() == pytest.approx(math.sqrt(25 + c * c) - c)
    with pytest.raises(ValueError, match="lpips"):
        distance("lpips", x, y)


def test_discretisation_curriculum_levels_and_weights_against_hand_computed_numbers():
    p = EDM()
    ts = karras_levels(p, 3)  # i = 1, 2, 3: (0.002^(1/7) + (i-1)/2 (80^(1/7) - 0.002^(1/7)))^7
    lo, hi = 0.002 ** (1 / 7), 80 ** (1 / 7)
    assert ts.tolist() == pytest.approx([0.002, (lo + (hi - lo) / 2) ** 7, 80.0], rel=1e-12)
    assert levels(p, ts).tolist() == pytest.approx(ts.tolist(), rel=1e-12)  # EDM: s = t
    # iCT eq. 8 with K = 1000, s0 = 10, s1 = 1280: K' = floor(1000 / 8) = 125
    assert [ict_n(k, 1000) for k in (0, 124, 125, 250, 874, 875, 999)] == [11, 11, 21, 41, 641, 1281, 1281]
    s = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    cdf = [math.erf((math.log(v) + 1.1) / (math.sqrt(2) * 2.0)) for v in (0.1, 1.0, 10.0)]
    want = torch.tensor([cdf[1] - cdf[0], cdf[2] - cdf[1]], dtype=F64)
    assert lognormal_level_probs(s).tolist() == pytest.approx((want / want.sum()).tolist(), rel=1e-12)
    assert ict_weight(s[:-1], s[1:]).tolist() == pytest.approx([1 / 0.9, 1 / 9.0])
    # ECT: r = s (1 - (1 + k sigmoid(-b s)) / q^(stage+1))
    r = ect_ratio(torch.tensor([2.0, 0.01], dtype=F64), stage=2, q=2.0, k=8.0, b=1.0)
    assert r[0].item() == pytest.approx(2.0 * (1 - (1 + 8 / (1 + math.exp(2.0))) / 8))
    assert r[1].item() == pytest.approx(0.01 * (1 - (1 + 8 / (1 + math.exp(0.01))) / 8))
    assert ect_ratio(torch.tensor([0.01], dtype=F64), stage=0).item() == 0.0  # clamped: the target is the data


# --- CD's solver step and target ---------------------------------------------------------------------------
def _cd_objective(solver: str, target_decay: float = 0.0, **kw):
    p = EDM()
    gm = mixture_2d()
    net = mlp()
    return ConsistencyObjective(net, lambda n: Denoiser(n, p, precondition="consistency"), mode="distill",
                                teacher=gm.denoiser(p, "x0"), solver=solver, target_decay=target_decay, **kw), gm


@pytest.mark.parametrize("solver", ["euler", "ddim", "heun", "dpm-solver-2", "dpmpp-2s"])
def test_the_cd_solver_step_is_one_step_of_the_exact_pf_ode(solver):
    """Psi from t' to t on the exact teacher, by hand from D = E[x0 | x_t] (EDM: dx/dt = (x - D) / t):
    Euler / DDIM x + (t - t') (x - D(x, t')) / t'; Heun adds the trapezoid correction; DPM-Solver-2 (Lu et al.
    2022, arXiv:2206.00927, Alg. 1, r = 1/2) under VE (alpha = 1, lambda = -log t) is the midpoint rule at the
    geometric mean s = sqrt(t t'): x_s = x + (s - t') d(x, t'), x_t = x + (t - t') d(x_s, s); DPM-Solver++(2S) is
    second order too: closer to a fine solve than Euler."""
    obj, gm = _cd_objective(solver)
    p = EDM()
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(3)) * 2.0
    t_from = torch.tensor([2.0, 2.0, 2.0, 0.5, 0.5, 0.5], dtype=F64)
    t_to = torch.tensor([1.5, 1.5, 1.5, 0.4, 0.4, 0.4], dtype=F64)
    got = obj.solver_step(x, t_from, t_to, {})
    tf, tt = t_from[:, None], t_to[:, None]
    d1 = (x - gm.x0(x, t_from, p)) / tf
    euler = x + (tt - tf) * d1
    heun = x + (tt - tf) * 0.5 * (d1 + (euler - gm.x0(euler, t_to, p)) / tt)
    if solver in ("euler", "ddim"):
        torch.testing.assert_close(got, euler, rtol=1e-10, atol=1e-10)
    elif solver == "heun":
        torch.testing.assert_close(got, heun, rtol=1e-10, atol=1e-10)
    elif solver == "dpm-solver-2":
        ts = (tf * tt).sqrt()
        xs = x + (ts - tf) * d1
        torch.testing.assert_close(got, x + (tt - tf) * (xs - gm.x0(xs, ts[:, 0], p)) / ts, rtol=1e-10, atol=1e-10)
    else:
        fine = torch.stack([sample(gm.denoiser(p, "x0"), x[i:i + 1], "heun", nfe=None, denoise_final=False,
                                   grid=torch.linspace(float(t_from[i]), float(t_to[i]), 201, dtype=F64))[0]
                            for i in range(6)])
        assert (got - fine).abs().max() < 0.5 * (euler - fine).abs().max()


def test_the_cd_target_is_the_target_network_at_the_teacher_step():
    """loss = d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(Psi(x_{t_{n+1}}), t_n)), rebuilt from the same draws."""
    obj, gm = _cd_objective("euler", target_decay=0.5, n=6)
    with torch.no_grad():  # make the target differ from the online net
        for q in obj.targets["target"].module.parameters():
            q.add_(0.1)
    x0 = gm.sample(32, generator=torch.Generator().manual_seed(0))
    loss = obj.loss({"x0": x0}, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    ts, s = obj.grid(6)
    idx = torch.randint(0, 5, (32,), generator=g)
    x_hi = x0 + ts[idx + 1][:, None] * z  # EDM: alpha = 1, sigma = t
    tf, tt = ts[idx + 1][:, None], ts[idx][:, None]
    x_lo = x_hi + (tt - tf) * (x_hi - gm.x0(x_hi, ts[idx + 1], EDM())) / tf
    p = EDM()
    with torch.no_grad():
        target = Denoiser(obj.targets["target"].module, p, precondition="consistency").x0(x_lo, ts[idx])
        online = Denoiser(obj.net, p, precondition="consistency").x0(x_hi, ts[idx + 1])
    torch.testing.assert_close(loss.detach(), ((online - target) ** 2).mean(1), rtol=1e-9, atol=1e-12)


# --- learning the endpoint map ------------------------------------------------------------------------------
def _train(obj, draw, steps, evaluate, lr=1e-3):
    """Adam on obj's loss; evaluate(EMA net) at step 0 and after `steps` steps."""
    opt = torch.optim.Adam(obj.net.parameters(), lr=lr)
    ema = EMA(obj.net, 0.99)
    g = torch.Generator().manual_seed(1)
    errors = [evaluate(ema.module)]
    for _ in range(steps):
        loss = obj.loss({"x0": draw(g)}, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step()
        ema.update(obj.net)
    return errors + [evaluate(ema.module)]


def test_cd_of_an_exact_mixture_teacher_approaches_the_pf_ode_endpoint_map():
    """The student's one-step map f(x_t, t) against the exact PF-ODE endpoint x_{t_min} (60 Heun steps of the
    exact mixture model), at t = 2, 10 and t_max = 80: the RMS error falls to under half its start."""
    obj, gm = _cd_objective("euler", target_decay=0.9, n=12, groups=2)
    p, teacher = EDM(), gm.denoiser(EDM(), "x0")
    cases = []
    for t in (2.0, 10.0, 80.0):
        x0 = gm.sample(128, generator=torch.Generator().manual_seed(7))
        x = x0 + t * torch.randn(x0.shape, generator=torch.Generator().manual_seed(8), dtype=F64)
        end = sample(teacher, x, "heun", nfe=None, grid=p.timesteps(60, "karras", t_start=t), denoise_final=False)
        cases.append((x, t, end))

    def evaluate(net):
        den = Denoiser(net, p, precondition="consistency")
        with torch.no_grad():
            return [float((den.x0(x, t) - end).pow(2).sum(1).mean().sqrt()) for x, t, end in cases]

    before, after = _train(obj, lambda g: gm.sample(128, generator=g), 200, evaluate, lr=2e-3)
    assert all(a < 0.5 * b for a, b in zip(after, before, strict=True)), (before, after)


def test_ct_of_a_gaussian_moves_toward_the_closed_form_affine_endpoint_map():
    """CT from scratch (iCT: pseudo-Huber, 1/(s_{n+1} - s_n), log-normal levels, doubling N, no EMA target) on
    N(mu, diag(v)): the endpoint map under EDM is x_min = mu + sqrt((v + s_min^2) / (v + t^2)) (x_t - mu)."""
    p = EDM()
    mu, var = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.09, 0.25], dtype=F64)
    gauss = Gaussian(mu, var)
    net = mlp()
    obj = ConsistencyObjective(net, lambda n: Denoiser(n, p, precondition="consistency"), mode="train",
                               target_decay=0.0, dist="pseudo-huber", curriculum=(4, 32), total_steps=300,
                               weighting="ict", level_sampling="lognormal")
    cases = []
    for t in (0.2, 0.5, 1.0):
        x = mu + (var + t * t).sqrt() * torch.randn(512, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
        cases.append((x, t, mu + ((var + 0.002**2) / (var + t * t)).sqrt() * (x - mu)))

    def evaluate(net):
        den = Denoiser(net, p, precondition="consistency")
        with torch.no_grad():
            return sum(float((den.x0(x, t) - end).pow(2).sum(1).mean().sqrt()) for x, t, end in cases) / 3

    before, after = _train(obj, lambda g: gauss.sample(128, generator=g), 300, evaluate, lr=2e-3)
    assert after < 0.7 * before, (before, after)


# --- the student's multistep grid: CM Alg. 1's tau --------------------------------------------------------------
@pytest.mark.parametrize("name", ["EDM", "VP", "VE"])
def test_the_restart_grid_evaluates_at_tau_then_karras_down_to_the_end(name):
    from kuosan.samplers.consistency import restart_grid

    proc = make_process(name)
    ts = proc.timesteps(4, "karras")
    grid = restart_grid(proc, ts, 0.65)
    assert len(grid) == 5 and grid[0] == ts[0] and grid[-1].item() == pytest.approx(ts[-1].item(), rel=1e-12)
    s = levels(proc, grid)
    r = s[1:] ** (1 / 7)  # EDM eq. 5 from s = tau to the end: s^(1/rho) evenly spaced
    assert s[1].item() == pytest.approx(0.65, rel=1e-9)
    assert torch.allclose(r[1:] - r[:-1], ((r[-1] - r[0]) / 3).expand(3), rtol=1e-6)
    with pytest.raises(ValueError, match="tau"):
        restart_grid(proc, ts, 1e4)


def test_the_sampler_option_tau_moves_only_the_later_evaluations():
    seen = []

    def f(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    den = Denoiser(f, EDM(), prediction="x0")
    sample(den, torch.randn(4, 2) * 80, "consistency", nfe=2, tau=0.65)
    sample(den, torch.randn(4, 2) * 80, "consistency", nfe=1, tau=0.65)  # one evaluation: tau is not used
    assert seen == pytest.approx([80.0, 0.65, 80.0])


# --- `kuosan distill consistency` end to end ------------------------------------------------------------------
FAST = ["--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.batch_size=32",
        "--set", "data.n=512"]


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    """A toy2d-edm run trained for 20 steps (EDM-preconditioned, like digits-edm)."""
    run = tmp_path_factory.mktemp("cm") / "teacher"
    res = invoke("train", "toy2d-edm", "--out", run, "--set", "train.steps=20", "--set", "train.sample_every=0", *FAST)
    assert res.exit_code == 0, res.output
    return run


def _distill(teacher, out, steps, *extra):
    return invoke("distill", "consistency", teacher, "--out", out, "--set", f"train.steps={steps}",
                  "--set", "train.ckpt_every=2", "--set", "train.sample_every=0", *FAST, *extra)


def test_distill_sample_and_load_a_consistency_student(toy_teacher, tmp_path):
    import json

    import numpy as np

    import kuosan
    from kuosan.config import load_config

    res = _distill(toy_teacher, tmp_path / "cd", 4)
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "cd" / "config.yaml")
    assert cfg.precondition == "consistency" and cfg.objective.mode == "distill"
    assert (cfg.sample.method, cfg.sample.nfe) == ("consistency", 2)
    grid = json.loads((tmp_path / "cd" / "grids" / "consistency-2.json").read_text())["times"]
    assert grid[1] == pytest.approx(cfg.objective.cm_tau, rel=1e-9)  # the student's tau (CM Alg. 1), stored
    for nfe in (1, 2, 4):
        res = invoke("sample", tmp_path / "cd", "--nfe", nfe, "--n", 20, "--out", tmp_path / f"s{nfe}.png")
        assert res.exit_code == 0, res.output
        assert ("using the tuned grid" in res.output) == (nfe > 1)
        x = np.load(tmp_path / f"s{nfe}.npz")["samples"]
        assert x.shape == (20, 2) and np.isfinite(x).all()
    pipe = kuosan.load(tmp_path / "cd")
    assert pipe.denoiser.precond.name == "consistency" and pipe.step == 4
    assert pipe.checkpoint.state["objective"]["teacher"]["path"] == str(toy_teacher.resolve())
    res = _distill(toy_teacher, tmp_path / "ect", 2, "--set", "objective.mode=tune")  # ECT writes a run too
    assert res.exit_code == 0, res.output
    assert kuosan.load(tmp_path / "ect").config.objective.mode == "tune"


def test_a_resumed_distillation_equals_an_uninterrupted_one(toy_teacher, tmp_path):
    from kuosan.train import load_checkpoint

    const = ("--set", "train.schedule=constant")  # a cosine schedule depends on train.steps itself
    assert _distill(toy_teacher, tmp_path / "a", 4, *const).exit_code == 0
    assert _distill(toy_teacher, tmp_path / "b", 2, *const).exit_code == 0
    res = invoke("resume", tmp_path / "b", "--set", "train.steps=4")
    assert res.exit_code == 0, res.output
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a.step == b.step == 4 and b.state["objective"]["step"] == 4
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
    for k in a.modules["target_target"]:
        assert torch.equal(a.modules["target_target"][k], b.modules["target_target"][k]), k


def test_bad_input_is_named(toy_teacher, tmp_path):
    from kuosan.config import ConfigError, parse_config
    from kuosan.distill import build_distillation
    from kuosan.registry import build_data

    res = invoke("train", "toy2d-ddpm", "--out", tmp_path / "ddpm", "--set", "train.steps=2",
                 "--set", "train.sample_every=0", *FAST)
    assert res.exit_code == 0, res.output
    res = _distill(tmp_path / "ddpm", tmp_path / "x", 2)
    assert res.exit_code != 0 and "EDM-preconditioned teacher" in res.output and "toy2d-ddpm" in res.output
    with pytest.raises(ValueError, match="needs a teacher"):  # CD without a teacher
        ConsistencyObjective(mlp(), lambda n: Denoiser(n, EDM(), precondition="consistency"), mode="distill")
    cfg = parse_config({"name": "cd", "precondition": "consistency", "process": {"kind": "edm"},
                        "data": {"kind": "toy2d", "n": 64}, "objective": {"kind": "consistency", "mode": "distill"}})
    with pytest.raises(ValueError, match="needs a teacher run"):
        build_distillation(cfg, build_data(cfg.data, 0))
    with pytest.raises(ConfigError, match="objective.mode"):
        parse_config({"objective": {"kind": "consistency", "mode": "distil"}})
