"""U-Net vs U-ViT vs DiT vs MMDiT in MNIST latent space at equal parameter count, trained the same way.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_backbones.py --autoencoder runs/mnist-vae
    .venv/bin/python benchmarks/latent_backbones.py --autoencoder runs/mnist-vae --reuse   # table only

Every backbone is trained by `kuosan train` on the 4 x 7 x 7 latents of the same trained autoencoder
(`--autoencoder`), class-conditional with label dropout 0.1, as a rectified flow with velocity prediction and
logit-normal time sampling (SD3, Esser et al. 2024, arXiv:2403.03206, §3.1; its backbone comparison is trained
this way), with the same steps, batch, warm-up, cosine schedule, clipping, EMA and seed; every setting is pinned
on the command line (TRAIN below), so no recipe default leaks in. Only the network (about 0.55M parameters each,
within 4% of their mean) and, where LR says so, the learning rate differ. Training is one thread; its user CPU time is
the child process's (getrusage). Each run is then scored like `kuosan eval` (kuosan.eval.evaluate: draw_samples
decoded to images, quality's FD in the shipped MNIST classifier's features against the training digits,
report.accuracy by the same classifier) at w = 1 and w = 2 with the recipe's sampler (flow-midpoint, 20 NFE),
plus samples per CPU second (decoding included) and the peak resident memory while sampling.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# The four networks at the 4 x 7 x 7 latent shape, 10 classes (parameters: kuosan.nets.count_parameters).
NETS: dict[str, str] = {
    "unet": "{kind: unet, base_channels: 48, channel_mults: [1], num_res_blocks: 2, attention_resolutions: [7]}",
    "uvit": "{kind: uvit, patch_size: 1, hidden: 88, depth: 5, heads: 4}",
    "dit": "{kind: dit, patch_size: 1, hidden: 84, depth: 4, heads: 4}",
    "mmdit": "{kind: mmdit, patch_size: 1, hidden: 64, depth: 4, heads: 4, context_tokens: 4}",
}
LR = {"unet": 1e-3, "uvit": 1e-3, "dit": 1e-3, "mmdit": 1e-3}  # the lr check in docs/latent.md
STEPS = 700  # about 3 min of one core each (docs/latent.md: 1500 did not fit on the shared machine)
# Identical for every backbone: the process, objective, data and loop (recipe mnist-mmdit-rf's, pinned here).
TRAIN = [
    "prediction=velocity", "process={kind: rectified_flow}", "loss={weighting: velocity, time_sampling: logitnormal}",
    "objective={kind: denoising, p_uncond: 0.1}", "data={kind: mnist, split: train, conditional: true}",
    "train.batch_size=64", "train.warmup=100", "train.schedule=cosine", "train.grad_clip=1.0",
    "train.ema_decay=0.995", "train.sample_every=0", "train.log_every=50", "train.seed=0", "train.threads=1",
    "train.progress=false", "sample={method: flow-midpoint, nfe: 20, n: 100}",
]
SAMPLER, NFE, GUIDANCE = "flow-midpoint", 20, (1.0, 2.0)


def train_args(name: str, out: Path, autoencoder: str, steps: int) -> list[str]:
    """The `kuosan train` command line of one backbone: TRAIN, its network and lr, and the run length."""
    sets = [*TRAIN, f"net={NETS[name]}", f"train.lr={LR[name]}", f"train.steps={steps}",
            f"train.ckpt_every={steps}", f"autoencoder={autoencoder}"]
    return ["train", "mnist-mmdit-rf", "--out", str(out), *[a for s in sets for a in ("--set", s)]]


def finished(run: Path, steps: int) -> bool:
    """Whether `run` holds a checkpoint of step `steps` (kuosan's checkpoints/step-XXXXXXXX)."""
    return (run / "checkpoints" / f"step-{steps:08d}").is_dir()


def train(name: str, out_dir: Path, autoencoder: str, steps: int, reuse: bool) -> dict:
    """Train one backbone in a child process (or reuse it); {user_cpu_s, s_per_step, wall_s} of that training."""
    run, record = out_dir / f"bb-{name}", out_dir / f"bb-{name}.train.json"
    if reuse and finished(run, steps) and record.is_file():
        return json.loads(record.read_text())
    if run.exists():
        raise SystemExit(f"{run} exists: pass --reuse to use it (finished, with {record.name}) or remove it")
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime, time.perf_counter()
    subprocess.run([sys.executable, "-m", "kuosan", *train_args(name, run, autoencoder, steps)], check=True)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
    rec = {"user_cpu_s": cpu, "s_per_step": cpu / steps, "wall_s": time.perf_counter() - t0, "steps": steps}
    record.write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def rss_mb(field: str) -> float | None:
    """VmRSS / VmHWM (peak) of this process in MB from /proc (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS: `5` into /proc/self/clear_refs (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def score(run: Path, n: int, ref=None) -> tuple[dict, object]:
    """FD, class accuracy, samples per CPU second and peak RSS at each w of GUIDANCE, as `kuosan eval` scores a
    latent run (the same draw_samples, quality and accuracy); returns (scores, the reference for reuse)."""
    import kuosan
    from kuosan.eval.evaluate import build_reference, draw_samples, quality
    from kuosan.eval.report import accuracy

    pipe = kuosan.load(run, device="cpu")
    if ref is None:
        ref = build_reference(pipe.config, pipe.image_shape, seed=0, class_names=pipe.class_names)
    out = {}
    for w in GUIDANCE:
        den = pipe.model(w)
        peak_ok = reset_peak()
        t0 = time.process_time()
        x, timing = draw_samples(den, (n, *pipe.data_shape), SAMPLER, NFE, seed=0, num_classes=pipe.num_classes,
                                 progress=False, decode=pipe.decode)
        cpu = time.process_time() - t0
        out[w] = {"fd": quality(x, ref)["fd"], "accuracy": accuracy(x, ref, pipe.num_classes),
                  "samples_per_cpu_s": n / cpu, "samples_per_s": n / timing["seconds"], "nfe": timing["nfe_used"],
                  "peak_rss_mb": rss_mb("VmHWM") if peak_ok else None}
    return out, ref


def parameters(name: str) -> int:
    """Parameters of backbone `name` at the 4 x 7 x 7 latents with 10 classes (and the null class)."""
    import yaml

    from kuosan.nets import build_net, count_parameters

    kw = yaml.safe_load(NETS[name])
    return count_parameters(build_net(kw.pop("kind"), in_channels=4, image_size=7, num_classes=10, **kw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out-dir", type=Path, default=Path("runs"), help="runs go to OUT_DIR/bb-<backbone>")
    ap.add_argument("--n", type=int, default=1000, help="samples per guidance scale")
    ap.add_argument("--reuse", action="store_true", help="use finished runs in OUT_DIR (and their scores for the "
                    "same --n) instead of training (and sampling) again")
    ap.add_argument("--autoencoder", default="runs/mnist-vae", help="a trained mnist-vae run")
    ap.add_argument("--backbones", default=",".join(NETS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    names = args.backbones.split(",")
    unknown = [b for b in names if b not in NETS]
    if unknown:
        raise SystemExit(f"--backbones: {unknown[0]!r} is not one of {', '.join(NETS)}")
    print(f"{args.steps} steps of batch 64 per backbone; {args.n} samples per w, {SAMPLER} {NFE} NFE; common "
          f"settings: {' '.join(TRAIN)}", flush=True)
    rows, ref = {}, None
    for name in names:
        trained = train(name, args.out_dir, args.autoencoder, args.steps, args.reuse)
        saved = args.out_dir / f"bb-{name}.scores.json"
        if args.reuse and saved.is_file() and json.loads(saved.read_text())["n"] == args.n:
            scores = json.loads(saved.read_text())["scores"]
        else:
            scores, ref = score(args.out_dir / f"bb-{name}", args.n, ref)
            scores = {str(w): s for w, s in scores.items()}
            saved.write_text(json.dumps({"n": args.n, "scores": scores}, indent=2) + "\n")
        rows[name] = {"parameters": parameters(name), "net": NETS[name], "lr": LR[name], **trained,
                      "scores": scores}
        print(f"{name}: {json.dumps(rows[name])}", flush=True)
    (args.out_dir / "bb-results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| backbone | parameters | lr | user CPU s | s / step | FD w=1 | acc w=1 | FD w=2 | acc w=2 "
          "| samples / CPU s w=1 / w=2 | peak RSS MB w=2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        s1, s2 = r["scores"]["1.0"], r["scores"]["2.0"]
        peak = "n/a" if s2["peak_rss_mb"] is None else f"{s2['peak_rss_mb']:.0f}"
        print(f"| {name} | {r['parameters']:,} | {r['lr']:g} | {r['user_cpu_s']:.0f} | {r['s_per_step']:.3f} | "
              f"{s1['fd']:.2f} | {s1['accuracy']:.1%} | {s2['fd']:.2f} | {s2['accuracy']:.1%} | "
              f"{s1['samples_per_cpu_s']:.0f} / {s2['samples_per_cpu_s']:.0f} | {peak} |")


if __name__ == "__main__":
    main()
