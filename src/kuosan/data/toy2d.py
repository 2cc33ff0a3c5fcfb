"""Toy 2-D point clouds (book sec. 4.1 toy experiments; FFJORD, Grathwohl et al. 2019, arXiv:1810.01367):
each scaled to roughly unit standard deviation per axis, so N(0, I) priors fit them.

    toy2d("swiss_roll", 1000, generator=g)   # float32 (1000, 2)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..analytic import GaussianMixture

__all__ = ["TOY2D_NAMES", "toy2d", "toy_gmm"]


def _uniform(n: int, g: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def _normal(n: int, g: torch.Generator | None, d: int = 2) -> Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def swiss_roll(n: int, g: torch.Generator | None) -> Tensor:
    """The 2-D swiss roll: theta = 1.5 pi (1 + 2u), x = theta (cos theta, sin theta) + 0.5 noise, / 7.5."""
    theta = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
    x = theta[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    return (x + 0.5 * _normal(n, g)) / 7.5


def moons(n: int, g: torch.Generator | None) -> Tensor:
    """Two interleaved half circles (scikit-learn's make_moons) with 0.05 noise, centred and scaled by 1.4."""
    theta = math.pi * _uniform(n, g)
    upper = torch.rand(n, generator=g) < 0.5
    c, s = torch.cos(theta), torch.sin(theta)
    x = torch.where(upper[:, None], torch.stack([c, s], 1), torch.stack([1 - c, 0.5 - s], 1))
    return 1.4 * (x + 0.05 * _normal(n, g) - torch.tensor([0.5, 0.25], dtype=torch.float64))


def eight_gaussians(n: int, g: torch.Generator | None) -> Tensor:
    """Eight Gaussians of std 0.1 evenly on a circle of radius 1.4."""
    k = torch.randint(0, 8, (n,), generator=g).to(torch.float64)
    centre = 1.4 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return centre + 0.1 * _normal(n, g)


def checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard over [-sqrt 3, sqrt 3]^2 (unit std per axis)."""
    x1 = _uniform(n, g, -2.0, 2.0)
    x2 = _uniform(n, g) - 2.0 * torch.randint(0, 2, (n,), generator=g) + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * (math.sqrt(3) / 2)


def rings(n: int, g: torch.Generator | None) -> Tensor:
    """Four concentric circles of radii 0.5, 1, 1.5, 2 with 0.04 noise, equally likely."""
    r = 0.5 * torch.randint(1, 5, (n,), generator=g).to(torch.float64)
    theta = _uniform(n, g, 0.0, 2 * math.pi)
    return r[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1) + 0.04 * _normal(n, g)


def toy_gmm() -> GaussianMixture:
    """The default toy mixture: four unequal, differently shaped Gaussians whose every score is exact."""
    return GaussianMixture(
        weights=[0.35, 0.25, 0.25, 0.15],
        means=[[-1.0, -0.6], [1.1, -0.8], [0.9, 1.0], [-1.0, 1.1]],
        variances=[[[0.10, 0.06], [0.06, 0.10]], [[0.04, 0.0], [0.0, 0.15]], [[0.12, 0.0], [0.0, 0.03]],
                   [[0.05, -0.03], [-0.03, 0.05]]],
    )


def gmm(n: int, g: torch.Generator | None) -> Tensor:
    """A sample of toy_gmm()."""
    return toy_gmm().sample(n, generator=g)


_SETS = {
    "swiss_roll": swiss_roll,
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "rings": rings,
    "gmm": gmm,
}
TOY2D_NAMES: tuple[str, ...] = tuple(_SETS)


def toy2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points of the toy set `name` as float32 (n, 2); the same generator state gives the same points."""
    if name not in _SETS:
        raise ValueError(f"unknown toy 2-D data set {name!r}; choose one of {', '.join(TOY2D_NAMES)}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    return _SETS[name](n, generator).to(torch.float32)
