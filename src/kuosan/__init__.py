"""kuosan (扩散) — diffusion models as the book *AIGC 扩散模型* lays them out.

    process -> prediction -> denoiser -> loss / sampler / likelihood
"""

from __future__ import annotations

import importlib
from typing import Any

from . import analytic, predictions, processes
from .denoiser import Denoiser

__version__ = "0.1.0"

_SUBPACKAGES = ("losses", "samplers", "likelihood", "nets", "data", "train", "eval", "distill")
__all__ = ["Denoiser", "analytic", "predictions", "processes", "sample", *_SUBPACKAGES, "__version__"]


def __getattr__(name: str) -> Any:
    """Import the heavier subpackages on first use (`kuosan.samplers`, `kuosan.sample`, ...)."""
    if name == "sample":
        return importlib.import_module(".samplers", __name__).sample
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kuosan' has no attribute {name!r}")
