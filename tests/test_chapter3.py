"""Chapter 3 against closed forms: Brownian motion, Ito vs Stratonovich, SDE solvers, OU / GBM / drifted BM.

Monte-Carlo checks use fixed seeds and tolerances of 5 standard errors estimated from the samples
themselves, plus, for Euler-Maruyama, an allowance of one step size for its weak order-1 bias.
"""

import functools
import math

import numpy as np
import pytest
import torch

from kuosan.analytic.stochastic import (
    SDE,
    BrownianMotionWithDrift,
    GeometricBrownianMotion,
    OrnsteinUhlenbeck,
    brownian_path,
    euler_maruyama,
    ito_integral,
    milstein,
    quadratic_variation,
    stratonovich_integral,
)

F64 = torch.float64
Z = 5.0  # standard errors allowed in every Monte-Carlo comparison


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_se(x: torch.Tensor) -> float:
    return float(x.std() / math.sqrt(x.numel()))


def var_se(x: torch.Tensor) -> float:
    """Standard error of the sample variance: sqrt((m4 - m2^2) / n), no Gaussian assumption."""
    c = x - x.mean()
    return float(((c**4).mean() - (c**2).mean() ** 2).sqrt() / math.sqrt(x.numel()))


def assert_moments(x: torch.Tensor, mean: float, var: float, bias: float = 0.0) -> None:
    assert abs(float(x.mean()) - mean) <= Z * mean_se(x) + bias, (float(x.mean()), mean)
    assert abs(float(x.var()) - var) <= Z * var_se(x) + bias, (float(x.var()), var)


# ----------------------------------------------------------------------------- Brownian motion


def test_brownian_path_shape_and_start():
    times, W = brownian_path(3, 8, 2.0, dim=2, generator=gen(0), dtype=F64)
    assert times.shape == (9,) and W.shape == (3, 9, 2) and W.dtype == F64
    assert float(times[0]) == 0.0 and float(times[-1]) == pytest.approx(2.0)
    assert torch.all(W[:, 0] == 0)
    _, W2 = brownian_path(3, 8, 2.0, dim=2, generator=gen(0), dtype=F64)
    assert torch.equal(W, W2)


def test_brownian_mean_variance_covariance():
    """E W_t = 0, Var W_t = t, Cov(W_s, W_t) = min(s, t)."""
    T, n = 2.0, 50
    times, W = brownian_path(20000, n, T, generator=gen(1), dtype=F64)
    W = W[..., 0]
    for k in (10, 25, 50):
        assert_moments(W[:, k], 0.0, float(times[k]))
    s, t = W[:, 10], W[:, 50]
    cov_se = math.sqrt((times[10] * times[50] + times[10] ** 2) / s.numel())
    assert abs(float((s * t).mean()) - float(times[10])) <= Z * cov_se


def test_quadratic_variation_tends_to_T():
    """[W]_T = T in mean with Var = 2 T^2 / n -> 0; a C^1 path has [X]_T -> 0."""
    T, P = 1.5, 2000
    variances = []
    for i, n in enumerate((10, 100, 1000)):
        _, W = brownian_path(P, n, T, generator=gen(10 + i), dtype=F64)
        qv = quadratic_variation(W)[:, 0]
        exact_var = 2 * T**2 / n
        assert abs(float(qv.mean()) - T) <= Z * math.sqrt(exact_var / P)
        kurtosis_excess = 12 / n  # of a scaled chi-square with n degrees of freedom
        assert abs(float(qv.var()) / exact_var - 1) <= Z * math.sqrt((2 + kurtosis_excess) / P)
        variances.append(float(qv.var()))
    assert variances[0] > 5 * variances[1] > 25 * variances[2]
    smooth = torch.sin(torch.linspace(0, T, 1001, dtype=F64))  # sum (cos(t) dt)^2 <= n dt^2 = T dt
    assert float(quadratic_variation(smooth, time_axis=0)) <= T * (T / 1000)


