"""Sample-quality metrics: Frechet distance, KID, improved precision/recall, sliced Wasserstein and MMD.

Each metric compares two sets of vectors (features of images, or the points themselves for low-dimensional
data), given as arrays or tensors of shape (N, D). Everything is computed in float64 on the CPU or the
inputs' device; results are python floats.

    frechet_distance(real, fake)            FID's formula on any features (Heusel et al. 2017)
    kid(real, fake)                         unbiased MMD^2 with the cubic polynomial kernel (Binkowski 2018)
    precision_recall(real, fake, k=3)       k-NN manifolds (Kynkaanniemi et al. 2019)
    sliced_wasserstein(x, y), mmd(x, y)     for 2-D toy data and other low-dimensional sets
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_features",
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_gaussians",
    "frechet_distance_bootstrap",
    "frechet_distance_infinity",
    "kid",
    "mmd",
    "polynomial_kernel",
    "gaussian_kernel",
    "precision_recall",
    "sliced_wasserstein",
    "wasserstein_1d",
]

F64 = torch.float64


def as_features(x: Any) -> Tensor:
    """(N, ...) array or tensor -> (N, D) float64 tensor."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    return x.detach().reshape(x.shape[0], -1).to(F64)


# --- Frechet distance ------------------------------------------------------------------------------------


