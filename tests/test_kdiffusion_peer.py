"""k-diffusion's own samplers (the code behind AUTOMATIC1111 and ComfyUI; installed by `make test` without its
training dependencies, benchmarks/kdiffusion_peer.py) against kuosan's on the same exact Gaussian-mixture model.

Both tools see one function of the noise level, D(x, sigma) (kdiffusion_peer.sigma_model), so a difference is
a difference of update rule or grid. On k-diffusion's own sigmas the update rules agree to float64 round-off;
through `kuosan.samplers.resolve` of the k-diffusion name (kuosan's own grid) to the float32 rounding of
k-diffusion's sigma schedules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import F64, mixture_2d

import kuosan
from kuosan.processes import DiscreteVP
from kuosan.samplers import NoEquivalent, resolve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kdiffusion_peer import k_diffusion, sigma_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# (k-diffusion sampler, its sigma schedule, network evaluations of an n-step run)
CASES = [("dpmpp_2m", "karras", lambda n: n), ("dpmpp_2m", "exponential", lambda n: n),
         ("euler", "karras", lambda n: n), ("heun", "karras", lambda n: 2 * n - 1)]


@pytest.fixture(scope="module")
def K():
    k = k_diffusion()
    assert k is not None, "k-diffusion is not installed: `make test` installs k-diffusion==0.1.1.post1 --no-deps"
    return k


def _setup(betas: str):
    proc = getattr(DiscreteVP, betas)()
    den = mixture_2d().denoiser(proc, "eps")
    x_T = torch.randn(128, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    ends = torch.tensor([proc.t_min, proc.t_max], dtype=F64)
    s_min, s_max = (proc.sigma(ends) / proc.alpha(ends)).tolist()
    return proc, den, x_T, s_min, s_max, float(proc.alpha(ends[1:]))


@pytest.mark.parametrize("betas", ["linear", "scaled_linear"])
@pytest.mark.parametrize("name,schedule,nfe_of", CASES)
@pytest.mark.parametrize("steps", [4, 9])
def test_resolved_name_equals_k_diffusion(K, betas, name, schedule, nfe_of, steps):
    proc, den, x_T, s_min, s_max, a_max = _setup(betas)
    sigmas = getattr(K.sampling, f"get_sigmas_{schedule}")(steps, s_min, s_max).to(F64)
    run = getattr(K.sampling, f"sample_{name}")
    theirs = run(sigma_model(den), x_T / a_max, sigmas, disable=True)
    r = resolve(f"{name} {schedule}")
    assert r.exact, r
    grid = {"grid": r.grid} if r.grid else {}
    den.reset_nfe()
    ours = kuosan.sample(den, x_T, r.method, nfe=nfe_of(steps), **grid, **r.options)
    assert den.nfe == nfe_of(steps)
    # k-diffusion builds its sigma schedules in float32: the grids agree to ~1e-7 relative
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    # on k-diffusion's own sigmas (as kuosan times) the update rules agree to round-off
    ts = proc.t_of_log_snr(-torch.log(sigmas[:-1]))
    theirs = run(sigma_model(den), x_T / proc.alpha(ts[:1]), sigmas, disable=True)  # x_T at ts[0]
    ours = kuosan.sample(den, x_T, r.method, nfe=nfe_of(steps), grid=ts, **r.options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_lms_has_no_equivalent_and_names_the_closest():
    with pytest.raises(NoEquivalent, match="closest"):
        resolve("lms karras")
