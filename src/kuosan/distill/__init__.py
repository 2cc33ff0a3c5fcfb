"""Few-step students of a trained teacher run (book §4.6.3, §4.7, §4.7.1, §4.8.2): each method is a training
objective (kuosan.train.objectives) plus, where needed, a sampler; a student is an ordinary run directory.

    cfg = distill_config("consistency", "runs/digits-edm", ["train.steps=2000"])   # what `kuosan distill` trains
    train_from_config(cfg)                      # -> build_distillation(cfg, data): teacher + student + objective
    kuosan.load(cfg.run_dir).generate(64)       # the student's own sampler and step count are its run's defaults

One module per method (progressive.py, consistency.py, lcm.py, reflow.py), each with
  * `defaults(teacher_cfg) -> dict`: the config tree updates that make the teacher's config the student's
    (objective section, train and sample defaults, and e.g. precondition / net changes);
  * `build(cfg, data, teacher) -> Objective`: the student network (usually initialised from the teacher's
    weights) and the objective that trains it; `teacher` is the teacher run's Pipeline (None where a method
    trains without one, e.g. consistency training from scratch); a teacher of the wrong kind is refused here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig
    from ..pipeline import Pipeline
    from ..registry import Dataset
    from ..train.objectives import Objective

__all__ = ["METHODS", "distill_config", "build_distillation", "load_teacher", "teacher_record"]

METHODS = ("progressive", "consistency", "lcm", "reflow")  # objective kinds = `kuosan distill` methods


def _module(method: str) -> Any:
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; choose one of {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{method}")


def _merge(tree: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """tree with updates merged in section by section (a nested dict merges, unless it names another `kind`: a
    section of another kind, e.g. process edm -> rectified_flow, replaces the old one; anything else replaces)."""
    out = dict(tree)
    for k, v in updates.items():
        old = out.get(k)
        same_kind = isinstance(old, dict) and isinstance(v, dict) and v.get("kind", old.get("kind")) == old.get("kind")
        out[k] = _merge(old, v) if same_kind else v
    return out


def distill_config(method: str, teacher: str | Path, overrides: list[str] | None = None,
                   out_dir: str | Path | None = None) -> RunConfig:
    """The config `kuosan distill METHOD TEACHER` trains: the teacher run's config, named <teacher>-<method>,
    teacher = the teacher run (absolute), objective.kind = method, the method's defaults, then --set overrides.
    A latent teacher's student learns in the same latent space: its `autoencoder` is the teacher run, whose
    carried autoencoder (kuosan.latent.load_codec) encodes the data and decodes the student's samples."""
    from ..checkpoint import load_checkpoint
    from ..config import apply_overrides, config_dict, parse_config
    from ..latent import share_latent_space
    from ..pipeline import load_config_of

    mod = _module(method)
    teacher = Path(teacher)
    try:
        ckpt = load_checkpoint(teacher)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"teacher run {teacher} is missing: {err}") from None
    tcfg = load_config_of(ckpt)
    if tcfg.base is not None:
        raise ValueError(f"teacher run {teacher} is an adapter run (objective {tcfg.objective.kind!r} on base "
                         f"{tcfg.base}); distil a run that holds a whole network")
    tree = config_dict(tcfg)
    tree.pop("out_dir", None)
    tree["name"] = f"{tcfg.name}-{method}"
    tree["teacher"] = str(ckpt.path.parents[1].resolve())
    tree["objective"] = {"kind": method, "p_uncond": tcfg.objective.p_uncond}
    share_latent_space(tree, tcfg, tree["teacher"])  # a latent teacher: the student learns in its latent space
    tree = _merge(tree, mod.defaults(tcfg))
    apply_overrides(tree, list(overrides or []))
    if hasattr(mod, "after_overrides"):  # defaults that follow from an overridden field (reflow: the stage's sampler)
        tree = mod.after_overrides(tree, list(overrides or []))
    if hasattr(mod, "resolve"):  # settings that follow from the overrides (progressive: sample.nfe from rounds)
        mod.resolve(tree, list(overrides or []))
    if out_dir is not None:
        tree["out_dir"] = str(out_dir)
    return parse_config(tree, f"kuosan distill {method} {teacher}")


def load_teacher(cfg: RunConfig) -> Pipeline | None:
    """The teacher run cfg.teacher as a frozen Pipeline on the CPU (EMA weights); None when cfg has no teacher."""
    from ..pipeline import load

    if cfg.teacher is None:
        return None
    try:
        pipe = load(cfg.teacher, ema=True, device="cpu")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"teacher run {cfg.teacher} is missing: {err}") from None
    pipe.denoiser.requires_grad_(False).eval()
    return pipe


def teacher_record(teacher: Pipeline | None) -> dict[str, Any] | None:
    """What a student's checkpoint records of its teacher: run path, checkpoint, step, objective kind."""
    if teacher is None:
        return None
    return {"path": str(teacher.run_dir.resolve()), "checkpoint": str(teacher.checkpoint.path.resolve()),
            "step": int(teacher.step), "kind": teacher.config.objective.kind}


def build_distillation(cfg: RunConfig, data: Dataset) -> Objective:
    """The objective cfg.objective.kind names, with its student network and cfg.teacher loaded (the teacher's
    data shape and classes must be this run's)."""
    teacher = load_teacher(cfg)
    if teacher is not None:
        if tuple(data.shape) != teacher.data_shape:
            raise ValueError(f"this run's data has shape {tuple(data.shape)} but teacher run {cfg.teacher} was "
                             f"trained on {teacher.data_shape}: distil on the teacher's data")
        if data.num_classes != teacher.num_classes:
            raise ValueError(f"this run's data has {data.num_classes or 'no'} classes but teacher run "
                             f"{cfg.teacher} has {teacher.num_classes or 'none'}: keep the teacher's data.conditional")
    return _module(cfg.objective.kind).build(cfg, data, teacher)
