"""Inpainting and SDEdit on held-out 8x8 digits, judged by the shipped digits classifier (docs/editing.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/editing.py --part ddpm           # Gaussian, digits-ddpm, SDEdit
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/editing.py --part cond --n 200   # digits-cond, w = 1 and 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/editing.py --gaussian-only       # the exact-model table only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/editing.py --n 64 --quick        # a smoke run
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/editing.py --part rg --n 200     # reconstruction guidance

Inpainting: the top half of each held-out digit (kuosan.data.load_digits("test")) is known, the bottom half is
filled by /work/runs/digits-ddpm (unconditional) and /work/runs/digits-cond (the true label, guidance 1 and 3),
with plain replacement and with RePaint resampling, by ddpm and dpmpp-2m-sde. Columns: `agree` = fraction of
completions the classifier labels as the original digit; `known` = max |result - input| on the known pixels
(must be 0); `NFE/img` = network evaluations per image as kuosan counts them (a guided one at w != 1 runs
two branches in one batch, about twice the time).
SDEdit: the whole digit noised to strength 0.1 / 0.2 / 0.3 / 0.6 / 0.9 and denoised; `agree` = classifier label
of the result equals the input's true label. References: the classifier on the intact digits and on the top halves
with the bottom half blanked to the background (-1), and the share of the 1 / 10 training digits nearest by their
top half that carry the held-out digit's label (what the top half tells about the digit).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

import kuosan
from kuosan.edit_files import read_mask
from kuosan.eval.features import classify
from kuosan.pictures import save_grid


def agree(x: Tensor, labels: Tensor) -> float:
    return float((classify(x)[0] == labels).float().mean())


def row(name: str, x: Tensor, labels: Tensor, known: Tensor | None, inputs: Tensor, nfe: str, secs: float) -> str:
    diff = "-" if known is None else f"{float(((x - inputs) * known).abs().max()):g}"
    return f"| {name} | {nfe} | {100 * agree(x, labels):.1f}% | {diff} | {secs:.0f} |"


def literal_replacement(den, x: Tensor, known: Tensor, nfe: int, g: torch.Generator) -> Tensor:
    """RePaint Alg. 1 without resampling, literally (ddpm only): before each step the known region of the state
    is redrawn from q(x_t | x0 = known) with fresh noise (kuosan.edit carries that noise instead)."""
    from kuosan.edit import method_grid
    from kuosan.samplers import sample

    p = den.process
    ts, _ = method_grid(den, "ddpm", nfe)
    z = p.prior_sample(tuple(x.shape), generator=g, dtype=x.dtype)
    for i in range(len(ts)):
        z = torch.where(known, p.marginal_sample(x, ts[i].to(torch.float64), g)[0], z)
        if i < len(ts) - 1:
            z = sample(den, z, "ddpm", None, grid=ts[i : i + 2], denoise_final=False, generator=g)
    return den.x0(z, torch.full((len(x),), float(ts[-1]), dtype=torch.float64))


def gaussian_table(n: int = 2000, rho: float = 0.9) -> None:
    """Inpainting x2 given x1 = 1 for N(0, [[1, rho], [rho, 1]]) with the exact denoiser (DiscreteVP linear):
    errors of the sample mean and std against the exact conditional N(rho, 1 - rho^2)."""
    from kuosan.analytic import GaussianMixture
    from kuosan.edit import inpaint
    from kuosan.processes import DiscreteVP

    gm = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, rho], [rho, 1.0]]])
    den = gm.denoiser(DiscreteVP.linear())
    x = torch.zeros(n, 2, dtype=torch.float64)
    x[:, 0] = 1.0
    mask = torch.tensor([1.0, 0.0])
    sd = (1 - rho**2) ** 0.5

    def err(u: Tensor) -> str:
        return f"{float(u[:, 1].mean()) - rho:+.3f} | {float(u[:, 1].std()) - sd:+.3f}"
    print(f"exact-model Gaussian: x2 | x1 = 1, corr {rho}, exact N({rho}, {sd:.3f}^2), {n} samples, seed 0\n")
    print("| sampler | NFE | how | mean error | std error |\n|---|---|---|---|---|")
    for method, nfe in [("ddpm", 50), ("ddpm", 100), ("ddpm", 250), ("dpmpp-2m-sde", 50), ("dpmpp-2m", 20),
                        ("heun", 21)]:
        runs = [("replacement (kuosan)", 1, 1), ("RePaint r=10 j=5", 10, 5), ("RePaint r=10 j=10", 10, 10)]
        for how, r, j in runs:
            u = inpaint(den, x, mask, method, nfe, resample=r, jump=j, generator=torch.Generator().manual_seed(0))
            print(f"| {method} | {nfe} | {how} | {err(u)} |")
        if method == "ddpm":
            u = literal_replacement(den, x, mask.bool().expand(x.shape), nfe, torch.Generator().manual_seed(0))
            print(f"| {method} | {nfe} | replacement, fresh noise (Alg. 1 literal) | {err(u)} |")
    print()


def knn_agreement(x: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 10)) -> str:
    """How much the top half tells: the share of the k training digits nearest by their top half (Euclidean)
    that carry the held-out digit's label, a rough proxy for what an ideal p(bottom | top) sampler can reach."""
    xtr, ytr = kuosan.data.load_digits("train")
    d = torch.cdist(x[:, :, :4].flatten(1), xtr[:, :, :4].flatten(1))  # (N, M) top-half distances
    parts = [f"{k}-NN {100 * float((ytr[d.topk(k, largest=False).indices] == y[:, None]).float().mean()):.1f}%"
             for k in ks]
    return "training digits nearest by the top half with the same label: " + ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/work/runs", help="folder holding digits-ddpm and digits-cond")
    ap.add_argument("--n", type=int, default=None, help="held-out digits to use (default: all 359)")
    ap.add_argument("--resample", type=int, default=5, help="RePaint resamplings r")
    ap.add_argument("--quick", action="store_true", help="fewer settings (a smoke run)")
    ap.add_argument("--picture", default=None, help="where to save the picture (default docs/img/editing-<part>.png)")
    ap.add_argument("--gaussian-only", action="store_true", help="only the exact-model Gaussian table")
    ap.add_argument("--part", choices=("all", "ddpm", "cond", "rg"), default="all",
                    help="ddpm: the Gaussian table, digits-ddpm inpainting and SDEdit; cond: digits-cond inpainting; "
                    "rg: reconstruction guidance (Gaussian and digits-ddpm)")
    ap.add_argument("--reconstruction", default="3,10,30", help="rg: the weights w_r to measure (comma-separated)")
    args = ap.parse_args()
    if args.part == "rg":
        return reconstruction_tables(args)
    args.picture = args.picture or f"docs/img/editing-{'cond' if args.part == 'cond' else 'ddpm'}.png"
    torch.set_num_threads(1)
    if args.part != "cond":
        gaussian_table()
    if args.gaussian_only:
        return
    x, y = kuosan.data.load_digits("test")
    x, y = x[: args.n], y[: args.n]
    mask = read_mask("top-half", (1, 8, 8))  # (1, 1, 8, 8): the top half is known
    known = mask.expand(x.shape)
    print(f"{len(x)} held-out digits; classifier on the intact digits: {100 * agree(x, y):.1f}%, on the top halves "
          f"(bottom blanked): {100 * agree(torch.where(known > 0, x, -1.0), y):.1f}%; {knn_agreement(x, y)}\n")
    samplers = [("ddpm", 100, 10), ("dpmpp-2m-sde", 25, 5)]
    settings = [("digits-ddpm", None)] if args.part != "cond" else []
    settings += [] if args.quick or args.part == "ddpm" else [("digits-cond", 1.0), ("digits-cond", 3.0)]
    print("| inpainting (top half known) | NFE/img | agree | known max diff | s |\n|---|---|---|---|---|")
    pictures = []
    for run, w in settings:
        pipe = kuosan.load(Path(args.runs) / run, device="cpu")
        labels = y if w is not None else None
        branches = 2 if w not in (None, 1.0) else 1
        for method, nfe, jump in samplers:
            for r in (1, args.resample):
                t = time.perf_counter()
                out = pipe.inpaint(x, mask, method, nfe, seed=0, resample=r, jump=jump, labels=labels, guidance=w)
                how = "replacement" if r == 1 else f"RePaint r={r} j={jump}"
                name = f"{run}{'' if w is None else f' w={w:g}'}: {method}, {how}"
                cost = f"{nfe * r}" + (" (x2 branches)" if branches == 2 else "")
                print(row(name, out, y, known, x, cost, time.perf_counter() - t), flush=True)
                if method == "ddpm" and w in (None, 3.0):
                    pictures.append(out[:16])
    if args.part == "cond":
        return save_picture(args.picture, x, known, pictures, args.resample)
    print("\n| SDEdit (img2img) | NFE/img | agree with input's label | - | s |\n|---|---|---|---|---|")
    pipe = kuosan.load(Path(args.runs) / "digits-ddpm", device="cpu")
    for method, nfe, _ in samplers[:1] if args.quick else samplers:
        for s in (0.1, 0.2, 0.3, 0.6, 0.9):
            t = time.perf_counter()
            out = pipe.img2img(x, s, method, nfe, seed=0)
            print(row(f"digits-ddpm: {method}, strength {s}", out, y, None, x, f"{round(s * nfe)}",
                      time.perf_counter() - t), flush=True)
    save_picture(args.picture, x, known, pictures, args.resample)


