"""Held-out reconstruction of a trained KL autoencoder run (docs/latent.md's autoencoder table and vae-recon.png).

    .venv/bin/python scripts/vae_recon.py runs/mnist-vae                          # the figures only
    .venv/bin/python scripts/vae_recon.py runs/mnist-vae --png docs/img/vae-recon.png

Reconstructs the 500 held-out MNIST digits through the posterior mean (decoder(E[z | x]), EMA weights, as a latent
run sees them) and prints the mean absolute error and MSE per pixel (images in [-1, 1]), the latent scale, the std
of scale * E[z | x] over 1000 training images and the mean posterior std exp(logvar / 2). With --png: 32 held-out
digits (a fixed draw, seed 0) in the top four rows, their reconstructions in the bottom four.
"""

from __future__ import annotations

import argparse

import torch

from kuosan.data import load_mnist
from kuosan.latent import load_codec
from kuosan.pictures import save_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an autoencoder run (e.g. runs/mnist-vae, or runs/mnist-ldm/autoencoder)")
    ap.add_argument("--png", default=None, help="write 32 held-out digits and their reconstructions here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    codec = load_codec(args.run)
    x, _ = load_mnist("heldout")
    with torch.no_grad():
        rec = codec.decode(codec.encode(x))
        train, _ = load_mnist("train")
        z = codec.encode(train[:1000])
        _, logvar = codec.ae.encode(train[:1000])
    print(f"autoencoder {codec.source}: latent scale {codec.scale:.4f}")
    print(f"held-out ({len(x)}) mean abs error per pixel {float((rec - x).abs().mean()):.4f}, "
          f"MSE per pixel {float((rec - x).pow(2).mean()):.4f}")
    print(f"std of scale * E[z | x] over 1000 training images {float(z.std()):.3f}; "
          f"mean posterior std {float((logvar / 2).exp().mean()):.4f}")
    if args.png:
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:32]
        print("wrote", save_grid(torch.cat([x[idx], rec[idx].clamp(-1, 1)]), args.png, nrow=8, scale=1))


if __name__ == "__main__":
    main()
