"""kuosan (扩散) — diffusion models as the book *AIGC 扩散模型* lays them out.

    process -> prediction -> denoiser -> loss / sampler / likelihood
"""

from . import analytic, predictions, processes
from .denoiser import Denoiser

__version__ = "0.1.0"
__all__ = ["Denoiser", "analytic", "predictions", "processes", "__version__"]
