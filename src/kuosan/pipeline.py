"""A trained run as one object: `kuosan.load(run)` -> Pipeline -> `generate`. The only way anything outside
train/ (the CLI, eval, and later serving and export) loads a run.

    pipe = kuosan.load("runs/digits-ddpm")                      # run or checkpoint dir; EMA weights by default
    x = pipe.generate(64, method="dpmpp-2m", nfe=20, seed=0)    # (64, 1, 8, 8) in data space
    x = pipe.generate(10, labels=7, guidance=3.0)               # class-conditional runs: classifier-free guidance
    pipe.denoiser, pipe.config, pipe.checkpoint

The pipeline holds the Denoiser (and, as later parts land, an autoencoder between data and denoiser and
adapters); it depends on the registry, samplers and checkpoints, nothing above them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import Checkpoint, load_checkpoint
from .config import RunConfig, parse_config
from .denoiser import Denoiser

__all__ = ["Pipeline", "load", "generate", "x0_clipper", "CLIP_X0"]

CLIP_X0 = ("auto", "none", "clip", "dynamic")


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    method: str = "dpmpp-2m",
    nfe: int = 20,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """x_T ~ N(0, prior_std^2 I) of `shape`, then `method` with at most `nfe` network evaluations; options
    (grid, thresholding, a method's own keywords) go to kuosan.sample."""
    from .samplers import sample

    x_T = denoiser.process.prior_sample(shape, generator=generator, dtype=torch.float32, device=device)
    return sample(denoiser, x_T, method=method, nfe=nfe, generator=generator, cond=cond, **options)


def _clip_unit(x0: Tensor) -> Tensor:
    """x0 clipped to the image range [-1, 1] (DDPM's sampler, Ho et al. 2020, and diffusers' clip_sample)."""
    return x0.clamp(-1.0, 1.0)


def _dynamic_unit(x0: Tensor) -> Tensor:
    """Dynamic thresholding as Imagen defines it (Saharia et al. 2022, arXiv:2205.11487, §2.3): per sample
    s = max(1, 99.5th percentile of |x0|), x0 <- clip(x0, -s, s) / s. No upper bound on s: with diffusers'
    default sample_max_value = 1 the rule is plain clipping."""
    from .samplers.common import dynamic_threshold

    return dynamic_threshold(x0, ratio=0.995, max_value=math.inf)


def x0_clipper(kind: str, data_range: tuple[float, float] | None = (-1.0, 1.0)) -> Callable[[Tensor], Tensor] | None:
    """The x0 transform a `sample.clip_x0` setting names: "clip" (to [-1, 1]), "dynamic" (Saharia et al. 2022,
    arXiv:2205.11487, §2.3), "none"; "auto" is "clip" for data with a known range (images) and none otherwise."""
    if kind not in CLIP_X0:
        raise ValueError(f"clip_x0 must be one of {', '.join(CLIP_X0)}; got {kind!r}")
    if kind == "auto":
        kind = "clip" if data_range is not None else "none"
    if kind != "none" and data_range != (-1.0, 1.0):
        raise ValueError(f"clip_x0={kind!r} needs data in [-1, 1]; this run's data has no known range")
    return {"none": None, "clip": _clip_unit, "dynamic": _dynamic_unit}[kind]


class Pipeline:
    """A trained run: its Denoiser, config and checkpoint; generates in data space."""

    def __init__(
        self,
        denoiser: Denoiser,
        config: RunConfig,
        checkpoint: Checkpoint,
        *,
        device: torch.device | str = "cpu",
    ):
        self.denoiser, self.config, self.checkpoint = denoiser, config, checkpoint
        self.device = torch.device(device)
        st = checkpoint.state
        self.data_shape: tuple[int, ...] = tuple(st["data_shape"])
        self.num_classes: int | None = st.get("num_classes")
        self.class_names: tuple[str, ...] = tuple(st.get("class_names") or ())

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def run_dir(self) -> Path:
        """The run directory (the checkpoint's grandparent)."""
        return self.checkpoint.path.parents[1]

    def __repr__(self) -> str:
        cls = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"Pipeline({str(self.run_dir)!r}, step {self.step}, data {self.data_shape}{cls}, "
                f"{self.config.process.kind} / {self.denoiser.prediction})")

    def labels(self, n: int, labels: int | Sequence[int] | Tensor | None) -> Tensor | None:
        """(n,) labels: None -> the classes in turn (i mod K) for a conditional run; an int -> n copies;
        a sequence -> repeated in turn. An unconditional run takes none."""
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(f"{self.run_dir} is an unconditional run: it takes no labels")
            return None
        if labels is None:
            y = torch.arange(n) % self.num_classes
        else:
            y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
            if len(y) == 0:
                raise ValueError("labels is empty")
            y = y.repeat((n + len(y) - 1) // len(y))[:n]
        bad = y[(y < 0) | (y >= self.num_classes)]
        if len(bad):
            raise ValueError(f"label {int(bad[0])} is not a class of this run (0 .. {self.num_classes - 1})")
        return y.to(self.device)

    def model(self, guidance: float | None = None, clip_x0: str | None = None) -> Denoiser:
        """The Denoiser with classifier-free guidance w (w = 1: the conditional model) and the run's x0 clipping
        (or `clip_x0`) applied."""
        clip = x0_clipper(clip_x0 or self.config.sample.clip_x0, _range(self.config))
        changes: dict[str, Any] = {"clip_x0": clip}
        if guidance is not None:
            if self.num_classes is None:
                raise ValueError(f"guidance needs a class-conditional run; {self.run_dir} is unconditional")
            changes.update(guidance=float(guidance), uncond={"y": torch.tensor(self.num_classes)})
        return self.denoiser.replace(**changes)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        method: str | None = None,
        nfe: int | None = None,
        labels: int | Sequence[int] | Tensor | None = None,
        guidance: float | None = None,
        seed: int = 0,
        grid: str | Tensor | None = None,
        *,
        clip_x0: str | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> Tensor:
        """n samples in data space by `method` (default: the run's sample.method) with an `nfe` budget;
        batches of batch_size share one generator seeded by `seed`; progress(k) after each batch of k."""
        if n < 1:
            raise ValueError(f"n must be at least 1; got {n}")
        method, nfe = method or self.config.sample.method, nfe or self.config.sample.nfe
        y = self.labels(n, labels)
        den = self.model(guidance, clip_x0)
        g = torch.Generator(self.device).manual_seed(seed)
        if grid is not None:
            options["grid"] = grid
        out, b = [], batch_size or n
        for i in range(0, n, b):
            k = min(b, n - i)
            cond = {"y": y[i : i + k]} if y is not None else None
            out.append(generate(den, (k, *self.data_shape), method=method, nfe=nfe, generator=g, device=self.device,
                                cond=cond, **options))
            if progress is not None:
                progress(k)
        return torch.cat(out)


def _range(cfg: RunConfig) -> tuple[float, float] | None:
    from .registry import data_range

    return data_range(cfg.data)


def load_config_of(ckpt: Checkpoint) -> RunConfig:
    """The run config stored in a checkpoint, with out_dir set to the run directory it was found in."""
    if ckpt.config is None or "net" not in ckpt.state:
        raise ValueError(f"{ckpt.path} holds no run config; it was not written by `kuosan train`")
    cfg = parse_config(ckpt.config, str(ckpt.path / "state.json"))
    return cfg.model_copy(update={"out_dir": ckpt.path.parents[1]})


# What a U-Net argument left out of a checkpoint meant before kuosan chose GroupNorm groups and levels itself
_UNET_OLD_DEFAULTS = {"groups": 32, "channel_mults": (1, 2, 2), "attention_resolutions": (4,)}


def _net_kwargs(state: dict[str, Any]) -> dict[str, Any]:
    """build_net keyword arguments (with kind) from a checkpoint's state; runs written before automatic U-Net
    groups/levels (no "net_defaults" record) get the defaults they were trained with."""
    kw = dict(state["net"])
    if kw.get("kind") == "unet" and "net_defaults" not in state:
        for k, v in _UNET_OLD_DEFAULTS.items():
            kw.setdefault(k, v)
    return kw


def load(path: str | Path, ema: bool = True, device: str | torch.device = "auto") -> Pipeline:
    """The run (or checkpoint directory) at `path` as a Pipeline, with its EMA weights unless ema=False."""
    from .devices import pick_device
    from .nets import build_net
    from .registry import build_denoiser

    dev = pick_device(device) if isinstance(device, str) else torch.device(device)
    ckpt = load_checkpoint(path, device=dev)
    cfg = load_config_of(ckpt)
    if cfg.base is not None:  # an adapter run: the base run's network with this run's weights applied
        return _load_adapted(ckpt, cfg, ema, dev)
    net = build_net(**_net_kwargs(ckpt.state))
    weights = ckpt.ema if ema and ckpt.ema is not None else ckpt.weights
    net.load_state_dict(weights)
    net.to(dev).eval().requires_grad_(False)
    return Pipeline(build_denoiser(cfg, net), cfg, ckpt, device=dev)


def _load_adapted(ckpt: Checkpoint, cfg: RunConfig, ema: bool, dev: torch.device) -> Pipeline:
    """A run that adapts a base run (cfg.base): one branch per objective kind (LoRA, control)."""
    raise ValueError(f"{ckpt.path}: runs of objective kind {cfg.objective.kind!r} (base {cfg.base}) cannot be "
                     "loaded by this kuosan")
