"""Guidance beyond the plain formula, proved on exact class-conditional mixtures (tests/test_guidance.py's oracle):
guidance limited to an interval of noise levels (Kynkaanniemi et al. 2024, arXiv:2404.07724), guidance rescale
(Lin et al. 2023, arXiv:2305.08891, §3.4), and guided sampling against the exact conditional distribution."""

from __future__ import annotations

import pytest
import torch
from conftest import F64
from test_guidance import NULL, NUM_CLASSES, assert_close, branches_exact, class_fn, class_mixtures, noised

import kuosan
from kuosan import Denoiser
from kuosan.analytic import GaussianMixture
from kuosan.denoiser import in_guidance_interval, rescale_guidance
from kuosan.eval.metrics import sliced_wasserstein
from kuosan.processes import VP, DiscreteVP, RectifiedFlow

pytestmark = pytest.mark.usefixtures("one_thread")
UNCOND = {"y": torch.tensor(NULL)}


class Recording:
    """fn(x, t, y) of the exact mixtures that records the batch size of every call."""

    def __init__(self, fn):
        self.fn, self.rows = fn, []

    def __call__(self, x, t, y):
        self.rows.append(len(x))
        return self.fn(x, t, y)


# --- guidance interval ------------------------------------------------------------------------------------
def test_interval_guides_inside_and_is_the_conditional_model_outside():
    """At noise levels s = sigma/alpha in (lo, hi] the output is the CFG mixture, elsewhere exactly the
    conditional model's; a batch entirely outside runs one branch (B rows, not 2B)."""
    proc = VP()
    mixtures = class_mixtures()
    fn = Recording(class_fn(mixtures, proc, "eps"))
    w, interval = 3.0, (0.3, 2.0)
    model = Denoiser(fn, proc, "eps", guidance=w, uncond=UNCOND, guidance_interval=interval)
    x, t, y = noised(proc)
    s = torch.exp(-proc.log_snr(t))
    inside = (s > 0.3) & (s <= 2.0)
    assert inside.any() and (~inside).any()  # the probe times straddle the interval
    q_u, q_c = branches_exact(mixtures, "eps", x, t, y, proc)
    want = torch.where(inside[:, None], (1 - w) * q_u + w * q_c, q_c)
    assert_close(model.eps(x, t, y=y), want)
    assert torch.equal(in_guidance_interval(proc, t, interval), inside)

    fn.rows.clear()
    outside = ~inside
    got = model.eps(x[outside], t[outside], y=y[outside])
    assert fn.rows == [int(outside.sum())]  # one branch
    assert torch.equal(got, q_c[outside]) or torch.allclose(got, q_c[outside], rtol=1e-12, atol=1e-12)


