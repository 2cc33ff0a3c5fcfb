"""Forward processes against closed forms (book ch. 4): q(x_t|x_0), the posterior, transitions, the SDE
coefficients of every process, Euler-Maruyama simulations of the forward SDEs, time grids and the prior.

Monte-Carlo checks use fixed seeds and Z = 5 standard errors estimated from the closed form; where a
discretisation is involved (Euler-Maruyama) its bias is allowed for separately.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import F64, PROCESS_IDS, interior_times, make_process

from kuosan.processes import EDM, GRID_KINDS, VE, VP, DiscreteVP, RectifiedFlow, SubVP

Z = 5.0
DISCRETE = [n for n in PROCESS_IDS if n.startswith("DiscreteVP")]


def t64(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def off_knots(proc, t: torch.Tensor) -> torch.Tensor:
    """Move DiscreteVP times to the middle of their grid cell, where log alpha is smooth (linear)."""
    if isinstance(proc, DiscreteVP):
        return (torch.floor(t * proc.n) + 0.5) / proc.n
    return t


def numeric_derivative(fn, t: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central difference (fn(t + h) - fn(t - h)) / 2h, with h relative to t's scale."""
    h = h * torch.clamp(t, min=1.0)
    return (fn(t + h) - fn(t - h)) / (2 * h)


# --- q(x_t | x_0) -----------------------------------------------------------------------------------------
def test_marginal_sample_moments(process, gen):
    """x_t ~ q(x_t | x_0) = N(alpha x_0, sigma^2) (book eq. 4.8): sample mean and variance at three times."""
    t, n, x0 = interior_times(process, 3), 40_000, 1.5
    x_t, eps = process.marginal_sample(torch.full((3, n), x0, dtype=F64), t, generator=gen(0))
    a, s = process.alpha(t), process.sigma(t)
    torch.testing.assert_close(x_t, a[:, None] * x0 + s[:, None] * eps)
    mean_err = (x_t.mean(1) - a * x0).abs()
    var_err = (x_t.var(1) - s**2).abs()
    assert (mean_err < Z * s / math.sqrt(n)).all(), mean_err / (s / math.sqrt(n))
    assert (var_err < Z * s**2 * math.sqrt(2 / n)).all(), var_err / (s**2 * math.sqrt(2 / n))


def test_marginal_sample_broadcasts_per_sample_times(gen):
    """Per-sample t of shape (B,) broadcasts over image-shaped x_0 (B, C, H, W)."""
    p = VP()
    x0 = torch.randn(4, 2, 3, 3, generator=gen(1), dtype=F64)
    t = t64(0.1, 0.3, 0.6, 0.9)
    x_t, eps = p.marginal_sample(x0, t, generator=gen(2))
    for b in range(4):
        torch.testing.assert_close(x_t[b], p.alpha(t[b]) * x0[b] + p.sigma(t[b]) * eps[b])


# --- the posterior q(x_s | x_t, x_0) and the transition q(x_t | x_s) ---------------------------------------
@pytest.mark.parametrize("name", DISCRETE)
def test_posterior_is_ddpm_closed_form(name, gen):
    """DDPM posterior on adjacent grid points (book eqs. 4.9-4.11; Ho et al. 2020, arXiv:2006.11239, eq. 6-7):
    mu~ = sqrt(abar_{t-1}) beta_t/(1-abar_t) x0 + sqrt(alpha_t)(1-abar_{t-1})/(1-abar_t) x_t,
    beta~ = (1-abar_{t-1})/(1-abar_t) beta_t."""
    p = make_process(name)
    beta = p.betas
    abar = torch.cumprod(1 - beta, 0)
    i = torch.tensor([1, 2, 10, 100, 500, 900, 999])
    x_t, x0 = torch.randn(2, len(i), generator=gen(3), dtype=F64)
    mean, var = p.posterior(x_t, x0, p.t_of_index(i - 1), p.t_of_index(i))
    ab, ab_prev = abar[i], abar[i - 1]
    mu_ref = ab_prev.sqrt() * beta[i] / (1 - ab) * x0 + (1 - beta[i]).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    torch.testing.assert_close(mean, mu_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, (1 - ab_prev) / (1 - ab) * beta[i], rtol=1e-10, atol=0)
    # the first step (i = 0) goes to t = 0, the clean data: mu~ = x0, beta~ = 0 (abar_{-1} = 1)
    mean0, var0 = p.posterior(x_t, x0, torch.zeros(len(i), dtype=F64), p.t_of_index(torch.zeros(len(i))))
    torch.testing.assert_close(mean0, x0, rtol=1e-12, atol=1e-12)
    assert (var0 == 0).all()


