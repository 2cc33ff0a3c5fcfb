"""optimize_grid(..., loss="cv"): the fitting loss (or the start grid) chosen by 2-fold cross-fitting (Stone 1974;
Hastie, Tibshirani & Friedman, ESL §7.10.1, eq. 7.48), then a refit on every calibration draw. The selection rule
is checked with stub fits whose per-trajectory errors are given, the whole protocol on the exact 2-D ring mixture
against tight PF-ODE endpoints (DOP853, independent of kuosan's samplers)."""

from __future__ import annotations

import pytest
import torch
from conftest import F64
from test_samplers_order import reference
from test_tune_grid import ring, setup  # noqa: F401  (setup: the ring, 64 calibration and 128 test draws)

import kuosan
from kuosan.samplers.grid import make_ts
from kuosan.samplers.tune import fit_grid, optimize_grid
from kuosan.samplers.tune_cv import pooled_rms, select_cv

pytestmark = pytest.mark.usefixtures("one_thread")

N = 8
A, B, ALL = slice(0, 4), slice(4, 8), slice(0, 8)


def _stub(table: dict[str, list[float]], fits: dict[tuple[str, int, int], str]):
    """Grids are named by one number (their index in `names`); errors(ts, rows) reads the per-trajectory squared
    errors of that grid from `table`; fit(kind, rows) returns the grid `fits` names for (kind, rows), or None."""
    names = list(table)
    grid = {name: torch.tensor([float(i)]) for i, name in enumerate(names)}
    calls: list[tuple[str, slice]] = []

    def errors(ts, rows):
        return torch.tensor(table[names[int(ts.item())]], dtype=F64)[rows]

    def fit(kind, rows):
        calls.append((kind, rows))
        name = fits.get((kind, rows.start, rows.stop))
        return None if name is None else grid[name]

    return errors, fit, grid, calls


def test_a_rare_bad_trajectory_in_either_half_counts_against_a_loss():
    """The failure of loss="auto" on the broad 16-D mixture: the log fits are better on 7 of 8 draws, but the one
    fitted on B is 100 on draw 1 (in A). On B alone (what a held-out half sees) the log fit wins (0.1 < 0.5);
    pooled out of fold it loses (sqrt(100.7 / 8) = 3.5 > 0.5), so the RMS loss is chosen and refitted on all 8."""
    table = {"start": [1.0] * N, "rms_A": [0.5] * N, "rms_B": [0.5] * N, "log_A": [0.1] * N,
             "log_B": [0.1, 100.0] + [0.1] * 6, "rms_all": [0.4] * N, "log_all": [0.05] * N}
    fits = {("rms", 0, 4): "rms_A", ("rms", 4, 8): "rms_B", ("log", 0, 4): "log_A", ("log", 4, 8): "log_B",
            ("rms", 0, 8): "rms_all", ("log", 0, 8): "log_all"}
    errors, fit, grid, calls = _stub(table, fits)
    assert errors(grid["log_A"], B).mean() < errors(grid["rms_A"], B).mean()  # a held-out B would pick log
    assert torch.equal(select_cv(errors, N, grid["start"], fit), grid["rms_all"])
    assert calls[-1] == ("rms", ALL) and ("log", ALL) not in calls  # one refit, of the chosen loss, on all draws
    assert sorted((k, r.start) for k, r in calls[:-1]) == [("log", 0), ("log", 4), ("rms", 0), ("rms", 4)]


def test_the_start_grid_comes_back_when_no_fit_beats_it_out_of_fold():
    """Fits that win in-sample (0.1) but score 2.0 out of fold: start (1.0) wins, and nothing is refitted."""
    table = {"start": [1.0] * N, "fit_A": [0.1] * 4 + [2.0] * 4, "fit_B": [2.0] * 4 + [0.1] * 4}
    fits = {(kind, r.start, r.stop): name for kind in ("rms", "log") for r, name in ((A, "fit_A"), (B, "fit_B"))}
    errors, fit, grid, calls = _stub(table, fits)
    assert torch.equal(select_cv(errors, N, grid["start"], fit), grid["start"])
    assert all(rows != ALL for _, rows in calls) and len(calls) == 4
    # a tie with the start grid goes to the start grid too
    table["fit_A"], table["fit_B"] = [1.0] * N, [1.0] * N
    errors, fit, grid, _ = _stub(table, fits)
    assert torch.equal(select_cv(errors, N, grid["start"], fit), grid["start"])


def test_a_refit_that_loses_to_the_start_grid_on_all_draws_is_refused():
    """The RMS loss wins out of fold (0.5 < 1.0) but its refit on all 8 draws scores 1.2 there: start comes back;
    a fold fit that did not beat the start grid (None) is scored as the start grid."""
    table = {"start": [1.0] * N, "rms_A": [0.5] * N, "rms_all": [1.2] * N}
    fits = {("rms", 0, 4): "rms_A", ("rms", 0, 8): "rms_all"}  # log: no fit ever; rms on B: none either
    errors, fit, grid, calls = _stub(table, fits)
    assert torch.equal(select_cv(errors, N, grid["start"], fit), grid["start"])
    assert calls[-1] == ("rms", ALL)
    assert pooled_rms(torch.tensor([0.25, 1.0])) == pytest.approx(0.625 ** 0.5)  # sqrt of the pooled mean
    assert pooled_rms(torch.tensor([float("nan"), 1.0])) == float("inf")


