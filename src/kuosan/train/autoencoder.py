"""Training the KL autoencoder of latent diffusion (Rombach et al. 2022, arXiv:2112.10752, §3, App. G): the first
stage of `kuosan train mnist-ldm`, or on its own as `kuosan train mnist-vae`. An ordinary run (config, checkpoints
with EMA, resume); no Denoiser, so no preview samples.

    obj = build_autoencoder_objective(cfg, net, data)     # objective.kind: autoencoder, net.kind: autoencoder

Every checkpoint records the latent scale factor of its weights and of its EMA weights: 1 / std of the posterior
means E[z | x] over (up to SCALE_EXAMPLES of) the training images, so that scale * z, the latent run's data
(kuosan.latent encodes to posterior means), has unit variance (the convention behind Stable Diffusion's 0.18215,
LDM §4.3.2 / App. G, which measures posterior samples: with LDM's small KL weight the two agree, since the
posterior is nearly deterministic).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..losses.autoencoder import autoencoder_loss
from ..nets.autoencoder import Autoencoder
from ..registry import Dataset
from .objectives import Objective

__all__ = ["AutoencoderObjective", "build_autoencoder_objective", "latent_scale", "train_first_stage",
           "SCALE_EXAMPLES"]

SCALE_EXAMPLES = 512  # training images the latent scale is measured on (std of ~100k latent numbers)


@torch.no_grad()
def latent_scale(ae: Autoencoder, images: Tensor, batch_size: int = 500) -> float:
    """1 / std of the posterior means E[z | x] of `images` (all elements pooled)."""
    was = ae.training
    ae.eval()
    zs = [ae.encode(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]
    ae.train(was)
    return float(1.0 / torch.cat(zs).double().std())


class AutoencoderObjective(Objective):
    """Per-example reconstruction (L1 or L2, summed over pixels) + kl_weight * KL(q(z | x) || N(0, I))."""

    kind = "autoencoder"

    def __init__(self, ae: Autoencoder, images: Tensor, kl_weight: float, reconstruction: str):
        super().__init__(ae)
        self.kl_weight, self.reconstruction = kl_weight, reconstruction
        self.images = images[:SCALE_EXAMPLES]
        self.scales: dict[str, float] = {}

    def to(self, device: torch.device | str) -> AutoencoderObjective:
        super().to(device)
        self.images = self.images.to(device)
        return self

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        return autoencoder_loss(self.model, batch["x0"], self.kl_weight, self.reconstruction, generator)

    def before_save(self, ema: nn.Module) -> None:
        self.scales = {"weights": latent_scale(self.net, self.images), "ema": latent_scale(ema, self.images)}

    def state(self) -> dict:
        return {**super().state(), "latent_scale": dict(self.scales), "kl_weight": self.kl_weight,
                "reconstruction": self.reconstruction}


def build_autoencoder_objective(cfg: RunConfig, net: nn.Module, data: Dataset) -> AutoencoderObjective:
    """The autoencoder objective of cfg (objective.kind "autoencoder"); images only."""
    if not isinstance(net, Autoencoder) or len(data.shape) != 3:
        raise ValueError(f"objective.kind 'autoencoder' trains an autoencoder (net.kind autoencoder) on images; got "
                         f"net {type(net).__name__} and data of shape {tuple(data.shape)}")
    pick = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))[:SCALE_EXAMPLES]
    images = data.batch(pick)["x0"]
    return AutoencoderObjective(net, images, cfg.objective.kl_weight, cfg.objective.reconstruction)


def train_first_stage(cfg: RunConfig, log: Callable[[str], None] | None = print) -> RunConfig:
    """A latent run without `autoencoder`: train cfg.autoencoder_recipe (a recipe name or a YAML file) into
    <run>/autoencoder first (with the run's seed, threads and device; resumed if it was stopped, reused if
    finished) and return cfg pointing at it."""
    from pathlib import Path

    from ..checkpoint import find_checkpoint
    from ..config import load_config
    from .build import train_from_config

    name = cfg.autoencoder_recipe
    recipe = Path(name) if name.endswith((".yaml", ".yml")) else \
        Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    if not recipe.is_file():
        raise FileNotFoundError(f"autoencoder_recipe {name!r} is neither a kuosan recipe nor a YAML file ({recipe})")
    out = cfg.run_dir / "autoencoder"
    t = cfg.train
    stage = load_config(recipe, [f"train.seed={t.seed}", f"train.device={t.device}", f"train.progress={t.progress}",
                                 f"train.tensorboard={t.tensorboard}",
                                 *([f"train.threads={t.threads}"] if t.threads else [])])
    stage = stage.model_copy(update={"out_dir": out})
    done = (out / "checkpoints" / "latest").is_file() and int(find_checkpoint(out).name.removeprefix("step-")) >= \
        stage.train.steps
    if not done:
        if log is not None:
            log(f"stage 1: the autoencoder ({cfg.autoencoder_recipe}) into {out}")
        train_from_config(stage, resume=(out / "checkpoints" / "latest").is_file(), log=log)
    return cfg.model_copy(update={"autoencoder": out})
