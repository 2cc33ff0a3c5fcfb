"""kuosan.sample: the contract (budgets, grids, errors, options) and the closed forms behind single steps.

Budgets: every method, several NFEs, two processes: the Denoiser's call counter never exceeds nfe, and a
fixed-cost method leaves fewer evaluations unused than one step costs. Closed forms: DDPM's ancestral step
against book eq. 4.13, Score SDE's ancestral step against its eq. 47 (VE), the first-order solvers of every
family against each other (all are DDIM), the multistep quadratures against exact integrals of polynomials,
eabm's exactness on Gaussian data, Analytic-DPM's Gamma and variance against a Gaussian's (and no stale Gamma
after the data change in place), dynamic thresholding against its definition.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import F64, make_process, mixture_2d
from test_samplers_order import reference

import kuosan
from kuosan.analytic import Gaussian
from kuosan.processes import EDM, VE, VP, DiscreteVP, RectifiedFlow
from kuosan.samplers import METHODS, BudgetExceeded, available, dynamic_threshold, estimate_gamma
from kuosan.samplers.abm import abm_weights, u_of_lambda
from kuosan.samplers.analytic import optimal_variance
from kuosan.samplers.common import schedule
from kuosan.samplers.grid import default_grid
from kuosan.samplers.multistep import dpmpp_3m

pytestmark = pytest.mark.usefixtures("one_thread")


def model_for(process_id: str, prediction: str | None = None):
    p = make_process(process_id)
    pred = prediction or ("velocity" if process_id == "RectifiedFlow" else "eps")
    return mixture_2d().denoiser(p, pred)


def x_T(model, n: int = 6, seed: int = 0) -> torch.Tensor:
    return model.process.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


_GAMMA: dict[str, object] = {}


def options_for(method: str, model) -> dict:
    """Analytic-DPM needs its Gamma table (estimated once, outside the budget)."""
    if not method.startswith("analytic"):
        return {}
    key = repr(model.process)
    if key not in _GAMMA:
        data = mixture_2d().sample(2000, generator=torch.Generator().manual_seed(3))
        _GAMMA[key] = estimate_gamma(model, data, n_knots=16, generator=torch.Generator().manual_seed(4))
    return {"gamma": _GAMMA[key]}


# --- the registry and its errors ---------------------------------------------------------------------------
def test_available_lists_every_book_method():
    names = available()
    for m in ["ddpm", "ancestral-sde", "ald", "euler-maruyama", "reverse-diffusion", "pc", "euler", "heun",
              "heun-churn", "rk45", "ddim", "dpm-solver-1", "dpm-solver-2", "dpm-solver-3", "dpmpp-2s", "dpmpp-2m",
              "dpmpp-3m", "unipc", "analytic-ddpm", "analytic-ddim", "flow-euler", "flow-midpoint"]:
        assert m in names
    assert names == list(METHODS) and kuosan.sample is kuosan.samplers.sample


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown sampler 'dpm\\+\\+'.*dpmpp-2m"):
        kuosan.sample(model_for("VP"), x_T(model_for("VP")), "dpm++")


def test_unknown_option_names_the_method_options():
    model = model_for("VP")
    with pytest.raises(ValueError, match="takes no option.*'etta'.*eta"):
        kuosan.sample(model, x_T(model), "ddim", etta=1.0)


# rectified flow's alpha(1) = 0 makes its SDE, x/alpha and sigma_t/alpha_{t|s} singular at t = 1: these refuse it
SINGULAR_AT_ALPHA_ZERO = ["euler-maruyama", "reverse-diffusion", "pc", "heun-churn", "dpm-solver-1", "dpm-solver-2",
                          "dpm-solver-3", "analytic-ddpm", "analytic-ddim"]


@pytest.mark.parametrize("method", SINGULAR_AT_ALPHA_ZERO)
def test_unsupported_process_says_why(method):
    """Each of them raises a ValueError that names alpha, whatever the budget."""
    model = model_for("RectifiedFlow")
    for nfe in (3, 20):
        with pytest.raises(ValueError, match="alpha"):
            kuosan.sample(model, x_T(model), method, nfe=nfe, **options_for(method, model))


def test_logsnr_grid_on_rectified_flow_says_why():
    model = model_for("RectifiedFlow")
    with pytest.raises(ValueError, match="log-SNR is infinite"):
        kuosan.sample(model, x_T(model), "dpmpp-2m", nfe=10, grid="logsnr")


def test_explicit_grid_is_checked_against_the_budget():
    model = model_for("VP")
    ts = model.process.timesteps(20, "logsnr")
    with pytest.raises(ValueError, match="needs 21 evaluations, more than nfe=10"):
        kuosan.sample(model, x_T(model), "dpmpp-2m", nfe=10, grid=ts)
    model.reset_nfe()
    kuosan.sample(model, x_T(model), "dpmpp-2m", nfe=None, grid=ts)
    assert model.nfe == 21


# --- budgets -----------------------------------------------------------------------------------------------
STEP_COST = {"heun-churn": 2, "flow-midpoint": 2, "pc": 2, "rk45": None}


BUDGET_CASES = [(m, p) for p in ("DiscreteVP.linear", "RectifiedFlow") for m in METHODS
                if not (p == "RectifiedFlow" and m in SINGULAR_AT_ALPHA_ZERO)]


@pytest.mark.parametrize(("method", "process_id"), BUDGET_CASES, ids=[f"{m}-{p}" for m, p in BUDGET_CASES])
def test_nfe_is_a_hard_budget(method, process_id):
    """denoiser.nfe <= nfe for every method and budget; fixed-cost methods also spend the budget. Only rk45 may
    refuse (BudgetExceeded); the methods undefined on rectified flow are checked above."""
    model = model_for(process_id)
    opts = options_for(method, model)
    for nfe in (3, 7, 12, 25):
        model.reset_nfe()
        try:
            out = kuosan.sample(model, x_T(model), method, nfe=nfe, generator=torch.Generator().manual_seed(1), **opts)
        except BudgetExceeded:
            assert method == "rk45"
        else:
            assert out.shape == (6, 2) and torch.isfinite(out).all()
            cost = STEP_COST.get(method, 1)
            assert model.nfe <= nfe
            if cost is not None:
                assert model.nfe > nfe - cost, (method, nfe, model.nfe)


def test_rk45_counts_its_evaluations():
    model = model_for("VP")
    model.reset_nfe()
    kuosan.sample(model, x_T(model), "rk45", nfe=2000, rtol=1e-3, atol=1e-3)
    assert 10 < model.nfe < 2000


# --- grids -------------------------------------------------------------------------------------------------
def test_default_grids_follow_method_and_process():
    ancestral, exp_int = METHODS["ddpm"].grids, METHODS["dpmpp-2m"].grids
    assert default_grid(VP(), ancestral) == "uniform"
    assert default_grid(VE(), ancestral) == "uniform"  # uniform t = geometric sigma, as NCSN
    assert default_grid(EDM(), ancestral) == "karras"  # uniform in sigma would skip the data end
    assert default_grid(VP(), exp_int) == "logsnr"
    assert default_grid(RectifiedFlow(), exp_int) == "uniform"  # lambda(1) = -inf
    assert default_grid(DiscreteVP.linear(), METHODS["eabm"].grids) == "quadratic"
    assert default_grid(EDM(), METHODS["eabm"].grids) == "logsnr"


@pytest.mark.parametrize("kind", ["leading", "trailing"])
def test_integer_grids_end_with_the_denoise(kind):
    """DDIM's integer grids end at t = 0: the step there is the final denoise, counted once."""
    model = model_for("DiscreteVP.linear")
    model.reset_nfe()
    x = kuosan.sample(model, x_T(model), "ddim", nfe=10, grid=kind)
    assert model.nfe == 10
    ts = model.process.timesteps(10, kind)  # 10 model times, then t = 0
    y = kuosan.samplers.sample_ddim(model, x_T(model), ts[:-1], denoise=True)
    torch.testing.assert_close(x, y)


