"""Editing with a trained Denoiser: SDEdit image-to-image and inpainting (replacement, RePaint resampling).

    x = img2img(denoiser, images, 0.6, method="dpmpp-2m", nfe=20, generator=g)        # strength 0.6: ~12 NFE
    x = inpaint(denoiser, images, mask, method="ddpm", nfe=100, generator=g)          # mask: 1 = known, kept
    x = inpaint(denoiser, images, mask, method="ddpm", nfe=100, resample=10, jump=10)  # RePaint resampling
    x = inpaint(denoiser, images, mask, method="ddpm", nfe=100, reconstruction=10)     # + reconstruction guidance

Pure functions over a Denoiser and any method of `kuosan.samplers.available()`; `Pipeline.img2img` and
`Pipeline.inpaint` call them per batch. Design, measurements and the math: docs/editing.md.

SDEdit strength s -> start time t0: the point a fraction s of the way from t_min to t_max in process time t
(Meng et al.'s t0 in [0, 1] for the VP and VE SDEs; diffusers' `init_timestep = int(num_inference_steps *
strength)` on a DDPM schedule, uniform in the training index), or in sigma^(1/rho) where a grid uniform in t does
not suit the process (EDM's t = sigma: Karras spacing, as diffusers' EDM schedulers). The rule is the process's,
not the sampler's, so a strength means the same noise level for every method. The method then spends
round(s * nfe) evaluations from t0 (at least one step), so the NFE scales with s as in diffusers. s = 0
returns the input; s = 1 starts from the prior draw itself, so img2img at strength 1 *is* `generate` with the
same generator (bit for bit).

Inpainting (mask 1 = known): the known pixels enter through the Denoiser, not the sampler. At every
evaluation its x0 prediction is replaced by the known pixels on the known region and eps re-derived,
eps' = (x_t - alpha x0') / sigma (the Denoiser's `clip_x0` hook). An ancestral step then draws the known region
from q(x_s | x_t, x0 = known), so it stays a sample of q(x_t | known) at every step, as RePaint's replacement
(Lugmayr et al. 2022, arXiv:2201.09865, Alg. 1 line 5) makes it; replacement redraws that noise from
q(x_s | x0) each step, here it is carried (the exact conditional kernel of the known part, since the forward
noise is independent per pixel). ODE solvers carry the known region along alpha_t known + sigma_t eps_T.
Only the Denoiser changes, so every method works unchanged: multistep methods keep their history, adaptive
ones their error control. RePaint resampling needs the state: the method's grid is cut into chunks of `jump`
steps, each run `resample` times with a jump back up by q(x_t | x_s) in between; a multistep method restarts
its history at each chunk. The result's known pixels are the input's exactly: where(known, input, x0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser
from .processes import GRID_KINDS
from .processes.base import Process
from .processes.grids import grid_time
from .reconstruction import reconstruction_guided
from .samplers import METHODS, sample
from .samplers.common import SamplerCache, schedule
from .samplers.grid import default_grid, make_ts

__all__ = ["img2img", "inpaint", "sdedit_start", "STRENGTH_GRIDS", "check_strength", "known_mask", "keep_known",
           "forward_jump", "method_grid"]


def check_strength(strength: float) -> float:
    """strength as a float in [0, 1], else a ValueError naming it."""
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"strength must lie in [0, 1]; got {strength}")
    return s


def _method(name: str):
    """The registered sampler `name`, else the ValueError `kuosan.sample` gives."""
    if name not in METHODS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def _infinite_start(process: Process, t: float) -> bool:
    return not math.isfinite(schedule(process, torch.tensor([t], dtype=torch.float64)).lam[0])


def _min_budget(method: str, process: Process, t0: float, options: dict[str, Any]) -> int:
    """The fewest evaluations `method` needs for one step from t0 plus the final denoise."""
    plan, inf = _method(method).plan, _infinite_start(process, t0)
    return next(b for b in range(2, 64) if plan(b - 1, None, inf, options)[0] >= 1)


STRENGTH_GRIDS = ("uniform", "karras")  # the first that suits the process parametrises strength


def sdedit_start(
    process: Process, method: str, nfe: int, strength: float, rho: float = 7.0, options=None
) -> tuple[float, int]:
    """SDEdit's start (Meng et al. 2022, arXiv:2108.01073, Alg. 1, t0): (t0, evaluations to spend from t0).

    t0 is a fraction `strength` of the way from t_min to t_max in t (sigma^(1/rho) where a grid uniform in t
    does not suit the process); the budget is round(strength * nfe), at least one step and the final denoise."""
    s = check_strength(strength)
    kind = default_grid(process, STRENGTH_GRIDS)
    t0 = grid_time(process, 1.0 - s, kind, process.t_max, process.t_min, rho=rho)
    return t0, max(round(s * nfe), _min_budget(method, process, t0, options or {}))


def method_grid(
    denoiser: Denoiser, method: str, nfe: int, grid: str | Tensor | None = None, options: dict[str, Any] | None = None
) -> tuple[Tensor, dict[str, Any]]:
    """The descending grid `kuosan.sample` draws for `method` and an `nfe` budget from t_max (final denoise
    included), and the plan's options that a call on an explicit grid needs to spend the same (ALD's T)."""
    m, p, options = _method(method), denoiser.process, options or {}
    if isinstance(grid, Tensor):  # given by its times: the method spends what those steps cost
        return make_ts(p, grid, 0)[0], {}
    kind = grid or default_grid(p, m.grids)
    n, extra, _ = m.plan(nfe - 1, None, _infinite_start(p, p.t_max), options)
    if n < 1:
        raise ValueError(f"{method!r} cannot take a step with nfe={nfe}; give it a larger budget")
    ts, _ = make_ts(p, kind, n)
    return ts, {k: v for k, v in extra.items() if k in m.options}


@torch.no_grad()
def img2img(
    denoiser: Denoiser,
    images: Tensor,
    strength: float,
    method: str = "dpmpp-2m",
    nfe: int = 20,
    *,
    generator: torch.Generator | None = None,
    grid: str | Tensor | None = None,
    rho: float = 7.0,
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """SDEdit (Meng et al. 2022, arXiv:2108.01073, Alg. 1; §3): x_t0 = alpha(t0) x + sigma(t0) eps, then
    `method` from t0 to the data. strength 0: the input; 1: x_T is the prior draw, i.e. `generate` exactly.
    An explicit grid tensor of n steps: its last max(1, floor(strength n)) steps are run (diffusers' rule)."""
    s = check_strength(strength)
    if s == 0.0:
        return images.clone()
    p = denoiser.process
    if s == 1.0:  # the prior draw itself (the samplers' x_T ~ N(0, prior_std^2) drops alpha(t_max) x)
        x_T = p.prior_sample(images.shape, generator=generator, dtype=images.dtype, device=images.device)
        return sample(denoiser, x_T, method, nfe, generator=generator, grid=grid, rho=rho, cond=cond, **options)
    if isinstance(grid, Tensor) or (grid is not None and grid not in GRID_KINDS):  # a grid given by its times
        ts = grid if isinstance(grid, Tensor) else method_grid(denoiser, method, nfe, grid, options)[0]
        n = len(ts) - 1
        tail = ts[n - max(1, math.floor(s * n + 1e-9)):]
        x = p.marginal_sample(images, torch.as_tensor(float(tail[0]), dtype=torch.float64), generator)[0]
        return sample(denoiser, x, method, None, generator=generator, grid=tail, cond=cond, **options)
    kind = grid or default_grid(p, _method(method).grids)  # the sampler's grid kind over the whole range
    t0, budget = sdedit_start(p, method, nfe, s, rho, options)
    x = p.marginal_sample(images, torch.tensor(t0, dtype=torch.float64), generator)[0]
    return sample(denoiser, x, method, budget, generator=generator, grid=kind, t_start=t0, rho=rho, cond=cond,
                  **options)


def known_mask(mask: Tensor | Any, images: Tensor) -> Tensor:
    """The mask (1 = known, 0 = to fill) as a bool tensor of the images' shape; it must broadcast to them
    and hold only 0 and 1, else a ValueError naming both shapes or the value."""
    m = torch.as_tensor(mask, device=images.device)
    try:
        shape = torch.broadcast_shapes(m.shape, images.shape)
    except RuntimeError:
        shape = None
    if shape != images.shape:
        raise ValueError(f"mask of shape {tuple(m.shape)} does not broadcast to the images' shape "
                         f"{tuple(images.shape)}")
    if m.dtype != torch.bool:
        bad = m[(m != 0) & (m != 1)]
        if bad.numel():
            raise ValueError(f"mask values must be 0 (fill) or 1 (known); found {float(bad[0]):g}")
        m = m != 0
    return m.expand(images.shape)


def keep_known(
    known: Tensor, x_known: Tensor, clip: Callable[[Tensor], Tensor] | None = None
) -> Callable[[Tensor], Tensor]:
    """x0 -> where(known, x_known, clip(x0)): the replacement method (Lugmayr et al. 2022, arXiv:2201.09865,
    Alg. 1 line 5-8) applied to the x0 prediction, used as a Denoiser's `clip_x0`."""

    def x0_fn(x0: Tensor) -> Tensor:
        x0 = clip(x0) if clip is not None else x0
        return torch.where(known, x_known.to(x0.dtype), x0)

    return x0_fn


def forward_jump(process: Process, x_s: Tensor, s: float, t: float, generator: torch.Generator | None) -> Tensor:
    """RePaint's jump back (Lugmayr et al. 2022, arXiv:2201.09865, Alg. 1 line 10, any process):
    x_t ~ q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I) for s < t (VDM eq. 21-22)."""
    a_ts, var = process.transition(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64))
    z = torch.randn(x_s.shape, generator=generator, dtype=x_s.dtype, device=x_s.device)
    return float(a_ts) * x_s + float(var.clamp(min=0).sqrt()) * z


