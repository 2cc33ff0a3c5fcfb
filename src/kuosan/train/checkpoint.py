"""Checkpoints in safetensors + JSON, written atomically; nothing is ever unpickled.

    run_dir/checkpoints/latest                    the name of the newest complete checkpoint ("step-00001000")
    run_dir/checkpoints/step-00001000/
        weights.safetensors   the network's state_dict
        ema.safetensors       the EMA network's state_dict (what sampling uses)
        optimizer.safetensors the optimizer's tensors (AdamW moments and step counts)
        state.json            step, seed, EMA update count, optimizer hyper-parameters, the resolved run config

Each file is written to a temporary name and renamed (`os.replace`); the directory is complete before
`latest` is switched to it, so a crash at any moment leaves the previous checkpoint intact. The RNG state is
(seed, step): every step draws from generators seeded by them (see `kuosan.train.rng`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "find_checkpoint", "optimizer_state"]

WEIGHTS, EMA_WEIGHTS, OPTIMIZER, STATE, LATEST = (
    "weights.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
    "latest",
)


@dataclass
class Checkpoint:
    """What a checkpoint directory holds (optimizer tensors are read only on demand, see `optimizer_state`)."""

    path: Path
    step: int
    state: dict[str, Any]
    weights: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any] | None:
        return self.state.get("config")


# --- writing -------------------------------------------------------------------------------------------
def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename tmp -> path, so readers only ever see a complete file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def _save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=False), encoding="utf-8"))


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> ({"state.<param>.<name>": tensor}, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for i, per_param in sd["state"].items():
        for name, v in per_param.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{name}"] = v
            else:
                other.setdefault(str(i), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "other": other}


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    weights: dict[str, Tensor],
    ema: dict[str, Tensor] | None,
    optimizer: dict[str, Any] | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under root (run_dir/checkpoints), point `latest` at it, prune to `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final, tmp_dir = root / name, root / f".{name}.tmp-{os.getpid()}"
    try:
        _write_directory(tmp_dir, step, weights, ema, optimizer, state)
        if final.exists():  # the same step saved again (e.g. interrupted right after a periodic save)
            trash = root / f".{name}.old-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash)
        os.replace(tmp_dir, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _atomic(root / LATEST, lambda tmp: tmp.write_text(name + "\n", encoding="utf-8"))
    _prune(root, keep, name)
    return final


def _write_directory(
    d: Path,
    step: int,
    weights: dict[str, Tensor],
    ema: dict[str, Tensor] | None,
    optimizer: dict[str, Any] | None,
    state: dict[str, Any],
) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    meta = {"format": "pt", "step": str(step)}
    _save_tensors(weights, d / WEIGHTS, meta)
    if ema is not None:
        _save_tensors(ema, d / EMA_WEIGHTS, meta)
    state = {**state, "step": step}
    if optimizer is not None:
        opt_tensors, opt_rest = _flatten_optimizer(optimizer)
        _save_tensors(opt_tensors, d / OPTIMIZER, meta)
        state["optimizer"] = opt_rest
    _save_json(state, d / STATE)


def _prune(root: Path, keep: int, newest: str) -> None:
    """Keep the `keep` newest checkpoints; remove leftovers of writes that were killed half-way."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != newest)
    for old in steps[: max(0, len(steps) - (keep - 1))] + list(root.glob(".step-*")):
        shutil.rmtree(old, ignore_errors=True)


# --- reading -------------------------------------------------------------------------------------------
def find_checkpoint(path: str | Path) -> Path:
    """Resolve a run directory, its checkpoints/ directory, or a step directory to one checkpoint directory."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        latest = root / LATEST
        if latest.is_file():
            return root / latest.read_text(encoding="utf-8").strip()
    if (path / WEIGHTS).is_file():
        return path
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a run directory (with checkpoints/latest), "
        f"a checkpoints/ directory, or a checkpoint directory holding {WEIGHTS}"
    )


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Load weights, EMA weights and state of the checkpoint at `path` (see find_checkpoint); safetensors only."""
    ckpt = find_checkpoint(path)
    state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    weights = load_file(str(ckpt / WEIGHTS), device=str(device))
    ema = load_file(str(ckpt / EMA_WEIGHTS), device=str(device)) if (ckpt / EMA_WEIGHTS).is_file() else None
    return Checkpoint(path=ckpt, step=int(state["step"]), state=state, weights=weights, ema=ema)


def optimizer_state(ckpt: Checkpoint, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The optimizer state_dict saved with `ckpt` (rebuilt from optimizer.safetensors + state.json), or None."""
    rest = ckpt.state.get("optimizer")
    if rest is None or not (ckpt.path / OPTIMIZER).is_file():
        return None
    state: dict[int, dict[str, Any]] = {}
    for key, v in load_file(str(ckpt.path / OPTIMIZER), device=str(device)).items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    for i, extra in rest.get("other", {}).items():
        state.setdefault(int(i), {}).update(extra)
    return {"state": state, "param_groups": rest["param_groups"]}
