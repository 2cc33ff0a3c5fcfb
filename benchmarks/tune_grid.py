"""Grids tuned to the model (LD3-style, kuosan.samplers.optimize_grid) against the default grids and diffusers'
multistep schedulers, on sharply multimodal exact Gaussian mixtures.

    .venv/bin/python benchmarks/tune_grid.py                     # 2-D ring (DDPM linear), 16-D (SD scaled_linear)
    .venv/bin/python benchmarks/tune_grid.py --nfe 5,10 --n-eval 256 --quick

Mixtures: 8 modes, per-dimension variances 0.01 .. 0.09, neighbouring means 4 apart (2-D: on a circle; 16-D: a
randomly rotated simplex, every pair 4 apart). Each grid is fitted on --n-calib prior draws (seed 1) and scored
on --n-eval other draws (seed 0), the same draws for every sampler (paired). The score is the RMS distance of
the output to the tight PF-ODE endpoint (benchmarks/samplers.py `reference`: DOP853 at 1e-12 in lambda, then
the final denoise at t = 1/N) and the fraction of trajectories whose output lies nearest to another mode than
the exact endpoint's. diffusers' rows (if importable) are its DPM-Solver++ 2M/3M and UniPC configurations of
benchmarks/samplers.py on the same x_T; "best diffusers" is the lowest RMS among them per column.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from samplers import diffusers_configs, make_scheduler, mixture_eps, reference, run_diffusers

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.processes import DiscreteVP

F64 = torch.float64
METHODS = ["dpmpp-2m", "unipc", "dpmpp-3m"]
PEERS = ("DPM++", "UniPC")  # the diffusers configurations that compete with these solvers


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


def score(gmm: GaussianMixture, x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(RMS distance to the exact endpoint, fraction in another mode than the exact endpoint)."""
    rms = (x.double() - ref).square().mean().sqrt().item()
    return rms, (mode(gmm, x) != mode(gmm, ref)).double().mean().item()


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
    for nfe in nfes:
        for m in METHODS:
            x = kuosan.sample(model, x_ev, m, nfe)
            rows.setdefault(f"kuosan {m} default grid", []).append(score(gmm, x, ref_ev))
            t1 = time.perf_counter()
            ts = kuosan.samplers.optimize_grid(model, m, nfe, x_cal, reference=ref_cal, steps=args.steps)
            fit_s += time.perf_counter() - t1
            model.reset_nfe()
            x = kuosan.sample(model, x_ev, m, nfe, grid=ts)
            assert model.nfe <= nfe
            rows.setdefault(f"kuosan {m} tuned grid", []).append(score(gmm, x, ref_ev))
        for peer, (cls, cfg, steps) in diffusers_configs(nfe).items():
            if peer.startswith(PEERS):
                x, calls = run_diffusers(make_scheduler(cls, cfg, schedule_kw), steps, mixture_eps(gmm, proc), x_ev)
                assert calls <= nfe
                rows.setdefault(f"diffusers {peer}", []).append(score(gmm, x, ref_ev))
    _table(rows, nfes)
    print(f"\nfitting time: {fit_s:.0f} s for {len(METHODS) * len(nfes)} grids")


def _table(rows: dict[str, list[tuple[float, float]]], nfes: list[int]) -> None:
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{r:.3g} / {f:.1%}" for r, f in v) + " |")
    for tag in ("default", "tuned"):
        best_k = [min(v[j][0] for k, v in rows.items() if k.endswith(f"{tag} grid")) for j in range(len(nfes))]
        best_d = [min((v[j][0] for k, v in rows.items() if k.startswith("diffusers")), default=math.nan)
                  for j in range(len(nfes))]
        ratios = " | ".join(f"**{a / b:.2f}**" for a, b in zip(best_k, best_d, strict=True))
        print(f"| **best kuosan {tag} / best diffusers (RMS)** | {ratios} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1500, help="loss evaluations per fit (Nelder-Mead)")
    ap.add_argument("--quick", action="store_true", help="the 2-D mixture only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    nfes = [int(v) for v in args.nfe.split(",")]
    run("2-D ring, DDPM linear", ring_2d(), DiscreteVP.linear(),
        {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}, nfes, args)
    if not args.quick:
        run("16-D simplex, SD scaled_linear", simplex_16d(), DiscreteVP.scaled_linear(),
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, nfes, args)


if __name__ == "__main__":
    main()
