"""Step schedules tuned to the model: an LD3-style fit of the time grid on prior draws (Tong et al. 2024,
"Learning to Discretize Denoising Diffusion ODEs", arXiv:2405.15506, §3, eq. 5-6).

LD3 keeps the grid's end points, writes the interior times through a softmax over increments of the solver's
variable, and minimises the distance between the solver's endpoint on that grid and a tight solve of the same
model from the same x_T, over a few hundred prior draws. We follow it with two changes, stated here:

  * the variable is the log-SNR lambda = log(alpha/sigma) (the variable of the exponential integrators
    DPM-Solver++ and UniPC step in; LD3 uses the EDM sigma); the grid is
        lambda_i = lambda_0 + (lambda_n - lambda_0) sum_{j<i} softmax(xi)_j,   t_i = t(lambda_i),
    so it stays descending in t between fixed ends for every xi;
  * the fit is derivative-free (Nelder-Mead over xi, scipy.optimize), not backpropagation: kuosan's samplers
    compute their float64 step coefficients as Python floats (samplers/common.py `schedule`) and `sample` runs
    under no_grad, so no gradient flows from the endpoint to the grid without rewriting every sampler. With
    n - 1 free logits (n steps, n <= 20 here) a simplex search over the cheap calibration loss is enough.

The loss is LD3's L2 endpoint error, as an RMS over the calibration draws; the fit starts from the method's
default grid, is fitted on three quarters of the calibration draws, and the fitted grid is kept only if it also
beats the default grid on the held-out quarter (otherwise the default grid is returned): on 16-D sharply
multimodal mixtures a fit driven by a few boundary trajectories had made dpmpp-3m 5x worse on new draws.
Options: `start` (the grid, or the best of several, the fit starts from and falls back to), `loss="log"` (the
mean log per-trajectory error, which those few trajectories cannot dominate), `loss="auto"` (fit with both losses,
keep whichever of start grid / RMS fit / log fit has the lowest RMS on the held-out draws: neither loss won on
every mixture measured, and the choice must not look at the draws a grid is judged on), `loss="cv"` (the same
choice by 2-fold cross-fitting on every calibration draw, a fit replacing the start grid only when its gain
passes a paired test at 5% (1.96 standard errors), then a refit on all of them: samplers/tune_cv.py) and
`holdout` (the share held out; "cv" holds nothing out); docs/samplers.md has the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..denoiser import Denoiser
from .grid import default_grid, make_ts
from .tune_cv import pooled_rms

__all__ = ["optimize_grid", "grid_steps", "reference_endpoints", "grid_from_logits"]

F64 = torch.float64
LOSSES = ("rms", "log", "auto", "cv")


def grid_steps(method: str, nfe: int) -> int:
    """Steps an explicit grid of `method` may have within `nfe` evaluations, the final denoise counting one."""
    from . import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown sampler {method!r}")
    m = METHODS[method]
    if m.order is None or method == "rk45":
        raise ValueError(f"optimize_grid tunes deterministic fixed-grid ODE solvers; {method!r} is "
                         f"{'adaptive' if method == 'rk45' else 'stochastic'}")
    if nfe is None or nfe < 3:
        raise ValueError(f"optimize_grid needs nfe >= 3 (two steps and the final denoise), got nfe={nfe}")
    n = nfe - 1
    while n >= 2 and m.plan(None, n, False, {})[2] + 1 > nfe:  # e.g. Heun: two evaluations per step
        n -= 1
    if n < 2:
        raise ValueError(f"{method!r} cannot take two steps with nfe={nfe}; give it a larger budget")
    return n


def grid_from_logits(process, t0: float, t1: float, xi: Tensor) -> Tensor:
    """LD3's grid (arXiv:2405.15506, eq. 6) in log-SNR: lambda_i = lambda_0 + (lambda_n - lambda_0) cumsum
    softmax(xi), mapped to descending float64 times t(lambda_i); the ends are t0 and t1 exactly."""
    lam0, lam1 = process.log_snr(torch.tensor([t0, t1], dtype=F64)).tolist()
    frac = torch.cumsum(torch.softmax(xi.to(F64), 0), 0)[:-1]
    inner = process.t_of_log_snr(lam0 + (lam1 - lam0) * frac)
    return torch.cat([torch.tensor([t0], dtype=F64), inner, torch.tensor([t1], dtype=F64)])


def reference_endpoints(denoiser: Denoiser, x_T: Tensor, t_start: float, t_end: float, *,
                        cond: dict[str, Any] | None = None, tol: float = 1e-9) -> Tensor:
    """The tight PF-ODE endpoint from x_T at t_start to t_end (rk45 at rtol = atol = tol), then the final denoise."""
    from . import sample

    grid = torch.tensor([t_start, t_end], dtype=F64)
    return sample(denoiser, x_T, "rk45", nfe=None, grid=grid, cond=cond, rtol=tol, atol=tol)


def fit_grid(process, ts0: Tensor, errors: Callable[[Tensor], Tensor], kind: str, steps: int, tol: float,
             simplex_step: float) -> Tensor | None:
    """LD3's fit (arXiv:2405.15506, eq. 5) over the logits of eq. 6, derivative-free: Nelder-Mead from ts0 on
    `errors(ts)` (per-trajectory MSE of the fitting draws) with loss `kind` ("rms": their mean's root; "log": the
    mean of half their logs); the fitted grid, or None when it does not reach the loss of ts0."""
    from scipy.optimize import minimize

    t0, t1 = ts0[0].item(), ts0[-1].item()
    lam = process.log_snr(ts0)

    def objective(xi: np.ndarray) -> float:
        ts = grid_from_logits(process, t0, t1, torch.from_numpy(np.concatenate([[0.0], xi])))
        if not bool((ts[1:] < ts[:-1]).all()):
            return math.inf
        e = errors(ts)
        val = (e.mean().sqrt() if kind == "rms" else 0.5 * e.clamp_min(1e-300).log().mean()).item()
        return val if math.isfinite(val) else math.inf

    # start at ts0: xi_j = log(h_j / h_0) (the first logit is fixed at 0: softmax is shift-invariant)
    h = (lam[1:] - lam[:-1]).clamp_min(1e-12)
    xi0 = (h.log() - h[0].log())[1:].numpy()
    simplex = np.vstack([xi0, xi0 + simplex_step * np.eye(len(xi0))])  # scipy's default steps vanish at xi = 0
    f0 = objective(xi0)
    fatol = tol * (abs(f0) if kind == "rms" else 1.0)  # the log loss: an absolute tolerance in log units
    res = minimize(objective, xi0, method="Nelder-Mead", options={
        "maxfev": steps, "xatol": tol, "fatol": fatol, "adaptive": True, "initial_simplex": simplex})
    if not res.fun <= f0:
        return None
    return grid_from_logits(process, t0, t1, torch.from_numpy(np.concatenate([[0.0], res.x])))


def optimize_grid(
    denoiser: Denoiser,
    method: str,
    nfe: int,
    x_T: Tensor,
    *,
    cond: dict[str, Any] | None = None,
    reference: Tensor | None = None,
    steps: int = 2000,
    tol: float = 1e-4,
    simplex_step: float = 0.5,
    generator: torch.Generator | None = None,
    start: str | Tensor | Sequence[str | Tensor] | None = None,
    loss: str = "rms",
    holdout: float = 0.25,
    **options: Any,
) -> Tensor:
    """A time grid for `method` at `nfe` fitted to `denoiser` on the calibration draws x_T (LD3, Tong et al. 2024,
    arXiv:2405.15506, eq. 5-6, fitted derivative-free: see the module docstring).

    Returns a descending float64 tensor of times from the default grid's first time (process.t_max) to its last,
    usable as `kuosan.sample(denoiser, x, method, nfe, grid=ts)`. reference: the exact endpoints of x_T (a tight
    solve of the same model; computed with rk45 when None); steps: at most this many loss evaluations; tol: the
    simplex's relative tolerance on the logits and the loss; simplex_step: its initial size in logits;
    `generator` is unused (the fit is deterministic); other options go to the method.

    start: the grid the fit starts from and falls back to, a kind ("karras", "logsnr", ...) or descending times,
    or several of them (the one with the lowest RMS on the fitting draws is taken); default: the method's
    default grid. loss: what the fit minimises over the fitting draws, "rms" (LD3's L2) or "log" (the mean of
    log per-trajectory errors, which a few trajectories near a boundary between modes cannot dominate) or "auto"
    (one fit with each loss; of the start grid and the two fits, the one with the lowest RMS on the held-out draws
    is returned, since neither loss generalised better on every mixture measured) or "cv" (that choice by 2-fold
    cross-fitting: each loss fitted on one half and scored on the other, both ways; the loss with the lowest pooled
    out-of-fold RMS wins if it beats the start grid's by more than 1.96 standard errors of the paired
    difference, is refitted on all the draws and kept if it beats the start grid on them; samplers/tune_cv.py
    `select_cv`; needs >= 8 draws, ignores holdout); the held-out check is on the RMS either way. holdout: the
    share of x_T (the last draws) held out for that check, in (0, 1); with fewer than 8 draws nothing is held out
    and the fit is kept if it wins on the fitting draws."""
    from . import METHODS, sample

    if loss not in LOSSES:
        raise ValueError(f"optimize_grid loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise ValueError(f"optimize_grid holdout must be a share in (0, 1), got {holdout!r}")
    if loss == "cv" and len(x_T) < 8:
        raise ValueError(f"optimize_grid loss='cv' needs at least 8 calibration draws (two folds), got {len(x_T)}")
    n = grid_steps(method, nfe)
    p = denoiser.process
    kinds = [default_grid(p, METHODS[method].grids)] if start is None else start
    starts = [make_ts(p, g, n)[0] for g in ([kinds] if isinstance(kinds, (str, Tensor)) else kinds)]
    for ts0 in starts:
        if len(ts0) != n + 1:
            raise ValueError(f"optimize_grid start grid needs {n + 1} times for {method!r} at nfe={nfe}, "
                             f"got {len(ts0)}")
        if not bool(torch.isfinite(p.log_snr(ts0)).all()):
            raise ValueError(f"optimize_grid needs a finite log-SNR at both ends of {method!r}'s grid "
                             f"(t={ts0[0].item():g}..{ts0[-1].item():g}); tune a process with alpha > 0 at t_max")
        if abs(ts0[0].item() - starts[0][0].item()) > 1e-9 or abs(ts0[-1].item() - starts[0][-1].item()) > 1e-9:
            raise ValueError("optimize_grid start grids must share their ends (the reference solve's), got "
                             f"t={ts0[0].item():g}..{ts0[-1].item():g} and t={starts[0][0].item():g}.."
                             f"{starts[0][-1].item():g}")
    if reference is None:
        reference = reference_endpoints(denoiser, x_T, starts[0][0].item(), starts[0][-1].item(), cond=cond)

    # a share of the draws (a quarter by default; at least 8 draws in all) is held out: the fitted grid is kept only
    # if it also wins there, so a fit dominated by the few calibration trajectories near a boundary between modes
    # cannot make things worse
    k = max(1, len(x_T) - int(len(x_T) * holdout)) if len(x_T) >= 8 and loss != "cv" else len(x_T)

    def errors(ts: Tensor, rows: slice) -> Tensor:
        part = None if cond is None else {key: v[rows] for key, v in cond.items()}
        x = sample(denoiser, x_T[rows], method, nfe=nfe, grid=ts, cond=part, **options)
        return (x.double() - reference[rows].double()).flatten(1).square().mean(1)  # per-trajectory MSE

    def rms_of(ts: Tensor, rows: slice = slice(0, k)) -> float:
        return pooled_rms(errors(ts, rows))

    ts0 = min(starts, key=rms_of)

    if loss == "cv":  # 2-fold cross-fitting on all the draws (samplers/tune_cv.py)
        from .tune_cv import select_cv

        def fit(kind: str, rows: slice) -> Tensor | None:
            return fit_grid(p, ts0, partial(errors, rows=rows), kind, steps, tol, simplex_step)

        return select_cv(errors, len(x_T), ts0, fit)
    candidates = [ts0]  # the start grid first: it wins ties
    for kind in (("rms", "log") if loss == "auto" else (loss,)):
        ts = fit_grid(p, ts0, partial(errors, rows=slice(0, k)), kind, steps, tol, simplex_step)
        if ts is not None:
            candidates.append(ts)
    if k == len(x_T):  # too few draws to hold any out: the fit (for "auto", the lowest RMS on the fitting draws)
        return candidates[-1] if loss != "auto" else min(reversed(candidates), key=rms_of)
    held = slice(k, None)
    return min(candidates, key=lambda ts: rms_of(ts, held))
