"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. 6), x0 clipping and Denoiser.replace,
proved against exact class-conditional Gaussian mixtures.

The oracle: class y has its own mixture p(x | y); the null class NULL = NUM_CLASSES (kuosan's nets' convention) is
the marginal p(x) = sum_y p(y) p(x | y). fn(x, t, y) returns the exact prediction of each row's class, so a guided
Denoiser must return (1 - w) q(x_t | null) + w q(x_t | y) for every quantity q (eps, x0, v, score, velocity), every
process, and every time, rectified flow's alpha(t_max) = 0 included.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from conftest import F64, PROCESS_IDS, interior_times, make_process
from torch import Tensor

import kuosan
from kuosan import Denoiser
from kuosan.analytic import GaussianMixture
from kuosan.denoiser import EDMPrecond
from kuosan.processes import EDM, VP, Process, RectifiedFlow
from kuosan.samplers import BudgetExceeded, available, dynamic_threshold, estimate_gamma

NUM_CLASSES = 3
NULL = NUM_CLASSES  # the null (unconditional) class index
P_Y = (0.5, 0.3, 0.2)
KINDS = ("eps", "x0", "v", "score", "velocity")
WS = (0.0, 1.0, 3.0)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the oracle -------------------------------------------------------------------------------------------
def class_mixtures(scale: float = 1.0) -> list[GaussianMixture]:
    """p(x | y) for y = 0, 1, 2 (two tilted 2-D Gaussians each), then the marginal p(x) at index NULL."""
    means = scale * torch.tensor([[[-2.0, 0.5], [-1.0, -1.0]], [[1.5, 1.0], [2.0, -0.5]], [[0.0, 2.0], [0.5, -2.0]]],
                                 dtype=F64)  # (class, component, D)
    covs = torch.tensor([[[0.30, 0.12], [0.12, 0.20]], [[0.10, -0.05], [-0.05, 0.25]]], dtype=F64)
    weights = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.3, 0.7]], dtype=F64)
    classes = [GaussianMixture(weights[y], means[y], covs) for y in range(NUM_CLASSES)]
    joint = torch.tensor(P_Y, dtype=F64)[:, None] * weights  # p(y) p(k | y)
    marginal = GaussianMixture(joint.flatten(), means.reshape(-1, 2), covs.repeat(NUM_CLASSES, 1, 1))
    return [*classes, marginal]


def per_row(fns: list[Callable[..., Tensor]], x: Tensor, y: Tensor, *args: Tensor) -> Tensor:
    """fns[y_i](x_i, args_i) for each row i; rows of one class in one call."""
    out = torch.full_like(x, math.nan)
    for k, f in enumerate(fns):
        rows = y == k
        if rows.any():
            out[rows] = f(x[rows], *(a[rows] for a in args))
    return out


def class_fn(mixtures: list[GaussianMixture], proc: Process, kind: str) -> Callable[..., Tensor]:
    """fn(x, t, y): the exact `kind` of p(x | y) at (x, t) for each row; y = NULL gives the marginal's."""
    exact = [gm.denoiser(proc, kind).fn for gm in mixtures]
    return lambda x, t, y: per_row(exact, x, y, t)


def class_edm_F(mixtures: list[GaussianMixture], sigma_data: float) -> Callable[..., Tensor]:
    """EDM's F(c_in x~, c_noise, y) for the exact x0 of each row's class: x~ = x / alpha = x0 + s eps is the EDM
    process (alpha = 1, sigma = t) at t = s, so F = (E[x0 | x~] - c_skip x~) / c_out (EDM Table 1)."""
    pc, edm = EDMPrecond(sigma_data), EDM()
    x0s = [lambda xs, s, gm=gm: gm.x0(xs, s, edm) for gm in mixtures]

    def F(u: Tensor, c_noise: Tensor, y: Tensor) -> Tensor:
        s = torch.exp(4 * c_noise)  # c_noise = ln(s) / 4   (B,)
        sb = s[:, None]
        xs = u / pc.c_in(sb)
        return (per_row(x0s, xs, y, s) - pc.c_skip(sb) * xs) / pc.c_out(sb)

    return F


