"""Classifier guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, §4, Alg. 1 and 2; book §4.6.2) of any
Denoiser, conditional or not, by a noise-conditional classifier p(y | x_t):

    guided = classifier_guided(denoiser, clf.log_prob, scale=2.0)      # an ordinary eps Denoiser
    kuosan.sample(guided, x_T, method="dpmpp-2m", nfe=20, cond={"y": labels})

    eps_hat(x_t, t, y) = eps(x_t, t) - s sigma(t) grad_x log p(y | x_t)   <=>   score + s grad_x log p(y | x_t)

`NoisyClassifier` is a trained classifier network with its process, classes and data shape (kuosan.load_classifier
reads one from a run). This module imports only the denoiser and the processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .denoiser import Denoiser
from .processes.base import Process, append_dims

__all__ = ["NoisyClassifier", "classifier_guided", "classifier_input", "same_process", "LogProbFn"]

LogProbFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # log_prob(x_t, t, y) -> (B,) log p(y | x_t)


def classifier_input(process: Process, x: Tensor, t: Tensor) -> Tensor:
    """x_t / sqrt(alpha(t)^2 + sigma(t)^2): unit scale for unit-scale data under any process, the identity on a
    variance-preserving one (EDM's c_in with sigma_data = 1, Karras et al. 2022, arXiv:2206.00364, Table 1).
    What the classifier network sees, in training and in guidance alike."""
    a, s = process.alpha(t), process.sigma(t)
    return x / append_dims(torch.sqrt(a**2 + s**2).to(x.dtype), x.ndim)


def same_process(p: Process, q: Process, points: int = 33, rtol: float = 1e-6) -> bool:
    """Whether p and q share t_min, t_max and alpha(t), sigma(t) (checked at `points` times across the range)."""
    if abs(p.t_min - q.t_min) > rtol * max(1.0, abs(p.t_min)) or abs(p.t_max - q.t_max) > rtol * max(1.0, p.t_max):
        return False
    t = torch.linspace(p.t_min, p.t_max, points, dtype=torch.float64)
    return all(torch.allclose(f(t), g(t), rtol=rtol, atol=1e-12) for f, g in ((p.alpha, q.alpha), (p.sigma, q.sigma)))


class NoisyClassifier:
    """A noise-conditional classifier p_phi(y | x_t, t) (Dhariwal & Nichol 2021, arXiv:2105.05233, §4.1): its
    network (x, t) -> logits, the process it was trained under, its classes and data shape."""

    def __init__(self, net: nn.Module, process: Process, num_classes: int, data_shape: Sequence[int],
                 name: str = "classifier", class_names: Sequence[str] = ()):
        self.net, self.process, self.num_classes = net, process, int(num_classes)
        self.data_shape, self.name, self.class_names = tuple(data_shape), str(name), tuple(class_names)

    def __repr__(self) -> str:
        return f"NoisyClassifier({self.name!r}, {self.num_classes} classes, data {self.data_shape})"

    def logits(self, x: Tensor, t: Tensor | float) -> Tensor:
        """(B, num_classes) logits of the noisy batch x at process time(s) t."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        dtype = next(self.net.parameters()).dtype
        return self.net(classifier_input(self.process, x, t).to(dtype), t)

    def log_prob(self, x: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        """(B,) log p_phi(y | x_t): log-softmax of the logits at each row's label."""
        lp = torch.log_softmax(self.logits(x, t), dim=-1)
        return lp.gather(1, y.long().reshape(-1, 1).to(x.device))[:, 0]

    def check(self, process: Process, data_shape: Sequence[int], what: str) -> None:
        """Refuse to guide `what` (a run) trained on other data shapes or under another process (alpha/sigma)."""
        if tuple(data_shape) != self.data_shape:
            raise ValueError(f"classifier {self.name} was trained on data of shape {self.data_shape}, {what} makes "
                             f"{tuple(data_shape)}: guide a model of the classifier's data")
        if not same_process(process, self.process):
            raise ValueError(f"classifier {self.name} was trained under process {self.process!r}, {what} samples "
                             f"{process!r}: alpha(t)/sigma(t) differ, so its p(y | x_t) is of other noise levels")


class _GuidedEps:
    """fn(x, t, y, **cond) of the classifier-guided Denoiser: eps_hat = eps - s sigma grad_x log p(y | x_t)."""

    def __init__(self, base: Denoiser, log_prob: LogProbFn, scale: float, conditional: bool):
        self.base, self.log_prob, self.scale, self.conditional = base, log_prob, float(scale), conditional

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None, **cond: Any) -> Tensor:
        if y is None:
            raise ValueError("a classifier-guided model needs the labels to guide towards: cond={'y': labels}")
        eps = self.base.eps(x, t, **({**cond, "y": y} if self.conditional else cond))
        if self.scale == 0:
            return eps
        with torch.enable_grad():  # samplers run under torch.no_grad
            xg = x.detach().requires_grad_(True)
            lp = self.log_prob(xg, t, y)
            if lp.shape != (x.shape[0],):
                raise ValueError(f"log_prob_fn must return shape (batch,) = ({x.shape[0]},); got {tuple(lp.shape)}")
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        sigma = self.base.coefficients(x, t, derivatives=False).sigma
        return eps - self.scale * sigma * grad.detach().to(eps.dtype)


def classifier_guided(
    denoiser: Denoiser, log_prob_fn: LogProbFn, scale: float, *, conditional: bool | None = None
) -> Denoiser:
    """Classifier guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, Alg. 2, eq. 14 and §4.2) of any Denoiser:

        eps_hat(x_t, t, y) = eps(x_t, t) - s sigma(t) grad_x log p(y | x_t)
        <=> score_hat = score + s grad_x log p(y | x_t)          (score = -eps / sigma)

    returned as an ordinary Denoiser (prediction "eps", over the same process) to be called with cond={"y":
    labels}, so every sampler runs on it. `log_prob_fn(x_t, t, y) -> (B,)` is differentiated with autograd
    inside torch.enable_grad (samplers run under no_grad); each evaluation costs one base evaluation plus one
    classifier forward and backward. s = 0 is the base model exactly (no gradient taken).

    `conditional`: whether the base takes y too (a class-conditional model, with or without its own
    classifier-free guidance, which then composes: eps = eps_cfg(w) - s sigma grad log p); None = when the base
    has `guidance` set. Other cond keys go to the base unchanged. x0 clipping belongs on the returned
    Denoiser (`.replace(clip_x0=...)`), after guidance, as for classifier-free guidance.

    With the exact classifier log p(y | x_t) = log p(y) + log p_t(x_t | y) - log p_t(x_t) this is exactly
    classifier-free guidance at w = s: eps_u + s (eps_c - eps_u) (tests/test_classifier_guidance.py).

    Stochastic samplers vs Alg. 1. Alg. 1 draws x_{t-1} ~ N(mu + s Sigma grad log p(y | x_t), Sigma), with mu,
    Sigma the unguided step; here the step is taken with eps_hat, which shifts the mean (DDPM's posterior mean
    (x_t - beta_t / sigma_t eps) / sqrt(alpha_t)) by s (beta_t / sqrt(1 - beta_t)) grad log p(y | x_t), the
    gradient at the same x_t. With Sigma = beta_t (DDPM's sigma_t^2 = beta_t, kuosan `ddpm:variance=beta`) the
    two shifts differ by the factor 1 / sqrt(1 - beta_t) = 1 + beta_t / 2 + O(beta_t^2): equal to first order
    in the step. With Sigma = beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (kuosan's default `ddpm`) the
    factor is (1 - abar_t) / ((1 - abar_{t-1}) sqrt(1 - beta_t)) = 1 + O(beta_t / (1 - abar_{t-1})): first order
    where the step is small against the noise level, but at the last step (abar_{t-1} = 1, beta~ = 0) Alg. 1
    shifts nothing while the score form still moves x0. For an Euler-Maruyama step of the reverse SDE the shift
    is s g^2 dt grad log p = s Sigma grad log p, Alg. 1 exactly. Deterministic samplers (DDIM, DPM-Solver)
    use eps_hat as Alg. 2 does.
    """
    if conditional is None:
        conditional = denoiser.guidance is not None
    return Denoiser(_GuidedEps(denoiser, log_prob_fn, scale, conditional), denoiser.process, "eps")
