"""Data sets as torch tensors: toy 2-D point clouds, scikit-learn's digits, MNIST-28, image folders and arrays.

Images are float32 (N, C, H, W) in [-1, 1]; labels int64; bad input raises DataError naming the file.
"""

from .arrays import load_array
from .digits import load_digits
from .errors import DataError
from .images import IMAGE_SUFFIXES, ImageFolder, ImageInfo, image_info, read_image
from .mnist import load_mnist
from .splits import heldout_split
from .toy2d import TOY2D_NAMES, toy2d, toy_gmm

__all__ = [
    "IMAGE_SUFFIXES",
    "TOY2D_NAMES",
    "DataError",
    "ImageFolder",
    "ImageInfo",
    "heldout_split",
    "image_info",
    "load_array",
    "load_digits",
    "load_mnist",
    "read_image",
    "toy2d",
    "toy_gmm",
]