def test_ito_and_stratonovich_int_W_dW():
    """Ito: int W dW = (W_T^2 - T)/2 (error = (T - [W]_T)/2, rms T/sqrt(2n)); Stratonovich: W_T^2 / 2."""
    T, P = 1.0, 1000
    for i, n in enumerate((16, 128, 1024)):
        _, W = brownian_path(P, n, T, generator=gen(20 + i), dtype=F64)
        dW = W.diff(dim=1)
        W_T = W[:, -1]
        ito, strat = ito_integral(W, dW), stratonovich_integral(W, dW)
        torch.testing.assert_close(strat, W_T**2 / 2, rtol=0, atol=1e-10)
        rms = float((ito - (W_T**2 - T) / 2).square().mean().sqrt())
        assert rms <= 1.2 * T / math.sqrt(2 * n), (n, rms)
        assert abs(float((strat - ito).mean()) - T / 2) <= 0.05  # the Ito correction T/2


def test_ito_integral_martingale_and_isometry():
    """E int W dW = 0 and E (int W dW)^2 = int_0^T t dt = T^2/2 (discrete: T^2/2 (1 - 1/n))."""
    T, n = 2.0, 64
    _, W = brownian_path(20000, n, T, generator=gen(30), dtype=F64)
    I = ito_integral(W, W.diff(dim=1))[:, 0]
    assert abs(float(I.mean())) <= Z * mean_se(I)
    second = I.square()
    assert abs(float(second.mean()) - T**2 / 2 * (1 - 1 / n)) <= Z * mean_se(second)


def test_integrals_need_grid_values():
    dW = torch.zeros(2, 5, 1)
    with pytest.raises(ValueError):
        ito_integral(torch.zeros(2, 5, 1), dW)
    with pytest.raises(ValueError):
        stratonovich_integral(torch.zeros(2, 5, 1), dW)


# ----------------------------------------------------------------------------- closed-form processes

T_END, N_EM, EM_STEPS = 1.0, 20000, 250
CASES = {
    "bm": (BrownianMotionWithDrift(mu=0.7, sigma=1.3), 0.5),
    "gbm": (GeometricBrownianMotion(mu=0.4, sigma=0.5), 1.0),
    "ou": (OrnsteinUhlenbeck(mu=1.5, sigma=0.9, m=0.3), 2.0),
}


@functools.cache
def em_samples(name: str) -> torch.Tensor:
    process, x0 = CASES[name]
    x = torch.full((N_EM, 1), x0, dtype=F64)
    return euler_maruyama(process.sde(), x, 0.0, T_END, EM_STEPS, gen(40))[:, 0]


def closed_moments(name: str, t: float = T_END) -> tuple[float, float]:
    process, x0 = CASES[name]
    x0t = torch.tensor(x0, dtype=F64)
    return float(process.mean(x0t, t)), float(process.var(x0t, t))


@pytest.mark.parametrize("name", CASES)
def test_euler_maruyama_moments_match_closed_form(name):
    assert_moments(em_samples(name), *closed_moments(name), bias=T_END / EM_STEPS)


@pytest.mark.parametrize("name", CASES)
def test_exact_sample_moments(name):
    process, x0 = CASES[name]
    x = process.sample(torch.full((200000,), x0, dtype=F64), 0.6, gen(50))
    assert_moments(x, *closed_moments(name, 0.6))


@pytest.mark.parametrize("name", CASES)
def test_per_sample_time_broadcasts_by_ndim(name):
    process, _ = CASES[name]
    x0 = torch.rand(4, 2, 3, dtype=F64, generator=gen(51)) + 0.5
    t = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=F64)
    for fn in (process.mean, process.var):
        out = fn(x0, t)
        assert out.shape == x0.shape
        for i in range(4):
            torch.testing.assert_close(out[i], fn(x0[i], float(t[i])).expand(2, 3))
    x_t = process.sample(x0, t, gen(52))
    lp = process.transition_log_prob(x_t, x0, t)
    assert x_t.shape == x0.shape and lp.shape == (4,)
    torch.testing.assert_close(lp[2], process.transition_log_prob(x_t[2:3], x0[2:3], 1.0)[0])


