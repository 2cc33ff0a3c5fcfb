"""The forward process x_t = alpha(t) x_0 + sigma(t) eps shared by every chapter of the book.

A process is fixed by alpha(t) and sigma(t). Everything else follows from them:

    lambda(t) = log(alpha / sigma)                          (half log-SNR, DPM-Solver eq. 3.x)
    f(t)      = d log alpha / dt                            (drift coefficient, f(x, t) = f(t) x)
    g^2(t)    = d sigma^2 / dt - 2 f(t) sigma^2             (squared diffusion)

(Kingma et al. 2021, "Variational Diffusion Models", arXiv:2107.00630, eq. 17; book §4.3.)
Subclasses give alpha, sigma, f, g^2 and the inverse of lambda in closed form; tests pin the closed forms
to each other numerically.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["Process", "append_dims", "as_time"]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample tensor (B,) or scalar () to broadcast against an (B, ...) tensor of `ndim` dims."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    """A float tensor for t; python floats become float64 (or `like`'s dtype/device)."""
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    if like is not None:
        return torch.tensor(t, dtype=like.dtype, device=like.device)
    return torch.tensor(t, dtype=torch.float64)


class Process(ABC):
    """Gaussian forward process q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I), t in [t_min, t_max]."""

    t_min: float
    t_max: float

    # --- the two functions that define a process -------------------------------------------------
    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale sigma(t)."""

    # --- derived quantities (closed forms in subclasses) --------------------------------------------
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t)."""
        return torch.log(self.alpha(t))

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), the half log signal-to-noise ratio (DPM-Solver §3.1)."""
        return self.log_alpha(t) - torch.log(self.sigma(t))

    @abstractmethod
    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of lambda(t): the time at which log(alpha/sigma) = lam."""

    @abstractmethod
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient f(t) = d log alpha / dt; the forward SDE drift is f(t) x (book eq. 4.30)."""

    @abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2 (VDM eq. 17; book eq. 4.30)."""

    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t) of dx = f(t) x dt + g(t) dw."""
        return torch.sqrt(self.g2(t))

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward SDE drift f(x, t) = f(t) x (book eq. 4.30)."""
        return append_dims(self.f(t), x.ndim) * x

    def dalpha_dt(self, t: Tensor) -> Tensor:
        """d alpha / dt = f(t) alpha(t)."""
        return self.f(t) * self.alpha(t)

    def dsigma_dt(self, t: Tensor) -> Tensor:
        """d sigma / dt = (g^2 + 2 f sigma^2) / (2 sigma)."""
        s = self.sigma(t)
        return (self.g2(t) + 2 * self.f(t) * s**2) / (2 * s)

    # --- the marginal and the posterior ---------------------------------------------------------
    def marginal_sample(
        self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw x_t ~ q(x_t | x_0) = N(alpha x_0, sigma^2 I) (book eq. 4.8 generalised); returns (x_t, eps)."""
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a, s = append_dims(self.alpha(t).to(x0.dtype), x0.ndim), append_dims(self.sigma(t).to(x0.dtype), x0.ndim)
        return a * x0 + s * eps, eps  # in x0's dtype: float64 times must not promote a float32 batch

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I) for s < t: returns (alpha_{t|s}, sigma^2_{t|s}).

        alpha_{t|s} = alpha_t / alpha_s,  sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2  (VDM eq. 21-22),
        written as sigma_t^2 (1 - exp(2 (lambda_s... )) ) via expm1 for accuracy when s is close to t.
        """
        a_ts = torch.exp(self.log_alpha(t) - self.log_alpha(s))
        # sigma_t^2 - a_ts^2 sigma_s^2 = sigma_t^2 * (1 - exp(2(lambda_t - lambda_s)))
        var = -(self.sigma(t) ** 2) * torch.expm1(2 * (self.log_snr(t) - self.log_snr(s)))
        return a_ts, var

    def posterior(self, x_t: Tensor, x0: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_s | x_t, x_0) for s < t (book eqs. 4.9-4.11, generalised; VDM eq. 23-24).

            mu    = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x_0
            var   = sigma_{t|s}^2 sigma_s^2 / sigma_t^2

        With s = t_{i-1}, t = t_i on a DDPM grid this is the book's beta-tilde posterior.
        """
        if bool((torch.as_tensor(s) >= torch.as_tensor(t)).any()):
            raise ValueError("posterior q(x_s | x_t, x_0) needs s < t")
        a_ts, var_ts = self.transition(s, t)
        sig_s2, sig_t2 = self.sigma(s) ** 2, self.sigma(t) ** 2
        c_xt = a_ts * sig_s2 / sig_t2
        c_x0 = self.alpha(s) * var_ts / sig_t2
        mean = append_dims(c_xt, x_t.ndim) * x_t + append_dims(c_x0, x0.ndim) * x0
        return mean, var_ts * sig_s2 / sig_t2

    def sample_t(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64, device=None
    ) -> Tensor:
        """n training times, uniform on [t_min, t_max] (DiscreteVP: uniform over its N grid times)."""
        u = torch.rand(n, generator=generator, dtype=dtype, device=device)
        return self.t_min + (self.t_max - self.t_min) * u

    # --- the prior at t_max --------------------------------------------------------------------
    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) at t_max."""
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_T ~ N(0, prior_std^2 I), the start of every reverse-time sampler."""
        return self.prior_std * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I), summed over all but the batch dimension."""
        d = x[0].numel()
        s = self.prior_std
        sq = x.flatten(1).pow(2).sum(1)
        return -0.5 * sq / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    # --- time grids ------------------------------------------------------------------------------
    def timesteps(
        self,
        n: int,
        kind: str = "logsnr",
        *,
        t_start: float | None = None,
        t_end: float | None = None,
        rho: float = 7.0,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """n+1 descending times t_start = t_0 > ... > t_n = t_end for an n-step reverse solver.

        kinds: "uniform" (uniform in t), "logsnr" (uniform in lambda, DPM-Solver §3.3), "karras" (EDM eq. 5,
        uniform in (sigma/alpha)^(1/rho)), "quadratic" (uniform in sqrt(t), DPM-Solver's time_quadratic).
        """
        from .grids import make_grid

        t0 = self.t_max if t_start is None else t_start
        t1 = self.t_min if t_end is None else t_end
        return make_grid(self, n, kind, t0, t1, rho=rho, dtype=dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min:g}, t_max={self.t_max:g})"
