"""Denoiser: evaluation counting, time handling, EDM preconditioning (Karras et al. 2022, arXiv:2206.00364,
Table 1), classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. 6) and learned variances."""

from __future__ import annotations

import pytest
import torch
from conftest import F64, interior_times

from kuosan import Denoiser
from kuosan.denoiser import EDMPrecond
from kuosan.predictions import from_x0_eps
from kuosan.processes import EDM, VP, DiscreteVP


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Any smooth function of (x, t): the Denoiser must not care what it is."""
    return torch.sin(x) + t.reshape((-1,) + (1,) * (x.ndim - 1)).to(x.dtype)


def batch(seed: int = 0, shape=(6, 3), dtype=F64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- bookkeeping ------------------------------------------------------------------------------------------
def test_every_query_is_one_evaluation():
    """predict, eps, x0, score, v, velocity and __call__ each cost exactly one NFE; reset_nfe returns the count."""
    calls = []

    def fn(x, t):
        calls.append(1)
        return toy_eps(x, t)

    model = Denoiser(fn, VP(), "eps")
    x = batch()
    for i, query in enumerate([model.predict, model.eps, model.x0, model.score, model.v, model.velocity, model]):
        query(x, 0.4)
        assert model.nfe == i + 1 == len(calls)
    assert model.reset_nfe() == 7 and model.nfe == 0


def test_queries_are_the_conversions_of_one_output():
    """eps, x0, score, v and velocity of an eps-model are the predictions.py formulas of fn's output."""
    p, x, t = VP(), batch(), torch.linspace(0.1, 0.9, 6, dtype=F64)
    model = Denoiser(toy_eps, p, "eps")
    eps = toy_eps(x, t)
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    x0 = (x - s * eps) / a
    torch.testing.assert_close(model.eps(x, t), eps)
    torch.testing.assert_close(model.x0(x, t), x0)
    torch.testing.assert_close(model.score(x, t), -eps / s)
    torch.testing.assert_close(model.v(x, t), a * eps - s * x0)
    torch.testing.assert_close(model.velocity(x, t), p.dalpha_dt(t)[:, None] * x0 + p.dsigma_dt(t)[:, None] * eps)
    x0_p, eps_p = model.predict(x, t)
    torch.testing.assert_close((x0_p, eps_p), (x0, eps))


