"""Feature extractors for Frechet distance, KID and precision/recall on images.

* `digits_features(images)`: the penultimate layer of a small CNN classifier trained on scikit-learn's
  8x8 digits by `scripts/train_feature_net.py`; its weights ship with the package
  (`kuosan/assets/digits_features.safetensors`, accuracy and feature dimension in the JSON beside them).
  It plays the role Inception-v3 plays for FID (Heusel et al. 2017, arXiv:1706.08500, §4), on data that
  Inception was never meant to see.
* `mnist_features(images)`: the same role for 28x28 MNIST: the penultimate layer of MnistFeatureNet, trained on
  the 4,500-image train split of kuosan.data.load_mnist by `scripts/train_feature_net.py --data mnist` with
  outlier exposure (Hendrycks et al. 2019, arXiv:1812.04606), so solid and noise tiles get a flat softmax
  instead of a confident digit (`kuosan/assets/mnist_features.*`).
* `classify(images) -> (labels, confidence)`: the argmax and max-softmax of the matching shipped classifier,
  chosen by image size (28x28: MNIST, 8x8: digits).
* `inception_features(images, weights)`: pool3 features of the FID Inception-v3 through the optional
  `pytorch-fid` package and a LOCAL weights file (pt_inception-2015-12-05-6726825d.pth); nothing is
  ever downloaded.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DigitsFeatureNet",
    "MnistFeatureNet",
    "classify",
    "digits_classifier",
    "digits_feature_info",
    "digits_features",
    "inception_features",
    "mnist_classifier",
    "mnist_feature_info",
    "mnist_features",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DIGITS_WEIGHTS = ASSETS / "digits_features.safetensors"
DIGITS_INFO = ASSETS / "digits_features.json"
MNIST_WEIGHTS = ASSETS / "mnist_features.safetensors"
MNIST_INFO = ASSETS / "mnist_features.json"


class DigitsFeatureNet(nn.Module):
    """(B, 1, 8, 8) in [-1, 1] -> 10 logits; `features` is the penultimate layer (B, feature_dim)."""

    def __init__(self, width: int = 32, feature_dim: int = 64, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)  # (B, w, 8, 8)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)  # (B, 2w, 8, 8) -> pool -> (B, 2w, 4, 4)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)  # (B, 2w, 4, 4)
        self.fc = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h))
        return F.relu(self.fc(h.flatten(1)))  # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def to_digits_input(images: Tensor) -> Tensor:
    """Any (N, 1, H, W) or (N, 64) image batch in [-1, 1] -> (N, 1, 8, 8) float32, clamped to [-1, 1]."""
    x = images.detach().float()
    if x.ndim == 2:
        x = x.reshape(-1, 1, 8, 8)
    if x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        x = F.adaptive_avg_pool2d(x, (8, 8))
    return x.clamp(-1, 1)


@lru_cache(maxsize=1)
def digits_feature_info() -> dict[str, Any]:
    """The training record shipped beside the weights: accuracy, feature_dim, width, split, script, seed."""
    return json.loads(DIGITS_INFO.read_text())


def _shipped(cls: type[nn.Module], info: dict[str, Any], weights: Path) -> nn.Module:
    """A shipped network rebuilt from its training record and safetensors weights, in eval mode, on the CPU."""
    from safetensors.torch import load_file

    net = cls(width=info["width"], feature_dim=info["feature_dim"])
    net.load_state_dict(load_file(str(weights)))
    return net.eval().requires_grad_(False)


def _batched_features(net: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, max(len(x), 1), batch_size)])


@lru_cache(maxsize=1)
def digits_classifier() -> DigitsFeatureNet:
    """The shipped feature network, in eval mode, on the CPU."""
    return _shipped(DigitsFeatureNet, digits_feature_info(), DIGITS_WEIGHTS)


@torch.no_grad()
def digits_features(images: Tensor, batch_size: int = 1024) -> Tensor:
    """Penultimate-layer features (N, F) of the shipped digits classifier for images in [-1, 1]."""
    return _batched_features(digits_classifier(), to_digits_input(images.cpu()), batch_size)


# --- MNIST-28 ---------------------------------------------------------------------------------------------


class MnistFeatureNet(nn.Module):
    """(B, 1, 28, 28) in [-1, 1] -> 10 logits; `features` is the penultimate layer (B, feature_dim)."""

    def __init__(self, width: int = 16, feature_dim: int = 128, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)  # (B, w, 28, 28) -> pool -> (B, w, 14, 14)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)  # (B, 2w, 14, 14) -> pool -> (B, 2w, 7, 7)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)  # (B, 4w, 7, 7) -> pool -> (B, 4w, 3, 3)
        self.fc = nn.Linear(4 * width * 9, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc(h.flatten(1)))  # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def to_mnist_input(images: Tensor) -> Tensor:
    """(N, 1, 28, 28) or (N, 784) images in [-1, 1] -> (N, 1, 28, 28) float32 on the CPU, clamped to [-1, 1]."""
    x = images.detach().float().cpu()
    if x.ndim == 2:
        x = x.reshape(-1, 1, 28, 28)
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"MNIST features need (N, 1, 28, 28) images; got {tuple(images.shape)}")
    return x.clamp(-1, 1)


@lru_cache(maxsize=1)
def mnist_feature_info() -> dict[str, Any]:
    """The training record shipped beside the MNIST weights: held-out accuracy, feature_dim, width, split, seed."""
    return json.loads(MNIST_INFO.read_text())


@lru_cache(maxsize=1)
def mnist_classifier() -> MnistFeatureNet:
    """The shipped MNIST-28 feature network, in eval mode, on the CPU."""
    return _shipped(MnistFeatureNet, mnist_feature_info(), MNIST_WEIGHTS)


@torch.no_grad()
def mnist_features(images: Tensor, batch_size: int = 1024) -> Tensor:
    """Penultimate-layer features (N, feature_dim) of the shipped MNIST classifier for images in [-1, 1]."""
    return _batched_features(mnist_classifier(), to_mnist_input(images), batch_size)


@torch.no_grad()
def classify(images: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(labels int64 (N,), confidence = max softmax (N,)) of the shipped classifier for the images' size.

    (N, 1, 28, 28) goes to the MNIST net, (N, 1, 8, 8) to the digits net; pixels are clamped to [-1, 1].
    """
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[-2:] not in ((28, 28), (8, 8)):
        raise ValueError(f"classify needs (N, 1, 28, 28) or (N, 1, 8, 8) images; got {tuple(images.shape)}")
    if images.shape[-1] == 28:
        net: nn.Module = mnist_classifier()
        x = to_mnist_input(images)
    else:
        net = digits_classifier()
        x = to_digits_input(images.cpu())
    probs = torch.cat([net(x[i : i + batch_size]).softmax(1) for i in range(0, max(len(x), 1), batch_size)])
    confidence, labels = probs.max(1)
    return labels, confidence


