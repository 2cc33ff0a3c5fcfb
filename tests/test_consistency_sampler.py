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


# --- TCD's strategic stochastic sampling (gamma) --------------------------------------------------------------
def test_gamma_one_is_the_consistency_rule_bit_for_bit():
    proc = make_process("DiscreteVP.linear")
    den = kuosan.Denoiser(endpoint_map(proc)[0], proc, prediction="x0")
    x_T = proc.prior_sample((64, 1), generator=torch.Generator().manual_seed(0), dtype=F64)
    a, b = (kuosan.sample(den, x_T, method="consistency", nfe=4, generator=torch.Generator().manual_seed(1), **o)
            for o in ({}, {"gamma": 1.0}))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["DiscreteVP.linear", "EDM"])
def test_gamma_zero_is_ddim_on_the_students_x0(name):
    """No fresh noise: each step is the DDIM step of the model's (x0, eps), so on the same evaluation times the
    result is kuosan's ddim with its final x0 prediction (an exact mixture as the model)."""
    from conftest import mixture_2d

    proc = make_process(name)
    model = mixture_2d().denoiser(proc, "eps")
    grid = proc.timesteps(4, "logsnr")  # 5 times, the last t_min: 4 evaluations
    x_T = proc.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    tcd = kuosan.sample(model, x_T, method="consistency", nfe=None, grid=grid, gamma=0.0,
                        generator=torch.Generator().manual_seed(1))
    ddim = kuosan.sample(model, x_T, method="ddim", nfe=None, grid=grid[:-1])
    assert (tcd - ddim).abs().max().item() < 1e-10


def test_gamma_step_by_hand():
    """nfe = 2, gamma = 0.4 on the exact consistency function: x0, eps at t0; the DDIM point at
    s = 0.6 t1 + 0.4 t_min; forward to t1 with the generator's noise; x0 there (TCD Alg. 4)."""
    proc = make_process("DiscreteVP.linear")
    f, _ = endpoint_map(proc)
    den = kuosan.Denoiser(f, proc, prediction="x0")
    t0, t1, tmin = 1.0, 0.4, proc.t_min
    grid = torch.tensor([t0, t1, tmin], dtype=F64)
    x_T = proc.prior_sample((16, 1), generator=torch.Generator().manual_seed(0), dtype=F64)
    got = kuosan.sample(den, x_T, method="consistency", nfe=None, grid=grid, gamma=0.4,
                        generator=torch.Generator().manual_seed(5))

    def at(t):
        return torch.full((16,), t, dtype=F64)

    a = lambda t: proc.alpha(torch.tensor(t, dtype=F64)).item()  # noqa: E731
    sg = lambda t: proc.sigma(torch.tensor(t, dtype=F64)).item()  # noqa: E731
    x0 = f(x_T, at(t0))
    eps = (x_T - a(t0) * x0) / sg(t0)
    s = 0.6 * t1 + 0.4 * tmin
    x_s = a(s) * x0 + sg(s) * eps
    a_ts = a(t1) / a(s)
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    x1 = a_ts * x_s + (sg(t1) ** 2 - a_ts**2 * sg(s) ** 2) ** 0.5 * z
    assert torch.allclose(got, f(x1, at(t1)), atol=1e-10, rtol=0)


def test_gamma_outside_the_unit_interval_is_refused():
    proc = make_process("EDM")
    den = kuosan.Denoiser(endpoint_map(proc)[0], proc, prediction="x0")
    with pytest.raises(ValueError, match="gamma.*\\[0, 1\\].*1.5"):
        kuosan.sample(den, torch.randn(4, 1) * 80, method="consistency", nfe=2, gamma=1.5)
