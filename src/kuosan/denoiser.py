"""A network (or any function) plus a process plus what it predicts: the one object every sampler,
loss and likelihood talks to.

    model = Denoiser(fn, process, prediction="eps")
    x0, eps = model.predict(x, t)          # one network evaluation
    model.score(x, t), model.velocity(x, t), model.nfe
    guided = model.replace(guidance=3.0, uncond={"y": null})   # classifier-free guidance, same network
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .predictions import Coefficients, check_prediction, from_x0_eps, to_x0_eps
from .processes.base import Process, append_dims

__all__ = ["Denoiser", "EDMPrecond", "ConsistencyPrecond", "rescale_guidance", "in_guidance_interval"]


def rescale_guidance(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, arXiv:2305.08891, §3.4, eqs. 15-18): per sample,
        x_rescaled = x_cfg * std(x_pos) / std(x_cfg),   x_final = phi x_rescaled + (1 - phi) x_cfg,
    the standard deviations taken over every non-batch dimension; x_pos is the conditional output."""
    dims = tuple(range(1, guided.ndim))
    factor = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return torch.lerp(guided, guided * factor, phi)


def in_guidance_interval(process: Process, t: Tensor, interval: tuple[float, float]) -> Tensor:
    """(B,) bool: guidance applies at t (Kynkaanniemi et al. 2024, arXiv:2404.07724, eq. 5): the noise level in
    EDM units, sigma/alpha = exp(-lambda(t)), lies in (sigma_lo, sigma_hi]; elsewhere the conditional model."""
    lo, hi = interval
    s = torch.exp(-process.log_snr(t))
    return (s > lo) & (s <= hi)