# --- Inception (optional, local weights only) ------------------------------------------------------------


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


@lru_cache(maxsize=2)
def _inception(weights: str) -> nn.Module:
    """pytorch-fid's FID Inception-v3 (2048-d pool3), its weights read from a local file instead of a URL."""
    try:
        from pytorch_fid import inception as fid_inception
    except ImportError as e:
        raise ImportError(
            "Inception FID needs the optional `pytorch-fid` package (pip install pytorch-fid) and a local copy of "
            "its weights (pt_inception-2015-12-05-6726825d.pth), passed as --inception PATH. kuosan never downloads."
        ) from e
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found: {path}")
    state = _load_state_dict(path)
    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state  # the only weights it may read
    try:
        net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], use_fid_inception=True)
    finally:
        fid_inception.load_state_dict_from_url = original
    return net.eval().requires_grad_(False)


@torch.no_grad()
def inception_features(images: Tensor, weights: str | Path, batch_size: int = 100) -> Tensor:
    """2048-d pool3 features of images in [-1, 1] (grey images repeated to RGB, resized to 299 by pytorch-fid)."""
    net = _inception(str(weights))
    x = images.detach().float().cpu()
    x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
    x = (x.clamp(-1, 1) + 1) / 2  # pytorch-fid expects [0, 1] and normalises itself
    return torch.cat([net(x[i : i + batch_size])[0].flatten(1) for i in range(0, len(x), batch_size)])
