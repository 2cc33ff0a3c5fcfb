"""The shipped MNIST-28 feature network against the real held-out digits, and its refusal of saturated tiles.

Recomputed, not read back: accuracy on load_mnist("heldout") (the 500 images it never trained on) must match the
JSON shipped beside the weights, so a retrained net without a new record, a wrong split or a wrong pixel scale
all fail. Solid tiles are what a diverged sampler emits; a feature net that calls them digits hides it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from kuosan.data import load_mnist
from kuosan.eval.features import (
    MNIST_WEIGHTS,
    classify,
    digits_classifier,
    mnist_classifier,
    mnist_feature_info,
    mnist_features,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def heldout() -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist("heldout")


@pytest.fixture(scope="module")
def solid() -> torch.Tensor:
    """Solid tiles: pure black, pure white and the greys between, plus +-1 beyond the range (clamped)."""
    levels = torch.tensor([-1.5, -1.0, -0.9, -0.5, 0.0, 0.5, 0.9, 1.0, 1.5])
    return levels[:, None, None, None].expand(-1, 1, 28, 28).clone()  # (9, 1, 28, 28)


def test_shipped_net_is_small_and_recorded():
    info = mnist_feature_info()
    assert MNIST_WEIGHTS.stat().st_size < 1_000_000
    assert {"test_accuracy", "feature_dim", "width", "data", "seed", "script", "torch"} <= info.keys()
    assert "--data mnist" in info["script"]
    net = mnist_classifier()
    assert not net.training and net.fc.out_features == info["feature_dim"] and net.head.out_features == 10


def test_heldout_accuracy_matches_record(heldout):
    x, y = heldout
    assert len(x) == 500 and torch.equal(torch.bincount(y), torch.full((10,), 50))
    labels, confidence = classify(x)
    accuracy = (labels == y).float().mean().item()
    assert abs(accuracy - mnist_feature_info()["test_accuracy"]) <= 0.005
    assert accuracy >= 0.97
    assert confidence.min() >= 0.1 - 1e-6 and confidence.max() <= 1 + 1e-6


def test_features_have_the_stated_dim(heldout):
    feats = mnist_features(heldout[0][:64])
    assert feats.shape == (64, mnist_feature_info()["feature_dim"]) and 64 <= feats.shape[1] <= 128
    assert torch.isfinite(feats).all()
    assert torch.equal(mnist_features(heldout[0][:64].flatten(1)), feats)  # (N, 784) is the same images


def test_solid_tiles_get_a_flat_softmax(heldout, solid):
    """Real digits: mean max-softmax ~1; solid tiles: close to the uniform 0.1, never a confident digit."""
    _, conf_digits = classify(heldout[0])
    _, conf_solid = classify(solid)
    assert conf_digits.mean() > 0.95
    assert conf_solid.max() < 0.5
    assert conf_digits.mean() - conf_solid.mean() > 0.6


def test_solid_tiles_are_far_from_every_class_in_feature_space(heldout, solid):
    """A solid tile's distance to the nearest class mean exceeds the 99th percentile of real digits' distances
    to their own class mean: FD sees it as an outlier, not as a slightly unusual digit."""
    x, y = heldout
    feats = mnist_features(x)  # (500, F)
    means = torch.stack([feats[y == c].mean(0) for c in range(10)])  # (10, F)
    own = (feats - means[y]).norm(dim=1)  # (500,)
    nearest = torch.cdist(mnist_features(solid), means).min(1).values  # (9,)
    assert nearest.min() > own.quantile(0.99)


def test_classify_dispatches_by_size(heldout):
    """8x8 goes to the digits net (here on MNIST shrunk to 8x8), 28x28 to the MNIST net; the output is its softmax."""
    x = torch.nn.functional.adaptive_avg_pool2d(heldout[0][:32], (8, 8))  # (32, 1, 8, 8)
    labels, confidence = classify(x)
    probs = digits_classifier()(x).softmax(1)
    assert torch.equal(labels, probs.argmax(1)) and torch.allclose(confidence, probs.max(1).values)
    probs = mnist_classifier()(heldout[0][:32]).softmax(1)
    assert torch.allclose(classify(heldout[0][:32])[1], probs.max(1).values)
    empty_labels, _ = classify(torch.zeros(0, 1, 28, 28))
    assert empty_labels.shape == (0,)
    with pytest.raises(ValueError, match="28, 28"):
        classify(torch.zeros(2, 1, 16, 16))


def test_benchmark_saturation_rule(heldout, solid):
    """benchmarks/own_images.py: no real digit is a saturated tile; every solid tile is; table rows add up."""
    spec = importlib.util.spec_from_file_location("own_images", ROOT / "benchmarks" / "own_images.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert not bench.saturated_tiles(heldout[0]).any()
    assert bench.saturated_tiles(solid).all()
    row = bench.summarize("solid", solid, None)
    assert row["saturated"] == 1.0 and row["recognised"] == 0.0 and row["overshoot"] == pytest.approx(2 / 9)
    real = bench.summarize("real", *heldout)
    assert real["hist"].sum().item() == pytest.approx(1.0) and real["label_acc"] >= 0.97
