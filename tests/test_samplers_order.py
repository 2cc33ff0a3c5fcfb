"""Every ODE sampler converges to the probability-flow ODE endpoint with its theoretical order (book eq. 4.40).

The reference solves the PF-ODE of the exact Gaussian-mixture model tightly (DOP853, rtol = atol = 1e-12)
from the same x_T, in the variables x~ = x/alpha and lambda = log(alpha/sigma), where it reads
dx~/dlambda = x0(x) - x~ (rectified flow, whose lambda(1) = -inf, is solved in t with the velocity), and ends
with the same final denoise x0(x, t_min) as the samplers. The slope of log(error) against log(NFE) over a
range where the error is asymptotic must reach the method's order minus 0.3: a dropped factor in any
coefficient (the 1/2 of Heun, the 2 of DPM-Solver++(3M)'s second difference) drops the slope by one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import F64, make_process, mixture_2d
from scipy.integrate import solve_ivp

import kuosan
from kuosan.samplers import METHODS, BudgetExceeded

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(model: kuosan.Denoiser, x_T: torch.Tensor, rtol: float = 1e-12) -> torch.Tensor:
    """Tight PF-ODE endpoint from x_T at t_max to t_min, then x0(x, t_min)."""
    p, shape = model.process, x_T.shape
    t0, t1 = torch.tensor(p.t_max, dtype=F64), torch.tensor(p.t_min, dtype=F64)
    if not math.isfinite(p.log_snr(t0).item()):  # alpha(t_max) = 0: solve dx/dt = velocity in t instead

        def velocity(t: float, y: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(y).reshape(shape)
            return model.velocity(x, torch.full((shape[0],), t, dtype=F64)).flatten().numpy()

        sol = solve_ivp(velocity, (p.t_max, p.t_min), x_T.flatten().numpy(), method="DOP853", rtol=rtol, atol=rtol)
        x1 = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    else:

        def drift(lam: float, y: np.ndarray) -> np.ndarray:
            t = p.t_of_log_snr(torch.tensor(lam, dtype=F64))
            x = torch.from_numpy(y).reshape(shape) * p.alpha(t)
            return model.x0(x, t.expand(shape[0])).flatten().numpy() - y

        y0 = (x_T / p.alpha(t0)).flatten().numpy()
        lam = (p.log_snr(t0).item(), p.log_snr(t1).item())
        sol = solve_ivp(drift, lam, y0, method="DOP853", rtol=rtol, atol=rtol)
        x1 = torch.from_numpy(sol.y[:, -1]).reshape(shape) * p.alpha(t1)
    assert sol.success
    return model.x0(x1, t1.expand(shape[0]))


def setup(process_id: str, n: int = 8, seed: int = 0):
    """The 2-D mixture's exact model (velocity for rectified flow), x_T and the reference endpoint."""
    p = make_process(process_id)
    model = mixture_2d().denoiser(p, "velocity" if process_id == "RectifiedFlow" else "eps")
    x_T = p.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)
    return model, x_T, reference(model, x_T)


_CACHE: dict[str, tuple] = {}


def cached(process_id: str):
    if process_id not in _CACHE:
        _CACHE[process_id] = setup(process_id)
    return _CACHE[process_id]


def slope(method: str, process_id: str, nfes: list[int], **options) -> tuple[float, list[float]]:
    """Least-squares slope of -log(RMS endpoint error) against log(NFE)."""
    model, x_T, ref = cached(process_id)
    errs = []
    for nfe in nfes:
        model.reset_nfe()
        x = kuosan.sample(model, x_T, method, nfe=nfe, **options)
        assert model.nfe <= nfe
        errs.append((x - ref).square().mean().sqrt().item())
    return -np.polyfit(np.log(nfes), np.log(errs), 1)[0], errs


# NFE ranges in the asymptotic regime; singlestep k-th order methods get budgets with (nfe - 1) % k == 0
LOW = [9, 13, 17, 25, 33, 49, 65]
HIGH = [17, 25, 33, 49, 65, 97, 129]
THIRD = [13, 19, 25, 37, 49, 73, 97]
LATE = [25, 33, 49, 65, 97, 129, 193]  # eabm(2) + corrector on VE reaches its third order only past ~50 NFE
NFES = {"euler": LOW, "ddim": LOW, "dpm-solver-1": LOW, "heun": LOW, "dpm-solver-2": LOW, "dpmpp-2s": LOW,
        "dpmpp-2m": LOW, "flow-euler": LOW, "flow-midpoint": LOW, "dpm-solver-3": THIRD, "dpmpp-3m": HIGH,
        "unipc": HIGH, "eabm": LATE}
