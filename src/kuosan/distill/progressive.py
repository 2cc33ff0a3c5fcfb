"""Progressive distillation (Salimans & Ho 2022, arXiv:2202.00512, Alg. 2; book §4.6.3): `rounds` rounds, each
halving the DDIM step count; in round r the frozen teacher (the original run, then round r-1's student) takes two
DDIM steps t -> t' -> t'' on its 2N-step grid and the student, initialised from the teacher, learns the x0 whose
single DDIM step t -> t'' lands on the same point.

    kuosan distill progressive runs/digits-edm --rounds 3          # 16 -> 8 -> 4 -> 2 steps (objective.pd_steps 16)
    kuosan sample runs/digits-edm-progressive                       # ddim-x0, 2 evaluations

Grid convention: the N-step grid is the default grid of the "ddim-x0" sampler (make_ts: N intervals from t_max to
t_min; uniform in log-SNR for EDM, in t for DiscreteVP), so the N-step grid is every other point of the 2N-step one.
Its last point t_min stands for Salimans & Ho's t = 0: the last step of every grid returns x0 (sigma = 0), and an
N-step student costs exactly N evaluations (kuosan.samplers.sample_ddim_x0).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..samplers import METHODS
from ..samplers.dpm_solver import sample_ddim, sample_ddim_x0
from ..samplers.grid import default_grid, make_ts
from ..train.ema import EMA
from ..train.objectives import Objective

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig
    from ..pipeline import Pipeline
    from ..processes.base import Process
    from ..registry import Dataset

__all__ = ["defaults", "resolve", "build", "ProgressiveObjective", "student_grid", "x0_target", "loss_weight",
           "teacher_two_steps"]

SAMPLER = "ddim-x0"
_DISTILLABLE = ("denoising",)  # objective kinds of a teacher whose network is a denoiser on the whole data


def student_grid(process: Process, n: int) -> Tensor:
    """Salimans & Ho 2022, arXiv:2202.00512, Alg. 2's N-step grid: the n + 1 descending float64 times that
    `kuosan.sample(student, x_T, "ddim-x0", nfe=n)` uses (its last, t_min, stands for t = 0)."""
    ts, _ = make_ts(process, default_grid(process, METHODS[SAMPLER].grids), n)
    return ts


def x0_target(z_t: Tensor, z_tpp: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_tpp: Tensor,
              sigma_tpp: Tensor) -> Tensor:
    """Salimans & Ho 2022, arXiv:2202.00512, Alg. 2: x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' -
    (sigma_t''/sigma_t) alpha_t), the x0 whose one DDIM step z_t -> t'' lands on the teacher's two-step z_t''."""
    r = sigma_tpp / sigma_t
    return (z_tpp - r * z_t) / (alpha_tpp - r * alpha_t)


def loss_weight(alpha: Tensor, sigma: Tensor, kind: str = "truncated-snr") -> Tensor:
    """Salimans & Ho 2022, arXiv:2202.00512, §4: the weight of ||x - x^||^2: "truncated-snr" max(SNR, 1) =
    max(||x - x^||^2, ||eps - eps^||^2) / ||x - x^||^2, or "snr+1" 1 + SNR (the v loss); SNR = alpha^2 / sigma^2."""
    snr = (alpha / sigma) ** 2
    if kind == "truncated-snr":
        return snr.clamp(min=1.0)
    if kind == "snr+1":
        return 1.0 + snr
    raise ValueError(f"objective.pd_weighting: 'truncated-snr' or 'snr+1', not {kind!r}")


def teacher_two_steps(teacher: Denoiser, z_t: Tensor, ts: Tensor, last: bool,
                      cond: dict[str, Any] | None = None) -> Tensor:
    """Salimans & Ho 2022, arXiv:2202.00512, Alg. 2: z_t'' from two DDIM steps of the teacher over ts = [t, t', t'']
    (kuosan's own sample_ddim); when t'' ends the grid (last) it stands for sigma = 0: z_t'' = x0 at t' (ddim-x0)."""
    step = sample_ddim_x0 if last else sample_ddim
    kw = {} if last else {"denoise": False}
    return step(teacher, z_t, ts, cond=cond, **kw)


