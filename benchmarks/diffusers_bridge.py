"""The diffusers bridge on a trained run (docs/interop.md): export it, load the export with diffusers and with
kuosan.from_diffusers, and print the max absolute differences.

    eps: the run's U-Net at t = (i+1)/N vs the exported UNet2DModel at index i, every i = 0..N-1
    samples: kuosan.load(run) vs kuosan.from_diffusers(export), same x_T and sampler noise, per sampler
    ddim: diffusers' DDIMScheduler loop (use_clipped_model_output=True) vs kuosan's ddim on the "leading" grid

    .venv/bin/kuosan train digits-ddpm --out runs/digits-g8 --set net.groups=8 --set train.steps=400
    .venv/bin/python benchmarks/diffusers_bridge.py runs/digits-g8 --n 64
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import diffusers
import torch

import kuosan


def eps_difference(pipe, unet, n_train: int, batch: int = 8) -> float:
    """max |net(x, (i+1)/N) - unet(x, i)| over all indices, `batch` random images per index."""
    g, worst = torch.Generator().manual_seed(0), 0.0
    y = None if pipe.num_classes is None else torch.arange(batch) % (pipe.num_classes + 1)
    with torch.no_grad():
        for i in range(n_train):
            x = torch.randn(batch, *pipe.data_shape, generator=g)
            s = torch.full((batch,), float(i), dtype=torch.float64)
            d = pipe.denoiser.net(x, (s + 1) / n_train, y) - unet(x, s, class_labels=y).sample
            worst = max(worst, float(d.abs().max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=64, help="samples per sampler")
    ap.add_argument("--nfe", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp()) / "export"
    kuosan.export.export_run(args.run, out)
    pipe, model = kuosan.load(args.run, device="cpu"), kuosan.from_diffusers(out)
    dpipe = diffusers.DDPMPipeline.from_pretrained(out)
    n_train = pipe.denoiser.process.n
    print(f"| check | max abs difference |\n|---|---|\n| eps, all {n_train} indices x 8 images | "
          f"{eps_difference(pipe, dpipe.unet, n_train):.2e} |")
    cond = None if pipe.num_classes is None else {"y": torch.arange(args.n) % pipe.num_classes}
    x_T = torch.randn(args.n, *pipe.data_shape, generator=torch.Generator().manual_seed(1))
    for method in ("ddim", "dpmpp-2m", "unipc", "heun", "ddpm"):
        a, b = (kuosan.sample(den, x_T, method, nfe=args.nfe, cond=cond, generator=torch.Generator().manual_seed(2))
                for den in (pipe.model(), model))
        print(f"| samples, {method} {args.nfe} NFE, {args.n} images | {float((a - b).abs().max()):.2e} |")
    if cond is None:
        ref = diffusers.DDIMScheduler.from_config(dpipe.scheduler.config)
        ref.set_timesteps(args.nfe)
        x = x_T
        with torch.no_grad():
            for t in ref.timesteps:
                x = ref.step(dpipe.unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
            ours = kuosan.sample(model, x_T, "ddim", nfe=None, grid=model.process.timesteps(args.nfe, "leading"))
        d = float((ours - x).abs().max())
        print(f"| diffusers DDIMScheduler loop vs kuosan ddim, {args.nfe} steps | {d:.2e} |")


if __name__ == "__main__":
    main()