class EDMPrecond:
    """EDM preconditioning (Karras et al. 2022, arXiv:2206.00364, Table 1 and eq. 7), for any process.

    With s = sigma/alpha and the scaled input x~ = x/alpha (so x~ = x0 + s eps, the EDM form):
        D(x~; s) = c_skip(s) x~ + c_out(s) F(c_in(s) x~, c_noise(s))
        c_skip = sigma_data^2 / (s^2 + sigma_data^2),  c_out = s sigma_data / sqrt(s^2 + sigma_data^2),
        c_in = 1 / sqrt(s^2 + sigma_data^2),           c_noise = ln(s) / 4.
    """

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def c_skip(self, s: Tensor) -> Tensor:
        return self.sigma_data**2 / (s**2 + self.sigma_data**2)

    def c_out(self, s: Tensor) -> Tensor:
        return s * self.sigma_data / torch.sqrt(s**2 + self.sigma_data**2)

    def c_in(self, s: Tensor) -> Tensor:
        return 1 / torch.sqrt(s**2 + self.sigma_data**2)

    def c_noise(self, s: Tensor) -> Tensor:
        return 0.25 * torch.log(s)

    def loss_weight(self, s: Tensor) -> Tensor:
        """lambda(s) = 1 / c_out^2 = (s^2 + sigma_data^2) / (s sigma_data)^2 (EDM eq. 8)."""
        return (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2


class ConsistencyPrecond(EDMPrecond):
    """The consistency-model parameterisation (Song et al. 2023, arXiv:2303.01469, §3 and App. C; book eq. 4.43):
    EDM's c_in and c_noise, with c_skip and c_out shifted so that f(x, s_min) = x exactly (the boundary condition):

        c_skip(s) = sigma_data^2 / ((s - s_min)^2 + sigma_data^2)
        c_out(s)  = sigma_data (s - s_min) / sqrt(sigma_data^2 + s^2)

    s = sigma/alpha and s_min its value at the process's t_min (EDM: sigma_min = 0.002), so a student initialised
    from an EDM-preconditioned teacher's F starts close to the teacher's x0 (c_skip, c_out differ from EDM's only
    near s_min)."""

    name = "consistency"

    def __init__(self, sigma_data: float = 0.5, s_min: float = 0.002):
        super().__init__(sigma_data)
        self.s_min = s_min

    def c_skip(self, s: Tensor) -> Tensor:
        return self.sigma_data**2 / ((s - self.s_min) ** 2 + self.sigma_data**2)

    def c_out(self, s: Tensor) -> Tensor:
        return self.sigma_data * (s - self.s_min) / torch.sqrt(self.sigma_data**2 + s**2)


class Denoiser(nn.Module):
    """fn(x, t, **cond) + process + prediction kind; answers eps, x0, score, v and velocity and counts calls.

    Args:
        fn: a network or any function (x, t, **cond) -> tensor shaped like x; t is a (batch,) tensor of
            continuous process times in their own precision, often float64 (or `time_input(t)` when given;
            c_noise under EDM preconditioning); a network casts t to its own dtype.
        process: the forward process the network was trained under.
        prediction: "eps" | "x0" | "v" | "score" | "velocity" (default "eps"; "x0" under precondition="edm").
        precondition: None or "edm" (then fn is EDM's F and the Denoiser's raw output is D, an x0).
        sigma_data: EDM's data standard deviation.
        guidance: classifier-free guidance scale w (Ho & Salimans 2022, arXiv:2207.12598, eq. 6), applied to
            the raw outputs: out = out_u + w (out_c - out_u); w = 1 is the plain conditional model (exactly eq. 6 for
            every prediction kind, and defined where alpha = 0: see `_guided`). A guided Denoiser must be called with
            a condition; one guided evaluation counts as one NFE (the two branches run as one batch).
        uncond: keyword arguments of the unconditional branch (same keys as the conditional ones); required
            with `guidance` (kuosan's nets use class index `num_classes` as the null class).
        guidance_interval: (sigma_lo, sigma_hi) in EDM units sigma/alpha: guidance only where the noise level
            lies in (sigma_lo, sigma_hi], the conditional model elsewhere (`in_guidance_interval`); outside the
            interval one evaluation runs one branch.
        guidance_rescale: phi in [0, 1] of `rescale_guidance`, applied to the guided v = alpha eps - sigma x0
            (the paper's models predict v) whatever the network predicts, so the result does not depend on
            the parameterisation.
        time_input: maps process time to what fn expects (e.g. lambda t: t * 1000 - 1 for diffusers indices).
        learned_variance: fn returns 2C channels along dim 1: the prediction, then the improved-DDPM variance
            interpolation v in [-1, 1]-ish units (Nichol & Dhariwal 2021, eq. 15); `forward` returns the
            prediction half and `predict_with_variance` both.
        clip_x0: applied to x0 at every evaluation (after guidance), the output re-expressed in its own kind
            so that every sampler, stochastic or ODE, sees an x0 in the data range; e.g. lambda x0:
            x0.clamp(-1, 1) (diffusers' clip_sample) or `kuosan.samplers.common.dynamic_threshold`.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        process: Process,
        prediction: str | None = None,
        *,
        precondition: str | None = None,
        sigma_data: float = 0.5,
        guidance: float | None = None,
        uncond: dict[str, Any] | None = None,
        guidance_interval: tuple[float, float] | None = None,
        guidance_rescale: float = 0.0,
        time_input: Callable[[Tensor], Tensor] | None = None,
        learned_variance: bool = False,
        clip_x0: Callable[[Tensor], Tensor] | None = None,
    ):
        super().__init__()
        if precondition not in (None, "edm", "consistency"):
            raise ValueError(f"unknown precondition {precondition!r}; choose None, 'edm' or 'consistency'")
        if prediction is None:
            prediction = "eps" if precondition is None else "x0"
        check_prediction(prediction)
        if precondition is not None and prediction != "x0":
            raise ValueError(f"{precondition!r} preconditioning makes the model an x0-predictor; got "
                             f"prediction={prediction!r}")
        if guidance is not None and not uncond:
            raise ValueError(f"guidance={guidance} needs `uncond`, the keyword arguments of the unconditional "
                             "branch (e.g. uncond={'y': torch.tensor(num_classes)})")
        if guidance_interval is not None and not (0 <= guidance_interval[0] < guidance_interval[1]):
            raise ValueError(f"guidance_interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi; "
                             f"got {guidance_interval}")
        if not 0 <= guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must lie in [0, 1]; got {guidance_rescale}")
        self.net = fn if isinstance(fn, nn.Module) else None
        self.fn = fn
        self.process = process
        self.prediction = prediction
        self.precond = None if precondition is None else EDMPrecond(sigma_data)
        if precondition == "consistency":  # boundary at the process's smallest noise level s_min
            s_min = torch.exp(-process.log_snr(torch.tensor(process.t_min, dtype=torch.float64)))
            self.precond = ConsistencyPrecond(sigma_data, float(s_min))
        self.sigma_data = sigma_data
        self.guidance = guidance
        self.uncond = uncond
        self.guidance_interval = None if guidance_interval is None else tuple(map(float, guidance_interval))
        self.guidance_rescale = float(guidance_rescale)
        self.time_input = time_input
        self.learned_variance = learned_variance
        self.clip_x0 = clip_x0
        self.nfe = 0

    def replace(self, **changes: Any) -> Denoiser:
        """A new Denoiser over the same fn and process with some constructor arguments changed (guidance,
        uncond, clip_x0, ...); its nfe counter starts at 0."""
        settings = {
            "prediction": self.prediction,
            "precondition": None if self.precond is None else self.precond.name,
            "sigma_data": self.sigma_data,
            "guidance": self.guidance,
            "uncond": self.uncond,
            "guidance_interval": self.guidance_interval,
            "guidance_rescale": self.guidance_rescale,
            "time_input": self.time_input,
            "learned_variance": self.learned_variance,
            "clip_x0": self.clip_x0,
        }
        unknown = set(changes) - set(settings)
        if unknown:
            raise TypeError(f"replace() can change {sorted(settings)}; not {sorted(unknown)}")
        return Denoiser(self.fn, self.process, **{**settings, **changes})

    # --- bookkeeping ------------------------------------------------------------------------------
    def reset_nfe(self) -> int:
        """Zero the evaluation counter; returns its old value."""
        n, self.nfe = self.nfe, 0
        return n

    def _time(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=None if isinstance(t, Tensor) else torch.float64)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},); got {tuple(t.shape)}")
        return t

    def coefficients(self, x: Tensor, t: Tensor, derivatives: bool = True) -> Coefficients:
        """alpha, sigma (and alpha', sigma' when `derivatives`, else None) at t, computed in t's precision,
        broadcast to x and cast to x.dtype. Only the "velocity" kind needs the derivatives."""
        p = self.process
        vals = (p.alpha(t), p.sigma(t)) + ((p.dalpha_dt(t), p.dsigma_dt(t)) if derivatives else ())
        c = [append_dims(v.to(x.dtype), x.ndim) for v in vals]
        return Coefficients(*c) if derivatives else Coefficients(c[0], c[1], None, None)

    def _coefficients_for(self, x: Tensor, t: Tensor, kind: str) -> Coefficients:
        return self.coefficients(x, t, derivatives="velocity" in (kind, self.prediction))

    # --- one evaluation ---------------------------------------------------------------------------
    def _call(self, x: Tensor, t: Tensor, cond: dict[str, Any]) -> Tensor:
        """fn, with EDM preconditioning when asked: returns the raw output of kind self.prediction."""
        if self.precond is None:
            tin = self.time_input(t) if self.time_input is not None else t
            return self.fn(x, tin, **cond)  # t keeps its precision; nets cast it themselves
        pc, p = self.precond, self.process
        s = torch.exp(-p.log_snr(t))  # sigma / alpha  (B,)
        a = append_dims(p.alpha(t).to(x.dtype), x.ndim)
        xs = x / a
        s_b = append_dims(s.to(x.dtype), x.ndim)
        F = self.fn(pc.c_in(s_b) * xs, pc.c_noise(s).to(x.dtype), **cond)
        return pc.c_skip(s_b) * xs + pc.c_out(s_b) * F

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Raw output of kind `self.prediction` (with guidance applied); one evaluation."""
        out = self._evaluate(x, self._time(x, t), cond)
        return out[:, : x.shape[1]] if self.learned_variance else out

    def predict_with_variance(self, x: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(x0, eps, v) from one evaluation of a learned-variance model; v interpolates log beta and log beta-tilde."""
        if not self.learned_variance:
            raise ValueError("this Denoiser was not built with learned_variance=True")
        t = self._time(x, t)
        out = self._evaluate(x, t, cond)
        c = x.shape[1]
        x0, eps = to_x0_eps(self.prediction, out[:, :c], x, self._coefficients_for(x, t, "eps"))
        return x0, eps, out[:, c:]

    def _evaluate(self, x: Tensor, t: Tensor, cond: dict[str, Any]) -> Tensor:
        if self.guidance is not None and not cond:
            raise ValueError(f"guidance={self.guidance} needs a condition: call with cond (e.g. "
                             "kuosan.sample(..., cond={'y': labels})), or use replace(guidance=None)")
        if self.guidance is not None and self.learned_variance:
            raise ValueError("classifier-free guidance with a learned variance is not supported")
        self.nfe += 1
        rows = self._guided_rows(t)
        out = self._call(x, t, cond) if rows is False else self._guided(x, t, cond, rows)
        if self.clip_x0 is None:
            return out
        if self.learned_variance:  # (B, 2C, ...): clip the prediction half, keep the variance half
            c = x.shape[1]
            return torch.cat([self._clipped(self.clip_x0, out[:, :c], x, t), out[:, c:]], dim=1)
        return self._clipped(self.clip_x0, out, x, t)

    def _guided_rows(self, t: Tensor) -> Tensor | bool:
        """Which rows are guided: False for none (no guidance; w = 1, the conditional model exactly, lerp's end
        point; or every row outside the guidance interval: the conditional branch alone, half the work), True for
        all (no interval), else the (B,) mask of rows inside the interval."""
        if self.guidance in (None, 1.0):
            return False
        if self.guidance_interval is None:
            return True
        inside = in_guidance_interval(self.process, t, self.guidance_interval)
        return inside if inside.any() else False

    def _guided(self, x: Tensor, t: Tensor, cond: dict[str, Any], rows: Tensor | bool = True) -> Tensor:
        """Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. 6) on the raw outputs:
            out = out_u + w (out_c - out_u) = (1 - w) out_u + w out_c.
        Every kind is linear in (x0, eps) at fixed x_t and t (predictions.py), out = A x0 + B eps, so this is
        the kind of the pair (x0_u + w (x0_c - x0_u), eps_u + w (eps_c - eps_u)); the weights 1 - w and w sum
        to one, so that pair still satisfies x_t = alpha x0 + sigma eps. Where alpha > 0, x0 = (x_t - sigma eps)
        / alpha makes out affine in eps with the same x_t-coefficient in both branches, so this equals eq. 6's
        guided eps expressed as the model's kind (for score: (1 - w) score_u + w score_c); unlike a conversion
        through 1/alpha it is also defined at alpha = 0 (rectified flow's t = 1). EDM's D is an x0, likewise.
        Both branches run as one batch; torch.lerp is exact at w = 0 (out_u) and w = 1 (out_c)."""
        uncond = self.uncond or {}
        if set(uncond) != set(cond):
            raise ValueError(f"guidance needs `uncond` with the same keys as cond {sorted(cond)}; got {sorted(uncond)}")
        b = x.shape[0]
        both = {k: torch.cat([cond[k], torch.as_tensor(uncond[k]).expand_as(cond[k]).to(cond[k])]) for k in cond}
        out = self._call(torch.cat([x, x]), torch.cat([t, t]), both)  # (2B, ...): conditional, then unconditional
        out_c = out[:b]
        guided = torch.lerp(out[b:], out_c, self.guidance)
        if self.guidance_rescale > 0:
            guided = self._rescaled(guided, out_c, x, t)
        if isinstance(rows, Tensor):  # the guidance interval: the conditional model outside it
            guided = torch.where(append_dims(rows, x.ndim), guided, out_c)
        return guided

    def _rescaled(self, guided: Tensor, out_c: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """`rescale_guidance` on v, the result expressed again as self.prediction."""
        if x[0].numel() < 2:
            raise ValueError("guidance_rescale needs a standard deviation over at least two numbers per sample")
        c = self._coefficients_for(x, t, "v")
        v_g, v_c = (from_x0_eps("v", *to_x0_eps(self.prediction, o, x, c), x, c) for o in (guided, out_c))
        return from_x0_eps(self.prediction, *to_x0_eps("v", rescale_guidance(v_g, v_c, self.guidance_rescale), x, c),
                           x, c)

    def _clipped(self, clip: Callable[[Tensor], Tensor], out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The output `out` (of kind self.prediction) with its x0 replaced by clip(x0) and eps by the noise
        consistent with it, eps' = (x_t - alpha x0') / sigma (diffusers' clip_sample; Saharia et al. 2022,
        arXiv:2205.11487, §2.3 with dynamic thresholding), expressed again as self.prediction."""
        c = self._coefficients_for(x, t, "eps")
        x0 = clip(to_x0_eps(self.prediction, out, x, c)[0])
        ax0 = torch.where(c.alpha == 0, 0.0, c.alpha * x0)  # alpha = 0: x_t = sigma eps (an eps model has no x0)
        return from_x0_eps(self.prediction, x0, (x - ax0) / c.sigma, x, c)

    def predict(self, x: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        """(x0, eps) from one evaluation."""
        t = self._time(x, t)
        return to_x0_eps(self.prediction, self(x, t, **cond), x, self._coefficients_for(x, t, "eps"))

    def _as(self, kind: str, x: Tensor, t: Tensor | float, cond: dict[str, Any]) -> Tensor:
        t = self._time(x, t)
        out = self(x, t, **cond)
        if kind == self.prediction:
            return out
        c = self._coefficients_for(x, t, kind)
        x0, eps = to_x0_eps(self.prediction, out, x, c)
        return from_x0_eps(kind, x0, eps, x, c)

    def eps(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Predicted noise eps_theta(x_t, t)."""
        return self._as("eps", x, t, cond)

    def x0(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Predicted clean data E[x0 | x_t]."""
        return self._as("x0", x, t, cond)

    def score(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Predicted score grad log p_t(x) = -eps / sigma."""
        return self._as("score", x, t, cond)

    def v(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Predicted v = alpha eps - sigma x0."""
        return self._as("v", x, t, cond)

    def velocity(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        """Probability-flow ODE drift dx/dt = alpha' x0 + sigma' eps (book eq. 4.40)."""
        return self._as("velocity", x, t, cond)

    def extra_repr(self) -> str:
        pre = f", precondition={self.precond.name!r}" if self.precond else ""
        cfg = "" if self.guidance is None else f", guidance={self.guidance}"
        return f"process={self.process!r}, prediction={self.prediction!r}{pre}{cfg}, nfe={self.nfe}"
