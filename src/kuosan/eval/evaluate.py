"""What a report compares samples with, and how it scores one set of samples.

    ref = build_reference(cfg, data_shape)              # training data, held-out data, the feature map
    x, info = draw_samples(denoiser, shape, "dpmpp-2m", 10, seed=0)
    scores = quality(x, ref)                            # fd, kid, precision, recall (+ sw, mmd for points)
    floor = quality(ref.heldout, ref)                   # held-out real data against the training data

Feature maps: the shipped digits classifier for 1-channel digits, pool3 of Inception-v3 when the user gives
local weights, the points themselves for low-dimensional data, raw pixels otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..samplers.diffusers_names import option_value
from .features import digits_feature_info, digits_features, inception_features
from .metrics import (
    frechet_distance,
    frechet_distance_bootstrap,
    frechet_distance_infinity,
    kid,
    mmd,
    precision_recall,
    sliced_wasserstein,
)

__all__ = ["Reference", "build_reference", "quality", "draw_samples", "subsample", "parse_sampler", "SAMPLER_ALIASES"]

SAMPLER_ALIASES = {"ancestral": "ddpm"}  # the usual word for DDPM's Algorithm 2


def parse_sampler(spec: str) -> tuple[str, dict[str, Any]]:
    """A sampler spec 'method[:key=value...]' -> (method, options for kuosan.sample), e.g.
    'unipc:grid=uniform' or 'ddim:eta=1.0' or 'dpmpp-2m:thresholding=true'; 'ancestral' means 'ddpm'. Another
    tool's name ('DPM++ 2M Karras', 'dpmpp_2m/karras', 'DDIMScheduler') becomes its kuosan method with its grid
    and options (kuosan.samplers.resolve); options after it override them."""
    from ..samplers import METHODS, resolve

    method, *pairs = spec.strip().split(":")
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key or not value:
            raise ValueError(f"sampler spec {spec!r}: option {pair!r} is not key=value")
        options[key.strip()] = option_value(value)
    method = SAMPLER_ALIASES.get(method, method)
    if method not in METHODS:  # another tool's name, or an error naming the closest ones
        r = resolve(method)
        method, options = r.method, {**({"grid": r.grid} if r.grid else {}), **r.options, **options}
    return method, options


@dataclass
class Reference:
    """The real data samples are measured against."""

    kind: str  # "images" | "points"
    features_name: str  # what `embed` is, in words
    train: Tensor  # (N, ...) the model's training data
    heldout: Tensor  # (M, ...) real data the model never saw (for the floor and the likelihood)
    embed: Callable[[Tensor], Tensor]  # (N, ...) -> (N, F)
    train_features: Tensor  # embed(train)
    note: str = ""
    levels: int | None = None  # grey levels of discrete data in [-1, 1] (17 for the digits); None: continuous
    classify: Callable[[Tensor], Tensor] | None = None  # samples -> the run's class indices (N,), where known
    classifier_name: str = ""


def subsample(x: Tensor, n: int, seed: int = 0) -> Tensor:
    """At most n rows of x, drawn without replacement with a fixed seed."""
    if len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def _feature_map(data_cfg: Any, data_shape: tuple[int, ...], inception: str | Path | None):
    """(name, embed) for this data: Inception if asked, digits classifier for 1-channel images, else raw."""
    if inception is not None:
        return "Inception-v3 pool3 (2048-d, FID)", lambda x: inception_features(x, inception)
    if len(data_shape) == 3 and data_shape[0] == 1 and data_cfg.kind == "digits":
        info = digits_feature_info()
        return (
            f"digits classifier, penultimate layer ({info['feature_dim']}-d, {info['test_accuracy']:.1%} held-out)",
            digits_features,
        )
    if tuple(data_shape) == (1, 28, 28):
        from .features import mnist_feature_info, mnist_features

        info = mnist_feature_info()
        return (f"MNIST classifier, penultimate layer ({info['feature_dim']}-d, {info['test_accuracy']:.1%} held-out; "
                "meaningful for digit-like grey 28x28 images)", mnist_features)
    if len(data_shape) == 1:
        return "the points themselves", lambda x: x.reshape(len(x), -1).double()
    return "raw pixels (no feature network for this data; pass --inception PATH for FID)", lambda x: x.flatten(1)


def _real_data(data_cfg: Any, seed: int) -> tuple[Tensor, Tensor, str]:
    """(training data, held-out data, note) for a run's data config: the held-out part is never trained on."""
    from .. import data
    from ..registry import build_data

    subset = getattr(data_cfg, "classes", None) is not None  # data.classes: build_data keeps those classes only
    if data_cfg.kind == "digits" and not subset:
        train, _ = data.load_digits(data_cfg.split, data_cfg.size)
        heldout, _ = data.load_digits("test", data_cfg.size)
        note = "" if data_cfg.split == "train" else f"trained on split {data_cfg.split!r}: the test split is not unseen"
        return train, heldout, note
    if data_cfg.kind == "toy2d" and not subset:
        g = torch.Generator().manual_seed(10_000 + seed)  # fresh draws, not the training points
        return data.toy2d(data_cfg.name, 5_000, g), data.toy2d(data_cfg.name, 5_000, g), ""
    ds = build_data(data_cfg)
    if ds.heldout is not None and len(ds.heldout):
        return ds.x, ds.heldout, ""
    half = len(ds.x) // 2
    perm = torch.randperm(len(ds.x), generator=torch.Generator().manual_seed(seed))
    return (ds.x[perm[:half]], ds.x[perm[half:]],
            "no held-out split for this data (data.heldout=0): the floor and the likelihood use one half of the "
            "training data against the other, both seen in training")