def reconstruction_tables(args: argparse.Namespace, rho: float = 0.9) -> None:
    """Reconstruction guidance (Ho et al. 2022, arXiv:2204.03458, eq. 7; `inpaint(..., reconstruction=w_r)`):
    the exact-model Gaussian (as `gaussian_table`; mean error / std error per w_r) and digits-ddpm inpainting per
    w_r: replacement with ddpm and dpmpp-2m-sde, RePaint (r = --resample) with dpmpp-2m-sde."""
    from kuosan.analytic import GaussianMixture
    from kuosan.edit import inpaint
    from kuosan.processes import DiscreteVP

    torch.set_num_threads(1)
    weights = [0.0] + [float(w) for w in args.reconstruction.split(",") if w.strip()]
    gm = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, rho], [rho, 1.0]]])
    den, sd = gm.denoiser(DiscreteVP.linear()), (1 - rho**2) ** 0.5
    g = torch.zeros(2000, 2, dtype=torch.float64)
    g[:, 0] = 1.0
    print(f"exact-model Gaussian: x2 | x1 = 1, corr {rho}, exact N({rho}, {sd:.3f}^2), 2000 samples, seed 0\n")
    print("| sampler | NFE | w_r = " + " | ".join(f"{w:g}" for w in (0, 1, 2, 3, 5, 10)) + " |\n|---|---|"
          + "---|" * 6)
    for method, nfe in [("ddpm", 50), ("ddpm", 100), ("dpmpp-2m-sde", 50), ("dpmpp-2m", 20), ("heun", 21)]:
        cells = []
        for w in (0, 1, 2, 3, 5, 10):
            u = inpaint(den, g, torch.tensor([1.0, 0.0]), method, nfe, reconstruction=w,
                        generator=torch.Generator().manual_seed(0))
            cells.append(f"{float(u[:, 1].mean()) - rho:+.3f} / {float(u[:, 1].std()) - sd:+.3f}")
        print(f"| {method} | {nfe} | " + " | ".join(cells) + " |", flush=True)
    x, y = kuosan.data.load_digits("test")
    x, y = x[: args.n], y[: args.n]
    mask = read_mask("top-half", (1, 8, 8))
    known = mask.expand(x.shape)
    print(f"\n{len(x)} held-out digits, top half known, digits-ddpm\n")
    print("| inpainting (top half known) | NFE/img | agree | known max diff | s |\n|---|---|---|---|---|")
    pipe, pictures = kuosan.load(Path(args.runs) / "digits-ddpm", device="cpu"), []
    for method, nfe, jump in [("ddpm", 100, 10), ("dpmpp-2m-sde", 25, 5)]:
        for r in (1,) if method == "ddpm" else (1, args.resample):  # RePaint + w_r: the cheaper sampler only
            for w in weights:
                t = time.perf_counter()
                out = pipe.inpaint(x, mask, method, nfe, seed=0, resample=r, jump=jump, reconstruction=w)
                how = ("replacement" if r == 1 else f"RePaint r={r} j={jump}") + (f", w_r={w:g}" if w else "")
                grads = " (+ backward)" if w else ""
                print(row(f"digits-ddpm: {method}, {how}", out, y, known, x, f"{nfe * r}{grads}",
                          time.perf_counter() - t), flush=True)
                if method == "ddpm" and r == 1:
                    pictures.append(out[:16])
    path, k = args.picture or "docs/img/editing-rg.png", len(x[:16])
    tiles = torch.stack([x[:k], known[:k] * 2 - 1, *(p[:k] for p in pictures)], 1).reshape(-1, 1, 8, 8)
    print(f"\npicture: {save_grid(tiles, path, nrow=2 * (2 + len(pictures)), scale=6)} (per digit: input, mask, "
          f"ddpm replacement with w_r = {', '.join(f'{w:g}' for w in weights)})")


def save_picture(path: str, x: Tensor, known: Tensor, pictures: list[Tensor], r: int) -> None:
    """Per digit one group: input | mask | the ddpm results (replacement, RePaint), two groups a row."""
    if not path or not pictures:
        return
    k = len(x[:16])
    tiles = torch.stack([x[:k], known[:k] * 2 - 1, *(p[:k] for p in pictures)], 1).reshape(-1, 1, 8, 8)
    names = ", ".join(["ddpm replacement", f"ddpm RePaint r={r}"] * (len(pictures) // 2))
    print(f"\npicture: {save_grid(tiles, path, nrow=2 * (2 + len(pictures)), scale=6)} (per digit: input, mask, "
          f"{names})")


if __name__ == "__main__":
    main()
