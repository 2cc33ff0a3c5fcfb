"""Latent consistency distillation (Luo et al. 2023, arXiv:2310.04378, Alg. 1; book §4.7.1, eqs. 4.42-4.47):
the boundary condition, the zero-initialised guidance-scale embedding, the CFG-augmented solver step against a
hand computation on exact class-conditional mixtures, a CLI distillation of a tiny toy teacher and its one
evaluation per sampling step, and the refusal of an unconditional teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import F64
from test_cli import invoke, toy_yaml
from test_guidance import NULL, NUM_CLASSES, class_fn, class_mixtures

import kuosan
from kuosan import Denoiser
from kuosan.distill.lcm import (
    LCMObjective,
    cfg_solver_step,
    lcm_sampling_times,
    pseudo_huber,
    skipping_grid,
    top_time,
    write_grids,
)
from kuosan.lcm_function import LCMFunction, lcm_boundary, lcm_denoiser, lcm_timestep, with_guidance_scale
from kuosan.nets import build_net
from kuosan.processes import VP, DiscreteVP

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_net("unet", in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                    attention_resolutions=(), num_classes=3, image_size=8, **kw)
    for name, p in net.named_parameters():  # random (the U-Net zero-initialises its output convs), w embedding aside
        if not name.startswith("guide."):
            torch.nn.init.normal_(p, std=0.2)
    return net


# --- the consistency function -------------------------------------------------------------------------------
@pytest.mark.parametrize("proc", [DiscreteVP.linear(1000), DiscreteVP.cosine(200), VP()], ids=["linear", "cos", "vp"])
def test_boundary_is_exact_and_the_coefficients_are_lcms(proc):
    """f(x, t_min) = x bit for bit; c_skip, c_out are diffusers' LCMScheduler formulas in the teacher's timestep
    index t' ((t - 1/N) N on a DiscreteVP: t = (i + 1)/N -> i) with timestep scaling 10 and sigma_data 0.5."""
    t_min = torch.tensor([proc.t_min], dtype=F64)
    c_skip, c_out = lcm_boundary(t_min, proc)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    f = LCMFunction(tiny_unet(guidance_embedding=True), proc, "eps")
    x = torch.randn(5, 1, 8, 8)
    y, w = torch.arange(5) % 3, torch.linspace(1, 4, 5)
    assert torch.equal(f(x, t_min.expand(5), y=y, w=w), x)
    if hasattr(proc, "n"):
        i = torch.tensor([0, 19, 499, proc.n - 1])
        t = (i + 1).to(F64) / proc.n
        assert torch.allclose(lcm_timestep(t, proc), i.to(F64), rtol=0, atol=1e-9)
        st = 10.0 * i.to(F64)
        c_skip, c_out = lcm_boundary(t, proc)
        torch.testing.assert_close(c_skip, 0.25 / (st**2 + 0.25), rtol=1e-9, atol=0)
        torch.testing.assert_close(c_out, st / (st**2 + 0.25) ** 0.5, rtol=1e-9, atol=1e-12)
    t = torch.tensor([0.3, 0.7], dtype=F64)  # away from t_min: c_out dominates (f ~ the network's x0)
    assert (lcm_boundary(t, proc)[1] > 0.999).all()


def test_zero_initialised_w_embedding_starts_the_student_as_the_teacher():
    """A student built with guidance_embedding and loaded from the teacher (only guide.* missing) has the teacher's
    x0 at every w, so f = c_skip x + c_out x0_teacher exactly; a w given to a net without the embedding is refused."""
    proc = DiscreteVP.linear(1000)
    teacher = tiny_unet()
    student = tiny_unet(guidance_embedding=True)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("guide.") for k in missing)
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 3
    t = torch.tensor([0.001, 0.02, 0.2, 0.5, 0.8, 1.0], dtype=F64)
    x0_teacher = Denoiser(teacher, proc, "eps").x0(x, t, y=y)
    f = lcm_denoiser(student, proc, "eps")
    c_skip, c_out = (c.float()[:, None, None, None] for c in lcm_boundary(t, proc))
    for w in (1.0, 2.5, 4.0):
        got = f.x0(x, t, y=y, w=torch.full((6,), w))
        torch.testing.assert_close(got, c_skip * x + c_out * x0_teacher, rtol=1e-5, atol=1e-5)
    trained = tiny_unet(guidance_embedding=True)  # a nonzero last projection: w now changes the output
    torch.nn.init.normal_(trained.guide.mlp[2].weight, std=0.5)
    assert not torch.allclose(trained(x, t, y, w=1.0), trained(x, t, y, w=4.0))
    with pytest.raises(ValueError, match="guidance_embedding=False"):
        teacher(x, t, y, w=2.0)
    with pytest.raises(ValueError, match="pass w="):
        student(x, t, y)


