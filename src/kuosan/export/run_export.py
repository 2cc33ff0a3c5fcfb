"""`kuosan export RUN --format diffusers`: a kuosan U-Net run as a diffusers DDPMPipeline directory.

    kuosan export runs/digits-ddpm --format diffusers --out out/digits-ddpm-diffusers
    diffusers.DDPMPipeline.from_pretrained("out/digits-ddpm-diffusers")       # UNet2DModel + DDPMScheduler

The scheduler gets the run's betas (DDPM, Ho et al. 2020, arXiv:2006.11239, eq. 4), prediction type and x0
clipping; the UNet2DModel gets the U-Net's weights (unet_diffusers.py) and is checked against the run's network
before anything is written: the same output at training indices 0, N/2, N-1 (index i = kuosan time (i+1)/N).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..processes.discrete import DiscreteVP

__all__ = ["EXPORT_FORMATS", "ExportRefused", "export_run", "check_exportable", "scheduler_config"]

EXPORT_FORMATS = ("diffusers", "onnx")
TOLERANCE = 1e-4  # max |kuosan net - UNet2DModel| accepted by the export's own check (float32 rounding: ~1e-6)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
DIFFUSERS_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


class ExportRefused(ValueError):
    """A run that has no faithful diffusers counterpart; the message says why."""


def check_exportable(cfg: Any, where: str) -> None:
    """Refuse, with the reason, runs whose model UNet2DModel + DDPMScheduler cannot reproduce."""
    if cfg.objective.kind == "lora":
        raise ExportRefused(f"{where} is a LoRA run (base {cfg.base}): its factors sit in wrapped layers that "
                            "UNet2DModel lacks; export the base run, or merge the adapter into the base weights "
                            "(pipe.lora.merge(), docs/finetune.md) and save them as a plain run first")
    if cfg.objective.kind == "control" or cfg.base is not None:
        raise ExportRefused(f"{where} is an adapter run (objective {cfg.objective.kind!r}, base {cfg.base}): the "
                            "control branch has no UNet2DModel counterpart; export the base run")
    if cfg.net.kind != "unet":
        raise ExportRefused(f"{where}: net kind {cfg.net.kind!r} has no diffusers UNet2DModel counterpart; only "
                            "'unet' runs export")
    if cfg.process.kind != "discretevp":
        raise ExportRefused(f"{where}: process {cfg.process.kind!r} is not DDPM's discrete schedule; diffusers' "
                            "DDPMScheduler needs process.kind discretevp")
    if cfg.precondition != "none":
        raise ExportRefused(f"{where}: precondition {cfg.precondition!r} wraps the network in EDM's c_in/c_out/"
                            "c_noise, which UNet2DModel + DDPMScheduler do not apply")
    prediction = cfg.prediction or "eps"
    if prediction not in DIFFUSERS_PREDICTION:
        raise ExportRefused(f"{where}: prediction {prediction!r} has no diffusers prediction_type; "
                            f"exportable: {', '.join(DIFFUSERS_PREDICTION)}")


def scheduler_config(cfg: Any, process: DiscreteVP, clip: str) -> dict[str, Any]:
    """DDPMScheduler arguments: the run's schedule by name when diffusers computes the same alpha-bar (to its
    float32 rounding, relative 1e-4), else trained_betas; prediction type; clip_x0 as clip_sample / thresholding."""
    from diffusers import DDPMScheduler

    kw: dict[str, Any] = {"num_train_timesteps": process.n, "beta_schedule": DIFFUSERS_SCHEDULE[cfg.process.schedule],
                          "beta_start": float(process.betas[0]), "beta_end": float(process.betas[-1]),
                          "prediction_type": DIFFUSERS_PREDICTION[cfg.prediction or "eps"],
                          "variance_type": "learned_range" if cfg.loss.kind == "hybrid" else "fixed_small",
                          "clip_sample": clip == "clip", "clip_sample_range": 1.0,
                          "thresholding": clip == "dynamic", "dynamic_thresholding_ratio": 0.995,
                          # kuosan's dynamic thresholding has no upper bound on s (pipeline._dynamic_unit)
                          "sample_max_value": 1e9 if clip == "dynamic" else 1.0}
    ref = DDPMScheduler(**kw).alphas_cumprod.double()
    if not torch.allclose(ref, process.alphas_cumprod, rtol=1e-4, atol=0):
        kw.update(beta_schedule="linear", trained_betas=process.betas.tolist())
    return kw


def _clip_kind(cfg: Any) -> str:
    from ..registry import data_range

    kind = cfg.sample.clip_x0
    if kind == "auto":
        kind = "clip" if data_range(cfg.data) is not None else "none"
    return kind


def _max_difference(net: torch.nn.Module, unet: torch.nn.Module, shape: tuple[int, ...], n: int,
                    num_classes: int | None) -> float:
    """max |net(x, (i+1)/N, y) - unet(x, i, y)| over random x at i = 0, N/2, N-1 (labels incl. the null class)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0.0, n // 2, n - 1], dtype=torch.float64)
    x = torch.randn(len(idx), *shape, generator=g)
    y = None if num_classes is None else torch.tensor([0, num_classes, num_classes - 1])
    with torch.no_grad():
        ours = net(x, (idx + 1) / n, y)
        theirs = unet(x, idx, class_labels=y).sample
    return float((ours - theirs).abs().max())


