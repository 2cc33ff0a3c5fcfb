"""Chapter-3 stochastic calculus: Brownian motion, Ito/Stratonovich sums, SDE solvers, closed-form SDEs.

Conventions: a path carries time on axis 1, ``(B, n_steps + 1, ...)``; increments ``(B, n_steps, ...)``.
Times ``t`` are floats, 0-d tensors or per-sample tensors ``(B,)`` broadcast by ``x.ndim``.
Randomness comes only from a ``torch.Generator``. Noise is diagonal: ``dX_i = f_i dt + g_i dW_i``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

Field = Callable[[Tensor, Tensor], Tensor]  # (x, t) -> tensor broadcastable to x
Time = float | Tensor
StepFn = Callable[["SDE", Tensor, Tensor, float, Tensor], Tensor]

__all__ = [
    "SDE",
    "BrownianMotionWithDrift",
    "GeometricBrownianMotion",
    "OrnsteinUhlenbeck",
    "brownian_path",
    "euler_maruyama",
    "ito_integral",
    "milstein",
    "quadratic_variation",
    "stratonovich_integral",
]


# ----------------------------------------------------------------------------- Brownian motion, integrals


def brownian_path(
    n_paths: int,
    n_steps: int,
    T: float,
    dim: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Standard Wiener process on a uniform grid, W_0 = 0, W_{k+1} = W_k + sqrt(dt) z (book ch. 3)."""
    dtype = dtype or torch.get_default_dtype()
    times = torch.linspace(0.0, T, n_steps + 1, dtype=dtype)  # (n_steps + 1,)
    dW = torch.randn(n_paths, n_steps, dim, generator=generator, dtype=dtype) * math.sqrt(T / n_steps)
    W = torch.cat([torch.zeros(n_paths, 1, dim, dtype=dtype), dW.cumsum(dim=1)], dim=1)
    return times, W  # (n_steps + 1,), (n_paths, n_steps + 1, dim)


def quadratic_variation(path: Tensor, time_axis: int = 1) -> Tensor:
    """[X]_T = sum_k (X_{t_{k+1}} - X_{t_k})^2, which tends to T for Brownian motion (book ch. 3)."""
    return path.diff(dim=time_axis).square().sum(dim=time_axis)


def _check_grid(integrand_values: Tensor, dW: Tensor) -> None:
    if integrand_values.shape[1] != dW.shape[1] + 1:
        raise ValueError(
            f"integrand needs the {dW.shape[1] + 1} grid values along axis 1 for {dW.shape[1]} increments, "
            f"got {integrand_values.shape[1]}"
        )


def ito_integral(integrand_values: Tensor, dW: Tensor) -> Tensor:
    """Ito sum  int H dW ~ sum_k H(t_k) dW_k  (left point; Kloeden & Platen (1992) ch. 3, book ch. 3)."""
    _check_grid(integrand_values, dW)
    return (integrand_values[:, :-1] * dW).sum(dim=1)


def stratonovich_integral(integrand_values: Tensor, dW: Tensor) -> Tensor:
    """Stratonovich sum  int H o dW ~ sum_k (H(t_k) + H(t_{k+1}))/2 dW_k  (Kloeden & Platen (1992) ch. 3)."""
    _check_grid(integrand_values, dW)
    return (0.5 * (integrand_values[:, :-1] + integrand_values[:, 1:]) * dW).sum(dim=1)


# ----------------------------------------------------------------------------- SDEs and their solvers


@dataclass(frozen=True)
class SDE:
    """dX = drift(X, t) dt + diffusion(X, t) dW with diagonal noise (book ch. 3).

    ``diffusion_dx`` is d diffusion_i / d x_i, used by Milstein; left out, Milstein takes it by autograd.
    """

    drift: Field
    diffusion: Field
    diffusion_dx: Field | None = None


def _diffusion_dx(sde: SDE, x: Tensor, t: Tensor) -> Tensor:
    if sde.diffusion_dx is not None:
        return sde.diffusion_dx(x, t)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        g = sde.diffusion(xg, t)
        if not g.requires_grad:  # diffusion does not depend on x
            return torch.zeros_like(x)
        (dg,) = torch.autograd.grad(g.sum(), xg, allow_unused=True)
    return torch.zeros_like(x) if dg is None else dg


def _em_step(sde: SDE, x: Tensor, t: Tensor, dt: float, dw: Tensor) -> Tensor:
    return x + sde.drift(x, t) * dt + sde.diffusion(x, t) * dw


def _milstein_step(sde: SDE, x: Tensor, t: Tensor, dt: float, dw: Tensor) -> Tensor:
    g = sde.diffusion(x, t)
    correction = 0.5 * g * _diffusion_dx(sde, x, t) * (dw.square() - abs(dt))
    return x + sde.drift(x, t) * dt + g * dw + correction


