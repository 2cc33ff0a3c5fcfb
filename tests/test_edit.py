"""SDEdit and inpainting (kuosan.edit) against closed forms: SDEdit's output law for Gaussian data, the exact
conditional of a correlated Gaussian for inpainting (plain replacement is biased there, RePaint much less),
known pixels kept exactly by every sampler, strength 0 / 1, bad input, and `kuosan edit` on a tiny run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.cli import app
from kuosan.edit import img2img, inpaint, known_mask, sdedit_start
from kuosan.pipeline import generate
from kuosan.processes import EDM, GRID_KINDS, VP, DiscreteVP
from kuosan.processes.grids import grid_time
from kuosan.samplers import available, estimate_gamma

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
MU = torch.tensor([0.5, -0.3], dtype=F64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)


def gaussian(mu=MU, cov=SIGMA) -> GaussianMixture:
    return GaussianMixture([1.0], mu[None], cov[None])


def sdedit_law(proc, t0: float, x_in):
    """Output law of SDEdit with an exact reverse SDE for data N(mu, Sigma): x_t0 = a x + s eps, then
    x0 ~ p(x0 | x_t0) = N(C (Sigma^-1 mu + a/s^2 x_t0), C), C = (Sigma^-1 + a^2/s^2 I)^-1; marginally
    mean C (Sigma^-1 mu + a^2/s^2 x), covariance C + a^2/s^2 C^2."""
    t = torch.tensor(t0, dtype=F64)
    r = proc.alpha(t) ** 2 / proc.sigma(t) ** 2
    Si = torch.linalg.inv(SIGMA)
    C = torch.linalg.inv(Si + r * torch.eye(2, dtype=F64))
    return C @ (Si @ MU + r * x_in), C + r * C @ C


@pytest.mark.parametrize("proc,method,nfe,strength", [(DiscreteVP.linear(), "ddpm", 200, 0.3),
                                                      (VP(), "ddpm", 200, 0.6), (EDM(), "ddpm", 200, 0.6),
                                                      (DiscreteVP.linear(), "dpmpp-2m-sde", 50, 0.6)])
def test_sdedit_samples_its_closed_form_law(proc, method, nfe, strength):
    """Measured (4000 samples, seed 1): mean within 0.025, covariance within 0.05 of the closed form. A wrong t0
    (e.g. strength read in log-SNR: t0 = 0.05 instead of 0.30 at strength 0.3) moves the mean by > 0.9."""
    den, n = gaussian().denoiser(proc), 4000
    x_in = torch.tensor([2.0, -1.5], dtype=F64)
    y = img2img(den, x_in.expand(n, 2).clone(), strength, method, nfe, generator=torch.Generator().manual_seed(1))
    mean, cov = sdedit_law(proc, sdedit_start(proc, method, nfe, strength)[0], x_in)
    assert (y.mean(0) - mean).abs().max() < 0.05
    assert (torch.cov(y.T) - cov).abs().max() < 0.08


def test_strength_is_diffusers_fraction_of_time_and_sets_the_budget():
    """t0 = t_min + s (t_max - t_min) on a DDPM process (uniform in the training index), Karras spacing on EDM;
    the NFE spent is round(s * nfe)."""
    p = DiscreteVP.linear()
    assert sdedit_start(p, "ddpm", 100, 0.6)[0] == pytest.approx(p.t_min + 0.6 * (p.t_max - p.t_min), abs=1e-12)
    e = EDM()
    s_max, s_min = e.t_max ** (1 / 7), e.t_min ** (1 / 7)
    assert sdedit_start(e, "heun", 21, 0.5)[0] == pytest.approx((s_min + 0.5 * (s_max - s_min)) ** 7, rel=1e-9)
    den = gaussian().denoiser(p)
    x = torch.zeros(3, 2, dtype=F64)
    for s, want in [(0.3, 6), (0.6, 12), (1.0, 20)]:
        den.reset_nfe()
        img2img(den, x, s, "dpmpp-2m", 20, generator=torch.Generator().manual_seed(0))
        assert den.nfe == want


@pytest.mark.parametrize("kind", GRID_KINDS)
def test_grid_time_is_the_grid_point(kind):
    """grid_time(u = i/n) is the i-th time of the n-step grid of that kind (the fraction strength is read in)."""
    p = VP()
    ts = p.timesteps(10, kind)
    for i in (0, 3, 7, 10):
        assert grid_time(p, i / 10, kind, p.t_max, p.t_min) == pytest.approx(float(ts[i]), rel=1e-12)


@pytest.mark.parametrize("method,nfe", [("dpmpp-2m", 10), ("ddpm", 25), ("heun", 11), ("dpmpp-2m-sde", 10)])
def test_strength_zero_is_the_input_and_one_is_generate(method, nfe):
    den = gaussian().denoiser(DiscreteVP.linear())
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(img2img(den, x, 0.0, method, nfe), x)
    want = generate(den, (16, 2), method=method, nfe=nfe, generator=torch.Generator().manual_seed(7))
    got = img2img(den, x, 1.0, method, nfe, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, want)


@pytest.mark.parametrize("method", available())
def test_every_sampler_keeps_the_known_pixels_exactly(method):
    gm = gaussian()
    den = gm.denoiser(DiscreteVP.linear())
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)).float()
    mask = torch.tensor([1.0, 0.0])
    nfe = 30 if method != "rk45" else 200
    options = {"gamma": estimate_gamma(den, gm.sample(256).float())} if method.startswith("analytic") else {}
    for resample in (1, 2):
        y = inpaint(den, x, mask, method, nfe, resample=resample, jump=5, generator=torch.Generator().manual_seed(0),
                    **options)
        assert torch.isfinite(y).all()
        assert (y[:, 0] - x[:, 0]).abs().max() == 0  # exactly, not approximately
        assert not torch.equal(y[:, 1], x[:, 1])


def test_an_empty_mask_is_plain_sampling():
    """mask = 0 everywhere: inpainting is generate up to the x0 -> eps round trip of the wrapper."""
    den = gaussian().denoiser(DiscreteVP.linear())
    x = torch.zeros(64, 2)
    want = generate(den, (64, 2), method="dpmpp-2m", nfe=10, generator=torch.Generator().manual_seed(2))
    got = inpaint(den, x, torch.zeros(2), "dpmpp-2m", 10, generator=torch.Generator().manual_seed(2))
    assert (got - want).abs().max() < 1e-5


RHO = 0.9  # corr(x1, x2); x1 = 1 known: exact p(x2 | x1) = N(RHO, 1 - RHO^2)


def _conditional_error(resample: int, jump: int) -> tuple[float, float]:
    cov = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=F64)
    den = gaussian(torch.zeros(2, dtype=F64), cov).denoiser(DiscreteVP.linear())
    x = torch.zeros(2000, 2, dtype=F64)
    x[:, 0] = 1.0
    y = inpaint(den, x, torch.tensor([1.0, 0.0]), "ddpm", 50, resample=resample, jump=jump,
                generator=torch.Generator().manual_seed(0))[:, 1]
    return float(y.mean() - RHO), float(y.std() - math.sqrt(1 - RHO**2))


def test_inpainting_approaches_the_exact_gaussian_conditional():
    """Measured (ddpm, 50 NFE, 2000 samples, seed 0), mean error / std error against the exact conditional
    N(0.9, 0.436^2): plain replacement -0.302 / +0.138 (biased: the early steps see x1 only through heavy noise);
    RePaint r=10, j=5: -0.045 / -0.030. Asserted: replacement |mean err| > 0.2, RePaint |mean err| < 0.08 and
    |std err| < 0.06."""
    plain, repaint = _conditional_error(1, 1), _conditional_error(10, 5)
    assert abs(plain[0]) > 0.2 and plain[1] > 0.08
    assert abs(repaint[0]) < 0.08 and abs(repaint[1]) < 0.06
    assert abs(repaint[0]) < abs(plain[0]) / 4


def test_bad_input_is_named():
    den = gaussian().denoiser(DiscreteVP.linear())
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast to the images' shape \(4, 2\)"):
        inpaint(den, x, torch.ones(3))
    with pytest.raises(ValueError, match="mask values must be 0 .* found 0.5"):
        known_mask(torch.full((2,), 0.5), x)
    with pytest.raises(ValueError, match="strength must lie in \\[0, 1\\]; got 1.5"):
        img2img(den, x, 1.5)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        img2img(den, x, 0.5, "nope")
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        inpaint(den, x, torch.ones(2), "nope", resample=2)
    with pytest.raises(ValueError, match="resample and jump must be at least 1"):
        inpaint(den, x, torch.ones(2), resample=0)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("edit") / "run"
    res = invoke("train", "digits-ddpm", "--out", run, "--set", "train.steps=2", "--set", "train.progress=false",
                 "--set", "net.base_channels=8", "--set", "train.batch_size=16", "--set", "train.tensorboard=false")
    assert res.exit_code == 0, res.output
    return run


def test_pipeline_edits_a_run(tiny_run):
    pipe = kuosan.load(tiny_run)
    x, _ = kuosan.data.load_digits("test")
    x = x[:6]
    assert torch.equal(pipe.img2img(x, 0.0, "ddim", 5), x)
    assert torch.equal(pipe.img2img(x, 1.0, "ddim", 5, seed=4, batch_size=4),
                       pipe.generate(6, "ddim", 5, seed=4, batch_size=4))
    m = torch.zeros(8, 8)
    m[:4] = 1
    y = pipe.inpaint(x, m, "ddpm", 10, batch_size=4)
    assert (y - x)[..., :4, :].abs().max() == 0 and not torch.equal(y, x)
    with pytest.raises(ValueError, match=r"images of shape \(6, 1, 4, 4\) do not match .* \(N, 1, 8, 8\)"):
        pipe.img2img(torch.zeros(6, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match=r"images of shape \(6, 1, 4, 4\) do not match .* \(N, 1, 8, 8\)"):
        pipe.inpaint(torch.zeros(6, 1, 4, 4), m)
    with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\] .* found 3"):
        pipe.img2img(torch.full((1, 1, 8, 8), 3.0), 0.5)
    with pytest.raises(ValueError, match=r"mask of shape \(4, 4\) does not broadcast .* \(6, 1, 8, 8\)"):
        pipe.inpaint(x, torch.ones(4, 4))


def test_cli_edit_writes_grid_and_arrays(tiny_run, tmp_path):
    from PIL import Image

    x, _ = kuosan.data.load_digits("test")
    np.savez(tmp_path / "in.npz", samples=x[:5].numpy())
    res = invoke("edit", tiny_run, "--inpaint", tmp_path / "in.npz", "--mask", "top-half", "--method", "ddpm",
                 "--nfe", "8", "--resample", "2", "--jump", "3", "--out", tmp_path / "inp.png")
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "inp.npz")
    assert z["samples"].shape == (5, 1, 8, 8) and np.array_equal(z["samples"][..., :4, :], z["inputs"][..., :4, :])
    assert z["mask"][..., :4, :].all() and not z["mask"][..., 4:, :].any()
    assert (tmp_path / "inp.png").stat().st_size > 0
    img = ((x[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "one.png")
    res = invoke("edit", tiny_run, "--img2img", tmp_path / "one.png", "--strength", "0.5", "--method", "ddim",
                 "--nfe", "6", "--out", tmp_path / "i2i.png")
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "i2i.npz")["samples"].shape == (1, 1, 8, 8)
    (tmp_path / "folder").mkdir()
    for i in range(3):
        Image.fromarray(((x[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "folder" / f"{i}.png")
    np.save(tmp_path / "mask.npy", np.tril(np.ones((8, 8))))
    res = invoke("edit", tiny_run, "--inpaint", tmp_path / "folder", "--mask", tmp_path / "mask.npy", "--method",
                 "dpmpp-2m", "--nfe", "5", "--out", tmp_path / "dir.png")
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "dir.npz")
    keep = np.tril(np.ones((8, 8), bool))
    assert z["samples"].shape == (3, 1, 8, 8)
    assert np.array_equal(z["samples"][:, 0][:, keep], z["inputs"][:, 0][:, keep])
    res = invoke("edit", tiny_run, "--inpaint", tmp_path / "in.npz", "--mask", "middle")
    assert res.exit_code == 1 and "--mask takes a preset" in res.output
    res = invoke("edit", tiny_run, "--img2img", tmp_path / "in.npz", "--strength", "-0.1")
    assert res.exit_code == 1 and "strength must lie in [0, 1]; got -0.1" in res.output


# --- reconstruction guidance (Ho et al. 2022, arXiv:2204.03458, eq. 7; kuosan.reconstruction) -------------------
def test_reconstruction_guidance_is_eq7_in_closed_form():
    """For data N(0, Sigma), x0_hat(x_t) = A x_t with A = alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1, so
    grad_x ||m (y - A x)||^2 = -2 A^T m (y - A x) and eq. 7 is x0_tilde = A x + w_r alpha A^T m (y - A x).
    Checked for eps, x0 and v networks (the wrapper answers in the base's kind) and two noise levels."""
    from kuosan.reconstruction import reconstruction_guided

    proc, cov, w = DiscreteVP.linear(), torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=F64), 2.5
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    y, known = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([True, False])
    for kind in ("eps", "x0", "v"):
        den = gaussian(torch.zeros(2, dtype=F64), cov).denoiser(proc, kind)
        guided = reconstruction_guided(den, known, y, w)
        assert guided.prediction == kind
        for t in (0.3, 0.5):
            tt = torch.tensor(t, dtype=F64)
            a, s = proc.alpha(tt), proc.sigma(tt)
            A = a * cov @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(2, dtype=F64))
            resid = (y - x @ A.T) * known
            want = x @ A.T + w * a * resid @ A
            assert (guided.x0(x, t) - want).abs().max() < 1e-10
            assert (want - x @ A.T).abs().max() > 0.01  # the correction is not negligible here