# --- the CFG-augmented solver step (eq. 4.47) -----------------------------------------------------------------
def test_cfg_augmented_ddim_step_matches_the_hand_computation():
    """On exact class-conditional mixtures (a DiscreteVP eps teacher), eq. 4.47 with DDIM,
    x^ = x + (1 + omega) Psi(c) - omega Psi(null), omega = w - 1, Psi(.) = alpha_s x0(.) + sigma_s eps(.) - x,
    per row w; and (DDIM being affine in (x0, eps)) it is one DDIM step of the teacher guided at w."""
    proc, mixtures = DiscreteVP.linear(1000), class_mixtures()
    teacher = Denoiser(class_fn(mixtures, proc, "eps"), proc, "eps")
    g = torch.Generator().manual_seed(0)
    t, s = 0.4, 0.38
    y = torch.arange(6) % NUM_CLASSES
    x0 = mixtures[NULL].sample(6, generator=g)
    tt = torch.full((6,), t, dtype=F64)
    x = proc.alpha(tt)[:, None] * x0 + proc.sigma(tt)[:, None] * torch.randn(6, 2, generator=g, dtype=F64)
    w = torch.tensor([1.0, 1.5, 2.0, 3.0, 4.0, 0.0], dtype=F64)
    got = cfg_solver_step(teacher, x, t, s, y, NULL, w, "ddim")

    a_s, s_s = proc.alpha(torch.tensor(s, dtype=F64)), proc.sigma(torch.tensor(s, dtype=F64))
    x0_c = torch.stack([mixtures[k].x0(x[i : i + 1], tt[:1], proc)[0] for i, k in enumerate(y.tolist())])
    eps_c = torch.stack([mixtures[k].eps(x[i : i + 1], tt[:1], proc)[0] for i, k in enumerate(y.tolist())])
    psi_c = a_s * x0_c + s_s * eps_c - x
    psi_u = a_s * mixtures[NULL].x0(x, tt, proc) + s_s * mixtures[NULL].eps(x, tt, proc) - x
    omega = (w - 1)[:, None]
    torch.testing.assert_close(got, x + (1 + omega) * psi_c - omega * psi_u, rtol=1e-10, atol=1e-10)
    for i, wi in enumerate(w.tolist()):  # = the teacher's own CFG (kuosan's convention) then one DDIM step
        guided = teacher.replace(guidance=wi, uncond={"y": torch.tensor(NULL)})
        one = kuosan.sample(guided, x[i : i + 1], method="ddim", nfe=None, denoise_final=False,
                            grid=torch.tensor([t, s], dtype=F64), cond={"y": y[i : i + 1]})
        torch.testing.assert_close(got[i : i + 1], one, rtol=1e-10, atol=1e-10)


