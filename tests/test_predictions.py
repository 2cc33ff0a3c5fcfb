"""Prediction kinds (eps, x0, v, score, velocity) and their exact conversions (book §4.1-4.3; Salimans & Ho 2022,
arXiv:2202.00512; flow matching, arXiv:2210.02747), checked against the written-out formulas and, for the
velocity, against the probability-flow ODE drift of every process with the exact mixture score."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import F64, interior_times

from kuosan.predictions import PREDICTIONS, Coefficients, from_x0_eps, to_x0_eps
from kuosan.processes import VP, DiscreteVP, RectifiedFlow, append_dims


def random_setup(seed: int, shape=(64, 3)):
    """x0, eps, x = alpha x0 + sigma eps and random (alpha, sigma, alpha', sigma') per sample, broadcast to x.

    alpha' and sigma' are random too (not tied to a process), with |alpha sigma' - sigma alpha'| >= 0.1 so the
    velocity parametrisation is invertible."""
    g = torch.Generator().manual_seed(seed)
    B = shape[0]
    alpha = 0.1 + 1.4 * torch.rand(B, generator=g, dtype=F64)
    sigma = 0.05 + 2.0 * torch.rand(B, generator=g, dtype=F64)
    dalpha, dsigma = torch.randn(2, B, generator=g, dtype=F64)
    det = alpha * dsigma - sigma * dalpha
    dsigma = torch.where(det.abs() < 0.1, dsigma + torch.sign(det + 1e-3) * 0.2 / alpha, dsigma)
    c = Coefficients(*(append_dims(v, len(shape)) for v in (alpha, sigma, dalpha, dsigma)))
    assert ((c.alpha * c.dsigma - c.sigma * c.dalpha).abs() > 0.05).all()
    x0, eps = torch.randn(2, *shape, generator=g, dtype=F64)
    return x0, eps, c.alpha * x0 + c.sigma * eps, c


def process_coefficients(p, t: torch.Tensor) -> Coefficients:
    """(alpha, sigma, alpha', sigma') of a process at t (B,), shaped (B, 1)."""
    return Coefficients(*(v[:, None] for v in (p.alpha(t), p.sigma(t), p.dalpha_dt(t), p.dsigma_dt(t))))


def test_kinds():
    assert set(PREDICTIONS) == {"eps", "x0", "v", "score", "velocity"}


@pytest.mark.parametrize("a, b", list(itertools.product(PREDICTIONS, repeat=2)))
def test_every_pair_round_trips(a, b):
    """kind a -> (x0, eps) -> kind b -> (x0, eps) recovers (x0, eps) exactly, for random coefficients."""
    x0, eps, x, c = random_setup(0, (16, 2, 4, 4))
    out_a = from_x0_eps(a, x0, eps, x, c)
    x0_a, eps_a = to_x0_eps(a, out_a, x, c)
    out_b = from_x0_eps(b, x0_a, eps_a, x, c)
    torch.testing.assert_close(out_b, from_x0_eps(b, x0, eps, x, c), rtol=1e-9, atol=1e-9)
    x0_b, eps_b = to_x0_eps(b, out_b, x, c)
    torch.testing.assert_close(x0_b, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_b, eps, rtol=1e-9, atol=1e-9)


def test_conversions_are_the_published_formulas():
    """eps: x0 = (x - sigma eps)/alpha (book eq. 4.12); v = alpha eps - sigma x0 (Salimans & Ho §4);
    score = -eps/sigma (book eq. 4.20); velocity = alpha' x0 + sigma' eps (conditional flow)."""
    x0, eps, x, c = random_setup(1)
    torch.testing.assert_close(from_x0_eps("eps", x0, eps, x, c), eps, rtol=0, atol=0)
    torch.testing.assert_close(from_x0_eps("x0", x0, eps, x, c), x0, rtol=0, atol=0)
    torch.testing.assert_close(from_x0_eps("v", x0, eps, x, c), c.alpha * eps - c.sigma * x0)
    torch.testing.assert_close(from_x0_eps("score", x0, eps, x, c), -eps / c.sigma)
    torch.testing.assert_close(from_x0_eps("velocity", x0, eps, x, c), c.dalpha * x0 + c.dsigma * eps)
    torch.testing.assert_close(to_x0_eps("eps", eps, x, c)[0], (x - c.sigma * eps) / c.alpha)
    torch.testing.assert_close(to_x0_eps("x0", x0, x, c)[1], (x - c.alpha * x0) / c.sigma)
    score = -eps / c.sigma
    torch.testing.assert_close(to_x0_eps("score", score, x, c)[0], (x + c.sigma**2 * score) / c.alpha)  # Tweedie


def test_v_prediction_under_vp():
    """alpha^2 + sigma^2 = 1: x0 = alpha x - sigma v and eps = sigma x + alpha v (Salimans & Ho 2022, §4)."""
    p, t = VP(), torch.linspace(0.05, 0.95, 32, dtype=F64)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 32, 5, generator=g, dtype=F64)
    c = process_coefficients(p, t)
    a, s = c.alpha, c.sigma
    x = a * x0 + s * eps
    v = from_x0_eps("v", x0, eps, x, c)
    x0_v, eps_v = to_x0_eps("v", v, x, c)
    torch.testing.assert_close(x0_v, a * x - s * v)
    torch.testing.assert_close(eps_v, s * x + a * v)


def test_rectified_flow_velocity():
    """x_t = (1-t) x0 + t eps: u = eps - x0, x0 = x - t u, eps = x + (1 - t) u (Liu et al. 2022)."""
    p, t = RectifiedFlow(), torch.linspace(0.01, 0.99, 32, dtype=F64)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 32, 5, generator=g, dtype=F64)
    c = process_coefficients(p, t)
    x = c.alpha * x0 + c.sigma * eps
    u = from_x0_eps("velocity", x0, eps, x, c)
    torch.testing.assert_close(u, eps - x0)
    x0_u, eps_u = to_x0_eps("velocity", u, x, c)
    torch.testing.assert_close(x0_u, x - t[:, None] * u)
    torch.testing.assert_close(eps_u, x + (1 - t[:, None]) * u)


def test_velocity_is_the_conditional_path_derivative(process):
    """For fixed (x0, eps), d/dt (alpha(t) x0 + sigma(t) eps) is the 'velocity' kind, numerically."""
    t = interior_times(process, 6)
    if isinstance(process, DiscreteVP):  # DiscreteVP: stay inside one grid cell, where alpha is smooth
        t = (torch.floor(t * process.n) + 0.5) / process.n
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 6, 3, generator=g, dtype=F64)
    c = process_coefficients(process, t)
    x = c.alpha * x0 + c.sigma * eps
    h = 1e-6 * torch.clamp(t, min=1.0)

    def path(u):
        return process.alpha(u)[:, None] * x0 + process.sigma(u)[:, None] * eps

    numeric = (path(t + h) - path(t - h)) / (2 * h[:, None])
    torch.testing.assert_close(from_x0_eps("velocity", x0, eps, x, c), numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
def test_velocity_is_the_probability_flow_drift(process, gmm2d, kind):
    """E[alpha' x0 + sigma' eps | x_t] = f(t) x - 1/2 g(t)^2 grad log p_t(x), the PF-ODE drift (Score SDE,
    arXiv:2011.13456, eq. 13; book eq. 4.40), with the exact mixture score, whatever the model predicts."""
    t = interior_times(process, 4).repeat_interleave(8)
    x = process.alpha(t)[:, None] * gmm2d.sample(32, generator=torch.Generator().manual_seed(5))
    x = x + process.sigma(t)[:, None] * torch.randn(32, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    drift = process.f(t)[:, None] * x - 0.5 * process.g2(t)[:, None] * gmm2d.score(x, t, process)
    velocity = gmm2d.denoiser(process, kind).velocity(x, t)
    torch.testing.assert_close(velocity, drift, rtol=1e-8, atol=1e-8)


def test_unknown_kind_raises():
    x0, eps, x, c = random_setup(7)
    with pytest.raises(ValueError, match="unknown prediction"):
        to_x0_eps("noise", eps, x, c)
    with pytest.raises(ValueError, match="unknown prediction"):
        from_x0_eps("flow", x0, eps, x, c)
