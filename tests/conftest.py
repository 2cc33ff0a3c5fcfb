"""Shared fixtures: every process of the book under one id, seeded generators, exact Gaussian mixtures.

    def test_x(process): ...                      # runs once per process, ids as in PROCESS_IDS
    @pytest.mark.parametrize("process", ["VP", "EDM"], indirect=True)   # a subset
    def test_y(processes): processes["VE"]         # all of them, by id
    def test_z(gmm2d, gmm8d, gen): ...             # 2-D / 8-D mixtures with full covariances; gen(seed)

Helpers importable from tests (`from conftest import ...`): make_process, interior_times, PROCESS_IDS, F64.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from kuosan.analytic import GaussianMixture
from kuosan.processes import EDM, VE, VP, DiscreteVP, Process, RectifiedFlow, SubVP

F64 = torch.float64

_FACTORIES: dict[str, Callable[[], Process]] = {
    "DiscreteVP.linear": DiscreteVP.linear,
    "DiscreteVP.scaled_linear": DiscreteVP.scaled_linear,
    "DiscreteVP.cosine": DiscreteVP.cosine,
    "VP": VP,
    "SubVP": SubVP,
    "VE": VE,
    "EDM": EDM,
    "RectifiedFlow": RectifiedFlow,
}
PROCESS_IDS: tuple[str, ...] = tuple(_FACTORIES)


def make_process(name: str) -> Process:
    """A fresh process by id (the defaults of the book / DESIGN.md)."""
    return _FACTORIES[name]()


def interior_times(proc: Process, n: int = 5, lam_max: float = 5.0, lam_min: float = -5.0) -> Tensor:
    """n ascending float64 times inside (t_min, t_max), equally spaced in log-SNR, clipped to |lambda| <= 5.

    Avoids the end points where a process is singular (rectified flow's alpha(1) = 0, VE's sigma(0) = sigma_min).
    """
    ends = proc.log_snr(torch.tensor([proc.t_min, proc.t_max], dtype=F64))
    hi, lo = min(float(ends[0]), lam_max), max(float(ends[1]), lam_min)
    lam = torch.linspace(hi, lo, n + 2, dtype=F64)[1:-1]
    return proc.t_of_log_snr(lam)



@pytest.fixture(params=PROCESS_IDS)
def process(request) -> Process:
    """Each process of the book in turn (ids: DiscreteVP.linear, ..., RectifiedFlow)."""
    return make_process(request.param)


@pytest.fixture
def processes() -> dict[str, Process]:
    """All processes at once, keyed by id."""
    return {name: make_process(name) for name in PROCESS_IDS}


@pytest.fixture
def gen() -> Callable[[int], torch.Generator]:
    """gen(seed) -> a fresh seeded CPU generator."""
    return lambda seed=0: torch.Generator().manual_seed(seed)


def mixture_2d() -> GaussianMixture:
    """Three tilted, unequal 2-D Gaussians with unequal weights (full covariances)."""
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    means = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype=F64)
    covs = torch.tensor(
        [[[0.30, 0.12], [0.12, 0.20]], [[0.10, -0.05], [-0.05, 0.25]], [[0.40, 0.00], [0.00, 0.05]]], dtype=F64
    )
    return GaussianMixture(weights, means, covs)


def mixture_8d(seed: int = 0) -> GaussianMixture:
    """Four random 8-D Gaussians with random full covariances A A^T / 8 + 0.05 I (seeded)."""
    g = torch.Generator().manual_seed(seed)
    K, D = 4, 8
    weights = torch.rand(K, generator=g, dtype=F64) + 0.2
    means = 1.5 * torch.randn(K, D, generator=g, dtype=F64)
    A = torch.randn(K, D, D, generator=g, dtype=F64)
    covs = A @ A.transpose(1, 2) / D + 0.05 * torch.eye(D, dtype=F64)
    return GaussianMixture(weights, means, covs)


@pytest.fixture
def gmm2d() -> GaussianMixture:
    return mixture_2d()


@pytest.fixture
def gmm8d() -> GaussianMixture:
    return mixture_8d()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and a shared CPU turns more into spin-waiting
    (use with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
