"""Closed-form distributions and the chapter-3 stochastic-calculus tools: the ground truth of every test."""

from .mixture import Gaussian, GaussianMixture
from .stochastic import (
    SDE,
    BrownianMotionWithDrift,
    GeometricBrownianMotion,
    OrnsteinUhlenbeck,
    brownian_path,
    euler_maruyama,
    ito_integral,
    milstein,
    quadratic_variation,
    stratonovich_integral,
)

__all__ = [
    "Gaussian",
    "GaussianMixture",
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
