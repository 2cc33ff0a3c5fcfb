"""Every reverse-time sampler of the book behind one entry point.

    x0 = kuosan.sample(denoiser, x_T, method="dpmpp-2m", nfe=10, generator=g)
    kuosan.samplers.available()            # every method name

`nfe` is a hard budget of network evaluations, for every method alike (a Heun step costs two; the final
"denoise to zero" costs one). The samplers themselves are pure functions `sample_xxx(denoiser, x, ts, ...)`
over an explicit grid; `sample` picks the grid (a kind per method and process, or the one given) and the
number of steps the budget allows, and checks the options.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .abm import sample_eabm
from .analytic import GammaTable, estimate_gamma, sample_analytic_ddim, sample_analytic_ddpm
from .ancestral import sample_ancestral
from .common import BudgetExceeded, Callback, SamplerCache, Step, dynamic_threshold, schedule
from .consistency import sample_consistency
from .dpm_solver import sample_ddim, sample_ddim_x0, sample_dpm_solver, sample_dpmpp_2s, singlestep_orders
from .flow import sample_flow_euler, sample_flow_midpoint
from .grid import default_grid, make_ts
from .langevin import sample_ald
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m
from .names import NoEquivalent, Resolved, resolve
from .ode import heun_orders, sample_euler, sample_heun, sample_heun_churn, sample_rk45
from .sde import sample_euler_maruyama, sample_pc, sample_reverse_diffusion
from .tune import optimize_grid
from .unipc import sample_unipc

__all__ = [
    "sample", "available", "METHODS", "Method", "Step", "BudgetExceeded", "SamplerCache", "GammaTable",
    "estimate_gamma", "dynamic_threshold", "sample_ancestral", "sample_ald", "sample_euler_maruyama",
    "sample_reverse_diffusion", "sample_pc", "sample_euler", "sample_heun", "sample_heun_churn", "sample_rk45",
    "sample_ddim", "sample_dpm_solver", "sample_dpmpp_2s", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_dpmpp_2m_sde",
    "sample_unipc", "sample_eabm", "sample_analytic_ddpm", "sample_analytic_ddim", "sample_flow_euler",
    "sample_flow_midpoint", "sample_consistency", "resolve", "Resolved", "NoEquivalent", "optimize_grid",
    "sample_ddim_x0",
]

# A plan maps (evaluation budget or None, number of steps or None, does the grid start at alpha = 0, options)
# to (steps, extra keyword arguments, evaluations spent on the steps).
Plan = Callable[[int | None, int | None, bool, dict], tuple[int, dict, int]]


def _fixed(cost: int) -> Plan:
    """Every step costs `cost` evaluations."""

    def plan(budget, n, infinite_start, opts):
        n = budget // cost if n is None else n
        return n, {}, n * cost

    return plan


def _per_step_orders(order: int, fill: Callable[[int, bool], list[int]]) -> Plan:
    """Steps of `order` evaluations, lower-order ones where the budget or an alpha = 0 start demands."""

    def plan(budget, n, infinite_start, opts):
        orders = fill(budget, infinite_start) if n is None else [1 if i == 0 and infinite_start else order
                                                                  for i in range(n)]
        return len(orders), {"orders": orders}, sum(orders)

    return plan


def _singlestep(order: int) -> Callable[[int, bool], list[int]]:
    return lambda budget, infinite_start: singlestep_orders(budget, order, infinite_start)


def _pc_plan(budget, n, infinite_start, opts):
    cost = 1 + opts.get("n_corrector", 1)
    n = budget // cost if n is None else n
    return n, {}, n * cost


def _ald_plan(budget, n, infinite_start, opts):
    """L levels of T Langevin steps; the grid has L points (L - 1 intervals). Default: 10 levels (NCSN)."""
    if n is None:
        T = opts.get("T") or max(1, budget // min(10, max(budget, 1)))
        levels = budget // T
    else:
        T, levels = opts.get("T", 100), n + 1
    return levels - 1, {"T": T}, levels * T


def _rk45_plan(budget, n, infinite_start, opts):
    return 1, {"max_nfe": None if budget is None else budget}, 0


@dataclass(frozen=True)
class Method:
    """A registered sampler: its function, what it is, how it spends a budget and which grids it prefers."""

    fn: Callable[..., Tensor]
    family: str
    order: int | None  # convergence order of the ODE solver; None for stochastic samplers
    cost: str  # evaluations per step, in words (for the docs)
    paper: str
    book: str
    plan: Plan
    grids: tuple[str, ...]
    final_denoise: bool = True  # False: the method's last evaluation already returns x0 (consistency models)

    @property
    def stochastic(self) -> bool:
        return self.order is None

    @cached_property
    def parameters(self) -> frozenset[str]:
        """The keyword parameters of fn (read once per registry entry)."""
        return frozenset(inspect.signature(self.fn).parameters)

    @property
    def options(self) -> frozenset[str]:
        """The options a user may pass through `sample` (not the driver's own arguments)."""
        return self.parameters - {"denoiser", "x", "ts"} - _DRIVER


_ANCESTRAL_GRIDS, _ODE_GRIDS, _EXP_GRIDS = ("uniform", "karras"), ("karras", "uniform"), ("logsnr", "uniform")
METHODS: dict[str, Method] = {
    "ddpm": Method(sample_ancestral, "ancestral", None, "1", "Ho et al. 2020, arXiv:2006.11239, Alg. 2",
                   "§4.1, Alg. 2, eq. 4.13", _fixed(1), _ANCESTRAL_GRIDS),
    "ancestral-sde": Method(sample_ancestral, "ancestral", None, "1", "Song et al. 2021, arXiv:2011.13456, eq. 47",
                            "§4.3, eq. 4.31", _fixed(1), _ANCESTRAL_GRIDS),
    "ald": Method(sample_ald, "langevin", None, "T per level", "Song & Ermon 2019, arXiv:1907.05600, Alg. 1",
                  "§4.2", _ald_plan, ("logsnr", "uniform")),
    "euler-maruyama": Method(sample_euler_maruyama, "sde", None, "1", "Song et al. 2021, arXiv:2011.13456, eq. 6",
                             "§4.3, eq. 4.33", _fixed(1), _ANCESTRAL_GRIDS),
    "reverse-diffusion": Method(sample_reverse_diffusion, "sde", None, "1",
                                "Song et al. 2021, arXiv:2011.13456, eq. 46", "§4.3", _fixed(1), _ANCESTRAL_GRIDS),
    "pc": Method(sample_pc, "sde", None, "1 + n_corrector", "Song et al. 2021, arXiv:2011.13456, Alg. 2-5", "§4.3",
                 _pc_plan, _ANCESTRAL_GRIDS),
    "euler": Method(sample_euler, "ode", 1, "1", "Karras et al. 2022, arXiv:2206.00364, Alg. 1 (Euler)",
                    "§4.3, eq. 4.40", _fixed(1), _ODE_GRIDS),
    "heun": Method(sample_heun, "ode", 2, "2", "Karras et al. 2022, arXiv:2206.00364, Alg. 1", "§4.3, eq. 4.40",
                   _per_step_orders(2, heun_orders), _ODE_GRIDS),
    "heun-churn": Method(sample_heun_churn, "ode", None, "2", "Karras et al. 2022, arXiv:2206.00364, Alg. 2",
                         "§4.3", _fixed(2), _ODE_GRIDS),
    "rk45": Method(sample_rk45, "ode", 5, "adaptive", "Song et al. 2021, arXiv:2011.13456, §4.3 (RK45)",
                   "§4.3, eq. 4.40", _rk45_plan, ("uniform",)),
    "ddim": Method(sample_ddim, "dpm_solver", 1, "1", "Song et al. 2021, arXiv:2010.02502, eq. 12",
                   "DDIM", _fixed(1), ("uniform", "logsnr")),
    "ddim-x0": Method(sample_ddim_x0, "dpm_solver", 1, "1", "Salimans & Ho 2022, arXiv:2202.00512, Alg. 2 (DDIM, "
                      "last step to x0)", "§4.6.3", _fixed(1), ("uniform", "logsnr"), final_denoise=False),
    "dpm-solver-1": Method(sample_dpm_solver, "dpm_solver", 1, "1", "Lu et al. 2022, arXiv:2206.00927, eq. 3.7",
                           "DPM-Solver", _per_step_orders(1, _singlestep(1)), _EXP_GRIDS),
    "dpm-solver-2": Method(sample_dpm_solver, "dpm_solver", 2, "2", "Lu et al. 2022, arXiv:2206.00927, Alg. 1",
                           "DPM-Solver", _per_step_orders(2, _singlestep(2)), _EXP_GRIDS),
    "dpm-solver-3": Method(sample_dpm_solver, "dpm_solver", 3, "3", "Lu et al. 2022, arXiv:2206.00927, Alg. 2",
                           "DPM-Solver", _per_step_orders(3, _singlestep(3)), _EXP_GRIDS),
    "dpmpp-2s": Method(sample_dpmpp_2s, "dpm_solver", 2, "2", "Lu et al. 2022, arXiv:2211.01095, Alg. 1",
                       "DPM-Solver++", _per_step_orders(2, _singlestep(2)), _EXP_GRIDS),
    "dpmpp-2m": Method(sample_dpmpp_2m, "multistep", 2, "1", "Lu et al. 2022, arXiv:2211.01095, Alg. 2",
                       "DPM-Solver++", _fixed(1), _EXP_GRIDS),
    "dpmpp-3m": Method(sample_dpmpp_3m, "multistep", 3, "1", "Lu et al. 2022, arXiv:2211.01095, §3.3",
                       "DPM-Solver++", _fixed(1), _EXP_GRIDS),
    "dpmpp-2m-sde": Method(sample_dpmpp_2m_sde, "multistep", None, "1", "Lu et al. 2022, arXiv:2211.01095 "
                           "(SDE-DPM-Solver++(2M))", "DPM-Solver++", _fixed(1), _EXP_GRIDS),
    "unipc": Method(sample_unipc, "unipc", 3, "1", "Zhao et al. 2023, arXiv:2302.04867, UniP-2 + UniC",
                    "UniPC", _fixed(1), _EXP_GRIDS),
    "eabm": Method(sample_eabm, "abm", 3, "1", "kuosan: exponential Adams-Bashforth-Moulton in u (DEIS, "
                   "arXiv:2204.13902 + UniPC, arXiv:2302.04867)", "DPM-Solver++", _fixed(1),
                   ("quadratic", "logsnr", "uniform")),
    "analytic-ddpm": Method(sample_analytic_ddpm, "analytic", None, "1", "Bao et al. 2022, arXiv:2201.06503, eq. 7",
                            "§4.1 (variance)", _fixed(1), _ANCESTRAL_GRIDS),
    "analytic-ddim": Method(sample_analytic_ddim, "analytic", None, "1", "Bao et al. 2022, arXiv:2201.06503, eq. 7",
                            "DDIM (variance)", _fixed(1), _ANCESTRAL_GRIDS),
    "flow-euler": Method(sample_flow_euler, "flow", 1, "1", "Liu et al. 2022, arXiv:2209.03003", "rectified flow",
                         _fixed(1), ("uniform", "karras")),
    "flow-midpoint": Method(sample_flow_midpoint, "flow", 2, "2", "Liu et al. 2022, arXiv:2209.03003 (midpoint)",
                            "rectified flow", _fixed(2), ("uniform", "karras")),
    "consistency": Method(sample_consistency, "consistency", None, "1", "Song et al. 2023, arXiv:2303.01469, Alg. 1",
                          "§4.7, eq. 4.43 (multistep); LCM §4.7.1", _fixed(1), ("uniform", "karras"),
                          final_denoise=False),
}


def available() -> list[str]:
    """Every method name `sample` accepts."""
    return list(METHODS)


_DRIVER = {"generator", "callback", "denoise", "cond", "orders", "max_nfe", "cache"}


def _check_options(name: str, m: Method, options: dict[str, Any]) -> None:
    params = m.options
    unknown = set(options) - params
    if unknown:
        raise ValueError(f"method {name!r} takes no option(s) {sorted(unknown)}; its options: {sorted(params)}")


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    method: str = "dpmpp-2m",
    nfe: int | None = 10,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    grid: str | Tensor | None = None,
    denoise_final: bool = True,
    cond: dict[str, Any] | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    thresholding: bool = False,
    cache: SamplerCache | None = None,
    **options: Any,
) -> Tensor:
    """Run `method` from x_T (at the grid's first time, process.t_max by default) with at most `nfe` network
    evaluations; returns x0 predicted at the last grid time ("denoise to zero") unless denoise_final=False.

    grid: a kind ("uniform", "logsnr", "karras", "quadratic"; DiscreteVP also "leading", "trailing") drawn with
    as many steps as `nfe` allows, or an explicit descending tensor of times (then nfe=None means "as needed").
    t_start / t_end / rho shape a kind of grid; cond is passed to the network; thresholding=True clips x0
    predictions of the data-prediction solvers by dynamic thresholding (arXiv:2205.11487); other options go
    to the method (see its function in `METHODS[method].fn`). cache: a SamplerCache(denoiser.process) the caller
    keeps across calls, so that grids and their coefficients are computed once (without it, once per call)."""
    if method not in METHODS:
        raise ValueError(f"unknown sampler {method!r}; available: {', '.join(available())}")
    m = METHODS[method]
    _check_options(method, m, options)
    if thresholding:
        if "clip_x0" not in m.options:
            raise ValueError(f"thresholding acts on x0 predictions; {method!r} is not a data-prediction solver")
        options["clip_x0"] = dynamic_threshold
    p = denoiser.process
    cache = SamplerCache(p) if cache is None else cache  # without the caller's: shared within this call only
    if nfe is None and not isinstance(grid, Tensor):
        raise ValueError("nfe=None needs an explicit grid tensor")
    kind = default_grid(p, m.grids, t_start, t_end, cache) if grid is None else grid
    t0 = float(grid[0]) if isinstance(grid, Tensor) else (p.t_max if t_start is None else t_start)
    infinite_start = not math.isfinite(schedule(p, torch.tensor([t0], dtype=torch.float64), cache).lam[0])
    if isinstance(kind, Tensor):
        ts, ends_at_zero = make_ts(p, kind, 0)
        n, extra, cost = m.plan(None, len(ts) - 1, infinite_start, options)
    else:
        denoise = denoise_final and m.final_denoise
        for _ in range(2):  # a grid ending at sigma = 0 (DDIM's integer grids) forces the final denoise
            n, extra, cost = m.plan(nfe - int(denoise), None, infinite_start, options)
            if n < 1:
                raise ValueError(f"{method!r} cannot take a step with nfe={nfe}; give it a larger budget")
            ts, ends_at_zero = make_ts(p, kind, n, t_start=t_start, t_end=t_end, rho=rho, cache=cache)
            if denoise or not ends_at_zero or not m.final_denoise:
                break
            denoise = True
    denoise = (denoise_final or ends_at_zero) and m.final_denoise
    if nfe is not None and cost + int(denoise) > nfe:
        raise ValueError(f"{method!r} on this grid needs {cost + int(denoise)} evaluations, more than nfe={nfe}")
    if "cache" in m.parameters:
        extra["cache"] = cache
    return m.fn(denoiser, x_T, ts, generator=generator, callback=callback, denoise=denoise, cond=cond,
                **{**options, **extra})
