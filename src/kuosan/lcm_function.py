"""The latent consistency model's consistency function (Luo et al. 2023, arXiv:2310.04378, §4.2 and App.; book
§4.7.1, eq. 4.45): a network that keeps its own prediction kind (e.g. the eps of the teacher it started from)
wrapped so that its output is an x0 obeying the boundary condition f(x, t_min) = x exactly,

    f_theta(x, w, c, t) = c_skip(t) x + c_out(t) x0_hat(x, w, c, t),

with the guidance scale w an input of the network (embedded like the time, kuosan.nets.embeddings). The
config's `precondition: lcm` builds it (kuosan.registry.build_denoiser), so `kuosan.load(student)` does too.

    den = lcm_denoiser(net, process, "eps")           # a Denoiser whose x0 is f; call it with cond y= and w=
    den = with_guidance_scale(den, 3.0)               # w bound: one evaluation per step, no second branch
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .denoiser import Denoiser
from .processes.base import Process, append_dims

__all__ = ["LCMFunction", "lcm_boundary", "lcm_timestep", "lcm_time", "lcm_denoiser", "with_guidance_scale",
           "timestep_count", "default_w", "embedded_guidance"]

SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0  # LCM's sigma_data and timestep scaling s (diffusers LCMScheduler)


def timestep_count(process: Process) -> int:
    """N, the teacher's number of timesteps: a DiscreteVP's n; 1000 (DDPM's index range) for continuous time."""
    return int(getattr(process, "n", 1000))


def lcm_timestep(t: Tensor, process: Process) -> Tensor:
    """The teacher's timestep index t' in [0, N - 1] of continuous time t: t' = (N - 1)(t - t_min)/(t_max - t_min),
    i.e. t' = (t - 1/N) N on a DiscreteVP (whose t_i = (i + 1)/N), so t' = 0 exactly at t = t_min."""
    n = timestep_count(process)
    return (t.to(torch.float64) - process.t_min) * ((n - 1) / (process.t_max - process.t_min))


def lcm_time(index: Tensor, process: Process) -> Tensor:
    """The continuous time of the teacher's timestep index (inverse of lcm_timestep), in float64."""
    n = timestep_count(process)
    return process.t_min + index.to(torch.float64) * ((process.t_max - process.t_min) / (n - 1))


def lcm_boundary(t: Tensor, process: Process, sigma_data: float = SIGMA_DATA,
                 scaling: float = TIMESTEP_SCALING) -> tuple[Tensor, Tensor]:
    """LCM's boundary coefficients (Luo et al. 2023, arXiv:2310.04378, App. / diffusers LCMScheduler
    get_scalings_for_boundary_condition_discrete), in float64, (B,) each, with s = 10 and sigma_data = 0.5:
        c_skip = sigma_data^2 / ((s t')^2 + sigma_data^2),   c_out = s t' / sqrt((s t')^2 + sigma_data^2),
    t' the teacher's timestep index (lcm_timestep): c_skip = 1 and c_out = 0 exactly at t = t_min."""
    st = scaling * lcm_timestep(t, process)
    c_skip = sigma_data**2 / (st**2 + sigma_data**2)
    c_out = st / torch.sqrt(st**2 + sigma_data**2)
    return c_skip, c_out


class LCMFunction(nn.Module):
    """f(x, t, **cond) = c_skip(t) x + c_out(t) x0_hat(x, t, **cond): `net` predicts `prediction` under `process`
    and x0_hat is its x0 (book eq. 4.45); cond carries the class y and the guidance scale w to the network."""

    def __init__(self, net: nn.Module, process: Process, prediction: str = "eps"):
        super().__init__()
        self.inner = Denoiser(net, process, prediction)
        self.process = process

    @property
    def net(self) -> nn.Module:
        return self.inner.net

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        c_skip, c_out = lcm_boundary(t, self.process)
        x0_hat = self.inner.x0(x, t, **cond)
        return append_dims(c_skip.to(x.dtype), x.ndim) * x + append_dims(c_out.to(x.dtype), x.ndim) * x0_hat


def lcm_denoiser(net: nn.Module, process: Process, prediction: str = "eps") -> Denoiser:
    """The Denoiser of `precondition: lcm`: its x0 is the consistency function f over `net`."""
    return Denoiser(LCMFunction(net, process, prediction), process, "x0")


class _WithInputs(nn.Module):
    """fn with some keyword inputs fixed: forward(x, t, **cond) = fn(x, t, **fixed, **cond)."""

    def __init__(self, fn: Callable[..., Tensor], **fixed: Any):
        super().__init__()
        self.fn, self.fixed = fn, fixed

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self.fn(x, t, **self.fixed, **cond)


def with_guidance_scale(den: Denoiser, w: float, clip_x0: Callable[[Tensor], Tensor] | None = None) -> Denoiser:
    """den with the guidance scale w bound as the network's input `w` (kuosan's CFG convention: w = 1 is the
    conditional model): a guidance-embedded student answers guided in one evaluation, no unconditional branch."""
    return Denoiser(_WithInputs(den.fn, w=torch.tensor(float(w))), den.process, den.prediction, clip_x0=clip_x0)


def default_w(w_min: float, w_max: float) -> float:
    """An LCM student's w when none is given: 1 (the teacher's unguided conditional model) clamped to [w_min, w_max]."""
    return min(max(1.0, w_min), w_max)


def embedded_guidance(den: Denoiser, guidance: float | None, clip_x0: Callable[[Tensor], Tensor] | None,
                      default: float, **other: Any) -> Denoiser:
    """Pipeline.model for a run whose network embeds w: `guidance` (default `default`) bound as its input; the
    options that act on a second, unconditional branch (interval, rescale, classifier) do not apply."""
    used = [k for k, v in other.items() if v not in (None, 0.0, "run")]
    if used:
        raise ValueError(f"this run embeds the guidance scale w in its network (an LCM student): {used[0]} needs "
                         "classifier-free guidance's second branch, which it does not have")
    return with_guidance_scale(den, default if guidance is None else guidance, clip_x0)