@pytest.fixture(scope="module")
def ring_setup(setup):  # noqa: F811  (the fixture imported above)
    model, calib, test, test_ref = setup
    return model, calib, reference(model, calib, rtol=1e-10), test, test_ref


def _rms(model, x, ref, ts) -> float:
    return (kuosan.sample(model, x, "dpmpp-2m", nfe=5, grid=ts) - ref).square().mean().sqrt().item()


# measured (64 calibration draws, 128 test draws, steps 60, RMS): uniform start 2.26 -> cv 0.60 on the test draws
def test_cv_refits_on_every_draw_and_never_loses_to_the_start_on_them(ring_setup):
    """From the uniform grid the result is exactly one of the two losses' fits on all 64 draws (the final refit),
    beats the uniform grid on the calibration draws and, by more than 2x, on 128 new draws."""
    model, calib, exact, test, ref = ring_setup
    start = make_ts(model.process, "uniform", 4)[0]
    ts = optimize_grid(model, "dpmpp-2m", 5, calib, reference=exact, steps=60, start=start, loss="cv")

    def errors(grid):
        return (kuosan.sample(model, calib, "dpmpp-2m", nfe=5, grid=grid) - exact).square().mean(1)

    refits = [fit_grid(model.process, start, errors, kind, 60, 1e-4, 0.5) for kind in ("rms", "log")]
    assert any(r is not None and torch.equal(ts, r) for r in refits)
    assert _rms(model, calib, exact, ts) < _rms(model, calib, exact, start)
    assert _rms(model, test, ref, ts) < 0.5 * _rms(model, test, ref, start)


def test_cv_returns_the_start_grid_when_half_the_references_are_its_own_endpoints(ring_setup):
    """References rigged to the start grid's own endpoints on draws 32..63: there the fit on 0..31 can only lose,
    and on 32..63 nothing beats the start grid (zero error), so out of fold no loss beats it: it comes back
    exactly (with exact references the fit is kept)."""
    model, calib, exact, _, _ = ring_setup
    start = make_ts(model.process, "uniform", 4)[0]
    rigged = exact.clone()
    rigged[32:] = kuosan.sample(model, calib[32:], "dpmpp-2m", nfe=5, grid=start)
    kept = optimize_grid(model, "dpmpp-2m", 5, calib, reference=rigged, steps=60, start=start, loss="cv")
    assert torch.equal(kept, start)


@pytest.mark.parametrize("n, kw, msg", [(7, {"loss": "cv"}, "loss='cv' needs at least 8 calibration draws"),
                                        (64, {"loss": "kfold"}, "loss must be one of rms, log, auto, cv")])
def test_bad_cv_options(ring_setup, n, kw, msg):
    model, calib, exact, _, _ = ring_setup
    with pytest.raises(ValueError, match=msg):
        optimize_grid(model, "dpmpp-2m", 5, calib[:n], reference=exact[:n], **kw)
    with pytest.raises(ValueError, match="select_cv needs at least 2 draws"):
        select_cv(lambda ts, rows: ts, 1, torch.zeros(1), lambda kind, rows: None)


def test_a_gain_carried_by_few_trajectories_is_refused():
    """The test against the start grid: a fit 9 better on one draw and 0.01 worse on the 7 others has the lower
    pooled out-of-fold error (1.01 < 2.13 in mean square) but gains 0.99 standard errors (a mean gain of 1.116
    against sd(d) / sqrt(8) = 1.126): refused at z = 1 and at the default 1.96. Better by 0.1 on 7 draws and by 1
    on one: 1.89 standard errors, taken at z = 1 (ESL's rule), refused at 1.96; better by 0.5 on 7 and 1 on one:
    9.0 standard errors, taken and refitted on all the draws."""
    table = {"start": [1.0] * 7 + [10.0], "fit": [1.01] * 7 + [1.0], "all": [0.5] * N}
    fits = {(kind, r.start, r.stop): name for kind in ("rms", "log")
            for r, name in ((A, "fit"), (B, "fit"), (ALL, "all"))}
    for fit_errors, z, taken in (([1.01] * 7 + [1.0], 1.0, False), ([1.01] * 7 + [1.0], 1.96, False),
                                 ([0.9] * 7 + [9.0], 1.0, True), ([0.9] * 7 + [9.0], 1.96, False),
                                 ([0.5] * 7 + [9.0], 1.96, True)):
        table["fit"] = fit_errors
        errors, fit, grid, calls = _stub(table, fits)
        assert torch.equal(select_cv(errors, N, grid["start"], fit, z=z), grid["all" if taken else "start"])
        assert (calls[-1] == ("rms", ALL)) == taken and len(calls) == 4 + taken
    assert select_cv.__defaults__[-1] == 1.96
