"""The one registry from a validated RunConfig to objects: process, network, denoiser, data, loss.

    process = build_process(cfg.process)
    data = build_data(cfg.data, cfg.train.seed)                    # Dataset(x (N, ...), labels, num_classes)
    net = build_network(cfg, data.shape, data.num_classes)
    denoiser = build_denoiser(cfg, net)
    denoiser, cfg, ckpt = load_model("runs/digits-ddpm")           # back from a checkpoint (EMA weights)

Every config `kind` becomes an object here (networks through kuosan.nets.build_net; STYLE.md rule 8).
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import DataConfig, LossConfig, ProcessConfig, RunConfig, config_dict, parse_config
from ..denoiser import Denoiser
from ..processes import EDM, VE, VP, DiscreteVP, Process, RectifiedFlow, SubVP
from .checkpoint import Checkpoint, load_checkpoint
from .loop import LossFn, TrainResult, fit
from .rng import STREAMS, derive_seed, seed_init

__all__ = [
    "Dataset",
    "build_process",
    "build_data",
    "build_network",
    "net_arguments",
    "build_denoiser",
    "build_loss",
    "load_model",
    "train_from_config",
]


def build_process(cfg: ProcessConfig) -> Process:
    """The forward process a ProcessConfig names (book §4.1-4.3)."""
    if cfg.kind == "discretevp":
        betas = {k: v for k, v in (("beta_start", cfg.beta_start), ("beta_end", cfg.beta_end)) if v is not None}
        make = {"linear": DiscreteVP.linear, "scaled_linear": DiscreteVP.scaled_linear, "cosine": DiscreteVP.cosine}
        if betas and cfg.schedule == "cosine":
            raise ValueError("process.beta_start / beta_end do not apply to the cosine schedule")
        return make[cfg.schedule](n=cfg.n, **betas)
    if cfg.kind in ("vp", "subvp"):
        return (VP if cfg.kind == "vp" else SubVP)(beta_min=cfg.beta_min, beta_max=cfg.beta_max)
    if cfg.kind == "ve":
        return VE(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)
    if cfg.kind == "edm":
        return EDM(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data)
    if cfg.kind == "rectified_flow":
        return RectifiedFlow(t_min=cfg.t_min)
    raise ValueError(f"unknown process kind {cfg.kind!r}")  # pragma: no cover - pydantic rejects it first


# --- data ------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A whole data set in memory: x (N, ...) float32, optional int64 labels and their class count."""

    x: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None
    skipped: tuple[str, ...] = ()  # unreadable files left out (data.skip_bad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def build_data(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load (or draw) the data a DataConfig names; bad files raise kuosan.data.DataError naming them."""
    from .. import data

    if cfg.kind == "toy2d":
        g = torch.Generator().manual_seed(derive_seed(seed, 0, STREAMS["dataset"]))
        return Dataset(torch.as_tensor(data.toy2d(cfg.name, cfg.n, generator=g), dtype=torch.float32))
    if cfg.kind == "digits":
        x, y = data.load_digits(cfg.split, cfg.size)
        return Dataset(x, y, 10) if cfg.conditional else Dataset(x)
    if cfg.kind == "folder":
        folder = data.ImageFolder(cfg.root, size=cfg.size, channels=cfg.channels, skip_bad=cfg.skip_bad)
        return Dataset(folder.tensors()[0], skipped=tuple(folder.skipped))
    if cfg.kind == "array":
        return Dataset(torch.as_tensor(data.load_array(cfg.path, cfg.key), dtype=torch.float32))
    raise ValueError(f"unknown data kind {cfg.kind!r}")  # pragma: no cover


