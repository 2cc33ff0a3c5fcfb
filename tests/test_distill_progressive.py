"""Progressive distillation (Salimans & Ho 2022, arXiv:2202.00512, Alg. 2): the x0 target against exact teachers,
the truncated-SNR weight, the nested grids and honest NFE of ddim-x0, round bookkeeping, CLI, exact resume."""

from __future__ import annotations

import pytest
import torch
from conftest import F64, make_process, mixture_2d
from typer.testing import CliRunner

import kuosan
from kuosan.checkpoint import load_checkpoint, optimizer_state
from kuosan.cli import app
from kuosan.denoiser import Denoiser
from kuosan.distill import build_distillation, distill_config
from kuosan.distill.progressive import defaults, loss_weight, student_grid, teacher_two_steps, x0_target
from kuosan.registry import build_data
from kuosan.samplers import sample_ddim, sample_ddim_x0
from kuosan.train.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
PROCS = ("EDM", "DiscreteVP.linear", "VP")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _schedule(p, t):
    return p.alpha(t), p.sigma(t)


def _target(teacher, p, grid, j, z):
    """(x~, z_t'') at student step j of the teacher's grid (its last point stands for sigma = 0)."""
    last = 2 * j + 2 == len(grid) - 1
    z_tpp = teacher_two_steps(teacher, z, grid[2 * j: 2 * j + 3], last)
    a, s = _schedule(p, grid[2 * j])
    a2, s2 = (torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64)) if last else _schedule(p, grid[2 * j + 2])
    return x0_target(z, z_tpp, a, s, a2, s2), z_tpp


@pytest.mark.parametrize("pid", PROCS)
def test_one_student_step_on_the_target_equals_two_exact_teacher_steps(pid):
    p, gm = make_process(pid), mixture_2d()
    teacher = gm.denoiser(p)
    grid = student_grid(p, 8)  # the teacher's 2N grid, N = 4
    g = torch.Generator().manual_seed(0)
    for j in range(4):
        z = p.alpha(grid[2 * j]) * gm.sample(64, generator=g) + p.sigma(grid[2 * j]) * torch.randn(64, 2, generator=g,
                                                                                                  dtype=F64)
        x_tilde, z_tpp = _target(teacher, p, grid, j, z)
        student = Denoiser(lambda x, t, xt=x_tilde: xt, p, prediction="x0")
        ts = grid[[2 * j, 2 * j + 2]]
        one = sample_ddim_x0(student, z, ts) if j == 3 else sample_ddim(student, z, ts, denoise=False)
        assert torch.allclose(one, z_tpp, rtol=0, atol=1e-10), (pid, j, (one - z_tpp).abs().max())
        assert not torch.allclose(z_tpp, teacher.x0(z, grid[2 * j].expand(64)), atol=1e-3)  # a real two-step point