# --- closed forms of single steps --------------------------------------------------------------------------
def test_ddpm_step_is_book_eq_4_13():
    """On DDPM's own grid t_i -> t_{i-1}: x_{t-1} = (x_t - beta_t/sqrt(1 - abar_t) eps)/sqrt(alpha_t) + sigma_t z,
    with sigma_t^2 = beta_t ("beta") or beta-tilde_t = (1 - abar_{t-1})/(1 - abar_t) beta_t ("beta_tilde")."""
    model = model_for("DiscreteVP.linear")
    p = model.process
    i = 500
    ts = p.t_of_index(torch.tensor([i, i - 1]))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    b, abar, abar_prev = p.betas[i], p.alphas_cumprod[i], p.alphas_cumprod[i - 1]
    eps = model.eps(x, ts[0])
    mean = (x - b / torch.sqrt(1 - abar) * eps) / torch.sqrt(1 - b)
    for variance, var in (("beta", b), ("beta_tilde", (1 - abar_prev) / (1 - abar) * b)):
        out = kuosan.samplers.sample_ancestral(model, x, ts, variance=variance, denoise=False,
                                               generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(out, mean + var.sqrt() * z, rtol=1e-10, atol=1e-10)


def test_ddim_eta_one_is_ddpm():
    """DDIM with eta = 1 samples the posterior (DDIM eq. 16): it is DDPM with beta-tilde, step by step."""
    model = model_for("VP")
    outs = [kuosan.sample(model, x_T(model), m, nfe=15, generator=torch.Generator().manual_seed(7), grid="uniform",
                          **kw) for m, kw in (("ddim", {"eta": 1.0}), ("ddpm", {}))]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)


