"""LoRA fine-tuning (Hu et al. 2021, arXiv:2106.09685; book §4.8.4.1): the denoising loss of a frozen base run's
network, trained through low-rank factors only.

    obj = build_lora_objective(cfg, load_base(cfg), data, loss_fn)   # cfg.base: the run to adapt
    fit(obj, data, cfg.train, run_dir)           # weights / ema.safetensors hold the factors only
    tree = finetune_config(base_run, rank=4, overrides=["data.classes=[3]"])   # what `kuosan finetune` trains

The objective's online `net` is a kuosan.nets.lora.LoraAdapter: its parameters (the factors) are what the loop
optimises, EMA-averages and saves, so resume and the loop are those of any run. Calling the adapter runs the
frozen base network with the LoRA layers injected (they share the factors), inside the DenoisingObjective's loss
and label dropout. The checkpoint state records the base run (path, checkpoint, step, network) and the LoRA
settings; kuosan.load rebuilds base + adapter from them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..config import RunConfig, config_dict, parse_config
from ..denoiser import Denoiser
from ..nets.lora import LoraAdapter, inject_lora
from ..registry import Dataset, build_denoiser
from .objectives import DenoisingObjective, LossFn

__all__ = ["LoraObjective", "build_lora_objective", "finetune_config", "load_base", "base_record", "write_adapter",
           "FINETUNE_TRAIN", "ADAPTER_FILE"]

ADAPTER_FILE = "adapter.safetensors"  # <run>/adapter.safetensors: the newest checkpoint's EMA factors, peft names

# `kuosan finetune` training defaults (any of them --set-able), measured on the digits U-Net (docs/finetune.md):
# 600 constant-lr steps of batch 64 at lr 3e-3 (B starts at 0, so a high rate cannot spoil the first steps; 300
# steps at 1e-3 reached 81% of samples on the target digit, 600 at 3e-3 90%); EMA 0.99 to average over the last
# ~100 steps of so short a run; a checkpoint every 200 steps for --resume; no preview grids.
FINETUNE_TRAIN: dict[str, Any] = {"steps": 600, "batch_size": 64, "lr": 3e-3, "warmup": 0, "schedule": "constant",
                                  "weight_decay": 0.0, "ema_decay": 0.99, "ema_warmup": True, "ckpt_every": 200,
                                  "sample_every": 0}


class LoraObjective(DenoisingObjective):
    """The denoising loss (with p_uncond label dropout on conditional bases) of base + LoRA, where only the LoRA
    factors train: h = W0 x + (alpha / r) B A x in every target layer (Hu et al. 2021, eq. 3)."""

    kind = "lora"

    def __init__(self, adapter: LoraAdapter, make_denoiser: Callable[[nn.Module], Denoiser], loss_fn: LossFn, *,
                 base: dict[str, Any], p_uncond: float = 0.0, null_class: int | None = None):
        super().__init__(adapter, make_denoiser, loss_fn, p_uncond=p_uncond, null_class=null_class)
        self.frozen["base"] = adapter.net.eval()  # moved with the objective; never saved (the base run holds it)
        self.adapter, self.base = adapter, dict(base)

    def state(self) -> dict[str, Any]:
        lora = {"rank": self.adapter.rank, "alpha": self.adapter.alpha, "targets": list(self.adapter.targets),
                "layers": list(self.adapter.layers())}
        return {**super().state(), "lora": lora, "base": self.base}


def load_base(cfg: RunConfig) -> nn.Module:
    """The network of the base run cfg.base with its EMA weights, on the CPU, frozen; a missing base names its
    path, and a base that is itself an adapter run is refused."""
    from ..pipeline import load

    if cfg.base is None:
        raise ValueError(f"objective kind {cfg.objective.kind!r} needs `base`: the run to fine-tune")
    try:
        base = load(cfg.base, ema=True, device="cpu")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"base run {cfg.base} is missing: {err}") from None
    if base.config.base is not None:
        raise ValueError(f"base run {cfg.base} is itself an adapter run (of {base.config.base}); fine-tune its base")
    return base.denoiser.net


def base_record(cfg: RunConfig, data: Dataset) -> dict[str, Any]:
    """What a LoRA checkpoint records of its base run (path, checkpoint, step, network arguments, data shape),
    read from the base's state.json; a base trained on data of another shape or class count is refused."""
    from ..checkpoint import STATE, find_checkpoint

    ckpt = find_checkpoint(cfg.base)
    state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    shape, classes = tuple(state["data_shape"]), state.get("num_classes")
    if tuple(data.shape) != shape:
        raise ValueError(f"this run's data has shape {tuple(data.shape)} but base run {cfg.base} was trained on "
                         f"{shape}: fine-tune on data of the base's shape")
    if data.num_classes != classes:
        raise ValueError(f"this run's data has {data.num_classes or 'no'} classes but base run {cfg.base} has "
                         f"{classes or 'none'}: keep the base's data.conditional")
    return {"path": str(ckpt.parents[1].resolve()), "checkpoint": str(ckpt.resolve()), "step": int(state["step"]),
            "ema": True, "net": state["net"], "net_defaults": state.get("net_defaults"), "data_shape": list(shape)}