def _integrate(
    step: StepFn,
    sde: SDE,
    x0: Tensor,
    t0: float,
    t1: float,
    n_steps: int,
    generator: torch.Generator | None,
    return_path: bool,
    dW: Tensor | None,
) -> Tensor | tuple[Tensor, Tensor]:
    dt = (t1 - t0) / n_steps  # negative when time runs backwards; the noise scale is sqrt(|dt|)
    times = torch.linspace(t0, t1, n_steps + 1, dtype=x0.dtype, device=x0.device)
    if dW is not None and dW.shape != (x0.shape[0], n_steps, *x0.shape[1:]):
        want = (x0.shape[0], n_steps, *x0.shape[1:])
        raise ValueError(f"dW must be (B, n_steps, ...) = {want}, got {tuple(dW.shape)}")
    x, path = x0, [x0]
    for k in range(n_steps):
        if dW is None:
            dw = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            dw = dw * math.sqrt(abs(dt))
        else:
            dw = dW[:, k]
        x = step(sde, x, times[k], dt, dw)
        if return_path:
            path.append(x)
    return (times, torch.stack(path, dim=1)) if return_path else x


@overload
def euler_maruyama(
    sde: SDE, x0: Tensor, t0: float, t1: float, n_steps: int,
    generator: torch.Generator | None = ..., return_path: Literal[False] = ..., *, dW: Tensor | None = ...,
) -> Tensor: ...
@overload
def euler_maruyama(
    sde: SDE, x0: Tensor, t0: float, t1: float, n_steps: int,
    generator: torch.Generator | None = ..., return_path: Literal[True] = ..., *, dW: Tensor | None = ...,
) -> tuple[Tensor, Tensor]: ...
def euler_maruyama(
    sde: SDE,
    x0: Tensor,
    t0: float,
    t1: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    return_path: bool = False,
    *,
    dW: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """X_{k+1} = X_k + f dt + g dW_k, strong order 1/2, weak 1 (Kloeden & Platen (1992) §10.2, book ch. 3).

    x0 is (B, ...); dW, if given, is (B, n_steps, ...) and replaces the generator's noise.
    Returns X at t1, or (times (n_steps + 1,), path (B, n_steps + 1, ...)) with ``return_path``.
    """
    return _integrate(_em_step, sde, x0, t0, t1, n_steps, generator, return_path, dW)


@overload
def milstein(
    sde: SDE, x0: Tensor, t0: float, t1: float, n_steps: int,
    generator: torch.Generator | None = ..., return_path: Literal[False] = ..., *, dW: Tensor | None = ...,
) -> Tensor: ...
@overload
def milstein(
    sde: SDE, x0: Tensor, t0: float, t1: float, n_steps: int,
    generator: torch.Generator | None = ..., return_path: Literal[True] = ..., *, dW: Tensor | None = ...,
) -> tuple[Tensor, Tensor]: ...
def milstein(
    sde: SDE,
    x0: Tensor,
    t0: float,
    t1: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    return_path: bool = False,
    *,
    dW: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Euler-Maruyama + g g'/2 (dW^2 - |dt|): strong order 1 (Kloeden & Platen (1992) §10.3, book ch. 3).

    Same arguments and returns as :func:`euler_maruyama`.
    """
    return _integrate(_milstein_step, sde, x0, t0, t1, n_steps, generator, return_path, dW)


# ----------------------------------------------------------------------------- closed-form processes


def _time(t: Time, x: Tensor) -> Tensor:
    """t as a tensor of x's dtype, shaped (B, 1, ..., 1) when given per sample as (B,)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 1 and x.ndim > 1:
        t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return t


def _full(v: Tensor, x: Tensor) -> Tensor:
    return v.expand(torch.broadcast_shapes(v.shape, x.shape))


def _normal_log_prob(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean).square() / var)


def _sum_event(log_p: Tensor) -> Tensor:
    """Sum an elementwise log-density over every axis but the batch axis 0."""
    return log_p.sum(dim=tuple(range(1, log_p.ndim))) if log_p.ndim > 1 else log_p


def _check_positive(**params: float) -> None:
    for name, value in params.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


class _Gaussian:
    """Shared code for processes with Gaussian transitions given mean and var."""

    def mean(self, x0: Tensor, t: Time) -> Tensor:
        raise NotImplementedError

    def var(self, x0: Tensor, t: Time) -> Tensor:
        raise NotImplementedError

    def std(self, x0: Tensor, t: Time) -> Tensor:
        """Standard deviation of X_t given X_0 = x0."""
        return self.var(x0, t).sqrt()

    def transition_log_prob(self, x_t: Tensor, x0: Tensor, t: Time) -> Tensor:
        """log N(x_t; mean, var), summed over all axes but the batch axis."""
        return _sum_event(_normal_log_prob(x_t, self.mean(x0, t), self.var(x0, t)))

    def sample(self, x0: Tensor, t: Time, generator: torch.Generator | None = None) -> Tensor:
        """Exact draw of X_t given X_0 = x0."""
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return self.mean(x0, t) + self.std(x0, t) * z


@dataclass(frozen=True)
class BrownianMotionWithDrift(_Gaussian):
    """dX = mu dt + sigma dW;  X_t ~ N(x0 + mu t, sigma^2 t)  (book ch. 3)."""

    mu: float
    sigma: float

    def __post_init__(self) -> None:
        _check_positive(sigma=self.sigma)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.full_like(x, self.mu)

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.full_like(x, self.sigma)

    def diffusion_dx(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def sde(self) -> SDE:
        return SDE(self.drift, self.diffusion, self.diffusion_dx)

    def mean(self, x0: Tensor, t: Time) -> Tensor:
        return x0 + self.mu * _time(t, x0)

    def var(self, x0: Tensor, t: Time) -> Tensor:
        return _full(self.sigma**2 * _time(t, x0), x0)


@dataclass(frozen=True)
class OrnsteinUhlenbeck(_Gaussian):
    """dX = -mu (X - m) dt + sigma dW, mean-reversion rate mu (often called theta) (book ch. 3).

    X_t ~ N(m + (x0 - m) e^{-mu t}, sigma^2/(2 mu) (1 - e^{-2 mu t})), stationary N(m, sigma^2/(2 mu)).
    The book prints the stationary variance as sigma^2/mu; that is a slip: the Fokker-Planck zero-flux
    condition  -mu (x - m) p = (sigma^2/2) p'  gives sigma^2/(2 mu), which is what is implemented.
    """

    mu: float
    sigma: float
    m: float = 0.0

    def __post_init__(self) -> None:
        _check_positive(mu=self.mu, sigma=self.sigma)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return -self.mu * (x - self.m)

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.full_like(x, self.sigma)

    def diffusion_dx(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def sde(self) -> SDE:
        return SDE(self.drift, self.diffusion, self.diffusion_dx)

    def mean(self, x0: Tensor, t: Time) -> Tensor:
        return self.m + (x0 - self.m) * torch.exp(-self.mu * _time(t, x0))

    def var(self, x0: Tensor, t: Time) -> Tensor:
        # 1 - e^{-2 mu t} = -expm1(-2 mu t): exact for small t
        return _full(-torch.expm1(-2 * self.mu * _time(t, x0)) * self.stationary_var, x0)

    @property
    def stationary_mean(self) -> float:
        return self.m

    @property
    def stationary_var(self) -> float:
        """sigma^2 / (2 mu)  (not sigma^2 / mu as printed in the book)."""
        return self.sigma**2 / (2 * self.mu)


@dataclass(frozen=True)
class GeometricBrownianMotion:
    """dX = mu X dt + sigma X dW;  X_t = x0 exp((mu - sigma^2/2) t + sigma W_t), log-normal (book ch. 3)."""

    mu: float
    sigma: float

    def __post_init__(self) -> None:
        _check_positive(sigma=self.sigma)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mu * x

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return self.sigma * x

    def diffusion_dx(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.full_like(x, self.sigma)

    def sde(self) -> SDE:
        return SDE(self.drift, self.diffusion, self.diffusion_dx)

    def mean(self, x0: Tensor, t: Time) -> Tensor:
        """x0 e^{mu t}."""
        return x0 * torch.exp(self.mu * _time(t, x0))

    def var(self, x0: Tensor, t: Time) -> Tensor:
        """x0^2 e^{2 mu t} (e^{sigma^2 t} - 1)."""
        t = _time(t, x0)
        return x0.square() * torch.exp(2 * self.mu * t) * torch.expm1(self.sigma**2 * t)

    def std(self, x0: Tensor, t: Time) -> Tensor:
        return self.var(x0, t).sqrt()

    def transition_log_prob(self, x_t: Tensor, x0: Tensor, t: Time) -> Tensor:
        """log N(log x_t; log x0 + (mu - sigma^2/2) t, sigma^2 t) - log x_t (log-normal); -inf at x_t <= 0."""
        t = _time(t, x0)
        positive = x_t > 0
        log_x = torch.log(torch.where(positive, x_t, torch.ones_like(x_t)))
        log_mean = torch.log(x0) + (self.mu - 0.5 * self.sigma**2) * t
        log_p = _normal_log_prob(log_x, log_mean, self.sigma**2 * t) - log_x
        return _sum_event(torch.where(positive, log_p, torch.full_like(log_p, -math.inf)))

    def sample(self, x0: Tensor, t: Time, generator: torch.Generator | None = None) -> Tensor:
        """Exact draw x0 exp((mu - sigma^2/2) t + sigma sqrt(t) z)."""
        t = _time(t, x0)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return x0 * torch.exp((self.mu - 0.5 * self.sigma**2) * t + self.sigma * t.sqrt() * z)
