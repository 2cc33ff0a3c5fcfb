"""Latent diffusion (Rombach et al. 2022, arXiv:2112.10752, §3-4; book §4.8.1): a diffusion model of scale * z,
z the latents of a trained KL autoencoder (kuosan/train/autoencoder.py), decoded back to images.

    codec = load_codec("runs/mnist-vae")          # the autoencoder run, frozen, with its latent scale factor
    z = codec.encode(images)                      # scale * E[z | x]  (B, 4, 7, 7)
    x = codec.decode(z)                           # images (B, 1, 28, 28)
    data = latent_dataset(images_dataset, codec)  # what a latent run trains on

A latent run (config `autoencoder: RUN`) carries the autoencoder's weights in every checkpoint (module
"autoencoder", with its network arguments and scale in state.json), so `kuosan.load` needs nothing else: a
checkpoint whose autoencoder file is gone is refused naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .nets.autoencoder import Autoencoder

__all__ = ["LatentCodec", "load_codec", "codec_from_checkpoint", "latent_dataset", "latent_bound", "latent_known",
           "share_latent_space", "CODEC_MODULE"]

CODEC_MODULE = "autoencoder"  # the checkpoint module (autoencoder.safetensors) a latent run carries


@dataclass
class LatentCodec:
    """A frozen autoencoder and its latent scale factor (1 / std of the training latents)."""

    ae: Autoencoder
    scale: float
    net: dict[str, Any]  # the Autoencoder's keyword arguments
    source: str = ""  # the autoencoder run it came from, and its step
    bound: list[float] | None = None  # per channel, max |latent| of the run's training data (latent_bound)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.ae.in_channels, self.ae.image_size, self.ae.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.ae.latent_shape

    @torch.no_grad()
    def encode(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """scale * posterior mean of images x (the latents a latent run trains on; LDM §3: the KL weight keeps
        the posterior nearly deterministic, see docs/latent.md for the measured std)."""
        return torch.cat([self.ae.encode(x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]) * self.scale

    @torch.no_grad()
    def decode(self, z: Tensor, batch_size: int = 1000) -> Tensor:
        """Images from scaled latents z: decoder(z / scale)."""
        return torch.cat([self.ae.decode(z[i : i + batch_size] / self.scale) for i in range(0, len(z), batch_size)])

    def record(self) -> dict[str, Any]:
        """What a latent run's checkpoint state records (its weights are the checkpoint's module CODEC_MODULE)."""
        return {"net": dict(self.net), "scale": self.scale, "image_shape": list(self.image_shape),
                "latent_shape": list(self.latent_shape), "source": self.source, "bound": self.bound}

    def clipper(self, kind: str) -> Callable[[Tensor], Tensor] | None:
        """The x0 transform a `sample.clip_x0` setting names in latent space: "auto" and "clip" clamp each channel
        of x0 to [-bound, bound], the range of the run's training latents (none where no bound is known); "none"
        none. The latent counterpart of DDPM's clipping to the image range (Ho et al. 2020, arXiv:2006.11239,
        §3.3): an eps model's x0 = (x_t - sigma eps) / alpha amplifies its error by sigma / alpha (157 at t_max
        under DDPM's linear betas), so a few-step solver's first x0 lands far outside the data without it
        (measured in docs/latent.md). "dynamic" (Imagen's percentile rule) is defined for images and refused."""
        if kind == "dynamic":
            raise ValueError("clip_x0='dynamic' (Imagen's percentile thresholding) is for image data; a latent run "
                             "takes auto / clip (the training latents' range) or none")
        if kind == "none" or self.bound is None:
            return None
        limits: dict[tuple, Tensor] = {}  # the bound as a tensor per (device, dtype, ndim): made once, not per call

        def clamp_latents(x0: Tensor) -> Tensor:
            key = (x0.device, x0.dtype, x0.ndim)
            if key not in limits:
                limits[key] = torch.tensor(self.bound, device=x0.device, dtype=x0.dtype).view(
                    1, -1, *([1] * (x0.ndim - 2)))
            lim = limits[key]
            return torch.maximum(torch.minimum(x0, lim), -lim)

        return clamp_latents


def _build(net: dict[str, Any], weights: dict[str, Tensor], scale: float, source: str,
           device: torch.device | str, bound: list[float] | None = None) -> LatentCodec:
    from .nets import build_net

    ae = build_net(**{"kind": "autoencoder", **net})
    ae.load_state_dict(weights)
    ae.to(device).eval().requires_grad_(False)
    return LatentCodec(ae, float(scale), dict(net), source, None if bound is None else [float(b) for b in bound])


def load_codec(run: str | Path, ema: bool = True, device: torch.device | str = "cpu") -> LatentCodec:
    """The autoencoder run at `run` (objective kind "autoencoder") with the latent scale its checkpoint recorded
    for the weights used (EMA by default), or the autoencoder a latent run at `run` carries (so a student or a
    second model of a latent run shares its latent space); anything else is refused naming it."""
    from .checkpoint import load_checkpoint

    path = Path(run).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"autoencoder run {path} does not exist (autoencoder={run})")
    ckpt = load_checkpoint(path, device=device)
    if CODEC_MODULE in ckpt.state:  # a latent run: its own autoencoder
        return codec_from_checkpoint(ckpt, device)
    obj = ckpt.state.get("objective") or {}
    if obj.get("kind") != "autoencoder" or "latent_scale" not in obj:
        raise ValueError(f"{ckpt.path} is not an autoencoder run (objective kind {obj.get('kind')!r}); train one "
                         "with `kuosan train mnist-vae` (or name a latent run, whose autoencoder is used)")
    use_ema = ema and ckpt.ema is not None
    scale = obj["latent_scale"]["ema" if use_ema else "weights"]
    return _build(ckpt.state["net"], ckpt.ema if use_ema else ckpt.weights, scale,
                  f"{ckpt.path.parents[1].resolve()} step {ckpt.step}", device)