def test_posterior_is_gaussian_conditioning(process, gen):
    """q(x_s | x_t, x_0) from the joint Gaussian of (x_s, x_t) given x_0, for every pair s < t:
    Cov(x_s, x_t) = (alpha_t/alpha_s) sigma_s^2, so mean = alpha_s x0 + Cov/sigma_t^2 (x_t - alpha_t x0) and
    var = sigma_s^2 - Cov^2/sigma_t^2 (independent of the expm1 form used by Process.posterior)."""
    ts = interior_times(process, 5)
    pairs = torch.tensor(list(itertools.combinations(range(5), 2)))
    s, t = ts[pairs[:, 0]], ts[pairs[:, 1]]  # interior_times ascend, so s < t
    assert (s < t).all()
    x_t, x0 = torch.randn(2, len(t), generator=gen(4), dtype=F64)
    a_s, a_t, sig_s, sig_t = process.alpha(s), process.alpha(t), process.sigma(s), process.sigma(t)
    cov = a_t / a_s * sig_s**2
    mean_ref = a_s * x0 + cov / sig_t**2 * (x_t - a_t * x0)
    var_ref = sig_s**2 - cov**2 / sig_t**2
    mean, var = process.posterior(x_t, x0, s, t)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, var_ref, rtol=1e-7, atol=1e-12)


def test_posterior_agrees_with_monte_carlo_chain(process, gen):
    """Simulate x_s ~ q(x_s|x0), x_t ~ q(x_t|x_s) through `transition`, regress x_s on x_t: the slope, the
    intercept and the residual variance are the posterior's (its mean is linear in x_t)."""
    ts = interior_times(process, 4)
    s, t = ts[1], ts[2]
    n, x0 = 200_000, 1.2
    g = gen(5)
    x_s = process.alpha(s) * x0 + process.sigma(s) * torch.randn(n, generator=g, dtype=F64)
    a_ts, var_ts = process.transition(s, t)
    x_t = a_ts * x_s + var_ts.sqrt() * torch.randn(n, generator=g, dtype=F64)
    # the chain reproduces the marginal q(x_t | x0)
    sig_t = process.sigma(t)
    assert abs(x_t.mean() - process.alpha(t) * x0) < Z * sig_t / math.sqrt(n)
    assert abs(x_t.var() - sig_t**2) < Z * sig_t**2 * math.sqrt(2 / n)
    # ordinary least squares x_s = b0 + b1 x_t
    xc = x_t - x_t.mean()
    b1 = (xc * (x_s - x_s.mean())).sum() / (xc**2).sum()
    b0 = x_s.mean() - b1 * x_t.mean()
    resid_var = (x_s - b0 - b1 * x_t).var()
    m0, var = process.posterior(t64(0.0), t64(x0), s, t)
    m1, _ = process.posterior(t64(1.0), t64(x0), s, t)
    se_b1 = (var / (n * x_t.var())).sqrt()
    se_b0 = (var * (1 / n + x_t.mean() ** 2 / (n * x_t.var()))).sqrt()
    assert abs(b1 - (m1 - m0)) < Z * se_b1
    assert abs(b0 - m0) < Z * se_b0
    assert abs(resid_var - var) < Z * var * math.sqrt(2 / n)


def test_transition_composes(process):
    """alpha_{t|s} alpha_s = alpha_t, sigma_t^2 = alpha_{t|s}^2 sigma_s^2 + sigma_{t|s}^2 (VDM eq. 21-22), and
    q(x_t|x_u) q(x_u|x_s) integrates to q(x_t|x_s)."""
    ts = interior_times(process, 6)  # ascending
    for s, u, t in itertools.combinations(ts, 3):
        assert s < u < t
        a_ts, v_ts = process.transition(s, t)
        torch.testing.assert_close(a_ts * process.alpha(s), process.alpha(t), rtol=1e-12, atol=0)
        torch.testing.assert_close(process.sigma(t) ** 2, a_ts**2 * process.sigma(s) ** 2 + v_ts, rtol=1e-10, atol=0)
        a_us, v_us = process.transition(s, u)
        a_tu, v_tu = process.transition(u, t)
        torch.testing.assert_close(a_tu * a_us, a_ts, rtol=1e-12, atol=0)
        torch.testing.assert_close(a_tu**2 * v_us + v_tu, v_ts, rtol=1e-10, atol=0)