@pytest.mark.parametrize("pid", PROCS)
def test_student_whose_x0_is_the_target_reproduces_the_teacher_in_half_the_steps(pid):
    p, gm = make_process(pid), mixture_2d()
    teacher, n = gm.denoiser(p), 4
    fine, coarse = student_grid(p, 2 * n), student_grid(p, n)

    def oracle(x, t):  # x~ of Alg. 2 at the student's grid time t
        j = int(torch.argmin((coarse - t[0].to(F64)).abs()))
        return _target(teacher, p, fine, j, x)[0]

    student = Denoiser(oracle, p, prediction="x0")
    x_T = p.prior_sample((32, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    student.reset_nfe()
    got = kuosan.sample(student, x_T, "ddim-x0", nfe=n)
    assert student.nfe == n
    want = kuosan.sample(teacher, x_T, "ddim-x0", nfe=2 * n)
    assert torch.allclose(got, want, rtol=0, atol=1e-8), (got - want).abs().max()
    assert (kuosan.sample(teacher, x_T, "ddim-x0", nfe=n) - want).abs().max() > 1e-3  # N teacher steps differ


def test_truncated_snr_and_snr_plus_one_weights_by_hand():
    a, s = torch.tensor([1.0, 1.0, 0.6]), torch.tensor([0.5, 2.0, 0.8])  # SNR 4, 0.25, 0.5625
    assert torch.allclose(loss_weight(a, s), torch.tensor([4.0, 1.0, 1.0]))
    assert torch.allclose(loss_weight(a, s, "snr+1"), torch.tensor([5.0, 1.25, 1.5625]))
    with pytest.raises(ValueError, match="pd_weighting"):
        loss_weight(a, s, "snr")


@pytest.mark.parametrize("pid", PROCS)
def test_grids_nest_and_ddim_x0_spends_exactly_n_evaluations(pid):
    p, gm = make_process(pid), mixture_2d()
    for n in (1, 2, 4, 8):
        assert torch.allclose(student_grid(p, 2 * n)[::2], student_grid(p, n), rtol=1e-12, atol=0)
        den = gm.denoiser(p)
        x_T = p.prior_sample((5, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
        den.reset_nfe()
        x = kuosan.sample(den, x_T, "ddim-x0", nfe=n)
        assert den.nfe == n
        if n == 1:  # one step: the x0 predicted at t_max, the only evaluation
            assert torch.allclose(x, den.x0(x_T, student_grid(p, 1)[0].expand(5)), atol=1e-12)


# --- runs: a tiny EDM teacher distilled by the CLI ----------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pd") / "teacher"
    res = invoke("train", "toy2d-edm", "--out", run, "--set", "train.steps=20", "--set", "train.progress=false",
                 "--set", "net.hidden=32", "--set", "data.n=512", "--set", "train.sample_every=0",
                 "--set", "train.tensorboard=false")
    assert res.exit_code == 0, res.output
    return run


SMALL = ["train.steps=8", "train.batch_size=32", "train.ckpt_every=4", "train.progress=false", "objective.pd_steps=8",
         "train.tensorboard=false"]


def test_cli_distils_samples_and_loads_with_round_bookkeeping(teacher_run, tmp_path):
    out = tmp_path / "student"
    sets = [a for s in SMALL for a in ("--set", s)]
    res = invoke("distill", "progressive", teacher_run, "--rounds", "2", "--out", out, *sets)
    assert res.exit_code == 0, res.output
    assert "ddim-x0, 2 NFE" in res.output  # 8 / 2^2
    pipe = kuosan.load(out)
    assert pipe.config.sample.method == "ddim-x0" and pipe.config.sample.nfe == 2
    boundary, final = load_checkpoint(out / "checkpoints" / "step-00000004"), load_checkpoint(out)
    assert final.state["objective"]["round"] == 1 and final.state["objective"]["student_steps"] == 2
    assert final.state["objective"]["teacher"]["step"] == 20
    # round 1's teacher is round 0's EMA student, and the student and its EMA restart from it with fresh Adam
    for k, v in boundary.modules["pd_teacher"].items():
        assert torch.equal(v, boundary.ema[k]) and torch.equal(v, boundary.weights[k])
        assert torch.equal(v, final.modules["pd_teacher"][k])
    assert optimizer_state(boundary)["state"] == {}
    assert not all(torch.equal(v, final.weights[k]) for k, v in boundary.weights.items())
    res = invoke("sample", out, "--n", "12", "--out", tmp_path / "pd.png")
    assert res.exit_code == 0, res.output
    den = pipe.model()
    x = kuosan.sample(den, den.process.prior_sample((12, 2), generator=torch.Generator().manual_seed(0)),
                      pipe.config.sample.method, pipe.config.sample.nfe)
    assert x.shape == (12, 2) and torch.isfinite(x).all() and den.nfe == 2
    assert torch.allclose(pipe.generate(12), x)  # kuosan.load's generate: the student's own sampler and NFE


@pytest.mark.parametrize("every,crash", [(3, 6), (4, 5)])
def test_resume_across_a_round_boundary_equals_an_uninterrupted_run(teacher_run, tmp_path, every, crash):
    sets = [*SMALL, "objective.rounds=2", f"train.ckpt_every={every}"]

    def run(out, resume=False, callback=None):
        cfg = distill_config("progressive", teacher_run, sets, out)
        data = build_data(cfg.data, cfg.train.seed)
        obj = build_distillation(cfg, data)
        return fit(obj, data, cfg.train, out, resume=resume, callback=callback)

    def stop(step, loss):
        if step == crash:
            raise KeyboardInterrupt

    run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", callback=stop)
    run(tmp_path / "b", resume=True)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a.step == b.step == 8
    for part in ("weights", "ema"):
        for k, v in getattr(a, part).items():
            assert torch.equal(v, getattr(b, part)[k]), (part, k)
    for k, v in a.modules["pd_teacher"].items():
        assert torch.equal(v, b.modules["pd_teacher"][k])


def test_bad_input_is_named(teacher_run, tmp_path):
    with pytest.raises(ValueError, match=r"objective.pd_steps=12 is not divisible by 2\^rounds = 8"):
        cfg = distill_config("progressive", teacher_run, ["objective.pd_steps=12", "objective.rounds=3"], tmp_path)
        build_distillation(cfg, build_data(cfg.data, 0))
    tcfg = kuosan.load(teacher_run).config
    wrong = tcfg.model_copy(update={"objective": tcfg.objective.model_copy(update={"kind": "consistency"})})
    with pytest.raises(ValueError, match="objective kind 'consistency'.*needs a diffusion run"):
        defaults(wrong)