# --- network and denoiser ----------------------------------------------------------------------------------
def net_arguments(cfg: RunConfig, data_shape: tuple[int, ...], num_classes: int | None = None) -> dict[str, Any]:
    """The network's keyword arguments: the config's, plus the shape, class and variance arguments it leaves out."""
    from ..nets import NETS

    params = inspect.signature(NETS[cfg.net.kind]).parameters
    learned_var = cfg.loss.kind == "hybrid"
    implied: dict[str, Any] = {
        "num_classes": num_classes,
        "learn_sigma": learned_var,
        "out_mult": 2 if learned_var else 1,
    }
    if len(data_shape) == 1:
        implied["dim"] = data_shape[0]
    elif len(data_shape) == 3:
        implied.update(in_channels=data_shape[0], image_size=data_shape[-1])
    kw = {k: v for k, v in implied.items() if k in params}
    kw.update(cfg.net.kwargs)
    return kw


def build_network(cfg: RunConfig, data_shape: tuple[int, ...], num_classes: int | None = None) -> nn.Module:
    """The network of cfg.net for data of shape data_shape (without the batch dimension)."""
    from ..nets import build_net

    return build_net(cfg.net.kind, **net_arguments(cfg, data_shape, num_classes))


def build_denoiser(cfg: RunConfig, net: nn.Module) -> Denoiser:
    """Denoiser(net, process, prediction) with cfg's preconditioning and (hybrid loss) learned variance."""
    process = build_process(cfg.process)
    edm = cfg.precondition == "edm"
    return Denoiser(
        net,
        process,
        cfg.prediction,
        precondition="edm" if edm else None,
        sigma_data=getattr(cfg.process, "sigma_data", 0.5),
        learned_variance=cfg.loss.kind == "hybrid",
    )


def build_loss(cfg: LossConfig) -> LossFn:
    """loss_fn(denoiser, x0, generator=g, **cond) -> (B,): weighted DSM (book eqs. 4.14, 4.26, 4.34) or hybrid."""
    from .. import losses

    if cfg.kind == "hybrid":
        return functools.partial(losses.hybrid_loss, lam=cfg.lam)
    return functools.partial(losses.dsm_loss, weighting=cfg.weighting, time_sampling=cfg.time_sampling)


# --- whole runs --------------------------------------------------------------------------------------------
def train_from_config(cfg: RunConfig, *, resume: bool = False) -> TrainResult:
    """Build everything cfg names and train it into cfg.run_dir (the resolved config is saved there first)."""
    from ..config import save_config

    data = build_data(cfg.data, cfg.train.seed)
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable file(s), e.g. {data.skipped[0]}", flush=True)
    seed_init(cfg.train.seed)
    net = build_network(cfg, data.shape, data.num_classes)
    run_dir = cfg.run_dir
    meta = {
        "config": config_dict(cfg),
        "data_shape": list(data.shape),
        "num_classes": data.num_classes,
        "net": {"kind": cfg.net.kind, **net_arguments(cfg, data.shape, data.num_classes)},
    }
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 writes
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return fit(
        net,
        functools.partial(build_denoiser, cfg),
        data.x,
        build_loss(cfg.loss),
        cfg.train,
        run_dir,
        labels=data.labels,
        sample=cfg.sample,
        meta=meta,
        resume=resume,
    )


def load_model(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[Denoiser, RunConfig, Checkpoint]:
    """The denoiser saved at `path` (run dir or checkpoint dir), with its EMA weights unless ema=False."""
    from ..nets import build_net

    ckpt = load_checkpoint(path, device=device)
    if ckpt.config is None or "net" not in ckpt.state:
        raise ValueError(f"{ckpt.path} holds no run config; it was not written by `kuosan train`")
    cfg = parse_config(ckpt.config, str(ckpt.path / "state.json"))
    net_kw = dict(ckpt.state["net"])
    net = build_net(net_kw.pop("kind"), **net_kw)
    weights = ckpt.ema if ema and ckpt.ema is not None else ckpt.weights
    net.load_state_dict(weights)
    net.to(device).eval().requires_grad_(False)
    return build_denoiser(cfg, net), cfg, ckpt
