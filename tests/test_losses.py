"""Chapter-4 training objectives against closed forms (exact Gaussian mixtures, Gaussian KLs, quadrature).

Monte-Carlo checks allow Z = 4 standard errors estimated from the samples themselves, with fixed seeds.
"""

import math

import pytest
import scipy.integrate
import torch
from torch.distributions import Normal, kl_divergence

from kuosan import Denoiser
from kuosan.analytic import Gaussian, GaussianMixture
from kuosan.losses import (
    WEIGHTINGS,
    ddpm_posterior_logvar_learned,
    discretized_gaussian_log_likelihood,
    dsm_loss,
    explicit_sm_loss,
    hybrid_loss,
    normal_kl,
    prior_kl,
    sample_t,
    sliced_sm_loss,
    vlb_term,
)
from kuosan.processes import EDM, VE, VP, DiscreteVP, RectifiedFlow, SubVP

F64 = torch.float64
Z = 4.0

PROCESSES = {
    "vp": VP,
    "subvp": SubVP,
    "ve": lambda: VE(sigma_min=0.01, sigma_max=20.0),
    "edm": EDM,
    "rf": RectifiedFlow,
    "ddpm": lambda: DiscreteVP.cosine(200),
}
PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


def _gmm() -> GaussianMixture:
    return GaussianMixture([0.35, 0.65], [[-1.0, 0.5], [0.8, -0.3]], [[0.15, 0.05], [0.3, 0.2]])


def _times(proc, n: int, g: torch.Generator) -> torch.Tensor:
    """Times with log-SNR uniform on [-4, 4] (clipped to the process's range): every regime of every process
    gets its share, and rectified flow stays away from t = 1 where alpha vanishes."""
    lam = 8 * torch.rand(n, generator=g, dtype=F64) - 4
    return proc.t_of_log_snr(lam).clamp(proc.t_min, proc.t_min + 0.99 * (proc.t_max - proc.t_min))


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), x.std().item() / math.sqrt(x.numel())


# --- names ------------------------------------------------------------------------------------------
def test_bad_names_raise_listing_the_choices():
    model = _gmm().denoiser(VP())
    x0 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="weighting 'l2'.*'simple'.*'velocity'"):
        dsm_loss(model, x0, weighting="l2")
    with pytest.raises(ValueError, match="time sampling 'beta'.*'uniform', 'importance', 'lognormal'"):
        sample_t(VP(), 4, "beta")
    with pytest.raises(ValueError, match="'gaussian', 'rademacher'"):
        sliced_sm_loss(lambda x: -x, x0, dist="sphere")
    with pytest.raises(ValueError, match="discrete-time"):
        vlb_term(model, x0, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="P_men"):
        sample_t(EDM(), 4, "lognormal", P_men=0.0)


# --- every weighting is L_simple times a weight of t ------------------------------------------------
def _time_weight(name: str, proc, t: torch.Tensor, D: int) -> torch.Tensor:
    """The factor relating each weighting to the per-dimension eps error (derived by hand, see dsm.py)."""
    a, s = proc.alpha(t), proc.sigma(t)
    da, ds = proc.dalpha_dt(t), proc.dsigma_dt(t)
    sd2 = getattr(proc, "sigma_data", 0.5) ** 2
    return {
        "simple": torch.ones_like(t),
        "sigma2": 0.5 * torch.ones_like(t),
        "likelihood": D * proc.g2(t) / (2 * s**2),
        "x0": (s / a) ** 2,
        "edm": ((s / a) ** 2 + sd2) / sd2,
        "v": ((a**2 + s**2) / a) ** 2,
        "velocity": (ds - da * s / a) ** 2,
    }[name]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("pname", list(PROCESSES))
def test_weightings_equal_simple_times_a_time_weight(pname, prediction):
    proc, g = PROCESSES[pname](), torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 3, generator=g, dtype=F64)
    t, noise = _times(proc, 64, g), torch.randn(64, 3, generator=g, dtype=F64)
    model = Denoiser(lambda x, t: 0.7 * x + torch.sin(3 * x) + t[:, None], proc, prediction)
    simple = dsm_loss(model, x0, weighting="simple", t=t, noise=noise)
    assert (simple > 1e-8).all()
    for name in WEIGHTINGS:
        got = dsm_loss(model, x0, weighting=name, t=t, noise=noise)
        torch.testing.assert_close(got, _time_weight(name, proc, t, 3) * simple, rtol=1e-8, atol=0)