def exact(gm: GaussianMixture, kind: str, x: Tensor, t: Tensor, proc: Process) -> Tensor:
    """The exact `kind` of the mixture at (x, t), written out from E[x0 | x_t], E[eps | x_t] and the score."""
    if kind == "score":
        return gm.score(x, t, proc)
    a, s, da, ds = (f(t)[:, None] for f in (proc.alpha, proc.sigma, proc.dalpha_dt, proc.dsigma_dt))
    x0, eps = gm.x0(x, t, proc), gm.eps(x, t, proc)
    return {"eps": eps, "x0": x0, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps}[kind]


def branches_exact(mixtures, kind: str, x: Tensor, t: Tensor, y: Tensor, proc: Process) -> tuple[Tensor, Tensor]:
    """(q(x_t | null), q(x_t | y)) of the exact mixtures, per row."""
    q_c = per_row([lambda x, t, gm=gm: exact(gm, kind, x, t, proc) for gm in mixtures], x, y, t)
    return exact(mixtures[NULL], kind, x, t, proc), q_c


def noised(proc: Process, t: float | None = None, n: int = 6, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """x_t = alpha x0 + sigma eps with x0 from the marginal and labels cycling over the classes: n rows at time t,
    or (t=None) n rows at each of t_min, three interior times and t_max. Returns x, t (rows,), y (rows,)."""
    g = torch.Generator().manual_seed(seed)
    ts = [proc.t_min, *interior_times(proc, 3).tolist(), proc.t_max] if t is None else [t]
    tt = torch.tensor(ts, dtype=F64).repeat_interleave(n)
    x0 = class_mixtures()[NULL].sample(len(tt), generator=g)
    x = proc.alpha(tt)[:, None] * x0 + proc.sigma(tt)[:, None] * torch.randn(len(tt), 2, generator=g, dtype=F64)
    return x, tt, torch.arange(len(tt)) % NUM_CLASSES


def assert_close(got: Tensor, want: Tensor, rel: float = 1e-7) -> None:
    """Equal to `rel` of the larger of 1 and the quantity's scale (scores at sigma = 0.002 are ~1e3)."""
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * max(1.0, float(want.abs().max())))


def defined_rows(proc: Process, t: Tensor, kind: str, query: str, edm: bool = False) -> Tensor:
    """Rows where a `kind` model answers `query`: where alpha = 0 an eps or score model has no x0 (x0 = (x - sigma
    eps) / alpha), so no x0, v or velocity either, and EDM's x / alpha is undefined."""
    if edm or (kind in ("eps", "score") and query not in ("eps", "score")):
        return proc.alpha(t) > 0
    return torch.ones_like(t, dtype=torch.bool)


# --- guidance is exact ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [*KINDS, "edm"])
@pytest.mark.parametrize("process_id", PROCESS_IDS)
def test_guided_denoiser_is_the_guided_mixture(process_id, kind):
    """Every query of a guided Denoiser (eps, x0, v, score, velocity) equals (1 - w) q_u + w q_c of the exact
    mixtures, for a model of every kind (and EDM-preconditioned), at t_min, interior times and t_max, for
    w in (0, 1, 3); w = 1 is the conditional model; each guided query costs one NFE."""
    proc, mixtures = make_process(process_id), class_mixtures()
    edm = kind == "edm"
    fn = class_edm_F(mixtures, 0.5) if edm else class_fn(mixtures, proc, kind)
    plain = Denoiser(fn, proc, None if edm else kind, precondition="edm" if edm else None)
    guided = {w: plain.replace(guidance=w, uncond={"y": torch.tensor(NULL)}) for w in WS}
    x, t, y = noised(proc)
    for query in KINDS:
        rows = defined_rows(proc, t, kind, query, edm)
        assert rows.sum() >= 4 * 6
        q_u, q_c = (q[rows] for q in branches_exact(mixtures, query, x, t, y, proc))
        for w, model in guided.items():
            got = getattr(model, query)(x, t, y=y)[rows]
            assert_close(got, (1 - w) * q_u + w * q_c)
            if w == 1.0:
                assert_close(got, getattr(plain, query)(x, t, y=y)[rows], rel=1e-12)
    assert all(model.nfe == len(KINDS) for model in guided.values())


