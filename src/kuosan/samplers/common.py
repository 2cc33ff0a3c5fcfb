"""What every sampler shares: one-call model evaluations at precomputed times, float64 grid coefficients,
the step callback, Gaussian noise from a generator, and the final "denoise to zero".

A sampler integrates from ts[0] down to ts[-1] (descending process times) and, with `denoise=True`, returns
the x0 prediction at ts[-1]: the last step to t = 0 (sigma = 0), where every first-order exponential
integrator reduces to x0 = D(x, t_min) (DPM-Solver++, arXiv:2211.01095, §3.3; EDM Algorithm 1, last line).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..predictions import Coefficients, from_x0_eps, to_x0_eps

__all__ = ["BudgetExceeded", "Callback", "Model", "Step", "Schedule", "SamplerCache", "noise", "schedule",
           "dynamic_threshold", "memo"]

T = TypeVar("T")


class Step(NamedTuple):
    """What a callback sees after step i: the new time t, the state x at t and the latest x0 prediction."""

    i: int
    t: Tensor
    x: Tensor
    x0: Tensor | None


Callback = Callable[[Step], None]


class BudgetExceeded(RuntimeError):
    """An adaptive solver would need more network evaluations than its `nfe` budget allows."""


class Schedule(NamedTuple):
    """A float64 time grid t with alpha, sigma and lambda = log(alpha/sigma) at each time as python floats."""

    t: Tensor
    alpha: list[float]
    sigma: list[float]
    lam: list[float]


class SamplerCache:
    """Grids and grid coefficients of one process, held by the caller across sampling calls.

        cache = SamplerCache(model.process)
        for x_T in batches:
            x0 = kuosan.sample(model, x_T, "dpmpp-2m", nfe=10, cache=cache)

    Everything in it is a pure function of (process, grid, options), computed on first use; nothing is evicted
    and nothing is shared with other callers. Without a cache every call recomputes (correct, slower per call).
    A process changed in place needs a new cache.
    """

    def __init__(self, process) -> None:
        self.process = process
        self._store: dict[tuple[str, Hashable], Any] = {}

    def get(self, process, name: str, key: Hashable, compute: Callable[[], T]) -> T:
        """compute(), remembered under (name, key); process must be the cache's own."""
        if process is not self.process:
            raise ValueError(f"this SamplerCache belongs to {self.process!r}, not {process!r}: make one per process")
        if (name, key) not in self._store:
            self._store[name, key] = compute()
        return self._store[name, key]

    def __len__(self) -> int:
        return len(self._store)


def memo(process, name: str, key: Hashable, compute: Callable[[], T], cache: SamplerCache | None = None) -> T:
    """compute(), remembered in the caller's cache under (name, key) when there is one, else computed afresh."""
    return compute() if cache is None else cache.get(process, name, key, compute)


def grid_key(ts: Tensor) -> tuple[float, ...]:
    return tuple(ts.detach().to("cpu", torch.float64).tolist())


def schedule(process, ts: Tensor, cache: SamplerCache | None = None) -> Schedule:
    """alpha(t), sigma(t), lambda(t) of a time grid in float64 (lambda = -inf where alpha = 0)."""
    t64 = ts.detach().to("cpu", torch.float64)
    return memo(process, "schedule", grid_key(t64), lambda: Schedule(
        t64, process.alpha(t64).tolist(), process.sigma(t64).tolist(), process.log_snr(t64).tolist()), cache)


def _derivatives(process, sch: Schedule) -> tuple[list[float], list[float]]:
    """alpha'(t), sigma'(t) on the grid (only velocity conversions need them)."""
    return process.dalpha_dt(sch.t).tolist(), process.dsigma_dt(sch.t).tolist()