def density_grid(name: str, t: float, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, x(u), dx/du): a grid over +-12 std, uniform in log x for GBM."""
    process, x0 = CASES[name]
    mean, var = closed_moments(name, t)
    if isinstance(process, GeometricBrownianMotion):
        s = process.sigma * math.sqrt(t)
        centre = math.log(x0) + (process.mu - process.sigma**2 / 2) * t
        u = torch.linspace(centre - 12 * s, centre + 12 * s, n, dtype=F64)
        return u, u.exp(), u.exp()
    u = torch.linspace(mean - 12 * math.sqrt(var), mean + 12 * math.sqrt(var), n, dtype=F64)
    return u, u, torch.ones_like(u)


@pytest.mark.parametrize("name", CASES)
def test_transition_density_integrates_to_one_with_closed_moments(name):
    process, x0 = CASES[name]
    mean, var = closed_moments(name, T_END)
    u, x, jac = density_grid(name, T_END, 40001)
    p = process.transition_log_prob(x, torch.tensor(x0, dtype=F64), T_END).exp() * jac
    assert float(torch.trapezoid(p, u)) == pytest.approx(1.0, abs=1e-8)
    assert float(torch.trapezoid(x * p, u)) == pytest.approx(mean, rel=1e-7)
    assert float(torch.trapezoid((x - mean) ** 2 * p, u)) == pytest.approx(var, rel=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_transition_density_matches_em_histogram(name):
    """Bin probabilities of the Euler-Maruyama samples = integrals of exp(transition_log_prob)."""
    process, x0 = CASES[name]
    mean, var = closed_moments(name)
    edges = torch.linspace(mean - 2.5 * math.sqrt(var), mean + 2.5 * math.sqrt(var), 21, dtype=F64)
    x = em_samples(name)
    counts = torch.histogram(x, bins=edges).hist / x.numel()
    for k in range(20):
        grid = torch.linspace(float(edges[k]), float(edges[k + 1]), 101, dtype=F64)
        p = process.transition_log_prob(grid, torch.tensor(x0, dtype=F64), T_END).exp()
        prob = float(torch.trapezoid(p, grid))
        tol = Z * math.sqrt(prob * (1 - prob) / x.numel()) + 1e-3
        assert abs(float(counts[k]) - prob) <= tol, (k, float(counts[k]), prob)


def fokker_planck_residual(process, x: torch.Tensor, x0: float, t: float) -> tuple[torch.Tensor, ...]:
    """(dp/dt + d/dx (f p) - 1/2 d^2/dx^2 (g^2 p), dp/dt) by autograd, for p = exp(transition_log_prob)."""
    x = x.clone().requires_grad_(True)
    tt = torch.full_like(x, t).requires_grad_(True)
    p = process.transition_log_prob(x, torch.full_like(x, x0), tt).exp()
    sde = process.sde()
    (dp_dt,) = torch.autograd.grad(p.sum(), tt, create_graph=True)
    (d_drift,) = torch.autograd.grad((sde.drift(x, tt) * p).sum(), x, create_graph=True)
    (d_diff,) = torch.autograd.grad((sde.diffusion(x, tt) ** 2 * p).sum(), x, create_graph=True)
    (dd_diff,) = torch.autograd.grad(d_diff.sum(), x)
    return dp_dt + d_drift - 0.5 * dd_diff, dp_dt


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("t", [0.05, 0.7, 3.0])
def test_transition_density_solves_fokker_planck(name, t):
    """Pins transition_log_prob to the process's own .sde() exactly (no Monte Carlo)."""
    process, x0 = CASES[name]
    _, x, _ = density_grid(name, t, 201)
    x = x[50:151]  # +-6 std (in log space for GBM)
    residual, dp_dt = fokker_planck_residual(process, x, x0, t)
    assert float(residual.detach().abs().max()) <= 1e-9 * float(dp_dt.detach().abs().max())


# ----------------------------------------------------------------------------- OU stationary law


