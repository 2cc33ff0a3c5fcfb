"""Loading a LoRA run (objective kind "lora", kuosan.train.finetune): the base run's Pipeline with this run's
factors injected (Hu et al. 2021, arXiv:2106.09685). Reached through `kuosan.load`, never called directly.

    pipe = kuosan.load("runs/digits-ddpm-lora4")   # base network + adapter, unmerged, scale 1
    pipe.lora.set_scale(0.5); pipe.lora.merge(); pipe.lora.unmerge()
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .config import RunConfig
from .pipeline import Pipeline

__all__ = ["load_lora"]


def load_lora(ckpt: Checkpoint, cfg: RunConfig, ema: bool, dev: torch.device) -> Pipeline:
    """The base run (the very checkpoint the factors were trained on while it is kept, else cfg.base's newest, with
    its EMA weights) + LoRA layers holding this checkpoint's (EMA) factors. A missing base names its path; a base
    whose layers do not fit the factors is refused naming the layer and both shapes."""
    from .nets.lora import inject_lora
    from .pipeline import load
    from .registry import build_denoiser

    obj = ckpt.state.get("objective") or {}
    if "lora" not in obj or "base" not in obj:
        raise ValueError(f"{ckpt.path / 'state.json'} records no LoRA settings or base run: not a kuosan LoRA run")
    lora, record = obj["lora"], obj["base"]
    at = Path(record["checkpoint"]) if Path(record["checkpoint"]).is_dir() else Path(cfg.base)
    try:
        base = load(at, ema=bool(record.get("ema", True)), device=dev)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{ckpt.path}: its base run {cfg.base} is missing ({err})") from None
    adapter = inject_lora(base.denoiser.net, int(lora["rank"]), float(lora["alpha"]), lora["targets"])
    adapter.load_factors(ckpt.ema if ema and ckpt.ema is not None else ckpt.weights, source=str(ckpt.path))
    adapter.eval().requires_grad_(False)
    pipe = Pipeline(build_denoiser(cfg, adapter.net), cfg, ckpt, device=dev)
    pipe.lora = adapter
    return pipe