def test_skipping_grid_is_lcms_ddim_solver_grid():
    """k = 20 on a 1000-step teacher: starts at indices 19, 39, ..., 999 (diffusers' DDIMSolver), ends 20 steps
    lower, the lowest at index 0 = t_min (the boundary)."""
    proc = DiscreteVP.linear(1000)
    t_nk, t_n = skipping_grid(proc, 20)
    want = torch.arange(1, 51) * 20 - 1
    torch.testing.assert_close(lcm_timestep(t_nk, proc), want.to(F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(lcm_timestep(t_n, proc), (want - 20).clamp_min(0).to(F64), rtol=0, atol=1e-9)
    assert t_n[0].item() == proc.t_min and t_nk[-1].item() == proc.t_max
    with pytest.raises(ValueError, match="objective.skip"):
        skipping_grid(proc, 1000)


@pytest.mark.parametrize("proc", [DiscreteVP.linear(1000), VP()], ids=["linear", "vp"])
def test_max_level_cuts_the_skipping_grid_where_sigma_over_alpha_is_that_level(proc):
    """top_time(level): sigma/alpha = level there (closed form of the process), t_max above its range; the grid
    keeps exactly the starts at or below it; LCM's sampling times (diffusers LCMScheduler) lie on those starts."""
    t = top_time(proc, 12.0)
    tt = torch.tensor([t], dtype=F64)
    assert (proc.sigma(tt) / proc.alpha(tt)).item() == pytest.approx(12.0, rel=1e-6)
    assert top_time(proc, None) == proc.t_max and top_time(proc, 1e9) == proc.t_max
    full, cut = skipping_grid(proc, 50)[0], skipping_grid(proc, 50, t)[0]
    assert torch.equal(cut, full[full <= t]) and len(cut) < len(full) and cut[-1] + 50 / 999 * proc.t_max > t
    ts = lcm_sampling_times(full, 4, proc.t_min)  # 20 starts, every 5th from the top: 999, 749, 499, 249
    torch.testing.assert_close(lcm_timestep(ts[:4], proc), torch.tensor([999.0, 749, 499, 249], dtype=F64),
                               rtol=0, atol=1e-9)
    assert ts[-1].item() == proc.t_min
    with pytest.raises(ValueError, match="skipping grid has"):
        lcm_sampling_times(cut, len(cut) + 1, proc.t_min)


def test_stored_grids_are_the_sampling_times(tmp_path):
    """write_grids stores, per K, LCM's times as <run>/grids/consistency-K.json, read back by kuosan.tuned_grids."""
    from kuosan.tuned_grids import load_tuned

    proc = DiscreteVP.linear(1000)
    starts = skipping_grid(proc, 50, top_time(proc, 12.0))[0]  # 49 .. 699: 14 starts
    write_grids(tmp_path, proc, starts, range(1, 5))
    for k in range(1, 5):
        torch.testing.assert_close(load_tuned(tmp_path, "consistency", k)[1], lcm_sampling_times(starts, k, proc.t_min))
    assert load_tuned(tmp_path, "consistency", 1)[1][0].item() == starts[-1].item()


def test_one_step_grid_starts_at_the_highest_time_no_noisier_than_stable_diffusions_last(tmp_path):
    """DDPM's linear betas end at sigma/alpha = 157: the one-step grid starts at the top skipping-grid start with
    sigma/alpha <= SD's terminal 14.6 (the next start up is noisier); SD's own betas need no such grid."""
    from kuosan.distill.lcm import sd_terminal_level, write_one_step_grid
    from kuosan.tuned_grids import load_tuned

    sd = DiscreteVP.scaled_linear(1000)
    ac = sd.alphas_cumprod[-1].item()
    assert sd_terminal_level() == pytest.approx(((1 - ac) / ac) ** 0.5, rel=1e-9)
    assert write_one_step_grid(tmp_path / "sd", sd, 50) is None and not (tmp_path / "sd").exists()
    proc = DiscreteVP.linear(1000)
    ts = write_one_step_grid(tmp_path, proc, 50)
    level = lambda t: (proc.sigma(t) / proc.alpha(t)).item()  # noqa: E731
    starts = skipping_grid(proc, 50)[0]
    above = starts[starts > ts[0]]
    assert level(ts[:1]) <= sd_terminal_level() < level(above[:1])
    assert lcm_timestep(ts[:1], proc).item() == pytest.approx(699.0)  # the linear schedule: t' = 699, level 11.8
    torch.testing.assert_close(load_tuned(tmp_path, "consistency", 1)[1], ts)
    assert ts[-1].item() == proc.t_min


def test_the_w_embedding_trains_at_its_own_learning_rate():
    """LCMObjective.param_groups: every trainable parameter once; guide.* (and only it) at lcm_w_lr_scale; the
    embedding's features use the net's guidance_scale (10: smooth in w over [1, 4])."""
    proc = DiscreteVP.linear(1000)
    net = tiny_unet(guidance_embedding=True, guidance_scale=10.0)
    obj = LCMObjective(net, Denoiser(tiny_unet(), proc, "eps"), null_class=3, w_lr_scale=7.0)
    groups = obj.param_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 7.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.guide.parameters()}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in net.parameters())
    assert net.guide.features.w.max().item() == pytest.approx(10.0)


