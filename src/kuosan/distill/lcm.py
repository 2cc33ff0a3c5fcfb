"""Latent consistency distillation (Luo et al. 2023, arXiv:2310.04378, Alg. 1; book §4.7.1, eqs. 4.42-4.47 and
Algorithm 1), here wherever x lives (pixels of the 8x8 digits, or a latent space): a guidance-scale-conditioned
consistency function f_theta(x, w, c, t) (kuosan.lcm_function) learns, from a class-conditional teacher with
classifier-free guidance, to map x_{t_{n+k}} to the endpoint of the teacher's guided PF-ODE trajectory.

Each step (Algorithm 1), with kuosan's CFG convention out_u + w (out_c - out_u) (w = 1: conditional model):
    x0, c ~ data;  n uniform on the skipping grid;  w ~ U[w_min, w_max];  x_{t_{n+k}} ~ q(x_{t_{n+k}} | x0)
    x^_{t_n} = x_{t_{n+k}} + w Psi(x_{t_{n+k}}, t_{n+k}, t_n, c) + (1 - w) Psi(x_{t_{n+k}}, t_{n+k}, t_n, null)
    loss = d(f_theta(x_{t_{n+k}}, w, c, t_{n+k}), f_theta^-(x^_{t_n}, w, c, t_n))
    theta^- <- stopgrad(mu theta^- + (1 - mu) theta)                         (mu = lcm_target_decay, LCM: 0.95)
The paper's eq. 4.47 is x^ = x + (1 + omega) Psi(c) - omega Psi(null) with omega its guidance scale: omega =
w - 1, so `--guidance W` of the student means the teacher's `--guidance W` (the paper's omega = W - 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..lcm_function import default_w, lcm_denoiser, lcm_time, timestep_count, with_guidance_scale
from ..train.objectives import Objective
from . import teacher_record

__all__ = ["LCMObjective", "cfg_solver_step", "skipping_grid", "top_time", "lcm_sampling_times", "write_grids",
           "write_one_step_grid", "sd_terminal_level", "pseudo_huber", "defaults", "build"]


MAX_LEVEL = 8.0  # the default objective.lcm_max_level (sigma/alpha); measured against none and 14.6 (SD's last step)


def defaults(teacher_cfg: Any) -> dict[str, Any]:
    """The student config from a class-conditional teacher's: LCM's boundary wrapper over the teacher's network
    (plus the zero-initialised w embedding), the LCM objective, and the multistep consistency sampler at 4 steps."""
    _check_teacher_config(teacher_cfg)
    return {
        "precondition": "lcm",
        "net": {"guidance_embedding": True, "guidance_scale": 10.0},  # features smooth in w (docs/distill_lcm.md)
        # c is always the label (the student learns f for real classes only); k = 50 and a 10x learning rate for
        # the w embedding; training and sampling only at noise levels sigma/alpha <= 8 (alpha >= 0.12; the
        # digits teacher's top 8 of 20 skipping-grid levels dropped): measured in docs/distill_lcm.md
        "objective": {"p_uncond": 0.0, "skip": 50, "lcm_w_lr_scale": 10.0, "lcm_w_min_prob": 0.5,
                      "lcm_max_level": MAX_LEVEL},
        "train": {"steps": 1500, "batch_size": 64, "lr": 2e-4, "warmup": 0, "schedule": "constant",
                  "ema_decay": 0.99, "ckpt_every": 500, "sample_every": 0},
        "sample": {"method": "consistency", "nfe": 4, "guidance_interval": None},
    }


def _check_teacher_config(tcfg: Any) -> None:
    name = tcfg.out_dir or tcfg.name
    if not getattr(tcfg.data, "conditional", False):
        raise ValueError(f"LCM distils a class-conditional teacher with classifier-free guidance (e.g. recipe "
                         f"digits-cond); {name} has no classes")
    if tcfg.objective.p_uncond <= 0:
        raise ValueError(f"LCM needs the teacher's unconditional model for classifier-free guidance; {name} was "
                         "trained without label dropout (objective.p_uncond = 0)")
    if tcfg.precondition != "none" or tcfg.loss.kind == "hybrid":
        raise ValueError(f"LCM wraps the teacher's network as it is: {name} has precondition "
                         f"{tcfg.precondition!r} / loss {tcfg.loss.kind!r}; distil a plain eps/x0/v teacher")


def skipping_grid(process: Any, k: int, t_top: float | None = None) -> tuple[Tensor, Tensor]:
    """LCM's skipping-step grid (Alg. 1; diffusers' DDIMSolver): start indices t'_{n+k} = jk - 1, j = 1 .. N // k,
    ends t'_n = max(t'_{n+k} - k, 0), as continuous times (float64): (t_{n+k}, t_n), t_n = t_min at the bottom;
    only the starts t_{n+k} <= t_top (default t_max)."""
    n = timestep_count(process)
    if not 1 <= k < n:
        raise ValueError(f"objective.skip = {k}: the skipping interval must lie in 1 .. {n - 1} (the teacher's steps)")
    start = torch.arange(1, n // k + 1, dtype=torch.int64) * k - 1
    t_nk, t_n = lcm_time(start, process), lcm_time((start - k).clamp_min(0), process)
    keep = t_nk <= (process.t_max if t_top is None else t_top) + 1e-9
    if not keep.any():
        raise ValueError(f"objective.skip = {k}: no skipping-grid start lies below t = {t_top} (lcm_max_level)")
    return t_nk[keep], t_n[keep]


def top_time(process: Any, level: float | None) -> float:
    """The time of noise level sigma/alpha = `level` (lambda = log(alpha/sigma) = -log level), at most t_max;
    None: t_max."""
    if level is None:
        return float(process.t_max)
    lam = torch.tensor([-math.log(level)], dtype=torch.float64)
    return min(float(process.t_max), float(process.t_of_log_snr(lam)))


def lcm_sampling_times(starts: Tensor, k: int, t_min: float) -> Tensor:
    """LCM's K evaluation times on its skipping grid (diffusers LCMScheduler.set_timesteps): the starts from the
    top, every (n // K)-th, the first K of them, then t_min (not evaluated); float64, descending."""
    desc = starts.flip(0).to(torch.float64)
    if not 1 <= k <= len(desc):
        raise ValueError(f"{k} sampling steps: the skipping grid has {len(desc)} points; choose 1 .. {len(desc)}")
    return torch.cat([desc[:: len(desc) // k][:k], torch.tensor([t_min], dtype=torch.float64)])


def sd_terminal_level() -> float:
    """sigma/alpha at Stable Diffusion's last training step (scaled_linear betas, N = 1000): 14.6, the noisiest
    level LCM's one-step sampling was made for (Luo et al. 2023, arXiv:2310.04378, trained on SD)."""
    from ..processes import DiscreteVP

    p = DiscreteVP.scaled_linear()
    t = torch.tensor([p.t_max], dtype=torch.float64)
    return float(p.sigma(t) / p.alpha(t))


def write_one_step_grid(run_dir: Any, process: Any, k: int) -> Tensor | None:
    """A student of a teacher whose last step is noisier than SD's (DDPM's linear betas: sigma/alpha = 157 at
    t_max, alpha = 0.0064) cannot map x_T to x0 in one step: an eps network's x0 = (x - sigma eps)/alpha multiplies
    every error of eps by 1/alpha (measured: FD 187 on the digits). Its one-step grid then starts at the highest
    skipping-grid time no noisier than SD's terminal level (sigma/alpha <= 14.6; on the digits teacher t' = 699,
    sigma/alpha 11.8, FD 8.1 at w = 1), from the prior draw, whose alpha x0 part is below 10% there; it is written
    as <run>/grids/consistency-1.json. Returns its times, or None (nothing written) for a teacher whose t_max is
    no noisier than SD's."""
    from ..tuned_grids import save_grid

    level = sd_terminal_level()
    t_top = top_time(process, level)
    if t_top >= process.t_max - 1e-12:
        return None
    ts = lcm_sampling_times(skipping_grid(process, k, t_top)[0], 1, process.t_min)
    source = (f"one step from the highest skipping-grid time with sigma/alpha <= {level:.3g} (Stable Diffusion's "
              "terminal level; kuosan.distill.lcm.write_one_step_grid)")
    save_grid(run_dir, "consistency", 1, {"method": "consistency", "nfe": 1, "times": ts.tolist(), "source": source})
    return ts


def write_grids(run_dir: Any, process: Any, starts: Tensor, nfes: range = range(1, 9)) -> None:
    """The student's sampling grids on its skipping grid (lcm_sampling_times) as the run's stored grids
    <run>/grids/consistency-K.json, which `kuosan sample RUN --nfe K` uses (kuosan.tuned_grids)."""
    from ..tuned_grids import save_grid

    for k in nfes:
        if k > len(starts):
            break
        ts = lcm_sampling_times(starts, k, process.t_min)
        save_grid(run_dir, "consistency", k, {"method": "consistency", "nfe": k, "times": ts.tolist(),
                                               "source": "objective.lcm_max_level: LCM's sampling times on the "
                                               "skipping grid below it (kuosan.distill.lcm.write_grids)"})


@torch.no_grad()
def cfg_solver_step(teacher: Denoiser, x: Tensor, t: float, s: float, y: Tensor, null: int, w: Tensor,
                    solver: str = "ddim", cache: Any = None) -> Tensor:
    """The CFG-augmented one-step solver (LCM eq. 9 / book eq. 4.47) from t to s < t, one shared time pair:
        x^_s = x + w Psi(x, t, s, c) + (1 - w) Psi(x, t, s, null) = Psi_u + w (Psi_c - Psi_u)   (w per row),
    Psi the teacher's sampler `solver` on the 2-point grid (t, s) (its increment x_s - x), both branches one batch."""
    from ..samplers import sample

    b = x.shape[0]
    cond = {"y": torch.cat([y, torch.full_like(y, null)])}
    out = sample(teacher, torch.cat([x, x]), method=solver, nfe=None, grid=torch.tensor([t, s], dtype=torch.float64),
                 denoise_final=False, cond=cond, cache=cache)
    step_c, step_u = out[:b], out[b:]
    return torch.lerp(step_u, step_c, w.to(x.dtype).view(-1, *[1] * (x.ndim - 1)))


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """Pseudo-Huber distance (Song & Dhariwal 2023, arXiv:2310.14189, §3.3): sqrt(||a - b||^2 + c^2) - c, (B,)."""
    d2 = (a - b).flatten(1).pow(2).sum(1)
    return torch.sqrt(d2 + c * c) - c


class LCMObjective(Objective):
    """Latent consistency distillation (LCM Alg. 1) of `teacher` (a class-conditional eps/x0/v Denoiser with a
    null class) into `net` (guidance-embedded, initialised from the teacher), with an EMA target theta^-. Each
    batch draws `time_groups` grid indices n, each shared by a block of rows (kuosan's solvers take one grid per
    call; a call per row would double a step's cost on the CPU); w and x_{t_{n+k}} are drawn per row."""

    kind = "lcm"

    def __init__(self, net: nn.Module, teacher: Denoiser, *, null_class: int, w_min: float = 1.0,
                 w_max: float = 4.0, skip: int = 20, solver: str = "ddim", distance: str = "pseudo-huber",
                 huber_c: float | None = None, target_decay: float = 0.95, prediction: str = "eps",
                 record: dict[str, Any] | None = None, time_groups: int = 8, w_lr_scale: float = 1.0,
                 t_top: float | None = None, w_min_prob: float = 0.0):
        super().__init__(net)
        if not 0 <= w_min <= w_max:
            raise ValueError(f"objective.w_min = {w_min} and w_max = {w_max}: need 0 <= w_min <= w_max")
        from ..samplers import SamplerCache

        self.teacher = self.add_frozen("teacher", teacher)
        self.process, self.prediction, self.null = teacher.process, prediction, null_class
        self.w_min, self.w_max, self.skip, self.solver = w_min, w_max, skip, solver
        self.distance, self.huber_c = distance, huber_c
        self.t_start, self.t_end = skipping_grid(self.process, skip, t_top)
        self.target = self.add_target("target", target_decay)
        self.cache, self.record = SamplerCache(self.process), record
        self.time_groups, self.w_lr_scale, self.w_min_prob = time_groups, w_lr_scale, w_min_prob

    def param_groups(self) -> list[dict[str, Any]]:
        """Two AdamW groups: the network at train.lr, its new w embedding (`guide.*`, zero-initialised) at
        w_lr_scale times it, so the student learns to follow w within the budget (docs/distill_lcm.md)."""
        guide = getattr(self.net, "guide", None)
        w_params = [p for p in guide.parameters() if p.requires_grad] if guide is not None else []
        ids = {id(p) for p in w_params}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr_scale": 1.0}, {"params": w_params, "lr_scale": self.w_lr_scale}]

    def _f(self, net: nn.Module) -> Denoiser:
        return lcm_denoiser(net, self.process, self.prediction)

    def distance_of(self, a: Tensor, b: Tensor) -> Tensor:
        """d(a, b) per example: mean squared error, or pseudo-Huber with c = 0.00054 sqrt(dim) by default."""
        if self.distance == "l2":
            return (a - b).flatten(1).pow(2).mean(1)
        return pseudo_huber(a, b, self.huber_c or 0.00054 * math.sqrt(a[0].numel()))

    def draw_w(self, b: int, generator: torch.Generator, dev: torch.device | str = "cpu") -> Tensor:
        """(b,) guidance scales: w ~ U[w_min, w_max] (LCM Alg. 1), except a share `w_min_prob` of the rows drawn at
        w_min exactly. With w_min = 1 those rows distil the unguided conditional ODE, a fixed point the w embedding
        must tell apart from the guided ones (docs/distill_lcm.md: the student otherwise follows w weakly)."""
        w = self.w_min + (self.w_max - self.w_min) * torch.rand(b, generator=generator, device=dev)
        if self.w_min_prob > 0:
            at_min = torch.rand(b, generator=generator, device=dev) < self.w_min_prob
            w = torch.where(at_min, torch.full_like(w, self.w_min), w)
        return w

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        x0, y = batch["x0"], batch["y"]
        dev, b = x0.device, x0.shape[0]
        g = min(self.time_groups, b)  # rows share a time pair in g groups: one solver call per group
        j = torch.randint(0, len(self.t_start), (g,), generator=generator, device=dev).cpu()
        j = j.repeat_interleave(-(-b // g))[:b]  # each row's n is still uniform on the grid
        w = self.draw_w(b, generator, dev)
        t_nk, t_n = self.t_start[j].to(dev), self.t_end[j].to(dev)
        x_t, _ = self.process.marginal_sample(x0, t_nk, generator=generator)
        x_hat = torch.empty_like(x_t)
        for jj in j.unique().tolist():  # eq. 4.47 per time pair (the solver takes one shared grid)
            rows = (j == jj).nonzero().flatten().to(dev)
            x_hat[rows] = cfg_solver_step(self.teacher, x_t[rows], float(self.t_start[jj]), float(self.t_end[jj]),
                                          y[rows], self.null, w[rows], self.solver, self.cache)
        with torch.no_grad():
            target = self._f(self.target.module).x0(x_hat, t_n, y=y, w=w)
        return self.distance_of(self._f(self.model).x0(x_t, t_nk, y=y, w=w), target)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "teacher": self.record, "w_range": [self.w_min, self.w_max], "skip": self.skip,
                "solver": self.solver}

    def denoiser(self, net: nn.Module) -> Denoiser:
        """Previews: the student at w = max(1, w_min) (the default of `kuosan sample` without --guidance)."""
        return with_guidance_scale(self._f(net), default_w(self.w_min, self.w_max))


def build(cfg: Any, data: Any, teacher: Any) -> LCMObjective:
    """The student (cfg.net with the w embedding, the teacher's weights loaded; only the new w-embedding keys are
    missing) and its LCM objective; an unconditional teacher is refused."""
    from ..registry import build_network

    if teacher is None:
        raise ValueError("LCM distils a teacher run: give one (kuosan distill lcm TEACHER_RUN)")
    if teacher.num_classes is None:
        raise ValueError(f"LCM distils a class-conditional teacher with classifier-free guidance (e.g. recipe "
                         f"digits-cond); {teacher.run_dir} has no classes")
    _check_teacher_config(teacher.config)
    if cfg.precondition != "lcm" or not cfg.net.kwargs.get("guidance_embedding"):
        raise ValueError("an LCM student needs precondition: lcm and net.guidance_embedding: true (the defaults of "
                         "`kuosan distill lcm`)")
    net = build_network(cfg, data.shape, data.num_classes)
    missing, unexpected = net.load_state_dict(teacher.denoiser.net.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guide.") for k in missing):
        raise ValueError(f"the student network does not match teacher {teacher.run_dir}: missing "
                         f"{[k for k in missing if not k.startswith('guide.')][:3]}, unexpected {unexpected[:3]}")
    o = cfg.objective
    t_top = top_time(teacher.denoiser.process, o.lcm_max_level)
    if o.lcm_max_level is not None:  # sampling starts at the highest trained time, the top of the skipping grid
        write_grids(cfg.run_dir, teacher.denoiser.process, skipping_grid(teacher.denoiser.process, o.skip, t_top)[0])
    else:  # one step from t_max is broken on a teacher noisier than SD at t_max: start that one lower
        write_one_step_grid(cfg.run_dir, teacher.denoiser.process, o.skip)
    return LCMObjective(net, teacher.denoiser, null_class=teacher.num_classes, w_min=o.w_min, w_max=o.w_max,
                        skip=o.skip, solver=o.lcm_solver, distance=o.lcm_distance, huber_c=o.lcm_huber_c,
                        target_decay=o.lcm_target_decay, prediction=teacher.denoiser.prediction,
                        record=teacher_record(teacher), w_lr_scale=o.lcm_w_lr_scale, t_top=t_top,
                        w_min_prob=o.lcm_w_min_prob)