ODE = ["euler", "heun", "ddim", "dpm-solver-1", "dpm-solver-2", "dpm-solver-3", "dpmpp-2s", "dpmpp-2m", "dpmpp-3m",
       "unipc", "eabm"]
CASES = [(m, p) for p in ("DiscreteVP.linear", "VP") for m in ODE]
CASES += [(m, p) for p in ("VE", "EDM") for m in ("heun", "dpm-solver-3", "dpmpp-2m", "dpmpp-3m", "unipc", "eabm")]
CASES += [(m, p) for p in ("RectifiedFlow", "VP") for m in ("flow-euler", "flow-midpoint")]
CASES += [("euler", "RectifiedFlow"), ("dpmpp-2m", "RectifiedFlow")]


@pytest.mark.parametrize(("method", "process_id"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_convergence_order(method, process_id):
    """Fitted order >= theoretical order - 0.3 on the method's default grid."""
    order = METHODS[method].order
    k, errs = slope(method, process_id, NFES[method])
    assert k >= order - 0.3, f"{method} on {process_id}: slope {k:.2f} < {order} - 0.3; errors {errs}"


@pytest.mark.slow
@pytest.mark.parametrize("process_id", ["DiscreteVP.scaled_linear", "DiscreteVP.cosine", "SubVP", "VE", "EDM"])
@pytest.mark.parametrize("method", ODE + ["flow-euler", "flow-midpoint"])
def test_convergence_order_everywhere(method, process_id):
    """The sweep: every ODE method on every process with a finite log-SNR at t_max."""
    order = METHODS[method].order
    k, errs = slope(method, process_id, NFES[method])
    assert k >= order - 0.3, f"{method} on {process_id}: slope {k:.2f}; errors {errs}"


@pytest.mark.parametrize("order", [1, 3, 4])
def test_eabm_orders(order):
    """eabm's other orders: Adams-Bashforth(order) + the Moulton corrector converge with order + 1, capped at 4
    by the lower-order warm-up steps (measured slope at order 4: 4.17)."""
    k, errs = slope("eabm", "DiscreteVP.linear", HIGH, order=order)
    assert k >= min(order + 1, 4) - 0.3, f"eabm order={order}: slope {k:.2f}; errors {errs}"


def test_the_reference_is_the_book_pf_ode():
    """The lambda-form reference agrees with a direct solve of book eq. 4.40, dx/dt = f x - 1/2 g^2 score, in t."""
    model, x_T, ref = cached("VP")
    p, shape = model.process, x_T.shape

    def drift(t: float, y: np.ndarray) -> np.ndarray:
        x, tt = torch.from_numpy(y).reshape(shape), torch.full((shape[0],), t, dtype=F64)
        f, g2 = p.f(tt)[:, None], p.g2(tt)[:, None]
        return (f * x - 0.5 * g2 * model.score(x, tt)).flatten().numpy()

    sol = solve_ivp(drift, (p.t_max, p.t_min), x_T.flatten().numpy(), method="DOP853", rtol=1e-11, atol=1e-11)
    x1 = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    book = model.x0(x1, torch.full((shape[0],), p.t_min, dtype=F64))
    torch.testing.assert_close(book, ref, atol=1e-7, rtol=0)


@pytest.mark.parametrize("process_id", ["VP", "DiscreteVP.linear", "EDM", "RectifiedFlow"])
def test_rk45_meets_its_tolerance(process_id):
    """rk45 in theta = atan(sigma/alpha) lands within its tolerance of the reference, more tightly as rtol falls."""
    model, x_T, ref = cached(process_id)
    errs = []
    for tol in (1e-4, 1e-7):
        model.reset_nfe()
        x = kuosan.sample(model, x_T, "rk45", nfe=5000, rtol=tol, atol=tol)
        errs.append((x - ref).abs().max().item())
        assert errs[-1] < 100 * tol, (tol, errs[-1])
    assert errs[1] < errs[0] / 10


def test_rk45_respects_a_budget():
    """rk45's nfe is a cap: too tight a tolerance for it raises BudgetExceeded before a call too many."""
    model, x_T, _ = cached("VP")
    model.reset_nfe()
    with pytest.raises(BudgetExceeded, match="more than"):
        kuosan.sample(model, x_T, "rk45", nfe=30, rtol=1e-10, atol=1e-10)
    assert model.nfe <= 30