def test_time_handling():
    """fn gets t of shape (batch,) in t's own precision (float64 for python floats and ints), even for float32 x;
    time_input maps it first; the coefficients come back in x's dtype."""
    seen = []

    def fn(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    x = batch(dtype=torch.float32)
    model = Denoiser(fn, DiscreteVP.linear(), "eps")
    model(x, 0.5)
    model(x, 1)
    model(x, torch.full((6,), 0.25, dtype=F64))
    for t in seen:
        assert t.shape == (6,) and t.dtype == F64
    assert float(seen[0][0]) == 0.5 and float(seen[1][0]) == 1.0
    assert model.eps(x, 0.5).dtype == torch.float32
    assert model.coefficients(x, seen[0]).alpha.dtype == torch.float32
    mapped = Denoiser(fn, DiscreteVP.linear(), "eps", time_input=lambda t: t * 1000 - 1)
    mapped(x, 0.5)
    torch.testing.assert_close(seen[-1], torch.full((6,), 499.0, dtype=F64))


@pytest.mark.parametrize("bad", [torch.zeros(7), torch.zeros(6, 1), torch.zeros(2, 3)])
def test_t_shape_is_validated(bad):
    model = Denoiser(toy_eps, VP(), "eps")
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(batch,\) = \(6,\)"):
        model(batch(), bad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown prediction"):
        Denoiser(toy_eps, VP(), "noise")
    with pytest.raises(ValueError, match="precondition"):
        Denoiser(toy_eps, VP(), precondition="vp")
    with pytest.raises(ValueError, match="x0-predictor"):
        Denoiser(toy_eps, EDM(), "eps", precondition="edm")
    assert Denoiser(toy_eps, EDM(), precondition="edm").prediction == "x0"
    assert Denoiser(toy_eps, VP()).prediction == "eps"


def test_a_network_is_a_submodule():
    net = torch.nn.Linear(3, 3)
    model = Denoiser(lambda x, t: net(x), VP())
    assert list(model.parameters()) == []
    model = Denoiser(torch.nn.Sequential(net), VP())
    assert {id(q) for q in model.parameters()} == {id(q) for q in net.parameters()}


# --- EDM preconditioning ------------------------------------------------------------------------------
def edm_table1(sigma: torch.Tensor, sigma_data: float = 0.5):
    """c_skip, c_out, c_in, c_noise of EDM (Karras et al. 2022, arXiv:2206.00364, Table 1), written out."""
    r = sigma**2 + sigma_data**2
    return sigma_data**2 / r, sigma * sigma_data / r.sqrt(), 1 / r.sqrt(), torch.log(sigma) / 4


def test_edm_coefficients_limits():
    """c_skip(sigma_data) = 1/2; c_skip -> 1, c_out/sigma -> 1, c_in -> 1/sigma_data as sigma -> 0;
    c_out -> sigma_data as sigma -> inf; loss weight 1/c_out^2 (EDM eq. 8)."""
    pc = EDMPrecond(sigma_data=0.5)
    half = torch.tensor(0.5, dtype=F64)
    assert float(pc.c_skip(half)) == 0.5
    tiny, huge = torch.tensor(1e-8, dtype=F64), torch.tensor(1e8, dtype=F64)
    assert float(pc.c_skip(tiny)) == pytest.approx(1.0, rel=1e-12)
    assert float(pc.c_out(tiny) / tiny) == pytest.approx(1.0, rel=1e-12)
    assert float(pc.c_in(tiny)) == pytest.approx(2.0, rel=1e-12)
    assert float(pc.c_out(huge)) == pytest.approx(0.5, rel=1e-12)
    sigma = torch.logspace(-3, 2, 11, dtype=F64)
    c_skip, c_out, c_in, c_noise = edm_table1(sigma)
    for ours, ref in zip((pc.c_skip, pc.c_out, pc.c_in, pc.c_noise), (c_skip, c_out, c_in, c_noise), strict=True):
        torch.testing.assert_close(ours(sigma), ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(pc.loss_weight(sigma), 1 / c_out**2, rtol=1e-12, atol=0)
    # the derivation of Table 1 (EDM App. B.6): with Var(x0) = sigma_data^2, the network input c_in (x0 + n) and
    # the effective target (x0 - c_skip (x0 + n)) / c_out both have unit variance
    ones = torch.ones_like(sigma)
    torch.testing.assert_close(pc.c_in(sigma) ** 2 * (sigma**2 + 0.25), ones, rtol=1e-12, atol=0)
    c_skip, c_out = pc.c_skip(sigma), pc.c_out(sigma)
    target_var = ((1 - c_skip) ** 2 * 0.25 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_var, ones, rtol=1e-12, atol=0)


@pytest.mark.parametrize("process", ["EDM", "VP"], indirect=True)
def test_edm_preconditioning_wraps_F(process):
    """D(x; s) = c_skip(s) x~ + c_out(s) F(c_in(s) x~, c_noise(s)) with s = sigma/alpha, x~ = x/alpha (under EDM,
    alpha = 1 and s = sigma = t); F sees exactly c_in x~ and c_noise."""
    seen = {}

    def F(u, c_noise):
        seen["u"], seen["c_noise"] = u, c_noise
        return torch.cos(u) * (1 + c_noise[:, None])

    model = Denoiser(F, process, precondition="edm", sigma_data=0.5)
    t = interior_times(process, 6)
    x = 3 * batch(1)
    s = process.sigma(t) / process.alpha(t)
    xs = x / process.alpha(t)[:, None]
    c_skip, c_out, c_in, c_noise = (c[:, None] for c in edm_table1(s))
    D = model(x, t)
    torch.testing.assert_close(seen["u"], c_in * xs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(seen["c_noise"], c_noise[:, 0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(D, c_skip * xs + c_out * torch.cos(c_in * xs) * (1 + c_noise), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.x0(x, t), D)
    if isinstance(process, EDM):
        torch.testing.assert_close(s, t)


@pytest.mark.parametrize("process", ["EDM", "VP"], indirect=True)
def test_edm_preconditioned_exact_model_is_exact(process, gmm2d):
    """Writing the exact E[x0|x_t] through F = (x0 - c_skip x~)/c_out gives back exact x0 (and eps)."""
    sd = 0.5

    def F(u, c_noise):
        s = torch.exp(4 * c_noise)  # c_noise = ln(s)/4
        c_skip, c_out, c_in, _ = edm_table1(s[:, None], sd)
        t = process.t_of_log_snr(-torch.log(s))
        xs = u / c_in
        x0 = gmm2d.x0(process.alpha(t)[:, None] * xs, t, process)
        return (x0 - c_skip * xs) / c_out

    model = Denoiser(F, process, precondition="edm", sigma_data=sd)
    t = interior_times(process, 4).repeat_interleave(4)
    x = process.alpha(t)[:, None] * gmm2d.sample(16, generator=torch.Generator().manual_seed(2))
    x = x + process.sigma(t)[:, None] * batch(3, (16, 2))
    torch.testing.assert_close(model.x0(x, t), gmm2d.x0(x, t, process), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.eps(x, t), gmm2d.eps(x, t, process), rtol=1e-8, atol=1e-8)


# --- classifier-free guidance -----------------------------------------------------------------------------
def class_model(x, t, y):
    """A 'network' whose eps depends on the class label y (y = 0: unconditional)."""
    return 0.3 * x + y[:, None].to(x.dtype) * torch.tensor([1.0, -0.5, 2.0], dtype=x.dtype) + t[:, None].to(x.dtype)


@pytest.mark.parametrize("w", [1.0, 3.0, 0.0])
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_classifier_free_guidance(w, kind):
    """eps_guided = eps_u + w (eps_c - eps_u) (Ho & Salimans 2022, eq. 6) whatever the model predicts; w = 1 is the
    conditional model (one branch); one guided evaluation is one call of fn on a doubled batch and counts as 1 NFE."""
    p, x, t = VP(), batch(4), torch.linspace(0.2, 0.8, 6, dtype=F64)
    y = torch.tensor([1, 2, 3, 1, 2, 3])
    calls = []

    def fn(x, t, y=None):  # the same model, expressed as `kind`
        calls.append(x.shape[0])
        eps = class_model(x, t, torch.zeros(x.shape[0], dtype=torch.long) if y is None else y)
        c = plain.coefficients(x, t)
        return from_x0_eps(kind, (x - c.sigma * eps) / c.alpha, eps, x, c)

    plain = Denoiser(lambda x, t, y: class_model(x, t, y), p, "eps")
    eps_c, eps_u = plain.eps(x, t, y=y), plain.eps(x, t, y=torch.zeros(6, dtype=torch.long))
    guided = Denoiser(fn, p, kind, guidance=w, uncond={"y": torch.tensor(0)})
    eps = guided.eps(x, t, y=y)
    batch_seen = 6 if w == 1.0 else 12  # w = 1 is the conditional model: the unconditional branch is skipped
    assert guided.nfe == 1 and calls == [batch_seen]
    torch.testing.assert_close(eps, eps_u + w * (eps_c - eps_u), rtol=1e-10, atol=1e-10)
    if w == 1.0:
        torch.testing.assert_close(eps, eps_c, rtol=1e-10, atol=1e-10)
    assert guided.reset_nfe() == 1
    with pytest.raises(ValueError, match="needs a condition"):  # guidance without a condition is an error
        guided.eps(x, t)
    assert calls == [batch_seen] and guided.nfe == 0


def test_guidance_needs_matching_uncond():
    model = Denoiser(class_model, VP(), "eps", guidance=2.0, uncond={"label": torch.tensor(0)})
    with pytest.raises(ValueError, match="uncond"):
        model(batch(), 0.5, y=torch.ones(6, dtype=torch.long))


# --- learned variance (improved DDPM) ---------------------------------------------------------------------
def test_learned_variance_splits_channels():
    """fn returns 2C channels: the prediction then the variance interpolation v (Nichol & Dhariwal 2021, eq. 15)."""
    p, x = DiscreteVP.linear(), batch(5, (4, 3, 2, 2))
    t = p.t_of_index(torch.tensor([10, 200, 500, 900]))

    def fn(x, t):
        return torch.cat([toy_eps(x, t), torch.tanh(x) - 0.5], dim=1)  # (B, 2C, H, W)

    model = Denoiser(fn, p, "eps", learned_variance=True)
    out = model(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(out, toy_eps(x, t))
    x0, eps, v = model.predict_with_variance(x, t)
    torch.testing.assert_close(eps, toy_eps(x, t))
    torch.testing.assert_close(x0, (x - p.sigma(t)[:, None, None, None] * eps) / p.alpha(t)[:, None, None, None])
    torch.testing.assert_close(v, torch.tanh(x) - 0.5)
    assert model.nfe == 2
    with pytest.raises(ValueError, match="learned_variance"):
        Denoiser(toy_eps, p, "eps").predict_with_variance(x, t)
    guided = Denoiser(fn, p, "eps", learned_variance=True, guidance=2.0, uncond={"y": torch.tensor(0)})
    with pytest.raises(ValueError, match="guidance"):
        guided(x, t, y=torch.ones(4))