@torch.no_grad()
def inpaint(
    denoiser: Denoiser,
    images: Tensor,
    mask: Tensor | Any,
    method: str = "ddpm",
    nfe: int = 100,
    *,
    resample: int = 1,
    jump: int = 10,
    reconstruction: float = 0.0,
    generator: torch.Generator | None = None,
    grid: str | Tensor | None = None,
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """Inpainting (Lugmayr et al. 2022, arXiv:2201.09865, Alg. 1): fill where mask = 0, keep where mask = 1
    exactly. resample = 1 is the replacement method (one pass, `nfe` evaluations, any method); resample = r > 1
    is RePaint: each chunk of `jump` grid steps is run r times, noised back up in between (about r * nfe).
    reconstruction = w_r > 0: reconstruction guidance (Ho et al. 2022, arXiv:2204.03458, eq. 7) of the x0
    prediction before the replacement (`kuosan.reconstruction`); 0 leaves the Denoiser untouched."""
    known = known_mask(mask, images)
    if resample < 1 or jump < 1:
        raise ValueError(f"resample and jump must be at least 1; got resample={resample}, jump={jump}")
    if not (math.isfinite(reconstruction) and reconstruction >= 0):
        raise ValueError(f"reconstruction (the weight w_r) must be a finite number >= 0; got {reconstruction}")
    if reconstruction > 0:
        denoiser = reconstruction_guided(denoiser, known, images, reconstruction)
    den = denoiser.replace(clip_x0=keep_known(known, images, denoiser.clip_x0))
    p = den.process
    x = p.prior_sample(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    if resample == 1:
        x0 = sample(den, x, method, nfe, generator=generator, grid=grid, cond=cond, **options)
    else:
        x0 = _repaint(den, x, method, nfe, resample, jump, generator, grid, cond, options)
    return torch.where(known, images, x0)


def _repaint(den, x, method, nfe, resample, jump, generator, grid, cond, options) -> Tensor:
    """RePaint's jump schedule (Lugmayr et al. 2022, arXiv:2201.09865, §4.2, "jump length j, resamplings r") on
    the method's own grid: down a chunk of j steps, back up by q(x_t | x_s), r passes per chunk; then denoise."""
    ts, plan_options = method_grid(den, method, nfe, grid, options)
    cache, p, n = SamplerCache(den.process), den.process, len(ts) - 1
    for i in range(0, n, jump):
        chunk = ts[i : min(i + jump, n) + 1]
        for r in range(resample):
            if r:
                x = forward_jump(p, x, float(chunk[-1]), float(chunk[0]), generator)
            x = sample(den, x, method, None, generator=generator, grid=chunk, denoise_final=False, cond=cond,
                       cache=cache, **{**options, **plan_options})
    t = torch.full((x.shape[0],), float(ts[-1]), dtype=torch.float64, device=x.device)
    return den.x0(x, t, **(cond or {}))

