"""Accuracy and cost of kuosan.likelihood.ode_nll's options on exact Gaussian mixtures, so a user can choose.

    .venv/bin/python benchmarks/likelihood.py             # 2-D and 8-D mixtures, VP, VE and DiscreteVP, 64 samples
    .venv/bin/python benchmarks/likelihood.py --quick     # 16 samples, VP and VE only
    .venv/bin/python benchmarks/likelihood.py --dims 32   # where Hutchinson pays: D VJPs vs n_probes
    .venv/bin/python benchmarks/likelihood.py --vlb       # + the DDPM bound's gap to the exact NLL (N = 1000)

Every row integrates the PF-ODE from t_min to t_max for the same samples of the mixture and is scored against
the closed form -log p_{t_min}(x) (GaussianMixture.log_prob at the start time). The true p_T is used as the
prior so the error is the solver's and the estimator's alone; the last line of each block gives what the
process prior N(0, prior_std^2 I) adds on top (the model's own mismatch at t_max, the same for every row).
Columns: NFE per solve (a batch shares one solve), milliseconds per sample (wall clock / batch, torch on one
thread), mean and max |error| in nats per sample, and the mean signed error over the samples with its standard
error: what a dataset average would be off by. Hutchinson is unbiased (tests/test_likelihood.py); its rows use
the same probes in every block.
"""

from __future__ import annotations

import argparse
import time

import torch

from kuosan.analytic import GaussianMixture
from kuosan.likelihood import ddpm_vlb, ode_nll
from kuosan.processes import VE, VP, DiscreteVP

F64 = torch.float64

ROWS: list[tuple[str, dict]] = [
    ("exact rk45 rtol 1e-5", dict(rtol=1e-5, atol=1e-5)),
    ("exact rk45 rtol 1e-5 (in t)", dict(rtol=1e-5, atol=1e-5, time_variable="t")),
    ("exact rk45 rtol 1e-3", dict(rtol=1e-3, atol=1e-3)),
    ("hutchinson x1 rademacher rk45 1e-5", dict(divergence="hutchinson", n_probes=1, probe="rademacher")),
    ("hutchinson x8 rademacher rk45 1e-5", dict(divergence="hutchinson", n_probes=8, probe="rademacher")),
    ("hutchinson x1 gaussian rk45 1e-5", dict(divergence="hutchinson", n_probes=1, probe="gaussian")),
    ("hutchinson x8 gaussian rk45 1e-5", dict(divergence="hutchinson", n_probes=8, probe="gaussian")),
    ("exact euler 32", dict(method="euler", steps=32)),
    ("exact euler 128", dict(method="euler", steps=128)),
    ("exact heun 16", dict(method="heun", steps=16)),
    ("exact heun 64", dict(method="heun", steps=64)),
    ("exact rk4 8", dict(method="rk4", steps=8)),
    ("exact rk4 16", dict(method="rk4", steps=16)),
    ("exact rk4 32", dict(method="rk4", steps=32)),
]


def mixture_2d() -> GaussianMixture:
    """Three tilted 2-D Gaussians (the mixture of tests/conftest.py)."""
    means = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], dtype=F64)
    covs = torch.tensor(
        [[[0.30, 0.12], [0.12, 0.20]], [[0.10, -0.05], [-0.05, 0.25]], [[0.40, 0.0], [0.0, 0.05]]], dtype=F64
    )
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64), means, covs)


def mixture_nd(D: int = 8, seed: int = 0) -> GaussianMixture:
    """Four random D-dim Gaussians with random full covariances A A^T / D + 0.05 I (D = 8: tests/conftest.py)."""
    g = torch.Generator().manual_seed(seed)
    K = 4
    weights = torch.rand(K, generator=g, dtype=F64) + 0.2
    means = 1.5 * torch.randn(K, D, generator=g, dtype=F64)
    A = torch.randn(K, D, D, generator=g, dtype=F64)
    return GaussianMixture(weights, means, A @ A.transpose(1, 2) / D + 0.05 * torch.eye(D, dtype=F64))


def run_block(gmm: GaussianMixture, proc, n: int) -> list[str]:
    x = gmm.sample(n, generator=torch.Generator().manual_seed(1))
    ref = -gmm.log_prob(x, proc.t_min, proc)
    prior = lambda z: gmm.log_prob(z, proc.t_max, proc)  # noqa: E731
    model = gmm.denoiser(proc)
    for divergence in ("exact", "hutchinson"):  # warm up autograd's batched backward before timing
        ode_nll(model, x[:2], divergence, method="euler", steps=1)
    lines = []
    for name, kw in ROWS:
        model.reset_nfe()
        start = time.perf_counter()
        nll = ode_nll(model, x, prior_log_prob=prior, generator=torch.Generator().manual_seed(2), **kw)
        ms = (time.perf_counter() - start) * 1e3 / n
        err = nll - ref
        lines.append(
            f"| {name:<34} | {model.nfe:>5} | {ms:>7.2f} | {err.abs().mean():.1e} | {err.abs().max():.1e} | "
            f"{err.mean():+.1e} ({err.std() / n**0.5:.0e}) |"
        )
    mismatch = (ode_nll(model, x) - ode_nll(model, x, prior_log_prob=prior)).abs()
    lines.append(f"| process prior instead of true p_T: + | | | {mismatch.mean():.1e} | {mismatch.max():.1e} | |")
    return lines


def vlb_block(gmm: GaussianMixture, n: int) -> list[str]:
    """DDPM bound (continuous Gaussian decoder, nats) minus the exact -log p_0(x) on N = 1000 linear DiscreteVP."""
    x = gmm.sample(n, generator=torch.Generator().manual_seed(1))
    nll = -gmm.log_prob(x)
    model = gmm.denoiser(DiscreteVP.linear())
    lines = []
    for variance in ("beta", "beta_tilde"):
        start = time.perf_counter()
        gap = ddpm_vlb(
            model, x, decoder="gaussian", variance=variance, bits=False, generator=torch.Generator().manual_seed(3)
        )
        ms = (time.perf_counter() - start) * 1e3 / n
        gap = gap - nll
        lines.append(f"| {variance:<10} | {nll.mean():.3f} | {gap.mean():+.3f} ({gap.std() / n**0.5:.3f}) | {ms:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 samples, VP and VE only")
    ap.add_argument("--n", type=int, default=None, help="samples per block (default 64, quick 16)")
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 8], help="mixture dimensions (2 is the tilted 2-D one)")
    ap.add_argument("--vlb", action="store_true", help="also the DDPM bound's gap to the exact NLL (4096 samples)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.n or (16 if args.quick else 64)
    procs = {"VP": VP(), "VE": VE()} if args.quick else {"VP": VP(), "VE": VE(), "DiscreteVP": DiscreteVP.linear()}
    for dim in args.dims:
        gmm = mixture_2d() if dim == 2 else mixture_nd(dim)
        for proc in procs.values():
            print(f"\n{dim}-D mixture, {proc!r}, {n} samples, time variable log-SNR unless noted")
            print("| method | NFE | ms/sample | mean abs err | max abs err | mean err (s.e.) |")
            print("|---|---:|---:|---:|---:|---:|")
            for line in run_block(gmm, proc, n):
                print(line, flush=True)
        if args.vlb:
            print(f"\n{dim}-D mixture, DDPM bound on DiscreteVP.linear(1000), 4096 samples, one x_t draw per term")
            print("| variance | exact NLL (nats) | bound - NLL (s.e.) | ms/sample |")
            print("|---|---:|---:|---:|")
            for line in vlb_block(gmm, 4096):
                print(line, flush=True)


if __name__ == "__main__":
    main()