# --- DiscreteVP is diffusers' DDPMScheduler ----------------------------------------------------------
@pytest.mark.parametrize(
    "name, schedule, kw",
    [
        ("DiscreteVP.linear", "linear", {}),
        ("DiscreteVP.scaled_linear", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
        ("DiscreteVP.cosine", "squaredcos_cap_v2", {}),
    ],
)
def test_discrete_vp_matches_diffusers(name, schedule, kw):
    """alpha(t_i)^2 at t_i = (i+1)/N is diffusers' alphas_cumprod[i]; betas agree at float32 rounding.

    diffusers keeps alphas_cumprod in float32: N = 1000 float32 products accumulate up to ~N 2^-24 = 6e-5
    relative error (measured 1.3e-5 for the cosine schedule), hence rtol 3e-5 there and 1e-6 on the betas.
    """
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, **kw)
    p = make_process(name)
    torch.testing.assert_close(p.betas, ref.betas.to(F64), rtol=1e-6, atol=0)
    abar = p.alpha(p.t_of_index(torch.arange(1000))) ** 2
    torch.testing.assert_close(abar, ref.alphas_cumprod.to(F64), rtol=3e-5, atol=0)
    torch.testing.assert_close(p.sigma(p.t_of_index(torch.arange(1000))) ** 2, 1 - abar, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_vp_grid_values_and_training_times(name, gen):
    """alpha(t_i)^2 = prod_{j<=i} (1 - beta_j) (book eq. 4.8), alpha(0) = 1; sample_t draws grid times."""
    p = make_process(name)
    i = torch.arange(p.n)
    torch.testing.assert_close(p.alpha(p.t_of_index(i)) ** 2, torch.cumprod(1 - p.betas, 0), rtol=1e-12, atol=0)
    assert float(p.alpha(t64(0.0))) == 1.0 and float(p.sigma(t64(0.0))) == 0.0
    assert (p.index_of_t(p.t_of_index(i)) == i).all()
    t = p.sample_t(20_000, generator=gen(6))
    k = t * p.n
    torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-9)
    assert k.min() == 1 and k.max() == p.n


@pytest.mark.parametrize("process", [i for i in PROCESS_IDS if not i.startswith("DiscreteVP")], indirect=True)
def test_continuous_sample_t_is_uniform(process, gen):
    """Continuous processes draw t uniformly on [t_min, t_max] (DiscreteVP draws grid times: tested above)."""
    t = process.sample_t(40_000, generator=gen(7))
    assert t.dtype == F64 and t.min() >= process.t_min and t.max() <= process.t_max
    u = (t - process.t_min) / (process.t_max - process.t_min)
    assert abs(u.mean() - 0.5) < Z * math.sqrt(1 / 12 / len(u))


