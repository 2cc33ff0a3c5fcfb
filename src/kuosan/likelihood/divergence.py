"""Divergence of the probability-flow velocity: exact by autograd, or the Skilling-Hutchinson trace estimator.

    div v(x, t) = tr(d v / d x) = sum_i d v_i / d x_i                      (exact: D vector-Jacobian products)
    div v(x, t) ~ 1/K sum_k eps_k^T (d v / d x) eps_k,  E[eps eps^T] = I    (Hutchinson: K products)

(Grathwohl et al. 2019, FFJORD, arXiv:1810.01367, eq. 7; Song et al. 2021, arXiv:2011.13456, App. D.2;
book §4.3.2.) The probes are drawn once per ODE solve and held fixed along the trajectory, so the ODE
right-hand side stays a deterministic function and an adaptive solver sees a smooth problem; because the
state x_t does not depend on the probes, the integrated estimate is unbiased for log p.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..denoiser import Denoiser

__all__ = ["PROBES", "draw_probes", "divergence_exact", "divergence_hutchinson", "velocity_and_divergence"]


def _gaussian(shape: tuple[int, ...], generator, dtype, device) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _rademacher(shape: tuple[int, ...], generator, dtype, device) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


PROBES: dict[str, Callable[..., Tensor]] = {"gaussian": _gaussian, "rademacher": _rademacher}


def draw_probes(
    like: Tensor, n_probes: int, kind: str = "gaussian", generator: torch.Generator | None = None
) -> Tensor:
    """n_probes vectors per sample with E[eps eps^T] = I: (n_probes, *like.shape), N(0, I) or uniform on {-1, 1}."""
    if kind not in PROBES:
        raise ValueError(f"unknown probe {kind!r}; choose one of {sorted(PROBES)}")
    if n_probes < 1:
        raise ValueError(f"need n_probes >= 1, got {n_probes}")
    return PROBES[kind]((n_probes, *like.shape), generator, like.dtype, like.device)


def divergence_exact(v: Tensor, x: Tensor) -> Tensor:
    """sum_i d v_i / d x_i per sample (B,): the full Jacobian diagonal, all D rows in one batched backward pass.

    v = v(x) must have been built with x.requires_grad; memory grows with D, so this is for small D.
    """
    D = v[0].numel()
    basis = torch.eye(D, dtype=v.dtype, device=v.device).reshape(D, 1, *v.shape[1:]).expand(D, *v.shape)
    (J,) = torch.autograd.grad(v, x, basis, retain_graph=True, is_grads_batched=True)  # J[i, b] = d v_bi / d x_b
    return torch.einsum("ibi->b", J.flatten(2))


def divergence_hutchinson(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """1/K sum_k eps_k^T (dv/dx) eps_k per sample (B,) (FFJORD eq. 7); probes (K, *x.shape), one batched backward."""
    (eps_J,) = torch.autograd.grad(v, x, probes, retain_graph=True, is_grads_batched=True)  # (K, B, ...) eps^T J
    return (eps_J * probes).flatten(2).sum(2).mean(0)


def velocity_and_divergence(
    model: Denoiser, x: Tensor, t: Tensor, probes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The PF-ODE velocity v(x, t) (book eq. 4.40) and its divergence, exact (probes None) or Hutchinson; detached."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = model.velocity(x, t)
        div = divergence_exact(v, x) if probes is None else divergence_hutchinson(v, x, probes)
    return v.detach(), div.detach()