def build_reference(
    cfg: Any, data_shape: tuple[int, ...], inception: str | Path | None = None, seed: int = 0,
    class_names: tuple[str, ...] = (),
) -> Reference:
    """The training data, held-out data and feature map for a run config (kuosan.config.RunConfig); for a
    class-conditional run (class_names) also the judge of which class a sample shows, where kuosan has one."""
    train, heldout, note = _real_data(cfg.data, seed)
    name, embed = _feature_map(cfg.data, data_shape, inception)
    kind = "points" if len(data_shape) == 1 else "images"
    levels = None if kind == "points" else 17 if cfg.data.kind == "digits" and cfg.data.size == 8 else 256
    judge = class_judge(cfg.data, data_shape, class_names) if class_names else None
    classify, judge_name = judge if judge is not None else (None, "")
    return Reference(kind, name, train, heldout, embed, embed(train).double(), note, levels, classify, judge_name)


def class_judge(data_cfg: Any, data_shape: tuple[int, ...], class_names: tuple[str, ...]
                ) -> tuple[Callable[[Tensor], Tensor], str] | None:
    """(samples -> class indices of the run, what judges) for class-conditional runs kuosan can judge: digits
    (8x8, 28x28: the shipped classifiers; a folder's classes by their names "0".."9") and the conditional toy
    mixture (the exact posterior argmax_k p(k | x) of its components); None otherwise."""
    if data_cfg.kind == "toy2d":
        from ..data import toy_gmm

        gm = toy_gmm()
        return (lambda x: gm.responsibilities(x.double()).argmax(1),
                "the exact posterior of the mixture's components (argmax_k p(k | x))")
    digit_names = all(n in tuple(map(str, range(10))) for n in class_names)
    if tuple(data_shape) not in ((1, 8, 8), (1, 28, 28)) or not digit_names:
        return None
    from .features import classify

    index = {int(n): i for i, n in enumerate(class_names)}
    lookup = torch.tensor([index.get(d, -1) for d in range(10)])  # digit -> the run's class index (-1: none)
    size = data_shape[-1]
    return (lambda x: lookup[classify(x)[0]],
            f"the shipped {'digits (8x8)' if size == 8 else 'MNIST (28x28)'} classifier")


def nearest_train_distance(x: Tensor, train: Tensor, chunk: int = 1024) -> Tensor:
    """Euclidean distance (in data space) from each row of x to its nearest training sample, (N,)."""
    x, train = x.flatten(1).double(), train.flatten(1).double()
    return torch.cat([torch.cdist(x[i : i + chunk], train).min(1).values for i in range(0, len(x), chunk)])


