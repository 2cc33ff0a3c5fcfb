"""kuosan's ODE samplers beside diffusers' schedulers and k-diffusion's samplers, driving the same exact
Gaussian-mixture model.

    .venv/bin/python benchmarks/samplers.py                 # NFE 5/10/20/50, both schedules, 2-D and 16-D
    .venv/bin/python benchmarks/samplers.py --nfe 10 --quick
    .venv/bin/python benchmarks/samplers.py --nfe 5,10,20 --quick --tuned eabm,eabm:order=4   # + tuned grids

For each DiscreteVP schedule (DDPM linear, Stable-Diffusion scaled_linear; N = 1000) and each mixture, every
sampler starts from the same --n-eval x_T at t = 1 (1,000 by default) and is scored by the RMS distance of its
output to the tight probability-flow ODE endpoint (DOP853 at rtol = atol = 1e-12 in lambda, then the same final
denoise at the last training step t = 1/N), beside the fraction of trajectories whose output's most probable
component differs from the exact endpoint's. On multimodal data the RMS is dominated by the few trajectories
that end near a boundary between components, so each best-kuosan / best-peer ratio carries a 95% paired
bootstrap interval over the trajectories (the best rows held fixed).
diffusers' schedulers see the model through their integer timesteps: an
eps-prediction at index i is the mixture's exact eps at t = (i + 1)/N (fractional indices interpolate as
kuosan's DiscreteVP does). Each diffusers scheduler runs in the configurations that end at the last
training step (its "linspace" spacing and Karras / log-SNR sigmas where it has them); the best one counts.
k-diffusion (benchmarks/kdiffusion_peer.py, if installed) drives the same eps at integer indices through its
DiscreteEpsDDPMDenoiser, as AUTOMATIC1111 and ComfyUI drive a Stable-Diffusion U-Net: DPM++ 2M on Karras and
exponential sigmas, LMS and Heun on Karras sigmas, from the first to the last training sigma.

Overhead: the same loops with a model that returns a cached tensor (no model time), microseconds per NFE,
setup (grid, set_timesteps) included, median of repeats, torch on one thread. kuosan keeps its grids and
coefficients in a SamplerCache built once per process, as a pipeline would (--no-cache: recompute every call).

--tuned SPECS adds, per spec, its default-grid row and a row on a grid fitted by kuosan.samplers.optimize_grid on
--n-calib other prior draws (seed 1; the evaluation draws are seed 0), as benchmarks/tune_grid.py does; --loss
(rms, log, auto, cv) and --holdout are optimize_grid's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from scipy.integrate import solve_ivp

import kuosan
from kuosan.analytic import GaussianMixture
from kuosan.processes import DiscreteVP

F64 = torch.float64
KUOSAN = ["euler", "heun", "ddim", "dpm-solver-2", "dpm-solver-3", "dpmpp-2s", "dpmpp-2m", "dpmpp-3m", "unipc", "eabm",
          "flow-euler", "flow-midpoint"]
SCHEDULES = {"linear": (DiscreteVP.linear, {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}),
             "scaled_linear": (DiscreteVP.scaled_linear,
                               {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})}


def mixture_2d() -> GaussianMixture:
    """Three tilted 2-D Gaussians (the mixture of tests/conftest.py)."""
    means = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype=F64)
    covs = torch.tensor([[[0.30, 0.12], [0.12, 0.20]], [[0.10, -0.05], [-0.05, 0.25]], [[0.40, 0.0], [0.0, 0.05]]],
                        dtype=F64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64), means, covs)


def mixture_16d(seed: int = 0) -> GaussianMixture:
    """Six random 16-D Gaussians with random full covariances A A^T / 16 + 0.02 I."""
    g = torch.Generator().manual_seed(seed)
    K, D = 6, 16
    A = torch.randn(K, D, D, generator=g, dtype=F64)
    covs = A @ A.transpose(1, 2) / D * 0.3 + 0.02 * torch.eye(D, dtype=F64)
    return GaussianMixture(torch.rand(K, generator=g, dtype=F64) + 0.2, torch.randn(K, D, generator=g, dtype=F64), covs)


def reference(model: kuosan.Denoiser, x_T: torch.Tensor) -> torch.Tensor:
    """PF-ODE endpoint: dx~/dlambda = x0(x) - x~ with x~ = x/alpha (DOP853, rtol = atol = 1e-12), then x0 at t_min."""
    p, shape = model.process, x_T.shape
    t0, t1 = torch.tensor(p.t_max, dtype=F64), torch.tensor(p.t_min, dtype=F64)

    def f(lam: float, y: np.ndarray) -> np.ndarray:
        t = p.t_of_log_snr(torch.tensor(lam, dtype=F64))
        x = torch.from_numpy(y).reshape(shape) * p.alpha(t)
        return model.x0(x, t.expand(shape[0])).flatten().numpy() - y

    y0 = (x_T / p.alpha(t0)).flatten().numpy()
    sol = solve_ivp(f, (p.log_snr(t0).item(), p.log_snr(t1).item()), y0, method="DOP853", rtol=1e-12, atol=1e-12)
    x1 = torch.from_numpy(sol.y[:, -1]).reshape(shape) * p.alpha(t1)
    return model.x0(x1, t1.expand(shape[0]))


# --- diffusers -----------------------------------------------------------------------------------------------
def diffusers_configs(nfe: int) -> dict[str, tuple[Callable, dict, int]]:
    """name -> (scheduler class, extra config, num_inference_steps) for a budget of nfe model calls
    ({} without diffusers: the tables then show kuosan's rows alone)."""
    try:
        from diffusers import (
            DDIMScheduler,
            DPMSolverMultistepScheduler,
            EulerDiscreteScheduler,
            HeunDiscreteScheduler,
            UniPCMultistepScheduler,
        )
    except ImportError:
        return {}

    dpm = DPMSolverMultistepScheduler
    heun_steps = (nfe + 1) // 2  # a Heun scheduler with N steps calls the model 2N - 1 times
    return {
        "DDIM leading": (DDIMScheduler, {}, nfe),  # the default spacing: starts at 1000 - 1000/N, not at t = 1
        "DDIM trailing": (DDIMScheduler, {"timestep_spacing": "trailing"}, nfe),
        "DPM++2M karras": (dpm, {"solver_order": 2, "use_karras_sigmas": True}, nfe),
        "DPM++2M logsnr": (dpm, {"solver_order": 2, "use_lu_lambdas": True}, nfe),
        "DPM++3M karras": (dpm, {"solver_order": 3, "use_karras_sigmas": True}, nfe),
        "DPM++3M logsnr": (dpm, {"solver_order": 3, "use_lu_lambdas": True}, nfe),
        "UniPC karras": (UniPCMultistepScheduler, {"use_karras_sigmas": True}, nfe),
        "UniPC expsigma": (UniPCMultistepScheduler, {"use_exponential_sigmas": True}, nfe),
        "Euler": (EulerDiscreteScheduler, {}, nfe),
        "Euler karras": (EulerDiscreteScheduler, {"use_karras_sigmas": True}, nfe),
        "Heun": (HeunDiscreteScheduler, {}, heun_steps),
        "Heun karras": (HeunDiscreteScheduler, {"use_karras_sigmas": True}, heun_steps),
    }


def make_scheduler(cls, config: dict, schedule_kw: dict):
    return cls(num_train_timesteps=1000, **schedule_kw, **config)


def run_diffusers(sched, steps: int, eps_fn, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The denoising loop of a diffusers pipeline (set_timesteps, then scale / model / step per timestep);
    returns the sample and the number of model calls."""
    sched.set_timesteps(steps)
    x = x_T
    if type(sched).__name__.startswith(("Euler", "Heun")):  # these integrate x/alpha: start at sqrt(sigma_0^2 + 1) x_T
        x = x_T * (sched.sigmas[0].double() ** 2 + 1).sqrt().to(x_T.dtype)
    calls = 0
    for t in sched.timesteps:
        eps = eps_fn(sched.scale_model_input(x, t), t)
        calls += 1
        x = sched.step(eps, t, x).prev_sample
    return x, calls


# --- k-diffusion ---------------------------------------------------------------------------------------------
def kdiffusion_configs(nfe: int) -> dict[str, tuple[str, str, int]]:
    """name -> (k-diffusion sampler, sigma schedule, steps) for a budget of nfe model calls, as AUTOMATIC1111 and
    ComfyUI run them on a discrete-time eps model ({} without k-diffusion)."""
    from kdiffusion_peer import k_diffusion

    if k_diffusion() is None:
        return {}
    heun_steps = (nfe + 1) // 2  # the last step to sigma = 0 is Euler: 2N - 1 calls
    return {
        "DPM++ 2M Karras": ("dpmpp_2m", "karras", nfe),
        "DPM++ 2M exponential": ("dpmpp_2m", "exponential", nfe),
        "LMS Karras": ("lms", "karras", nfe),
        "Heun Karras": ("heun", "karras", heun_steps),
    }


def run_kdiffusion(sampler: str, schedule: str, steps: int, eps_fn, proc: DiscreteVP,
                   x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    """k-diffusion's sampler on its DiscreteEpsDDPMDenoiser wrapper of the model (sigmas quantised to the training
    indices, its default and the web UIs'), between the first and last training sigma; returns (x0, calls)."""
    from kdiffusion_peer import discrete_eps_model, k_diffusion

    K = k_diffusion()
    calls = [0]

    def counted(x, t):
        calls[0] += 1
        return eps_fn(x, t)

    model = discrete_eps_model(counted, proc.alphas_cumprod.to(x_T.dtype))
    sigmas = getattr(K.sampling, f"get_sigmas_{schedule}")(steps, model.sigma_min, model.sigma_max).to(x_T.dtype)
    a_T = proc.alpha(torch.tensor(proc.t_max, dtype=F64)).to(x_T.dtype)
    x = getattr(K.sampling, f"sample_{sampler}")(model, x_T / a_T, sigmas, disable=True)
    return x, calls[0]


def index_eps(eps_at_t: Callable, proc: DiscreteVP) -> Callable:
    """The peers' model over a kuosan eps(x, t): eps at timestep index i (float or int, scalar or per row) is
    eps_at_t at kuosan time t = (i + 1)/N."""

    def eps(x: torch.Tensor, timestep) -> torch.Tensor:
        t = (torch.as_tensor(timestep, dtype=F64).reshape(-1) + 1) / proc.n
        return eps_at_t(x, t.expand(x.shape[0]).to(x.device))

    return eps


def mixture_eps(gmm: GaussianMixture, proc: DiscreteVP) -> Callable:
    """diffusers' model: eps at timestep index i is the mixture's exact eps at t = (i + 1)/N."""
    return index_eps(lambda x, t: gmm.eps(x, t, proc), proc)


# --- the tables ----------------------------------------------------------------------------------------------
OPTIONS: dict[str, dict] = {}  # per-method options for kuosan.sample (--eabm-order)
ONLY: list[str] = []  # --only: e.g. ["scaled_linear/16-D"]
TUNE = argparse.Namespace(methods=[], n_calib=256, steps=1000, start="spec", loss="rms",
                          holdout=0.25)  # --tuned and its options
USE_CACHE = [True]  # --no-cache turns it off


def accuracy(nfes: list[int], batch: int) -> None:
    for sched_name, (make, schedule_kw) in SCHEDULES.items():
        for mix_name, gmm in (("2-D", mixture_2d()), ("16-D", mixture_16d())):
            if ONLY and f"{sched_name}/{mix_name}" not in ONLY:
                continue
            proc = make()
            model = gmm.denoiser(proc)
            x_T = proc.prior_sample((batch, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
            ref = reference(model, x_T)
            if TUNE.methods:
                x_cal = proc.prior_sample((TUNE.n_calib, gmm.dim), generator=torch.Generator().manual_seed(1),
                                          dtype=F64)
                ref_cal = reference(model, x_cal)
            print(f"\n## {sched_name}, {mix_name} mixture: RMS endpoint error vs the tight PF-ODE / fraction of "
                  f"trajectories ending in another component ({batch} samples)")
            rows: dict[str, list[tuple]] = {}
            score = partial(_score, gmm, ref=ref)
            for nfe in nfes:
                for m in KUOSAN:
                    model.reset_nfe()
                    x = kuosan.sample(model, x_T, m, nfe=nfe, **OPTIONS.get(m, {}))
                    assert model.nfe <= nfe
                    rows.setdefault(f"kuosan {m}", []).append(score(x))
                for name, (cls, cfg, steps) in diffusers_configs(nfe).items():
                    sched = make_scheduler(cls, cfg, schedule_kw)
                    x, calls = run_diffusers(sched, steps, mixture_eps(gmm, proc), x_T)
                    assert calls <= nfe, (name, calls)
                    rows.setdefault(f"diffusers {name}", []).append(score(x))
                for name, (sampler, schedule, steps) in kdiffusion_configs(nfe).items():
                    x, calls = run_kdiffusion(sampler, schedule, steps, mixture_eps(gmm, proc), proc, x_T)
                    assert calls <= nfe, (name, calls)
                    rows.setdefault(f"k-diffusion {name}", []).append(score(x))
                if TUNE.methods:
                    from tune_grid import kuosan_rows

                    kuosan_rows(model, TUNE.methods, nfe, x_cal, ref_cal, x_T, score, TUNE, rows)
            _print_table(rows, nfes)


def _rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref).square().mean().sqrt().item()


def score_draws(x: torch.Tensor, ref: torch.Tensor,
                component: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    """(RMS distance to the exact endpoint, fraction of trajectories whose output `component` differs from the
    exact endpoint's, per-trajectory mean squared error): the RMS on multimodal data is dominated by the few
    trajectories that end near a boundary between components, so the flips are reported beside it and the ratios
    get a paired bootstrap interval (`ratio_interval`)."""
    sq = (x.double() - ref).square().mean(1)
    return sq.mean().sqrt().item(), (component(x.double()) != component(ref)).double().mean().item(), sq


def _score(gmm: GaussianMixture, x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """score_draws with the most probable mixture component as the component (the broad mixtures overlap)."""
    return score_draws(x, ref, lambda v: gmm.responsibilities(v).argmax(1))


def ratio_interval(a, b, n_boot: int = 2000) -> str:
    """'**a/b**' for two table entries, with a 95% paired bootstrap interval over the trajectories (both RMS
    recomputed on the same resampled draws) where both entries carry per-trajectory errors."""
    text = f"**{rms_of(a) / rms_of(b):.2f}**"
    if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) > 2 and len(b) > 2):
        return text
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(a[2]), (n_boot, len(a[2])), generator=g)
    r = (a[2][idx].mean(1) / b[2][idx].mean(1)).sqrt()
    lo, hi = torch.quantile(r, torch.tensor([0.025, 0.975], dtype=r.dtype)).tolist()
    return f"{text} ({lo:.2f}-{hi:.2f})"


def rms_of(e) -> float:
    """The RMS of a table entry (a number, or a tuple whose first element is the RMS)."""
    return e[0] if isinstance(e, tuple) else e


PEER_TOOLS = ("diffusers", "k-diffusion")


def _print_table(rows: dict[str, list], nfes: list[int], fmt: str = "{:.2e}") -> None:
    """Markdown table with the ratio of the best kuosan row to the best peer row (diffusers, k-diffusion) per
    column. Entries are numbers, or (RMS, fraction in another component[, per-trajectory errors]) ranked by the
    RMS; the ratios of those carry a 95% paired bootstrap interval."""
    cell = lambda e: f"{fmt.format(e[0])} / {e[1]:.1%}" if isinstance(e, tuple) else fmt.format(e)  # noqa: E731

    def best(j: int, keep: Callable[[str], bool]):
        return min((v[j] for k, v in rows.items() if keep(k) and not math.isnan(rms_of(v[j]))), key=rms_of,
                   default=math.nan)

    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(cell(e) for e in v) + " |")
    peer = [best(j, lambda k: k.startswith(PEER_TOOLS)) for j in range(len(nfes))]
    tuned = any("tuned" in k for k in rows)
    for tag, keep in (("", lambda k: True), (" default grids", lambda k: not k.endswith("tuned grid")),
                      (" tuned", lambda k: "tuned" in k)):
        if tag and not tuned:
            continue
        ours = [best(j, lambda k, keep=keep: k.startswith("kuosan") and keep(k)) for j in range(len(nfes))]
        print(f"| **best kuosan{tag} / best peer** | "
              + " | ".join(ratio_interval(a, b) for a, b in zip(ours, peer, strict=True)) + " |")


def overhead(nfes: list[int], batch: int, repeats: int) -> None:
    """Per-NFE sampler overhead with a model that returns a cached tensor; samplers interleaved per repeat."""
    print(f"\n## per-NFE overhead in microseconds (model excluded; batch {batch} x 16 float32, median of {repeats})")
    proc = DiscreteVP.linear()
    cached = torch.randn(batch, 16, dtype=torch.float32)
    x_T = torch.randn(batch, 16, dtype=torch.float32)
    model = kuosan.Denoiser(lambda x, t: cached, proc)
    cache = kuosan.samplers.SamplerCache(proc) if USE_CACHE[0] else None  # built once, as a pipeline would
    rows: dict[str, list[float]] = {}
    for nfe in nfes:
        runs: dict[str, Callable] = {
            f"kuosan {m}": partial(kuosan.sample, model, x_T, m, nfe=nfe, cache=cache, **OPTIONS.get(m, {}))
            for m in KUOSAN
        }
        for name, (cls, cfg, steps) in diffusers_configs(nfe).items():
            sched = make_scheduler(cls, cfg, SCHEDULES["linear"][1])  # built once, as a pipeline does
            runs[f"diffusers {name}"] = partial(run_diffusers, sched, steps, lambda x, t: cached, x_T)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():
            fn()  # warm up (and fill kuosan's SamplerCache, as a pipeline's first call would)
        for _ in range(repeats):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        for k, v in times.items():
            rows.setdefault(k, []).append(statistics.median(v) / nfe * 1e6)
    _print_table(rows, nfes, "{:.0f}")


def rk45_line(batch: int) -> None:
    """The adaptive solver: evaluations it chose and its error, on the linear schedule and the 2-D mixture."""
    proc, gmm = DiscreteVP.linear(), mixture_2d()
    model = gmm.denoiser(proc)
    x_T = proc.prior_sample((batch, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = reference(model, x_T)
    print("\n## kuosan rk45 (adaptive; linear schedule, 2-D mixture)")
    print("| rtol = atol | NFE used | RMS error |\n|---|---|---|")
    for tol in (1e-3, 1e-5, 1e-7):
        model.reset_nfe()
        x = kuosan.sample(model, x_T, "rk45", nfe=100_000, rtol=tol, atol=tol)
        print(f"| {tol:g} | {model.nfe} | {_rms(x, ref):.2e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", default="5,10,20,50")
    ap.add_argument("--n-eval", type=int, default=1000,
                    help="evaluation draws of the accuracy tables (the same x_T for every sampler)")
    ap.add_argument("--batch", type=int, default=256, help="batch of the overhead table and the rk45 line")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--quick", action="store_true", help="the accuracy tables only")
    ap.add_argument("--eabm-order", type=int, default=None, help="eabm's order (default: its own, 2)")
    ap.add_argument("--no-cache", action="store_true", help="overhead without a SamplerCache (recompute every call)")
    ap.add_argument("--tuned", default="", help="kuosan specs to add with grids tuned on other draws, comma-separated")
    ap.add_argument("--n-calib", type=int, default=256, help="--tuned: calibration draws (seed 1)")
    ap.add_argument("--steps", type=int, default=1000, help="--tuned: loss evaluations per fit")
    ap.add_argument("--start", choices=("spec", "best"), default="spec", help="--tuned: the fit's start grid")
    ap.add_argument("--loss", choices=("rms", "log", "auto", "cv"), default="rms",
                    help="--tuned: optimize_grid's fitting loss")
    ap.add_argument("--holdout", type=float, default=0.25, help="--tuned: optimize_grid's held-out share")
    ap.add_argument("--only", default="", help="these tables only, e.g. scaled_linear/16-D,linear/2-D")
    args = ap.parse_args()
    ONLY.extend(m for m in args.only.split(",") if m)
    TUNE.methods, TUNE.n_calib, TUNE.steps, TUNE.start = [m for m in args.tuned.split(",") if m], args.n_calib, \
        args.steps, args.start
    TUNE.loss, TUNE.holdout = args.loss, args.holdout
    USE_CACHE[0] = not args.no_cache
    if args.eabm_order:
        OPTIONS["eabm"] = {"order": args.eabm_order}
    torch.set_num_threads(1)
    nfes = [int(v) for v in args.nfe.split(",")]
    accuracy(nfes, args.n_eval)
    if not args.quick:
        rk45_line(args.batch)
        overhead(nfes, args.batch, args.repeats)


if __name__ == "__main__":
    main()
