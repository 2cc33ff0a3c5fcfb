"""Consistency models (book §4.7, eqs. 4.41-4.44): consistency distillation from a diffusion teacher (CD, Song et
al. 2023, arXiv:2303.01469, Alg. 2), consistency training from scratch with the improved-CT recipe (CT, CM
Alg. 3; iCT, Song & Dhariwal 2023, arXiv:2310.14189) and easy consistency tuning (ECT, Geng et al. 2024,
arXiv:2406.14548). The student is f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(x, t) with f(x, t_min) = x
(book eq. 4.43; `kuosan.denoiser.ConsistencyPrecond`), sampled by the `consistency` sampler (CM Alg. 1).

    kuosan distill consistency runs/digits-edm                        # CD: objective.mode = distill
    kuosan distill consistency runs/digits-edm --set objective.mode=tune    # ECT
    kuosan train digits-ct                                            # CT from scratch (objective.mode = train)

One loss for all three (book eq. 4.44): with adjacent levels t_n < t_{n+1} of a discretisation,
    L = E[ lambda(t_n) d( f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(x^_{t_n}, t_n) ) ]
where x_{t_{n+1}} = alpha x0 + sigma z and x^_{t_n} is one step of the teacher's PF-ODE (CD: the sampler
`cm_solver` from t_{n+1} to t_n) or the same x0 and z at t_n (CT, ECT: no teacher; book eq. 4.41, Lemma 1).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..losses.consistency import distance, ect_ratio, ict_n, ict_weight, karras_levels, levels, lognormal_level_probs
from ..train.objectives import Objective

__all__ = ["ConsistencyObjective", "defaults", "build"]


class ConsistencyObjective(Objective):
    """CD / CT / ECT on (data, label) batches (see the module docstring); `net` is F of the student.

    Args:
        make_denoiser: net -> the student's Denoiser (precondition "consistency": f(x, t_min) = x exactly).
        mode: "distill" (CD, needs `teacher`), "train" (CT) or "tune" (ECT).
        teacher: the teacher's Denoiser (CD); frozen.
        solver: the kuosan sampler whose single step on the grid [t_{n+1}, t_n] is CD's Psi.
        dist / huber_c: "l2" | "pseudo-huber" and its c (None: 0.00054 sqrt(dim)).
        n / rho / curriculum: N Karras levels, or iCT's doubling N from curriculum[0] to curriculum[1] over
            total_steps (iCT eq. 8).
        target_decay: mu of the EMA target theta^- (CM Alg. 2); 0: theta^- = stop-grad(theta) (iCT).
        weighting: "uniform" (lambda = 1) or "ict" (1 / (s_{n+1} - s_n)); level_sampling: "uniform" over n or
            "lognormal" (iCT §3.5, p_mean, p_std).
        ect: (stages, q, k, b) of ECT's dt schedule (mode "tune").
        groups: distinct level pairs per batch (0: one per row); the rows share them in turn.
    """

    kind = "consistency"

    def __init__(self, net: nn.Module, make_denoiser, *, mode: str = "distill", teacher: Denoiser | None = None,
                 solver: str = "heun", dist: str = "l2", huber_c: float | None = None, n: int = 18,
                 rho: float = 7.0, curriculum: tuple[int, int] | None = None, total_steps: int = 1000,
                 target_decay: float = 0.95, weighting: str = "uniform", level_sampling: str = "uniform",
                 p_mean: float = -1.1, p_std: float = 2.0, ect: tuple[int, float, float, float] = (8, 2.0, 8.0, 1.0),
                 groups: int = 0, record: dict[str, Any] | None = None):
        super().__init__(net)
        if mode not in ("distill", "train", "tune"):
            raise ValueError(f"objective.mode must be distill, train or tune; got {mode!r}")
        if mode == "distill" and teacher is None:
            raise ValueError("consistency distillation (objective.mode distill) needs a teacher run: kuosan distill "
                             "consistency TEACHER_RUN; to train from scratch use objective.mode train (digits-ct)")
        self.make_denoiser, self.mode, self.solver, self.dist, self.huber_c = make_denoiser, mode, solver, dist, huber_c
        self.n, self.rho, self.curriculum, self.total = n, rho, curriculum, total_steps
        self.weighting, self.level_sampling, self.p_mean, self.p_std = weighting, level_sampling, p_mean, p_std
        self.ect, self.groups, self.record = ect, groups, record
        self.teacher = self.add_frozen("teacher", teacher) if mode == "distill" else None
        self.k = 0  # optimizer steps taken (the curriculum's k); checkpointed in state()
        self._online = make_denoiser(net)
        self._target = make_denoiser(self.add_target("target", target_decay).module) if target_decay > 0 else None
        self.process = self._online.process
        self._grids: dict[int, tuple[Tensor, Tensor]] = {}
        self._cache = None

    def bind(self, model: nn.Module) -> None:
        super().bind(model)
        self._online = self.make_denoiser(model)

    def after_step(self) -> None:
        super().after_step()
        self.k += 1

    def state(self) -> dict[str, Any]:
        return {**super().state(), "mode": self.mode, "step": self.k, "teacher": self.record}

    def load_module_states(self, modules: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        super().load_module_states(modules, state)
        self.k = int(state.get("step", 0))

    def denoiser(self, net: nn.Module) -> Denoiser:
        return self.make_denoiser(net)

    # --- the discretisation ------------------------------------------------------------------------
    def current_n(self) -> int:
        """N at the current step: fixed, or iCT's curriculum (eq. 8)."""
        if self.curriculum is None:
            return self.n
        return ict_n(self.k, self.total, *self.curriculum)

    def grid(self, n: int) -> tuple[Tensor, Tensor]:
        """(ascending process times t_1..t_N, their levels s = sigma/alpha), float64, kept per N."""
        if n not in self._grids:
            ts = karras_levels(self.process, n, self.rho)
            self._grids[n] = (ts, levels(self.process, ts))
        return self._grids[n]

    def draw_levels(self, b: int, s: Tensor, generator: torch.Generator) -> Tensor:
        """(b,) indices n of the pairs (t_n, t_{n+1}): uniform (CM) or iCT's discrete log-normal; with `groups`
        > 0 only that many are drawn and the rows take them in turn (fewer, larger teacher calls in CD)."""
        m = self.groups if 0 < self.groups < b else b
        if self.level_sampling == "lognormal":
            probs = lognormal_level_probs(s, self.p_mean, self.p_std).to(generator.device)
            idx = torch.multinomial(probs, m, replacement=True, generator=generator).cpu()
        else:
            idx = torch.randint(0, len(s) - 1, (m,), generator=generator, device=generator.device).cpu()
        return idx[torch.arange(b) % m]

    # --- the solver step of CD ---------------------------------------------------------------------
    @torch.no_grad()
    def solver_step(self, x: Tensor, t_from: Tensor, t_to: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """CD's Psi: one step of the kuosan sampler `solver` on the teacher from t_from to t_to (per row; rows that
        share a pair of times run as one call of `kuosan.samplers.sample` on the 2-point grid [t_from, t_to])."""
        from ..samplers import SamplerCache, sample

        if self._cache is None:
            self._cache = SamplerCache(self.teacher.process)
        out = torch.empty_like(x)
        pairs = torch.stack([t_from, t_to], 1)
        for pair in pairs.unique(dim=0):
            rows = (pairs == pair).all(1).nonzero().squeeze(1).to(x.device)
            c = {k: v[rows] for k, v in cond.items()} or None
            out[rows] = sample(self.teacher, x[rows], self.solver, nfe=None, grid=pair, denoise_final=False,
                               cond=c, cache=self._cache)
        return out

    # --- the loss ----------------------------------------------------------------------------------
    def _at(self, t: Tensor, x0: Tensor, z: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) z per row."""
        a = self.process.alpha(t).to(x0).reshape(-1, *[1] * (x0.ndim - 1))
        s = self.process.sigma(t).to(x0).reshape(-1, *[1] * (x0.ndim - 1))
        return a * x0 + s * z

    def _target_f(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return (self._target or self._online).x0(x, t.to(x.device), **cond)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        x0 = batch["x0"]
        cond = {"y": batch["y"]} if "y" in batch else {}
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.mode == "tune":
            return self._ect_loss(x0, z, cond, generator)
        ts, s = self.grid(self.current_n())
        idx = self.draw_levels(x0.shape[0], s, generator)
        t_lo, t_hi = ts[idx], ts[idx + 1]
        x_hi = self._at(t_hi, x0, z)
        if self.mode == "distill":  # CM Alg. 2: x^_{t_n} = Psi(x_{t_{n+1}}, t_{n+1} -> t_n) on the teacher
            x_lo = self.solver_step(x_hi, t_hi, t_lo, cond)
        else:  # CM Alg. 3 / book eq. 4.41: the same x0 and z at t_n
            x_lo = self._at(t_lo, x0, z)
        target = self._target_f(x_lo, t_lo, cond)
        online = self._online.x0(x_hi, t_hi.to(x0.device), **cond)
        d = distance(self.dist, online, target, self.huber_c)
        if self.weighting == "ict":
            d = d * ict_weight(s[idx], s[idx + 1]).to(d)
        return d

    def _ect_loss(self, x0: Tensor, z: Tensor, cond: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """ECT (arXiv:2406.14548, §3, their ECMLoss): s ~ lognormal(P_mean, P_std), r = ect_ratio(s, stage), the
        target f_{stop-grad theta}(x_r, r) with the same noise (the data itself where r <= s_min), pseudo-Huber
        distance weighted by 1 / (s - r)."""
        p = self.process
        ends = levels(p, torch.tensor([p.t_min, p.t_max], dtype=torch.float64))
        s_min, s_max = float(ends.min()), float(ends.max())
        u = torch.randn(x0.shape[0], generator=generator, device=generator.device, dtype=torch.float64).cpu()
        s = torch.exp(u * self.p_std + self.p_mean).clamp(s_min * (1 + 1e-6), s_max)
        stages, q, kk, b = self.ect
        stage = min(self.k * stages // max(self.total, 1), stages - 1)
        r = ect_ratio(s, stage, q, kk, b)
        boundary = (r <= s_min).to(x0.device)
        t = p.t_of_log_snr(-torch.log(s))
        t_r = p.t_of_log_snr(-torch.log(r.clamp_min(s_min)))
        target = self._target_f(self._at(t_r, x0, z), t_r, cond)
        target = torch.where(boundary.reshape(-1, *[1] * (x0.ndim - 1)), x0, target)
        online = self._online.x0(self._at(t, x0, z), t.to(x0.device), **cond)
        return distance("pseudo-huber", online, target, self.huber_c) * (1.0 / (s - r)).to(x0)


# --- wiring: `kuosan distill consistency`, recipe digits-ct ----------------------------------------------
def defaults(teacher_cfg) -> dict[str, Any]:
    """The student of an EDM-preconditioned teacher: same F, precondition consistency, CD, 2-step sampling.
    See docs/distill_consistency.md for why these numbers."""
    if teacher_cfg.precondition != "edm":
        raise ValueError(f"consistency distillation needs an EDM-preconditioned teacher (precondition: edm, e.g. "
                         f"recipe digits-edm): its F becomes the student's; teacher {teacher_cfg.name!r} has "
                         f"precondition {teacher_cfg.precondition!r} and prediction {teacher_cfg.prediction!r}")
    return {
        "precondition": "consistency",
        "objective": {"mode": "distill", "cm_solver": "dpm-solver-2", "cm_distance": "pseudo-huber", "cm_n": 8,
                      "cm_target_decay": 0.95, "cm_weighting": "ict", "cm_levels": "uniform", "cm_groups": 4,
                      "cm_tau": 0.65},
        "train": {"steps": 2000, "batch_size": 64, "lr": 4e-4, "warmup": 0, "schedule": "cosine",
                  "ema_decay": 0.995, "ckpt_every": 500, "sample_every": 0},
        "sample": {"method": "consistency", "nfe": 2},
    }


def build(cfg, data, teacher) -> ConsistencyObjective:
    """The student (the teacher's F for distill / tune, a fresh network for train) and its objective."""
    from ..registry import build_denoiser, build_network
    from . import teacher_record

    o = cfg.objective
    if cfg.precondition != "consistency":
        raise ValueError(f"objective kind consistency needs precondition: consistency (f(x, t_min) = x); run "
                         f"{cfg.name!r} has precondition {cfg.precondition!r}")
    if o.mode == "train":
        if teacher is not None:
            raise ValueError(f"objective.mode train is consistency training from scratch and takes no teacher "
                             f"(got {cfg.teacher}); use objective.mode tune to start from a teacher (ECT)")
        net = build_network(cfg, data.shape, data.num_classes)
    else:
        if teacher is None:
            raise ValueError(f"objective.mode {o.mode} needs a teacher run: kuosan distill consistency TEACHER_RUN "
                             f"(or objective.mode train, recipe digits-ct, to train from scratch)")
        if teacher.config.precondition != "edm":
            defaults(teacher.config)  # raises the one-line message
        net = copy.deepcopy(teacher.denoiser.net).train().requires_grad_(True)
    decay = o.cm_target_decay if o.mode == "distill" else 0.0
    if o.cm_tau is not None:
        write_grids(cfg.run_dir, build_denoiser(cfg, net).process, o.cm_tau)
    return ConsistencyObjective(
        net, functools.partial(build_denoiser, cfg), mode=o.mode,
        teacher=teacher.denoiser if teacher is not None and o.mode == "distill" else None,
        solver=o.cm_solver, dist=o.cm_distance, huber_c=o.cm_huber_c or _c(data), n=o.cm_n, rho=o.cm_rho,
        curriculum=o.cm_curriculum, total_steps=cfg.train.steps, target_decay=decay, weighting=o.cm_weighting,
        level_sampling=o.cm_levels, p_mean=o.cm_p_mean, p_std=o.cm_p_std,
        ect=(o.ect_stages, o.ect_q, o.ect_k, o.ect_b), groups=o.cm_groups, record=teacher_record(teacher))


def write_grids(run_dir, process, tau: float, nfes: range = range(2, 9)) -> None:
    """The student's multistep grids at tau (CM Alg. 1's tau_1, `objective.cm_tau`) as the run's tuned grids
    <run>/grids/consistency-K.json, which `kuosan sample RUN --nfe K` uses (kuosan.tuned_grids)."""
    from ..samplers.consistency import restart_grid
    from ..tuned_grids import save_grid

    for k in nfes:
        ts = restart_grid(process, process.timesteps(k, "karras"), tau)
        save_grid(run_dir, "consistency", k, {"method": "consistency", "nfe": k, "times": ts.tolist(), "tau": tau,
                                               "source": "objective.cm_tau: the evaluation after the first at "
                                               "level tau, then Karras (CM Alg. 1; "
                                               "kuosan.samplers.consistency.restart_grid)"})


def _c(data) -> float:
    """iCT's pseudo-Huber c for one example of the data (0.00054 sqrt(dim))."""
    return 0.00054 * math.sqrt(math.prod(data.shape))
