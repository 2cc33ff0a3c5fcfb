"""Training a noise-conditional classifier p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021,
arXiv:2105.05233, §4.1; book §4.6.2): cross-entropy on noised labelled data, t drawn as the denoising losses
draw it. The run is an ordinary run directory (config, checkpoints with EMA, metrics); it has no Denoiser, so
no preview samples.

    obj = build_classifier_objective(cfg, net, data)      # objective.kind: classifier, net.kind: classifier
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RunConfig
from ..guidance import classifier_input
from ..losses.times import REWEIGHTED, sample_t
from ..processes.base import Process, append_dims
from ..registry import Dataset, build_process
from .objectives import Objective

__all__ = ["ClassifierObjective", "build_classifier_objective"]


class ClassifierObjective(Objective):
    """Per-example cross-entropy -log p_phi(y | x_t, t) with x_t = alpha(t) x0 + sigma(t) eps (Dhariwal &
    Nichol 2021, arXiv:2105.05233, §4.1: the classifier is trained on noisy images at the diffusion's own
    noise levels). t ~ sample_t(process, B, time_sampling) as in dsm_loss (the "importance" sampling is
    reweighted so the mean still estimates the uniform-t objective); all randomness from the generator."""

    kind = "classifier"

    def __init__(self, net: nn.Module, process: Process, time_sampling: str = "uniform"):
        super().__init__(net)
        self.process, self.time_sampling = process, time_sampling

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        x0, y = batch["x0"], batch["y"]
        t, w = sample_t(self.process, x0.shape[0], self.time_sampling, generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a, s = (append_dims(f(t).to(x0.dtype), x0.ndim) for f in (self.process.alpha, self.process.sigma))
        x_t = a * x0 + s * eps
        loss = F.cross_entropy(self.model(classifier_input(self.process, x_t, t), t), y, reduction="none")
        return loss * w.to(loss.dtype) if self.time_sampling in REWEIGHTED else loss


def build_classifier_objective(cfg: RunConfig, net: nn.Module, data: Dataset) -> ClassifierObjective:
    """The classifier objective of cfg (objective.kind "classifier"); refuses unlabelled data."""
    if data.num_classes is None or data.labels is None:
        raise ValueError(f"objective.kind 'classifier' needs labelled data; data kind {cfg.data.kind!r} gives none "
                         "(set data.conditional=true, or use a folder with class sub-folders)")
    return ClassifierObjective(net, build_process(cfg.process), cfg.loss.time_sampling)
