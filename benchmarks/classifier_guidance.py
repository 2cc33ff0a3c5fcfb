"""Classifier guidance on the digits (Dhariwal & Nichol 2021, arXiv:2105.05233): how often a guided sample is the
requested digit, judged by the shipped digits classifier (kuosan.eval.features.digits_classifier), and how well
the noise-conditional classifier itself classifies held-out noisy digits.

    .venv/bin/kuosan train digits-classifier --out runs/digits-classifier
    .venv/bin/python benchmarks/classifier_guidance.py --run runs/digits-ddpm --classifier runs/digits-classifier
    .venv/bin/python benchmarks/classifier_guidance.py --classifier runs/digits-classifier --accuracy-only

Table 1 (accuracy): the classifier's argmax on the digits test split (359 images, never trained on), noised to
x_t = alpha(t) x0 + sigma(t) eps at each t (one noise draw per image per t, seed 0).
Table 2 (guidance): `--n` samples per (sampler, scale), labels 0..9 in turn, seed 0; "requested" = the shipped
classifier's argmax equals the requested label; "recognised" = its max softmax >= 0.9. Scale 0 is the unguided run.
"""

from __future__ import annotations

import argparse
import time

import torch

import kuosan
from kuosan.data import load_digits
from kuosan.eval.features import classify

RECOGNISED = 0.9


@torch.no_grad()
def heldout_accuracy(clf, times: list[float], seed: int = 0) -> list[tuple[float, float, float]]:
    """(t, sigma(t)/alpha(t), accuracy) on the digits test split noised at each t."""
    x0, y = load_digits("test")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in times:
        tt = torch.full((len(x0),), t, dtype=torch.float64)
        a, s = clf.process.alpha(tt)[:, None, None, None].float(), clf.process.sigma(tt)[:, None, None, None].float()
        x_t = a * x0 + s * torch.randn(x0.shape, generator=g)
        acc = (clf.logits(x_t, tt).argmax(1) == y).float().mean().item()
        rows.append((t, float(s[0] / a[0]), acc))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/digits-ddpm", help="the diffusion run to guide (conditional or not)")
    ap.add_argument("--classifier", default="runs/digits-classifier", help="a classifier run")
    ap.add_argument("--scales", default="0,1,2,4")
    ap.add_argument("--samplers", default="dpmpp-2m:20,ddpm:100", help="method:nfe pairs")
    ap.add_argument("--times", default="0.01,0.25,0.5,0.75")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accuracy-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    clf = kuosan.load_classifier(args.classifier, device="cpu")
    print(f"classifier {args.classifier}: held-out digits (test split) accuracy by noise level")
    print(f"{'t':>6} {'sigma/alpha':>12} {'accuracy':>9}")
    for t, snr, acc in heldout_accuracy(clf, [float(v) for v in args.times.split(",")]):
        print(f"{t:>6g} {snr:>12.3f} {acc:>9.3f}")
    if args.accuracy_only:
        return

    pipe = kuosan.load(args.run, device="cpu")
    labels = torch.arange(args.n) % clf.num_classes
    print(f"\nguiding {args.run} (step {pipe.step}) with {args.classifier}: {args.n} samples per row, "
          "digits 0-9 in turn")
    print(f"{'sampler':>10} {'NFE':>4} {'scale':>6} {'requested':>10} {'recognised':>11} {'seconds':>8}")
    for spec in args.samplers.split(","):
        method, nfe = spec.split(":")
        for s in (float(v) for v in args.scales.split(",")):
            start = time.perf_counter()
            x = pipe.generate(args.n, method, int(nfe), labels=labels, classifier=clf, classifier_scale=s,
                              seed=args.seed)
            secs = time.perf_counter() - start
            pred, conf = classify(x)
            req = (pred == labels).float().mean().item()
            rec = (conf >= RECOGNISED).float().mean().item()
            print(f"{method:>10} {nfe:>4} {s:>6g} {req:>10.3f} {rec:>11.3f} {secs:>8.1f}")


if __name__ == "__main__":
    main()
