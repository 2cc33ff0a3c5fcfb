"""The scoring of benchmarks/samplers.py: the fraction of trajectories that end in another component than the
exact endpoint, and the paired bootstrap interval of the best-kuosan / best-peer RMS ratio. Checked on cases
whose answers are known by construction."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kuosan.analytic import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from samplers import _print_table, _score, ratio_interval  # noqa: E402

F64 = torch.float64


@pytest.fixture()
def gmm() -> GaussianMixture:
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=F64)
    return GaussianMixture(torch.ones(2, dtype=F64), means, torch.full((2, 2), 0.1, dtype=F64))


def test_score_counts_flips_and_rms(gmm):
    ref = torch.tensor([[-3.0, 0.0]] * 4, dtype=F64)
    x = ref.clone()
    x[0] = torch.tensor([3.0, 0.0])  # ends in the other component: distance 6
    x[1] += torch.tensor([0.0, 2.0])  # moved 2 but still nearest the same component
    rms, flips, sq = _score(gmm, x, ref)
    assert flips == pytest.approx(0.25)
    assert sq.tolist() == pytest.approx([18.0, 2.0, 0.0, 0.0])  # squared distance / dimension
    assert rms == pytest.approx((20.0 / 4) ** 0.5)


def test_ratio_interval_is_exact_for_a_proportional_pair():
    g = torch.Generator().manual_seed(0)
    sq_peer = torch.rand(500, generator=g, dtype=F64) ** 4  # heavy-tailed per-trajectory errors
    ours, peer = (0.5 * sq_peer.mean().sqrt().item(), 0.0, 0.25 * sq_peer), (sq_peer.mean().sqrt().item(), 0.0, sq_peer)
    assert ratio_interval(ours, peer) == "**0.50** (0.50-0.50)"  # every resample keeps the ratio: a zero-width interval


def test_ratio_interval_covers_the_estimate_and_widens_with_a_rare_outlier():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1000, generator=g, dtype=F64), torch.rand(1000, generator=g, dtype=F64)

    def interval(sq_a: torch.Tensor) -> tuple[float, float, float]:
        text = ratio_interval((sq_a.mean().sqrt().item(), 0.0, sq_a), (b.mean().sqrt().item(), 0.0, b))
        est, rest = text.split(" ", 1)
        lo, hi = (float(v) for v in rest.strip("()").split("-"))
        return float(est.strip("*")), lo, hi

    est, lo, hi = interval(a)
    assert lo <= est <= hi and hi - lo < 0.15
    a[0] = 400.0  # one trajectory carries most of the squared error
    est2, lo2, hi2 = interval(a)
    assert lo2 <= est2 <= hi2 and hi2 - lo2 > 3 * (hi - lo)


def test_table_ranks_by_rms_and_prints_flips(capsys):
    sq = torch.ones(8, dtype=F64)
    rows = {"kuosan a": [(0.5, 0.01, 0.25 * sq)], "kuosan b": [(0.7, 0.0, 0.49 * sq)],
            "diffusers c": [(1.0, 0.05, sq)], "k-diffusion d": [(2.0, 0.1, 4 * sq)]}
    _print_table(rows, [5])
    out = capsys.readouterr().out
    assert "| kuosan a | 5.00e-01 / 1.0% |" in out
    assert "| **best kuosan / best peer** | **0.50** (0.50-0.50) |" in out
