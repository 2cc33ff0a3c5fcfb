"""The multistep consistency sampler (CM Alg. 1) on an exact consistency function.

For Gaussian data N(mu, s0^2) the probability-flow ODE of every process is affine, so its endpoint map
f(x_t, t) = x_{t_min} is known in closed form:
    x_{t_min} = alpha_min mu + sqrt((alpha_min^2 s0^2 + sigma_min^2) / (alpha_t^2 s0^2 + sigma_t^2)) (x_t - alpha_t mu).
Returned as an x0 (divided by alpha_min), its samples are N(mu, s0^2 + (sigma_min/alpha_min)^2) exactly, after one
evaluation or several (each re-noising is the exact forward transition from t_min, so the marginal is kept).
"""

from __future__ import annotations

import pytest
import torch
from conftest import F64, make_process

import kuosan

pytestmark = pytest.mark.usefixtures("one_thread")

MU, S0, N = 0.7, 0.3, 200_000


def endpoint_map(proc, mu: float = MU, s0: float = S0):
    """The exact consistency function of N(mu, s0^2) data under `proc`, as an x0 (x_{t_min} / alpha_min)."""
    tmin = torch.tensor(proc.t_min, dtype=F64)
    am, sm = proc.alpha(tmin), proc.sigma(tmin)

    def f(x, t):
        t = t.to(F64)
        a, s = proc.alpha(t)[:, None], proc.sigma(t)[:, None]
        ratio = ((am**2 * s0**2 + sm**2) / (a**2 * s0**2 + s**2)).sqrt()
        return ((am * mu + ratio * (x.to(F64) - a * mu)) / am).to(x.dtype)

    return f, float((s0**2 + (sm / am) ** 2) ** 0.5)


@pytest.mark.parametrize("name", ["EDM", "DiscreteVP.linear", "VP", "SubVP", "VE", "RectifiedFlow"])
@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_exact_consistency_function_samples_the_data(name, nfe):
    proc = make_process(name)
    f, sd = endpoint_map(proc)
    den = kuosan.Denoiser(f, proc, prediction="x0")
    g = torch.Generator().manual_seed(nfe)
    x_T = proc.prior_sample((N, 1), generator=g, dtype=torch.float32)
    x = kuosan.sample(den, x_T, method="consistency", nfe=nfe, generator=g)
    assert den.nfe == nfe  # one evaluation per step, no final denoise
    se_mean, se_sd = sd / N**0.5, sd / (2 * N) ** 0.5
    assert abs(x.mean().item() - MU) < 5 * se_mean + 1e-3
    assert abs(x.std().item() - sd) < 5 * se_sd + 1e-3


def test_a_wrong_function_is_not_corrected_by_steps():
    """The endpoint map of other data (s0 doubled) samples that data, not ours: the check above can fail."""
    proc = make_process("EDM")
    f, sd = endpoint_map(proc, mu=MU, s0=2 * S0)  # consistency function of other data
    den = kuosan.Denoiser(f, proc, prediction="x0")
    g = torch.Generator().manual_seed(0)
    x = kuosan.sample(den, proc.prior_sample((N, 1), generator=g, dtype=torch.float32), method="consistency",
                      nfe=2, generator=g)
    assert abs(x.std().item() - S0) > 0.2


def test_evaluation_times_are_the_grid_without_its_endpoint():
    proc = make_process("EDM")
    f, _ = endpoint_map(proc)
    seen = []
    den = kuosan.Denoiser(lambda x, t: (seen.append(float(t[0])), f(x, t))[1], proc, prediction="x0")
    grid = torch.tensor([80.0, 2.0, 0.5, 0.002], dtype=F64)
    kuosan.sample(den, torch.randn(4, 1) * 80, method="consistency", nfe=None, grid=grid)
    assert seen == pytest.approx([80.0, 2.0, 0.5])