def _conversions(process, prediction: str, sch: Schedule, kinds: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """kind -> per-time (cx, co) converting the network's prediction to kind (see _linear)."""
    n = len(sch.alpha)
    da, ds = _derivatives(process, sch) if "velocity" in (prediction, *kinds) else ([math.nan] * n, [math.nan] * n)
    return {k: [_linear(prediction, k, Coefficients(sch.alpha[i], sch.sigma[i], da[i], ds[i])) for i in range(n)]
            for k in kinds}


def _linear(kind_in: str, kind_out: str, c: Coefficients) -> tuple[float, float]:
    """(cx, co) with output(kind_out) = cx x + co out(kind_in): every prediction conversion is linear in (x, out),
    so applying predictions.py's own conversions to x = 1, out = 0 and x = 0, out = 1 gives the coefficients."""

    def convert(x: float, out: float) -> float:
        try:
            x0, eps = to_x0_eps(kind_in, out, x, c)
            return from_x0_eps(kind_out, x0, eps, x, c)
        except ZeroDivisionError:  # e.g. x0 from eps where alpha = 0
            return math.inf

    return convert(1.0, 0.0), convert(0.0, 1.0)


def _axpy(cx: float, x: Tensor, co: float, out: Tensor) -> Tensor:
    """cx x + co out, skipping exact zeros and ones (so eps = out costs nothing for an eps network)."""
    if cx == 0.0:
        return out if co == 1.0 else co * out
    if co == 0.0:
        return cx * x
    return torch.add(co * out, x, alpha=cx)


class Model:
    """A Denoiser evaluated at known float64 times; each call is one network evaluation (counted by the
    Denoiser), converted to x0 / eps / velocity with conversion coefficients precomputed in float64."""

    def __init__(
        self,
        denoiser: Denoiser,
        times: Tensor,
        like: Tensor,
        kinds: Sequence[str] = ("x0", "eps"),
        cond: dict[str, Any] | None = None,
        cache: SamplerCache | None = None,
    ):
        p, pred = denoiser.process, denoiser.prediction
        sch = schedule(p, times, cache)
        self.denoiser, self.cond, self.batch = denoiser, cond or {}, like.shape[0]
        self.t = sch.t.to(like.device)
        self.coef = memo(p, "conversions", (grid_key(sch.t), pred, tuple(kinds)),
                         lambda: _conversions(p, pred, sch, kinds), cache)
        self._times = sch.t

    def raw(self, x: Tensor, i: int) -> Tensor:
        """The network output at (x, times[i]): one evaluation."""
        return self.denoiser(x, self.t[i].expand(self.batch), **self.cond)

    def convert(self, kind: str, x: Tensor, out: Tensor, i: int) -> Tensor:
        cx, co = self.coef[kind][i]
        if not (math.isfinite(cx) and math.isfinite(co)):
            raise ValueError(
                f"a {self.denoiser.prediction!r} network cannot give {kind} at t={float(self._times[i]):g} "
                f"(alpha={float(self.denoiser.process.alpha(self._times[i])):g}); start the grid where alpha > 0"
            )
        return _axpy(cx, x, co, out)

    def x0(self, x: Tensor, i: int) -> Tensor:
        return self.convert("x0", x, self.raw(x, i), i)

    def eps(self, x: Tensor, i: int) -> Tensor:
        return self.convert("eps", x, self.raw(x, i), i)

    def velocity(self, x: Tensor, i: int) -> Tensor:
        return self.convert("velocity", x, self.raw(x, i), i)

    def x0_eps(self, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        out = self.raw(x, i)
        return self.convert("x0", x, out, i), self.convert("eps", x, out, i)


def noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """z ~ N(0, I) shaped like x, drawn from `generator` (on x's device)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def dynamic_threshold(x0: Tensor, ratio: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, arXiv:2205.11487, §2.3; DPM-Solver++ §3.2): per sample
    s = clip(quantile_ratio |x0|, 1, max_value); x0 <- clip(x0, -s, s) / s."""
    work = torch.float32 if x0.dtype in (torch.float16, torch.bfloat16) else x0.dtype  # quantile needs float32+
    flat = x0.reshape(x0.shape[0], -1).abs().to(work)
    s = torch.quantile(flat, ratio, dim=1).clamp(1.0, max_value).to(x0.dtype)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def report(callback: Callback | None, i: int, t: Tensor, x: Tensor, x0: Tensor | None) -> None:
    """Call the user's callback, if any, after step i."""
    if callback is not None:
        callback(Step(i, t, x, x0))