def test_ancestral_sde_is_score_sde_eq_47_on_ve():
    """Score SDE's ancestral sampler for VE (Song et al. 2021, arXiv:2011.13456, eq. 47), written with the score:
    x_{i-1} = x_i + (s_i^2 - s_{i-1}^2) score(x_i) + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z, s = sigma.
    (A dropped s_{i-1}^2 / s_i^2 in the noise or a score scaled by 1/2 moves x by O(1).)"""
    model = model_for("VE")
    p, x = model.process, x_T(model)
    ts = p.timesteps(12, "uniform")
    out = kuosan.sample(model, x, "ancestral-sde", nfe=None, grid=ts, denoise_final=False,
                        generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    sig = p.sigma(ts)
    for i in range(12):
        d2 = sig[i] ** 2 - sig[i + 1] ** 2
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = x + d2 * model.score(x, ts[i].expand(6)) + torch.sqrt(sig[i + 1] ** 2 * d2 / sig[i] ** 2) * z
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_every_first_order_solver_is_ddim():
    """Euler in (x/alpha, sigma/alpha), DDIM, DPM-Solver-1 and DPM-Solver++(1): one method (DPM-Solver §4.1)."""
    model = model_for("VP")
    ts = model.process.timesteps(7, "logsnr")
    s = kuosan.samplers
    outs = [s.sample_ddim(model, x_T(model), ts), s.sample_euler(model, x_T(model), ts),
            s.sample_dpm_solver(model, x_T(model), ts, orders=[1] * 7),
            s.sample_dpmpp_2s(model, x_T(model), ts, orders=[1] * 7),
            s.sample_heun(model, x_T(model), ts, orders=[1] * 7),
            s.sample_unipc(model, x_T(model), ts, order=1, corrector=False)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-10, atol=1e-10)


def test_dpmpp_3m_integrates_quadratics_exactly():
    """With m_j = q(lambda_j), q quadratic, the 3M step equals sigma_t/sigma_s x + sigma_t int e^lam q(lam) dlam
    exactly (the reference code's D2 without its factor 2 misses by O(h^3))."""
    from scipy.integrate import quad

    p = VP()
    ts = p.t_of_log_snr(torch.tensor([-2.0, -1.2, -0.5, 0.4], dtype=F64))  # uneven steps
    s = schedule(p, ts)
    q = lambda lam: 0.3 - 0.7 * lam + 1.3 * lam**2  # noqa: E731
    a, b = dpmpp_3m(s, 2)
    got = sum(bj * q(s.lam[2 - j]) for j, bj in enumerate(b))
    exact = s.sigma[3] * quad(lambda lam: math.exp(lam) * q(lam), s.lam[2], s.lam[3], epsabs=1e-14)[0]
    assert a == pytest.approx(s.sigma[3] / s.sigma[2])
    assert got == pytest.approx(exact, rel=1e-12)


def test_abm_weights_integrate_polynomials_in_u_exactly():
    """eabm's Lagrange weights: sum_j w_j P(u_j) = int P(u(lam)) e^{lam - lam_t} dlam for P of degree < #nodes."""
    from scipy.integrate import quad

    lam_s, lam_t, sd = -0.8, 0.9, 1.0
    nodes = [float(u_of_lambda(v, sd)) for v in (-0.8, -1.5, -2.1)]
    P = lambda u: 2.0 - 3.0 * u + 5.0 * u**2  # noqa: E731
    w = abm_weights(lam_s, lam_t, nodes, sd)
    exact = quad(lambda lam: P(float(u_of_lambda(lam, sd))) * math.exp(lam - lam_t), lam_s, lam_t, epsabs=1e-14)[0]
    assert sum(wj * P(u) for wj, u in zip(w, nodes, strict=True)) == pytest.approx(exact, rel=1e-12)
    w_inf = abm_weights(-math.inf, lam_t, nodes[:1], sd)  # from alpha = 0: int_{-inf} e^{lam - lam_t} = 1
    assert w_inf[0] == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("process_id", ["DiscreteVP.linear", "VP", "EDM", "RectifiedFlow"])
def test_eabm_is_exact_for_gaussian_data(process_id):
    """For data N(mu, sigma_d^2 I) x0 is linear in u along the PF-ODE: eabm is exact with 3 evaluations,
    where DPM-Solver++(2M) is not."""
    p = make_process(process_id)
    for sd in (1.0, 0.5):
        g = Gaussian(torch.tensor([0.7, -1.2, 0.3], dtype=F64), sd**2)
        model = g.denoiser(p, "velocity" if process_id == "RectifiedFlow" else "eps")
        xT = p.prior_sample((5, 3), generator=torch.Generator().manual_seed(8), dtype=F64)
        ref = reference(model, xT)
        for nfe in (3, 6):
            x = kuosan.sample(model, xT, "eabm", nfe=nfe, sigma_data=sd)
            torch.testing.assert_close(x, ref, atol=1e-8, rtol=0)
        assert (kuosan.sample(model, xT, "dpmpp-2m", nfe=6) - ref).abs().max() > 1e-4


# --- Analytic-DPM ------------------------------------------------------------------------------------------
def test_gamma_matches_a_gaussian():
    """For data N(mu, v I): eps(x_t) = sigma (x_t - alpha mu)/(alpha^2 v + sigma^2), so
    Gamma_t = E ||eps||^2 / d = sigma^2 / (alpha^2 v + sigma^2)."""
    p, v = VP(), 0.3
    g = Gaussian(torch.tensor([0.5, -1.0], dtype=F64), v)
    model = g.denoiser(p)
    n = 50_000
    data = g.sample(n, generator=torch.Generator().manual_seed(9))
    ts = p.t_of_log_snr(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], dtype=F64))
    table = estimate_gamma(model, data, ts, generator=torch.Generator().manual_seed(10))
    a, s = p.alpha(ts), p.sigma(ts)
    exact = s**2 / (a**2 * v + s**2)
    se = exact * math.sqrt(2 / (2 * n))  # ||eps||^2/d is exact * chi^2_2 / 2
    assert ((table.gamma - exact).abs() < 5 * se).all(), (table.gamma, exact)
    torch.testing.assert_close(table.at(p, ts), table.gamma)