def export_run(run: str | Path, out: str | Path | None = None, format: str = "diffusers",
               ema: bool = True) -> tuple[Path, dict[str, Any]]:
    """Write run (a run or checkpoint directory) to `out` (default <run>/export-<format>) as `format`; returns
    (out, a summary with the measured max |kuosan net - UNet2DModel|)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if format == "onnx":
        raise ExportRefused("--format onnx is not built yet; export --format diffusers, or torch.onnx.export the "
                            "network of kuosan.load(run).denoiser.net yourself")
    from ..checkpoint import load_checkpoint
    from ..pipeline import load, load_config_of

    ckpt = load_checkpoint(run, device="cpu")
    cfg = load_config_of(ckpt)
    check_exportable(cfg, str(ckpt.path))
    target = Path(out) if out is not None else ckpt.path.parents[1] / f"export-{format}"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not empty; choose another --out or remove it")
    pipe = load(ckpt.path, ema=ema, device="cpu")
    return target, _write_diffusers(pipe, cfg, target)


def _write_diffusers(pipe: Any, cfg: Any, target: Path) -> dict[str, Any]:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from .unet_diffusers import Unmappable, unet2d_config, unet2d_state_dict

    net, process, shape = pipe.denoiser.net, pipe.denoiser.process, pipe.data_shape
    if len(shape) != 3:
        raise ExportRefused(f"{pipe.run_dir}: data of shape {shape} is not an image (C, H, W)")
    size = shape[1] if shape[1] == shape[2] else tuple(shape[1:])
    try:
        config = unet2d_config(net, process.n, size)
    except Unmappable as err:
        raise ExportRefused(f"{pipe.run_dir}: its U-Net cannot be written as a UNet2DModel: {err}") from None
    unet = UNet2DModel(**config)
    unet.load_state_dict(unet2d_state_dict(net), strict=True)
    unet.eval()
    diff = _max_difference(net, unet, shape, process.n, pipe.num_classes)
    if diff > TOLERANCE:  # pragma: no cover - a mapping bug, not a user error
        raise RuntimeError(f"exported UNet2DModel differs from the run's U-Net by {diff:.3g} (> {TOLERANCE})")
    clip = _clip_kind(cfg)
    scheduler = DDPMScheduler(**scheduler_config(cfg, process, clip))
    target.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(target)
    summary = {"run": str(pipe.run_dir), "step": pipe.step, "format": "diffusers", "max_abs_diff": diff,
               "time": "diffusers index i = kuosan t (i+1)/N", "num_train_timesteps": process.n,
               "prediction_type": scheduler.config.prediction_type, "clip_x0": clip,
               "class_labels": None if pipe.num_classes is None else
               f"0..{pipe.num_classes - 1}; {pipe.num_classes} = unconditional (null)"}
    (target / "kuosan_export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