class ProgressiveObjective(Objective):
    """Alg. 2 over all rounds: the round follows from the step (train.steps split evenly); at each round's start
    the previous round's EMA student becomes the frozen teacher and the student and its EMA restart from it."""

    kind = "progressive"

    def __init__(self, net: nn.Module, teacher_net: nn.Module, make_denoiser: Any, *, process: Process,
                 pd_steps: int, rounds: int, round_steps: int, weighting: str = "truncated-snr",
                 first_clip: Any = None, clip: Any = None, p_uncond: float = 0.0, null_class: int | None = None,
                 record: dict[str, Any] | None = None):
        super().__init__(net)
        self.teacher_net = self.add_frozen("teacher", teacher_net)
        self.make_denoiser, self.process = make_denoiser, process
        self.pd_steps, self.rounds, self.round_steps, self.weighting = pd_steps, rounds, round_steps, weighting
        self.first_clip, self.clip = first_clip, clip  # x0 clipping of round 0's teacher (the run's), of the others
        self.p_uncond, self.null_class, self.record = p_uncond, null_class, record
        self.round = 0
        self._online: Denoiser | None = None

    # --- bookkeeping ------------------------------------------------------------------------------------
    def student_steps(self, r: int | None = None) -> int:
        """N of round r: pd_steps / 2^(r + 1)."""
        return self.pd_steps >> ((self.round if r is None else r) + 1)

    def round_of(self, step: int) -> int:
        """The round of (0-based) optimizer step `step`; the last round takes the remainder of train.steps."""
        return min(step // self.round_steps, self.rounds - 1)

    def teacher(self) -> Denoiser:
        clip = self.first_clip if self.round == 0 else self.clip
        return self.make_denoiser(self.teacher_net).replace(clip_x0=clip)

    def bind(self, model: nn.Module) -> None:
        super().bind(model)
        self._online = self.make_denoiser(model)

    @torch.no_grad()
    def restart(self, step: int, ema: EMA) -> bool:
        """Alg. 2's outer loop: after the last step of a round, teacher <- EMA student; student, EMA <- teacher."""
        if step % self.round_steps or step // self.round_steps >= self.rounds:
            return False
        self.round = step // self.round_steps
        weights = copy.deepcopy(ema.module.state_dict())
        self.teacher_net.load_state_dict(weights)
        self.net.load_state_dict(weights)
        ema.updates = 0
        return True

    # --- one step ---------------------------------------------------------------------------------------
    def targets_for(self, x0: Tensor, j: Tensor, eps: Tensor, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(z_t, x~) for data x0 at student step j (t = T[2j] of the teacher's 2N grid T): Alg. 2's target."""
        n2 = 2 * self.student_steps()
        grid = student_grid(self.process, n2)  # (2N + 1,) float64
        a = self.process.alpha(grid)
        s = self.process.sigma(grid)
        a[-1], s[-1] = 1.0, 0.0  # the grid's last point stands for t = 0
        shape = (-1,) + (1,) * (x0.ndim - 1)
        at, st = a[2 * j].to(x0).reshape(shape), s[2 * j].to(x0).reshape(shape)
        z_t = at * x0 + st * eps
        z_tpp = torch.empty_like(z_t)
        teacher = self.teacher()
        for k in torch.unique(j).tolist():
            m = j == k
            sub = {key: v[m] for key, v in cond.items()}
            z_tpp[m] = teacher_two_steps(teacher, z_t[m], grid[2 * k: 2 * k + 3], 2 * k + 2 == n2, sub or None)
        att, stt = a[2 * j + 2].to(x0).reshape(shape), s[2 * j + 2].to(x0).reshape(shape)
        return z_t, x0_target(z_t, z_tpp, at, st, att, stt)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        if self._online is None:
            self.bind(self.model)
        x0 = batch["x0"]
        cond = {}
        if "y" in batch:
            y = batch["y"]
            if self.p_uncond > 0:
                drop = torch.rand(y.shape, generator=generator, device=y.device) < self.p_uncond
                y = torch.where(drop, torch.full_like(y, self.null_class), y)
            cond["y"] = y
        n = self.student_steps()
        j = torch.randint(0, n, (x0.shape[0],), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        z_t, target = self.targets_for(x0, j, eps, cond)
        grid = student_grid(self.process, n).to(x0.device)
        t = grid[j]
        w = loss_weight(self.process.alpha(t), self.process.sigma(t), self.weighting).to(x0)
        x_hat = self._online.x0(z_t, t.to(x0), **cond)
        return w * (x_hat - target).square().flatten(1).mean(1)

    # --- saving and sampling ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {**super().state(), "round": self.round, "rounds": self.rounds, "pd_steps": self.pd_steps,
                "student_steps": self.student_steps(), "teacher": self.record}

    def module_states(self) -> dict[str, dict[str, Tensor]]:
        """The current round's teacher (round r > 0: round r-1's EMA student) travels with every checkpoint."""
        return {**super().module_states(), "pd_teacher": self.teacher_net.state_dict()}

    def load_module_states(self, modules: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        super().load_module_states(modules, state)
        if "pd_teacher" not in modules:
            raise ValueError(f"the checkpoint holds no progressive-distillation teacher (it has {sorted(modules)})")
        self.teacher_net.load_state_dict(modules["pd_teacher"])
        self.round = int(state.get("round", 0))

    def denoiser(self, net: nn.Module) -> Denoiser:
        return self.make_denoiser(net)


# --- the config side: `kuosan distill progressive TEACHER` ---------------------------------------------------
def _refuse(kind: str, where: str) -> None:
    if kind not in _DISTILLABLE:
        raise ValueError(f"teacher run {where} has objective kind {kind!r}: progressive distillation needs a "
                         "diffusion run trained by `kuosan train` (objective 'denoising')")


def defaults(tcfg: RunConfig) -> dict[str, Any]:
    """16 teacher DDIM steps halved 3 times (a 2-step student), 600 steps of batch 128 in all (200 a round: about
    7 minutes of one core on the digits U-Net), Adam at 2e-4 without warm-up, EMA 0.995; the student samples with
    ddim-x0 at its own steps, unclipped (its x0 is a jump target, not an image; the last step's target is already
    the teacher's clipped x0)."""
    _refuse(tcfg.objective.kind, tcfg.name)
    rounds, pd_steps = 3, 16
    return {
        "objective": {"rounds": rounds, "pd_steps": pd_steps, "pd_weighting": "truncated-snr"},
        "train": {"steps": 600, "batch_size": 128, "lr": 2e-4, "warmup": 0, "schedule": "constant",
                  "ema_decay": 0.995, "ema_warmup": True, "ckpt_every": 200, "sample_every": 0, "log_every": 50},
        "sample": {"method": SAMPLER, "nfe": pd_steps >> rounds, "clip_x0": "none"},
    }


def resolve(tree: dict[str, Any], overrides: list[str]) -> None:
    """sample.nfe = pd_steps / 2^rounds after --rounds / --set, unless sample.nfe itself was set."""
    if any(o.partition("=")[0].strip() == "sample.nfe" for o in overrides):
        return
    obj = tree.get("objective", {})
    try:
        rounds, n0 = int(obj["rounds"]), int(obj["pd_steps"])
    except (KeyError, TypeError, ValueError):
        return  # parse_config names the bad field
    if rounds >= 1 and n0 % (1 << rounds) == 0:
        tree.setdefault("sample", {})["nfe"] = n0 >> rounds


def build(cfg: RunConfig, data: Dataset, teacher: Pipeline | None) -> ProgressiveObjective:
    """The student (the teacher's network and weights), the frozen teacher copy and the Alg. 2 objective."""
    from ..pipeline import x0_clipper
    from ..registry import build_denoiser, build_network, build_process
    from . import teacher_record

    o = cfg.objective
    if teacher is None:
        raise ValueError("progressive distillation needs a teacher run: kuosan distill progressive TEACHER_RUN")
    _refuse(teacher.config.objective.kind, str(cfg.teacher))
    if o.pd_steps % (1 << o.rounds):
        raise ValueError(f"objective.pd_steps={o.pd_steps} is not divisible by 2^rounds = {1 << o.rounds} "
                         f"(objective.rounds={o.rounds}): each round halves the step count")
    if cfg.train.steps < o.rounds:
        raise ValueError(f"train.steps={cfg.train.steps} is fewer than objective.rounds={o.rounds}: every round "
                         "needs a step")
    process = build_process(cfg.process)
    fine, coarse = student_grid(process, o.pd_steps), student_grid(process, o.pd_steps >> 1)
    if not torch.allclose(fine[::2], coarse, rtol=1e-9, atol=0.0):
        raise ValueError(f"the {cfg.process.kind} process's {SAMPLER} grids do not nest (the N-step grid is not "
                         "every other point of the 2N-step one): progressive distillation cannot use them")
    net = build_network(cfg, data.shape, data.num_classes)
    net.load_state_dict(teacher.denoiser.net.state_dict())
    conditional = data.num_classes is not None
    return ProgressiveObjective(
        net, copy.deepcopy(net), lambda m: build_denoiser(cfg, m), process=process, pd_steps=o.pd_steps,
        rounds=o.rounds, round_steps=cfg.train.steps // o.rounds, weighting=o.pd_weighting,
        first_clip=x0_clipper(teacher.config.sample.clip_x0, data.value_range),
        clip=x0_clipper(cfg.sample.clip_x0, data.value_range),
        p_uncond=o.p_uncond if conditional else 0.0, null_class=data.num_classes, record=teacher_record(teacher))