# --- the exact denoiser minimises every weighting -------------------------------------------------
def _h(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * x) + 0.5 + 0.1 * x**2


# every weighting on three processes, every process and prediction kind several times
CASES = [
    (w, list(PROCESSES)[(i + j) % 6], PREDICTIONS[(i + 2 * j) % 5]) for i, w in enumerate(WEIGHTINGS) for j in (0, 2, 4)
]


@pytest.mark.parametrize("weighting,pname,prediction", CASES)
def test_dsm_is_stationary_and_minimal_at_the_exact_denoiser(weighting, pname, prediction):
    gmm, proc, g = _gmm(), PROCESSES[pname](), torch.Generator().manual_seed(2)
    n = 8000
    x0, t, noise = gmm.sample(n, g), _times(proc, n, g), torch.randn(n, 2, generator=g, dtype=F64)
    exact = gmm.denoiser(proc, prediction).fn

    def loss(theta: torch.Tensor) -> torch.Tensor:
        model = Denoiser(lambda x, t: exact(x, t) + theta[:, None] * _h(x, t), proc, prediction)
        return dsm_loss(model, x0, weighting=weighting, t=t, noise=noise)

    theta = torch.zeros(n, dtype=F64, requires_grad=True)
    l0 = loss(theta)
    (grad,) = torch.autograd.grad(l0.sum(), theta)  # per-sample d loss / d theta at theta = 0
    m, se = _mean_se(grad)
    assert abs(m) < Z * se, f"mean gradient {m:.3g} vs standard error {se:.3g}"
    for step in (0.2, -0.2):
        m, se = _mean_se(loss(torch.full((n,), step, dtype=F64)) - l0.detach())
        assert m > Z * se, f"theta={step}: loss increase {m:.3g} not significant (se {se:.3g})"


def test_edm_weighting_with_preconditioning_is_minimal_at_the_exact_denoiser():
    """EDM's F is built so that D = c_skip x + c_out F is the exact E[x0 | x]; loss weight from the preconditioner."""
    gmm, proc, g = _gmm(), EDM(), torch.Generator().manual_seed(3)
    n = 8000
    x0, t, noise = gmm.sample(n, g), _times(proc, n, g), torch.randn(n, 2, generator=g, dtype=F64)

    def loss(theta):
        def F(x_in, c_noise):
            s = torch.exp(4 * c_noise)[:, None]
            x = x_in * torch.sqrt(s**2 + 0.25)  # undo c_in
            pc = model.precond
            return (gmm.x0(x, s[:, 0], proc) - pc.c_skip(s) * x) / pc.c_out(s) + theta[:, None] * _h(x, s)

        model = Denoiser(F, proc, precondition="edm", sigma_data=0.5)
        return dsm_loss(model, x0, weighting="edm", t=t, noise=noise)

    theta = torch.zeros(n, dtype=F64, requires_grad=True)
    l0 = loss(theta)
    (grad,) = torch.autograd.grad(l0.sum(), theta)
    m, se = _mean_se(grad)
    assert abs(m) < Z * se
    s = t
    closed = (s**2 + 0.25) / (0.25 * s**2) * ((gmm.x0(x0 + s[:, None] * noise, t, proc) - x0) ** 2).mean(1)
    torch.testing.assert_close(l0.detach(), closed, rtol=1e-8, atol=1e-10)
    for step in (0.2, -0.2):
        m, se = _mean_se(loss(torch.full((n,), step, dtype=F64)) - l0.detach())
        assert m > Z * se


@pytest.mark.parametrize("pname", ["vp", "edm", "rf", "ddpm"])
def test_simple_minimum_is_the_posterior_variance_of_eps(pname):
    """Single Gaussian N(mu, Sigma), Sigma = U diag(d) U^T: Var(eps | x_t) = I - sigma^2 C^{-1}, C = alpha^2 Sigma +
    sigma^2 I, so E||eps - E[eps|x_t]||^2 / D = 1/D sum_j alpha^2 d_j / (alpha^2 d_j + sigma^2)."""
    proc, g = PROCESSES[pname](), torch.Generator().manual_seed(4)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))[0]
    d = torch.tensor([0.05, 0.4, 2.0], dtype=F64)
    gauss = Gaussian([0.3, -1.0, 2.0], Q @ torch.diag(d) @ Q.T)
    n = 20000
    x0, t = gauss.sample(n, g), _times(proc, n, g)
    loss = dsm_loss(gauss.denoiser(proc, "eps"), x0, t=t, generator=g)
    a2, s2 = proc.alpha(t)[:, None] ** 2, proc.sigma(t)[:, None] ** 2
    closed = (a2 * d / (a2 * d + s2)).mean(1)
    m, se = _mean_se(loss - closed)
    assert abs(m) < Z * se, f"{m:.3g} vs se {se:.3g}"
    assert 0.2 < closed.mean() < 0.8  # the check is not vacuous