# --- each process pinned to its SDE ---------------------------------------------------------------------
def test_f_and_g2_are_the_derivatives_of_alpha_and_sigma(process):
    """f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2 (VDM eq. 17; book eq. 4.30), numerically."""
    t = off_knots(process, interior_times(process, 5))
    f_num = numeric_derivative(process.log_alpha, t)
    g2_num = numeric_derivative(lambda u: process.sigma(u) ** 2, t) - 2 * f_num * process.sigma(t) ** 2
    torch.testing.assert_close(process.f(t), f_num, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(process.g2(t), g2_num, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(process.g(t) ** 2, process.g2(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(process.dalpha_dt(t), numeric_derivative(process.alpha, t), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(process.dsigma_dt(t), numeric_derivative(process.sigma, t), rtol=1e-6, atol=1e-9)
    x = torch.randn(5, 3, dtype=F64)
    torch.testing.assert_close(process.drift(x, t), process.f(t)[:, None] * x)


def test_log_alpha_and_log_snr_are_consistent(process):
    """The closed-form log alpha and lambda = log(alpha/sigma) agree with alpha and sigma themselves."""
    t = interior_times(process, 7)
    torch.testing.assert_close(process.log_alpha(t), torch.log(process.alpha(t)), rtol=1e-12, atol=1e-14)
    lam_ref = torch.log(process.alpha(t) / process.sigma(t))
    torch.testing.assert_close(process.log_snr(t), lam_ref, rtol=1e-10, atol=1e-12)


def test_t_of_log_snr_inverts_log_snr(process):
    """t -> lambda(t) -> t and lambda -> t(lambda) -> lambda, anywhere in (t_min, t_max) (off the DDPM grid too)."""
    t = interior_times(process, 11)
    torch.testing.assert_close(process.t_of_log_snr(process.log_snr(t)), t, rtol=1e-9, atol=1e-12)
    lam = torch.linspace(-4, 3, 9, dtype=F64)
    torch.testing.assert_close(process.log_snr(process.t_of_log_snr(lam)), lam, rtol=1e-9, atol=1e-9)


def vp_closed_form(t: torch.Tensor, b0: float = 0.1, b1: float = 20.0):
    """beta(t), alpha(t) = exp(-1/4 t^2 (b1 - b0) - 1/2 t b0) of the Score SDE VP process (arXiv:2011.13456 eq. 29)."""
    return b0 + t * (b1 - b0), torch.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)


def test_vp_closed_forms():
    """VP: alpha^2 + sigma^2 = 1, f = -beta/2, g^2 = beta (Score SDE eq. 11)."""
    p, t = VP(), torch.linspace(0.001, 1, 50, dtype=F64)
    beta, alpha = vp_closed_form(t)
    torch.testing.assert_close(p.alpha(t), alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(p.f(t), -beta / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.g2(t), beta, rtol=1e-12, atol=0)


def test_subvp_closed_forms():
    """sub-VP: same alpha as VP, sigma = 1 - alpha^2, g^2 = beta (1 - alpha^4) (Score SDE eq. 12)."""
    p, t = SubVP(), torch.linspace(0.001, 1, 50, dtype=F64)
    beta, alpha = vp_closed_form(t)
    torch.testing.assert_close(p.alpha(t), alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.sigma(t), 1 - alpha**2, rtol=1e-10, atol=0)
    torch.testing.assert_close(p.f(t), -beta / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.g2(t), beta * (1 - alpha**4), rtol=1e-10, atol=0)


def test_ve_closed_forms():
    """VE: alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t geometric, g^2 = 2 sigma^2 log(sigma_max/sigma_min)."""
    p, t = VE(sigma_min=0.01, sigma_max=50.0), torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(p.alpha(t), torch.ones_like(t), rtol=0, atol=0)
    sigma = 0.01 * 5000.0**t
    torch.testing.assert_close(p.sigma(t), sigma, rtol=1e-12, atol=0)
    ratios = p.sigma(t[1:]) / p.sigma(t[:-1])
    torch.testing.assert_close(ratios, torch.full_like(ratios, 5000.0**0.1), rtol=1e-12, atol=0)
    assert float(p.f(t).abs().max()) == 0
    torch.testing.assert_close(p.g2(t), 2 * sigma**2 * math.log(5000.0), rtol=1e-12, atol=0)


def test_edm_and_rectified_flow_closed_forms():
    """EDM: alpha = 1, sigma = t, g^2 = 2t (Karras 2022 Table 1). RF: alpha = 1 - t, sigma = t, f = -1/(1-t),
    g^2 = 2t/(1-t), alpha' = -1, sigma' = 1 (Liu et al. 2022)."""
    p, t = EDM(), torch.linspace(0.002, 80, 9, dtype=F64)
    torch.testing.assert_close(p.sigma(t), t, rtol=0, atol=0)
    torch.testing.assert_close(p.alpha(t), torch.ones_like(t), rtol=0, atol=0)
    torch.testing.assert_close(p.g2(t), 2 * t, rtol=1e-14, atol=0)
    assert (p.t_min, p.t_max, p.sigma_data) == (0.002, 80.0, 0.5)
    p, t = RectifiedFlow(), torch.linspace(0.001, 0.99, 9, dtype=F64)
    torch.testing.assert_close(p.alpha(t), 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(p.sigma(t), t, rtol=0, atol=0)
    torch.testing.assert_close(p.f(t), -1 / (1 - t), rtol=1e-14, atol=0)
    torch.testing.assert_close(p.g2(t), 2 * t / (1 - t), rtol=1e-14, atol=0)
    torch.testing.assert_close(p.dalpha_dt(t), -torch.ones_like(t), rtol=0, atol=0)
    torch.testing.assert_close(p.dsigma_dt(t), torch.ones_like(t), rtol=0, atol=0)


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_vp_sde_coefficients(name):
    """DiscreteVP: alpha^2 + sigma^2 = 1 anywhere; on (t_{i-1}, t_i] f = N/2 log(1 - beta_i), g^2 = -2 f,
    the continuous beta(t) ~ N beta_i of the book's limit (§4.3.3)."""
    p = make_process(name)
    t = torch.rand(200, generator=torch.Generator().manual_seed(8), dtype=F64) * (1 - 1e-6) + 1e-6
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), rtol=1e-12, atol=0)
    i = torch.arange(p.n, dtype=F64)
    mid = (i + 0.5) / p.n  # inside (t_{i-1}, t_i] with t_i = (i+1)/N
    f_ref = p.n / 2 * torch.log1p(-p.betas)
    torch.testing.assert_close(p.f(mid), f_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(p.f(p.t_of_index(i)), f_ref, rtol=1e-10, atol=0)  # right end of each cell
    torch.testing.assert_close(p.g2(mid), -2 * f_ref, rtol=1e-10, atol=0)


# --- Euler-Maruyama simulation of the forward SDE dx = f(t) x dt + g(t) dw --------------------------------
@pytest.mark.parametrize("name", ["VP", "SubVP", "VE"])
def test_forward_sde_simulation_matches_marginal(name, gen):
    """Simulate dx = f(t) x dt + g(t) dw (book eq. 4.30) from x(0) ~ N(x0, sigma(0)^2) with Euler-Maruyama,
    20000 paths x 1000 steps: mean alpha(t) x0 and variance sigma(t)^2 at t = 0.25, 0.5, 1.

    Allowance: Z standard errors plus 2% for EM's weak order-1 bias (dt int |f^2| + |f'| or |d log g^2/dt| dt is
    below 2% for these schedules at dt = 1e-3)."""
    p, g = make_process(name), gen(9)
    n_paths, n_steps, x0 = 20_000, 1000, 2.0
    ts = torch.linspace(0, 1, n_steps + 1, dtype=F64)
    dt = ts[1] - ts[0]
    f, g2 = p.f(ts[:-1]), p.g2(ts[:-1])
    x = x0 + p.sigma(ts[0]) * torch.randn(n_paths, generator=g, dtype=F64)
    checks = {250: None, 500: None, 1000: None}
    for k in range(n_steps):
        x = x + f[k] * x * dt + torch.sqrt(g2[k] * dt) * torch.randn(n_paths, generator=g, dtype=F64)
        if k + 1 in checks:
            checks[k + 1] = x.clone()
    for k, xk in checks.items():
        a, s = p.alpha(ts[k]), p.sigma(ts[k])
        tol_mean = Z * s / math.sqrt(n_paths) + 0.02 * a * x0
        tol_var = (Z * math.sqrt(2 / n_paths) + 0.02) * s**2
        assert abs(xk.mean() - a * x0) < tol_mean, (k, float(xk.mean()), float(a * x0))
        assert abs(xk.var() - s**2) < tol_var, (k, float(xk.var()), float(s**2))


# --- time grids ---------------------------------------------------------------------------------------
def grid_start(proc) -> float | None:
    """Rectified flow's log-SNR is -inf at t = 1: grids in lambda start just inside."""
    return 0.99 if isinstance(proc, RectifiedFlow) else None


@pytest.mark.parametrize("kind", GRID_KINDS)
def test_grids_descend_from_t_max_to_t_min(process, kind):
    t0 = grid_start(process) if kind in ("logsnr", "karras") else None
    ts = process.timesteps(12, kind, t_start=t0)
    assert ts.shape == (13,) and ts.dtype == F64
    assert float(ts[0]) == (process.t_max if t0 is None else t0) and float(ts[-1]) == process.t_min
    assert (ts.diff() < 0).all(), ts
    assert process.timesteps(12, kind, t_start=t0, dtype=torch.float32).dtype == torch.float32


def test_logsnr_grid_is_equally_spaced_in_lambda(process):
    """kind="logsnr": lambda(t_i) equally spaced (DPM-Solver §3.3, "time_uniform_logSNR")."""
    lam = process.log_snr(process.timesteps(10, "logsnr", t_start=grid_start(process)))
    steps = lam.diff()
    torch.testing.assert_close(steps, steps.mean().expand(10), rtol=1e-8, atol=1e-10)
    assert (steps > 0).all()


@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_grid_follows_edm_eq5(process, rho):
    """kind="karras": s_i = (s_max^(1/rho) + i/n (s_min^(1/rho) - s_max^(1/rho)))^rho on s = sigma/alpha
    (Karras et al. 2022, arXiv:2206.00364, eq. 5)."""
    n = 10
    ts = process.timesteps(n, "karras", t_start=grid_start(process), rho=rho)
    s = process.sigma(ts) / process.alpha(ts)
    s_max, s_min = s[0], s[-1]
    i = torch.arange(n + 1, dtype=F64)
    ref = (s_max ** (1 / rho) + i / n * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    torch.testing.assert_close(s, ref, rtol=1e-8, atol=0)


def test_uniform_and_quadratic_grids():
    p = VP()
    ts = p.timesteps(8, "uniform")
    torch.testing.assert_close(ts.diff(), torch.full((8,), (p.t_min - p.t_max) / 8, dtype=F64))
    root = p.timesteps(8, "quadratic").sqrt()
    torch.testing.assert_close(root.diff(), torch.full((8,), (p.t_min**0.5 - p.t_max**0.5) / 8, dtype=F64))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 10, 50, 1000])
def test_ddim_integer_grids_match_diffusers(spacing, n):
    """DiscreteVP "leading"/"trailing" = diffusers DDIMScheduler(timestep_spacing=...).set_timesteps(n) at
    t = (idx + 1)/N, then t = 0 (Lin et al. 2023, arXiv:2305.08891, Table 2)."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(n)
    p = DiscreteVP.linear()
    ts = p.timesteps(n, spacing)
    expected = torch.cat([(ref.timesteps.to(F64) + 1) / 1000, torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(ts, expected, rtol=0, atol=1e-15)
    assert (ts.diff() < 0).all()


def test_bad_grid_inputs_raise(processes):
    vp, rf, ddpm = processes["VP"], processes["RectifiedFlow"], processes["DiscreteVP.linear"]
    with pytest.raises(ValueError, match="n >= 1"):
        vp.timesteps(0, "uniform")
    with pytest.raises(ValueError, match="downwards"):
        vp.timesteps(5, "uniform", t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="unknown time grid"):
        vp.timesteps(5, "linear")
    with pytest.raises(ValueError, match="unknown time grid"):
        ddpm.timesteps(5, "lead")
    for kind in ("logsnr", "karras"):
        with pytest.raises(ValueError, match="infinite"):
            rf.timesteps(5, kind)
    for n in (0, 1001):
        with pytest.raises(ValueError, match="integer grid"):
            ddpm.timesteps(n, "trailing")


def test_bad_process_parameters_raise():
    for make in (
        lambda: VP(beta_min=0.0),
        lambda: SubVP(beta_min=5.0, beta_max=1.0),
        lambda: VE(sigma_min=50.0, sigma_max=0.01),
        lambda: EDM(sigma_min=0.0),
        lambda: RectifiedFlow(t_min=-0.1),
        lambda: DiscreteVP(torch.tensor([0.1])),
        lambda: DiscreteVP(torch.tensor([0.1, 1.0])),
    ):
        with pytest.raises(ValueError):
            make()


# --- the prior at t_max ---------------------------------------------------------------------------------
PRIOR_STD = {"VE": 50.0, "EDM": 80.0}


def test_prior_std_and_log_prob(process):
    """prior N(0, prior_std^2 I): 1 for VP-type processes and RF, sigma_max for VE and EDM; the log-density is
    torch.distributions.Normal's, summed over all but the batch dimension."""
    name = type(process).__name__
    assert process.prior_std == pytest.approx(PRIOR_STD.get(name, 1.0), rel=1e-14)
    x = 40 * torch.randn(6, 3, 4, 2, generator=torch.Generator().manual_seed(10), dtype=F64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(process.prior_std, dtype=F64))
    ref = normal.log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(process.prior_log_prob(x), ref, rtol=1e-12, atol=1e-10)


def test_prior_sample_has_prior_std(process, gen):
    x = process.prior_sample((20_000, 2), generator=gen(11), dtype=F64)
    assert x.shape == (20_000, 2) and x.dtype == F64
    s, n = process.prior_std, x.numel()
    assert abs(x.mean()) < Z * s / math.sqrt(n)
    assert abs(x.std() - s) < Z * s / math.sqrt(2 * n)
