"""What a network predicts, and the exact conversions between the kinds (book §4.1-4.3; Salimans & Ho 2022).

With x = alpha x0 + sigma eps every kind is an invertible linear function of (x0, eps) given x:

    eps       eps                                                (DDPM, book eq. 4.14)
    x0        x0                                                 (data prediction, DPM-Solver++)
    v         alpha eps - sigma x0                               (Salimans & Ho 2022, arXiv:2202.00512, §4)
    score     -eps / sigma                                       (Tweedie; book eq. 4.20)
    velocity  alpha' x0 + sigma' eps = PF-ODE drift              (flow matching; Lipman et al. 2022, arXiv:2210.02747)

Each kind has one function to (x0, eps) and one from (x0, eps); `alpha`, `sigma`, `dalpha`, `dsigma` are
already broadcast to x.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["PREDICTIONS", "Coefficients", "to_x0_eps", "from_x0_eps"]


class Coefficients(NamedTuple):
    """alpha(t), sigma(t) and their time derivatives (None where not needed), broadcast against x."""

    alpha: Tensor
    sigma: Tensor
    dalpha: Tensor | None
    dsigma: Tensor | None


# --- eps -------------------------------------------------------------------------------------------
def eps_to_x0_eps(out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """x0 = (x - sigma eps) / alpha (book eq. 4.12 rearranged)."""
    return (x - c.sigma * out) / c.alpha, out


def eps_from_x0_eps(x0: Tensor, eps: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    return eps


# --- x0 --------------------------------------------------------------------------------------------
def x0_to_x0_eps(out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """eps = (x - alpha x0) / sigma."""
    return out, (x - c.alpha * out) / c.sigma


def x0_from_x0_eps(x0: Tensor, eps: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    return x0


# --- v ---------------------------------------------------------------------------------------------
def v_to_x0_eps(out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """Invert [x; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps] (Salimans & Ho 2022, eq. 4 for any alpha, sigma)."""
    r2 = c.alpha**2 + c.sigma**2
    return (c.alpha * x - c.sigma * out) / r2, (c.sigma * x + c.alpha * out) / r2


def v_from_x0_eps(x0: Tensor, eps: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """v = alpha eps - sigma x0."""
    return c.alpha * eps - c.sigma * x0


# --- score -----------------------------------------------------------------------------------------
def score_to_x0_eps(out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """eps = -sigma score; x0 by Tweedie's formula (x + sigma^2 score) / alpha."""
    return (x + c.sigma**2 * out) / c.alpha, -c.sigma * out


def score_from_x0_eps(x0: Tensor, eps: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """score = grad log p_t(x) = -eps / sigma."""
    return -eps / c.sigma


# --- velocity (flow matching / rectified flow) --------------------------------------------------
def velocity_to_x0_eps(out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """Invert [x; u] = [[alpha, sigma], [alpha', sigma']] [x0; eps]; for rectified flow x0 = x - t u."""
    det = c.alpha * c.dsigma - c.sigma * c.dalpha
    return (c.dsigma * x - c.sigma * out) / det, (c.alpha * out - c.dalpha * x) / det


def velocity_from_x0_eps(x0: Tensor, eps: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """u = alpha' x0 + sigma' eps, which in expectation is the probability-flow ODE drift."""
    return c.dalpha * x0 + c.dsigma * eps


_TO = {
    "eps": eps_to_x0_eps,
    "x0": x0_to_x0_eps,
    "v": v_to_x0_eps,
    "score": score_to_x0_eps,
    "velocity": velocity_to_x0_eps,
}
_FROM = {
    "eps": eps_from_x0_eps,
    "x0": x0_from_x0_eps,
    "v": v_from_x0_eps,
    "score": score_from_x0_eps,
    "velocity": velocity_from_x0_eps,
}
PREDICTIONS: tuple[str, ...] = tuple(_TO)


def check_prediction(kind: str) -> str:
    if kind not in _TO:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {list(PREDICTIONS)}")
    return kind


def to_x0_eps(kind: str, out: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """Convert a network output of the given kind to (x0, eps)."""
    return _TO[check_prediction(kind)](out, x, c)


def from_x0_eps(kind: str, x0: Tensor, eps: Tensor, x: Tensor, c: Coefficients) -> Tensor:
    """Express (x0, eps) as the given kind."""
    return _FROM[check_prediction(kind)](x0, eps, x, c)
