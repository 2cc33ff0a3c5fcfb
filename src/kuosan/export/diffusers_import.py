"""A local diffusers directory (UNet2DModel + a DDPM-family scheduler config) as a kuosan Denoiser.

    model = kuosan.from_diffusers("path/to/diffusers_dir")
    x0 = kuosan.sample(model, x_T, method="dpmpp-2m", nfe=20, cond={"y": labels})   # labels: num_class_embeds

Time: diffusers' training index i (alphas_cumprod[i]) is kuosan's t_i = (i+1)/N on a DiscreteVP (DDPM, Ho et al.
2020, arXiv:2006.11239, eq. 4; DPM-Solver, arXiv:2206.00927, App. D). Between grid points kuosan interpolates
log alpha linearly in t, so the UNet gets the fractional index s = N t - 1, and alpha(t)^2 = alphas_cumprod[s]
exactly at every integer s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..processes.discrete import DiscreteVP

__all__ = ["DiffusersUNet", "from_diffusers", "process_from_scheduler", "read_scheduler_config",
           "PREDICTIONS", "BETA_SCHEDULES"]

# diffusers prediction_type -> kuosan prediction kind (predictions.py)
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# diffusers' DDPMScheduler defaults (shared by DDIM, PNDM, Euler, DPM-Solver schedulers) for fields a config omits
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                      "trained_betas": None, "prediction_type": "epsilon", "clip_sample": False,
                      "clip_sample_range": 1.0, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                      "sample_max_value": 1.0, "rescale_betas_zero_snr": False, "variance_type": "fixed_small"}
SCHEDULER_FILES = ("scheduler/scheduler_config.json", "scheduler_config.json")
UNET_FILES = ("unet/config.json", "config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_scheduler_config(root: Path) -> tuple[Path, dict[str, Any]]:
    """(file, config) of the first scheduler config found under root, its missing fields set to DDPM's defaults."""
    for name in SCHEDULER_FILES:
        path = root / name
        if path.is_file():
            return path, {**SCHEDULER_DEFAULTS, **_read_json(path)}
    raise FileNotFoundError(f"{root} is not a diffusers model directory: found neither "
                            f"{' nor '.join(str(root / n) for n in SCHEDULER_FILES)}")


def process_from_scheduler(cfg: dict[str, Any], where: str = "scheduler config") -> DiscreteVP:
    """The DiscreteVP of a diffusers scheduler config, its betas computed in float64 (DDPM eq. 4's alpha-bar =
    diffusers' alphas_cumprod up to their float32 rounding): beta_schedule linear | scaled_linear |
    squaredcos_cap_v2 (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17) or trained_betas."""
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"{where}: rescale_betas_zero_snr=true makes alpha-bar_N = 0 (beta_N = 1), which a kuosan "
                         "DiscreteVP (betas in (0, 1)) cannot represent")
    n = int(cfg["num_train_timesteps"])
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
        if betas.numel() != n:
            raise ValueError(f"{where}: trained_betas has {betas.numel()} values, num_train_timesteps is {n}")
        return DiscreteVP.from_betas(betas)
    schedule = cfg["beta_schedule"]
    if schedule == "linear":
        return DiscreteVP.linear(n, float(cfg["beta_start"]), float(cfg["beta_end"]))
    if schedule == "scaled_linear":
        return DiscreteVP.scaled_linear(n, float(cfg["beta_start"]), float(cfg["beta_end"]))
    if schedule == "squaredcos_cap_v2":
        kind = cfg.get("alpha_transform_type", "cosine")
        if kind != "cosine":
            raise ValueError(f"{where}: alpha_transform_type {kind!r} is not supported; kuosan knows 'cosine'")
        return DiscreteVP.cosine(n)
    raise ValueError(f"{where}: beta_schedule {schedule!r} is not supported; kuosan reads "
                     f"{', '.join(BETA_SCHEDULES)} or trained_betas")


def prediction_from_scheduler(cfg: dict[str, Any], where: str = "scheduler config") -> str:
    """kuosan's prediction kind for diffusers' prediction_type (epsilon -> eps, v_prediction -> v, sample -> x0)."""
    kind = cfg["prediction_type"]
    if kind not in PREDICTIONS:
        raise ValueError(f"{where}: prediction_type {kind!r} is not supported; kuosan reads {', '.join(PREDICTIONS)}")
    return PREDICTIONS[kind]


