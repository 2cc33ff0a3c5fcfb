"""Score matching without noise: explicit (Hyvarinen) and sliced (book §4.2, eqs. 4.18-4.19).

Both estimate the Fisher divergence 1/2 E||s_theta(x) - grad log p(x)||^2 up to a constant independent of
theta (integration by parts): E[loss(s_theta)] = 1/2 E||s_theta - grad log p||^2 - 1/2 E||grad log p||^2.
`score_fn(x)` maps (B, ...) to (B, ...) and must treat samples independently (no batch statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._common import choose, sum_flat

__all__ = ["explicit_sm_loss", "sliced_sm_loss", "PROJECTIONS"]


def _trace_jacobian(s: Tensor, x: Tensor) -> Tensor:
    """tr(d s / d x) per sample (B,), exactly: one backward pass per dimension (for small D)."""
    s_flat = s.flatten(1)
    tr = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    if not s.requires_grad:  # s does not depend on x
        return tr
    for i in range(s_flat.shape[1]):
        (grad,) = torch.autograd.grad(s_flat[:, i].sum(), x, create_graph=True, materialize_grads=True)
        tr = tr + grad.flatten(1)[:, i]
    return tr


def explicit_sm_loss(score_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """tr(grad_x s_theta(x)) + 1/2 ||s_theta(x)||^2 per sample (B,) (Hyvarinen 2005, JMLR 6, Thm 1; book eq. 4.18).

    The trace is exact (D backward passes), and differentiable in the parameters of score_fn.
    """
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    return _trace_jacobian(s, x) + 0.5 * sum_flat(s**2)


def _gaussian(shape: tuple[int, ...], generator, dtype, device) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _rademacher(shape: tuple[int, ...], generator, dtype, device) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


PROJECTIONS = {"gaussian": _gaussian, "rademacher": _rademacher}


def sliced_sm_loss(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    n_projections: int = 1,
    generator: torch.Generator | None = None,
    dist: str = "gaussian",
    variance_reduction: bool = True,
) -> Tensor:
    """Sliced score matching, per sample (B,) (Song et al. 2019, arXiv:1905.07088, eq. 8; book eq. 4.19):

        v^T grad_x s_theta(x) v + 1/2 (v^T s_theta(x))^2,     v ~ N(0, I) or Rademacher, averaged over projections

    With variance_reduction (SSM-VR) the second term is replaced by its expectation over v, 1/2 ||s_theta(x)||^2
    (E[v v^T] = I for both distributions). One backward pass whatever the dimension.
    """
    draw = choose(PROJECTIONS, dist, "projection distribution")
    M, B = n_projections, x.shape[0]
    x_rep = x.detach().repeat(M, *([1] * (x.ndim - 1))).requires_grad_(True)  # (M B, ...)
    v = draw(x_rep.shape, generator, x.dtype, x.device)
    s = score_fn(x_rep)
    sv = sum_flat(s * v)  # v^T s, (M B,)
    vJv = torch.zeros_like(sv)  # v^T (grad s) v
    if sv.requires_grad:
        (grad_sv,) = torch.autograd.grad(sv.sum(), x_rep, create_graph=True, materialize_grads=True)
        vJv = sum_flat(grad_sv * v)
    second = 0.5 * sum_flat(s**2) if variance_reduction else 0.5 * sv**2
    return (vJv + second).reshape(M, B).mean(0)