def test_interval_changes_samples_only_where_it_should():
    """An interval covering every noise level is plain CFG (identical samples); an empty one (above s_max) is the
    conditional model (identical to w = 1)."""
    proc = DiscreteVP.linear(n=1000)
    fn = class_fn(class_mixtures(), proc, "eps")
    base = Denoiser(fn, proc, "eps")
    x_T = proc.prior_sample((12, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.arange(12) % NUM_CLASSES

    def run(**kw):
        return kuosan.sample(base.replace(**kw), x_T, "dpmpp-2m", nfe=15, cond={"y": y})

    cfg = run(guidance=3.0, uncond=UNCOND)
    torch.testing.assert_close(run(guidance=3.0, uncond=UNCOND, guidance_interval=(0.0, 1e9)), cfg, rtol=0, atol=0)
    cond_only = run(guidance=1.0, uncond=UNCOND)
    empty = run(guidance=3.0, uncond=UNCOND, guidance_interval=(1e8, 1e9))
    torch.testing.assert_close(empty, cond_only, rtol=0, atol=0)
    assert (cfg - cond_only).abs().max() > 0.05  # the test can fail: guidance moves the samples


# --- guidance rescale -------------------------------------------------------------------------------------
def test_rescale_formula_on_known_numbers():
    """x_cfg = (1, 3) (std sqrt 2), x_pos = (0, 1) (std 1/sqrt 2): factor 1/2; phi = 0.5 -> 0.75 x_cfg."""
    guided, cond = torch.tensor([[1.0, 3.0]], dtype=F64), torch.tensor([[0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(rescale_guidance(guided, cond, 1.0), torch.tensor([[0.5, 1.5]], dtype=F64))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.5), torch.tensor([[0.75, 2.25]], dtype=F64))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.0), guided)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
def test_rescale_acts_on_v_whatever_the_network_predicts(kind):
    """The rescaled v equals rescale_guidance applied to the exact guided and conditional v, for an eps, x0, v or
    velocity network alike; phi = 1 gives each sample the conditional v's standard deviation; phi = 0 is CFG."""
    proc, mixtures = VP(), class_mixtures()
    x, t, y = noised(proc)
    w, phi = 4.0, 0.7
    model = Denoiser(class_fn(mixtures, proc, kind), proc, kind, guidance=w, uncond=UNCOND, guidance_rescale=phi)
    v_u, v_c = branches_exact(mixtures, "v", x, t, y, proc)
    v_cfg = (1 - w) * v_u + w * v_c
    assert_close(model.v(x, t, y=y), rescale_guidance(v_cfg, v_c, phi), rel=1e-6)
    full = model.replace(guidance_rescale=1.0).v(x, t, y=y)
    assert_close(full.std(dim=1), v_c.std(dim=1), rel=1e-6)
    assert_close(model.replace(guidance_rescale=0.0).v(x, t, y=y), v_cfg, rel=1e-6)


def test_guidance_option_errors():
    proc = VP()
    fn = class_fn(class_mixtures(), proc, "eps")
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        Denoiser(fn, proc, guidance=2.0, uncond=UNCOND, guidance_interval=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Denoiser(fn, proc, guidance=2.0, uncond=UNCOND, guidance_rescale=1.5)
    one_d = Denoiser(lambda x, t, y: x, proc, guidance=2.0, uncond=UNCOND, guidance_rescale=0.5)
    with pytest.raises(ValueError, match="at least two numbers"):
        one_d.eps(torch.zeros(3, 1, dtype=F64), 0.5, y=torch.zeros(3, dtype=torch.long))


# --- guided sampling against the exact conditional ---------------------------------------------------------
def sw(a, b) -> float:
    return sliced_wasserstein(a, b, n_projections=128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("proc", [DiscreteVP.linear(n=1000), RectifiedFlow()], ids=["DiscreteVP", "RectifiedFlow"])
def test_w1_guided_sampling_reproduces_the_exact_conditional(proc):
    """Guided sampling with w = 1 of the exact model draws class y's own mixture: the sliced Wasserstein distance
    to exact draws of p(x | y) is at the noise floor (two independent exact draws), while the marginal and
    w = 3 are far from it (so the test can fail)."""
    mixtures = class_mixtures()
    kind = "velocity" if isinstance(proc, RectifiedFlow) else "eps"
    method = "flow-midpoint" if kind == "velocity" else "dpmpp-2m"
    model = Denoiser(class_fn(mixtures, proc, kind), proc, kind, guidance=1.0, uncond=UNCOND)
    n, g = 3000, torch.Generator().manual_seed(0)
    for cls in range(NUM_CLASSES):
        y = torch.full((n,), cls)
        x = kuosan.sample(model, proc.prior_sample((n, 2), generator=g, dtype=F64), method, nfe=40, cond={"y": y})
        truth: GaussianMixture = mixtures[cls]
        floor = sw(truth.sample(n, generator=g), truth.sample(n, generator=g))
        got = sw(x, truth.sample(n, generator=g))
        assert got < 2.0 * floor + 0.01, (cls, got, floor)
        assert sw(mixtures[NULL].sample(n, generator=g), truth.sample(n, generator=g)) > 5 * got
    w3 = kuosan.sample(model.replace(guidance=3.0), proc.prior_sample((n, 2), generator=g, dtype=F64), method, nfe=40,
                       cond={"y": torch.zeros(n, dtype=torch.long)})
    assert sw(w3, mixtures[0].sample(n, generator=g)) > 3 * floor
