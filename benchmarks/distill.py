"""Few-step students against their teachers on the 8x8 digits (issue 13): FD at 1, 2, 4 and 8 evaluations of
every student beside its teacher's FD at the teacher's own default, with the CPU time of each distillation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill.py                       # every method, defaults
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill.py --methods consistency,lcm --reuse

Each student is `kuosan distill METHOD TEACHER --out OUT/METHOD` at its defaults (the in-process equivalent:
distill_config + train_from_config, one torch thread, so this process's CPU seconds are seconds of one core; the
reflow pairs are generated inside the same call and counted). --reuse keeps students already trained in OUT
(their CPU time is read from OUT/METHOD/bench_cpu.json). FD: the shipped digits feature net against the training
digits (kuosan.eval.evaluate.quality), --n samples per cell, averaged over the prior seeds 0 .. --seeds - 1 (the
same seeds for student and teacher: FD of 1000 samples moves by +-30% between seeds, the teacher's heun 35 from
1.7 to 5.3); the student is sampled with its run's default sampler, the teacher with its run's default sampler and
NFE. LCM and its teacher use the same guidance scale (--guidance, one row per w) and the classes in turn; the
class accuracy (shipped classifier) is shown too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import kuosan
from kuosan.distill import distill_config
from kuosan.eval.evaluate import build_reference, draw_samples, quality
from kuosan.pictures import save_samples
from kuosan.train import train_from_config

GOALS = ("goals: consistency 1 step FD <= 2x teacher (heun 35), 2 steps <= 1.5x; LCM 4 steps <= 1.2x teacher at "
         "20 NFE with the same w; each distillation <= 900 s of one core")
QUIET = ["train.threads=1", "train.progress=false", "train.tensorboard=false"]


def distil(method: str, teacher: Path, out: Path, reuse: bool, sets: list[str]) -> float:
    """Train (or reuse) the student; its CPU seconds."""
    record = out / "bench_cpu.json"
    if reuse and record.is_file() and (out / "checkpoints" / "latest").is_file():
        return float(json.loads(record.read_text())["cpu_s"])
    cfg = distill_config(method, teacher, [*QUIET, *sets], out_dir=out)
    cpu = time.process_time()
    train_from_config(cfg, log=None)
    cpu = time.process_time() - cpu
    record.write_text(json.dumps({"cpu_s": cpu, "method": method, "teacher": str(teacher)}))
    return cpu


def measure(pipe, method: str, nfe: int, n: int, guidance: float | None, ref, seeds: int = 1
            ) -> tuple[float, float | None, torch.Tensor]:
    """(FD, class accuracy or None, samples of seed 0): n samples of `pipe` by method at nfe, classes in turn if
    conditional, on the run's stored grid for the method and nfe if it has one (as `kuosan eval` does); FD and
    accuracy averaged over the prior seeds 0 .. seeds - 1."""
    from kuosan.tuned_grids import load_tuned

    den = pipe.model(guidance) if guidance is not None else pipe.model()
    tuned = load_tuned(pipe.run_dir, method, nfe) if ":" not in method else None
    fds, accs, first = [], [], None
    for seed in range(seeds):
        x, _ = draw_samples(den, (n, *pipe.data_shape), method, nfe, num_classes=pipe.num_classes, progress=False,
                            seed=seed, grid=None if tuned is None else tuned[1])
        fds.append(quality(x, ref)["fd"])
        if pipe.num_classes and ref.classify is not None:
            accs.append(float((ref.classify(x) == torch.arange(n) % pipe.num_classes).double().mean()))
        first = x if first is None else first
    return sum(fds) / seeds, (sum(accs) / seeds if accs else None), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=Path("/work/runs/digits-edm"), help="unconditional teacher")
    ap.add_argument("--cond-teacher", type=Path, default=Path("/work/runs/digits-cond"), help="LCM's teacher")
    ap.add_argument("--methods", default="progressive,consistency,lcm,reflow")
    ap.add_argument("--nfe", default="1,2,4,8")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--guidance", default="1,2,3", help="w of LCM and its teacher (one row each)")
    ap.add_argument("--seeds", type=int, default=5, help="prior seeds averaged per cell")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-distill"))
    ap.add_argument("--reuse", action="store_true", help="keep students already in --out")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="overrides for every distillation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    nfes = [int(k) for k in args.nfe.split(",")]
    rows, teachers = [], {}
    for method in args.methods.split(","):
        teacher = args.cond_teacher if method == "lcm" else args.teacher
        tpipe = kuosan.load(teacher, device="cpu")
        ref = build_reference(tpipe.config, tpipe.data_shape, class_names=tpipe.class_names)
        out = args.out / method
        cpu = distil(method, teacher, out, args.reuse, args.sets)
        pipe = kuosan.load(out, device="cpu")
        for w in [float(v) for v in args.guidance.split(",")] if method == "lcm" else [None]:
            if (teacher, w) not in teachers:
                s = tpipe.config.sample
                fd, acc, _ = measure(tpipe, s.method, s.nfe, args.n, w, ref, args.seeds)
                teachers[teacher, w] = (f"{teacher.name} {s.method} {s.nfe}" + ("" if w is None else f", w={w:g}"),
                                        fd, acc)
            cells = []
            for nfe in nfes:
                sampler = pipe.config.sample.method
                if nfe == 1 and sampler.startswith("flow-"):  # one Euler step of a flow = the consistency map
                    sampler = "consistency"
                fd, acc, x = measure(pipe, sampler, nfe, args.n, w, ref, args.seeds)
                cells.append((fd, acc))
                if nfe == pipe.config.sample.nfe:
                    tag = "" if w is None else f", w = {w:g}"
                    save_samples(x[:64], out / f"samples{'' if w is None else f'-w{w:g}'}.png",
                                 title=f"{method}: {pipe.config.sample.method} {nfe} NFE{tag}")
            rows.append((method if w is None else f"{method} w={w:g}", pipe.config.sample.method, cpu, cells,
                         teachers[teacher, w]))

    print(f"{args.n} samples per cell, FD in the shipped digits features averaged over seeds 0-{args.seeds - 1} "
          "(lower is better); ratio = student FD / teacher FD; torch threads 1")
    head = " | ".join(f"NFE {k}" for k in nfes)
    print(f"| student | sampler | {head} | teacher (sampler NFE) | teacher FD | distillation CPU s |")
    print("|---|---|" + "---|" * len(nfes) + "---|---|---|")
    for method, sampler, cpu, cells, (tname, tfd, tacc) in rows:
        show = " | ".join(f"{fd:.2f} ({fd / tfd:.2f}x" + ("" if acc is None else f", {100 * acc:.1f}%") + ")"
                          for fd, acc in cells)
        tshow = f"{tfd:.2f}" + ("" if tacc is None else f" ({100 * tacc:.1f}%)")
        print(f"| {method} | {sampler} | {show} | {tname} | {tshow} | {cpu:.0f} |")
    print(GOALS)


if __name__ == "__main__":
    main()