def test_optimal_variance_is_the_gaussian_reverse_variance():
    """For Gaussian data N(mu, v) Var(x0 | x_t) = v sigma_t^2 / V_t (V = alpha^2 v + sigma^2) whatever x_t, so the
    reverse conditional of the DDIM family, N(alpha_s x0 + sqrt(sigma_s^2 - lam^2)(x_t - alpha_t x0)/sigma_t, lam^2),
    has variance lam^2 + (alpha_s - sqrt(sigma_s^2 - lam^2) alpha_t/sigma_t)^2 Var(x0 | x_t); for lam^2 = beta-tilde
    (the Markov DDPM) that is V_s - alpha_{t|s}^2 V_s^2 / V_t. Analytic-DPM's optimum with the exact Gamma = sigma_t^2
    / V_t must equal both."""
    p, v = DiscreteVP.linear(), 0.3
    t = torch.tensor([0.9, 0.5, 0.2, 0.05], dtype=F64)
    s = torch.tensor([0.7, 0.45, 0.1, 0.01], dtype=F64)
    V = lambda u: p.alpha(u) ** 2 * v + p.sigma(u) ** 2  # noqa: E731
    gamma, var_x0 = p.sigma(t) ** 2 / V(t), v * p.sigma(t) ** 2 / V(t)
    post = kuosan.samplers.dpm_solver.posterior_coefficients(p, s, t)[2]
    for lam2 in (post, 0.3 * post, torch.zeros_like(post)):
        c = p.alpha(s) - torch.sqrt(p.sigma(s) ** 2 - lam2) * p.alpha(t) / p.sigma(t)
        torch.testing.assert_close(optimal_variance(p, s, t, lam2, gamma), lam2 + c**2 * var_x0, rtol=1e-10, atol=0)
    markov = V(s) - p.transition(s, t)[0] ** 2 * V(s) ** 2 / V(t)
    torch.testing.assert_close(optimal_variance(p, s, t, post, gamma), markov, rtol=1e-10, atol=0)