def _rg_error(method: str, nfe: int, w: float) -> tuple[float, float]:
    cov = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=F64)
    den = gaussian(torch.zeros(2, dtype=F64), cov).denoiser(DiscreteVP.linear())
    x = torch.zeros(2000, 2, dtype=F64)
    x[:, 0] = 1.0
    y = inpaint(den, x, torch.tensor([1.0, 0.0]), method, nfe, reconstruction=w,
                generator=torch.Generator().manual_seed(0))
    assert (y[:, 0] - 1.0).abs().max() == 0  # the known pixel exactly
    return float(y[:, 1].mean() - RHO), float(y[:, 1].std() - math.sqrt(1 - RHO**2))


def test_reconstruction_weight_zero_is_plain_replacement_bit_for_bit():
    den = gaussian().denoiser(DiscreteVP.linear())
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)).float()
    mask = torch.tensor([1.0, 0.0])
    for method in ("ddpm", "dpmpp-2m"):
        plain = inpaint(den, x, mask, method, 12, generator=torch.Generator().manual_seed(1))
        zero = inpaint(den, x, mask, method, 12, reconstruction=0.0, generator=torch.Generator().manual_seed(1))
        guided = inpaint(den, x, mask, method, 12, reconstruction=3.0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(plain, zero)
        assert not torch.equal(plain[:, 1], guided[:, 1]) and torch.equal(guided[:, 0], x[:, 0])
    with pytest.raises(ValueError, match="reconstruction .* must be a finite number >= 0; got -1"):
        inpaint(den, x, mask, reconstruction=-1)


@pytest.mark.parametrize("method,nfe,mean_err,std_err", [("ddpm", 50, 0.08, 0.12), ("dpmpp-2m", 20, 0.16, 0.08)])
def test_reconstruction_guidance_reduces_the_replacement_bias(method, nfe, mean_err, std_err):
    """Measured (2000 samples, seed 0), mean error / std error of x2 | x1 = 1 against N(0.9, 0.436^2):
    ddpm 50 NFE: replacement -0.302 / +0.138, w_r = 3: +0.021 / -0.088; dpmpp-2m 20 NFE: replacement
    -0.466 / +0.293, w_r = 3: -0.100 / -0.023. Asserted with margins: |mean err| < 0.08 (ddpm) / 0.16 (dpmpp-2m),
    at most a third of replacement's, |std err| within 0.12 / 0.08."""
    plain, guided = _rg_error(method, nfe, 0.0), _rg_error(method, nfe, 3.0)
    assert abs(plain[0]) > 0.25
    assert abs(guided[0]) < mean_err and abs(guided[0]) < abs(plain[0]) / 3
    assert abs(guided[1]) < std_err


@pytest.mark.parametrize("method", available())
def test_every_sampler_runs_with_reconstruction_guidance(method):
    gm = gaussian()
    den = gm.denoiser(DiscreteVP.linear())
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)).float()
    nfe = 30 if method != "rk45" else 200
    options = {"gamma": estimate_gamma(den, gm.sample(256).float())} if method.startswith("analytic") else {}
    for resample in (1, 2):
        y = inpaint(den, x, torch.tensor([1.0, 0.0]), method, nfe, resample=resample, jump=5, reconstruction=2.0,
                    generator=torch.Generator().manual_seed(0), **options)
        assert torch.isfinite(y).all() and torch.equal(y[:, 0], x[:, 0])


def test_pipeline_and_cli_take_reconstruction(tiny_run, tmp_path):
    pipe = kuosan.load(tiny_run)
    x = kuosan.data.load_digits("test")[0][:4]
    m = torch.zeros(8, 8)
    m[:4] = 1
    plain, guided = (pipe.inpaint(x, m, "ddim", 6, seed=1, reconstruction=w) for w in (0.0, 5.0))
    assert torch.equal(plain, pipe.inpaint(x, m, "ddim", 6, seed=1))
    assert torch.equal(guided[..., :4, :], x[..., :4, :]) and not torch.equal(guided, plain)
    np.savez(tmp_path / "in.npz", samples=x.numpy())
    res = invoke("edit", tiny_run, "--inpaint", tmp_path / "in.npz", "--mask", "top-half", "--method", "ddpm",
                 "--nfe", "6", "--reconstruction", "5", "--out", tmp_path / "rg.png")
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "rg.npz")
    assert np.array_equal(z["samples"][..., :4, :], z["inputs"][..., :4, :])
