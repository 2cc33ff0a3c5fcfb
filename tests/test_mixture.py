"""The exact Gaussian mixture, the oracle of every other test, checked against independent closed forms:
torch.distributions densities, autograd of log p_t, quadrature, Tweedie's formula and Gaussian conditioning."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import F64, interior_times, mixture_2d
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from kuosan.analytic import Gaussian, GaussianMixture
from kuosan.predictions import PREDICTIONS
from kuosan.processes import VP

Z = 5.0


def noised(gmm: GaussianMixture, process, t: torch.Tensor, seed: int) -> torch.Tensor:
    """x_t = alpha x0 + sigma eps with x0 ~ gmm, one row per entry of t."""
    g = torch.Generator().manual_seed(seed)
    x0 = gmm.sample(len(t), generator=g)
    return process.alpha(t)[:, None] * x0 + process.sigma(t)[:, None] * torch.randn(x0.shape, generator=g, dtype=F64)


def reference_density(gmm: GaussianMixture, alpha: float, sigma: float) -> MixtureSameFamily:
    """p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I), built by torch.distributions."""
    cov = alpha**2 * gmm.covariances + sigma**2 * torch.eye(gmm.dim, dtype=F64)
    return MixtureSameFamily(Categorical(gmm.weights), MultivariateNormal(alpha * gmm.means, cov))


@pytest.mark.parametrize("which", ["gmm2d", "gmm8d"])
def test_log_prob_is_the_convolved_mixture(process, which, request):
    """log p_t(x) equals torch.distributions' mixture of N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I), and p_0."""
    gmm = request.getfixturevalue(which)
    for i, t in enumerate(interior_times(process, 3)):
        x = noised(gmm, process, t.expand(16), seed=i)
        ref = reference_density(gmm, float(process.alpha(t)), float(process.sigma(t))).log_prob(x)
        torch.testing.assert_close(gmm.log_prob(x, t, process), ref, rtol=1e-10, atol=1e-10)
    x = gmm.sample(16, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(gmm.log_prob(x), reference_density(gmm, 1.0, 0.0).log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("which", ["gmm2d", "gmm8d"])
def test_score_is_the_gradient_of_log_prob(process, which, request):
    """score(x, t) = grad_x log p_t(x) by autograd, per-sample times spanning the process."""
    gmm = request.getfixturevalue(which)
    t = interior_times(process, 4).repeat_interleave(8)
    x = noised(gmm, process, t, seed=1).requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, t, process).sum(), x)
    torch.testing.assert_close(gmm.score(x.detach(), t, process), grad, rtol=1e-9, atol=1e-10)
    x0 = gmm.sample(8, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    (grad0,) = torch.autograd.grad(gmm.log_prob(x0).sum(), x0)
    torch.testing.assert_close(gmm.score(x0.detach()), grad0, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("which", ["gmm2d", "gmm8d"])
def test_x0_and_eps_are_tweedie(process, which, request):
    """E[x0 | x_t] = (x + sigma^2 score)/alpha and E[eps | x_t] = -sigma score (Tweedie; book eq. 4.20)."""
    gmm = request.getfixturevalue(which)
    t = interior_times(process, 4).repeat_interleave(8)
    x = noised(gmm, process, t, seed=3)
    score = gmm.score(x, t, process)
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
    torch.testing.assert_close(gmm.x0(x, t, process), (x + s**2 * score) / a, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(gmm.eps(x, t, process), -s * score, rtol=1e-9, atol=1e-10)


def test_single_gaussian_posterior_mean_is_gaussian_conditioning(process):
    """One Gaussian: E[x0 | x_t] = mu + alpha Sigma C^{-1} (x - alpha mu), C = alpha^2 Sigma + sigma^2 I."""
    gauss = Gaussian([0.5, -1.0, 2.0], torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, -0.1], [0.0, -0.1, 0.8]]))
    mu, Sigma = gauss.means[0], gauss.covariances[0]
    for i, t in enumerate(interior_times(process, 3)):
        x = noised(gauss, process, t.expand(5), seed=10 + i)
        a, s = float(process.alpha(t)), float(process.sigma(t))
        C = a**2 * Sigma + s**2 * torch.eye(3, dtype=F64)
        ref = mu + a * torch.linalg.solve(C, (x - a * mu).T).T @ Sigma
        torch.testing.assert_close(gauss.x0(x, t, process), ref, rtol=1e-9, atol=1e-10)
        lp = MultivariateNormal(a * mu, C).log_prob(x)
        torch.testing.assert_close(gauss.log_prob(x, t, process), lp, rtol=1e-10, atol=1e-10)


def quadrature_2d(gmm: GaussianMixture, process=None, t=None, n: int = 200) -> float:
    """Midpoint rule for int p_t over a box holding all its mass; h is below a third of the smallest standard
    deviation, where the rule is spectrally accurate for Gaussians."""
    a, s = (1.0, 0.0) if t is None else (float(process.alpha(t)), float(process.sigma(t)))
    half = 2.5 * a + 8 * math.sqrt(0.45 * a**2 + s**2)  # |mu| < 2.5, largest eigenvalue < 0.45
    h = 2 * half / n
    u = -half + h * (torch.arange(n, dtype=F64) + 0.5)
    return float(gmm.log_prob(torch.cartesian_prod(u, u), t, process).exp().sum() * h**2)


def test_data_density_integrates_to_one_in_2d(gmm2d):
    assert quadrature_2d(gmm2d) == pytest.approx(1.0, abs=1e-8)


