"""Stochastic samplers draw from the data distribution: the exact mixture's samples, at generous NFE.

Each sample is assigned to the component with the highest posterior weight (components are eight standard
deviations apart, so the assignment is exact up to 1e-15). Then: component weights within 0.02 in total
variation, each component's mean within 5% of its standard deviation and its variance within 5%. With
N = 40 000 samples the smallest component holds 16 000: the Monte-Carlo standard errors are 0.25% (weights),
0.8% (means in standard deviations) and 1.1% (variances), so a 5% tolerance leaves room for the sampler's own
bias at the chosen NFE and still fails for a wrong variance term (a dropped factor moves it by tens of %).

The fast suite uses a 1-D mixture (half the cost per sample); the slow one repeats every method on a 2-D
mixture with full covariances.
"""

from __future__ import annotations

import pytest
import torch
from conftest import F64, make_process

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.samplers import estimate_gamma

N = 40_000
W = torch.tensor([0.6, 0.4], dtype=F64)


pytestmark = pytest.mark.usefixtures("one_thread")


def mixture(dim: int) -> GaussianMixture:
    if dim == 1:
        return GaussianMixture(W, torch.tensor([[-1.5], [1.5]], dtype=F64), torch.tensor([0.2, 0.1], dtype=F64))
    means = torch.tensor([[-1.5, 0.5], [1.5, -0.5]], dtype=F64)
    covs = torch.tensor([[[0.20, 0.06], [0.06, 0.12]], [[0.10, -0.04], [-0.04, 0.25]]], dtype=F64)
    return GaussianMixture(W, means, covs)


def check_samples(gmm: GaussianMixture, x: torch.Tensor) -> None:
    """Weights (TV <= 0.02), per-component means (<= 5% of each sd) and variances (<= 5%)."""
    mvn = torch.distributions.MultivariateNormal(gmm.means, gmm.covariances)
    k = (mvn.log_prob(x[:, None, :]) + gmm.weights.log()).argmax(1)
    w = torch.bincount(k, minlength=len(gmm.weights)).double() / len(x)
    tv = 0.5 * (w - gmm.weights).abs().sum().item()
    assert tv <= 0.02, f"component weights {w.tolist()} vs {gmm.weights.tolist()}"
    for j in range(len(gmm.weights)):
        xs, var = x[k == j], gmm.covariances[j].diagonal()
        mean_err = ((xs.mean(0) - gmm.means[j]).abs() / var.sqrt()).max().item()
        var_err = (xs.var(0) / var - 1).abs().max().item()
        assert mean_err <= 0.05, f"component {j}: mean off by {mean_err:.3f} sd"
        assert var_err <= 0.05, f"component {j}: variance off by {100 * var_err:.1f}%"


def run(method: str, process_id: str, nfe: int, dim: int = 1, seed: int = 1, **options) -> None:
    p, gmm = make_process(process_id), mixture(dim)
    model = gmm.denoiser(p)
    g = torch.Generator().manual_seed(seed)
    if method.startswith("analytic"):  # the one-off Monte-Carlo Gamma_t, outside the budget
        options["gamma"] = estimate_gamma(model, gmm.sample(20_000, generator=g), generator=g)
    x_T = p.prior_sample((N, dim), generator=g, dtype=F64)
    model.reset_nfe()
    x = kuosan.sample(model, x_T, method, nfe=nfe, generator=g, **options)
    assert model.nfe <= nfe
    check_samples(gmm, x)


FAST = [  # (method, process, nfe, options): affordable configurations whose bias is at most ~2%
    ("ddpm", "VP", 500, {"variance": "beta"}),
    ("euler-maruyama", "VP", 300, {}),
    ("heun-churn", "EDM", 401, {}),
    ("analytic-ddpm", "DiscreteVP.linear", 200, {}),
    ("dpmpp-2m-sde", "DiscreteVP.linear", 100, {}),
]
SLOW = [  # the full DDPM chain, and the samplers that need ~1000 evaluations to get within ~3%
    ("ddpm", "DiscreteVP.linear", 1000, {}),
    ("ddpm", "DiscreteVP.linear", 1000, {"variance": "beta"}),
    ("ddim", "DiscreteVP.linear", 1000, {"eta": 1.0}),
    ("ancestral-sde", "VE", 1000, {}),
    ("reverse-diffusion", "VE", 1000, {}),
    ("pc", "VE", 801, {"snr": 0.1}),
    ("ald", "VE", 1001, {"eps": 1e-4, "T": 50}),
    ("euler-maruyama", "VE", 500, {}),
    ("heun-churn", "VP", 401, {}),
    ("analytic-ddpm", "VP", 200, {}),
    ("analytic-ddim", "DiscreteVP.linear", 400, {}),
]


@pytest.mark.parametrize(("method", "process_id", "nfe", "options"), FAST, ids=[f"{m}-{p}" for m, p, *_ in FAST])
def test_samples_match_the_mixture(method, process_id, nfe, options):
    run(method, process_id, nfe, **options)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "process_id", "nfe", "options"), SLOW, ids=[f"{m}-{p}" for m, p, *_ in SLOW])
def test_samples_match_the_mixture_slow(method, process_id, nfe, options):
    run(method, process_id, nfe, **options)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "process_id", "nfe", "options"), FAST + SLOW,
                         ids=[f"{m}-{p}-{n}" for m, p, n, _ in FAST + SLOW])
def test_samples_match_the_2d_mixture(method, process_id, nfe, options):
    run(method, process_id, nfe, dim=2, **options)


def test_the_check_catches_a_wrong_variance():
    """The same check rejects DDPM with its noise scaled by 0.8 (a wrong variance term: the modes mix wrongly)."""
    p, gmm = make_process("VP"), mixture(1)
    model = gmm.denoiser(p)
    g = torch.Generator().manual_seed(2)
    ts = p.timesteps(199, "uniform")
    c_xt, c_x0, var = kuosan.samplers.dpm_solver.posterior_coefficients(p, ts[1:], ts[:-1])
    x = p.prior_sample((N // 4, 1), generator=g, dtype=F64)
    for i in range(len(ts) - 1):
        x0 = model.x0(x, ts[i])
        x = c_xt[i] * x + c_x0[i] * x0 + 0.8 * var[i].sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
    with pytest.raises(AssertionError, match="weights|variance off"):
        check_samples(gmm, model.x0(x, ts[-1]))
