"""Reconstruction guidance for inpainting (Ho et al. 2022, "Video Diffusion Models", arXiv:2204.03458, §3.1,
eq. 7): the x0 prediction of the unknown region is moved so that the model's own x0 prediction of the known
region agrees with the known pixels,

    x0_tilde = x0_hat(x_t) - (w_r alpha_t / 2) grad_{x_t} || m * (y - x0_hat(x_t)) ||^2

(m = 1 on the known pixels, y the known image). `kuosan.edit.inpaint(..., reconstruction=w_r)` wraps the
Denoiser with `reconstruction_guided` and then replaces the known region of x0_tilde as plain replacement does.
Design and measurements: docs/editing.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser
from .predictions import from_x0_eps

__all__ = ["reconstruction_guided", "reconstruction_x0"]


def reconstruction_x0(x0: Tensor, grad: Tensor, alpha: Tensor, weight: float) -> Tensor:
    """Ho et al. 2022 (arXiv:2204.03458), §3.1, eq. 7: x0_tilde = x0_hat - (w_r alpha_t / 2) grad, with grad =
    grad_{x_t} ||m * (y - x0_hat(x_t))||^2 and alpha_t the process's signal coefficient (x_t = alpha_t x0 +
    sigma_t eps)."""
    return x0 - (0.5 * weight) * alpha * grad


class _ReconstructionGuided:
    """fn(x, t, **cond) of the guided Denoiser: the base's output with x0 replaced by eq. 7's x0_tilde and eps
    re-derived, eps' = (x_t - alpha x0_tilde) / sigma, expressed again as the base's prediction kind."""

    def __init__(self, base: Denoiser, known: Tensor, x_known: Tensor, weight: float):
        self.base, self.known, self.x_known, self.weight = base, known, x_known, float(weight)

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        base = self.base
        c = base.coefficients(x, t, derivatives=base.prediction == "velocity")
        if not base.learned_variance and bool((c.alpha == 0).all()):  # no signal: eq. 7's factor alpha_t is 0
            return base(x, t, **cond)
        with torch.enable_grad():  # samplers run under torch.no_grad
            xg = x.detach().requires_grad_(True)
            if base.learned_variance:
                x0, _, var = base.predict_with_variance(xg, t, **cond)
            else:
                (x0, _), var = base.predict(xg, t, **cond), None
            residual = torch.where(self.known, self.x_known.to(x0.dtype) - x0, 0.0)
            (grad,) = torch.autograd.grad(residual.square().sum(), xg)  # rows are independent: per-row gradients
        x0 = reconstruction_x0(x0.detach(), grad.to(x0.dtype), c.alpha, self.weight)
        out = from_x0_eps(base.prediction, x0, (x - c.alpha * x0) / c.sigma, x, c)
        return out if var is None else torch.cat([out, var.detach()], dim=1)


def reconstruction_guided(denoiser: Denoiser, known: Tensor, x_known: Tensor, weight: float) -> Denoiser:
    """Reconstruction guidance (Ho et al. 2022, "Video Diffusion Models", arXiv:2204.03458, §3.1, eq. 7) of any
    Denoiser: a Denoiser of the same process and prediction kind whose x0 is

        x0_tilde(x_t) = x0_hat(x_t) - (w_r alpha_t / 2) grad_{x_t} || known * (x_known - x0_hat(x_t)) ||^2

    with x0_hat the denoiser's prediction (guidance and preconditioning included, its `clip_x0` not: the
    gradient is taken through the unclipped prediction and the clip applied to x0_tilde), w_r = `weight`.

    Which form: eq. 7 as printed, weight w_r times alpha_t / 2, no normalisation. It is the first-order
    correction E[x0 | x_t, y] = E[x0 | x_t] + (sigma_t^2 / alpha_t) grad_{x_t} log q(y | x_t) (Tweedie) with
    q(y | x_t) ~ N(x0_hat^known(x_t), (sigma_t^2 / alpha_t^2) I) (Ho et al.'s approximation), which gives exactly
    the factor alpha_t / 2 at w_r = 1; Ho et al. use w_r > 1. DPS (Chung et al. 2022, arXiv:2209.14687, Alg. 1)
    takes the same gradient but steps x_{t-1} by zeta / ||y - A x0_hat|| times it; that normalised step is not
    what this implements. Ho et al. take the gradient w.r.t. the unknown part z_t^b only; here it is taken
    w.r.t. all of x_t, whose known-region entries only change the known region of x0_tilde, which
    `kuosan.edit.inpaint` then replaces by the known pixels (identical result).

    Each evaluation costs one base evaluation plus its backward pass (about three times the time).
    `known` (bool) and `x_known` broadcast to the batch the samplers pass; w_r = 0 still takes the gradient
    (`kuosan.edit.inpaint` does not wrap at all then).
    """
    base = denoiser.replace(clip_x0=None)
    return Denoiser(_ReconstructionGuided(base, known, x_known, weight), denoiser.process, denoiser.prediction,
                    learned_variance=denoiser.learned_variance, clip_x0=denoiser.clip_x0)
