"""Grids tuned to the model (LD3-style, kuosan.samplers.optimize_grid) against the default grids and diffusers'
multistep schedulers, on sharply multimodal exact Gaussian mixtures.

    .venv/bin/python benchmarks/tune_grid.py                     # 2-D ring (DDPM linear), 16-D (SD scaled_linear)
    .venv/bin/python benchmarks/tune_grid.py --nfe 5,10 --n-eval 256 --quick

Mixtures: 8 modes, per-dimension variances 0.01 .. 0.09, neighbouring means 4 apart (2-D: on a circle; 16-D: a
randomly rotated simplex, every pair 4 apart). Each grid is fitted on --n-calib prior draws (seed 1) and scored
on --n-eval other draws (seed 0), the same draws for every sampler (paired). The score is the RMS distance of
the output to the tight PF-ODE endpoint (benchmarks/samplers.py `reference`: DOP853 at 1e-12 in lambda, then
the final denoise at t = 1/N) and the fraction of trajectories whose output lies nearest to another mode than
the exact endpoint's. Peer rows (where importable) are diffusers' DPM-Solver++ 2M/3M and UniPC configurations
and k-diffusion's DPM++ 2M Karras/exponential, LMS and Heun (Karras) of benchmarks/samplers.py on the same x_T;
"best peer" is the lowest RMS among them per column; each ratio carries a 95% paired bootstrap interval over the
evaluation trajectories (benchmarks/samplers.py `ratio_interval`).

--methods takes kuosan sampler specs ('eabm:order=4:grid=karras'): a spec's grid is the default row's grid and the
fit's start; --start best starts every fit from the best of the logsnr, karras, quadratic and uniform grids on
the fitting draws instead; --loss log fits the mean log per-trajectory error instead of the RMS; --loss auto
fits both and keeps the best of start / RMS fit / log fit on the held-out share (--holdout) of the fitting draws;
--loss cv makes that choice by 2-fold cross-fitting on all of them and refits the winner on all (--holdout unused).
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import torch
from samplers import (
    diffusers_configs,
    kdiffusion_configs,
    make_scheduler,
    mixture_eps,
    ratio_interval,
    reference,
    rms_of,
    run_diffusers,
    run_kdiffusion,
    score_draws,
)

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.eval.evaluate import parse_sampler
from kuosan.processes import DiscreteVP

F64 = torch.float64
METHODS = ["dpmpp-2m", "unipc", "dpmpp-3m"]
PEERS = ("DPM++", "UniPC")  # the diffusers configurations that compete with these solvers
KINDS = ("logsnr", "karras", "quadratic", "uniform")  # --start best: the fit starts from the best of these


def ring_2d(k: int = 8, gap: float = 4.0) -> GaussianMixture:
    """k modes on a circle, neighbours `gap` apart, per-dimension variances 0.01 .. 0.09."""
    a = torch.arange(k, dtype=F64) * 2 * math.pi / k
    r = gap / (2 * math.sin(math.pi / k))
    var = torch.linspace(0.01, 0.09, k, dtype=F64)[:, None].expand(k, 2)
    return GaussianMixture(torch.ones(k, dtype=F64), torch.stack([r * a.cos(), r * a.sin()], 1), var)


def simplex_16d(k: int = 8, gap: float = 4.0, seed: int = 0) -> GaussianMixture:
    """k modes at gap/sqrt(2) e_i, randomly rotated in 16-D (every pair `gap` apart), variances in 0.01 .. 0.09."""
    g = torch.Generator().manual_seed(seed)
    D = 16
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    means = gap / math.sqrt(2) * torch.eye(k, D, dtype=F64) @ Q.T
    var = 0.01 + 0.08 * torch.rand(k, D, generator=g, dtype=F64)
    return GaussianMixture(torch.ones(k, dtype=F64), means, var)


def mode(gmm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), gmm.means).argmin(1)


def score(gmm: GaussianMixture, x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """samplers.score_draws with the nearest mode as the component: (RMS distance to the exact endpoint, fraction
    in another mode than the exact endpoint, per-trajectory mean squared error)."""
    return score_draws(x, ref, partial(mode, gmm))


def kuosan_rows(model, specs: list[str], nfe: int, x_cal, ref_cal, x_ev, score_fn, args,
                rows: dict[str, list]) -> float:
    """Append each spec's default-grid and tuned-grid scores on the evaluation draws to rows (the grid fitted on
    the calibration draws only); returns the fitting time in seconds."""
    fit_s = 0.0
    for spec in specs:
        method, opts = parse_sampler(spec)
        kind = opts.pop("grid", None)
        x = kuosan.sample(model, x_ev, method, nfe, grid=kind, **opts)
        rows.setdefault(f"kuosan {spec} default grid", []).append(score_fn(x))
        start = list(KINDS) if args.start == "best" else kind
        t1 = time.perf_counter()
        try:
            ts = kuosan.samplers.optimize_grid(model, method, nfe, x_cal, reference=ref_cal, steps=args.steps,
                                               start=start, loss=args.loss, holdout=args.holdout,
                                               **opts)
        except ValueError:  # e.g. dpm-solver-3 at 5 NFE: fewer than two third-order steps fit the budget
            rows.setdefault(f"kuosan {spec} tuned grid", []).append((math.nan, math.nan))
            continue
        fit_s += time.perf_counter() - t1
        model.reset_nfe()
        x = kuosan.sample(model, x_ev, method, nfe, grid=ts, **opts)
        assert model.nfe <= nfe
        rows.setdefault(f"kuosan {spec} tuned grid", []).append(score_fn(x))
    return fit_s


def peer_rows(gmm: GaussianMixture, proc: DiscreteVP, schedule_kw: dict, nfe: int, x_ev, score_fn,
              rows: dict[str, list], diffusers_prefixes: tuple[str, ...] | None = PEERS) -> None:
    """Append diffusers' (those whose name starts with one of diffusers_prefixes; None: all) and k-diffusion's
    scores on the evaluation draws to rows."""
    eps = mixture_eps(gmm, proc)
    for peer, (cls, cfg, steps) in diffusers_configs(nfe).items():
        if diffusers_prefixes is None or peer.startswith(diffusers_prefixes):
            x, calls = run_diffusers(make_scheduler(cls, cfg, schedule_kw), steps, eps, x_ev)
            assert calls <= nfe
            rows.setdefault(f"diffusers {peer}", []).append(score_fn(x))
    for peer, (sampler, schedule, steps) in kdiffusion_configs(nfe).items():
        x, calls = run_kdiffusion(sampler, schedule, steps, eps, proc, x_ev)
        assert calls <= nfe
        rows.setdefault(f"k-diffusion {peer}", []).append(score_fn(x))


def run(name: str, gmm: GaussianMixture, proc: DiscreteVP, schedule_kw: dict, nfes: list[int], args) -> None:
    model = gmm.denoiser(proc)
    draw = lambda n, s: proc.prior_sample((n, gmm.dim), generator=torch.Generator().manual_seed(s), dtype=F64)  # noqa: E731
    x_cal, x_ev = draw(args.n_calib, 1), draw(args.n_eval, 0)
    t0 = time.perf_counter()
    ref_cal, ref_ev = reference(model, x_cal), reference(model, x_ev)
    print(f"\n## {name}: RMS endpoint error / fraction in another mode ({args.n_eval} evaluation trajectories; "
          f"grids fitted on {args.n_calib} other draws; references {time.perf_counter() - t0:.0f} s)")
    rows: dict[str, list[tuple[float, float]]] = {}
    fit_s = 0.0
    score_fn = lambda x: score(gmm, x, ref_ev)  # noqa: E731
    for nfe in nfes:
        fit_s += kuosan_rows(model, args.methods, nfe, x_cal, ref_cal, x_ev, score_fn, args, rows)
        peer_rows(gmm, proc, schedule_kw, nfe, x_ev, score_fn, rows)
    _table(rows, nfes)
    print(f"\nfitting time: {fit_s:.0f} s for {len(args.methods) * len(nfes)} grids")


def _table(rows: dict[str, list[tuple]], nfes: list[int]) -> None:
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join("–" if math.isnan(e[0]) else f"{e[0]:.3g} / {e[1]:.1%}" for e in v) + " |")
    best = lambda j, keep: min((v[j] for k, v in rows.items() if keep(k) and not math.isnan(v[j][0])),  # noqa: E731
                               key=rms_of, default=(math.nan, math.nan))
    best_p = [best(j, lambda k: k.startswith(("diffusers", "k-diffusion"))) for j in range(len(nfes))]
    for tag in ("default", "tuned"):
        best_k = [best(j, lambda k, tag=tag: k.endswith(f"{tag} grid")) for j in range(len(nfes))]
        ratios = " | ".join(ratio_interval(a, b) for a, b in zip(best_k, best_p, strict=True))
        print(f"| **best kuosan {tag} / best peer (RMS)** | {ratios} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1500, help="loss evaluations per fit (Nelder-Mead)")
    ap.add_argument("--quick", action="store_true", help="the 2-D mixture only")
    ap.add_argument("--methods", default=",".join(METHODS), help="kuosan sampler specs, comma-separated")
    ap.add_argument("--start", choices=("spec", "best"), default="spec",
                    help="fit from the spec's grid (default) or the best of " + ", ".join(KINDS))
    ap.add_argument("--loss", choices=("rms", "log", "auto", "cv"), default="rms", help="optimize_grid's fitting loss")
    ap.add_argument("--holdout", type=float, default=0.25, help="optimize_grid's held-out share of --n-calib")
    ap.add_argument("--only", choices=("2d", "16d"), default=None, help="one mixture only")
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    torch.set_num_threads(1)
    nfes = [int(v) for v in args.nfe.split(",")]
    if args.only != "16d":
        run("2-D ring, DDPM linear", ring_2d(), DiscreteVP.linear(),
            {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}, nfes, args)
    if not args.quick and args.only != "2d":
        run("16-D simplex, SD scaled_linear", simplex_16d(), DiscreteVP.scaled_linear(),
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, nfes, args)


if __name__ == "__main__":
    main()