# --- training-time samplers --------------------------------------------------------------------------
SAMPLERS = [
    ("vp", "importance"),
    ("subvp", "importance"),
    ("ve", "importance"),
    ("edm", "importance"),
    ("rf", "importance"),
    ("ddpm", "importance"),
    ("ddpm", "lognormal"),
    ("narrow-edm", "lognormal"),
    ("narrow-ve", "lognormal"),
    ("rf", "lognormal"),
]


@pytest.mark.parametrize("pname,kind", SAMPLERS)
def test_importance_weights_recover_the_uniform_expectation(pname, kind):
    narrow = {"narrow-edm": lambda: EDM(sigma_min=0.05, sigma_max=3.0), "narrow-ve": lambda: VE(0.1, 2.0)}
    proc = {**PROCESSES, **narrow}[pname]()
    g = torch.Generator().manual_seed(5)
    t, w = sample_t(proc, 200000, kind, g)
    assert ((t >= proc.t_min) & (t <= proc.t_max)).all()

    def f(t):
        u = (t - proc.t_min) / (proc.t_max - proc.t_min)
        return torch.cos(3 * u) + u**2

    grid = getattr(proc, "n", None)
    if grid is not None:  # uniform over the N training times
        assert torch.allclose(t * grid, torch.round(t * grid))
        target = f(proc.t_of_index(torch.arange(grid))).mean().item()
    else:
        target = math.sin(3) / 3 + 1 / 3
    for val, expect in ((w * f(t), target), (w, 1.0)):
        m, se = _mean_se(val)
        assert abs(m - expect) < Z * se, f"{m:.5g} vs {expect:.5g} (se {se:.2g})"


@pytest.mark.parametrize("pname", ["vp", "subvp", "ve", "edm"])
def test_importance_proposal_is_uniform_in_log_snr(pname):
    """g^2 / sigma^2 = -2 d lambda / dt, so t ~ g^2/sigma^2 means lambda(t) ~ U[lambda(t_max), lambda(t_min)]."""
    from scipy.stats import kstest

    proc = PROCESSES[pname]()
    t, _ = sample_t(proc, 20000, "importance", torch.Generator().manual_seed(6))
    ends = proc.log_snr(torch.tensor([proc.t_min, proc.t_max], dtype=F64))
    u = (ends[0] - proc.log_snr(t)) / (ends[0] - ends[1])
    assert kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_lognormal_sampler_matches_edm():
    t, w = sample_t(EDM(), 100000, "lognormal", torch.Generator().manual_seed(7))
    log_sigma = torch.log(t)
    n = t.numel()
    assert abs(log_sigma.mean() - (-1.2)) < Z * 1.2 / math.sqrt(n)
    assert abs(log_sigma.std() - 1.2) < Z * 1.2 / math.sqrt(2 * n)
    assert (w > 0).all()


def test_dsm_loss_reweights_importance_but_not_lognormal():
    gmm, proc = _gmm(), VP()
    model, x0 = gmm.denoiser(proc), gmm.sample(16, torch.Generator().manual_seed(0))
    for kind, reweighted in (("importance", True), ("lognormal", False)):
        got = dsm_loss(model, x0, time_sampling=kind, generator=torch.Generator().manual_seed(8))
        g = torch.Generator().manual_seed(8)
        t, w = sample_t(proc, 16, kind, g)
        plain = dsm_loss(model, x0, t=t, noise=torch.randn(16, 2, generator=g, dtype=F64))
        torch.testing.assert_close(got, plain * w if reweighted else plain)


