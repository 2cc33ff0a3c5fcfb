"""kuosan (扩散) — diffusion models as the book *AIGC 扩散模型* lays them out.

    process -> prediction -> denoiser -> loss / sampler / likelihood
    registry / pipeline (kuosan.load) -> train (objectives), eval -> cli

Everything is imported on first use, so `kuosan --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBPACKAGES = ("analytic", "predictions", "processes", "losses", "samplers", "likelihood", "nets", "data",
                "registry", "pipeline", "train", "eval", "guidance", "control", "export")
_NAMES = {"Denoiser": "denoiser", "sample": "samplers", "load": "pipeline", "Pipeline": "pipeline",
          "load_classifier": "pipeline", "from_diffusers": "export"}
__all__ = [
    "Denoiser", "sample", "load", "Pipeline", "analytic", "predictions", "processes", "losses", "samplers",
    "likelihood", "nets", "data", "registry", "pipeline", "train", "eval", "__version__", "load_classifier", "guidance",
    "control", "export", "from_diffusers",
]

if TYPE_CHECKING:  # pragma: no cover
    from . import (
        analytic,
        control,
        data,
        eval,
        export,
        guidance,
        likelihood,
        losses,
        nets,
        pipeline,
        predictions,
        processes,
        registry,
        samplers,
        train,
    )
    from .denoiser import Denoiser
    from .export import from_diffusers
    from .pipeline import Pipeline, load, load_classifier
    from .samplers import sample


def __getattr__(name: str) -> Any:
    """Import subpackages and the top-level API (`kuosan.Denoiser`, `kuosan.sample`, `kuosan.load`) on first use."""
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kuosan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
