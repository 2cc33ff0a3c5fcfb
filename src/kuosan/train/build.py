"""From a validated RunConfig to a trained run: the loss, the objective, and `train_from_config`.

    obj = build_objective(cfg, net, data)
    result = train_from_config(cfg, resume=False)      # the resolved config is saved in the run first
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from ..config import LossConfig, RunConfig, config_dict, save_config
from ..distill import METHODS as DISTILL_METHODS  # objective kinds built by kuosan.distill
from ..registry import Dataset, build_data, build_denoiser, build_network, net_arguments
from ..rng import seed_init
from .loop import TrainResult, fit
from .objectives import DenoisingObjective, LossFn, Objective

__all__ = ["build_loss", "build_objective", "train_from_config", "run_meta"]


def build_loss(cfg: LossConfig) -> LossFn:
    """loss_fn(denoiser, x0, generator=g, **cond) -> (B,): weighted DSM (book eqs. 4.14, 4.26, 4.34) or hybrid."""
    from .. import losses

    if cfg.kind == "hybrid":
        return functools.partial(losses.hybrid_loss, lam=cfg.lam)
    return functools.partial(losses.dsm_loss, weighting=cfg.weighting, time_sampling=cfg.time_sampling)


def build_objective(cfg: RunConfig, net: nn.Module, data: Dataset) -> Objective:
    """The objective cfg.objective names, around the online network `net`."""
    if cfg.objective.kind == "denoising":
        conditional = data.num_classes is not None
        return DenoisingObjective(
            net,
            functools.partial(build_denoiser, cfg),
            build_loss(cfg.loss),
            p_uncond=cfg.objective.p_uncond if conditional else 0.0,
            null_class=data.num_classes,
        )
    if cfg.objective.kind == "classifier":  # a noise-conditional classifier for classifier guidance
        from .classifier import build_classifier_objective

        return build_classifier_objective(cfg, net, data)
    if cfg.objective.kind == "autoencoder":  # the KL autoencoder of latent diffusion (train/autoencoder.py)
        from .autoencoder import build_autoencoder_objective

        return build_autoencoder_objective(cfg, net, data)
    if cfg.objective.kind == "control":  # ControlNet: `net` is the frozen base U-Net, the branch is trained
        from .control import build_control_objective

        return build_control_objective(cfg, net, data)
    if cfg.objective.kind == "lora":  # LoRA factors on `net`, the frozen network of the run cfg.base (finetune.py)
        from .finetune import build_lora_objective

        return build_lora_objective(cfg, net, data, build_loss(cfg.loss))
    # further kinds: one branch each, its objective built in its own module of train/
    raise ValueError(f"objective kind {cfg.objective.kind!r} is not built by this kuosan")


def resolved_net_arguments(cfg: RunConfig, data: Dataset, net: nn.Module) -> dict[str, Any]:
    """The network's arguments with every automatic choice written out (a U-Net's levels and attention sides),
    so a checkpoint rebuilds the same layers even if a later kuosan changes its defaults."""
    kw = {"kind": cfg.net.kind, **net_arguments(cfg, data.shape, data.num_classes)}
    for name in ("channel_mults", "attention_resolutions"):
        if name in kw and kw[name] is None or name not in kw and hasattr(net, name):
            kw[name] = list(getattr(net, name))
    return kw


def run_meta(cfg: RunConfig, data: Dataset, net: nn.Module) -> dict[str, Any]:
    """What every checkpoint of the run records besides tensors: config, data shape, classes, network args."""
    return {
        "config": config_dict(cfg),
        "data_shape": list(data.shape),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "skipped_files": list(data.skipped),
        "net": resolved_net_arguments(cfg, data, net),
        # groups=None is the automatic GroupNorm rule (>= 4 channels per group); older runs without the key used 32
        "net_defaults": {"groups": "auto"} if cfg.net.kind == "unet" else {},
    }


def train_from_config(
    cfg: RunConfig, *, resume: bool = False, log: Callable[[str], None] | None = print
) -> TrainResult:
    """Build everything cfg names and train it into cfg.run_dir (the resolved config is saved there first);
    `log` gets the data summary (None: silent)."""
    base = None
    if cfg.objective.kind == "control":  # ControlNet: the base run's sections and frozen U-Net (train/control.py)
        from .control import adopt_base

        cfg, base = adopt_base(cfg)
    if cfg.objective.kind == "lora":  # LoRA: the base run's frozen network; the objective injects the factors
        from .finetune import load_base

        base = load_base(cfg)
    if cfg.autoencoder is None and cfg.autoencoder_recipe is not None:  # latent run: its autoencoder stage first
        from .autoencoder import train_first_stage

        cfg = train_first_stage(cfg, log)
    data = build_data(cfg.data, cfg.train.seed)
    codec = None
    if cfg.autoencoder is not None:  # latent diffusion: the model learns the autoencoder's scaled latents
        from ..latent import latent_bound, latent_dataset, load_codec

        codec = load_codec(cfg.autoencoder)
        data = latent_dataset(data, codec)
        codec.bound = latent_bound(data.x)  # the x0 range its samplers clip to (LatentCodec.clipper)
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun: rank 0 writes
    if log is not None and main and (data.summary or data.skipped):
        log(data.summary or f"skipped {len(data.skipped)} file(s): {', '.join(data.skipped[:5])}")
    seed_init(cfg.train.seed)
    if cfg.objective.kind in DISTILL_METHODS:  # a student of cfg.teacher (kuosan.distill): its own objective
        from ..distill import build_distillation

        objective = build_distillation(cfg, data)
        net = objective.net
        data = getattr(objective, "train_data", None) or data  # reflow: the (noise, sample) pairs it indexes
    else:
        net = build_network(cfg, data.shape, data.num_classes) if base is None else base
        objective = build_objective(cfg, net, data)
    run_dir = cfg.run_dir
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if data.skipped:
            (run_dir / "skipped_files.txt").write_text("\n".join(data.skipped) + "\n", encoding="utf-8")
    meta = run_meta(cfg, data, net)
    if codec is not None:  # the run carries its autoencoder: weights as a checkpoint module, settings in state
        from ..latent import CODEC_MODULE

        objective.carry(CODEC_MODULE, codec.ae)
        objective.decode, meta[CODEC_MODULE] = codec.decode, codec.record()
    return fit(objective, data, cfg.train, run_dir, sample=cfg.sample, meta=meta, resume=resume)
