"""Pixel space against latent space on 28x28 MNIST at equal training CPU time (Rombach et al. 2022,
arXiv:2112.10752, §4.1: the latent model should sample far faster at equal quality).

    .venv/bin/python benchmarks/latent_vs_pixel.py runs/mnist-ldm runs/px-mnist-pixel --latent-cpu 461,1964
    .venv/bin/python benchmarks/latent_vs_pixel.py runs/ldm-new runs/px-new --latent-cpu 300,900 --train

--train first trains recipe mnist-pixel into the pixel run for the latent run's user CPU (the sum of
--latent-cpu: autoencoder, latent model): two short timing runs (2 and --timing-steps steps, one thread,
`OMP_NUM_THREADS=1 /usr/bin/time -v`) give the user CPU per step and the start-up cost, the step count is
(budget - start-up) / (CPU per step), and the whole training is measured the same way; the figures go to
<pixel run>/cpu.json, which later calls read (or give --pixel-cpu).

Every cell: --n samples of DPM-Solver++(2M) at w and NFE (classes in turn, seed --seed), drawn in a subprocess
with one thread, batches of 1000; FD in the shipped MNIST classifier's features against the training digits,
class accuracy by the same classifier. samples/s is wall-clock and per CPU second of that subprocess (the
machine may be shared; CPU seconds are the steadier figure); the latent model's include decoding. Peak memory:
the subprocess's peak RSS (ru_maxrss: Python, torch, the model, the sampling) and its RSS just after loading.

Equal FD, per w: the target is the worse of the two models' best FD over the NFE grid (so both reach it); each
model's cheapest NFE in the grid whose FD is at most the target; the speed-up is the latent model's samples per
CPU second at its NFE over the pixel model's at its NFE. The issue's goal: at least 5x.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()


def user_cpu(cmd: list[str], time_file: Path) -> float:
    """Run cmd under `OMP_NUM_THREADS=1 /usr/bin/time -v`; its user CPU seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(["/usr/bin/time", "-v", "-o", str(time_file), *cmd], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    found = re.search(r"User time \(seconds\): ([\d.]+)", time_file.read_text())
    if found is None:
        raise SystemExit(f"{time_file}: no 'User time' line from /usr/bin/time -v")
    return float(found.group(1))


def steps_for(budget: float, cost_2: float, cost_k: float, k: int) -> tuple[int, float, float]:
    """(steps, CPU per step, start-up CPU) from the user CPU of a 2-step and a k-step run: cost = start-up +
    steps * per step, a straight line through both; steps = (budget - start-up) / per step, at least 1."""
    if k <= 2 or cost_k <= cost_2:
        raise ValueError(f"timing: {k} steps took {cost_k:.1f} s against {cost_2:.1f} s for 2; more --timing-steps")
    per_step = (cost_k - cost_2) / (k - 2)
    startup = max(cost_2 - 2 * per_step, 0.0)
    return max(int((budget - startup) / per_step), 1), per_step, startup


def train_pixel(out: Path, budget: float, timing_steps: int, recipe: str = "mnist-pixel",
                extra: tuple[str, ...] = ()) -> dict:
    """Train `recipe` into `out` for `budget` user CPU seconds (step count from two timing runs); the figures."""
    kuosan = [sys.executable, "-m", "kuosan", "train", recipe, "--set", "train.threads=1", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        cost = {}
        for k in (2, timing_steps):
            cost[k] = user_cpu([*kuosan, "--out", f"{tmp}/t{k}", "--set", f"train.steps={k}",
                                "--set", "train.ckpt_every=100000"], Path(tmp) / f"time{k}")
    steps, per_step, startup = steps_for(budget, cost[2], cost[timing_steps], timing_steps)
    print(f"timing: {per_step:.3f} s user CPU per step, start-up {startup:.1f} s -> {steps} steps for "
          f"{budget:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    used = user_cpu([*kuosan, "--out", str(out), "--set", f"train.steps={steps}"], out / "time-v.txt")
    info = {"user_s": used, "budget_s": budget, "steps": steps, "s_per_step": per_step, "startup_s": startup}
    (out / "cpu.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, KiB."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def probe(run: str, w: float, nfe: int, n: int, seed: int, out: str) -> None:
    """(subprocess) Draw n samples of `run` at guidance w and nfe; save them; print timing and memory as JSON."""
    import kuosan
    from kuosan.eval.evaluate import draw_samples

    torch.set_num_threads(1)
    pipe = kuosan.load(run, device="cpu")
    rss_load = status_kib("VmRSS")
    try:  # reset the peak (VmHWM) to the current RSS, so the peak below is that of the sampling (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        source = "VmHWM since loading"
    except OSError:
        source = "ru_maxrss (loading included)"
    decode = pipe.decode if pipe.codec is not None else None
    t0, c0 = time.perf_counter(), time.process_time()
    x, info = draw_samples(pipe.model(w), (n, *pipe.data_shape), "dpmpp-2m", nfe, seed=seed,
                           num_classes=pipe.num_classes, progress=False, decode=decode)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(out, x.numpy())
    peak = status_kib("VmHWM") if source.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall": wall, "cpu": cpu, "nfe_used": info["nfe_used"], "rss_load_mib": rss_load / 1024,
                      "peak_mib": peak / 1024, "peak_source": source}))


def draw(run: str, w: float, nfe: int, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """One (run, w, NFE) sampled in a one-thread subprocess: (samples, its timing and memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/x.npy"
        res = subprocess.run([sys.executable, str(HERE), "--probe", run, "--w", str(w), "--nfe", str(nfe),
                              "--n", str(n), "--seed", str(seed), "--probe-out", path],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"sampling {run} at w {w:g}, {nfe} NFE failed:\n{res.stderr.strip()[-2000:]}")
        return np.load(path), json.loads(res.stdout.strip().splitlines()[-1])


def cells(todo: list[tuple], n: int, seed: int, ref, jobs: int) -> dict[tuple, dict]:
    """{(run, step, w, nfe): FD, accuracy, samples/s, memory} for every key in todo, `jobs` subprocesses at once."""
    from concurrent.futures import ThreadPoolExecutor

    from kuosan.eval.evaluate import quality
    from kuosan.eval.report import accuracy

    out = {}
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        futures = {key: pool.submit(draw, key[0], key[2], key[3], n, seed) for key in todo}
        for key, fut in futures.items():
            x, r = fut.result()
            x = torch.from_numpy(x)
            out[key] = {**r, "fd": quality(x, ref)["fd"], "acc": accuracy(x, ref, 10), "per_s": n / r["wall"],
                        "per_cpu_s": n / r["cpu"]}
            print(f"  {key}: FD {out[key]['fd']:.2f}, accuracy {out[key]['acc']:.3f}", file=sys.stderr, flush=True)
    return out


def equal_fd(rows: dict[str, dict[int, dict]]) -> tuple[float, dict[str, int]]:
    """The target FD (the worse of the models' best FD over the grid) and each model's cheapest NFE reaching it."""
    target = max(min(r["fd"] for r in by_nfe.values()) for by_nfe in rows.values())
    return target, {m: min(k for k, r in by_nfe.items() if r["fd"] <= target) for m, by_nfe in rows.items()}


def read_pixel_cpu(pixel: Path, given: float | None) -> float | None:
    if given is not None:
        return given
    f = pixel / "cpu.json"
    return json.loads(f.read_text())["user_s"] if f.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("latent", nargs="?")
    ap.add_argument("pixel", nargs="?")
    ap.add_argument("--latent-cpu", default=None, help="AE,LDM: user CPU seconds of the latent run's two stages")
    ap.add_argument("--pixel-cpu", type=float, default=None, help="user CPU of the pixel run (else its cpu.json)")
    ap.add_argument("--train", action="store_true", help="train recipe mnist-pixel into PIXEL for the latent budget")
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--train-set", action="append", default=[], help="extra --set for the pixel training")
    ap.add_argument("--w", default="1,2")
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="latent,pixel", help="which to sample (one alone: its rows, no ratio)")
    ap.add_argument("--jobs", type=int, default=1, help="sampling subprocesses at once")
    ap.add_argument("--cache", default=None, help="JSON file of scored cells (run, step, w, NFE, n, seed), reused")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(args.probe, float(args.w), int(args.nfe), args.n, args.seed, args.probe_out)
    if not (args.latent and args.pixel):
        ap.error("give the latent run and the pixel run")
    torch.set_num_threads(1)
    import kuosan
    from kuosan.eval.evaluate import build_reference, quality
    from kuosan.nets import count_parameters

    stages = [float(v) for v in args.latent_cpu.split(",")] if args.latent_cpu else []
    latent_cpu = sum(stages) if stages else None
    pixel = Path(args.pixel)
    if args.train:
        if latent_cpu is None:
            raise SystemExit("--train needs --latent-cpu AE,LDM (the CPU budget)")
        train_pixel(pixel, latent_cpu, args.timing_steps, extra=tuple(f"--set={s}" for s in args.train_set))
    pixel_cpu = read_pixel_cpu(pixel, args.pixel_cpu)

    models = args.models.split(",")
    pipes = {m: kuosan.load(args.latent if m == "latent" else pixel, device="cpu") for m in models}
    if ("latent" in pipes and pipes["latent"].codec is None) or ("pixel" in pipes and pipes["pixel"].codec):
        raise SystemExit(f"{args.latent} must be a latent run and {pixel} a pixel run")
    for p in pipes.values():
        if p.image_shape != (1, 28, 28) or p.config.data.kind != "mnist" or p.num_classes != 10:
            raise SystemExit(f"{p.run_dir}: needs a class-conditional run on 28x28 MNIST (data.kind mnist)")
    first = next(iter(pipes.values()))
    ref = build_reference(first.config, (1, 28, 28), seed=args.seed, class_names=first.class_names)
    cpu = {"latent": "?" if latent_cpu is None else f"{latent_cpu:.0f} s ({' + '.join(f'{v:.0f}' for v in stages)})",
           "pixel": "?" if pixel_cpu is None else f"{pixel_cpu:.0f} s"}
    print(f"features / judge: {ref.features_name}; {len(ref.train)} training digits; held-out real digits FD "
          f"{quality(ref.heldout, ref)['fd']:.2f}; {args.n} samples per cell, dpmpp-2m, seed {args.seed}")
    for name, p in pipes.items():
        extra = "" if p.codec is None else f" + decoder {count_parameters(p.codec.ae.decoder, False):,}"
        print(f"{name}: {p.run_dir} step {p.step}, space {p.data_shape}, network "
              f"{count_parameters(p.denoiser.net, False):,} parameters{extra}; training user CPU {cpu[name]}")
    print()
    ws, nfes = [float(v) for v in args.w.split(",")], [int(v) for v in args.nfe.split(",")]
    cache_file = Path(args.cache) if args.cache else None
    cache = json.loads(cache_file.read_text()) if cache_file and cache_file.exists() else {}
    keys = {(m, w, nfe): (str(p.run_dir.resolve()), p.step, w, nfe)
            for m, p in pipes.items() for w in ws for nfe in nfes}
    cached = {k: cache[tag] for k in keys.values() if (tag := f"{k}|n={args.n}|seed={args.seed}") in cache}
    new = cells([k for k in keys.values() if k not in cached], args.n, args.seed, ref, args.jobs)
    if cache_file:  # read again: another call may have added cells meanwhile
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        cache.update({f"{k}|n={args.n}|seed={args.seed}": v for k, v in new.items()})
        cache_file.write_text(json.dumps(cache, indent=1) + "\n")
    found = {**cached, **new}
    rows = {w: {m: {nfe: found[keys[m, w, nfe]] for nfe in nfes} for m in pipes} for w in ws}
    print("| model | training CPU | w | NFE | FD | accuracy | samples/s (wall) | samples per CPU s | peak RSS "
          "(after load) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in ws:
        for name in pipes:
            for nfe, r in rows[w][name].items():
                print(f"| {name} | {cpu[name]} | {w:g} | {nfe} | {r['fd']:.2f} | {r['acc']:.1%} | {r['per_s']:.1f} | "
                      f"{r['per_cpu_s']:.1f} | {r['peak_mib']:.0f} MiB ({r['rss_load_mib']:.0f}) |")
    print(f"peak RSS: {next(iter(found.values()))['peak_source']} of the sampling subprocess (batches of 1000)")
    if len(pipes) < 2:
        return
    print("\nequal FD: target = the worse of the two models' best FD over NFE in {" + args.nfe + "}; each model at "
          "its cheapest NFE with FD <= target")
    print("| w | target FD | latent NFE: FD, samples per CPU s | pixel NFE: FD, samples per CPU s | speed-up (CPU) | "
          "speed-up (wall) | goal >= 5x |")
    print("|---|---|---|---|---|---|---|")
    for w in ws:
        target, at = equal_fd(rows[w])
        lat, pix = rows[w]["latent"][at["latent"]], rows[w]["pixel"][at["pixel"]]
        ratio, ratio_wall = lat["per_cpu_s"] / pix["per_cpu_s"], lat["per_s"] / pix["per_s"]
        print(f"| {w:g} | {target:.2f} | {at['latent']}: {lat['fd']:.2f}, {lat['per_cpu_s']:.1f} | {at['pixel']}: "
              f"{pix['fd']:.2f}, {pix['per_cpu_s']:.1f} | {ratio:.1f}x | {ratio_wall:.1f}x | "
              f"{'met' if ratio >= 5 else 'NOT met'} |")


if __name__ == "__main__":
    main()