# --- the DDPM variational bound ---------------------------------------------------------------------
def test_normal_kl_matches_quadrature_and_torch():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.4, math.log(2.0)
    p, q = Normal(m1, math.exp(lv1 / 2)), Normal(m2, math.exp(lv2 / 2))

    def integrand(x):
        lp, lq = p.log_prob(torch.tensor(x)).item(), q.log_prob(torch.tensor(x)).item()
        return math.exp(lp) * (lp - lq)

    quad = scipy.integrate.quad(integrand, -15, 15)[0]
    got = normal_kl(*(torch.tensor(v, dtype=F64) for v in (m1, lv1, m2, lv2))).item()
    assert got == pytest.approx(quad, rel=1e-7)
    assert got == pytest.approx(kl_divergence(p, q).item(), rel=1e-6)


def test_discretized_decoder_sums_to_one_over_the_256_bins():
    x = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, scale in ((0.3, 0.2), (-0.99, 0.01), (0.0, 3.0)):
        lp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(scale)))
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def _learned_variance_model(proc, A: torch.Tensor, B: torch.Tensor) -> Denoiser:
    """eps_hat = tanh(x A) + t, v = tanh(x B): 2C output channels along dim 1."""

    def fn(x, t):
        return torch.cat([torch.tanh(x @ A) + t[:, None].to(x.dtype), torch.tanh(x @ B)], dim=1)

    return Denoiser(fn, proc, "eps", learned_variance=True)


def _ddpm_reference(proc: DiscreteVP, x0, i, noise, eps_fn, v_fn):
    """Ho et al. 2020 eqs. 4, 6-7, 11 and Nichol & Dhariwal eq. 15 written with betas and alpha-bars only."""
    b = proc.betas
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
    beta, abar, abar_prev = b[i][:, None], ab[i][:, None], ab_prev[i][:, None]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    t = (i + 1).to(F64) / proc.n
    eps_hat, v = eps_fn(x_t, t), v_fn(x_t)
    post_var = (1 - ab_prev) / (1 - ab) * b
    beta_tilde = post_var[i.clamp(min=1)][:, None]  # clipped at i = 0
    mu_q = abar_prev.sqrt() * beta / (1 - abar) * x0 + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar) * x_t
    mu_p = (x_t - beta / (1 - abar).sqrt() * eps_hat) / (1 - beta).sqrt()
    frac = (v + 1) / 2
    logvar_p = frac * beta.log() + (1 - frac) * beta_tilde.log()
    return x_t, mu_q, beta_tilde, mu_p, logvar_p


def test_vlb_term_equals_the_gaussian_kl_between_true_and_model_posteriors():
    proc, g = DiscreteVP.linear(1000), torch.Generator().manual_seed(9)
    A, B = torch.randn(3, 3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)
    model = _learned_variance_model(proc, A, B)
    i = torch.tensor([1, 2, 10, 250, 500, 998, 999])
    x0, noise = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)
    eps_fn = lambda x, t: torch.tanh(x @ A) + t[:, None]  # noqa: E731
    _, mu_q, beta_tilde, mu_p, logvar_p = _ddpm_reference(proc, x0, i, noise, eps_fn, lambda x: torch.tanh(x @ B))
    want = kl_divergence(Normal(mu_q, beta_tilde.sqrt().expand_as(mu_q)), Normal(mu_p, (0.5 * logvar_p).exp()))
    got = vlb_term(model, x0, i, noise=noise)
    torch.testing.assert_close(got, want.sum(1), rtol=1e-7, atol=1e-9)


def test_vlb_term_at_zero_is_the_discretised_decoder_nll():
    proc, g = DiscreteVP.cosine(100), torch.Generator().manual_seed(10)
    A, B = torch.randn(3, 3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)
    model = _learned_variance_model(proc, A, B)
    x0 = torch.randint(0, 256, (8, 3), generator=g).to(F64) / 255 * 2 - 1
    x0[0, 0], x0[1, 1] = -1.0, 1.0  # both edge bins
    noise, i = torch.randn(8, 3, generator=g, dtype=F64), torch.zeros(8, dtype=torch.long)
    eps_fn = lambda x, t: torch.tanh(x @ A) + t[:, None]  # noqa: E731
    _, _, _, mu_p, logvar_p = _ddpm_reference(proc, x0, i, noise, eps_fn, lambda x: torch.tanh(x @ B))
    cdf = Normal(mu_p, (0.5 * logvar_p).exp()).cdf
    hi = torch.where(x0 > 0.999, torch.ones_like(x0), cdf(x0 + 1 / 255))
    lo = torch.where(x0 < -0.999, torch.zeros_like(x0), cdf(x0 - 1 / 255))
    torch.testing.assert_close(vlb_term(model, x0, i, noise=noise), -(hi - lo).log().sum(1), rtol=1e-7, atol=1e-9)


