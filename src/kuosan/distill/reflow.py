"""Rectified-flow reflow and its one-step distillation (Liu et al. 2022, arXiv:2209.03003; book §4.8.2).

    kuosan distill reflow runs/digits-edm                                   # 2-RF on the teacher's ODE pairs
    kuosan distill reflow runs/digits-edm-reflow --set objective.rf_stage=distill   # one Euler step, §2.3
    kuosan distill reflow runs/digits-edm-reflow                            # 3-RF (reflow of a reflow run)

Pairs (z, x): z ~ N(0, I), x = the teacher's deterministic ODE endpoint from its prior prior_std * z (EDM:
x_T = sigma_max z), generated once into <run>/pairs.safetensors (kuosan.distill.pairs). Directions are kuosan's
RectifiedFlow: x_t = (1 - t) x + t z, t = 1 is noise, velocity v = dx_t/dt = z - x (Liu et al.'s X_1 - X_0
with their time reversed). The student is a velocity-predicting rectified flow on t in [0, 1] (t_min = 0, so
flow-euler with K evaluations is exactly K uniform Euler steps from t = 1 to 0).
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..losses._common import mean_flat
from ..train.objectives import Objective
from . import teacher_record
from .pairs import PAIRS_FILE, check_deterministic, load_pairs, make_pairs, pairs_dataset, save_pairs

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig
    from ..pipeline import Pipeline
    from ..registry import Dataset

__all__ = ["defaults", "after_overrides", "build", "ReflowObjective", "rf_loss", "one_step_loss"]

_RF_PAIRS = ("flow-midpoint", 33)  # pairs of a rectified-flow teacher: 16 midpoint steps + the final step to t = 0


def rf_loss(den: Denoiser, x: Tensor, z: Tensor, t: Tensor, **cond: Any) -> Tensor:
    """Liu et al. 2022, arXiv:2209.03003, eq. 1 / Alg. 1: || (z - x) - v(x_t, t) ||^2 per example (mean over
    dimensions), x_t = alpha_t x + sigma_t z; the target alpha' x + sigma' z is z - x on rectified flow."""
    p = den.process
    a, s = (p.alpha(t).to(x.dtype), p.sigma(t).to(x.dtype))
    da, ds = (p.dalpha_dt(t).to(x.dtype), p.dsigma_dt(t).to(x.dtype))
    shape = (-1,) + (1,) * (x.ndim - 1)
    x_t = a.reshape(shape) * x + s.reshape(shape) * z
    target = da.reshape(shape) * x + ds.reshape(shape) * z
    return mean_flat((den.velocity(x_t, t, **cond) - target) ** 2)


def one_step_loss(den: Denoiser, x: Tensor, z: Tensor, **cond: Any) -> Tensor:
    """Liu et al. 2022, arXiv:2209.03003, §2.3 (distillation, L2 distance): || z - v(z, 1) - x ||^2, i.e. one Euler
    step from the noise z at t = 1 lands on its paired sample x (rf_loss at t = t_max, where x_t = z)."""
    t = torch.full((len(x),), den.process.t_max, dtype=torch.float64, device=x.device)
    return rf_loss(den, x, z, t, **cond)


class ReflowObjective(Objective):
    """The k-rectified flow (stage reflow, t ~ U[t_min, t_max]) or its one-step distillation on fixed pairs."""

    kind = "reflow"

    def __init__(self, net: nn.Module, make_denoiser: Any, pairs: Dataset, stage: str, record: dict[str, Any]):
        super().__init__(net)
        self.make_denoiser, self.stage, self.record = make_denoiser, stage, record
        self.train_data = pairs  # what the loop indexes: x = samples, extra["z"] = their noise (train/build.py)
        self._online: Denoiser | None = None

    def bind(self, model: nn.Module) -> None:
        super().bind(model)
        self._online = self.make_denoiser(model)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        if self._online is None:
            self.bind(self.model)
        den, x, z = self._online, batch["x0"], batch["z"]
        cond = {"y": batch["y"]} if "y" in batch else {}
        if self.stage == "distill":
            return one_step_loss(den, x, z, **cond)
        p = den.process
        u = torch.rand(len(x), generator=generator, device=x.device, dtype=torch.float64)
        return rf_loss(den, x, z, p.t_min + (p.t_max - p.t_min) * u, **cond)

    def state(self) -> dict[str, Any]:
        return {**super().state(), **self.record}

    def denoiser(self, net: nn.Module) -> Denoiser:
        return self.make_denoiser(net)


# --- config and construction ----------------------------------------------------------------------------
def _pair_solver(tcfg: RunConfig) -> tuple[str, int]:
    """The teacher ODE that makes the pairs: a reflow run's accurate midpoint rule, else the teacher's own
    deterministic sampler at its own budget, else DPM-Solver++(2M) with 20 evaluations."""
    from ..samplers import METHODS

    if tcfg.objective.kind == "reflow":
        return _RF_PAIRS
    m = METHODS.get(tcfg.sample.method)
    if m is not None and not m.stochastic and m.final_denoise:
        return tcfg.sample.method, tcfg.sample.nfe
    return "dpmpp-2m", 20


def defaults(teacher_cfg: RunConfig) -> dict[str, Any]:
    """Student = the teacher's architecture as a velocity-predicting rectified flow on t in [0, 1], initialised from
    the teacher's weights when the teacher is one too (else from scratch: measured better on the digits); the stage's
    sampler (flow-euler, 4 NFE; the distilled stage: one evaluation, `consistency` nfe 1 = z - v(z, 1))."""
    method, nfe = _pair_solver(teacher_cfg)
    same_kind = teacher_cfg.process.kind == "rectified_flow" and teacher_cfg.prediction == "velocity"
    init = "teacher" if same_kind else "scratch"  # an EDM / VP net's weights start worse (docs/distill_reflow.md)
    return {
        "process": {"kind": "rectified_flow", "t_min": 0.0},
        "prediction": "velocity",
        "precondition": "none",
        "loss": {"kind": "dsm", "weighting": "velocity", "time_sampling": "uniform"},
        "objective": {"rf_stage": "reflow", "rf_pairs": 4096, "rf_pair_method": method, "rf_pair_nfe": nfe,
                      "rf_init": init},
        "train": {"steps": 1000, "batch_size": 128, "lr": 5e-4, "warmup": 50, "schedule": "cosine",
                  "ema_decay": 0.995, "ckpt_every": 500, "sample_every": 0},
        "sample": {"method": "flow-euler", "nfe": 4, "guidance_interval": None},
    }


def after_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The distilled stage samples with one evaluation (`consistency`, nfe 1: x0(z, 1) = z - v(z, 1), one Euler
    step from t = 1 to 0) unless sample.method / sample.nfe were set on the command line."""
    if tree.get("objective", {}).get("rf_stage") == "distill":
        keys = {item.partition("=")[0].strip() for item in overrides}
        for key, value in (("method", "consistency"), ("nfe", 1)):
            if f"sample.{key}" not in keys and "sample" not in keys:
                tree["sample"][key] = value
    return tree


