"""The one place a string names a network class: build_net("unet", ...) for the config layer."""

from __future__ import annotations

import inspect

from torch import nn

from .autoencoder import Autoencoder
from .classifier import Classifier
from .dit import DiT
from .mlp import MLP
from .mmdit import MMDiT
from .unet import UNet
from .uvit import UViT

__all__ = ["NETS", "build_net", "count_parameters"]

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet, "dit": DiT, "uvit": UViT, "mmdit": MMDiT,
                                    "classifier": Classifier, "autoencoder": Autoencoder}


def build_net(kind: str, **kwargs) -> nn.Module:
    """NETS[kind](**kwargs), with a ValueError naming the valid kinds or arguments when either is wrong."""
    if kind not in NETS:
        raise ValueError(f"unknown net kind {kind!r}; choose one of {', '.join(NETS)}")
    cls = NETS[kind]
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"net {kind!r} has no argument(s) {', '.join(unknown)}; it takes {', '.join(params)}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ValueError(f"net {kind!r} needs argument(s) {', '.join(missing)}")
    if isinstance(kwargs.get("channel_mults"), list):
        kwargs["channel_mults"] = tuple(kwargs["channel_mults"])
    return cls(**kwargs)


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
