"""Training objectives: what `fit` optimises. An objective owns its networks and says how a batch is drawn.

    obj = DenoisingObjective(net, make_denoiser, loss_fn, p_uncond=0.1, null_class=10)
    fit(obj, data, cfg.train, run_dir)

An objective holds
  * `net`, the online network: its trainable parameters are optimised and its EMA is what sampling uses;
  * frozen modules (a teacher, a base model, an autoencoder): used inside the loss, never updated or saved;
  * targets: copies of the online network updated after each optimizer step by an EMA with their own rate
    (consistency models' theta^-, Song et al. 2023, arXiv:2303.01469, Alg. 2), saved in every checkpoint;
  * `batch(data, idx)`: plain data, (data, label), or paired (noise, data) rows of a Dataset;
  * `loss(batch, generator) -> (B,)`: per-example losses; the loop averages, backpropagates and steps.
The EDM loss-callable pattern (Karras et al. 2022, arXiv:2206.00364, training/loss.py) generalised to
objectives that carry state: the loop knows nothing about diffusion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from .ema import EMA

__all__ = ["Objective", "DenoisingObjective", "LossFn"]

LossFn = Callable[..., Tensor]  # loss_fn(denoiser, x0, generator=g, **cond) -> (B,) per-sample losses


class Objective:
    """Base class: the online `net`, optional frozen modules and EMA targets, a batch rule and a loss."""

    kind = "objective"

    def __init__(self, net: nn.Module):
        self.net = net
        self.model: nn.Module = net  # the online net as the loop runs it (wrapped by DDP under torchrun)
        self.frozen: dict[str, nn.Module] = {}
        self.targets: dict[str, EMA] = {}
        self.carried: dict[str, nn.Module] = {}  # frozen and saved with every checkpoint (a latent run's autoencoder)
        self.decode: Callable[[Tensor], Tensor] | None = None  # latent runs: latents -> images for previews

    # --- what is trained, frozen, tracked ---------------------------------------------------------------
    def parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer updates (default: every parameter of `net` that requires grad)."""
        return (p for p in self.net.parameters() if p.requires_grad)

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, [{"params": [...], "lr_scale": k}, ...]: each group's learning rate
        is the schedule's times its lr_scale (default: one group of `parameters()` at scale 1; the first group's
        lr is the one logged)."""
        return [{"params": list(self.parameters()), "lr_scale": 1.0}]

    def add_target(self, name: str, decay: float) -> EMA:
        """A target network: a frozen copy of `net` following it by an EMA of rate `decay` (no warm-up)."""
        self.targets[name] = EMA(self.net, decay, warmup=False)
        return self.targets[name]

    def add_frozen(self, name: str, module: nn.Module) -> nn.Module:
        """A module used by the loss and never updated (a teacher); put in eval mode without gradients."""
        self.frozen[name] = module.eval().requires_grad_(False)
        return module

    def carry(self, name: str, module: nn.Module) -> nn.Module:
        """A frozen module saved as checkpoint module `name` (name.safetensors) but never trained or used by the
        loss: what a run needs at sampling time besides its network (a latent run's autoencoder)."""
        self.carried[name] = module.eval().requires_grad_(False)
        return module

    def to(self, device: torch.device | str) -> Objective:
        self.net.to(device)
        for m in self.frozen.values():
            m.to(device)
        for t in self.targets.values():
            t.module.to(device)
        for m in self.carried.values():
            m.to(device)
        return self

    def bind(self, model: nn.Module) -> None:
        """Called once by the loop with the online net as it will run it (DDP-wrapped or the net itself)."""
        self.model = model

    # --- one step ---------------------------------------------------------------------------------------
    def batch(self, data: Any, idx: Tensor, device: torch.device | str) -> dict[str, Tensor]:
        """The rows idx of the data set (kuosan.registry.Dataset.batch), on `device`."""
        return {k: v.to(device, non_blocking=True) for k, v in data.batch(idx).items()}

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:  # pragma: no cover
        """Per-example losses (B,) of one batch; all randomness from `generator`."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """After each optimizer step: every target follows the online weights."""
        for t in self.targets.values():
            t.update(self.net)

    def restart(self, step: int, ema: EMA) -> bool:
        """After optimizer step `step` (1-based): True if the objective began a new stage (a progressive-distillation
        round) and re-initialised `net` and the loop's `ema` itself; the loop then clears the optimizer's moments."""
        return False

    # --- saving and sampling ----------------------------------------------------------------------------
    def before_save(self, ema: nn.Module) -> None:
        """Called before each checkpoint with the EMA copy of `net` (e.g. to measure a figure `state` records)."""

    def state(self) -> dict[str, Any]:
        """What the checkpoint records about the objective besides tensors."""
        return {"kind": self.kind, "targets": {k: {"decay": t.decay, "updates": t.updates}
                                               for k, t in self.targets.items()}}

    def module_states(self) -> dict[str, dict[str, Tensor]]:
        """Further tensors to checkpoint: each target as target_<name>, each carried module under its name."""
        return {**{f"target_{k}": t.module.state_dict() for k, t in self.targets.items()},
                **{k: m.state_dict() for k, m in self.carried.items()}}

    def load_module_states(self, modules: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        """Restore the targets from a checkpoint written by `module_states` / `state`."""
        saved = state.get("targets", {})
        for k, t in self.targets.items():
            key = f"target_{k}"
            if key not in modules:
                raise ValueError(f"the checkpoint holds no target network {k!r} (it has {sorted(modules)})")
            t.module.load_state_dict(modules[key])
            t.updates = int(saved.get(k, {}).get("updates", 0))

    def denoiser(self, net: nn.Module) -> Denoiser | None:
        """A Denoiser over `net` (e.g. the EMA copy) for preview samples; None if the objective has none."""
        return None


class DenoisingObjective(Objective):
    """Weighted denoising score matching or the hybrid loss on (data, label) batches (book §4.1-4.3,
    Algorithm 1); with labels, each is replaced by the null class with probability p_uncond (Ho & Salimans
    2022, arXiv:2207.12598, Alg. 1), so one network learns the conditional and the unconditional model."""

    kind = "denoising"

    def __init__(
        self,
        net: nn.Module,
        make_denoiser: Callable[[nn.Module], Denoiser],
        loss_fn: LossFn,
        *,
        p_uncond: float = 0.0,
        null_class: int | None = None,
    ):
        super().__init__(net)
        if p_uncond > 0 and null_class is None:
            raise ValueError("p_uncond > 0 needs the null class index (the network's num_classes)")
        self.make_denoiser, self.loss_fn = make_denoiser, loss_fn
        self.p_uncond, self.null_class = p_uncond, null_class
        self._online: Denoiser | None = None

    def bind(self, model: nn.Module) -> None:
        super().bind(model)
        self._online = self.make_denoiser(model)

    def drop_labels(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """y with each entry replaced by the null class with probability p_uncond."""
        drop = torch.rand(y.shape, generator=generator, device=y.device) < self.p_uncond
        return torch.where(drop, torch.full_like(y, self.null_class), y)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        if self._online is None:
            self.bind(self.model)
        cond = {}
        if "y" in batch:
            y = batch["y"]
            cond["y"] = self.drop_labels(y, generator) if self.p_uncond > 0 else y
        return self.loss_fn(self._online, batch["x0"], generator=generator, **cond)

    def denoiser(self, net: nn.Module) -> Denoiser:
        return self.make_denoiser(net)