def _check(cfg: RunConfig, teacher: Pipeline | None) -> Pipeline:
    if teacher is None:
        raise ValueError("reflow needs a teacher run: kuosan distill reflow TEACHER_RUN")
    if cfg.process.kind != "rectified_flow" or cfg.prediction != "velocity" or cfg.precondition != "none":
        raise ValueError(f"a reflow student is a rectified flow predicting velocity without preconditioning; this "
                         f"config has process.kind={cfg.process.kind!r}, prediction={cfg.prediction!r}, "
                         f"precondition={cfg.precondition!r}")
    if cfg.objective.rf_stage == "distill" and teacher.config.process.kind != "rectified_flow":
        raise ValueError(f"objective.rf_stage=distill distils a rectified flow (Liu et al. §2.3); teacher run "
                         f"{teacher.run_dir} is a {teacher.config.process.kind!r} run: reflow it first "
                         f"(kuosan distill reflow {teacher.run_dir}) and distil that run")
    check_deterministic(cfg.objective.rf_pair_method)
    return teacher


def _pairs(cfg: RunConfig, data: Dataset, teacher: Pipeline) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The run's pairs: read from <run>/pairs.safetensors when it exists (resume, reruns), else generated once."""
    o = cfg.objective
    meta = {"teacher": str(teacher.run_dir.resolve()), "teacher step": int(teacher.step),
            "objective.rf_pair_method": o.rf_pair_method, "objective.rf_pair_nfe": o.rf_pair_nfe,
            "objective.rf_pairs": o.rf_pairs, "train.seed": cfg.train.seed}
    path = cfg.run_dir / PAIRS_FILE
    if path.exists():
        return load_pairs(path, meta), meta
    bar = _progress(o.rf_pairs, f"reflow pairs ({o.rf_pair_method}, {o.rf_pair_nfe} NFE)", cfg.train.progress)
    try:
        pairs = make_pairs(teacher.model(), o.rf_pairs, tuple(data.shape), o.rf_pair_method, o.rf_pair_nfe,
                           seed=cfg.train.seed, num_classes=data.num_classes, batch_size=o.rf_pair_batch, log=bar)
    finally:
        bar.close()
    save_pairs(pairs, path, meta)
    print(f"wrote {len(pairs['x'])} reflow pairs to {path}", file=sys.stderr)
    return pairs, meta


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="pair", disable=not enabled, file=sys.stderr)
    return type("Bar", (), {"__call__": lambda self, k: bar.update(k), "close": lambda self: bar.close()})()


def build(cfg: RunConfig, data: Dataset, teacher: Pipeline | None) -> ReflowObjective:
    """The student (the teacher's architecture; its weights if rf_init=teacher) and its objective on the pairs."""
    from ..registry import build_denoiser, build_network

    teacher = _check(cfg, teacher)
    net = build_network(cfg, tuple(data.shape), data.num_classes)
    if cfg.objective.rf_init == "teacher":
        try:
            net.load_state_dict(teacher.denoiser.net.state_dict())
        except (RuntimeError, AttributeError) as err:
            raise ValueError(f"objective.rf_init=teacher: the student's net ({cfg.net.kind}) does not take teacher "
                             f"run {teacher.run_dir}'s weights ({str(err).splitlines()[0]}); use "
                             f"objective.rf_init=scratch") from None
    pairs, meta = _pairs(cfg, data, teacher)
    record = {"teacher": teacher_record(teacher), "stage": cfg.objective.rf_stage, "pairs": meta}
    return ReflowObjective(net, functools.partial(build_denoiser, cfg), pairs_dataset(pairs, data),
                           cfg.objective.rf_stage, record)
