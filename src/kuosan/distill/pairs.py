"""(noise, sample) pairs of a teacher's probability-flow ODE for rectified-flow reflow (Liu et al. 2022,
arXiv:2209.03003, §2.2 / Alg. 1: the coupling (Z_0, Z_1) of the previous flow; book §4.8.2).

    pairs = make_pairs(teacher_denoiser, 4096, (1, 8, 8), "heun", 35, seed=0)   # z ~ N(0, I), x = ODE(prior_std z)
    save_pairs(pairs, run_dir / "pairs.safetensors", meta)                      # atomic; a rerun loads it

The teacher starts from its own prior x_T = prior_std * z (EDM: x_T = sigma_max z); the student's noise is the
standard normal z = x_T / prior_std, so the pair is (z, x) with x the teacher's deterministic ODE endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..registry import Dataset
from ..rng import derive_seed

__all__ = ["make_pairs", "save_pairs", "load_pairs", "pairs_dataset", "check_deterministic", "PAIRS_FILE"]

PAIRS_FILE = "pairs.safetensors"
_PAIR_STREAM = 7  # derive_seed key of the pairs' noise (apart from the training streams of kuosan.rng)


def check_deterministic(method: str, where: str = "objective.rf_pair_method") -> None:
    """Refuse a sampler that is not an ODE solver: reflow needs a deterministic coupling z -> x."""
    from ..samplers import METHODS, available

    if method not in METHODS:
        raise ValueError(f"{where}: unknown sampler {method!r}; choose one of {', '.join(available())}")
    m = METHODS[method]
    if m.stochastic or not m.final_denoise:
        raise ValueError(f"{where}={method!r} is not a deterministic ODE solver; reflow pairs need one "
                         "(e.g. heun, dpmpp-2m, flow-euler, flow-midpoint, rk45)")


@torch.no_grad()
def make_pairs(
    denoiser: Denoiser,
    n: int,
    shape: tuple[int, ...],
    method: str,
    nfe: int,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    batch_size: int = 500,
    log: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """n pairs {"z": (n, *shape) N(0, I), "x": the teacher's ODE endpoint from prior_std * z, "y": labels}: labels
    i mod num_classes for a conditional teacher. log(k) after each batch of k pairs."""
    check_deterministic(method)
    g = torch.Generator().manual_seed(derive_seed(seed, 0, _PAIR_STREAM))
    z = torch.randn((n, *shape), generator=g)
    y = torch.arange(n) % num_classes if num_classes else None
    std = denoiser.process.prior_std
    xs = []
    for i in range(0, n, batch_size):
        zb = z[i : i + batch_size]
        cond = {"y": y[i : i + batch_size]} if y is not None else None
        xs.append(_sample(denoiser, std * zb, method, nfe, cond).float())
        if log is not None:
            log(len(zb))
    out = {"z": z, "x": torch.cat(xs)}
    if y is not None:
        out["y"] = y
    return out


def _sample(denoiser: Denoiser, x_T: Tensor, method: str, nfe: int, cond: dict[str, Any] | None) -> Tensor:
    from ..samplers import sample

    return sample(denoiser, x_T, method=method, nfe=nfe, cond=cond)


def save_pairs(pairs: dict[str, Tensor], path: Path, meta: dict[str, Any]) -> Path:
    """Write the pairs and what made them (meta: JSON-able) atomically as safetensors."""
    from ..checkpoint import _save_tensors

    path.parent.mkdir(parents=True, exist_ok=True)
    _save_tensors(pairs, path, {"kuosan_pairs": json.dumps(meta, sort_keys=True)})
    return path


def load_pairs(path: Path, expect: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """The pairs saved at path; a file made with other settings than `expect` is refused, naming the field."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("kuosan_pairs", "{}"))
            pairs = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # a corrupt file is named, whatever the reader raised
        raise ValueError(f"reflow pairs file {path} cannot be read ({err}); delete it to generate the pairs "
                         "again") from None
    for k, v in (expect or {}).items():
        if meta.get(k) != v:
            raise ValueError(f"reflow pairs file {path} was made with {k}={meta.get(k)!r} but this run asks for "
                             f"{v!r}: train into another --out, or delete the file to generate the pairs again")
    if "z" not in pairs or "x" not in pairs or pairs["z"].shape != pairs["x"].shape:
        raise ValueError(f"reflow pairs file {path} holds no matching 'z' and 'x' tensors")
    return pairs


def pairs_dataset(pairs: dict[str, Tensor], data: Dataset) -> Dataset:
    """The pairs as the Dataset the loop indexes: x = the teacher's samples, extra["z"] = their noise, the
    labels kept; held-out part, classes and range those of the real data (for eval and previews)."""
    return Dataset(pairs["x"], pairs.get("y"), data.num_classes, data.heldout, data.heldout_labels,
                   class_names=data.class_names, extra={"z": pairs["z"]}, value_range=data.value_range,
                   summary=f"reflow: {len(pairs['x'])} (noise, sample) pairs of the teacher's ODE")