def test_analytic_sampler_follows_an_in_place_change_of_the_data():
    """No stale Gamma table: after the data tensor is scaled in place (same storage, same data_ptr), data= gives
    exactly what a table freshly estimated on the new values gives (same generator stream), and a new sample."""
    model = model_for("DiscreteVP.linear")
    data = mixture_2d().sample(2000, generator=torch.Generator().manual_seed(3))

    def with_data() -> torch.Tensor:
        g = torch.Generator().manual_seed(5)
        return kuosan.sample(model, x_T(model), "analytic-ddpm", nfe=12, generator=g, data=data)

    def with_fresh_table() -> torch.Tensor:
        g = torch.Generator().manual_seed(5)
        gamma = estimate_gamma(model, data.clone(), generator=g)
        return kuosan.sample(model, x_T(model), "analytic-ddpm", nfe=12, generator=g, gamma=gamma)

    before, ptr = with_data(), data.data_ptr()
    torch.testing.assert_close(before, with_fresh_table(), rtol=0, atol=0)
    data.mul_(0.5)
    assert data.data_ptr() == ptr
    after = with_data()
    torch.testing.assert_close(after, with_fresh_table(), rtol=0, atol=0)
    assert (after - before).abs().max() > 1e-3


def test_analytic_sampler_without_gamma_says_how_to_get_it():
    model = model_for("VP")
    with pytest.raises(ValueError, match=r"estimate_gamma\(denoiser, x0_data\).*gamma=gamma"):
        kuosan.sample(model, x_T(model), "analytic-ddim", nfe=10)