def test_learned_logvar_interpolates_log_beta_and_log_beta_tilde():
    proc = DiscreteVP.linear(1000)
    i = torch.tensor([0, 1, 500, 999])
    b = proc.betas
    ab = torch.cumprod(1 - b, 0)
    bt = (1 - ab[:-1]) / (1 - ab[1:]) * b[1:]  # beta~ for i = 1..N-1
    bt_clipped = torch.cat([bt[:1], bt])[i]
    ones = torch.ones(4, 2, dtype=F64)
    torch.testing.assert_close(ddpm_posterior_logvar_learned(proc, i, ones)[:, 0], b[i].log())
    torch.testing.assert_close(ddpm_posterior_logvar_learned(proc, i, -ones)[:, 0], bt_clipped.log())
    mid = ddpm_posterior_logvar_learned(proc, i, 0 * ones)[:, 0]
    torch.testing.assert_close(mid, 0.5 * (b[i].log() + bt_clipped.log()))


@pytest.mark.parametrize("proc", [DiscreteVP.linear(1000), VP(), VE(0.01, 50.0), RectifiedFlow()], ids=repr)
def test_prior_kl_matches_the_closed_form(proc):
    x0 = torch.randn(5, 4, generator=torch.Generator().manual_seed(11), dtype=F64)
    T = torch.tensor(proc.t_max, dtype=F64)
    q = Normal(proc.alpha(T) * x0, proc.sigma(T).expand_as(x0))
    want = kl_divergence(q, Normal(torch.zeros_like(x0), torch.full_like(x0, proc.prior_std))).sum(1)
    torch.testing.assert_close(prior_kl(proc, x0), want, rtol=1e-9, atol=1e-12)


def test_the_bound_terms_have_one_copy():
    """The hybrid loss and kuosan.likelihood's DDPM bound take their terms from losses.vlb: no second copy to drift."""
    from kuosan.likelihood import bound
    from kuosan.losses import vlb

    for name in ("prior_kl", "step_variances", "reverse_kl", "decoder_nll_discretized", "decoder_nll_gaussian",
                 "VARIANCES", "DECODERS"):
        assert getattr(bound, name) is getattr(vlb, name), name


def test_hybrid_loss_is_simple_plus_lambda_vlb_with_a_stopped_mean():
    proc, g = DiscreteVP.cosine(400), torch.Generator().manual_seed(12)
    A = torch.randn(3, 3, generator=g, dtype=F64).requires_grad_()
    B = torch.randn(3, 3, generator=g, dtype=F64).requires_grad_()
    model = _learned_variance_model(proc, A, B)
    x0, noise = torch.randn(32, 3, generator=g, dtype=F64), torch.randn(32, 3, generator=g, dtype=F64)
    i = torch.randint(1, 400, (32,), generator=g)
    i[:3] = 0
    lam = 0.01
    hybrid = hybrid_loss(model, x0, lam, t_index=i, noise=noise).mean()
    simple = dsm_loss(model, x0, t=proc.t_of_index(i), noise=noise).mean()
    vlb = vlb_term(model, x0, i, noise=noise, stop_grad_mean=True).mean()
    scale = lam * 400 / (3 * math.log(2))  # N L_t in bits per dimension, times lambda
    torch.testing.assert_close(hybrid, simple + scale * vlb)
    gh = torch.autograd.grad(hybrid, (A, B))
    gs, gv = torch.autograd.grad(simple, (A, B), allow_unused=True), torch.autograd.grad(vlb, (A, B), allow_unused=True)
    # simple trains the mean only, the stopped vlb the variance only
    assert not gs[1].any() and (gv[0] is None or not gv[0].any())
    torch.testing.assert_close(gh[0], gs[0])
    torch.testing.assert_close(gh[1], scale * gv[1])
    full = vlb_term(model, x0, i, noise=noise).mean()
    assert torch.autograd.grad(full, A)[0].abs().sum() > 0  # without the stop-gradient the mean gets a gradient