# --- guidance in every sampler ----------------------------------------------------------------------------
_GAMMA: dict[str, object] = {}


def sampler_setup(process_id: str, n: int = 6) -> tuple[Denoiser, Denoiser, Tensor, Tensor]:
    """The conditional model (eps; velocity under rectified flow), its w = 3 guided twin, x_T and labels."""
    proc = make_process(process_id)
    kind = "velocity" if process_id == "RectifiedFlow" else "eps"
    cond_model = Denoiser(class_fn(class_mixtures(), proc, kind), proc, kind)
    guided = cond_model.replace(guidance=3.0, uncond={"y": torch.tensor(NULL)})
    x_T = proc.prior_sample((n, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    return cond_model, guided, x_T, torch.arange(n) % NUM_CLASSES


def options_for(method: str, model: Denoiser, process_id: str) -> dict:
    """Analytic-DPM needs a Gamma table (estimated once per process, outside the budget); rk45 its tolerances."""
    if method == "rk45":
        return {"rtol": 1e-3, "atol": 1e-3}
    if not method.startswith("analytic"):
        return {}
    if process_id not in _GAMMA:
        data, y = class_mixtures()[NULL].sample(256, generator=torch.Generator().manual_seed(3), return_labels=True)
        _GAMMA[process_id] = estimate_gamma(model, data, n_knots=8, generator=torch.Generator().manual_seed(4),
                                            cond={"y": y % NUM_CLASSES})
    return {"gamma": _GAMMA[process_id]}


@pytest.mark.parametrize("method", available())
@pytest.mark.parametrize("process_id", PROCESS_IDS)
def test_every_sampler_runs_guided(process_id, method):
    """A sampler that runs on the conditional model runs guided (w = 3) with finite samples and the same number
    of evaluations; where a method is undefined on a process, guided and unguided raise the same error."""
    cond_model, guided, x_T, labels = sampler_setup(process_id)
    opts = options_for(method, cond_model, process_id)
    cond_model.reset_nfe()
    nfe = 400 if method == "rk45" else 8

    def run(model: Denoiser) -> Tensor:
        return kuosan.sample(model, x_T, method, nfe=nfe, generator=torch.Generator().manual_seed(1),
                             cond={"y": labels}, **opts)

    try:
        plain = run(cond_model)
    except (ValueError, BudgetExceeded) as e:
        assert process_id == "RectifiedFlow", str(e)  # alpha(t_max) = 0: x/alpha, f(t) or alpha_{t|s} singular
        with pytest.raises(type(e)) as guided_error:
            run(guided)
        assert str(guided_error.value) == str(e)
        return
    out = run(guided)
    assert out.shape == x_T.shape and torch.isfinite(plain).all() and torch.isfinite(out).all()
    if method != "rk45":  # adaptive: its step count follows the field
        assert guided.nfe == cond_model.nfe


@pytest.mark.parametrize("method", ["flow-euler", "flow-midpoint", "euler", "dpmpp-2m", "ddim"])
def test_rectified_flow_guidance_is_finite_and_w1_is_the_conditional_model(method):
    """The reported bug: a guided velocity model under RectifiedFlow() (alpha(t_max) = 0) returned NaN from every
    sampler; now finite, w = 1 reproduces the conditional model exactly, and w = 2 differs from it."""
    cond_model, _, x_T, labels = sampler_setup("RectifiedFlow")
    reference = kuosan.sample(cond_model, x_T, method=method, nfe=10, cond={"y": labels})
    for w in (2.0, 1.0):
        model = Denoiser(cond_model.fn, RectifiedFlow(), prediction="velocity", guidance=w,
                         uncond={"y": torch.tensor(NULL)})
        x = kuosan.sample(model, x_T, method=method, nfe=10, cond={"y": labels})
        assert torch.isfinite(x).all()
        assert torch.equal(x, reference) == (w == 1.0)
        assert model.nfe == cond_model.nfe


# --- guidance needs its arguments -------------------------------------------------------------------------
def test_guidance_without_cond_or_uncond_raises():
    """guidance but no cond is an error (it used to switch guidance off silently), and so is guidance without
    an unconditional branch; a failed call costs no NFE."""
    proc = VP()
    fn = class_fn(class_mixtures(), proc, "eps")
    with pytest.raises(ValueError, match="needs `uncond`"):
        Denoiser(fn, proc, "eps", guidance=2.0)
    with pytest.raises(ValueError, match="needs `uncond`"):
        Denoiser(fn, proc, "eps", guidance=2.0, uncond={})
    with pytest.raises(ValueError, match="needs `uncond`"):
        Denoiser(fn, proc, "eps").replace(guidance=2.0)
    guided = Denoiser(fn, proc, "eps", guidance=2.0, uncond={"y": torch.tensor(NULL)})
    x, t, _ = noised(proc, 0.5)
    for call in (lambda: guided(x, t), lambda: guided.eps(x, t), lambda: guided.x0(x, t, **{})):
        with pytest.raises(ValueError, match="needs a condition"):
            call()
    for cond in (None, {}):
        with pytest.raises(ValueError, match="needs a condition"):
            kuosan.sample(guided, x, "ddim", nfe=5, cond=cond)
    assert guided.nfe == 0


# --- clipping x0 ------------------------------------------------------------------------------------------
def clipped_exact(gm: GaussianMixture, kind: str, x: Tensor, t: Tensor, proc: Process, clip) -> Tensor:
    """`kind` of (x0', eps') with x0' = clip(E[x0 | x_t]) and eps' = (x_t - alpha x0') / sigma, written out."""
    a, s, da, ds = (f(t)[:, None] for f in (proc.alpha, proc.sigma, proc.dalpha_dt, proc.dsigma_dt))
    x0 = clip(gm.x0(x, t, proc))
    eps = (x - a * x0) / s
    return {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s, "velocity": da * x0 + ds * eps}[kind]


def clamp1(x0: Tensor) -> Tensor:
    return x0.clamp(-1.0, 1.0)


@pytest.mark.parametrize("clip", [clamp1, dynamic_threshold], ids=["clamp", "dynamic_threshold"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("process_id", PROCESS_IDS)
def test_clip_x0_keeps_x0_in_range(process_id, kind, clip):
    """With data far outside [-1, 1], every query of a clip_x0 Denoiser is the kind of (clip(x0), eps') with
    eps' = (x_t - alpha clip(x0)) / sigma, so its x0 lies in [-1, 1]; under guidance the clip acts after the
    combination (a guided x0 with w = 3 leaves the range even where both branches are clipped)."""
    proc, mixtures = make_process(process_id), class_mixtures(scale=3.0)
    model = Denoiser(class_fn(mixtures, proc, kind), proc, kind, clip_x0=clip)
    guided = model.replace(guidance=3.0, uncond={"y": torch.tensor(NULL)})
    gm = mixtures[0]
    x, t, _ = noised(proc)
    x, y = 3 * x, torch.zeros(len(x), dtype=torch.long)
    for query in KINDS:
        rows = defined_rows(proc, t, kind, query)
        assert_close(getattr(model, query)(x, t, y=y)[rows], clipped_exact(gm, query, x, t, proc, clip)[rows])
    rows = defined_rows(proc, t, kind, "x0")
    assert (model.x0(x, t, y=y)[rows].abs() <= 1 + 1e-9).all()
    assert (guided.x0(x, t, y=y)[rows].abs() <= 1 + 1e-9).all()
    assert (gm.x0(x, t, proc).abs() > 1.5).any()  # the clip had something to do


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("process_id", PROCESS_IDS)
def test_clip_x0_leaves_an_in_range_model_unchanged(process_id, kind):
    """A model whose x0 already lies inside the clip range answers every query as without clip_x0."""
    proc = make_process(process_id)
    plain = Denoiser(class_fn(class_mixtures(), proc, kind), proc, kind)
    clipped = plain.replace(clip_x0=lambda x0: x0.clamp(-20.0, 20.0))
    x, t, y = noised(proc)
    for query in KINDS:
        rows = defined_rows(proc, t, kind, query)
        assert_close(getattr(clipped, query)(x, t, y=y)[rows], getattr(plain, query)(x, t, y=y)[rows])


@pytest.mark.parametrize("process_id", ["VP", "RectifiedFlow"])
def test_every_sampler_sees_a_clipped_x0(process_id):
    """Stochastic or ODE, every sampler that runs ends with an x0 prediction inside the clip range, while the
    unclipped model's samples leave it."""
    cond_model, _, x_T, labels = sampler_setup(process_id)
    proc, kind = cond_model.process, cond_model.prediction
    wide = Denoiser(class_fn(class_mixtures(scale=3.0), proc, kind), proc, kind)
    clipped = wide.replace(clip_x0=clamp1)
    ran = 0
    for method in available():
        opts = options_for(method, cond_model, process_id)
        nfe = 400 if method == "rk45" else 8
        try:
            out = kuosan.sample(clipped, x_T, method, nfe=nfe, generator=torch.Generator().manual_seed(1),
                                cond={"y": labels}, **opts)
        except (ValueError, BudgetExceeded):
            continue
        assert (out.abs() <= 1 + 1e-6).all(), method
        ran += 1
    assert ran >= (len(available()) if process_id == "VP" else 10)
    assert (kuosan.sample(wide, x_T, "dpmpp-2m", nfe=8, cond={"y": labels}).abs() > 1.5).any()


# --- replace ----------------------------------------------------------------------------------------------
class LabelNet(torch.nn.Module):
    """A tiny conditional network: eps = W x + E[y] + t (label NULL = NUM_CLASSES is the null class)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=F64)
        self.emb = torch.nn.Embedding(NUM_CLASSES + 1, 2, dtype=F64)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.lin(x) + self.emb(y) + t[:, None].to(x.dtype)


def test_replace_shares_the_network_and_resets_nfe():
    """replace(guidance=3, uncond=...) wraps the same network and process, keeps every other setting, starts its
    own nfe at 0, and is eq. 6 of the original's outputs; unknown settings are a TypeError."""
    torch.manual_seed(0)
    net, proc = LabelNet(), VP()
    base = Denoiser(net, proc, "eps", time_input=lambda t: 2 * t)
    x, t, y = noised(proc, 0.4)
    null = torch.full_like(y, NULL)
    with torch.no_grad():
        base(x, t, y=y)
        guided = base.replace(guidance=3.0, uncond={"y": torch.tensor(NULL)})
        assert guided.fn is base.fn and guided.net is net and guided.process is proc
        assert {id(q) for q in guided.parameters()} == {id(q) for q in net.parameters()}
        assert (guided.nfe, base.nfe) == (0, 1)
        assert (guided.prediction, guided.time_input, guided.guidance) == ("eps", base.time_input, 3.0)
        e_c, e_u = base(x, t, y=y), base(x, t, y=null)
        assert_close(guided(x, t, y=y), e_u + 3.0 * (e_c - e_u), rel=1e-12)
        assert (guided.nfe, base.nfe) == (1, 3)
        net.emb.weight.add_(1.0)  # shared: a change to the network reaches both
        assert_close(guided(x, t, y=null), base(x, t, y=null), rel=1e-12)
        assert_close(base.replace(guidance=None)(x, t, y=y), base(x, t, y=y), rel=0)
    pre = Denoiser(class_edm_F(class_mixtures(), 0.7), proc, precondition="edm", sigma_data=0.7, clip_x0=clamp1)
    again = pre.replace(guidance=2.0, uncond={"y": torch.tensor(NULL)})
    assert again.precond is not None and again.precond.sigma_data == 0.7 and again.clip_x0 is clamp1
    with pytest.raises(TypeError, match="replace"):
        base.replace(guidence=3.0)