class IndexOfTime(nn.Module):
    """t -> N t - 1: kuosan's continuous time t_i = (i+1)/N as diffusers' (fractional) training index i."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, t: Tensor) -> Tensor:
        return t * self.n - 1

    def extra_repr(self) -> str:
        return f"t -> {self.n} t - 1"


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel as kuosan's fn(x, s, y=None): s its (fractional) timestep index, y its class
    labels (num_class_embeds), output the `.sample` tensor."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.conditional = getattr(unet, "class_embedding", None) is not None
        # diffusers' attention returns (B, C, H, W) with transposed strides; the next layer's backward then asks
        # for its memory format, which vmap (the batched backward of ode_nll's divergence) cannot answer
        for m in unet.modules():
            if type(m).__name__ == "Attention":
                m.register_forward_hook(_contiguous)

    def forward(self, x: Tensor, s: Tensor, y: Tensor | None = None) -> Tensor:
        if self.conditional and y is None:
            k = self.unet.config.num_class_embeds
            raise ValueError(f"this diffusers UNet2DModel is class-conditional ({k} class embeddings): pass labels, "
                             "e.g. kuosan.sample(..., cond={'y': labels})")
        if not self.conditional and y is not None:
            raise ValueError("class labels y were given but this diffusers UNet2DModel has no class embedding")
        return self.unet(x, s, class_labels=None if y is None else y.long()).sample


def _contiguous(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    return output.contiguous()


def _unet_config(root: Path) -> tuple[Path, dict[str, Any]]:
    for name in UNET_FILES:
        path = root / name
        if path.is_file():
            return path, _read_json(path)
    raise FileNotFoundError(f"{root} holds no UNet: found neither {' nor '.join(str(root / n) for n in UNET_FILES)}")


def check_unet_config(path: Path, cfg: dict[str, Any]) -> None:
    """Refuse, naming the file and the class or field, a model kuosan cannot drive with (x, t, y) alone."""
    cls = cfg.get("_class_name")
    if cls == "UNet2DConditionModel":
        raise ValueError(f"{path}: {cls} needs text embeddings (encoder_hidden_states) that kuosan cannot supply; "
                         "kuosan drives UNet2DModel only")
    if cls != "UNet2DModel":
        raise ValueError(f"{path}: model class {cls!r} is not supported; kuosan drives diffusers' UNet2DModel only")
    kind = cfg.get("time_embedding_type", "positional")
    if kind != "positional":
        why = {"fourier": "it embeds log(sigma) and divides its output by sigma (a VE/NCSN++ model)",
               "learned": "its time embedding is a table of integer indices, so kuosan's continuous times between "
                          "them have no value"}.get(kind, "unknown kind")
        raise ValueError(f"{path}: time_embedding_type {kind!r} is not supported ({why}); kuosan drives 'positional'")
    if cfg.get("class_embed_type") is not None:
        raise ValueError(f"{path}: class_embed_type {cfg['class_embed_type']!r} is not supported; kuosan passes "
                         "labels to a num_class_embeds table")


def from_diffusers(path: str | Path, *, device: str | torch.device = "cpu", clip: bool | None = None) -> Denoiser:
    """A Denoiser over the local diffusers model at `path` (a pipeline directory with scheduler/ and unet/, or a
    UNet directory with scheduler_config.json); nothing is downloaded. clip: x0 clipping to +-clip_sample_range
    (None: the scheduler's clip_sample; its `thresholding` becomes dynamic thresholding)."""
    from diffusers import UNet2DModel

    from ..samplers.common import dynamic_threshold

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    sched_path, sched = read_scheduler_config(root)
    process = process_from_scheduler(sched, str(sched_path))
    prediction = prediction_from_scheduler(sched, str(sched_path))
    unet_path, unet_cfg = _unet_config(root)
    check_unet_config(unet_path, unet_cfg)
    learned = sched["variance_type"] in ("learned", "learned_range")
    c_in, c_out = unet_cfg.get("in_channels", 3), unet_cfg.get("out_channels", 3)
    if c_out != (2 * c_in if learned else c_in):
        raise ValueError(f"{unet_path}: out_channels={c_out} with in_channels={c_in} and variance_type "
                         f"{sched['variance_type']!r} in {sched_path}; kuosan needs out = in (or 2 in, learned_range)")
    if sched["variance_type"] == "learned":
        raise ValueError(f"{sched_path}: variance_type 'learned' (log variance) is not supported; kuosan reads "
                         "'learned_range' (Nichol & Dhariwal 2021, eq. 15)")
    unet = UNet2DModel.from_pretrained(unet_path.parent, local_files_only=True)
    unet.to(device).eval().requires_grad_(False)
    r = float(sched["clip_sample_range"])
    clip_x0 = None
    if sched["thresholding"] and clip is None:
        ratio, top = float(sched["dynamic_thresholding_ratio"]), float(sched["sample_max_value"])
        clip_x0 = _Threshold(dynamic_threshold, ratio, top)
    elif clip or (clip is None and sched["clip_sample"]):
        clip_x0 = _Clip(r)
    return Denoiser(DiffusersUNet(unet), process, prediction, time_input=IndexOfTime(process.n),
                    learned_variance=learned, clip_x0=clip_x0)


class _Clip:
    """x0 -> clamp(x0, -r, r): diffusers' clip_sample with clip_sample_range r."""

    def __init__(self, r: float):
        self.r = r

    def __call__(self, x0: Tensor) -> Tensor:
        return x0.clamp(-self.r, self.r)


class _Threshold:
    """diffusers' thresholding (Saharia et al. 2022, arXiv:2205.11487, §2.3) with its ratio and sample_max_value."""

    def __init__(self, fn, ratio: float, max_value: float):
        self.fn, self.ratio, self.max_value = fn, ratio, max_value

    def __call__(self, x0: Tensor) -> Tensor:
        return self.fn(x0, ratio=self.ratio, max_value=self.max_value)