def test_ou_stationary_variance_is_sigma2_over_2mu():
    """Zero Fokker-Planck flux for N(m, sigma^2/(2 mu)), and a long EM run settles there (not sigma^2/mu)."""
    ou = OrnsteinUhlenbeck(mu=2.0, sigma=1.0, m=-0.5)
    assert ou.stationary_var == pytest.approx(0.25) and ou.stationary_mean == -0.5

    def flux(var: float) -> torch.Tensor:  # J = f p - 1/2 d/dx (g^2 p)
        x = torch.linspace(-3.0, 2.0, 101, dtype=F64).requires_grad_(True)
        p = torch.exp(-((x - ou.m) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        (d,) = torch.autograd.grad((ou.diffusion(x, x) ** 2 * p).sum(), x, create_graph=True)
        return (ou.drift(x, x) * p - 0.5 * d).detach()

    assert float(flux(ou.stationary_var).abs().max()) < 1e-12
    assert float(flux(ou.sigma**2 / ou.mu).abs().max()) > 0.05  # the book's sigma^2/mu is not stationary

    dt, t_end = 0.01, 6.0
    x0 = torch.full((20000,), 3.0, dtype=F64)
    x = euler_maruyama(ou.sde(), x0, 0.0, t_end, round(t_end / dt), gen(60))
    em_bias = ou.sigma**2 / (2 * ou.mu - ou.mu**2 * dt) - ou.stationary_var  # EM's own stationary variance
    assert_moments(x, ou.m, ou.stationary_var, bias=em_bias)
    assert abs(float(x.var()) - ou.sigma**2 / ou.mu) > 50 * var_se(x)
    torch.testing.assert_close(ou.var(x0[:1], 40.0), torch.tensor([0.25], dtype=F64))
    torch.testing.assert_close(ou.mean(x0[:1], 40.0), torch.tensor([-0.5], dtype=F64))


def test_small_time_variances_use_expm1():
    """Var X_t ~ sigma^2 t (OU) and x0^2 sigma^2 t (GBM) as t -> 0, to float64 precision."""
    t, x0 = 1e-12, torch.tensor([1.5], dtype=F64)
    ou, gbm = OrnsteinUhlenbeck(mu=2.0, sigma=0.7), GeometricBrownianMotion(mu=0.3, sigma=0.7)
    assert float(ou.var(x0, t)) == pytest.approx(0.49 * t, rel=1e-10, abs=0)  # 1 - exp(): rel. error 6e-6
    assert float(gbm.var(x0, t)) == pytest.approx(2.25 * 0.49 * t, rel=1e-10, abs=0)


# ----------------------------------------------------------------------------- solvers


def test_strong_order_em_half_milstein_one_on_gbm():
    """Same Brownian increments, exact X_T = x0 exp((mu - sigma^2/2) T + sigma W_T): slopes 0.5 and 1.0."""
    gbm, T, P, n_fine = GeometricBrownianMotion(mu=1.0, sigma=1.0), 1.0, 4000, 256
    _, W = brownian_path(P, n_fine, T, generator=gen(70), dtype=F64)
    x0 = torch.ones(P, 1, dtype=F64)
    exact = x0 * torch.exp((gbm.mu - gbm.sigma**2 / 2) * T + gbm.sigma * W[:, -1])
    steps = [8, 16, 32, 64, 128, 256]
    err_em, err_mil = [], []
    for n in steps:
        dW = W[:, :: n_fine // n].diff(dim=1)
        err_em.append(float((euler_maruyama(gbm.sde(), x0, 0.0, T, n, dW=dW) - exact).abs().mean()))
        err_mil.append(float((milstein(gbm.sde(), x0, 0.0, T, n, dW=dW) - exact).abs().mean()))
    log_dt = np.log(T / np.array(steps))
    slope_em = np.polyfit(log_dt, np.log(err_em), 1)[0]
    slope_mil = np.polyfit(log_dt, np.log(err_mil), 1)[0]
    assert 0.3 <= slope_em <= 0.7, err_em
    assert slope_mil >= 0.8, err_mil
    assert err_mil[-1] < err_em[-1] / 3


def test_milstein_autograd_derivative_and_additive_noise():
    gbm = GeometricBrownianMotion(mu=0.2, sigma=0.6)
    x0 = torch.full((50, 2), 1.3, dtype=F64)
    dW = torch.randn(50, 20, 2, dtype=F64, generator=gen(80)) * math.sqrt(1 / 20)
    explicit = milstein(gbm.sde(), x0, 0.0, 1.0, 20, dW=dW)
    by_autograd = milstein(SDE(gbm.drift, gbm.diffusion), x0, 0.0, 1.0, 20, dW=dW)
    torch.testing.assert_close(by_autograd, explicit)
    assert not torch.allclose(explicit, euler_maruyama(gbm.sde(), x0, 0.0, 1.0, 20, dW=dW))
    ou = OrnsteinUhlenbeck(mu=1.0, sigma=0.5)  # g' = 0: Milstein is Euler-Maruyama
    additive = SDE(ou.drift, ou.diffusion)
    torch.testing.assert_close(
        milstein(additive, x0, 0.0, 1.0, 20, dW=dW), euler_maruyama(additive, x0, 0.0, 1.0, 20, dW=dW)
    )


def test_solvers_run_backwards_in_time():
    """t1 < t0: dt < 0, noise sqrt(|dt|); X = x0 + mu (t1 - t0) + sigma W_{|t1 - t0|}."""
    clock = SDE(drift=lambda x, t: t * torch.ones_like(x), diffusion=lambda x, t: torch.zeros_like(x))
    t0, t1, n = 2.0, 0.5, 300
    x = euler_maruyama(clock, torch.zeros(1, 1, dtype=F64), t0, t1, n)
    dt = (t1 - t0) / n  # left Riemann sum of int_t0^t1 t dt: f is evaluated at the step's start t_k
    assert float(x) == pytest.approx(n * t0 * dt + dt**2 * n * (n - 1) / 2, rel=1e-12)
    assert float(x) == pytest.approx((t1**2 - t0**2) / 2, abs=abs(dt) * abs(t1 - t0))
    decay = SDE(drift=lambda x, t: -x, diffusion=lambda x, t: torch.zeros_like(x))
    x = euler_maruyama(decay, torch.ones(1, 1, dtype=F64), 1.0, 0.0, 1000)
    assert float(x) == pytest.approx(math.e, rel=2e-3)
    bm = BrownianMotionWithDrift(mu=0.8, sigma=1.2)
    x0 = torch.full((20000, 1), 0.3, dtype=F64)
    for solver in (euler_maruyama, milstein):
        x = solver(bm.sde(), x0, 2.0, 0.5, 30, gen(90))[:, 0]
        assert_moments(x, 0.3 - 1.5 * 0.8, 1.2**2 * 1.5)


def test_return_path_and_generator():
    ou = OrnsteinUhlenbeck(mu=1.0, sigma=0.5)
    x0 = torch.randn(4, 2, 3, dtype=F64, generator=gen(1))
    times, path = euler_maruyama(ou.sde(), x0, 0.0, 2.0, 10, gen(5), return_path=True)
    assert times.shape == (11,) and path.shape == (4, 11, 2, 3)
    torch.testing.assert_close(times, torch.linspace(0.0, 2.0, 11, dtype=F64))
    assert torch.equal(path[:, 0], x0)
    assert torch.equal(path[:, -1], euler_maruyama(ou.sde(), x0, 0.0, 2.0, 10, gen(5)))
    assert not torch.equal(path[:, -1], euler_maruyama(ou.sde(), x0, 0.0, 2.0, 10, gen(6)))
    with pytest.raises(ValueError):
        euler_maruyama(ou.sde(), x0, 0.0, 2.0, 10, dW=torch.zeros(4, 9, 2, 3, dtype=F64))


def test_milstein_backwards_on_gbm_is_gbm_with_reversed_drift():
    """With s = t0 - t, dt = -ds: running GBM(mu, sigma) backwards is the Ito SDE of GBM(-mu, sigma) in s,
    so X = x0 exp((-mu - sigma^2/2) |t1 - t0| + sigma W); Milstein's correction uses dW^2 - |dt|."""
    gbm, P, n = GeometricBrownianMotion(mu=0.5, sigma=0.8), 2000, 200
    x0 = torch.ones(P, 1, dtype=F64)
    _, W = brownian_path(P, n, 1.0, generator=gen(95), dtype=F64)
    dW = W.diff(dim=1)
    back = milstein(gbm.sde(), x0, 1.0, 0.0, n, dW=dW)
    fwd = milstein(GeometricBrownianMotion(mu=-0.5, sigma=0.8).sde(), x0, 0.0, 1.0, n, dW=dW)
    torch.testing.assert_close(back, fwd)
    exact = x0 * torch.exp((-gbm.mu - gbm.sigma**2 / 2) * 1.0 + gbm.sigma * W[:, -1])
    assert float((back - exact).abs().mean()) <= 0.005
