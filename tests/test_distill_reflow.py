"""Rectified-flow reflow (Liu et al. 2022, arXiv:2209.03003): pairs are the teacher's exact ODE endpoints, the RF
loss's minimiser on a Gaussian coupling is the closed-form conditional mean, straightness against closed forms,
reflow of a straight coupling gives a one-step map, and the `kuosan distill reflow` run end to end."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.cli import app
from kuosan.denoiser import Denoiser
from kuosan.distill import distill_config
from kuosan.distill.pairs import PAIRS_FILE, load_pairs, make_pairs, pairs_dataset, save_pairs
from kuosan.distill.reflow import ReflowObjective, one_step_loss, rf_loss
from kuosan.distill.straightness import straightness
from kuosan.processes import EDM, RectifiedFlow
from kuosan.registry import Dataset

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
MU, S0 = torch.tensor([1.0, -2.0], dtype=F64), 0.5


def gaussian(s0: float = S0) -> GaussianMixture:
    return GaussianMixture([1.0], MU[None], torch.full((1, 2), s0**2, dtype=F64))


# --- pairs ------------------------------------------------------------------------------------------------
def test_pairs_are_the_exact_pf_ode_endpoints_of_the_prior_noise():
    """EDM teacher of N(mu, s0^2): x -> x0_hat(x_{t_min}) with x_{t_min} the affine PF-ODE map of x_T = 80 z, at
    Heun's second order (the error falls 4x per doubling of the NFE)."""
    p = EDM()
    den = gaussian().denoiser(p, "x0")
    errors = []
    for nfe in (199, 399):
        pairs = make_pairs(den, 200, (2,), "heun", nfe, seed=3, batch_size=150)
        z, x = pairs["z"].double(), pairs["x"].double()
        s_T, s_min = p.t_max, p.t_min
        x_min = MU + math.sqrt((S0**2 + s_min**2) / (S0**2 + s_T**2)) * (p.prior_std * z - MU)
        exact = MU + S0**2 / (S0**2 + s_min**2) * (x_min - MU)  # the sampler's final denoise at t_min
        errors.append(float((x - exact).abs().max()))
    assert abs(z.mean()) < 0.2 and abs(z.std() - 1) < 0.15  # the student's noise is standard normal
    assert errors[1] < 1e-3 and 3.0 < errors[0] / errors[1] < 5.0
    again = make_pairs(den, 200, (2,), "heun", 399, seed=3, batch_size=200)
    assert torch.equal(again["x"], pairs["x"]) and torch.equal(again["z"], pairs["z"])  # deterministic


def test_pairs_file_round_trip_and_refusals(tmp_path):
    pairs = {"z": torch.randn(5, 2), "x": torch.randn(5, 2), "y": torch.arange(5) % 3}
    meta = {"objective.rf_pairs": 5, "teacher": "t"}
    path = save_pairs(pairs, tmp_path / PAIRS_FILE, meta)
    back = load_pairs(path, meta)
    assert all(torch.equal(back[k], v) for k, v in pairs.items())
    with pytest.raises(ValueError, match=r"objective.rf_pairs=5 but this run asks for 7"):
        load_pairs(path, {**meta, "objective.rf_pairs": 7})
    ds = pairs_dataset(back, Dataset(torch.zeros(9, 2), torch.zeros(9, dtype=torch.long), 3))
    b = ds.batch(torch.tensor([4, 1]))
    assert torch.equal(b["x0"], pairs["x"][[4, 1]]) and torch.equal(b["z"], pairs["z"][[4, 1]])
    assert torch.equal(b["y"], pairs["y"][[4, 1]]) and ds.num_classes == 3
    with pytest.raises(ValueError, match="not a deterministic ODE solver"):
        make_pairs(gaussian().denoiser(EDM(), "x0"), 4, (2,), "euler-maruyama", 10)


