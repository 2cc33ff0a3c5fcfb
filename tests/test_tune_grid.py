"""optimize_grid (LD3, arXiv:2405.15506): a grid fitted on one set of prior draws lowers the endpoint error on a
disjoint set, measured against the tight PF-ODE endpoint of the exact mixture (DOP853 in lambda, independent
of kuosan's samplers), on a sharply multimodal 2-D mixture: 8 tight modes on a circle, 4 apart."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import F64
from test_samplers_order import reference

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.processes import DiscreteVP
from kuosan.samplers.tune import grid_steps, optimize_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def ring(k: int = 8, gap: float = 4.0) -> GaussianMixture:
    """k modes on a circle, neighbours `gap` apart, per-dimension variances 0.01 .. 0.09."""
    a = torch.arange(k, dtype=F64) * 2 * math.pi / k
    r = gap / (2 * math.sin(math.pi / k))
    var = torch.linspace(0.01, 0.09, k, dtype=F64)[:, None].expand(k, 2)
    return GaussianMixture(torch.ones(k, dtype=F64), torch.stack([r * a.cos(), r * a.sin()], 1), var)


@pytest.fixture(scope="module")
def setup():
    proc = DiscreteVP.linear()
    model = ring().denoiser(proc)
    g = torch.Generator().manual_seed(0)
    calib = proc.prior_sample((64, 2), generator=g, dtype=F64)
    test = proc.prior_sample((128, 2), generator=g, dtype=F64)  # disjoint draws
    return model, calib, test, reference(model, test, rtol=1e-10)


def _rms(x, ref) -> float:
    return (x - ref).square().mean().sqrt().item()


# measured (64 calibration draws, 128 test draws, RMS): nfe 5: 1.078 -> 0.499; nfe 10: 0.159 -> 0.0144
@pytest.mark.parametrize("nfe, factor", [(5, 0.7), (10, 0.3)])
def test_tuned_grid_beats_the_default_on_new_draws(setup, nfe, factor):
    model, calib, test, ref = setup
    ts = optimize_grid(model, "dpmpp-2m", nfe, calib, steps=300)
    p = model.process
    assert ts.dtype == F64 and len(ts) == nfe  # nfe - 1 steps + the final denoise
    assert bool((ts[1:] < ts[:-1]).all()) and ts[0].item() == p.t_max and ts[-1].item() == pytest.approx(p.t_min)
    model.reset_nfe()
    tuned = kuosan.sample(model, test, "dpmpp-2m", nfe=nfe, grid=ts)
    assert model.nfe <= nfe
    default = kuosan.sample(model, test, "dpmpp-2m", nfe=nfe)
    assert _rms(tuned, ref) < factor * _rms(default, ref)


def test_grid_length_follows_the_budget():
    assert grid_steps("dpmpp-2m", 10) == 9 and grid_steps("unipc", 5) == 4
    assert grid_steps("heun", 10) == 4  # two evaluations per step, one for the final denoise


@pytest.mark.parametrize("method, nfe, msg", [("dpmpp-2m", 2, "nfe >= 3"), ("ddpm", 10, "stochastic"),
                                              ("rk45", 10, "adaptive"), ("nope", 10, "unknown sampler")])
def test_bad_inputs(setup, method, nfe, msg):
    model, calib, _, _ = setup
    with pytest.raises(ValueError, match=msg):
        optimize_grid(model, method, nfe, calib)


def test_tune_steps_stores_a_grid_that_sample_uses(tmp_path):
    from test_cli import invoke, toy_yaml

    run = tmp_path / "run"
    assert invoke("train", toy_yaml(tmp_path), "--out", run).exit_code == 0
    res = invoke("tune-steps", run, "--method", "dpmpp-2m", "--nfe", "4", "--n-calib", "32", "--ref-tol", "1e-5")
    assert res.exit_code == 0, res.output
    rec = json.loads((run / "grids" / "dpmpp-2m-4.json").read_text())
    assert len(rec["times"]) == 4 and rec["rms_tuned"] <= rec["rms_default"]
    args = ("sample", run, "--method", "dpmpp-2m", "--nfe", "4", "--n", "16", "--out")
    tuned, default = invoke(*args, tmp_path / "a.png"), invoke(*args, tmp_path / "b.png", "--grid", "default")
    assert "using the tuned grid" in tuned.output and "tuned grid" not in default.output
    a, b = np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"]
    assert a.shape == b.shape == (16, 2) and not np.allclose(a, b)  # the same draws, another grid
    ev = ("eval", run, "--samplers", "dpmpp-2m", "--nfe", "4", "--n", "16", "--out")
    assert invoke(*ev, tmp_path / "e1").exit_code == 0
    assert invoke(*ev, tmp_path / "e2", "--grid", "default").exit_code == 0
    rows = [json.loads((tmp_path / e / "report.json").read_text())["results"][0] for e in ("e1", "e2")]
    assert rows[0]["grid"] == str(run / "grids" / "dpmpp-2m-4.json") and rows[1]["grid"] is None
    e1, e2 = (np.load(tmp_path / e / "samples" / "dpmpp-2m-4.npz")["samples"] for e in ("e1", "e2"))
    assert not np.allclose(e1, e2)  # eval, too, sampled on the stored grid unless told --grid default
    (run / "grids" / "dpmpp-2m-4.json").write_text('{"method": "dpmpp-2m", "nfe": 4, "times": [0.5, 0.9]}')
    bad = invoke(*args, tmp_path / "c.png")
    assert bad.exit_code == 1 and "not a descending grid" in bad.output


# --- options: the start grid(s) and the fitting loss ----------------------------------------------------------
# measured (64 calibration draws, 128 test draws, RMS, dpmpp-2m at nfe 5): uniform grid 2.26 -> tuned from it 0.516;
# loss="log" from the default (logsnr) grid 1.078 -> 0.501; several starts, 5 loss evaluations: 0.692 vs 1.61
def test_a_fit_from_a_given_start_grid_beats_that_grid_on_new_draws(setup):
    model, calib, test, ref = setup
    p = model.process
    ts = optimize_grid(model, "dpmpp-2m", 5, calib, steps=300, start="uniform")
    assert len(ts) == 5 and ts[0].item() == p.t_max and ts[-1].item() == pytest.approx(p.t_min)
    uniform = kuosan.sample(model, test, "dpmpp-2m", nfe=5, grid="uniform")
    assert _rms(kuosan.sample(model, test, "dpmpp-2m", nfe=5, grid=ts), ref) < 0.5 * _rms(uniform, ref)


def test_several_starts_take_the_best_on_the_fitting_draws(setup):
    """From [uniform, logsnr] the fit starts at the better (logsnr: 1.08 vs 2.26 on new draws); with a short fit
    (5 loss evaluations) that start shows: 0.69 on new draws against 1.61 from the uniform grid alone."""
    model, calib, test, ref = setup
    both = optimize_grid(model, "dpmpp-2m", 5, calib, steps=5, start=["uniform", "logsnr"])
    worse = optimize_grid(model, "dpmpp-2m", 5, calib, steps=5, start="uniform")
    err = lambda ts: _rms(kuosan.sample(model, test, "dpmpp-2m", nfe=5, grid=ts), ref)  # noqa: E731
    logsnr = _rms(kuosan.sample(model, test, "dpmpp-2m", nfe=5, grid="logsnr"), ref)
    assert err(both) <= logsnr and err(both) < 0.6 * err(worse)


def test_the_start_grid_comes_back_unless_the_fit_wins_on_the_held_out_draws(setup):
    """A reference equal to the start grid's own endpoints on the held-out quarter: nothing can beat it there, so
    the start grid comes back exactly, although the fit wins on the fitting draws (exact references)."""
    from kuosan.samplers.grid import make_ts

    model, calib, _, _ = setup
    exact = reference(model, calib, rtol=1e-10)
    start = make_ts(model.process, "uniform", 4)[0]
    rigged = exact.clone()
    rigged[48:] = kuosan.sample(model, calib[48:], "dpmpp-2m", nfe=5, grid=start)  # 64 draws: the last 16 held out
    kept = optimize_grid(model, "dpmpp-2m", 5, calib, reference=rigged, steps=60, start=start)
    assert torch.equal(kept, start)
    fitted = optimize_grid(model, "dpmpp-2m", 5, calib, reference=exact, steps=60, start=start)
    assert not torch.equal(fitted, start)


def test_the_log_loss_fits_a_grid_that_beats_the_default_on_new_draws(setup):
    model, calib, test, ref = setup
    ts = optimize_grid(model, "dpmpp-2m", 5, calib, steps=300, loss="log")
    default = kuosan.sample(model, test, "dpmpp-2m", nfe=5)
    assert _rms(kuosan.sample(model, test, "dpmpp-2m", nfe=5, grid=ts), ref) < 0.7 * _rms(default, ref)


@pytest.mark.parametrize("kw, msg", [({"loss": "l1"}, "loss must be one of rms, log"),
                                     ({"start": torch.linspace(1.0, 0.001, 4, dtype=F64)}, "needs 5 times"),
                                     ({"start": torch.linspace(0.9, 0.001, 5, dtype=F64)}, "share their ends")])
def test_bad_options(setup, kw, msg):
    model, calib, _, _ = setup
    if "share" in msg:
        kw = {"start": ["logsnr", kw["start"]]}
    with pytest.raises(ValueError, match=msg):
        optimize_grid(model, "dpmpp-2m", 5, calib, **kw)


# --- loss="auto": one fit per loss, the best of start / RMS fit / log fit on the held-out share -----------------
def _held_rms(model, calib, exact, ts, k: int = 48) -> float:
    return _rms(kuosan.sample(model, calib[k:], "dpmpp-2m", nfe=5, grid=ts), exact[k:])


def test_auto_never_returns_a_grid_worse_than_the_start_on_the_held_out_draws(setup):
    """Exact references; on the rigged one (the start grid's own endpoints on the held-out quarter) nothing beats
    the start grid there, so auto returns it exactly."""
    from kuosan.samplers.grid import make_ts

    model, calib, _, _ = setup
    exact = reference(model, calib, rtol=1e-10)
    for kind in ("uniform", "logsnr"):
        start = make_ts(model.process, kind, 4)[0]
        ts = optimize_grid(model, "dpmpp-2m", 5, calib, reference=exact, steps=60, start=start, loss="auto")
        assert _held_rms(model, calib, exact, ts) <= _held_rms(model, calib, exact, start)
    rigged = exact.clone()
    rigged[48:] = kuosan.sample(model, calib[48:], "dpmpp-2m", nfe=5, grid=start)
    kept = optimize_grid(model, "dpmpp-2m", 5, calib, reference=rigged, steps=60, start=start, loss="auto")
    assert torch.equal(kept, start)


def test_auto_returns_the_better_of_the_two_fits_on_the_held_out_draws(setup):
    """From the uniform grid both fits win on the held-out quarter and differ; auto returns exactly the one with
    the lower held-out RMS (the fits are deterministic)."""
    model, calib, _, _ = setup
    exact = reference(model, calib, rtol=1e-10)
    kw = dict(reference=exact, steps=60, start="uniform")
    fits = [optimize_grid(model, "dpmpp-2m", 5, calib, loss=loss, **kw) for loss in ("rms", "log")]
    errs = [_held_rms(model, calib, exact, ts) for ts in fits]
    uniform = kuosan.samplers.grid.make_ts(model.process, "uniform", 4)[0]
    assert not any(torch.equal(ts, uniform) for ts in fits)  # both fits were kept ...
    assert not torch.equal(fits[0], fits[1]) and errs[0] != errs[1]  # ... and they differ
    auto = optimize_grid(model, "dpmpp-2m", 5, calib, loss="auto", **kw)
    assert torch.equal(auto, fits[errs.index(min(errs))])


def test_the_held_out_share_is_an_option(setup):
    """holdout=0.5: the last 32 of 64 draws decide, and rigging those 32 returns the start grid; with holdout=0.75
    rigging the last 16 (the default quarter) no longer does: 32 exact draws outvote them."""
    from kuosan.samplers.grid import make_ts

    model, calib, _, _ = setup
    exact = reference(model, calib, rtol=1e-10)
    start = make_ts(model.process, "uniform", 4)[0]
    rigged = exact.clone()
    rigged[32:] = kuosan.sample(model, calib[32:], "dpmpp-2m", nfe=5, grid=start)
    kw = dict(steps=60, start=start, holdout=0.5)
    assert torch.equal(optimize_grid(model, "dpmpp-2m", 5, calib, reference=rigged, **kw), start)
    rigged[16:48] = exact[16:48]
    kw["holdout"] = 0.75
    assert not torch.equal(optimize_grid(model, "dpmpp-2m", 5, calib, reference=rigged, **kw), start)


@pytest.mark.parametrize("kw, msg", [({"loss": "best"}, "loss must be one of rms, log, auto"),
                                     ({"holdout": 0.0}, "holdout must be a share in"),
                                     ({"holdout": 1.0}, "holdout must be a share in"),
                                     ({"holdout": "half"}, "holdout must be a share in")])
def test_bad_auto_options(setup, kw, msg):
    model, calib, _, _ = setup
    with pytest.raises(ValueError, match=msg):
        optimize_grid(model, "dpmpp-2m", 5, calib, **kw)
