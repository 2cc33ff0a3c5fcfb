"""Training a ControlNet branch on a frozen base run (Zhang et al. 2023, arXiv:2302.05543, sec. 3.3, eq. 3;
book §4.8.2.1): the base's own denoising loss, with the condition c computed from each x0.

    L = E_{x0, t, eps, y, c} [ w(t) || eps - eps_theta(x_t, t, y, c) ||^2 ]                       (eq. 3)

    cfg, base = adopt_base(cfg)                # the base run's process / net / data / loss, its frozen U-Net
    obj = build_control_objective(cfg, base, data)
    fit(obj, data, cfg.train, run_dir)         # trains and saves the branch only

Only the branch is the online network (optimised, EMA'd, saved); the base is a frozen module of the objective.
Labels of a conditional base are kept and dropped to the null class with probability objective.p_uncond, as the
base was trained, so classifier-free guidance still works under control.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..data.conditions import condition, condition_channels
from ..denoiser import Denoiser
from ..nets.control import ControlBranch, ControlledUNet
from ..nets.unet import UNet
from ..registry import Dataset, build_denoiser
from .objectives import DenoisingObjective, LossFn

__all__ = ["ControlObjective", "adopt_base", "build_control_objective", "HINT_CHANNELS"]

HINT_CHANNELS = 16  # width of the condition encoder
# the base run's sections a control run takes over (its own: name, objective, train, sample, base)
BASE_SECTIONS = ("prediction", "precondition", "process", "net", "data", "loss")


def adopt_base(cfg: RunConfig) -> tuple[RunConfig, UNet]:
    """cfg with cfg.base resolved to an absolute path and the base run's BASE_SECTIONS, and the base's U-Net
    (EMA weights, frozen, on the CPU). A missing base, a non-U-Net base or an adapter run as base is a one-line
    error naming it."""
    from ..pipeline import load

    if cfg.base is None:
        raise ValueError("objective kind 'control' trains on a base run: give it with --set base=RUN")
    path = Path(cfg.base).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"base run {path} does not exist (base={cfg.base})")
    pipe = load(path, device="cpu")
    base_cfg = pipe.config
    if base_cfg.base is not None:
        raise ValueError(f"base run {path} is itself an adapter run (objective {base_cfg.objective.kind!r}, base "
                         f"{base_cfg.base}); give the run it adapts")
    if pipe.codec is not None:
        raise ValueError(f"base run {path} is a latent run: ControlNet on latent runs is not built (its condition "
                         "images would need an encoder to the latent resolution); control a pixel-space run")
    if base_cfg.net.kind != "unet" or not isinstance(pipe.denoiser.net, UNet):
        raise ValueError(f"ControlNet controls a U-Net; base run {path} has net kind {base_cfg.net.kind!r}")
    update: dict[str, Any] = {k: getattr(base_cfg, k) for k in BASE_SECTIONS}
    return cfg.model_copy(update={**update, "base": path}), pipe.denoiser.net


class ControlObjective(DenoisingObjective):
    """The base's denoising loss through base + branch (eq. 3), c = condition(kind, x0); online net = branch."""

    kind = "control"

    def __init__(
        self,
        branch: ControlBranch,
        base: nn.Module,
        make_denoiser: Any,
        loss_fn: LossFn,
        condition_kind: str,
        *,
        p_uncond: float = 0.0,
        null_class: int | None = None,
    ):
        super().__init__(branch, make_denoiser, loss_fn, p_uncond=p_uncond, null_class=null_class)
        self.base = self.add_frozen("base", base)
        self.condition_kind = condition_kind

    def bind(self, model: nn.Module) -> None:
        self.model = model
        self._online = self.make_denoiser(ControlledUNet(self.base, model))

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        if self._online is None:
            self.bind(self.model)
        x0 = batch["x0"]
        cond: dict[str, Tensor] = {"control": condition(self.condition_kind, x0, generator)}
        if "y" in batch:
            cond["y"] = self.drop_labels(batch["y"], generator) if self.p_uncond > 0 else batch["y"]
        return self.loss_fn(self._online, x0, generator=generator, **cond)

    def state(self) -> dict[str, Any]:
        branch = {"cond_channels": self.net.cond_channels, "hint_channels": self.net.hint_channels}
        return {**super().state(), "condition": self.condition_kind, "branch": branch}

    def denoiser(self, net: nn.Module) -> Denoiser | None:
        """No preview pictures: a controlled sample needs condition images (kuosan.load(run).generate(control=))."""
        return None


def build_control_objective(cfg: RunConfig, base: nn.Module, data: Dataset) -> ControlObjective:
    """ControlObjective around a new branch copied from `base` for the condition cfg.objective.condition."""
    from .build import build_loss

    kind = cfg.objective.condition
    if not isinstance(base, UNet):
        raise ValueError(f"ControlNet controls a U-Net; got {type(base).__name__}")
    branch = ControlBranch(base, condition_channels(kind, data.shape[0]), HINT_CHANNELS)
    conditional = data.num_classes is not None
    return ControlObjective(branch, base, functools.partial(build_denoiser, cfg), build_loss(cfg.loss), kind,
                            p_uncond=cfg.objective.p_uncond if conditional else 0.0, null_class=data.num_classes)