def quality(x: Tensor, ref: Reference, kid_subsets: int = 20, k: int = 3, max_size: int = 2000) -> dict[str, float]:
    """FD, KID (mean, std over subsets of up to 1000), improved precision/recall (k-NN, equal set sizes of up to
    max_size) against ref.train; plus sliced Wasserstein-2 and Gaussian-kernel MMD^2 (equal sizes) on the points
    themselves for low-dimensional data.

    fd_std: bootstrap standard deviation of fd over resamples of x (the generated set's share of FD's noise).
    fd_inf: FD with the generated set's small-sample bias k/N extrapolated away (Chong & Forsyth 2020), the
    number to compare across sample sizes (FD itself falls as N grows); None below 5 (D + 2) samples.
    fd_matched: FD of the first len(ref.heldout) samples only, the size of the floor (FD's small-sample bias
    is then the floor's). nn_ratio: median distance from a sample to its nearest training sample over the
    same median for held-out data; well below 1 means samples copy training data.
    """
    f = ref.embed(x).double()
    m = min(len(f), len(ref.train_features), max_size)
    kid_mean, kid_std = kid(f, ref.train_features, n_subsets=kid_subsets, subset_size=min(m, 1000))
    precision, recall = precision_recall(subsample(ref.train_features, m), subsample(f, m), k=k)
    nn_heldout = nearest_train_distance(ref.heldout, ref.train).median()
    out = {"fd": frechet_distance(f, ref.train_features), "fd_std": frechet_distance_bootstrap(f, ref.train_features),
           "fd_inf": frechet_distance_infinity(f, ref.train_features) if len(f) > 5 * (f.shape[1] + 2) else None,
           "fd_matched": frechet_distance(f[: len(ref.heldout)],
           ref.train_features), "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
           "nn_ratio": float(nearest_train_distance(x, ref.train).median() / nn_heldout)}
    if ref.kind == "points":
        a, b = subsample(x.double(), m), subsample(ref.train.double(), m)
        out["sw"] = sliced_wasserstein(a, b)
        out["mmd"] = mmd(a, b)
    return out


@torch.no_grad()
def draw_samples(
    denoiser: Any,
    shape: tuple[int, ...],
    method: str,
    nfe: int,
    *,
    seed: int = 0,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    num_classes: int | None = None,
    progress: bool = True,
    decode: Callable[[Tensor], Tensor] | None = None,
    grid: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """shape[0] samples by `method` (a sampler spec, see parse_sampler) with an `nfe` budget, in batches;
    returns (x, {nfe_used, seconds}). A class-conditional model (num_classes) gets the classes in turn,
    y = i mod num_classes. progress: a bar (stderr) counting network evaluations. decode: latents -> images for
    a latent run (kuosan.latent; its decoding time is counted). grid: descending times that replace the method's
    own grid (a run's tuned grid, kuosan.tuned_grids)."""
    from tqdm.auto import tqdm

    from ..pipeline import generate

    spec = method
    method, options = parse_sampler(method)
    if grid is not None:
        options["grid"] = grid
    g = torch.Generator(device).manual_seed(seed)
    n, batches, evaluations = shape[0], [], 0
    n_batches = -(-n // batch_size)
    bar = tqdm(total=n_batches * nfe, desc=f"{spec} {nfe} NFE, {n} samples", unit="NFE", leave=False,
               disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for k, i in enumerate(range(0, n, batch_size)):
        denoiser.reset_nfe()
        b = min(batch_size, n - i)
        cond = {"y": torch.arange(i, i + b, device=device) % num_classes} if num_classes else None
        tick = (lambda step, k=k: bar.update(k * nfe + denoiser.nfe - bar.n)) if progress else None
        x = generate(denoiser, (b, *shape[1:]), method=method, nfe=nfe, generator=g, device=device, cond=cond,
                     callback=tick, **options)
        batches.append((x if decode is None else decode(x)).cpu())
        evaluations = max(evaluations, denoiser.nfe)
    bar.close()
    seconds = time.perf_counter() - start
    return torch.cat(batches), {"nfe_used": evaluations, "seconds": seconds, "seconds_per_1000": 1000 * seconds / n}
