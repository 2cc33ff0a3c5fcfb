"""The KL autoencoder's training loss (LDM, Rombach et al. 2022, arXiv:2112.10752, §3 and App. G), without the
perceptual and adversarial terms: reconstruction + beta * KL(q(z | x) || N(0, I)).

    kl = kl_standard_normal(mean, logvar)                         # (B,) nats, closed form
    loss = autoencoder_loss(ae, x, kl_weight=1e-6, generator=g)   # (B,)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["kl_standard_normal", "autoencoder_loss"]


def kl_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) per example, summed over every latent dimension (Kingma & Welling
    2014, arXiv:1312.6114, App. B): 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def autoencoder_loss(ae: nn.Module, x: Tensor, kl_weight: float = 1e-6, reconstruction: str = "l1",
                     generator: torch.Generator | None = None) -> Tensor:
    """Per-example loss: the reconstruction error of a posterior sample summed over pixels (L1 as LDM's, or L2)
    + kl_weight * kl_standard_normal (LDM's KL-reg weight is 1e-6 of the summed pixel loss)."""
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"reconstruction must be 'l1' or 'l2'; got {reconstruction!r}")
    x_hat, mean, logvar = ae(x, generator=generator)
    diff = x_hat - x
    rec = (diff.abs() if reconstruction == "l1" else diff.pow(2)).flatten(1).sum(1)
    return rec + kl_weight * kl_standard_normal(mean, logvar)