def test_log_prob_integrates_to_one_in_2d(process, gmm2d):
    """p_t at the noisiest and cleanest interior times of every process integrates to 1."""
    for t in interior_times(process, 2):
        assert quadrature_2d(gmm2d, process, t) == pytest.approx(1.0, abs=1e-8), t


def test_mean_and_covariance_match_samples(gmm8d):
    """Mixture mean and covariance sum_k w_k (Sigma_k + mu_k mu_k^T) - mu mu^T against 200000 draws."""
    n = 200_000
    x = gmm8d.sample(n, generator=torch.Generator().manual_seed(4))
    assert x.shape == (n, 8) and x.dtype == F64
    se_mean = (gmm8d.covariance.diagonal() / n).sqrt()
    assert ((x.mean(0) - gmm8d.mean).abs() < Z * se_mean).all()
    xc = x - x.mean(0)
    prods = xc[:, :, None] * xc[:, None, :]  # (n, 8, 8)
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((prods.mean(0) - gmm8d.covariance).abs() < Z * se_cov + 1e-12).all()


def test_samples_per_component(gmm2d):
    """Draws labelled k have mean mu_k and covariance Sigma_k; label frequencies are the weights."""
    n = 100_000
    x, k = gmm2d.sample(n, generator=torch.Generator().manual_seed(5), return_labels=True)
    freq = torch.bincount(k, minlength=3).to(F64) / n
    w = gmm2d.weights
    assert ((freq - w).abs() < Z * (w * (1 - w) / n).sqrt()).all()
    for j in range(3):
        xj = x[k == j]
        m = len(xj)
        cov = gmm2d.covariances[j]
        assert ((xj.mean(0) - gmm2d.means[j]).abs() < Z * (cov.diagonal() / m).sqrt()).all()
        # Var of a sample covariance entry of a Gaussian: (S_ii S_jj + S_ij^2) / m
        se = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / m).sqrt()
        assert ((torch.cov(xj.T) - cov).abs() < Z * se).all()


def test_denoisers_agree_across_prediction_kinds(process, gmm2d):
    """gmm.denoiser(process, kind).x0 is the same exact E[x0|x_t] whatever the network would predict."""
    t = interior_times(process, 4).repeat_interleave(4)
    x = noised(gmm2d, process, t, seed=6)
    ref = gmm2d.x0(x, t, process)
    for kind in PREDICTIONS:
        model = gmm2d.denoiser(process, kind)
        assert model.prediction == kind
        torch.testing.assert_close(model.x0(x, t), ref, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(model.eps(x, t), gmm2d.eps(x, t, process), rtol=1e-8, atol=1e-8)


def test_dtype_shape_and_scalar_time(gmm2d):
    """float32 inputs come back float32; image-shaped x is flattened to R^D; a python-float t broadcasts."""
    p = VP()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(7))
    s32 = gmm2d.score(x, 0.3, p)
    assert s32.dtype == torch.float32 and s32.shape == (6, 2)
    ref = gmm2d.score(x.double(), torch.full((6,), 0.3, dtype=F64), p)
    torch.testing.assert_close(s32, ref.float())
    gauss = Gaussian(torch.zeros(4), 0.5)
    img = torch.randn(3, 1, 2, 2, dtype=F64)
    assert gauss.score(img, 0.5, p).shape == img.shape
    torch.testing.assert_close(gauss.score(img).flatten(1), -img.flatten(1) / 0.5)


def test_gaussian_class_covariance_forms():
    """Gaussian(mean, cov) with a scalar, a (D,) diagonal and a (D, D) matrix covariance."""
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    for cov, full in [
        (0.7, 0.7 * torch.eye(2, dtype=F64)),
        (torch.tensor([0.2, 0.9]), torch.diag(torch.tensor([0.2, 0.9], dtype=F64))),
        (torch.tensor([[0.5, 0.1], [0.1, 0.3]]), torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64)),
    ]:
        g = Gaussian(mean, cov)
        torch.testing.assert_close(g.covariance, full, rtol=1e-7, atol=0)
        torch.testing.assert_close(g.mean, mean)
        x = torch.randn(5, 2, dtype=F64)
        torch.testing.assert_close(g.log_prob(x), MultivariateNormal(mean, full).log_prob(x), rtol=1e-7, atol=1e-7)


def test_isotropic_and_diagonal_variances_and_weight_normalisation():
    """variances (K,) isotropic and (K, D) diagonal; weights are normalised."""
    means = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    a = GaussianMixture([2.0, 6.0], means, torch.tensor([0.5, 0.25]))
    b = GaussianMixture([0.25, 0.75], means, torch.tensor([[0.5, 0.5], [0.25, 0.25]]))
    torch.testing.assert_close(a.weights, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(a.covariances, b.covariances)
    x = torch.randn(7, 2, dtype=F64)
    torch.testing.assert_close(a.log_prob(x, 0.4, VP()), b.log_prob(x, 0.4, VP()))


def test_bad_inputs_raise():
    w, mu, cov = mixture_2d().weights, mixture_2d().means, mixture_2d().covariances
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(w, mu[0], cov)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(w[:2], mu, cov)
    with pytest.raises(ValueError, match="variances"):
        GaussianMixture(w, mu, torch.ones(3, 3))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(w, mu, -cov)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(-w, mu, cov)
    gmm = GaussianMixture(w, mu, cov)
    with pytest.raises(ValueError, match="features"):
        gmm.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="process"):
        gmm.score(torch.zeros(4, 2), 0.5)