def test_w_draws_put_their_share_at_w_min_and_the_rest_uniform():
    """objective.lcm_w_min_prob: that share of rows at w_min exactly, the others U[w_min, w_max]; 0 is LCM's own
    uniform draw, the same numbers from the same generator."""
    proc = DiscreteVP.linear(1000)
    teacher = Denoiser(tiny_unet(), proc, "eps")
    plain = LCMObjective(tiny_unet(guidance_embedding=True), teacher, null_class=3, w_min=1.0, w_max=4.0)
    w = plain.draw_w(20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, 1.0 + 3.0 * torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    mixed = LCMObjective(tiny_unet(guidance_embedding=True), teacher, null_class=3, w_min=1.0, w_max=4.0,
                         w_min_prob=0.3)
    w = mixed.draw_w(20000, torch.Generator().manual_seed(0))
    at_min = w == 1.0
    assert abs(at_min.double().mean().item() - 0.3) < 4 * (0.3 * 0.7 / 20000) ** 0.5
    rest = w[~at_min]
    assert rest.min() >= 1.0 and rest.max() <= 4.0
    assert abs(rest.mean().item() - 2.5) < 4 * (9 / 12 / len(rest)) ** 0.5  # U[1, 4]: mean 2.5, variance 9/12


def test_pseudo_huber_is_the_ict_distance():
    a, b = torch.zeros(2, 3), torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(pseudo_huber(a, b, 1.0), torch.tensor([26**0.5 - 1, 0.0]))


# --- the command line ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """(a tiny class-conditional toy teacher with label dropout, an unconditional one)."""
    tmp = tmp_path_factory.mktemp("lcm")
    assert invoke("train", toy_yaml(tmp, name="gmm", conditional=True), "--out", tmp / "cond",
                  "--set", "objective.p_uncond=0.2").exit_code == 0
    plain = tmp / "plain"
    plain.mkdir()
    assert invoke("train", toy_yaml(plain), "--out", tmp / "uncond").exit_code == 0
    return tmp / "cond", tmp / "uncond"


def test_cli_distils_and_samples_with_embedded_guidance(teachers, tmp_path):
    """`kuosan distill lcm` writes a run that `kuosan sample --guidance` and kuosan.load sample with the student's
    own sampler (consistency, 4 steps), w bound as the network's input: one B-row evaluation per step."""
    cond, _ = teachers
    out = tmp_path / "student"
    res = invoke("distill", "lcm", cond, "--out", out, "--w-min", "1", "--w-max", "3", "--skip", "100",
                 "--set", "train.steps=4", "--set", "train.batch_size=32", "--set", "train.progress=false")
    assert res.exit_code == 0, res.output
    res = invoke("sample", out, "--class", "all", "--n", "3", "--guidance", "2.5", "--out", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "s.npz")
    assert z["samples"].shape == (12, 2) and np.isfinite(z["samples"]).all()
    pipe = kuosan.load(out, device="cpu")
    assert pipe.config.sample.method == "consistency" and pipe.config.sample.nfe == 4
    # the default lcm_max_level: training and the stored sampling times start at the highest skipping-grid level
    # with sigma/alpha <= 8
    from kuosan.distill.lcm import MAX_LEVEL, skipping_grid, top_time
    from kuosan.tuned_grids import load_tuned

    proc = pipe.denoiser.process
    assert pipe.config.objective.lcm_max_level == MAX_LEVEL == 8.0
    starts = skipping_grid(proc, 100)[0]
    level = lambda t: (proc.sigma(t) / proc.alpha(t)).item()  # noqa: E731
    below = [t for t in starts if level(t.reshape(1)) <= 8.0]
    assert len(below) < len(starts)  # the toy VP teacher is noisier than 8 at t_max: levels are dropped
    _, ts = load_tuned(out, "consistency", 4)
    assert ts[0].item() == pytest.approx(float(below[-1])) == pytest.approx(float(
        skipping_grid(proc, 100, top_time(proc, 8.0))[0][-1]))
    assert pipe.config.precondition == "lcm" and pipe.config.net.kwargs["guidance_embedding"] is True
    rows: list[int] = []
    pipe.denoiser.net.net.register_forward_hook(lambda m, a, kw, o: rows.append(len(a[0])), with_kwargs=True)
    den = pipe.model(2.5)
    x = kuosan.pipeline.generate(den, (7, 2), method="consistency", nfe=4, cond={"y": torch.arange(7) % 4})
    assert den.nfe == 4 and rows == [7] * 4 and torch.isfinite(x).all()  # one evaluation per step, no 2B batch
    a, b = pipe.generate(8, guidance=1.0, seed=1), pipe.generate(8, seed=1)  # default w = 1 (the teacher's default)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="second branch"):
        pipe.generate(4, guidance=2.0, guidance_rescale=0.5)
    f = with_guidance_scale(pipe.denoiser, 2.0)  # the loaded f is the boundary-wrapped network
    t_min = torch.full((3,), pipe.denoiser.process.t_min, dtype=F64)
    xs = torch.randn(3, 2)
    assert torch.equal(f.x0(xs, t_min, y=torch.arange(3)), xs)


def test_an_unconditional_teacher_is_refused(teachers, tmp_path):
    _, uncond = teachers
    res = invoke("distill", "lcm", uncond, "--out", tmp_path / "no")
    assert res.exit_code != 0 and not (tmp_path / "no").exists()
    assert "LCM distils a class-conditional teacher with classifier-free guidance" in " ".join(res.output.split())


def test_guidance_scale_is_applied_to_a_continuous_process_too():
    """VP (continuous time): t' spans 0 .. 999 over [t_min, t_max]; the skipping grid ends at t_min."""
    proc = VP()
    t_nk, t_n = skipping_grid(proc, 50)
    assert len(t_nk) == 20 and t_n[0].item() == proc.t_min and abs(t_nk[-1].item() - proc.t_max) < 1e-12
