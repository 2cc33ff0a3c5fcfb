"""Gaussian mixtures: distributions whose noised marginals, scores and denoisers are exact under any process.

Under x_t = alpha x_0 + sigma eps, a mixture sum_k w_k N(mu_k, Sigma_k) stays a mixture:

    p_t(x) = sum_k w_k N(x; alpha mu_k, C_k),     C_k = alpha^2 Sigma_k + sigma^2 I

so with Sigma_k = U_k diag(d_k) U_k^T (computed once), C_k = U_k diag(alpha^2 d_k + sigma^2) U_k^T for every t:

    score(x)      = sum_k r_k(x) (-C_k^{-1} (x - alpha mu_k))                       r_k = posterior weight of k
    E[x0 | x_t]   = sum_k r_k(x) (mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k))   (Gaussian conditioning)
    E[eps | x_t]  = -sigma score(x)                                                  (Tweedie, book eq. 4.20)

These are the ground truth every sampler, loss and likelihood test in kuosan is checked against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import Process

__all__ = ["GaussianMixture", "Gaussian"]

_LOG2PI = math.log(2 * math.pi)


class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in R^D with isotropic (K,), diagonal (K, D) or full (K, D, D) covariances."""

    def __init__(self, weights, means, variances):
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        var = torch.as_tensor(variances, dtype=torch.float64)
        if mu.ndim != 2 or mu.shape[0] != w.numel():
            raise ValueError(f"means must have shape (K, D) with K = len(weights) = {w.numel()}; got {tuple(mu.shape)}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        K, D = mu.shape
        if var.ndim == 1 and var.shape == (K,):
            cov = var[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif var.shape == (K, D):
            cov = torch.diag_embed(var)
        elif var.shape == (K, D, D):
            cov = 0.5 * (var + var.transpose(1, 2))
        else:
            raise ValueError(
                f"variances must have shape (K,), (K, D) or (K, D, D) with K={K}, D={D}; got {tuple(var.shape)}"
            )
        d, U = torch.linalg.eigh(cov)
        if (d <= 0).any():
            raise ValueError("every covariance must be positive definite")
        self.weights, self.means, self.covariances = w / w.sum(), mu, cov
        self._d, self._U = d, U  # Sigma_k = U_k diag(d_k) U_k^T
        self.dim = D

    # --- the data distribution ----------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        """Mean of the mixture."""
        return self.weights @ self.means

    @property
    def covariance(self) -> Tensor:
        """Covariance of the mixture: sum_k w_k (Sigma_k + mu_k mu_k^T) - mu mu^T."""
        m = self.mean
        outer = self.means[:, :, None] * self.means[:, None]
        second = torch.einsum("k,kij->ij", self.weights, self.covariances + outer)
        return second - torch.outer(m, m)

    def sample(
        self, n: int, generator: torch.Generator | None = None, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n draws, float64 (n, D); with return_labels also the component of each draw."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self._U[k], self._d[k].sqrt() * z)
        return (x, k) if return_labels else x

    # --- the noised marginal p_t --------------------------------------------------------------------
    def _coef(self, x: Tensor, t: Tensor | float | None, process: Process | None) -> tuple[Tensor, Tensor]:
        """alpha, sigma as float64 of shape (B, 1, 1) (t scalar or (B,)); the data itself when t is None."""
        B = x.shape[0]
        if t is None:
            one = torch.ones(B, 1, 1, dtype=torch.float64, device=x.device)
            return one, torch.zeros_like(one)
        if process is None:
            raise ValueError("a time t needs the process it refers to")
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)  # () or (B,): a scalar t is evaluated once
        return process.alpha(t).expand(B).reshape(B, 1, 1), process.sigma(t).expand(B).reshape(B, 1, 1)

    def _parts(self, x: Tensor, t, process):
        """Per-component pieces: y = U^T (x - alpha mu), c = alpha^2 d + sigma^2, log r_k, alpha."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        if xf.shape[1] != self.dim:
            raise ValueError(f"x has {xf.shape[1]} features per sample; this mixture lives in R^{self.dim}")
        a, s = self._coef(xf, t, process)
        c = a**2 * self._d + s**2  # (B, K, D)
        y = torch.einsum("kji,bkj->bki", self._U, xf[:, None, :] - a * self.means)  # (B, K, D)
        log_nk = -0.5 * ((y**2 / c).sum(-1) + torch.log(c).sum(-1) + self.dim * _LOG2PI)  # (B, K)
        log_wn = torch.log(self.weights) + log_nk
        return y, c, log_wn, a

    def log_prob(self, x: Tensor, t: Tensor | float | None = None, process: Process | None = None) -> Tensor:
        """log p_t(x) per sample (B,), float64; log p_0 = the data density when t is None."""
        return torch.logsumexp(self._parts(x, t, process)[2], dim=-1)

    def responsibilities(self, x: Tensor, t: Tensor | float | None = None, process: Process | None = None) -> Tensor:
        """p(k | x_t = x) per sample and component (B, K), float64 (Bayes' rule with the noised components)."""
        return torch.softmax(self._parts(x, t, process)[2], dim=-1)

    def score(self, x: Tensor, t: Tensor | float | None = None, process: Process | None = None) -> Tensor:
        """grad_x log p_t(x), exact, shaped and typed like x."""
        y, c, log_wn, _ = self._parts(x, t, process)
        r = torch.softmax(log_wn, -1)
        s = -torch.einsum("bk,kij,bkj->bi", r, self._U, y / c)
        return s.reshape(x.shape).to(x.dtype)

    def x0(self, x: Tensor, t: Tensor | float, process: Process) -> Tensor:
        """E[x0 | x_t = x], exact: sum_k r_k (mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k))."""
        y, c, log_wn, a = self._parts(x, t, process)
        r = torch.softmax(log_wn, -1)
        m = r @ self.means + torch.einsum("bk,kij,bkj->bi", r, self._U, a * self._d * y / c)
        return m.reshape(x.shape).to(x.dtype)

    def eps(self, x: Tensor, t: Tensor | float, process: Process) -> Tensor:
        """E[eps | x_t = x] = -sigma score, exact."""
        y, c, log_wn, a = self._parts(x, t, process)
        s = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        sig = process.sigma(s).expand(x.shape[0]).reshape(-1, 1, 1)
        r = torch.softmax(log_wn, -1)
        e = torch.einsum("bk,kij,bkj->bi", r, self._U, sig * y / c)
        return e.reshape(x.shape).to(x.dtype)

    def denoiser(self, process: Process, prediction: str = "eps") -> Denoiser:
        """An exact Denoiser for this mixture under `process`, predicting `prediction`."""
        from ..predictions import Coefficients, from_x0_eps

        def fn(x: Tensor, t: Tensor) -> Tensor:
            t = t.to(torch.float64)
            if prediction == "eps":
                return self.eps(x, t, process)
            if prediction == "x0":
                return self.x0(x, t, process)
            if prediction == "score":
                return self.score(x, t, process)
            x64 = x.to(torch.float64)
            v = (process.alpha(t), process.sigma(t), process.dalpha_dt(t), process.dsigma_dt(t))
            c = Coefficients(*(u.reshape((-1,) + (1,) * (x.ndim - 1)) for u in v))
            out = from_x0_eps(prediction, self.x0(x64, t, process), self.eps(x64, t, process), x64, c)
            return out.to(x.dtype)

        return Denoiser(fn, process, prediction=prediction)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.weights.numel()}, D={self.dim})"


class Gaussian(GaussianMixture):
    """A single Gaussian N(mean, cov); cov a scalar, a (D,) diagonal or a (D, D) matrix."""

    def __init__(self, mean, cov):
        mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.ndim == 0:
            cov = cov.expand(mean.numel())
        super().__init__(torch.ones(1), mean[None], cov[None])
