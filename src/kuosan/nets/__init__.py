"""Networks f(x, t, y=None) -> tensor shaped like x (or 2x the channels with a learned variance).

t is a (batch,) tensor of continuous process times in any float dtype; y optional int64 class labels, where
label `num_classes` is the null class of classifier-free guidance. No diffusion math lives here.
"""

from .classifier import Classifier
from .dit import DiT
from .embeddings import TIME_EMBEDDINGS, ClassEmbedding, FourierFeatures, SinusoidalFeatures, TimeEmbedding
from .mlp import MLP
from .mmdit import MMDiT
from .registry import NETS, build_net, count_parameters
from .unet import UNet
from .uvit import UViT

__all__ = [
    "Classifier",
    "DiT",
    "MLP",
    "MMDiT",
    "NETS",
    "TIME_EMBEDDINGS",
    "ClassEmbedding",
    "FourierFeatures",
    "SinusoidalFeatures",
    "TimeEmbedding",
    "UNet",
    "UViT",
    "build_net",
    "count_parameters",
]