# --- the RF loss ------------------------------------------------------------------------------------------
def _affine_velocity(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """E[z - x | x_t] for x ~ N(MU, S0^2), z ~ N(0, 1) independent, x_t = (1 - t) x + t z: Gaussian regression."""
    t = t.reshape(-1, 1)
    var = (1 - t) ** 2 * S0**2 + t**2
    cov = t - (1 - t) * S0**2  # Cov(z - x, x_t)
    return -MU + cov / var * (x_t - (1 - t) * MU)


def test_rf_loss_minimiser_is_the_affine_conditional_mean():
    p = RectifiedFlow(t_min=0.0)
    exact = Denoiser(lambda x, t: _affine_velocity(t, x), p, "velocity")
    g = torch.Generator().manual_seed(0)
    n, t0 = 200_000, 0.3
    x = MU + S0 * torch.randn(n, 2, generator=g, dtype=F64)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    t = torch.full((n,), t0, dtype=F64)
    x_t = (1 - t0) * x + t0 * z
    assert torch.allclose(gaussian().denoiser(p, "velocity").velocity(x_t[:50], t[:50]),
                          _affine_velocity(t[:50], x_t[:50]), atol=1e-9)  # kuosan's exact velocity is the same
    loss = rf_loss(exact, x, z, t).mean()
    var_cond = 1 + S0**2 - (t0 - (1 - t0) * S0**2) ** 2 / ((1 - t0) ** 2 * S0**2 + t0**2)
    assert loss.item() == pytest.approx(var_cond, rel=0.02)  # the minimum: Var(z - x | x_t)
    shifted = Denoiser(lambda x, t: _affine_velocity(t, x) + 0.3, p, "velocity")
    assert (rf_loss(shifted, x, z, t).mean() - loss).item() == pytest.approx(0.09, rel=0.05)  # + c^2 off the minimum
    assert one_step_loss(exact, x, z).mean().item() == pytest.approx(1 + S0**2 - 1 / 1, abs=0.01)  # t=1: Var(x)


# --- straightness -----------------------------------------------------------------------------------------
def _analytic_S(s_a: float, s_b: float, r2: float, s0: float, n: int = 200_001) -> float:
    """E||r||^2 / c(s_a)^2 * int_0^1 ((c(s_b) - c(s_a)) - (s_b - s_a) c'(s(u)))^2 du, c(s)^2 = (1-s)^2 s0^2 + s^2:
    the exact Gaussian PF-ODE path in RF coordinates is y(s) = (1 - s) mu + c(s) / c(s_a) r."""
    s = torch.linspace(s_a, s_b, n, dtype=F64)
    c = lambda s: torch.sqrt((1 - s) ** 2 * s0**2 + s**2)  # noqa: E731
    dc = (s - (1 - s) * s0**2) / c(s)
    f = ((c(torch.tensor(s_b)) - c(torch.tensor(s_a))) - (s_b - s_a) * dc) ** 2
    return float(r2 / c(torch.tensor(s_a)) ** 2 * torch.trapezoid(f, dx=1.0 / (n - 1)))


@pytest.mark.parametrize("proc", [RectifiedFlow(t_min=0.0), EDM()], ids=["rf", "edm"])
def test_straightness_matches_the_gaussian_closed_form(proc):
    den = gaussian().denoiser(proc, "x0")
    x_T = proc.prior_std * torch.randn(300, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    st = straightness(den, x_T, steps=200)
    a, s = proc.alpha(torch.tensor([proc.t_max, proc.t_min], dtype=F64)), proc.sigma(
        torch.tensor([proc.t_max, proc.t_min], dtype=F64))
    s_a, s_b = float(s[0] / (a[0] + s[0])), float(s[1] / (a[1] + s[1]))
    r = x_T / (a[0] + s[0]) - (1 - s_a) * MU
    want = _analytic_S(s_a, s_b, float(r.pow(2).sum(1).mean()), S0)
    assert want > 0.05  # a curved flow
    assert st.S == pytest.approx(want, rel=2e-3)
    assert 0 < st.relative < 1


def test_straightness_of_a_point_mass_is_zero_and_of_a_wrong_flow_is_not():
    p = RectifiedFlow(t_min=0.0)
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    point = gaussian(1e-5).denoiser(p, "x0")
    assert straightness(point, x_T, steps=20).S < 1e-8  # paths z -> mu are straight lines
    curved = gaussian(3.0).denoiser(p, "x0")
    assert straightness(curved, x_T, steps=20).S > 0.1


# --- reflow of a straight coupling: one Euler step is the pair map ----------------------------------------
def test_reflow_of_a_straight_coupling_learns_the_one_step_map(tmp_path):
    from kuosan.nets import build_net
    from kuosan.train.loop import fit

    cfg = kuosan.config.TrainConfig(steps=150, batch_size=256, lr=5e-3, ema_decay=0.9, ckpt_every=0,
                                    progress=False, tensorboard=False, threads=1)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2048, 2, generator=g)
    x = MU.float() + S0 * z  # the (straight) Gaussian OT coupling z -> mu + s0 z
    p = RectifiedFlow(t_min=0.0)
    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=32, depth=2)
    obj = ReflowObjective(net, lambda n: Denoiser(n, p, "velocity"), pairs_dataset({"z": z, "x": x}, Dataset(x)),
                          "reflow", {})
    res = fit(obj, obj.train_data, cfg, tmp_path)
    assert res.loss < 0.02  # a deterministic straight coupling: the RF loss's minimum is 0
    zt = torch.randn(500, 2, generator=g)
    one = kuosan.sample(Denoiser(net, p, "velocity"), zt, method="consistency", nfe=1)  # z - v(z, 1)
    assert (one - (MU.float() + S0 * zt)).pow(2).mean().sqrt() < 0.1