# --- the rest of the contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dpmpp-2m", "dpm-solver-3", "dpmpp-2s", "ddim", "unipc", "eabm", "heun"])
def test_a_sampler_cache_changes_nothing_but_the_cost(method):
    """The caller's SamplerCache: identical results with and without it, filled on first use, one per process."""
    model = model_for("DiscreteVP.linear")
    cache = kuosan.samplers.SamplerCache(model.process)
    plain = kuosan.sample(model, x_T(model), method, nfe=9)
    for _ in range(2):
        torch.testing.assert_close(kuosan.sample(model, x_T(model), method, nfe=9, cache=cache), plain, rtol=0, atol=0)
    assert len(cache) > 0
    other = model_for("VP")
    with pytest.raises(ValueError, match="SamplerCache belongs to"):
        kuosan.sample(other, x_T(other), method, nfe=9, cache=cache)


def test_dynamic_threshold_definition():
    """s = clip(quantile_p |x0|, 1, max); x0 <- clip(x0, -s, s)/s, per sample."""
    x0 = torch.stack([torch.linspace(-3, 3, 101, dtype=F64), torch.linspace(-0.5, 0.5, 101, dtype=F64)])
    out = dynamic_threshold(x0, ratio=0.9, max_value=2.0)
    s0 = min(torch.quantile(x0[0].abs(), 0.9).item(), 2.0)
    torch.testing.assert_close(out[0], x0[0].clamp(-s0, s0) / s0)
    torch.testing.assert_close(out[1], x0[1])  # quantile below 1: untouched


def test_thresholding_option_reaches_the_data_prediction_solvers():
    model = model_for("VP")
    plain = kuosan.sample(model, 4 * x_T(model), "dpmpp-2m", nfe=8)
    clipped = kuosan.sample(model, 4 * x_T(model), "dpmpp-2m", nfe=8, thresholding=True)
    assert clipped.abs().max() <= 1 + 1e-12 < plain.abs().max()
    with pytest.raises(ValueError, match="not a data-prediction solver"):
        kuosan.sample(model, x_T(model), "euler", nfe=8, thresholding=True)


