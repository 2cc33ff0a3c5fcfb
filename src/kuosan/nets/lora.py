"""LoRA: trainable low-rank updates of frozen Linear / Conv2d layers (Hu et al. 2021, arXiv:2106.09685; book §4.8.4.1).

    adapter = inject_lora(net, rank=4)            # net's target layers now compute W x + (alpha / r) B A x
    list(adapter.parameters())                    # only the factors A, B; B = 0, so net is unchanged at first
    adapter.state_dict()                          # peft's key names: base_model.model.<path>.lora_A.weight
    adapter.merge(); adapter.unmerge(); adapter.set_scale(0.5)
    save_adapter(adapter, "adapter.safetensors", base="runs/digits-ddpm")
    adapter = load_adapter(other_net, "adapter.safetensors")   # injects, loads; refuses another base's shapes

The layers are written here rather than taken from the `peft` package, which would bring transformers and
accelerate in as dependencies for four small classes; tests/test_lora.py checks them against peft when it is
installed (same A, B on the same module: same outputs, same state-dict keys). No diffusion math here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = ["DEFAULT_TARGETS", "LoraFactors", "LoraLayer", "LoraAdapter", "inject_lora", "save_adapter",
           "load_adapter", "read_adapter", "adapter_metadata"]

# Default target layers, matched as peft does: a layer's path equals the name or ends with "." + name.
#   UNet: the attention projections (qkv, proj) and both 3x3 convolutions of every residual block
#   DiT:  the attention projections (qkv, proj) and the two linear layers of every block's MLP
#   MLP:  the two linear layers of every residual block
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "UNet": ("qkv", "proj", "conv1", "conv2"),
    "DiT": ("qkv", "proj", "mlp.0", "mlp.2"),
    "MLP": ("fc1", "fc2"),
}
PREFIX = "base_model.model."  # what peft's adapter files put before a layer's path


class LoraFactors(nn.Module):
    """A (r x in) and B (out x r) of one layer, delta(x) = B A x (Hu et al. eq. 3): A Kaiming-uniform as peft and
    nn.Linear initialise it, B = 0. For a k x k convolution A is a k x k convolution to r channels (the base's
    stride, padding, dilation) and B a 1 x 1 one, so B A is a convolution of the base's shape (as in peft)."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int):
        super().__init__()
        self.rank = rank
        if isinstance(base, nn.Linear):
            self.lora_A = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ValueError(f"LoRA on a grouped convolution (groups={base.groups}) is not supported")
            self.lora_A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                    base.dilation, bias=False, padding_mode=base.padding_mode)
            self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA takes nn.Linear or nn.Conv2d layers; got {type(base).__name__}")
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.to(base.weight.device, base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.lora_B(self.lora_A(x))

    def delta_weight(self) -> Tensor:
        """B A in the base weight's shape: (out, in) for Linear, (out, in, k, k) for Conv2d."""
        A, B = self.lora_A.weight, self.lora_B.weight
        if A.ndim == 2:
            return B @ A
        return torch.einsum("or,rihw->oihw", B[:, :, 0, 0], A)


class LoraLayer(nn.Module):
    """h = W x + s (alpha / r) B A x around a frozen base layer (Hu et al. eq. 3, with a user scale s, 1 when
    trained); merged, the update lives in W (W <- W + s (alpha / r) B A) and the forward pass is the base's."""

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, factors: LoraFactors, alpha: float):
        super().__init__()
        self.base_layer, self.lora = base_layer, factors
        self.alpha, self.scale, self.merged = float(alpha), 1.0, False

    @property
    def scaling(self) -> float:
        return self.scale * self.alpha / self.lora.rank

    def forward(self, x: Tensor) -> Tensor:
        h = self.base_layer(x)
        if self.merged or self.scale == 0:
            return h
        return h + self.lora(x) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s (alpha / r) B A; the layer then costs what the base layer costs."""
        if not self.merged:
            w = self.base_layer.weight
            w.add_(self.lora.delta_weight().to(w.dtype), alpha=self.scaling)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s (alpha / r) B A: the base weights again, to float rounding (see tests/test_lora.py)."""
        if self.merged:
            w = self.base_layer.weight
            w.sub_(self.lora.delta_weight().to(w.dtype), alpha=self.scaling)
            self.merged = False


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def _place(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register `module` under root at the dotted `path`, creating empty parent modules on the way."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        if name not in node._modules:
            node.add_module(name, nn.Module())
        node = node._modules[name]
    node.add_module(leaf, module)


class LoraAdapter(nn.Module):
    """The LoRA factors of one network, and that network (with LoRA layers injected) to call.

    Its parameters and state_dict are the factors only, under peft's names (base_model.model.<path>.lora_A.weight),
    shared with the LoRA layers inside `net`: training, EMA-averaging or loading the adapter changes what the net
    computes. Calling the adapter calls the net. A deep copy (an EMA) copies the net with it.
    """

    def __init__(self, net: nn.Module, layers: dict[str, LoraLayer], rank: int, alpha: float, targets: Sequence[str]):
        super().__init__()
        self.rank, self.alpha, self.targets = rank, float(alpha), tuple(targets)
        self.base_model = nn.Module()
        self.base_model.model = nn.Module()
        for path, layer in layers.items():
            _place(self.base_model.model, path, layer.lora)
        self._net = (net,)  # a tuple, so the net's weights are not this module's parameters
        self._layers = dict(layers)

    @property
    def net(self) -> nn.Module:
        """The network the factors adapt (its LoRA layers hold the same factor tensors)."""
        return self._net[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def layers(self) -> dict[str, LoraLayer]:
        """Layer path -> its LoraLayer inside `net`."""
        return dict(self._layers)

    @property
    def scale(self) -> float:
        return next(iter(self._layers.values())).scale

    @property
    def merged(self) -> bool:
        return next(iter(self._layers.values())).merged

    def merge(self) -> LoraAdapter:
        """Fold s (alpha / r) B A into every base weight (sampling then costs what the base costs)."""
        for layer in self._layers.values():
            layer.merge()
        return self

    def unmerge(self) -> LoraAdapter:
        """Take the update out of the base weights again."""
        for layer in self._layers.values():
            layer.unmerge()
        return self

    def set_scale(self, scale: float) -> LoraAdapter:
        """h = W x + scale (alpha / r) B A x: 0 is the base model, 1 the trained adapter (re-merged if merged)."""
        for layer in self._layers.values():
            merged = layer.merged
            layer.unmerge()
            layer.scale = float(scale)
            if merged:
                layer.merge()
        return self

    def metadata(self, base: str | Path | None = None) -> dict[str, str]:
        """The safetensors metadata of an adapter file: rank, alpha, targets, base (the run it adapts)."""
        return adapter_metadata(self.rank, self.alpha, self.targets, base)

    @torch.no_grad()
    def load_factors(self, tensors: dict[str, Tensor], source: str = "the adapter") -> None:
        """Load factor tensors (peft key names); another base's adapter is refused naming the layer and shapes."""
        own = self.state_dict()
        for key, value in sorted(tensors.items()):
            if key not in own:
                raise ValueError(f"{source} holds LoRA factors for layer {_layer(key)!r}, which this network's LoRA "
                                 f"targets {list(self.targets)} do not give: it was trained for another base network")
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"{source}: LoRA layer {_layer(key)!r} factor {key.rsplit('.', 2)[-2]} has shape "
                                 f"{tuple(value.shape)}, this base network needs {tuple(own[key].shape)}: the adapter "
                                 "was trained for another base network")
        missing = sorted(set(own) - set(tensors))
        if missing:
            raise ValueError(f"{source} has no factors for LoRA layer {_layer(missing[0])!r} "
                             f"({len(missing)} tensors missing): it was trained for another base network")
        self.load_state_dict(tensors)


def adapter_metadata(rank: int, alpha: float, targets: Sequence[str], base: str | Path | None = None,
                     **extra: str) -> dict[str, str]:
    """An adapter file's safetensors metadata (strings): format, rank, alpha, targets (comma-joined), base."""
    meta = {"format": "pt", "rank": str(int(rank)), "alpha": repr(float(alpha)), "targets": ",".join(targets)}
    if base is not None:
        meta["base"] = str(base)
    return {**meta, **extra}


def _layer(key: str) -> str:
    """'base_model.model.down.0.0.conv1.lora_A.weight' -> 'down.0.0.conv1'."""
    return key.removeprefix(PREFIX).rsplit(".", 2)[0]


def inject_lora(net: nn.Module, rank: int, alpha: float | None = None,
                targets: Sequence[str] | None = None) -> LoraAdapter:
    """Freeze `net` and wrap each Linear / Conv2d layer whose path matches a target (path == name or ends with
    "." + name, as peft matches target_modules) in a LoraLayer; returns the adapter holding the new factors.
    alpha None: alpha = rank (scaling 1). targets None: DEFAULT_TARGETS of the network's class."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1; got {rank}")
    if targets is None:
        kind = type(net).__name__
        if kind not in DEFAULT_TARGETS:
            raise ValueError(f"no default LoRA targets for a {kind}; pass targets (layer names), e.g. ['qkv']")
        targets = DEFAULT_TARGETS[kind]
    targets = tuple(targets)
    if not targets:
        raise ValueError("LoRA targets is empty")
    found = [(path, m) for path, m in net.named_modules() if path and any(_matches(path, t) for t in targets)]
    for path, m in found:
        if isinstance(m, LoraLayer) or ".base_layer" in path or ".lora" in path:
            raise ValueError(f"layer {path!r} already carries LoRA: merge and remove the first adapter first")
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"LoRA target {path!r} is a {type(m).__name__}; only Linear and Conv2d layers take LoRA")
    unmatched = [t for t in targets if not any(_matches(p, t) for p, _ in found)]
    if unmatched:
        names = sorted({p.rsplit(".", 1)[-1] for p, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))})
        raise ValueError(f"LoRA target {unmatched[0]!r} matches no layer of this {type(net).__name__}; its Linear / "
                         f"Conv2d layer names: {', '.join(names)}")
    net.requires_grad_(False)
    layers: dict[str, LoraLayer] = {}
    for path, m in found:
        layer = LoraLayer(m, LoraFactors(m, rank), rank if alpha is None else alpha)
        parent, _, name = path.rpartition(".")
        net.get_submodule(parent).add_module(name, layer)  # replaces the plain layer in place
        layers[path] = layer
    return LoraAdapter(net, layers, rank, rank if alpha is None else alpha, targets)


def save_adapter(adapter: LoraAdapter, path: str | Path, base: str | Path | None = None) -> Path:
    """The factors as a safetensors file with peft's key names and metadata rank, alpha, targets, base."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    save_file(tensors, str(path), metadata=adapter.metadata(base))
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of an adapter file written by save_adapter."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA adapter file at {path}")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    missing = [k for k in ("rank", "alpha", "targets") if k not in meta]
    if missing:
        raise ValueError(f"{path} is not a kuosan LoRA adapter: its metadata has no {missing[0]!r}")
    return load_file(str(path)), meta


def load_adapter(net: nn.Module, path: str | Path) -> LoraAdapter:
    """Inject LoRA into `net` as the adapter file at `path` says (rank, alpha, targets) and load its factors."""
    tensors, meta = read_adapter(path)
    adapter = inject_lora(net, int(meta["rank"]), float(meta["alpha"]), meta["targets"].split(","))
    adapter.load_factors({k: v.to(net_device(net)) for k, v in tensors.items()}, source=str(path))
    return adapter


def net_device(net: nn.Module) -> torch.device:
    return next(iter(net.parameters())).device