def codec_from_checkpoint(ckpt: Any, device: torch.device | str = "cpu") -> LatentCodec | None:
    """The autoencoder a latent run's checkpoint carries (None for a pixel-space run)."""
    rec = ckpt.state.get(CODEC_MODULE)
    if rec is None:
        return None
    if CODEC_MODULE not in ckpt.modules:
        raise FileNotFoundError(f"{ckpt.path} is a latent run but holds no {CODEC_MODULE}.safetensors (its "
                                "autoencoder); copy it back from the run it was trained in")
    return _build(rec["net"], ckpt.modules[CODEC_MODULE], rec["scale"], rec.get("source", ""), device,
                  rec.get("bound"))


def share_latent_space(tree: dict[str, Any], source_cfg: Any, source_run: str | Path) -> dict[str, Any]:
    """The config tree of a run derived from `source_run` (a student, a LoRA adapter) made to learn in its latent
    space: where the source is a latent run, `autoencoder` names the source run itself (whose carried autoencoder
    load_codec returns) and no autoencoder stage is trained; a pixel-space source leaves the tree as it is."""
    if source_cfg.autoencoder is not None or source_cfg.autoencoder_recipe is not None:
        tree["autoencoder"], tree["autoencoder_recipe"] = str(Path(source_run).resolve()), None
    return tree


def latent_bound(z: Tensor) -> list[float]:
    """Per channel, the largest |z| over latents z (N, C, ...): the range LatentCodec.clipper clamps x0 to."""
    return z.abs().amax(dim=(0, *range(2, z.ndim))).tolist()


def latent_dataset(data: Any, codec: LatentCodec) -> Any:
    """The Dataset `data` (images) with x and the held-out images replaced by their scaled latents; labels,
    classes and the rest kept. Images of another shape than the autoencoder's are refused naming both."""
    if tuple(data.shape) != codec.image_shape:
        raise ValueError(f"the autoencoder ({codec.source}) encodes images of shape {codec.image_shape} but this "
                         f"run's data has shape {tuple(data.shape)}: use data of the autoencoder's size (data.size) "
                         "or an autoencoder trained on it")
    heldout = None if data.heldout is None else codec.encode(data.heldout)
    z = codec.encode(data.x)
    note = (f"encoded {len(z)} images {tuple(data.shape)} to latents {codec.latent_shape} (scale {codec.scale:.4g}, "
            f"std {float(z.std()):.3f})")
    return replace(data, x=z, heldout=heldout, value_range=None,
                   summary=f"{data.summary}; {note}" if data.summary else note)


def latent_known(known: Tensor, latent_shape: tuple[int, ...]) -> Tensor:
    """The known-pixel mask (N, C, H, W) of an inpainting task as a mask of latent cells (N, c, h, w): a cell is
    known only where every pixel of its f x f block (f = H / h) is known in every channel, so the diffusion fills
    every latent cell that touches an unknown pixel (the mask downsampled to the latent resolution as in Blended
    Latent Diffusion, Avrahami et al. 2023, arXiv:2206.02779, §3; here by a min-pool rather than their bilinear
    resize, so no unknown pixel is decoded from a latent held at the input's encoding)."""
    c, h, w = latent_shape
    n, _, height, width = known.shape
    f = height // h
    if f * h != height or f * w != width:
        raise ValueError(f"the mask of shape {tuple(known.shape)} does not tile the latents {tuple(latent_shape)}: "
                         "the image side must be a multiple of the latent side")
    every = known.all(dim=1, keepdim=True).float()
    cells = -torch.nn.functional.max_pool2d(-every, f) > 0.5  # min-pool: known iff all f x f pixels are
    return cells.expand(n, c, h, w)