def gaussian_stats(feats: Any) -> tuple[Tensor, Tensor]:
    """Mean mu (D,) and unbiased covariance Sigma (D, D) of the Gaussian fitted to features (N, D)."""
    f = as_features(feats)
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(S: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix by eigen-decomposition."""
    w, V = torch.linalg.eigh((S + S.T) / 2)
    return (V * w.clamp(min=0).sqrt()) @ V.T


def frechet_distance_gaussians(mu1: Any, S1: Any, mu2: Any, S2: Any) -> float:
    """Frechet (W2^2) distance between N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017, arXiv:1706.08500, eq. 6).

        d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})

    tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the product is similar to a symmetric PSD matrix,
    so the trace is the sum of square roots of its (real, clamped) eigenvalues: no complex sqrtm needed.
    """
    mu1, mu2 = torch.as_tensor(np.asarray(mu1), dtype=F64), torch.as_tensor(np.asarray(mu2), dtype=F64)
    S1, S2 = torch.as_tensor(np.asarray(S1), dtype=F64), torch.as_tensor(np.asarray(S2), dtype=F64)
    r1 = _psd_sqrt(S1)
    M = r1 @ S2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((M + M.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + torch.trace(S1) + torch.trace(S2) - 2 * tr_sqrt
    return float(d2.clamp(min=0))


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D), (M, D): FID's formula."""
    return frechet_distance_gaussians(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def frechet_distance_bootstrap(
    feats: Any, ref_feats: Any, n_boot: int = 100, generator: torch.Generator | None = None
) -> float:
    """Standard deviation of the Frechet distance to a fixed reference over bootstrap resamples of `feats`
    (Efron 1979): how much FD moves with the draw of the generated set alone, the error bar for comparing two
    samplers against the same reference. Resampling with replacement repeats points, so the bootstrap FDs sit
    slightly above the FD itself; their spread is what is used."""
    f = as_features(feats)
    mu2, S2 = gaussian_stats(ref_feats)
    g = generator or torch.Generator().manual_seed(0)
    values = []
    for _ in range(n_boot):
        idx = torch.randint(len(f), (len(f),), generator=g)
        values.append(frechet_distance_gaussians(*gaussian_stats(f[idx]), mu2, S2))
    return float(torch.tensor(values, dtype=F64).std())


def frechet_distance_infinity(
    feats: Any, ref_feats: Any, n_sizes: int = 15, min_fraction: float = 0.2, generator: torch.Generator | None = None
) -> float:
    """FD_inf, the Frechet distance with the generated set's small-sample bias removed (Chong & Forsyth 2020,
    arXiv:1911.07023, §3.1): E[FD_N] = FD_inf + k/N, so FD is measured on random subsets of `n_sizes` sizes
    from min_fraction * N to N (drawn without replacement), a line is fitted against 1/N by least squares, and
    its intercept is returned. Unbiased to first order, hence noisier than FD and possibly slightly negative
    when the true distance is near 0. The reference set's own bias (its finite size) is not removed."""
    f = as_features(feats)
    n = len(f)
    lo = max(int(min_fraction * n), f.shape[1] + 2)  # the smallest subset still has a full-rank covariance
    if lo >= n:
        raise ValueError(f"FD_inf needs more than {f.shape[1] + 2} samples for {f.shape[1]}-d features, got {n}")
    sizes = np.unique(np.linspace(lo, n, n_sizes).astype(int))
    mu2, S2 = gaussian_stats(ref_feats)
    g = generator or torch.Generator().manual_seed(0)
    fds = [frechet_distance_gaussians(*gaussian_stats(f[torch.randperm(n, generator=g)[:m]]), mu2, S2) for m in sizes]
    design = np.stack([np.ones(len(sizes)), 1.0 / sizes], axis=1)
    intercept, _slope = np.linalg.lstsq(design, np.asarray(fds), rcond=None)[0]
    return float(intercept)


# --- kernel two-sample statistics ------------------------------------------------------------------------


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, c: float = 1.0) -> Tensor:
    """k(x, y) = (gamma x.y + c)^degree with gamma = 1/D (KID's kernel, Binkowski et al. 2018, §3)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return torch.addmm(torch.full((), c, dtype=x.dtype), x, y.T, alpha=gamma).pow_(degree)


def gaussian_kernel(x: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    """k(x, y) = exp(-||x - y||^2 / (2 h^2))."""
    return torch.exp(-torch.cdist(x, y).square() / (2 * bandwidth**2))


def _mmd2_unbiased(Kxx: Tensor, Kyy: Tensor, Kxy: Tensor) -> Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, JMLR, Lemma 6): diagonals dropped from the within-set means.

        MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1)) - 2 mean k(x_i, y_j)
    """
    m, n = Kxx.shape[0], Kyy.shape[0]
    xx = (Kxx.sum() - Kxx.diagonal().sum()) / (m * (m - 1))
    yy = (Kyy.sum() - Kyy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2 * Kxy.mean()


def mmd(x: Any, y: Any, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with a Gaussian kernel (Gretton et al. 2012); bandwidth defaults to the median distance."""
    x, y = as_features(x), as_features(y)
    if bandwidth is None:
        bandwidth = float(torch.cdist(x, y).median())
    k = lambda a, b: gaussian_kernel(a, b, bandwidth)  # noqa: E731
    return float(_mmd2_unbiased(k(x, x), k(y, y), k(x, y)))


def kid(
    feats_a: Any,
    feats_b: Any,
    n_subsets: int = 50,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, arXiv:1801.01401, §3): mean and std over subsets
    of the unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3."""
    a, b = as_features(feats_a), as_features(feats_b)
    m = min(subset_size, a.shape[0], b.shape[0])
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    values = []
    for _ in range(n_subsets):
        x = a[torch.randperm(a.shape[0], generator=g)[:m]]
        y = b[torch.randperm(b.shape[0], generator=g)[:m]]
        k = polynomial_kernel
        values.append(_mmd2_unbiased(k(x, x), k(y, y), k(x, y)))
    v = torch.stack(values)
    return float(v.mean()), float(v.std()) if len(values) > 1 else 0.0


# --- improved precision and recall -----------------------------------------------------------------------


def _knn_radii(x: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance from each point to its k-th nearest neighbour in its own set (the point itself excluded)."""
    return torch.cat([torch.cdist(x[i : i + chunk], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), chunk)])


def _coverage(points: Tensor, support: Tensor, radii: Tensor, chunk: int = 2048) -> float:
    """Fraction of points inside the union of balls B(support_j, radii_j)."""
    inside = [
        (torch.cdist(points[i : i + chunk], support) <= radii).any(dim=1) for i in range(0, len(points), chunk)
    ]
    return float(torch.cat(inside).to(F64).mean())


def precision_recall(real: Any, fake: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, arXiv:1904.06991, eq. 1-2).

    The manifold of a set is the union of balls around its points with radius the distance to the k-th
    nearest neighbour. precision = share of fake points on the real manifold; recall = share of real
    points on the fake manifold.
    """
    real, fake = as_features(real), as_features(fake)
    precision = _coverage(fake, real, _knn_radii(real, k))
    recall = _coverage(real, fake, _knn_radii(fake, k))
    return precision, recall


# --- sliced Wasserstein ----------------------------------------------------------------------------------


def wasserstein_1d(u: Tensor, v: Tensor, p: float = 2.0) -> Tensor:
    """Exact W_p^p between 1-D empirical distributions (..., n) and (..., m) by matching quantiles.

        W_p^p = int_0^1 |F^-1(q) - G^-1(q)|^p dq

    Both quantile functions are step functions with steps at i/n and j/m: the integral is a finite sum
    over the merged steps. For n = m this is the sorted matching mean |u_(i) - v_(i)|^p.
    """
    u, v = u.sort(dim=-1).values, v.sort(dim=-1).values
    n, m = u.shape[-1], v.shape[-1]
    if n == m:
        return (u - v).abs().pow(p).mean(-1)
    q = torch.cat([torch.arange(1, n + 1, dtype=F64) / n, torch.arange(1, m, dtype=F64) / m]).sort().values
    dq = torch.diff(q, prepend=q.new_zeros(1))
    mid = q - dq / 2
    iu = (mid * n).long().clamp(max=n - 1).to(u.device)
    iv = (mid * m).long().clamp(max=m - 1).to(v.device)
    return ((u[..., iu] - v[..., iv]).abs().pow(p) * dq.to(u.device)).sum(-1)


def sliced_wasserstein(
    x: Any, y: Any, n_projections: int = 256, p: float = 2.0, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein distance (Bonneel et al. 2015; Rabin et al. 2011):

        SW_p(x, y) = ( E_{theta ~ U(S^{D-1})} W_p^p(theta.x, theta.y) )^{1/p}

    estimated with `n_projections` random directions and the exact 1-D distance on each.
    """
    x, y = as_features(x), as_features(y)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=F64).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    w = wasserstein_1d((x @ theta).T, (y @ theta).T, p)  # (n_projections,)
    return float(w.mean() ** (1 / p))