# --- the command --------------------------------------------------------------------------------------------
def test_cli_reflow_sample_load_resume_distill_and_bad_input(tmp_path):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    quiet = ["--set", "train.progress=false", "--set", "train.tensorboard=false"]
    teacher, student, one = tmp_path / "t", tmp_path / "s", tmp_path / "d"
    res = invoke("train", "toy2d-rectified-flow", "--out", teacher, "--set", "train.steps=20", "--set", "data.n=512",
                 "--set", "train.sample_every=0", *quiet)
    assert res.exit_code == 0, res.output
    small = ["--set", "objective.rf_pairs=64", "--set", "train.batch_size=32", *quiet]
    res = invoke("distill", "reflow", teacher, "--out", student, "--set", "train.steps=6", *small)
    assert res.exit_code == 0, res.output
    pairs_file = student / PAIRS_FILE
    stamp = os.stat(pairs_file).st_mtime_ns
    res = invoke("sample", student, "--n", "16", "--out", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    pipe = kuosan.load(student)
    assert pipe.config.objective.kind == "reflow" and pipe.config.sample.method == "flow-euler"
    assert pipe.config.objective.rf_init == "teacher"  # a rectified-flow teacher's weights
    assert pipe.checkpoint.state["objective"]["pairs"]["objective.rf_pairs"] == 64
    assert pipe.generate(8).shape == (8, 2)
    res = invoke("distill", "reflow", teacher, "--out", student, "--set", "train.steps=9", "--resume", *small)
    assert res.exit_code == 0, res.output
    assert "reflow pairs to" not in res.output and os.stat(pairs_file).st_mtime_ns == stamp  # not regenerated
    assert kuosan.load(student).step == 9
    other = tmp_path / "s2"  # a run dir holding pairs made with other settings: refused, never silently reused
    other.mkdir()
    shutil.copy(pairs_file, other / PAIRS_FILE)
    res = invoke("distill", "reflow", teacher, "--out", other, "--set", "objective.rf_pairs=32", *quiet)
    assert res.exit_code != 0 and "objective.rf_pairs=64 but this run asks for 32" in res.output
    res = invoke("distill", "reflow", student, "--out", one, "--set", "objective.rf_stage=distill",
                 "--set", "train.steps=4", "--set", "objective.rf_pair_nfe=5", *small)
    assert res.exit_code == 0, res.output
    pipe = kuosan.load(one)
    assert (pipe.config.sample.method, pipe.config.sample.nfe) == ("consistency", 1)
    z = pipe.denoiser.process.prior_sample((4, 2), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        euler = z - pipe.denoiser.velocity(z, torch.ones(4))  # one Euler step from t = 1 to 0
    assert torch.allclose(pipe.generate(4, seed=5), euler, atol=1e-5)
    res = invoke("distill", "reflow", teacher, "--out", tmp_path / "bad", "--set", "objective.rf_pair_method=ddpm",
                 *small)
    assert res.exit_code != 0 and "rf_pair_method='ddpm' is not a deterministic ODE solver" in res.output


def test_distill_stage_refuses_a_teacher_that_is_not_a_rectified_flow(tmp_path):
    runner = CliRunner()
    edm = tmp_path / "edm"
    res = runner.invoke(app, ["train", "toy2d-edm", "--out", str(edm), "--set", "train.steps=2", "--set",
                              "train.progress=false", "--set", "train.sample_every=0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["distill", "reflow", str(edm), "--out", str(tmp_path / "d"), "--set",
                              "objective.rf_stage=distill"], catch_exceptions=False)
    assert res.exit_code != 0 and "distils a rectified flow" in res.output and "'edm' run" in res.output
    cfg = distill_config("reflow", edm, ["objective.rf_pairs=8"])  # the EDM section is replaced, not merged
    assert (cfg.process.kind, cfg.process.t_min, cfg.prediction, cfg.precondition) == (
        "rectified_flow", 0.0, "velocity", "none")
    assert (cfg.objective.rf_init, cfg.objective.rf_pair_method) == ("scratch", "heun")
    assert (cfg.sample.method, cfg.sample.nfe) == ("flow-euler", 4)
