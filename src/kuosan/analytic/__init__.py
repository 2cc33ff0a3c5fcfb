"""Closed-form distributions and the chapter-3 stochastic-calculus tools: the ground truth of every test."""

from .mixture import Gaussian, GaussianMixture

__all__ = ["Gaussian", "GaussianMixture"]
