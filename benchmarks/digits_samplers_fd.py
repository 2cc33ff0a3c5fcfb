"""FD of kuosan's ODE samplers (default grids and grids tuned by kuosan.samplers.optimize_grid) beside diffusers'
and k-diffusion's, all driving the same trained digits network from the same prior draws.

    .venv/bin/python benchmarks/digits_samplers_fd.py                    # /work/runs/digits-ddpm, 1000 samples
    .venv/bin/python benchmarks/digits_samplers_fd.py --run RUN --n 64 --nfe 5 --n-calib 16 --steps 10  # fast

The run must be a DiscreteVP run (DDPM's discrete schedule, as diffusers and k-diffusion expect). Its denoiser
is used without x0 clipping (the same function for every sampler); every sampler starts from the same --n draws
x_T (seed 0) at t = 1, and its output, clipped to [-1, 1], is scored by the Frechet distance of the digits
classifier's features to the training digits (kuosan.eval: build_reference / frechet_distance), and with
--eval-rms by the RMS distance to a tight solve of the same ODE (kuosan rk45 at --ref-tol) from the same x_T.
diffusers' DPM-Solver++ 2M/3M and UniPC schedulers (on the run's own betas) and k-diffusion's DPM++ 2M Karras
and LMS Karras (through its DiscreteEpsDDPMDenoiser; --peers) see the network through integer indices: eps at
index i is the network's eps at kuosan time (i + 1)/N, as benchmarks/samplers.py `mixture_eps` does for the
mixture. Grids are tuned on --n-calib other draws (seed 1) against their own tight solves; the run directory
is only read.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from samplers import diffusers_configs, index_eps, kdiffusion_configs, make_scheduler, run_diffusers, run_kdiffusion

import kuosan
from kuosan.eval.evaluate import build_reference, parse_sampler
from kuosan.eval.metrics import frechet_distance
from kuosan.processes import DiscreteVP
from kuosan.samplers.tune import reference_endpoints

F64 = torch.float64
METHODS = "dpmpp-2m,unipc,dpmpp-3m,eabm,eabm:order=3,eabm:order=4"


def main(argv: list[str] | None = None) -> dict[str, list[tuple[float, float]]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="/work/runs/digits-ddpm")
    ap.add_argument("--n", type=int, default=1000, help="evaluation samples (the same x_T for every sampler)")
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--methods", default=METHODS, help="kuosan sampler specs, comma-separated")
    ap.add_argument("--tuned", default=None, help="specs to tune (default: all of --methods; '' for none)")
    ap.add_argument("--n-calib", type=int, default=128, help="calibration draws for the tuned grids (seed 1)")
    ap.add_argument("--steps", type=int, default=300, help="loss evaluations per fit (Nelder-Mead)")
    ap.add_argument("--ref-tol", type=float, default=1e-4, help="rtol = atol of the tight rk45 solves")
    ap.add_argument("--eval-rms", action="store_true", help="also the RMS distance to a tight solve of the --n draws")
    ap.add_argument("--peers", default="diffusers DPM++,diffusers UniPC,k-diffusion DPM++ 2M Karras,k-diffusion LMS",
                    help="the peer rows whose names start with one of these (comma-separated)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    nfes = [int(v) for v in args.nfe.split(",")]
    specs = [s for s in args.methods.split(",") if s]
    peers = tuple(s for s in args.peers.split(",") if s)
    tuned = specs if args.tuned is None else [s for s in args.tuned.split(",") if s]

    pipe = kuosan.load(args.run, device="cpu")
    proc = pipe.denoiser.process
    if not isinstance(proc, DiscreteVP):
        raise SystemExit(f"{args.run}: process is {type(proc).__name__}; this benchmark needs a discretevp run")
    den = pipe.model(clip_x0="none")
    shape = tuple(pipe.image_shape)
    ref = build_reference(pipe.config, shape)
    fd = lambda x: frechet_distance(ref.embed(x.clamp(-1, 1)).double(), ref.train_features)  # noqa: E731
    floor = frechet_distance(ref.embed(ref.heldout[: args.n]).double(), ref.train_features)
    draw = lambda n, s: proc.prior_sample((n, *shape), generator=torch.Generator().manual_seed(s))  # noqa: E731
    x_T, x_cal = draw(args.n, 0), draw(args.n_calib, 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        exact = reference_endpoints(den, x_T, proc.t_max, proc.t_min, tol=args.ref_tol) if args.eval_rms else None
        exact_cal = reference_endpoints(den, x_cal, proc.t_max, proc.t_min, tol=args.ref_tol) if tuned else None
    ref_s = time.perf_counter() - t0

    def score(x: torch.Tensor) -> tuple[float, float]:
        return fd(x), math.nan if exact is None else (x.double() - exact.double()).square().mean().sqrt().item()

    rows: dict[str, list[tuple[float, float]]] = {}
    if exact is not None:
        rows["kuosan rk45 (the tight solve)"] = [score(exact)] * len(nfes)
    eps, fit_s = index_eps(den.eps, proc), 0.0  # eps at index i = the network's eps at t = (i + 1)/N
    with torch.no_grad():
        for nfe in nfes:
            for spec in specs:
                method, opts = parse_sampler(spec)
                den.reset_nfe()
                rows.setdefault(f"kuosan {spec} default grid", []).append(
                    score(kuosan.sample(den, x_T, method, nfe, **opts)))
                assert den.nfe <= nfe
                if spec in tuned:
                    kind = opts.pop("grid", None)
                    t1 = time.perf_counter()
                    ts = kuosan.samplers.optimize_grid(den, method, nfe, x_cal, reference=exact_cal,
                                                       steps=args.steps, start=kind, **opts)
                    fit_s += time.perf_counter() - t1
                    den.reset_nfe()
                    rows.setdefault(f"kuosan {spec} tuned grid", []).append(
                        score(kuosan.sample(den, x_T, method, nfe, grid=ts, **opts)))
                    assert den.nfe <= nfe
            for name, (cls, cfg, steps) in diffusers_configs(nfe).items():
                if f"diffusers {name}".startswith(peers):
                    sched = make_scheduler(cls, cfg, {"trained_betas": proc.betas.tolist()})
                    x, calls = run_diffusers(sched, steps, eps, x_T)
                    assert calls <= nfe, (name, calls)
                    rows.setdefault(f"diffusers {name}", []).append(score(x))
            for name, (sampler, schedule, steps) in kdiffusion_configs(nfe).items():
                if not f"k-diffusion {name}".startswith(peers):
                    continue
                x, calls = run_kdiffusion(sampler, schedule, steps, eps, proc, x_T)
                assert calls <= nfe, (name, calls)
                rows.setdefault(f"k-diffusion {name}", []).append(score(x))

    print(f"\n## {args.run} (step {pipe.step}): FD of {args.n} samples (digits classifier features, vs the training "
          f"digits){' / RMS distance to the tight solve' * args.eval_rms}; held-out digits' FD (the floor): "
          f"{floor:.2f}")
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|" + "---|" * len(nfes))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{a:.3g}" + (f" / {b:.3g}" if args.eval_rms else "") for a, b in v) + " |")
    best_p = [min((v[j][0] for k, v in rows.items() if k.startswith(("diffusers", "k-diffusion"))), default=math.nan)
              for j in range(len(nfes))]
    for tag in ("default", "tuned"):
        best_k = [min((v[j][0] for k, v in rows.items() if k.endswith(f"{tag} grid")), default=math.nan)
                  for j in range(len(nfes))]
        print(f"| **best kuosan {tag} / best peer (FD)** | "
              + " | ".join(f"**{a / b:.2f}**" for a, b in zip(best_k, best_p, strict=True)) + " |")
    print(f"\ntight solves {ref_s:.0f} s; fitting {fit_s:.0f} s for {len(tuned) * len(nfes)} grids on "
          f"{args.n_calib} draws ({args.steps} loss evaluations at most each)")
    return rows


if __name__ == "__main__":
    main()