def test_state_keeps_its_dtype_and_shape():
    """float32 state with float64 coefficients; image-shaped (B, C, H, W) batches broadcast like (B, D)."""
    model = model_for("VP")
    x = x_T(model)
    for m in ("dpmpp-2m", "heun", "ddpm", "eabm"):
        y32 = kuosan.sample(model, x.float(), m, nfe=9, generator=torch.Generator().manual_seed(1))
        y64 = kuosan.sample(model, x, m, nfe=9, generator=torch.Generator().manual_seed(1))
        assert y32.dtype == torch.float32
        torch.testing.assert_close(y32.double(), y64, atol=1e-4, rtol=1e-4)
        img = kuosan.sample(model, x.reshape(6, 2, 1, 1), m, nfe=9, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(img.reshape(6, 2), y64)


def test_callback_sees_every_step_and_cond_reaches_the_network():
    """A conditional network (the mixture moved by `shift`) sampled with cond={"shift": ...} is the moved mixture."""
    from kuosan.analytic import GaussianMixture

    p, gmm, seen = VP(), mixture_2d(), []
    shift = torch.tensor([1.0, -2.0], dtype=F64)

    def fn(x, t, shift):
        return gmm.eps(x - p.alpha(t)[:, None] * shift, t, p)

    model = kuosan.Denoiser(fn, p)
    cond = {"shift": shift.expand(6, 2)}
    x = kuosan.sample(model, x_T(model), "dpmpp-2m", nfe=12, cond=cond, callback=seen.append)
    assert [st.i for st in seen] == list(range(11))
    assert seen[-1].t.item() == pytest.approx(p.t_min) and seen[-1].x0.shape == (6, 2)
    moved = GaussianMixture(gmm.weights, gmm.means + shift, gmm.covariances).denoiser(p)
    torch.testing.assert_close(x, kuosan.sample(moved, x_T(model), "dpmpp-2m", nfe=12), rtol=1e-10, atol=1e-10)


def test_heun_churn_without_churn_is_heun():
    model = model_for("EDM")
    ts = model.process.timesteps(6, "karras")
    a = kuosan.samplers.sample_heun_churn(model, x_T(model), ts, S_churn=0.0)
    b = kuosan.samplers.sample_heun(model, x_T(model), ts)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --- SDE-DPM-Solver++(2M) ----------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_dpmpp_sde_first_order_keeps_a_point_mass_marginal_exact(eta):
    """For data at one point x0 (the exact x0 prediction is x0), x_s ~ N(alpha_s x0, sigma_s^2) must map to
    x_t ~ N(alpha_t x0, sigma_t^2) for every eta: A alpha_s + B = alpha_t and A^2 sigma_s^2 + C^2 = sigma_t^2."""
    from kuosan.samplers.multistep import dpmpp_sde

    p = DiscreteVP.linear()
    s = schedule(p, p.timesteps(9, "logsnr"))
    for i in range(len(s.lam) - 1):
        a, (b,), c = dpmpp_sde(s, i, 1, eta)
        assert a * s.alpha[i] + b == pytest.approx(s.alpha[i + 1], rel=1e-12)
        assert a**2 * s.sigma[i] ** 2 + c**2 == pytest.approx(s.sigma[i + 1] ** 2, rel=1e-12)


def test_dpmpp_sde_eta_one_first_order_is_the_ddpm_step_and_eta_zero_is_ddim():
    """eta = 1: A, B, C are the posterior q(x_s | x_t, x0) coefficients and std sqrt(beta-tilde) (book eqs.
    4.9-4.11); eta = 0: the DDIM step DPM-Solver++(1)."""
    from kuosan.samplers.ancestral import beta_tilde
    from kuosan.samplers.dpm_solver import posterior_coefficients
    from kuosan.samplers.multistep import dpmpp_1, dpmpp_sde

    p = DiscreteVP.linear()
    ts = p.timesteps(7, "uniform")
    s = schedule(p, ts)
    c_xt, c_x0, _ = posterior_coefficients(p, ts[1:], ts[:-1])
    std = beta_tilde(p, ts[1:], ts[:-1]).sqrt()
    for i in range(7):
        a, (b,), c = dpmpp_sde(s, i, 1, 1.0)
        assert (a, b, c) == pytest.approx((float(c_xt[i]), float(c_x0[i]), float(std[i])), rel=1e-9)
        a0, b0, c0 = dpmpp_sde(s, i, 1, 0.0)
        assert (a0, b0[0], c0) == pytest.approx((*dpmpp_1(s, i)[:1], dpmpp_1(s, i)[1][0], 0.0), rel=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_dpmpp_sde_second_order_integrates_linear_x0_exactly(eta):
    """With m_j = q(lambda_j), q linear, the drift part of the 2M step equals
    alpha_t int (1 + eta) e^{-(1 + eta)(lambda_t - lambda)} q(lambda) dlambda over [lambda_s, lambda_t]."""
    from scipy.integrate import quad

    from kuosan.samplers.multistep import dpmpp_sde

    p = VP()
    ts = p.t_of_log_snr(torch.tensor([-1.7, -0.6, 0.9], dtype=F64))  # uneven steps
    s = schedule(p, ts)
    q = lambda lam: 0.4 - 1.1 * lam  # noqa: E731
    a, b, c = dpmpp_sde(s, 1, 2, eta)
    k, lt = 1 + eta, s.lam[2]
    exact = s.alpha[2] * quad(lambda lam: k * math.exp(-k * (lt - lam)) * q(lam), s.lam[1], lt, epsabs=1e-14)[0]
    assert b[0] * q(s.lam[1]) + b[1] * q(s.lam[0]) == pytest.approx(exact, rel=1e-12)
    assert a == pytest.approx(s.sigma[2] / s.sigma[1] * math.exp(-eta * (lt - s.lam[1])), rel=1e-12)


def test_dpmpp_2m_sde_rejects_eta_outside_0_1():
    model = model_for("VP")
    with pytest.raises(ValueError, match="eta=1.5"):
        kuosan.sample(model, x_T(model), "dpmpp-2m-sde", nfe=5, eta=1.5)