# --- score matching without noise ------------------------------------------------------------------
def _gaussian_setup(n: int = 20000):
    g = torch.Generator().manual_seed(13)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))[0]
    Sigma = Q @ torch.diag(torch.tensor([0.3, 1.0, 2.5], dtype=F64)) @ Q.T
    mu = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    x = Gaussian(mu, Sigma).sample(n, g)
    A = torch.linalg.inv(Sigma) + 0.4 * torch.randn(3, 3, generator=g, dtype=F64)  # not symmetric
    m = mu + torch.tensor([0.3, 0.1, -0.2], dtype=F64)
    model = lambda y: -(y - m) @ A.T  # noqa: E731
    exact = lambda y: -(y - mu) @ torch.linalg.inv(Sigma)  # noqa: E731
    return x, Sigma, mu, A, m, model, exact


def test_explicit_sm_matches_its_closed_form_and_the_fisher_divergence():
    x, Sigma, mu, A, m, model, exact = _gaussian_setup()
    loss_m, loss_e = explicit_sm_loss(model, x), explicit_sm_loss(exact, x)
    second = Sigma + torch.outer(mu - m, mu - m)
    closed = -torch.trace(A) + 0.5 * torch.trace(A.T @ A @ second)  # E[tr(-A) + 1/2 ||A(x - m)||^2]
    mean, se = _mean_se(loss_m.detach())
    assert abs(mean - closed.item()) < Z * se
    fisher = 0.5 * ((model(x) - exact(x)) ** 2).sum(1)
    mean, se = _mean_se((loss_m - loss_e).detach() - fisher)
    assert abs(mean) < Z * se and fisher.mean() > 20 * se


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("vr", [True, False])
def test_sliced_sm_agrees_with_explicit_sm_in_expectation(dist, vr):
    x, *_, model, exact = _gaussian_setup()
    g = torch.Generator().manual_seed(14)
    for fn in (model, exact):
        diff = sliced_sm_loss(fn, x, n_projections=2, generator=g, dist=dist, variance_reduction=vr)
        mean, se = _mean_se((diff - explicit_sm_loss(fn, x)).detach())
        assert abs(mean) < Z * se


def test_explicit_sm_trace_is_exact_on_image_shaped_input_and_trains():
    W = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(15)).requires_grad_()

    def score(x):  # (B, 1, 2, 2) -> (B, 1, 2, 2), samples independent
        return torch.tanh(x.flatten(1) @ W).reshape(x.shape)

    x = torch.randn(5, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(16))
    loss = explicit_sm_loss(score, x)
    for b in range(5):
        J = torch.autograd.functional.jacobian(lambda y: score(y[None])[0], x[b]).reshape(4, 4)
        want = torch.trace(J) + 0.5 * (score(x[b : b + 1]) ** 2).sum()
        torch.testing.assert_close(loss[b], want)
    assert torch.autograd.grad(loss.sum(), W)[0].abs().sum() > 0


def test_score_matching_with_a_score_that_ignores_x():
    x = torch.randn(4, 3, dtype=F64)
    const = lambda y: torch.full_like(y, 2.0)  # noqa: E731  (zero Jacobian)
    torch.testing.assert_close(explicit_sm_loss(const, x), torch.full((4,), 6.0, dtype=F64))
    torch.testing.assert_close(sliced_sm_loss(const, x), torch.full((4,), 6.0, dtype=F64))


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_float32_network_gets_float32_losses_and_gradients(weighting):
    net = torch.nn.Linear(3, 2)
    model = Denoiser(lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], 1)), VP(), "eps")
    x0 = torch.randn(8, 2)
    loss = dsm_loss(model, x0, weighting=weighting, time_sampling="importance", generator=torch.Generator())
    assert loss.dtype == torch.float32 and loss.shape == (8,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert net.weight.grad.abs().sum() > 0


def test_logitnormal_time_sampling_is_sd3s_on_rectified_flow():
    """SD3 §3.1: logit(t) ~ N(0, 1) for rectified flow (kuosan draws it as ln(sigma/alpha) ~ N(0, 1))."""
    from kuosan.losses import sample_t
    from kuosan.processes import RectifiedFlow

    t, w = sample_t(RectifiedFlow(), 200_000, "logitnormal", torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.01 and abs(logit.std().item() - 1.0) < 0.01
    t2, _ = sample_t(RectifiedFlow(), 200_000, "lognormal", torch.Generator().manual_seed(0), P_mean=0.0, P_std=1.0)
    assert torch.equal(t, t2)