def build_lora_objective(cfg: RunConfig, net: nn.Module, data: Dataset, loss_fn: LossFn) -> LoraObjective:
    """LoRA factors (cfg.objective: rank, alpha, targets) injected into `net`, the frozen network of cfg.base
    (load_base)."""
    record = base_record(cfg, data)
    o = cfg.objective
    adapter = inject_lora(net, o.rank, o.alpha, o.targets)
    conditional = data.num_classes is not None
    return LoraObjective(adapter, functools.partial(build_denoiser, cfg), loss_fn, base=record,
                         p_uncond=o.p_uncond if conditional else 0.0, null_class=data.num_classes)


def finetune_config(base_run: str | Path, rank: int, alpha: float | None = None, targets: list[str] | None = None,
                    overrides: list[str] | None = None, out_dir: str | Path | None = None) -> RunConfig:
    """The config `kuosan finetune` trains: the base run's, with objective {kind: lora, rank, alpha, targets},
    base = the base run (absolute), name <base>-lora<rank>, FINETUNE_TRAIN, then the --set overrides."""
    from ..checkpoint import load_checkpoint
    from ..config import apply_overrides
    from ..latent import share_latent_space
    from ..pipeline import load_config_of

    base_run = Path(base_run)
    try:
        ckpt = load_checkpoint(base_run)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"base run {base_run} is missing: {err}") from None
    base_cfg = load_config_of(ckpt)
    if base_cfg.base is not None:
        raise ValueError(f"base run {base_run} is itself an adapter run (of {base_cfg.base}); fine-tune its base")
    tree = config_dict(base_cfg)
    tree["name"] = f"{base_cfg.name}-lora{rank}"
    tree["base"] = str(base_run.resolve())
    tree["objective"] = {"kind": "lora", "p_uncond": base_cfg.objective.p_uncond, "rank": rank, "alpha": alpha,
                         "targets": targets}
    tree["train"] = {**tree["train"], **FINETUNE_TRAIN}
    share_latent_space(tree, base_cfg, base_run)  # a latent base: the adapter learns in its latent space
    apply_overrides(tree, list(overrides or []))
    if out_dir is not None:
        tree["out_dir"] = str(out_dir)
    return parse_config(tree, f"kuosan finetune {base_run}")


def write_adapter(run_dir: str | Path) -> Path:
    """<run>/adapter.safetensors: the newest checkpoint's EMA factors (peft key names) with metadata rank, alpha,
    targets, base and step, loadable into the base network by kuosan.nets.lora.load_adapter."""
    from safetensors.torch import save_file

    from ..checkpoint import load_checkpoint
    from ..nets.lora import adapter_metadata

    ckpt = load_checkpoint(run_dir)
    obj = ckpt.state.get("objective") or {}
    if "lora" not in obj:
        raise ValueError(f"{ckpt.path} is not a LoRA run (objective kind {obj.get('kind')!r})")
    lora, base = obj["lora"], obj["base"]
    meta = adapter_metadata(lora["rank"], lora["alpha"], lora["targets"], base["path"], step=str(ckpt.step))
    path = Path(run_dir) / ADAPTER_FILE
    tensors = {k: v.contiguous() for k, v in (ckpt.ema if ckpt.ema is not None else ckpt.weights).items()}
    save_file(tensors, str(path), metadata=meta)
    return path
