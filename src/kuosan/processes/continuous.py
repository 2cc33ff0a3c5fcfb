"""Continuous-time processes of Score SDE (book §4.3) and their relatives: VP, sub-VP, VE, EDM, rectified flow."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Process

__all__ = ["VP", "SubVP", "VE", "EDM", "RectifiedFlow"]


class _LinearBeta(Process):
    """beta(t) = beta_min + t (beta_max - beta_min); log alpha(t) = -1/4 t^2 (b1 - b0) - 1/2 t b0."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = beta_min, beta_max, t_min, t_max

    def beta(self, t: Tensor) -> Tensor:
        """beta(t) of Score SDE eq. 11 (book eq. 4.31 in the continuous limit)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t) = -1/2 int_0^t beta(s) ds (Score SDE eq. 29)."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def f(self, t: Tensor) -> Tensor:
        """f(t) = -beta(t)/2 (Score SDE eq. 11)."""
        return -0.5 * self.beta(t)

    def _t_of_neg_log_alpha(self, L: Tensor) -> Tensor:
        """Solve (b1-b0)/4 t^2 + b0/2 t = L for t >= 0, in the cancellation-free form 2L / (b + sqrt(b^2 + 4aL))."""
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return 2 * L / (b + torch.sqrt(b**2 + 4 * a * L))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


class VP(_LinearBeta):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (Song et al. 2021, arXiv:2011.13456, eq. 11).

    alpha^2 + sigma^2 = 1; the continuous limit of DDPM (book §4.3.3).
    """

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """alpha^2 = sigmoid(2 lambda), so -log alpha = 1/2 log(1 + e^{-2 lambda}) (DPM-Solver App. E)."""
        return self._t_of_neg_log_alpha(0.5 * torch.nn.functional.softplus(-2 * lam))

    def g2(self, t: Tensor) -> Tensor:
        """g^2 = beta(t)."""
        return self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class SubVP(_LinearBeta):
    """Sub-VP SDE dx = -1/2 beta x dt + sqrt(beta (1 - e^{-2 int beta})) dw (Score SDE eq. 12; book §4.3.3).

    Same alpha as VP; sigma = 1 - alpha^2, always below the VP sigma.
    """

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self.log_alpha(t))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """lambda = log(a/(1-a^2)) solved for a: a = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))."""
        log_a = math.log(2) + lam - torch.log1p(torch.sqrt(1 + 4 * torch.exp(2 * lam)))
        return self._t_of_neg_log_alpha(-log_a)

    def g2(self, t: Tensor) -> Tensor:
        """g^2 = beta(t) (1 - e^{-2 int_0^t beta}) = beta (1 - alpha^4)."""
        return -self.beta(t) * torch.expm1(4 * self.log_alpha(t))

    @property
    def prior_std(self) -> float:
        return 1.0


class VE(Process):
    """Variance-exploding SDE of NCSN/SMLD: sigma(t) = sigma_min (sigma_max/sigma_min)^t, alpha = 1.

    dx = sigma(t) sqrt(2 log(sigma_max/sigma_min)) dw (Score SDE eq. 9, 30; book §4.2, §4.3.3).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0, t_max: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = sigma_min, sigma_max, t_min, t_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def log_snr(self, t: Tensor) -> Tensor:
        return -(math.log(self.sigma_min) + t * self._log_ratio)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        """g^2 = d sigma^2 / dt = 2 sigma^2 log(sigma_max / sigma_min)."""
        return 2 * self.sigma(t) ** 2 * self._log_ratio

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"


class EDM(Process):
    """EDM's process alpha = 1, sigma = t (Karras et al. 2022, arXiv:2206.00364, Table 1), t in [0.002, 80]."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.t_min, self.t_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam)

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        """g^2 = d sigma^2/dt = 2t."""
        return 2 * t

    def __repr__(self) -> str:
        return f"EDM(sigma_min={self.t_min:g}, sigma_max={self.t_max:g})"


class RectifiedFlow(Process):
    """Straight-line interpolation x_t = (1 - t) x_0 + t eps (Liu et al. 2022, arXiv:2209.03003), t in [0, 1].

    The prior N(0, I) sits at t = 1, where alpha = 0 and the log-SNR is -inf: grids uniform in log-SNR need
    t_start < 1. The conditional velocity d x_t / dt = eps - x_0.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0):
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = t_min, t_max

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """(1-t)/t = e^lam  =>  t = sigmoid(-lam)."""
        return torch.sigmoid(-lam)

    def f(self, t: Tensor) -> Tensor:
        """d log(1-t)/dt = -1/(1-t)."""
        return -1 / (1 - t)

    def g2(self, t: Tensor) -> Tensor:
        """g^2 = 2t + 2 t^2/(1-t) = 2t/(1-t)."""
        return 2 * t / (1 - t)

    def dalpha_dt(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def dsigma_dt(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    @property
    def prior_std(self) -> float:
        return 1.0
